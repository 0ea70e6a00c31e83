//! The real `dso-init` binary against moto server over HTTP, with a cleared environment: the IRSA
//! chain (a JWT-shaped token file → STS AssumeRoleWithWebIdentity → Secrets Manager) and no
//! static keys. Every test plants a unique canary value and checks it appears in no output.
//! Small fakes on 127.0.0.1 stand in where moto cannot answer: throttling, 5xx, AccessDenied,
//! KMS failures, TLS with a private CA, an EKS Pod Identity agent.
//!
//! Needs `DSO_MOTO_ENDPOINT` (e.g. `tests/moto.sh start 5100` → `http://127.0.0.1:5100`).

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{Credentials, Region};
use aws_smithy_types::Blob;
use dso_test_support::FaultProxy;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ROLE: &str = "arn:aws:iam::123456789012:role/dso-test";
/// moto does not verify the token; the SDK only needs it to be there.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMiLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphcHAiLCJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20iXX0.c2lnbmF0dXJl";

fn moto() -> String {
    std::env::var("DSO_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "DSO_MOTO_ENDPOINT is not set: start moto with `tests/moto.sh start 5100` and export \
             DSO_MOTO_ENDPOINT=http://127.0.0.1:5100 (tests/run.sh does this)"
        )
    })
}

/// A unique name, so tests can share one moto.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A Secrets Manager client with static test keys, for setting secrets up.
async fn admin() -> Client {
    let conf = aws_sdk_secretsmanager::config::Builder::new()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto())
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    Client::from_conf(conf)
}

async fn create_string(name: &str, value: &str) -> String {
    admin()
        .await
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create secret in moto")
        .version_id
        .expect("version id")
}

/// One run of the binary in a scratch directory.
struct Scratch {
    dir: tempfile::TempDir,
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    termination: String,
    elapsed: Duration,
}

