//! Benchmark: filling a secrets directory with N = 1, 5, 20 secrets from one moto server, with
//! `dso-init` and with what people write instead — an `aws secretsmanager get-secret-value` per
//! secret (AWS CLI), and a small boto3 script. Same moto, same run, same secrets. Prints
//! medians, ratios, the binary and image sizes, and peak RSS (GNU time, i.e. wait4's maxrss).
//!
//! ```sh
//! tests/moto.sh start 5100
//! RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
//!     --target x86_64-unknown-linux-gnu -p dso-init
//! DSO_MOTO_ENDPOINT=http://127.0.0.1:5100 \
//! DSO_INIT_BIN=target/x86_64-unknown-linux-gnu/release/dso-init \
//! DSO_INIT_IMAGE_TAR=/tmp/dso-init.tar \
//!   cargo run -p dso-init --example bench -- [RUNS]
//! ```
//! `init-image/bench.sh` does all of that. moto serves one request at a time (~5 ms each): the
//! figures compare tools against the same emulator, they are not AWS latencies.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIZES: [usize; 3] = [1, 5, 20];
const TOKEN: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YmVuY2g6YXBwIn0.c2ln";

const BOTO3: &str = r#"
import os, sys, boto3
out = sys.argv[1]
client = boto3.client("secretsmanager")
for i, sid in enumerate(sys.argv[2:]):
    v = client.get_secret_value(SecretId=sid)["SecretString"]
    p = os.path.join(out, "s%d" % i)
    with open(p + ".tmp", "w") as f:
        f.write(v)
    os.chmod(p + ".tmp", 0o440)
    os.rename(p + ".tmp", p)
"#;

fn need(var: &str, hint: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        eprintln!("{var} is not set: {hint}");
        std::process::exit(2)
    })
}

