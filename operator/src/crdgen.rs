//! Prints the DsoSecret CRD as YAML. `cargo run -p dso-operator --bin crdgen > crds/dso.dev_dsosecrets.yaml`
fn main() -> anyhow::Result<()> {
    print!("{}", dso_operator::crd::crd_yaml()?);
    Ok(())
}
