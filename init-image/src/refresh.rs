//! The `dso-refresh` sidecar (`dso-init refresh`): keeps the `strategy: InPlace` DsoSecrets of
//! its pod current, without polling AWS.
//!
//! The operator follows every secret centrally and writes, on each consuming pod, the
//! annotation `dso.dev/desired-versions` (DsoSecret → versions hash); the kubelet keeps a
//! downward-API file of it current in this container. Once a second the sidecar reads that
//! local file and compares each entry with the hash of the generation the volume holds
//! (`..dso/state.json`, written by `dso-init` first). When they differ it fetches that
//! DsoSecret again with the pod's own identity, exactly as `dso-init` does, and swaps its
//! directory at once ([`crate::swap`]).
//!
//! A failed fetch (or extraction, or write) changes no file: the sidecar exits non-zero with the
//! one-line reason in its termination message (never a value), like `dso-init`. The kubelet
//! shows it in the pod's status (`lastState` of `dso-refresh`, a restart, CrashLoopBackOff) and
//! restarts the sidecar after its back-off; the new instance tries again. The operator reads
//! that status to count stale pods. No Kubernetes permission is needed in the pod.
//!
//! With `refresh.signal`, once the new generation is linked and the state written, the sidecar
//! sends each DsoSecret's signal to the main process of the target container ([`crate::signal`]):
//! one signal per swap that changed the versions (two DsoSecrets with the same signal swapped
//! together send it once), never after a failed fetch. The signals a swap owes are recorded
//! first ([`Pending`], `<mount>/..dso/signal-pending.json`, written before the state that makes
//! the swap current) and forgotten once sent. When the container has no process for
//! [`SIGNAL_WAIT`] or the signal cannot be sent, the sidecar exits with the reason (exit 9)
//! and the record stays: the restarted sidecar sends what is still owed before anything else,
//! and exits 9 again if it still cannot. A signal is no longer owed once the container's main
//! process is not the one that ran at the swap: a process started after the swap reads the new
//! files (and is not sent a signal it may not handle yet).

use crate::error::{Error, Result};
use crate::{Settings, signal, swap};
use dso_api::RefreshSignal;
use dso_api::contract::InitPlan;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the sidecar reads the operator's word, and how often.
#[derive(Clone, Debug)]
pub struct Options {
    /// The downward-API file holding `dso.dev/desired-versions`.
    pub desired_file: PathBuf,
    /// How often the file is read (a local read; no API or AWS call).
    pub poll: Duration,
    /// The pod's UID (`DSO_POD_UID`), by which the target container's processes are known.
    pub pod_uid: Option<String>,
    /// Where the processes are listed (`/proc`).
    pub proc_root: PathBuf,
}

/// How long a signal waits for the target container to have a process.
pub const SIGNAL_WAIT: Duration = Duration::from_secs(5);

/// The signals a swap owes the app, recorded until sent (`<mount>/..dso/signal-pending.json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// Each signal with the DsoSecrets it is for, in the order they are sent.
    pub signals: Vec<(RefreshSignal, Vec<String>)>,
    /// The target container's main process just after the swap.
    pub main_at_swap: AtSwap,
}

/// The target container's main process, as seen just after a swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AtSwap {
    /// This process ran: it is owed the signal, a later one is not.
    Process(signal::Process),
    /// The container had no process (restarting): the one it starts reads the new files.
    NoProcess,
    /// The processes could not be listed: whatever runs is owed the signal.
    Unknown,
}

impl AtSwap {
    /// True when `main`, the container's main process now, is owed the signal.
    pub fn owed(self, main: signal::Process) -> bool {
        match self {
            AtSwap::Process(p) => p == main,
            AtSwap::NoProcess => false,
            AtSwap::Unknown => true,
        }
    }
}

