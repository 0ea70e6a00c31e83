//! `strategy: InPlace`: telling the consuming pods which versions to serve, and counting those
//! that do not yet ([`dso_api::inplace`] has the protocol).
//!
//! The operator already follows each secret centrally (the [`crate::cache`], one AWS call per
//! distinct secret, never per pod). For an InPlace DsoSecret it lists the running pods of the
//! namespace that mount it (`dso.dev/injected`), and sets its entry of each pod's
//! `dso.dev/desired-versions` annotation to the hash of the versions it follows — a merge patch
//! of that one annotation, guarded by the pod's `resourceVersion`. The `dso-refresh` sidecar of
//! the pod does the rest with the pod's own identity. Pods whose sidecar is not running (it
//! exits with the reason when a fetch fails, and the kubelet restarts it after a back-off) count
//! as stale, with the sidecar's termination message in the status; pods still starting count
//! as stale without a reason (nothing failed).
//!
//! [`assess`] is the pure part; [`tell_pods`] the I/O around it.

use crate::controller::Context;
use crate::domain::{self, Versions};
use crate::error::{Error, Result};
use crate::propagation::{PodStanding, workload_of};
use dso_api::InPlaceStatus;
use dso_api::annotations as ann;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tracing::{debug, info};

/// Pod annotation patches in flight at once.
const PATCH_CONCURRENCY: usize = 16;
/// At most this many stale pods are named in the status message.
const NAMED_IN_MESSAGE: usize = 3;

/// A pod to patch: its name, the new annotation value, and the `resourceVersion` it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tell {
    pub pod: String,
    pub value: String,
    pub resource_version: Option<String>,
}

/// What [`assess`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    pub status: InPlaceStatus,
    /// Pods to tell the new hash.
    pub tell: Vec<Tell>,
    /// Every consuming pod, by workload, and whether it serves the versions now.
    pub standings: Vec<PodStanding>,
}

/// What [`tell_pods`] did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Told {
    pub status: InPlaceStatus,
    /// Pods told the new hash in this call.
    pub told: usize,
    /// Every consuming pod, by workload, and whether it serves the versions.
    pub standings: Vec<PodStanding>,
}

/// The hash of the versions DsoSecret `name` follows (its own entries only).
pub fn desired_hash(following: &Versions) -> String {
    dso_api::inplace::desired_hash(&domain::record(following))
}

/// Decides, from the pods of the namespace, which ones to tell `hash` for DsoSecret `name`,
/// and how many are stale, at time `now`.
pub fn assess(pods: &[Pod], name: &str, hash: &str, now: Timestamp) -> Assessment {
    let mut out = Assessment::default();
    let mut reasons = Vec::new();
    for pod in pods.iter().filter(|p| live(p) && mounts(p, name)) {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        // Not current until proven below.
        out.standings.push(PodStanding {
            workload: workload_of(pod),
            current: false,
        });
        if reads_through_env(pod, name) {
            out.status.env_var_pods += 1;
        }
        let Some(spec) = &pod.spec else { continue };
        let has_sidecar = spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == ann::REFRESH_CONTAINER_NAME);
        if !has_sidecar {
            out.status.without_sidecar += 1;
            continue;
        }
        out.status.pods += 1;
        let annotations = pod.metadata.annotations.as_ref();
        let current = annotations.and_then(|a| a.get(ann::DESIRED_VERSIONS));
        if let Some(value) = dso_api::inplace::with_entry(current.map(String::as_str), name, hash) {
            out.status.stale += 1;
            out.tell.push(Tell {
                pod: pod_name,
                value,
                resource_version: pod.metadata.resource_version.clone(),
            });
            continue;
        }
        match sidecar(pod, now) {
            Sidecar::Serving => {
                if let Some(s) = out.standings.last_mut() {
                    s.current = true;
                }
            }
            Sidecar::NotYet => out.status.stale += 1,
            Sidecar::Failed(why) => {
                out.status.stale += 1;
                reasons.push(format!("{pod_name}: {why}"));
            }
        }
    }
    if !reasons.is_empty() {
        let more = reasons.len().saturating_sub(NAMED_IN_MESSAGE);
        let mut message = reasons
            .into_iter()
            .take(NAMED_IN_MESSAGE)
            .collect::<Vec<_>>()
            .join("; ");
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        out.status.message = Some(message);
    }
    out
}

fn live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn mounts(p: &Pod, name: &str) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ann::INJECTED))
        .is_some_and(|v| ann::split_list(v).contains(&name))
}