impl Ran {
    /// Asserts no canary appears in anything the process said.
    fn assert_silent_about(&self, canaries: &[&str]) {
        for c in canaries {
            for (what, text) in [
                ("stdout", &self.stdout),
                ("stderr", &self.stderr),
                ("termination message", &self.termination),
            ] {
                assert!(!text.contains(c), "canary {c:?} leaked into {what}: {text}");
            }
        }
    }
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        std::fs::create_dir(dir.path().join("mnt")).expect("mnt");
        Scratch { dir }
    }

    fn mount(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn plan(&self, secrets: serde_json::Value) -> String {
        self.plan_sized(secrets, 1 << 20)
    }

    fn plan_sized(&self, secrets: serde_json::Value, limit: u64) -> String {
        serde_json::json!({
            "version": 1,
            "mountPath": self.mount(),
            "sizeLimitBytes": limit,
            "secrets": secrets,
        })
        .to_string()
    }

    /// Runs with the IRSA variables only (plus `extra`), against moto.
    fn run(&self, plan: &str, extra: &[(&str, &str)]) -> Ran {
        let endpoint = moto();
        let token = self.dir.path().join("token");
        let mut env: Vec<(&str, &str)> = vec![
            ("AWS_REGION", "us-east-1"),
            ("AWS_ROLE_ARN", ROLE),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token.to_str().expect("utf-8"),
            ),
            ("AWS_ENDPOINT_URL", &endpoint),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            if !v.is_empty() {
                env.push((k, v));
            }
        }
        self.run_with(plan, &env)
    }

    fn run_with(&self, plan: &str, env: &[(&str, &str)]) -> Ran {
        let log = self.dir.path().join("termination-log");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_dso-init"))
            .env_clear()
            .envs(env.iter().copied())
            .env("DSO_PLAN", plan)
            .env("DSO_TERMINATION_LOG", &log)
            .output()
            .expect("run dso-init");
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            termination: std::fs::read_to_string(&log).unwrap_or_default(),
            elapsed: start.elapsed(),
        }
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.mount().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        mode(&self.mount().join(rel))
    }

    fn is_empty(&self) -> bool {
        std::fs::read_dir(self.mount())
            .expect("ls")
            .next()
            .is_none()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

fn one_file(secret_id: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut file = serde_json::json!({"path": "value", "secretId": secret_id});
    if let (Some(f), Some(e)) = (file.as_object_mut(), extra.as_object()) {
        f.extend(e.clone());
    }
    serde_json::json!([{"name": "app", "fileMode": 0o440, "files": [file]}])
}

#[tokio::test]
async fn a_string_secret_is_written_with_its_mode_through_the_irsa_chain_alone() {
    let canary = unique("canary-whole");
    let id = unique("it/whole");
    let version = create_string(&id, &canary).await;
    let s = Scratch::new();
    let ran = s.run(&s.plan(one_file(&id, serde_json::json!({}))), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    assert_eq!(s.mode("app/value"), 0o440);
    assert_eq!(s.mode("app"), 0o750);
    let report: dso_api::contract::InitReport =
        serde_json::from_str(&ran.termination).expect("the termination message is the report");
    assert_eq!(report.versions.len(), 1);
    assert_eq!(report.versions[0].secret_id, id);
    assert_eq!(report.versions[0].version_id, version);
    assert!(ran.stdout.contains("wrote 1 files"), "{}", ran.stdout);
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn awscurrent_awsprevious_and_a_pinned_version_id_each_get_their_own_value() {
    let (old, new) = (unique("canary-old"), unique("canary-new"));
    let id = unique("it/rotated");
    let v1 = create_string(&id, &old).await;
    let v2 = admin()
        .await
        .put_secret_value()
        .secret_id(&id)
        .secret_string(&new)
        .send()
        .await
        .expect("put")
        .version_id
        .expect("version id");
    let s = Scratch::new();
    let plan = s.plan(
        serde_json::json!([{"name": "rot", "fileMode": 0o400, "files": [
            {"path": "current", "secretId": id},
            {"path": "explicit-current", "secretId": id, "versionStage": "AWSCURRENT"},
            {"path": "previous", "secretId": id, "versionStage": "AWSPREVIOUS"},
            {"path": "pinned", "secretId": id, "versionId": v1},
        ]}]),
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("rot/current"), new.as_bytes());
    assert_eq!(s.read("rot/explicit-current"), new.as_bytes());
    assert_eq!(s.read("rot/previous"), old.as_bytes());
    assert_eq!(s.read("rot/pinned"), old.as_bytes());
    assert_eq!(s.mode("rot/pinned"), 0o400);
    assert_eq!(s.mode("rot"), 0o700);
    let mut ids: Vec<String> =
        serde_json::from_str::<dso_api::contract::InitReport>(&ran.termination)
            .expect("report")
            .versions
            .into_iter()
            .map(|v| v.version_id)
            .collect();
    ids.sort();
    ids.dedup();
    let mut want = vec![v1, v2];
    want.sort();
    assert_eq!(ids, want);
    assert!(
        ran.stdout.contains("from 3 secret versions"),
        "one call per distinct version: {}",
        ran.stdout
    );
    ran.assert_silent_about(&[&old, &new]);
}

#[tokio::test]
async fn a_json_key_is_written_as_its_string_and_other_json_as_json_text() {
    let canary = unique("canary-json");
    let id = unique("it/json");
    create_string(
        &id,
        &serde_json::json!({"password": canary, "port": 5432, "tags": ["a"]}).to_string(),
    )
    .await;
    let s = Scratch::new();
    let plan = s.plan(
        serde_json::json!([{"name": "db", "fileMode": 0o440, "files": [
            {"path": "password", "secretId": id, "jsonKey": "password"},
            {"path": "conf/port", "secretId": id, "jsonKey": "port"},
            {"path": "conf/tags", "secretId": id, "jsonKey": "tags"},
        ]}]),
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("db/password"), canary.as_bytes());
    assert_eq!(s.read("db/conf/port"), b"5432");
    assert_eq!(s.read("db/conf/tags"), br#"["a"]"#);
    assert_eq!(s.mode("db/conf"), 0o750);
    assert_eq!(s.mode("db/conf/port"), 0o440);
    assert!(
        ran.stdout.contains("from 1 secret versions"),
        "{}",
        ran.stdout
    );
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn expand_writes_one_file_per_top_level_key() {
    let (user, pass) = (unique("canary-user"), unique("canary-pass"));
    let id = unique("it/expand");
    create_string(
        &id,
        &serde_json::json!({"username": user, "password": pass}).to_string(),
    )
    .await;
    let s = Scratch::new();
    let plan = s.plan(
        serde_json::json!([{"name": "api", "fileMode": 0o444, "files": [
            {"secretId": id, "expand": true},
        ]}]),
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("api/username"), user.as_bytes());
    assert_eq!(s.read("api/password"), pass.as_bytes());
    assert_eq!(s.mode("api/password"), 0o444);
    assert_eq!(s.mode("api"), 0o755);
    ran.assert_silent_about(&[&user, &pass]);
}

#[tokio::test]
async fn a_binary_secret_is_written_as_its_bytes() {
    let canary = unique("canary-bin");
    let mut bytes = vec![0u8, 0xff, 0xfe, b'\n'];
    bytes.extend_from_slice(canary.as_bytes());
    let id = unique("it/binary");
    admin()
        .await
        .create_secret()
        .name(&id)
        .secret_binary(Blob::new(bytes.clone()))
        .send()
        .await
        .expect("create binary");
    let s = Scratch::new();
    let ran = s.run(&s.plan(one_file(&id, serde_json::json!({}))), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("app/value"), bytes);
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn a_missing_secret_fails_closed_with_one_line_naming_everything() {
    let canary = unique("canary-present");
    let present = unique("it/present");
    create_string(&present, &canary).await;
    let missing = unique("it/missing");
    let s = Scratch::new();
    let plan = s.plan(
        serde_json::json!([{"name": "shop", "fileMode": 0o440, "files": [
            {"path": "ok", "secretId": present},
            {"path": "db-password", "secretId": missing},
        ]}]),
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    let line = ran.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    for part in [
        "\"shop\"",
        "\"db-password\"",
        missing.as_str(),
        "ResourceNotFound",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    assert_eq!(ran.termination.trim(), line);
    assert!(s.is_empty(), "nothing is written when anything fails");
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn a_missing_json_key_fails_naming_the_key() {
    let canary = unique("canary-nokey");
    let id = unique("it/nokey");
    create_string(&id, &serde_json::json!({"password": canary}).to_string()).await;
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(&id, serde_json::json!({"jsonKey": "username"}))),
        &[],
    );
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    assert!(ran.stderr.contains("MissingJsonKey"), "{}", ran.stderr);
    assert!(ran.stderr.contains("\"username\""), "{}", ran.stderr);
    assert!(ran.stderr.contains(&id), "{}", ran.stderr);
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn a_json_key_on_a_value_that_is_not_json_fails_without_echoing_it() {
    let canary = unique("canary-notjson");
    let id = unique("it/notjson");
    create_string(&id, &format!("{{not json {canary}")).await;
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(&id, serde_json::json!({"jsonKey": "k"}))),
        &[],
    );
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    assert!(ran.stderr.contains("NotJson"), "{}", ran.stderr);
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn the_size_limit_is_checked_before_anything_is_written() {
    let canary = unique("canary-size");
    let id = unique("it/size");
    create_string(
        &id,
        &serde_json::json!({"a": canary, "b": canary}).to_string(),
    )
    .await;
    let s = Scratch::new();
    let plan = s.plan_sized(
        serde_json::json!([{"name": "big", "fileMode": 0o440, "files": [
            {"secretId": id, "expand": true},
        ]}]),
        4096,
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(7), "{}", ran.stderr);
    assert!(ran.stderr.contains("SizeLimit"), "{}", ran.stderr);
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn the_region_of_the_plan_is_enough_when_the_environment_names_none() {
    let canary = unique("canary-region");
    let id = unique("it/region");
    create_string(&id, &canary).await;
    let s = Scratch::new();
    let mut secrets = one_file(&id, serde_json::json!({}));
    secrets[0]["region"] = "us-east-1".into();
    let ran = s.run(&s.plan(secrets), &[("AWS_REGION", "")]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn no_region_anywhere_is_a_configuration_error() {
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("it/any", serde_json::json!({}))),
        &[("AWS_REGION", ""), ("AWS_EC2_METADATA_DISABLED", "true")],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("NoRegion"), "{}", ran.stderr);
}

#[test]
fn a_missing_or_broken_plan_is_a_configuration_error() {
    let s = Scratch::new();
    let out = Command::new(env!("CARGO_BIN_EXE_dso-init"))
        .env_clear()
        .env("DSO_TERMINATION_LOG", s.dir.path().join("log"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DSO_PLAN is not set"));
    let ran = s.run_with(r#"{"version":1,"mountPath":"/x","sizeLimitBytes":1,"secrets":[{"name":"a","fileMode":288,"files":[{"path":"../../etc/passwd","secretId":"s"}]}]}"#, &[]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("secrets[0].files[0].path"),
        "{}",
        ran.stderr
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn an_unreachable_endpoint_fails_within_the_deadline_with_a_clear_error() {
    let s = Scratch::new();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let ran = s.run(
        &s.plan(one_file("it/unreachable", serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL", &endpoint), ("DSO_DEADLINE", "4s")],
    );
    assert_eq!(ran.code, Some(6), "{}", ran.stderr);
    assert!(
        ran.elapsed < Duration::from_secs(5),
        "took {:?}",
        ran.elapsed
    );
    assert!(ran.stderr.contains("EndpointUnreachable"), "{}", ran.stderr);
    assert!(ran.stderr.contains("it/unreachable"), "{}", ran.stderr);
    assert!(ran.stderr.contains("attempts"), "{}", ran.stderr);
}

#[test]
fn an_endpoint_that_never_answers_fails_at_the_deadline() {
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("it/silent", serde_json::json!({}))),
        &[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("DSO_DEADLINE", "3s"),
            ("DSO_ATTEMPT_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(ran.code, Some(6), "{}", ran.stderr);
    assert!(
        ran.elapsed < Duration::from_secs(4),
        "took {:?}",
        ran.elapsed
    );
    assert!(ran.stderr.contains("Timeout"), "{}", ran.stderr);
    drop(silent);
}

/// A fake Secrets Manager that throttles the first `throttle` calls, then answers with `value`.
fn throttling_fake(throttle: usize, value: String) -> (String, Arc<AtomicUsize>) {
    fake(
        throttle,
        (
            "400 Bad Request",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        ),
        value,
    )
}

/// A fake Secrets Manager that answers the first `failures` calls with `failure` (status line,
/// JSON body) and then with `value`. Returns its endpoint and a counter of calls.
fn fake(
    failures: usize,
    failure: (&'static str, &'static str),
    value: String,
) -> (String, Arc<AtomicUsize>) {
    fake_with(failures, failure, value, None)
}

/// [`fake`], over TLS when `tls` is given.
fn fake_with(
    failures: usize,
    failure: (&'static str, &'static str),
    value: String,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://{}", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (counter, value, tls) = (counter.clone(), value.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    answer(
                        rustls::StreamOwned::new(conn, stream),
                        &counter,
                        failures,
                        failure,
                        &value,
                    )
                }
                None => answer(stream, &counter, failures, failure, &value),
            });
        }
    });
    (endpoint, calls)
}

/// Answers HTTP/1.1 requests on one connection until the client closes it.
fn answer<S: Read + Write>(
    stream: S,
    counter: &AtomicUsize,
    failures: usize,
    failure: (&str, &str),
    value: &str,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let (status, body) = if n < failures {
            (failure.0, failure.1.to_string())
        } else {
            (
                "200 OK",
                serde_json::json!({
                    "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:fake-AbCdEf",
                    "Name": "fake", "VersionId": "fake-version-1",
                    "SecretString": value, "VersionStages": ["AWSCURRENT"],
                })
                .to_string(),
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let out = reader.get_mut();
        if out
            .write_all(response.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A test CA (PEM) and a server configuration for 127.0.0.1 signed by it.
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
    (ca_cert.pem(), Arc::new(config))
}

#[test]
fn throttling_is_retried_and_the_secrets_manager_endpoint_variable_is_honoured() {
    let canary = unique("canary-throttle");
    let (fake, calls) = throttling_fake(2, canary.clone());
    let s = Scratch::new();
    // STS goes to moto through AWS_ENDPOINT_URL; Secrets Manager to the fake.
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake)],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    assert!(
        ran.termination.contains("fake-version-1"),
        "{}",
        ran.termination
    );
    ran.assert_silent_about(&[&canary]);
}

#[test]
fn throttling_that_never_ends_fails_after_the_attempt_limit() {
    let canary = unique("canary-throttled");
    let (fake, calls) = throttling_fake(usize::MAX, canary.clone());
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake),
            ("DSO_MAX_ATTEMPTS", "3"),
        ],
    );
    assert_eq!(ran.code, Some(6), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(
        ran.stderr.contains("Throttling: Rate exceeded"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("after 3 attempts"), "{}", ran.stderr);
    ran.assert_silent_about(&[&canary]);
}

#[test]
fn a_5xx_answer_is_retried() {
    let canary = unique("canary-5xx");
    let (fake, calls) = fake(
        2,
        (
            "503 Service Unavailable",
            r#"{"__type":"InternalServiceError","message":"try again"}"#,
        ),
        canary.clone(),
    );
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake)],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    ran.assert_silent_about(&[&canary]);
}

#[test]
fn access_denied_fails_at_once_with_the_aws_message() {
    let canary = unique("canary-denied");
    let (fake, calls) = fake(
        usize::MAX,
        (
            "400 Bad Request",
            r#"{"__type":"AccessDeniedException","message":"User: arn:aws:sts::123456789012:assumed-role/dso-test/x is not authorized to perform: secretsmanager:GetSecretValue"}"#,
        ),
        canary.clone(),
    );
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("prod/db", serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake)],
    );
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    assert!(
        ran.stderr
            .contains(r#"secret "prod/db": AccessDenied: User: "#),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("not authorized"), "{}", ran.stderr);
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

#[test]
fn a_kms_decryption_failure_is_named() {
    let canary = unique("canary-kms");
    let (fake, calls) = fake(
        usize::MAX,
        (
            "400 Bad Request",
            r#"{"__type":"DecryptionFailure","message":"Secrets Manager can't decrypt the protected secret text using the provided KMS key."}"#,
        ),
        canary.clone(),
    );
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("prod/db", serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake)],
    );
    assert_eq!(ran.code, Some(3), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        ran.stderr
            .contains("DecryptionFailure: Secrets Manager can't decrypt"),
        "{}",
        ran.stderr
    );
    ran.assert_silent_about(&[&canary]);
}

#[test]
fn an_https_endpoint_with_a_private_ca_works_when_ssl_cert_file_names_the_ca() {
    let canary = unique("canary-tls");
    let (ca, config) = test_pki();
    let (fake, calls) = fake_with(0, ("", ""), canary.clone(), Some(config));
    let s = Scratch::new();
    let ca_file = s.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("ca");
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake),
            ("SSL_CERT_FILE", ca_file.to_str().expect("utf-8")),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    ran.assert_silent_about(&[&canary]);
}

/// The CA bundle as the webhook hands it to dso-init (`--init-ca-bundle-configmap`): a
/// ConfigMap volume, laid out as the kubelet writes one (`..data` and the key as symlinks into
/// a timestamped directory), named by SSL_CERT_DIR, while SSL_CERT_FILE keeps the image's public
/// roots. The private CA is trusted through the directory alone.
#[test]
fn a_ca_bundle_configmap_mounted_as_the_webhook_does_is_trusted_beside_the_image_roots() {
    let canary = unique("canary-ca-bundle");
    let (ca, config) = test_pki();
    let (fake, calls) = fake_with(0, ("", ""), canary.clone(), Some(config));
    let s = Scratch::new();
    let volume = s.dir.path().join("ca-bundle");
    let data = volume.join("..2026_11_29_22_00_00.123456789");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join(dso_api::annotations::CA_BUNDLE_FILE), ca).expect("ca");
    std::os::unix::fs::symlink(data.file_name().expect("name"), volume.join("..data"))
        .expect("..data");
    std::os::unix::fs::symlink(
        Path::new("..data").join(dso_api::annotations::CA_BUNDLE_FILE),
        volume.join(dso_api::annotations::CA_BUNDLE_FILE),
    )
    .expect("key link");
    // The image's bundle of public roots (tests/images.sh requires the host to have it).
    let public_roots = "/etc/ssl/certs/ca-certificates.crt";
    assert!(
        Path::new(public_roots).exists(),
        "{public_roots} (apt-get install ca-certificates)"
    );
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake),
            ("SSL_CERT_FILE", public_roots),
            ("SSL_CERT_DIR", volume.to_str().expect("utf-8")),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    ran.assert_silent_about(&[&canary]);

    // The same without the directory: the public roots alone do not trust the private CA.
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake),
            ("SSL_CERT_FILE", public_roots),
        ],
    );
    assert_eq!(ran.code, Some(6), "{}", ran.stderr);
    assert!(ran.stderr.contains("TlsError"), "{}", ran.stderr);
}

