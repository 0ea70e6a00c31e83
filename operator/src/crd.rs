//! The DsoSecret CustomResourceDefinition, generated from the Rust types in `dso-api`.

use dso_api::DsoSecret;
use kube::CustomResourceExt;

/// Header written above the generated YAML.
pub const HEADER: &str = "# Generated from the Rust types in api/src/secret.rs by `cargo run -p dso-operator --bin crdgen`.\n# Do not edit: change the types and regenerate (a test fails when this file drifts).\n";

/// The CRD as YAML, exactly as committed in `crds/dso.dev_dsosecrets.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    Ok(format!(
        "{HEADER}{}",
        serde_yaml_ng::to_string(&DsoSecret::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/dso.dev_dsosecrets.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crd_yaml().expect("CRD serializes");
        assert!(
            committed == generated,
            "crds/dso.dev_dsosecrets.yaml is out of date with api/src/secret.rs.\n\
             Regenerate it: cargo run -p dso-operator --bin crdgen > crds/dso.dev_dsosecrets.yaml"
        );
    }
}
