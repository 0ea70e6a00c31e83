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

use crate::error::Result;
use crate::{Settings, swap};
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
            for name in &todo {
                if let Some(want) = desired.get(name) {
                    acted.insert(name.clone(), want.clone());
                }
            }
            let current = todo
                .iter()
                .filter(|n| hashes.get(*n) == desired.get(*n))
                .count();
            state.extend(hashes);
            swap::write_state(mount, &state)?;
            println!(
                "dso-refresh: swapped {} in {} ms ({current} of {} at the desired versions)",
                todo.join(", "),
                started.elapsed().as_millis(),
                todo.len()
            );
        }
        tokio::time::sleep(opts.poll).await;
    }
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
}