#[test]
fn an_untrusted_https_endpoint_fails_at_once_with_a_tls_hint() {
    let canary = unique("canary-untrusted");
    let (_, config) = test_pki();
    let (fake, calls) = fake_with(0, ("", ""), canary.clone(), Some(config));
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file("fake", serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL_SECRETS_MANAGER", &fake)],
    );
    assert_eq!(ran.code, Some(6), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no request is sent");
    assert!(ran.stderr.contains("TlsError"), "{}", ran.stderr);
    assert!(ran.stderr.contains("CA bundle"), "{}", ran.stderr);
    assert!(
        !ran.stderr.contains("attempts"),
        "not retried: {}",
        ran.stderr
    );
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

/// A fake EKS Pod Identity agent: answers GETs that carry `token` as Authorization with
/// credentials (moto accepts any). Returns its URL and a counter of authorized calls.
fn pod_identity_agent(token: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/v1/credentials",
        listener.local_addr().expect("addr")
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut authorized = false;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    authorized = line.split_once(':').map(|(_, v)| v.trim()) == Some(token);
                }
            }
            let (status, body) = if authorized {
                counter.fetch_add(1, Ordering::SeqCst);
                (
                    "200 OK",
                    serde_json::json!({
                        "AccessKeyId": "ASIAPODIDENTITYTEST", "SecretAccessKey": "pod-identity-secret",
                        "Token": "pod-identity-session", "AccountId": "123456789012",
                        "Expiration": "2099-01-01T00:00:00Z",
                    })
                    .to_string(),
                )
            } else {
                ("401 Unauthorized", "{}".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = reader.get_mut().write_all(response.as_bytes());
        }
    });
    (url, calls)
}