/// The signals to send after swapping `swapped`: those of the DsoSecrets whose versions hash
/// changed from `before` to `after`, each signal once, in the plan's order. A swap that
/// rewrote the same versions (AWS had not moved yet) signals nothing.
pub fn signals_due(
    plan: &InitPlan,
    swapped: &[String],
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<(RefreshSignal, Vec<String>)> {
    let mut out: Vec<(RefreshSignal, Vec<String>)> = Vec::new();
    for s in plan.secrets.iter().filter(|s| swapped.contains(&s.name)) {
        let Some(sig) = s.signal else { continue };
        if after.get(&s.name).is_none() || before.get(&s.name) == after.get(&s.name) {
            continue;
        }
        match out.iter_mut().find(|(x, _)| *x == sig) {
            Some((_, names)) => names.push(s.name.clone()),
            None => out.push((sig, vec![s.name.clone()])),
        }
    }
    out
}

/// The InPlace DsoSecrets to fetch now: those with a desired hash that differs from the one
/// their current generation was built from, and that this process has not already fetched for
/// that same desired hash (AWS may have moved on again meanwhile: the next annotation change
/// brings the sidecar back).
pub fn due(
    in_place: &[String],
    desired: &BTreeMap<String, String>,
    state: &BTreeMap<String, String>,
    acted: &BTreeMap<String, String>,
) -> Vec<String> {
    in_place
        .iter()
        .filter(|name| {
            desired.get(*name).is_some_and(|want| {
                state.get(*name) != Some(want) && acted.get(*name) != Some(want)
            })
        })
        .cloned()
        .collect()
}

/// Runs until SIGTERM (`Ok`), or until a refresh fails (`Err`, files unchanged).
pub async fn run(plan: &InitPlan, settings: Settings, opts: &Options) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                eprintln!("dso-refresh: warning: cannot handle SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = watch(plan, settings, opts) => r,
        () = stop => {
            println!("dso-refresh: SIGTERM, stopping");
            Ok(())
        }
    }
}

async fn watch(plan: &InitPlan, settings: Settings, opts: &Options) -> Result<()> {
    let mount = Path::new(&plan.mount_path);
    let in_place: Vec<String> = plan
        .secrets
        .iter()
        .filter(|s| s.in_place)
        .map(|s| s.name.clone())
        .collect();
    println!(
        "dso-refresh: keeping {} current, told through {}",
        in_place.join(", "),
        opts.desired_file.display()
    );
    if let Some(pending) = swap::read_pending::<Pending>(mount) {
        println!(
            "dso-refresh: {} still owed from before a restart; sending it first",
            describe(&pending.signals)
        );
        deliver(plan, opts, mount, pending, None).await?;
    }
    let mut acted: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let desired = std::fs::read_to_string(&opts.desired_file)
            .map(|s| dso_api::inplace::parse(&s))
            .unwrap_or_default();
        let mut state = swap::read_state(mount);
        let todo = due(&in_place, &desired, &state, &acted);
        if !todo.is_empty() {
            let started = std::time::Instant::now();
            let hashes = crate::refresh(plan, &todo, settings.clone()).await?;
            let signals = signals_due(plan, &todo, &state, &hashes);
            for name in &todo {
                if let Some(want) = desired.get(name) {
                    acted.insert(name.clone(), want.clone());
                }
            }
            let current = todo
                .iter()
                .filter(|n| hashes.get(*n) == desired.get(*n))
                .count();
            // What the swap owes the app is recorded before the state that makes it current:
            // a sidecar that stops before sending it leaves the record to the next one.
            let pending = (!signals.is_empty()).then(|| Pending {
                signals,
                main_at_swap: main_at_swap(plan, opts),
            });
            if let Some(p) = &pending {
                swap::write_pending(mount, p)?;
            }
            state.extend(hashes);
            swap::write_state(mount, &state)?;
            println!(
                "dso-refresh: swapped {} in {} ms ({current} of {} at the desired versions)",
                todo.join(", "),
                started.elapsed().as_millis(),
                todo.len()
            );
            if let Some(p) = pending {
                deliver(plan, opts, mount, p, Some(started)).await?;
            }
        }
        tokio::time::sleep(opts.poll).await;
    }
}

