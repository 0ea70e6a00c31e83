//! The termination message: the kubelet copies the file the container wrote at
//! `terminationMessagePath` (default `/dev/termination-log`, at most 4096 bytes) into the pod's
//! status. On success it holds the [`InitReport`] (secret ids and version ids, never values), so
//! the operator can tell which version each pod runs; on failure, the one-line error.

use dso_api::contract::InitReport;
use std::path::Path;

/// The kubelet keeps at most this many bytes of a termination message.
pub const KUBELET_LIMIT: usize = 4096;

/// The report as compact JSON.
pub fn render(report: &InitReport) -> String {
    // Serializing plain strings cannot fail; fall back to an empty report rather than panic.
    serde_json::to_string(report).unwrap_or_else(|_| "{\"versions\":[]}".into())
}

/// Writes `message` (replacing what is there).
pub fn write(path: &Path, message: &str) -> std::io::Result<()> {
    std::fs::write(path, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dso_api::contract::ReportedVersion;

    #[test]
    fn the_report_holds_ids_only_and_round_trips() {
        let report = InitReport {
            versions: vec![ReportedVersion {
                secret_id: "prod/db".into(),
                version_id: "v-1".into(),
            }],
        };
        let text = render(&report);
        assert_eq!(
            text,
            r#"{"versions":[{"secretId":"prod/db","versionId":"v-1"}]}"#
        );
        let back: InitReport = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, report);
    }
}