#[tokio::test]
async fn eks_pod_identity_credentials_work_through_the_default_chain() {
    const AGENT_TOKEN: &str = "eks-pod-identity-token";
    let canary = unique("canary-podid");
    let id = unique("it/podid");
    create_string(&id, &canary).await;
    let (agent, calls) = pod_identity_agent(AGENT_TOKEN);
    let s = Scratch::new();
    let token = s.dir.path().join("eks-pod-identity-token");
    std::fs::write(&token, AGENT_TOKEN).expect("token");
    let endpoint = moto();
    // What the EKS Pod Identity webhook gives a container, and no IRSA, no keys.
    let ran = s.run_with(
        &s.plan(one_file(&id, serde_json::json!({}))),
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &agent),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token.to_str().expect("utf-8"),
            ),
            // As the webhook sets them: they name IRSA sessions only, Pod Identity is untouched.
            (dso_api::contract::POD_NAMESPACE_ENV, "shop"),
            (dso_api::contract::POD_NAME_ENV, "web-0"),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "credentials came from the agent"
    );
    assert_eq!(s.read("app/value"), canary.as_bytes());
    ran.assert_silent_about(&[&canary, "pod-identity-secret"]);
}

#[test]
fn a_secret_arn_whose_region_is_a_host_is_refused_before_any_aws_call() {
    // Any request, to STS or Secrets Manager, would reach this fake and be counted.
    let (fake, calls) = fake(0, ("", ""), unique("canary-unused"));
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(
            "arn:aws:secretsmanager:x@127.0.0.1/:123456789012:secret:db",
            serde_json::json!({}),
        )),
        &[("AWS_ENDPOINT_URL", &fake), ("AWS_REGION", "")],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    let line = ran.stderr.trim();
    assert!(
        line.contains(
            "secrets[0].files[0].secretId: is not a Secrets Manager secret ARN \
             (arn:<partition>:secretsmanager:<region>:<12-digit account>:secret:<name>): \
             region \"x@127.0.0.1/\" is not an AWS region"
        ),
        "our own message, naming the field: {line}"
    );
    assert!(!line.contains("endpoint"), "not the SDK's: {line}");
    assert_eq!(ran.termination.trim(), line);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no request was sent");
    assert!(s.is_empty());
}

