//! `dso-operator`: parses its configuration and runs. See the crate documentation.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dso_operator::args::Args::parse().run().await
}
