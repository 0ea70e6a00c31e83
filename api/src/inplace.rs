//! `strategy: InPlace`: what the operator and the `dso-refresh` sidecar share.
//!
//! **Telling pods.** The operator already follows every secret centrally (DescribeSecret or
//! ListSecrets, never per pod). For each running pod that mounts an InPlace DsoSecret it writes
//! the pod annotation [`DESIRED_VERSIONS`](crate::annotations::DESIRED_VERSIONS): a JSON object
//! from DsoSecret name to the hash of the versions it follows ([`desired_hash`]). The kubelet
//! refreshes the downward-API file that holds it in the sidecar; the sidecar fetches (with the
//! pod's own identity) only when the entry differs from what the volume holds.
//!
//! **Layout.** Apps read `<mount>/<DsoSecret>/<path>` as with any strategy. Under InPlace,
//! `<mount>/<DsoSecret>` is a symbolic link to a generation directory
//! `<mount>/..dso/<DsoSecret>/<generation>/` that is never changed once linked. A swap writes a
//! new generation in full, then replaces the link with `rename(2)` — atomic: a reader that
//! resolves `<mount>/<DsoSecret>` once (opens a file, or `cd`s into it) sees one generation
//! throughout. The previous generation is kept until the next swap, so a reader that resolved
//! the link just before a swap can finish; older ones are removed. This is the kubelet's own
//! trick for Secret and ConfigMap volumes (`..data`), one level up.
//!
//! **State.** `<mount>/..dso/state.json` holds, per InPlace DsoSecret, the hash of the versions
//! its current generation was built from (written by `dso-init`, then by the sidecar).

use std::collections::BTreeMap;

/// Directory under the mount path holding the generations (a DsoSecret name cannot start with
/// a dot, so it never collides with one).
pub const DATA_DIR: &str = "..dso";
/// The state file, under [`DATA_DIR`].
pub const STATE_FILE: &str = "state.json";

/// The exit code of a `dso-refresh` sidecar that swapped files but could not signal the app
/// (`refresh.signal`). The signal stays owed: the restarted sidecar sends it before anything
/// else, and exits with this code again, within [`SIGNAL_RETRY_GRACE`] of its start, if it
/// still cannot.
pub const SIGNAL_FAILED_EXIT: u8 = 9;

/// How long after its restart a sidecar that exited [`SIGNAL_FAILED_EXIT`] is not counted as
/// serving: it retries the signal within 5 s (then exits again if it still cannot), and the
/// kubelet reports the exit within a few seconds more.
pub const SIGNAL_RETRY_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The value of the `dso.dev/desired-versions` annotation (or of the sidecar's state file):
/// DsoSecret name → versions hash. A malformed value reads as empty (nothing is desired).
pub fn parse(value: &str) -> BTreeMap<String, String> {
    serde_json::from_str(value).unwrap_or_default()
}

/// The annotation value with `name` set to `hash`, or `None` when `current` already says so.
/// Other DsoSecrets' entries are kept.
pub fn with_entry(current: Option<&str>, name: &str, hash: &str) -> Option<String> {
    let mut map = current.map(parse).unwrap_or_default();
    if map.get(name).map(String::as_str) == Some(hash) {
        return None;
    }
    map.insert(name.to_string(), hash.to_string());
    // A map of strings always serializes.
    serde_json::to_string(&map).ok()
}

/// The hash of the versions a DsoSecret follows: `versions` maps each stage-following secret's
/// [`crate::versions::key`] to its version id. Pinned versions are left out (they never change).
pub fn desired_hash(versions: &BTreeMap<String, String>) -> String {
    crate::versions::versions_hash(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_added_beside_the_others_and_an_unchanged_one_writes_nothing() {
        let v = with_entry(None, "db", "h1").expect("new");
        assert_eq!(parse(&v), BTreeMap::from([("db".into(), "h1".into())]));
        let v2 = with_entry(Some(&v), "api", "h2").expect("added");
        assert_eq!(parse(&v2).len(), 2);
        assert_eq!(with_entry(Some(&v2), "db", "h1"), None);
        let v3 = with_entry(Some(&v2), "db", "h3").expect("changed");
        assert_eq!(parse(&v3).get("db").map(String::as_str), Some("h3"));
        assert_eq!(parse(&v3).get("api").map(String::as_str), Some("h2"));
    }

    #[test]
    fn a_malformed_annotation_reads_as_nothing_desired_and_is_replaced() {
        assert!(parse("not json").is_empty());
        assert!(parse("[1]").is_empty());
        let v = with_entry(Some("garbage"), "db", "h").expect("replaced");
        assert_eq!(parse(&v).len(), 1);
    }
}