#[tokio::test]
async fn key_names_from_a_secret_never_reach_the_termination_message() {
    // expand names files after the value's keys: they describe the secret, and the termination
    // message is copied into the pod's status, which more people may read than the logs.
    let (good_key, bad_key) = (unique("key-customer"), unique("key with space"));
    let canary = unique("canary-keys");
    let id = unique("it/keys");
    create_string(
        &id,
        &serde_json::json!({ good_key.as_str(): canary }).to_string(),
    )
    .await;
    let s = Scratch::new();
    let plan = s.plan(
        serde_json::json!([{"name": "api", "fileMode": 0o440, "files": [
            {"secretId": id, "expand": true},
        ]}]),
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read(&format!("api/{good_key}")), canary.as_bytes());
    let report: dso_api::contract::InitReport =
        serde_json::from_str(&ran.termination).expect("the report");
    assert_eq!(report.versions.len(), 1);
    assert_eq!(report.versions[0].secret_id, id);
    ran.assert_silent_about(&[&canary, &good_key]);

    let bad_id = unique("it/badkeys");
    create_string(
        &bad_id,
        &serde_json::json!({ bad_key.as_str(): canary }).to_string(),
    )
    .await;
    let s = Scratch::new();
    let plan = s.plan(
        serde_json::json!([{"name": "api", "fileMode": 0o440, "files": [
            {"secretId": bad_id, "expand": true},
        ]}]),
    );
    let ran = s.run(&plan, &[]);
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&bad_key),
        "the log names it: {}",
        ran.stderr
    );
    assert!(!ran.termination.contains(&bad_key), "{}", ran.termination);
    assert!(
        ran.termination.contains("InvalidKeyName")
            && ran.termination.contains(&bad_id)
            && ran.termination.contains("kubectl logs <pod> -c dso-init"),
        "{}",
        ran.termination
    );
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