fn main() {
    let endpoint = need(
        "DSO_MOTO_ENDPOINT",
        "start moto (tests/moto.sh start 5100) and export DSO_MOTO_ENDPOINT=http://127.0.0.1:5100",
    );
    let bin = PathBuf::from(need(
        "DSO_INIT_BIN",
        "build the static binary and point DSO_INIT_BIN at it (see init-image/bench.sh)",
    ));
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("token"), TOKEN).expect("token");
    std::fs::write(work.path().join("fetch.py"), BOTO3).expect("script");

    let prefix = format!(
        "bench/{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    );
    let ids: Vec<String> = (0..SIZES[SIZES.len() - 1])
        .map(|i| format!("{prefix}/s{i}"))
        .collect();
    create_secrets(&endpoint, &ids);

    println!(
        "dso-init benchmark against moto at {endpoint}, {runs} runs per cell (after one warm-up)\n"
    );
    println!(
        "{:>3}  {:<30} {:>10} {:>10} {:>10}",
        "N", "tool", "median ms", "min ms", "× dso-init"
    );
    let tools = [
        "dso-init (env keys)",
        "dso-init (IRSA via STS)",
        "aws cli, one call per secret",
        "boto3 script",
    ];
    let mut peak = Vec::new();
    for &n in &SIZES {
        let ids = &ids[..n];
        let mut medians = Vec::new();
        for (t, name) in tools.iter().enumerate() {
            let mut times = Vec::new();
            for r in 0..=runs {
                let out = work.path().join(format!("out-{n}-{t}-{r}"));
                std::fs::create_dir(&out).expect("out dir");
                let mut cmd = command(t, &bin, &endpoint, work.path(), &out, ids);
                let start = Instant::now();
                let status = cmd.stdout(Stdio::null()).status().expect("run");
                let took = start.elapsed();
                assert!(status.success(), "{name} failed for N={n}");
                check_output(t, &out, n);
                if r > 0 {
                    times.push(took);
                }
            }
            times.sort();
            let median = times[times.len() / 2];
            medians.push(median);
            let ratio = median.as_secs_f64() / medians[0].as_secs_f64();
            println!(
                "{n:>3}  {name:<30} {:>10.1} {:>10.1} {:>10.2}",
                ms(median),
                ms(times[0]),
                ratio
            );
            if n == SIZES[SIZES.len() - 1] {
                let out = work.path().join(format!("rss-{t}"));
                std::fs::create_dir(&out).expect("out dir");
                peak.push((
                    name,
                    peak_rss_kib(
                        command(t, &bin, &endpoint, work.path(), &out, ids),
                        work.path(),
                    ),
                ));
            }
        }
        println!();
    }
    println!(
        "peak RSS at N = {} (GNU time %M, the largest process):",
        SIZES[SIZES.len() - 1]
    );
    for (name, kib) in peak {
        println!("  {name:<30} {:>8.1} MiB", kib as f64 / 1024.0);
    }
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "\nstatic binary {}: {:.2} MiB",
        bin.display(),
        size as f64 / 1048576.0
    );
    if let Ok(tar) = std::env::var("DSO_INIT_IMAGE_TAR") {
        match std::fs::metadata(&tar) {
            Ok(m) => println!("image archive {tar}: {:.2} MiB", m.len() as f64 / 1048576.0),
            Err(e) => println!("image archive {tar}: {e}"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn create_secrets(endpoint: &str, ids: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = Client::from_conf(
            aws_sdk_secretsmanager::config::Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
                .build(),
        );
        for (i, id) in ids.iter().enumerate() {
            client
                .create_secret()
                .name(id)
                .secret_string(
                    serde_json::json!({"username": format!("user{i}"), "password": format!("bench-value-{i}-0123456789abcdef")})
                        .to_string(),
                )
                .send()
                .await
                .expect("create secret");
        }
    });
}

fn command(
    tool: usize,
    bin: &Path,
    endpoint: &str,
    work: &Path,
    out: &Path,
    ids: &[String],
) -> Command {
    match tool {
        0 | 1 => {
            let files: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| serde_json::json!({"path": format!("s{i}"), "secretId": id}))
                .collect();
            let plan = serde_json::json!({
                "version": 1, "mountPath": out.parent().expect("parent"), "sizeLimitBytes": 1 << 20,
                "secrets": [{"name": out.file_name().expect("name").to_string_lossy(), "fileMode": 0o440, "files": files}],
            });
            let mut cmd = Command::new(bin);
            cmd.env_clear()
                .env("DSO_PLAN", plan.to_string())
                .env("DSO_TERMINATION_LOG", work.join("termination-log"))
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL", endpoint);
            if tool == 0 {
                cmd.env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test");
            } else {
                cmd.env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bench")
                    .env("AWS_WEB_IDENTITY_TOKEN_FILE", work.join("token"));
            }
            cmd
        }
        2 => {
            let mut script = String::from("set -e\n");
            for (i, id) in ids.iter().enumerate() {
                script.push_str(&format!(
                    "aws secretsmanager get-secret-value --secret-id '{id}' --query SecretString --output text > '{dir}/s{i}.tmp'; chmod 440 '{dir}/s{i}.tmp'; mv '{dir}/s{i}.tmp' '{dir}/s{i}'\n",
                    dir = out.display()
                ));
            }
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(script);
            peer_env(&mut cmd, endpoint);
            cmd
        }
        _ => {
            let mut cmd = Command::new("python3");
            cmd.arg(work.join("fetch.py")).arg(out).args(ids);
            peer_env(&mut cmd, endpoint);
            cmd
        }
    }
}

fn peer_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("AWS_PROFILE");
}

fn check_output(tool: usize, out: &Path, n: usize) {
    let count = std::fs::read_dir(out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        count,
        n,
        "tool {tool} wrote {count} files in {}",
        out.display()
    );
}

fn peak_rss_kib(cmd: Command, work: &Path) -> u64 {
    let report = work.join("time.out");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    // dso-init runs with a cleared environment; the peers inherit ours.
    if cmd.get_envs().any(|(k, _)| k == "DSO_PLAN") {
        timed.env_clear();
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let ok = timed
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    if !ok {
        eprintln!("peak RSS measurement failed: {text}");
    }
    text.trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
