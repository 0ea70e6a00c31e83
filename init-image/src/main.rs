//! `dso-init`: parses its settings, runs [`dso_init::run`], reports. See the library docs and
//! `dso_init::error` for exit codes.

use clap::Parser;
use dso_init::error::one_line;
use dso_init::{Error, Settings, plan, report};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Fetches the secrets named in DSO_PLAN with the pod's AWS identity and writes them into the
/// pod's memory volume. Never prints a secret value.
#[derive(Parser, Debug)]
#[command(name = "dso-init", version)]
struct Args {
    /// `init` (default): fill the volume once and exit. `refresh`: the `dso-refresh` sidecar of
    /// `strategy: InPlace` pods — swap files when the operator says versions changed.
    #[arg(value_enum, default_value_t = Mode::Init)]
    mode: Mode,

    /// The downward-API file holding the pod's `dso.dev/desired-versions` (refresh mode).
    #[arg(
        long,
        env = "DSO_DESIRED_FILE",
        default_value = "/etc/dso-refresh/desired-versions"
    )]
    desired_file: PathBuf,

    /// How often refresh mode reads that file (a local read, no API or AWS call).
    #[arg(long, env = "DSO_REFRESH_POLL", default_value = "1s", value_parser = duration)]
    refresh_poll: Duration,

    /// The pod's UID (refresh mode with `refresh.signal`; the webhook sets it from the downward
    /// API): the target container's processes are recognised by it.
    #[arg(long, env = dso_api::contract::POD_UID_ENV)]
    pod_uid: Option<String>,

    /// The plan the DSO webhook wrote (JSON: secret ids, keys, paths, modes).
    #[arg(long, env = "DSO_PLAN", hide_env_values = true)]
    plan: Option<String>,

    /// File the kubelet reads as the termination message.
    #[arg(
        long,
        env = "DSO_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    termination_log: PathBuf,

    /// Overall deadline for fetching everything (e.g. 30s, 2m).
    #[arg(long, env = "DSO_DEADLINE", default_value = "60s", value_parser = duration)]
    deadline: Duration,

    /// Timeout of one GetSecretValue call, credentials included.
    #[arg(long, env = "DSO_ATTEMPT_TIMEOUT", default_value = "5s", value_parser = duration)]
    attempt_timeout: Duration,

    /// Timeout for establishing a connection.
    #[arg(long, env = "DSO_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration)]
    connect_timeout: Duration,

    /// Attempts per secret on throttling, 5xx, timeouts and connection failures.
    #[arg(long, env = "DSO_MAX_ATTEMPTS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    max_attempts: u32,

    /// The pod's namespace (the webhook sets DSO_POD_NAMESPACE from the downward API). With the
    /// pod name, it names the IRSA role session: `<namespace>.<pod>`, shown in CloudTrail.
    #[arg(long, env = dso_api::contract::POD_NAMESPACE_ENV)]
    pod_namespace: Option<String>,

    /// The pod's name (the webhook sets DSO_POD_NAME from the downward API).
    #[arg(long, env = dso_api::contract::POD_NAME_ENV)]
    pod_name: Option<String>,

    /// GetSecretValue calls in flight at once.
    #[arg(long, env = "DSO_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Init,
    Refresh,
}

fn duration(s: &str) -> Result<Duration, String> {
    match dso_api::duration::parse(s) {
        Ok(d) if d.is_zero() => Err("must be positive".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let err = Error::Config(one_line(&e.to_string()));
            let log = std::env::var_os("DSO_TERMINATION_LOG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev/termination-log"));
            return fail(&log, &err);
        }
    };
    let Args {
        mode,
        desired_file,
        refresh_poll,
        plan,
        termination_log,
        deadline,
        attempt_timeout,
        connect_timeout,
        max_attempts,
        concurrency,
        pod_namespace,
        pod_name,
        pod_uid,
    } = args;
    let settings = Settings {
        deadline,
        attempt_timeout,
        connect_timeout,
        max_attempts,
        concurrency: usize::from(concurrency),
        role_session_name: dso_api::contract::role_session_name(
            pod_namespace.as_deref().unwrap_or_default(),
            pod_name.as_deref().unwrap_or_default(),
        ),
        ..Settings::default()
    };
    let plan = match plan.as_deref().map(plan::parse) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return fail(&termination_log, &e),
        None => {
            let e = Error::Plan("DSO_PLAN is not set".into());
            return fail(&termination_log, &e);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dso-init: cannot start the async runtime: {e} (exit 1)");
            return ExitCode::FAILURE;
        }
    };
    if mode == Mode::Refresh {
        let opts = dso_init::refresh::Options {
            desired_file,
            poll: refresh_poll,
            pod_uid,
            proc_root: PathBuf::from("/proc"),
        };
        return match runtime.block_on(dso_init::refresh::run(&plan, settings, &opts)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&termination_log, &e),
        };
    }
    let started = std::time::Instant::now();
    match runtime.block_on(dso_init::run(&plan, settings)) {
        Ok(outcome) => {
            let message = report::render(&outcome.report);
            if let Err(e) = report::write(&termination_log, &message) {
                eprintln!(
                    "dso-init: warning: cannot write the report to {}: {e}",
                    termination_log.display()
                );
            }
            if message.len() > report::KUBELET_LIMIT {
                eprintln!(
                    "dso-init: warning: the report is {} bytes; the kubelet keeps {}",
                    message.len(),
                    report::KUBELET_LIMIT
                );
            }
            println!(
                "dso-init: wrote {} files from {} secret versions for {} DsoSecrets in {} ms",
                outcome.files,
                outcome.fetched,
                plan.secrets.len(),
                started.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&termination_log, &e),
    }
}

/// Prints the one-line error to stderr and to the termination message (there without names
/// that came from a secret's value: it lands in the pod's status), and exits with its code.
fn fail(termination_log: &std::path::Path, err: &Error) -> ExitCode {
    eprintln!("{}", err.line());
    let _ = report::write(termination_log, &err.status_line());
    ExitCode::from(err.exit_code())
}