/// A forwarding proxy in front of moto that records the body of every request (STS speaks the
/// query protocol: a form-encoded body). Each connection carries one request.
fn recording_proxy(upstream: String) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = bodies.clone();
    let upstream = upstream
        .strip_prefix("http://")
        .expect("moto over http")
        .to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (record, upstream) = (record.clone(), upstream.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let (mut head, mut length, mut line) = (String::new(), 0usize, String::new());
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if !lower.starts_with("connection:") {
                        head.push_str(&line);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                record
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&body).into_owned());
                let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                    return;
                };
                let mut request = format!("{head}connection: close\r\n\r\n").into_bytes();
                request.extend_from_slice(&body);
                let mut response = Vec::new();
                if up.write_all(&request).is_err() || up.read_to_end(&mut response).is_err() {
                    return;
                }
                // Tell the client the connection ends here, whatever moto said.
                let text = String::from_utf8_lossy(&response).into_owned();
                let Some((status_and_headers, rest)) = text.split_once("\r\n\r\n") else {
                    return;
                };
                let headers: Vec<&str> = status_and_headers
                    .split("\r\n")
                    .filter(|h| !h.to_ascii_lowercase().starts_with("connection:"))
                    .collect();
                let out = format!(
                    "{}\r\nconnection: close\r\n\r\n{rest}",
                    headers.join("\r\n")
                );
                let _ = reader.get_mut().write_all(out.as_bytes());
            });
        }
    });
    (endpoint, bodies)
}