/// True when the pod's plan (dso-init's `DSO_PLAN`) has an env variable from DsoSecret `name`.
fn reads_through_env(p: &Pod, name: &str) -> bool {
    p.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.name == ann::INIT_CONTAINER_NAME)
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name == dso_api::contract::PLAN_ENV)
        .filter_map(|e| e.value.as_deref())
        .filter_map(|v| serde_json::from_str::<dso_api::contract::InitPlan>(v).ok())
        .any(|plan| {
            plan.env_files
                .iter()
                .flat_map(|f| &f.vars)
                .any(|v| v.dso_secret == name)
        })
}

/// Where a told pod's `dso-refresh` sidecar stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sidecar {
    /// It runs with nothing to report: the pod serves the versions it was told.
    Serving,
    /// Not serving them yet, and nothing failed.
    NotYet,
    /// It failed: why.
    Failed(String),
}

/// Where the pod's sidecar stands at `now`. A pod still starting (its sidecar not created yet,
/// or waiting for dso-init) is not serving yet, but nothing failed: dso-init fetches the
/// versions and the sidecar compares them with the annotation once it runs.
fn sidecar(p: &Pod, now: Timestamp) -> Sidecar {
    let status: Option<&ContainerStatus> = p
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|all| all.iter().find(|s| s.name == ann::REFRESH_CONTAINER_NAME));
    let Some((status, state)) = status.and_then(|s| Some((s, s.state.as_ref()?))) else {
        return Sidecar::NotYet;
    };
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    if let Some(running) = &state.running {
        // After failing to signal the app (exit 9) the restarted sidecar sends the signal still
        // owed first, and exits 9 again soon if it still cannot: not serving until it has run
        // longer than that.
        let signal_failed =
            last.is_some_and(|t| t.exit_code == i32::from(dso_api::inplace::SIGNAL_FAILED_EXIT));
        let recent = running.started_at.as_ref().is_none_or(|at| {
            now.duration_since(at.0).unsigned_abs() < dso_api::inplace::SIGNAL_RETRY_GRACE
                || at.0 > now
        });
        return if signal_failed && recent {
            Sidecar::NotYet
        } else {
            Sidecar::Serving
        };
    }
    let terminated = state.terminated.as_ref().or(last);
    let message = terminated
        .and_then(|t| t.message.as_deref())
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    let waiting = state.waiting.as_ref().and_then(|w| w.reason.clone());
    if terminated.is_none() && waiting.as_deref().is_none_or(starting) {
        return Sidecar::NotYet;
    }
    let exited = terminated.map(|t| match t.reason.as_deref() {
        Some(r) => format!("dso-refresh exited {} ({r})", t.exit_code),
        None => format!("dso-refresh exited {}", t.exit_code),
    });
    Sidecar::Failed(match (message, waiting, exited) {
        (Some(m), _, _) => format!("dso-refresh failed: {m}"),
        (None, Some(w), Some(e)) => format!("dso-refresh is {w}: {e}"),
        (None, Some(w), None) => format!("dso-refresh is {w}"),
        (None, None, Some(e)) => e,
        (None, None, None) => "dso-refresh is not running".to_string(),
    })
}

/// True for the reasons a container waits with while its pod starts normally (the kubelet's
/// own: init containers still running, the container being created).
fn starting(reason: &str) -> bool {
    matches!(reason, "PodInitializing" | "ContainerCreating")
}

