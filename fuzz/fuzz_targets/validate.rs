//! DsoSecret validation (`dso_api::validate::validate_spec`) on any spec serde reads. What it
//! accepts keeps the invariants dso-init's writes rely on (relative paths without `.`/`..`, no
//! duplicates, no path both a file and a directory, a path unless `expand`), stays accepted
//! after a round trip through JSON (what the apiserver stores), and, mounted by a pod, gives a
//! plan dso-init accepts (`dso_fuzz::check_admission`).
#![no_main]

use dso_api::DsoSecretSpec;
use dso_api::validate::validate_spec;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::collections::BTreeSet;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<DsoSecretSpec>(data) else {
        return;
    };
    if validate_spec(&spec).is_err() {
        return;
    }
    let mut paths = BTreeSet::new();
    for f in &spec.files {
        match f.path.as_deref() {
            Some(p) => {
                assert!(!p.starts_with('/'), "absolute path {p:?} accepted");
                assert!(
                    p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."),
                    "path {p:?} with an empty, '.' or '..' segment accepted"
                );
                assert!(paths.insert(p.to_string()), "duplicate path {p:?} accepted");
            }
            None => assert!(
                f.expands(),
                "an entry with neither path nor expand accepted"
            ),
        }
    }
    for a in &paths {
        let dir = format!("{a}/");
        assert!(
            !paths.iter().any(|b| b.starts_with(&dir)),
            "{a:?} is both a file and a directory"
        );
    }
    let stored = serde_json::to_value(&spec).expect("a spec serialises");
    let again: DsoSecretSpec = serde_json::from_value(stored.clone()).expect("read back");
    assert_eq!(
        validate_spec(&again),
        Ok(()),
        "accepted once, refused after a round trip"
    );

    // Mounted by a pod (with an identity): injected or denied, never a broken plan.
    let Some(catalog) = dso_fuzz::catalog().with_secret("fuzzed", stored) else {
        return;
    };
    let pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": dso_fuzz::NS,
                     "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": "fuzzed"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "a"}]}
    }))
    .expect("pod");
    dso_fuzz::check_admission(&pod, dso_fuzz::NS, &catalog);
});
