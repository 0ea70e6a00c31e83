//! The value the operator writes on a workload's pod template (`dso.dev/versions-hash`).
//!
//! It is a pure function of the versions the workload consumes, so the same versions always give
//! the same value: re-applying it (an operator restart, a second reconcile) changes nothing and
//! restarts nothing. Only a real rotation changes it.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The key of one stage-following secret in the hash: `<dsosecret>/<secretId>`, plus
/// `@<stage>` for a stage other than AWSCURRENT. The operator and `dso-init` build the same keys.
pub fn key(dso_name: &str, secret_id: &str, stage: &str) -> String {
    if stage == crate::secret::DEFAULT_STAGE {
        format!("{dso_name}/{secret_id}")
    } else {
        format!("{dso_name}/{secret_id}@{stage}")
    }
}

/// Hash of `(secret reference → version id)` pairs; independent of insertion order.
/// Keys are whatever identifies a consumed secret (the operator uses `dsosecret/secretId`).
pub fn versions_hash(versions: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in versions {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0xff]);
    }
    hex::encode(&h.finalize()[..10])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn same_versions_give_the_same_hash() {
        let a = m(&[("db/prod/db", "v1"), ("api/prod/api", "v7")]);
        let b = m(&[("api/prod/api", "v7"), ("db/prod/db", "v1")]);
        assert_eq!(versions_hash(&a), versions_hash(&b));
        assert_eq!(versions_hash(&a).len(), 20);
    }

    #[test]
    fn a_rotation_changes_the_hash() {
        let a = m(&[("db/prod/db", "v1")]);
        let b = m(&[("db/prod/db", "v2")]);
        assert_ne!(versions_hash(&a), versions_hash(&b));
    }

    #[test]
    fn keys_and_values_cannot_be_confused() {
        assert_ne!(
            versions_hash(&m(&[("ab", "c")])),
            versions_hash(&m(&[("a", "bc")]))
        );
    }
}