/// Lists the pods of `ns`, tells those that mount DsoSecret `name` the hash of `following`, and
/// returns the status to record, how many pods were told, and which pods are current.
pub async fn tell_pods(ctx: &Context, ns: &str, name: &str, following: &Versions) -> Result<Told> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    // From the API server's watch cache (resourceVersion=0), not a quorum read of etcd: a pod
    // the cache has not seen yet is told on the next pass. One list serves every InPlace
    // DsoSecret of the namespace that reconciles within a moment ([`crate::pod_lists`]).
    let pods = ctx
        .pod_lists
        .get(ns, || async {
            api.list(&ListParams::default().match_any())
                .await
                .map(|l| l.items)
        })
        .await
        .map_err(Error::kube("list pods for an InPlace refresh"))?;
    let hash = desired_hash(following);
    let assessment = assess(&pods, name, &hash, Timestamp::now());
    if !assessment.tell.is_empty() && !ctx.leadership.is_leading() {
        return Err(Error::NotLeader);
    }
    let told = assessment.tell.len();
    if told > 0 {
        // The list no longer shows these pods as they are.
        ctx.pod_lists.forget(ns);
    }
    let results: Vec<kube::Result<()>> = futures::stream::iter(assessment.tell)
        .map(|t: Tell| {
            let api = api.clone();
            async move {
                let patch = json!({"metadata": {
                    "resourceVersion": t.resource_version,
                    "annotations": {ann::DESIRED_VERSIONS: t.value},
                }});
                api.patch(
                    &t.pod,
                    &PatchParams {
                        field_manager: Some(crate::controller::FIELD_MANAGER.to_string()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await
                .map(drop)
            }
        })
        .buffer_unordered(PATCH_CONCURRENCY)
        .collect()
        .await;
    // A pod that changed meanwhile (409: its resourceVersion moved on, as status updates do)
    // or went away (404) is looked at again on the next pass; any other error fails it.
    let mut missed = 0;
    for result in results {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => missed += 1,
            Err(e) => return Err(Error::kube("patch dso.dev/desired-versions on a pod")(e)),
        }
    }
    if missed > 0 {
        debug!(
            dsosecret = name,
            pods = missed,
            "pods changed or went away while told; next pass"
        );
    }
    if told > 0 {
        info!(dsosecret = name, pods = told, hash = %hash, "told pods the versions to serve");
    } else {
        debug!(dsosecret = name, "every consuming pod already told");
    }
    Ok(Told {
        status: assessment.status,
        told,
        standings: assessment.standings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, injected: &str, desired: Option<&str>, sidecar: Value) -> Pod {
        let mut annotations = json!({"dso.dev/injected": injected});
        if let Some(d) = desired {
            annotations["dso.dev/desired-versions"] = json!(d);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "7", "annotations": annotations},
            "spec": {"initContainers": [{"name": "dso-init"}, {"name": "dso-refresh"}],
                     "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "initContainerStatuses": [sidecar]}
        }))
        .expect("pod")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("time")
    }

    /// `seconds` before [`now`], as the API server writes it.
    fn ago(seconds: i64) -> String {
        Timestamp::from_second(1_800_000_000 - seconds)
            .expect("time")
            .to_string()
    }

    fn running() -> Value {
        json!({"name": "dso-refresh", "image": "i", "imageID": "", "ready": true,
               "restartCount": 0, "state": {"running": {}}})
    }

    fn crashing(message: &str) -> Value {
        json!({"name": "dso-refresh", "image": "i", "imageID": "", "ready": false,
               "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 4, "message": message}}})
    }

    #[test]
    fn pods_not_told_yet_are_told_and_counted_stale_once() {
        let told = r#"{"db":"h2"}"#;
        let pods = [
            pod("a", "db", None, running()),
            pod("b", "db,api", Some(r#"{"api":"x","db":"h1"}"#), running()),
            pod("c", "db", Some(told), running()),
            pod("d", "api", None, running()),
        ];
        let got = assess(&pods, "db", "h2", now());
        assert_eq!(
            got.tell.iter().map(|t| t.pod.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(
            dso_api::inplace::parse(&got.tell[1].value),
            [("api".into(), "x".into()), ("db".into(), "h2".into())].into(),
            "other DsoSecrets' entries are kept"
        );
        assert_eq!(got.tell[0].resource_version.as_deref(), Some("7"));
        assert_eq!((got.status.pods, got.status.stale), (3, 2));
        assert_eq!(got.status.message, None);
        assert_eq!(
            got.standings.iter().map(|s| s.current).collect::<Vec<_>>(),
            [false, false, true],
            "pods told only now are not current yet"
        );
    }

    #[test]
    fn a_pod_whose_sidecar_failed_is_stale_with_its_reason() {
        let told = Some(r#"{"db":"h2"}"#);
        let pods = [
            pod("ok", "db", told, running()),
            pod(
                "bad",
                "db",
                told,
                crashing("db/password (secret x): MissingJsonKey"),
            ),
        ];
        let got = assess(&pods, "db", "h2", now());
        assert!(got.tell.is_empty());
        assert_eq!((got.status.pods, got.status.stale), (2, 1));
        assert_eq!(
            got.standings
                .iter()
                .map(|s| (s.workload.as_str(), s.current))
                .collect::<Vec<_>>(),
            [("Pod/ok", true), ("Pod/bad", false)],
            "a running, told sidecar is current; a failed one is not"
        );
        assert_eq!(
            got.status.message.as_deref(),
            Some("bad: dso-refresh failed: db/password (secret x): MissingJsonKey")
        );
    }

    #[test]
    fn pods_without_the_sidecar_or_finished_are_not_told() {
        let mut old = pod("old", "db", None, running());
        if let Some(spec) = old.spec.as_mut() {
            spec.init_containers = Some(vec![]);
        }
        let mut done = pod("done", "db", None, running());
        if let Some(status) = done.status.as_mut() {
            status.phase = Some("Succeeded".into());
        }
        let got = assess(&[old, done], "db", "h", now());
        assert!(got.tell.is_empty());
        assert_eq!((got.status.pods, got.status.without_sidecar), (0, 1));
        assert_eq!(
            got.standings,
            [PodStanding {
                workload: "Pod/old".into(),
                current: false
            }],
            "a pod without the sidecar consumes, and never becomes current"
        );
    }

    #[test]
    fn pods_reading_the_dsosecret_through_env_vars_are_counted() {
        let plan = json!({"version": 1, "mountPath": "/m", "sizeLimitBytes": 1, "secrets": [],
            "envFiles": [{"container": "app", "vars": [{"name": "P", "dsoSecret": "db", "file": "p"}]}]});
        let mut p = pod("env", "db", None, running());
        if let Some(spec) = p.spec.as_mut() {
            spec.init_containers = Some(
                serde_json::from_value(json!([
                    {"name": "dso-init", "env": [{"name": "DSO_PLAN", "value": plan.to_string()}]},
                    {"name": "dso-refresh"}
                ]))
                .expect("containers"),
            );
        }
        assert_eq!(
            assess(&[p.clone()], "db", "h", now()).status.env_var_pods,
            1
        );
        assert_eq!(assess(&[p], "api", "h", now()).status.env_var_pods, 0);
    }

    #[test]
    fn a_sidecar_restarted_after_failing_to_signal_is_not_current_until_its_retry_had_time() {
        let told = Some(r#"{"db":"h2"}"#);
        let restarted = |started: i64, last_exit: i32| {
            json!({"name": "dso-refresh", "image": "i", "imageID": "", "ready": true,
                   "restartCount": 1, "state": {"running": {"startedAt": ago(started)}},
                   "lastState": {"terminated": {"exitCode": last_exit, "finishedAt": ago(started + 1),
                       "message": "SignalFailed: swapped db but could not send SIGHUP to the main process of container \"app\": no process"}}})
        };
        let pods = [
            pod("retrying", "db", told, restarted(3, 9)),
            pod("retried", "db", told, restarted(45, 9)),
            pod("fetch-failed-before", "db", told, restarted(3, 4)),
        ];
        let got = assess(&pods, "db", "h2", now());
        assert_eq!(
            got.standings
                .iter()
                .map(|s| (s.workload.as_str(), s.current))
                .collect::<Vec<_>>(),
            [
                ("Pod/retrying", false),
                ("Pod/retried", true),
                ("Pod/fetch-failed-before", true)
            ],
            "the signal may still be owed until the restarted sidecar had time to send it"
        );
        assert_eq!((got.status.pods, got.status.stale), (3, 1));
        assert_eq!(
            got.status.message, None,
            "retrying is no new failure (the exit was reported while the sidecar waited)"
        );
    }

    #[test]
    fn a_pod_still_starting_is_not_current_yet_but_nothing_failed() {
        let told = Some(r#"{"db":"h2"}"#);
        let waiting = |reason: &str| {
            json!({"name": "dso-refresh", "image": "i", "imageID": "", "ready": false,
                   "restartCount": 0, "state": {"waiting": {"reason": reason}}})
        };
        let mut unscheduled = pod("unscheduled", "db", told, running());
        unscheduled.status = None;
        let starting = [
            pod("initializing", "db", told, waiting("PodInitializing")),
            pod("creating", "db", told, waiting("ContainerCreating")),
            unscheduled,
        ];
        let got = assess(&starting, "db", "h2", now());
        assert_eq!((got.status.pods, got.status.stale), (3, 3));
        assert!(got.standings.iter().all(|s| !s.current));
        assert_eq!(
            got.status.message, None,
            "no failure to report (a message publishes a RefreshFailed warning)"
        );

        let oom = json!({"name": "dso-refresh", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}});
        let failing = [
            pod("pull", "db", told, waiting("ImagePullBackOff")),
            pod(
                "crash",
                "db",
                told,
                crashing("db/password (secret x): AccessDenied"),
            ),
            pod("oom", "db", told, oom),
        ];
        let got = assess(&failing, "db", "h2", now());
        assert_eq!((got.status.pods, got.status.stale), (3, 3));
        assert_eq!(
            got.status.message.as_deref(),
            Some(
                "pull: dso-refresh is ImagePullBackOff; \
                 crash: dso-refresh failed: db/password (secret x): AccessDenied; \
                 oom: dso-refresh exited 137 (OOMKilled)"
            ),
            "real failures are still reported"
        );
    }
}