/// The `RoleSessionName` of every AssumeRoleWithWebIdentity request the proxy saw.
fn session_names(bodies: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    bodies
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b.contains("Action=AssumeRoleWithWebIdentity"))
        .filter_map(|b| {
            b.split('&')
                .find_map(|pair| pair.strip_prefix("RoleSessionName="))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn the_irsa_role_session_is_named_after_the_pod() {
    let canary = unique("canary-session");
    let id = unique("it/session");
    create_string(&id, &canary).await;
    let (sts, bodies) = recording_proxy(moto());
    let s = Scratch::new();
    let plan = s.plan(one_file(&id, serde_json::json!({})));
    let pod = "web-7d9c8b6f4d-x2x9k";
    let ran = s.run(
        &plan,
        &[
            ("AWS_ENDPOINT_URL_STS", &sts),
            (dso_api::contract::POD_NAMESPACE_ENV, "shop"),
            (dso_api::contract::POD_NAME_ENV, pod),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    assert_eq!(session_names(&bodies), ["shop.web-7d9c8b6f4d-x2x9k"]);
    ran.assert_silent_about(&[&canary]);

    // A name too long for STS is shortened the documented way.
    bodies.lock().expect("lock").clear();
    let long_pod = format!("{}-5f7b9c8d6e-abcde", "checkout".repeat(8));
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(&id, serde_json::json!({}))),
        &[
            ("AWS_ENDPOINT_URL_STS", &sts),
            (dso_api::contract::POD_NAMESPACE_ENV, "payments"),
            (dso_api::contract::POD_NAME_ENV, &long_pod),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let names = session_names(&bodies);
    assert_eq!(
        names,
        [dso_api::contract::role_session_name("payments", &long_pod).expect("name")]
    );
    assert_eq!(names[0].len(), 64);
    assert!(names[0].starts_with("payments.checkout"), "{}", names[0]);

    // Without the pod's identity (an older webhook), the SDK's default name, as before.
    bodies.lock().expect("lock").clear();
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(&id, serde_json::json!({}))),
        &[("AWS_ENDPOINT_URL_STS", &sts)],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let names = session_names(&bodies);
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with("web-identity-token-"), "{names:?}");
}

#[tokio::test]
async fn static_keys_still_work_when_the_pod_is_named_but_has_no_web_identity() {
    let canary = unique("canary-keys-env");
    let id = unique("it/envkeys");
    create_string(&id, &canary).await;
    let s = Scratch::new();
    let endpoint = moto();
    let ran = s.run_with(
        &s.plan(one_file(&id, serde_json::json!({}))),
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_ACCESS_KEY_ID", "AKIAENVTEST"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            (dso_api::contract::POD_NAMESPACE_ENV, "shop"),
            (dso_api::contract::POD_NAME_ENV, "web-0"),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("app/value"), canary.as_bytes());
    ran.assert_silent_about(&[&canary, "env-secret"]);
}

#[tokio::test]
async fn a_json_pointer_writes_a_nested_value_and_a_miss_names_the_pointer() {
    let canary = unique("canary-nested");
    let id = unique("it/nested");
    create_string(
        &id,
        &serde_json::json!({"db": {"primary": {"password": canary}}}).to_string(),
    )
    .await;
    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(
            &id,
            serde_json::json!({"jsonKey": "/db/primary/password"}),
        )),
        &[],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("app/value"), canary.as_bytes());

    let s = Scratch::new();
    let ran = s.run(
        &s.plan(one_file(
            &id,
            serde_json::json!({"jsonKey": "/db/replica/password"}),
        )),
        &[],
    );
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(r#""/db/replica/password""#),
        "{}",
        ran.stderr
    );
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

/// Env files are what the kubelet reads for `fileKeyRef`: `NAME='value'` lines, mode 0440.
#[tokio::test]
async fn env_files_carry_dso_references_and_refuse_values_they_cannot_carry() {
    let canary = unique("canary-env");
    let id = unique("it/env");
    create_string(
        &id,
        &serde_json::json!({"password": format!("{canary}=x\ny"), "quoted": format!("it's {canary}")})
            .to_string(),
    )
    .await;
    let s = Scratch::new();
    let with_env = |var_file: &str| {
        let mut plan: serde_json::Value = serde_json::from_str(&s.plan(serde_json::json!([
            {"name": "db", "fileMode": 0o440, "files": [
                {"path": "password", "secretId": id, "jsonKey": "password"},
                {"path": "quoted", "secretId": id, "jsonKey": "quoted"},
            ]}
        ])))
        .expect("plan");
        plan["envFiles"] = serde_json::json!([{"container": "app", "vars": [
            {"name": "DB_PASSWORD", "dsoSecret": "db", "file": var_file}
        ]}]);
        plan.to_string()
    };
    let ran = s.run(&with_env("password"), &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        s.read(".dso-env/app.env"),
        format!("DB_PASSWORD='{canary}=x\ny'\n").as_bytes()
    );
    assert_eq!(s.mode(".dso-env/app.env"), 0o440);
    assert_eq!(s.mode(".dso-env"), 0o750);
    ran.assert_silent_about(&[&canary]);

    let s2 = Scratch::new();
    let plan = with_env("quoted").replace(
        &s.mount().display().to_string(),
        &s2.mount().display().to_string(),
    );
    let ran = s2.run(&plan, &[]);
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    for named in ["DB_PASSWORD", "dso://db/quoted", "\"app\"", "single quote"] {
        assert!(ran.stderr.contains(named), "{named}: {}", ran.stderr);
    }
    assert!(
        s2.is_empty(),
        "nothing is written when a value cannot be carried"
    );
    ran.assert_silent_about(&[&canary]);
}

#[tokio::test]
async fn a_template_renders_several_secrets_and_a_render_error_names_its_line_not_a_value() {
    let canary = unique("canary-tpl");
    let db = unique("it/tpl-db");
    let api = unique("it/tpl-api");
    create_string(
        &db,
        &serde_json::json!({"username": "app", "password": canary, "conn": {"port": 5432}})
            .to_string(),
    )
    .await;
    create_string(&api, &format!("token-{canary}")).await;
    let plan_with = |s: &Scratch, template: &str| {
        s.plan(serde_json::json!([{"name": "app", "fileMode": 0o440, "files": [{
            "path": "conf/app.yaml", "template": template,
            "sources": {"db": {"secretId": db}, "port": {"secretId": db, "jsonKey": "/conn/port"},
                        "api": {"secretId": api}}
        }]}]))
    };
    let s = Scratch::new();
    let ran = s.run(
        &plan_with(
            &s,
            "url: postgres://{{ db.username }}:{{ db.password }}@db:{{ port }}/app\ntoken: {{ api }}\n",
        ),
        &[],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        s.read("app/conf/app.yaml"),
        format!("url: postgres://app:{canary}@db:5432/app\ntoken: token-{canary}\n").as_bytes()
    );
    assert!(
        ran.stdout.contains("from 2 secret versions"),
        "{}",
        ran.stdout
    );
    ran.assert_silent_about(&[&canary]);

    let s = Scratch::new();
    let ran = s.run(&plan_with(&s, "ok: 1\nbad: {{ db.pasword }}\n"), &[]);
    assert_eq!(ran.code, Some(5), "{}", ran.stderr);
    for named in ["TemplateError", "conf/app.yaml", "line 2", "undefined"] {
        assert!(ran.stderr.contains(named), "{named}: {}", ran.stderr);
    }
    assert!(s.is_empty());
    ran.assert_silent_about(&[&canary]);
}

/// Three secrets in two containers' files; the middle one is the one a fault hits.
async fn three_secrets(prefix: &str) -> (Vec<String>, Vec<String>, serde_json::Value) {
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| unique(&format!("it/{prefix}-{n}")))
        .collect();
    let mut canaries = Vec::new();
    for id in &ids {
        let canary = unique(&format!("canary-{prefix}"));
        create_string(id, &canary).await;
        canaries.push(canary);
    }
    let secrets = serde_json::json!([
        {"name": "web", "fileMode": 0o440, "files": [
            {"path": "a", "secretId": ids[0]}, {"path": "b", "secretId": ids[1]}]},
        {"name": "jobs", "fileMode": 0o440, "files": [{"path": "c", "secretId": ids[2]}]},
    ]);
    (ids, canaries, secrets)
}

