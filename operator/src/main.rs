//! `dso-operator`: parses its configuration, sets up logging, and runs. See the crate
//! documentation.
use dso_operator::{args::Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::load();
    run::init_tracing(args.log_format);
    run::run(args).await
}
