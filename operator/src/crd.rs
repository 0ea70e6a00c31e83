//! The DsoSecret CustomResourceDefinition, generated from the Rust types in `dso-api`.

use dso_api::DsoSecret;
use kube::CustomResourceExt;

/// Header written above the generated YAML.
pub const HEADER: &str = "# Generated from the Rust types in api/src/secret.rs by `cargo run -p dso-operator --bin crdgen`.\n# Do not edit: change the types and regenerate (a test fails when this file drifts).\n";

/// The CRD as YAML, exactly as committed in `crds/dso.dev_dsosecrets.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut crd = serde_json::to_value(DsoSecret::crd())
        .map_err(<serde_yaml_ng::Error as serde::ser::Error>::custom)?;
    unwrap_descriptions(&mut crd);
    Ok(format!("{HEADER}{}", serde_yaml_ng::to_string(&crd)?))
}

/// Doc comments arrive with the source's line breaks; `kubectl explain` wraps text itself and
/// would keep them as ragged breaks. Join the lines of each paragraph, keep paragraph breaks.
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(s) if k == "description" => {
                        *s = s
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_read_as_paragraphs() {
        let mut v =
            serde_json::json!({"description": "one\ntwo\n\nthree", "x": [{"description": "a\nb"}]});
        unwrap_descriptions(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"description": "one two\n\nthree", "x": [{"description": "a b"}]})
        );
    }

    #[test]
    fn committed_crds_match_the_rust_types() {
        let generated = crd_yaml().expect("CRD serializes");
        for file in [
            "crds/dso.dev_dsosecrets.yaml",
            "charts/dso/crds/dso.dev_dsosecrets.yaml",
        ] {
            let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{file} is out of date with api/src/secret.rs.\n\
                 Regenerate it: cargo run -p dso-operator --bin crdgen > crds/dso.dev_dsosecrets.yaml \
                 && cp crds/dso.dev_dsosecrets.yaml charts/dso/crds/"
            );
        }
    }
}