/// Every file of the plan or none: the mount holds nothing, not even a temporary file.
fn assert_nothing_written(s: &Scratch, what: &str) {
    let mut left = Vec::new();
    let mut stack = vec![s.mount()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("ls").flatten() {
            left.push(e.path().display().to_string());
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "{what}: the volume holds {left:?}");
}

#[tokio::test]
async fn a_fault_on_one_secret_mid_fetch_leaves_no_file_at_all_and_exits_with_its_code() {
    let proxy = FaultProxy::start(&moto(), None);
    let (ids, canaries, secrets) = three_secrets("mid").await;
    let canaries: Vec<&str> = canaries.iter().map(String::as_str).collect();
    // STS straight to moto; Secrets Manager through the proxy. Short limits: the transient
    // faults are retried until the attempts or the deadline run out.
    let env = [
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.url.as_str()),
        ("DSO_MAX_ATTEMPTS", "2"),
        ("DSO_DEADLINE", "6s"),
        ("DSO_ATTEMPT_TIMEOUT", "2s"),
        ("DSO_CONCURRENCY", "1"),
    ];
    // (fault, exit code, what stderr says)
    let cases = [
        (
            serde_json::json!({"mode": "deny", "match": ids[1]}),
            3,
            "AccessDenied",
        ),
        (
            serde_json::json!({"mode": "throttle", "match": ids[1]}),
            6,
            "Throttling",
        ),
        (
            serde_json::json!({"mode": "toomany", "match": ids[1]}),
            6,
            "Throttling: Too many requests",
        ),
        (serde_json::json!({"mode": "cut", "match": ids[1]}), 6, ""),
        (
            serde_json::json!({"mode": "slow", "delay": 4, "match": ids[1]}),
            6,
            "Timeout",
        ),
        (
            serde_json::json!({"mode": "down"}),
            6,
            "EndpointUnreachable",
        ),
    ];
    let mut table = Vec::new();
    for (fault, code, says) in cases {
        proxy.set(fault.clone());
        let s = Scratch::new();
        let ran = s.run(&s.plan(secrets.clone()), &env);
        let first_line = ran.stderr.lines().next().unwrap_or_default().to_string();
        table.push(format!(
            "| {} | exit {:?} in {:.1}s | {first_line} |",
            fault["mode"].as_str().unwrap_or_default(),
            ran.code,
            ran.elapsed.as_secs_f64()
        ));
        assert_eq!(ran.code, Some(code), "{fault}: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{fault}: {}", ran.stderr);
        if fault["mode"] != "down" {
            assert!(
                ran.stderr.contains(&ids[1]),
                "{fault} names the secret: {}",
                ran.stderr
            );
        }
        assert_nothing_written(&s, &fault.to_string());
        ran.assert_silent_about(&canaries);
    }
    // The same plan through the same proxy, fault gone: all three files.
    proxy.set(serde_json::json!({"mode": "pass"}));
    let s = Scratch::new();
    let ran = s.run(&s.plan(secrets.clone()), &env);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(s.read("web/a"), canaries[0].as_bytes());
    assert_eq!(s.read("web/b"), canaries[1].as_bytes());
    assert_eq!(s.read("jobs/c"), canaries[2].as_bytes());
    table.push(format!(
        "| pass | exit 0 in {:.1}s | all 3 files |",
        ran.elapsed.as_secs_f64()
    ));
    eprintln!(
        "dso-init, fault on secret b of a, b, c:\n{}",
        table.join("\n")
    );
    assert!(
        proxy.log().contains("GetSecretValue deny"),
        "{}",
        proxy.log()
    );
}
