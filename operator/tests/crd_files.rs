//! The CRD directories hold exactly the generated CRD: `crds/` (for `kubectl apply`) and the
//! chart's `crds/` (installed by Helm on first install) each contain one file per CRD, byte for
//! byte what `crdgen` prints. A stray or stale copy fails here: Helm installs every file in the
//! chart's `crds/`, so an extra one would be applied too.

use std::collections::BTreeSet;
use std::path::Path;

/// Every CRD the project ships, by file name, as `crdgen` would write it.
fn generated() -> Vec<(&'static str, String)> {
    vec![(
        "dso.dev_dsosecrets.yaml",
        dso_operator::crd::crd_yaml().expect("CRD serializes"),
    )]
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            entry.file_name().to_string_lossy().into_owned()
        })
        .collect()
}

#[test]
fn each_crd_directory_holds_exactly_the_generated_crds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let expected = generated();
    let names: BTreeSet<String> = expected.iter().map(|(n, _)| n.to_string()).collect();
    for dir in ["crds", "charts/dso/crds"] {
        let found = files_in(&repo.join(dir));
        assert_eq!(
            found, names,
            "{dir}/ must hold exactly the generated CRD files: remove any other file \
             (Helm installs everything in charts/dso/crds/)"
        );
        for (name, yaml) in &expected {
            let committed = std::fs::read_to_string(repo.join(dir).join(name)).unwrap_or_default();
            assert!(
                &committed == yaml,
                "{dir}/{name} differs from what crdgen prints. Regenerate it: \
                 cargo run -p dso-operator --bin crdgen > crds/{name} && cp crds/{name} charts/dso/crds/"
            );
        }
    }
}