fn describe(signals: &[(RefreshSignal, Vec<String>)]) -> String {
    signals
        .iter()
        .map(|(sig, names)| format!("{} for {}", sig.name(), names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The target container's main process right now, without waiting.
fn main_at_swap(plan: &InitPlan, opts: &Options) -> AtSwap {
    let container = plan.signal_target.as_ref().map(|t| t.container.as_str());
    let uid = opts.pod_uid.as_deref().filter(|u| !u.is_empty());
    let (Some(container), Some(uid)) = (container, uid) else {
        return AtSwap::Unknown;
    };
    match signal::find_main(&opts.proc_root, uid, container) {
        Ok(Some(p)) => AtSwap::Process(p),
        Ok(None) => AtSwap::NoProcess,
        Err(_) => AtSwap::Unknown,
    }
}

/// Sends the signals of `pending` to the target container's main process, in order, and
/// forgets each once sent; none is sent (and all are forgotten) when the main process started
/// after the swap. On failure the ones not sent stay recorded.
async fn deliver(
    plan: &InitPlan,
    opts: &Options,
    mount: &Path,
    mut pending: Pending,
    started: Option<std::time::Instant>,
) -> Result<()> {
    while let Some((sig, names)) = pending.signals.first().cloned() {
        let main = main_process(plan, opts, sig, &names).await?;
        if !pending.main_at_swap.owed(main) {
            println!(
                "dso-refresh: the main process of the target container (pid {}) started after the swap and read the new files: {} not sent",
                main.pid,
                describe(&pending.signals)
            );
            break;
        }
        notify(plan, sig, &names, main, started)?;
        pending.signals.remove(0);
        if !pending.signals.is_empty() {
            swap::write_pending(mount, &pending)?;
        }
    }
    swap::clear_pending(mount)
}

fn signal_error(plan: &InitPlan, sig: RefreshSignal, names: &[String], why: String) -> Error {
    Error::Signal {
        dso_secrets: names.join(", "),
        signal: sig.name(),
        container: plan
            .signal_target
            .as_ref()
            .map(|t| t.container.clone())
            .unwrap_or_default(),
        why,
    }
}

/// The target container's main process, waiting up to [`SIGNAL_WAIT`] for it to have one.
async fn main_process(
    plan: &InitPlan,
    opts: &Options,
    sig: RefreshSignal,
    names: &[String],
) -> Result<signal::Process> {
    let fail = |why: String| signal_error(plan, sig, names, why);
    let container = plan
        .signal_target
        .as_ref()
        .map(|t| t.container.as_str())
        .unwrap_or_default();
    if container.is_empty() {
        return Err(fail(
            "the plan names no target container (webhook bug?)".into(),
        ));
    }
    let Some(uid) = opts.pod_uid.as_deref().filter(|u| !u.is_empty()) else {
        return Err(fail("DSO_POD_UID is not set (the webhook sets it)".into()));
    };
    let give_up = tokio::time::Instant::now() + SIGNAL_WAIT;
    loop {
        match signal::find_main(&opts.proc_root, uid, container) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => {
                return Err(fail(format!(
                    "no process of the container found in {} within {SIGNAL_WAIT:?} (is the pod's shareProcessNamespace true, and the container running?)",
                    opts.proc_root.display()
                )));
            }
            Err(e) => {
                return Err(fail(format!(
                    "cannot list {}: {e}",
                    opts.proc_root.display()
                )));
            }
        }
    }
}

/// Sends `sig` (for the DsoSecrets `names`) to `main`, the target container's main process.
fn notify(
    plan: &InitPlan,
    sig: RefreshSignal,
    names: &[String],
    main: signal::Process,
    started: Option<std::time::Instant>,
) -> Result<()> {
    let pid = main.pid;
    signal::send(pid, sig).map_err(|e| {
        signal_error(
            plan,
            sig,
            names,
            format!("kill({pid}): {e} (DSO's containers must run as the container's user)"),
        )
    })?;
    let container = plan
        .signal_target
        .as_ref()
        .map(|t| t.container.as_str())
        .unwrap_or_default();
    match started {
        Some(started) => println!(
            "dso-refresh: sent {} to container {container} (pid {pid}) for {}, {} ms after the fetch began",
            sig.name(),
            names.join(", "),
            started.elapsed().as_millis()
        ),
        None => println!(
            "dso-refresh: sent {} to container {container} (pid {pid}) for {}, owed from before a restart",
            sig.name(),
            names.join(", "),
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn only_in_place_dsosecrets_whose_desired_hash_changed_are_fetched() {
        let names = vec!["db".to_string(), "api".to_string()];
        let state = m(&[("db", "h1"), ("api", "a1")]);
        assert!(
            due(&names, &m(&[]), &state, &m(&[])).is_empty(),
            "not told yet"
        );
        assert!(
            due(&names, &m(&[("db", "h1"), ("api", "a1")]), &state, &m(&[])).is_empty(),
            "current"
        );
        assert_eq!(
            due(&names, &m(&[("db", "h2"), ("api", "a1")]), &state, &m(&[])),
            vec!["db"]
        );
        assert!(
            due(&names, &m(&[("other", "x")]), &state, &m(&[])).is_empty(),
            "a DsoSecret this pod does not refresh"
        );
    }

    fn plan(secrets: &[(&str, Option<RefreshSignal>)]) -> InitPlan {
        InitPlan {
            version: dso_api::contract::PLAN_VERSION,
            mount_path: "/m".into(),
            size_limit_bytes: 1,
            secrets: secrets
                .iter()
                .map(|(name, signal)| dso_api::contract::PlanSecret {
                    name: name.to_string(),
                    region: None,
                    file_mode: 0o440,
                    files: Vec::new(),
                    in_place: true,
                    signal: *signal,
                })
                .collect(),
            env_files: Vec::new(),
            signal_target: None,
        }
    }

    #[test]
    fn a_swap_that_changed_the_versions_signals_once_per_signal() {
        use RefreshSignal::{Sighup, Sigusr1};
        let p = plan(&[
            ("db", Some(Sighup)),
            ("api", Some(Sighup)),
            ("tls", Some(Sigusr1)),
            ("quiet", None),
        ]);
        let all: Vec<String> = ["db", "api", "tls", "quiet"].map(String::from).to_vec();
        let before = m(&[("db", "1"), ("api", "1"), ("tls", "1"), ("quiet", "1")]);
        let after = m(&[("db", "2"), ("api", "2"), ("tls", "2"), ("quiet", "2")]);
        assert_eq!(
            signals_due(&p, &all, &before, &after),
            vec![
                (Sighup, vec!["db".to_string(), "api".to_string()]),
                (Sigusr1, vec!["tls".to_string()])
            ]
        );
        // Only what was swapped counts.
        assert_eq!(
            signals_due(&p, &["tls".to_string()], &before, &after),
            vec![(Sigusr1, vec!["tls".to_string()])]
        );
    }

    #[test]
    fn a_swap_that_rewrote_the_same_versions_signals_nothing() {
        let p = plan(&[("db", Some(RefreshSignal::Sighup))]);
        let db = vec!["db".to_string()];
        let same = m(&[("db", "1")]);
        assert!(signals_due(&p, &db, &same, &same).is_empty());
        assert!(
            signals_due(&p, &db, &same, &m(&[])).is_empty(),
            "nothing fetched"
        );
        // A first swap after a state file was lost still signals.
        assert_eq!(signals_due(&p, &db, &m(&[]), &same).len(), 1);
    }

    #[test]
    fn a_desired_hash_already_fetched_for_is_not_fetched_again() {
        let names = vec!["db".to_string()];
        // Fetched for h2 but AWS had moved on to h3: the state says h3.
        let state = m(&[("db", "h3")]);
        assert!(due(&names, &m(&[("db", "h2")]), &state, &m(&[("db", "h2")])).is_empty());
        assert_eq!(
            due(&names, &m(&[("db", "h4")]), &state, &m(&[("db", "h2")])),
            vec!["db"]
        );
    }

    /// A sidecar started over a volume with the signals file `pending` (JSON), with `app`'s
    /// processes `app` in a fake `/proc`; what `run` returned within 1.5 s (`None`: still running,
    /// as it should once nothing is owed), and whether the signals file is left.
    async fn start_sidecar(
        pending: serde_json::Value,
        app: &[(i32, &str, u64)],
    ) -> (Option<Result<()>>, bool) {
        let mount = tempfile::tempdir().expect("mount");
        let data = mount.path().join("..dso");
        std::fs::create_dir_all(&data).expect("..dso");
        std::fs::write(data.join("signal-pending.json"), pending.to_string()).expect("pending");
        let proc = crate::signal::tests::fake_proc(app);
        let mut p = plan(&[("db", Some(RefreshSignal::Sighup))]);
        p.mount_path = mount.path().display().to_string();
        p.signal_target = Some(dso_api::contract::PlanSignal {
            container: "app".into(),
        });
        let opts = Options {
            desired_file: mount.path().join("no-desired-file-yet"),
            poll: Duration::from_millis(50),
            pod_uid: Some(crate::signal::tests::UID.to_string()),
            proc_root: proc.path().to_path_buf(),
        };
        let ran = tokio::time::timeout(
            Duration::from_millis(1500),
            run(&p, Settings::default(), &opts),
        )
        .await
        .ok();
        (ran, data.join("signal-pending.json").exists())
    }

    /// A process that ends on SIGUSR1, and its PID. (SIGUSR1, not SIGHUP: a test run under
    /// `nohup` inherits SIGHUP ignored, and `sleep` would outlive it.)
    fn app_process() -> (std::process::Child, i32) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        (child, pid)
    }

    /// How `child` ended within 2 s (`None`: it still runs; it is then killed).
    fn ended_by(mut child: std::process::Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        for _ in 0..40 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.signal();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    #[tokio::test]
    async fn a_signal_the_previous_sidecar_could_not_send_is_sent_by_the_restarted_one() {
        let (child, pid) = app_process();
        let pending = serde_json::json!({
            "signals": [["SIGUSR1", ["db"]]],
            "mainAtSwap": {"process": {"pid": pid, "start": 30}},
        });
        let (ran, left) = start_sidecar(pending, &[(pid, "app", 30)]).await;
        assert!(ran.is_none(), "the sidecar goes on watching: {ran:?}");
        assert_eq!(ended_by(child), Some(10), "the app got its SIGUSR1");
        assert!(!left, "nothing is owed any more");
    }

    #[tokio::test]
    async fn an_app_that_started_after_the_swap_is_not_signalled_and_nothing_stays_owed() {
        let (child, pid) = app_process();
        // At the swap another process ran (or none): the one running now read the new files.
        for at_swap in [
            serde_json::json!({"process": {"pid": pid, "start": 10}}),
            serde_json::json!("noProcess"),
        ] {
            let pending =
                serde_json::json!({"signals": [["SIGUSR1", ["db"]]], "mainAtSwap": at_swap});
            let (ran, left) = start_sidecar(pending, &[(pid, "app", 30)]).await;
            assert!(ran.is_none(), "{ran:?}");
            assert!(!left, "nothing is owed any more");
        }
        assert_eq!(ended_by(child), None, "the app was not signalled");
    }

    #[tokio::test]
    async fn a_signal_that_still_cannot_be_sent_exits_9_and_stays_owed() {
        // A PID above any kernel's limit: kill(2) fails (ESRCH).
        let pending = serde_json::json!({"signals": [["SIGHUP", ["db"]]], "mainAtSwap": "unknown"});
        let (ran, left) = start_sidecar(pending, &[(2_000_000_000, "app", 30)]).await;
        let err = ran.expect("the sidecar stopped").expect_err("failed");
        assert_eq!(err.exit_code(), 9);
        assert!(
            err.to_string()
                .starts_with("SignalFailed: swapped db but could not send SIGHUP"),
            "{err}"
        );
        assert!(left, "still owed to the next sidecar");
    }
}
