//! How far a rotation has reached the pods that consume a DsoSecret (`status.propagation`, the
//! CURRENT column, the histogram `dso_rotation_propagation_seconds`). Pure: [`crate::inplace`]
//! says which pods serve the versions ([`PodStanding`]); this module counts them per workload,
//! bounds the list, and says when a rotation has reached every pod.
//!
//! What a pod reports, and through whom: nothing is written by the pod. The operator reads what
//! the kubelet publishes in the pod's status — the `dso-refresh` sidecar running, or exited
//! with its one-line reason (its termination message) — beside the annotation the operator
//! itself wrote. A pod is current once told the versions and its sidecar runs without a failure
//! to report. The pods need no Kubernetes permission for it.

use dso_api::secret::MAX_PROPAGATION_WORKLOADS;
use dso_api::{PropagationStatus, WorkloadPropagation};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::time::Duration;

/// One consuming pod: the workload it belongs to, and whether it serves the versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodStanding {
    pub workload: String,
    pub current: bool,
}

/// The workload a pod belongs to, as `Kind/name`: its controller (a ReplicaSet created by a
/// Deployment is named for the Deployment, through the `pod-template-hash` label), or
/// `Pod/<name>` for a pod without one.
pub fn workload_of(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return format!("Pod/{}", meta.name.as_deref().unwrap_or_default());
    };
    if owner.kind == "ReplicaSet" {
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return format!("Deployment/{deployment}");
        }
    }
    format!("{}/{}", owner.kind, owner.name)
}

/// Pods and current pods per workload, the most stale first (then by name), at most
/// [`MAX_PROPAGATION_WORKLOADS`], and how many were left out.
pub fn per_workload(pods: &[PodStanding]) -> (Vec<WorkloadPropagation>, i32) {
    let mut by: BTreeMap<&str, (i32, i32)> = BTreeMap::new();
    for p in pods {
        let e = by.entry(p.workload.as_str()).or_default();
        e.0 += 1;
        e.1 += i32::from(p.current);
    }
    let mut all: Vec<WorkloadPropagation> = by
        .into_iter()
        .map(|(w, (pods, current))| WorkloadPropagation {
            workload: w.to_string(),
            pods,
            current,
        })
        .collect();
    // Stable: equal staleness keeps the name order.
    all.sort_by_key(|w| std::cmp::Reverse(w.pods - w.current));
    let more = all.len().saturating_sub(MAX_PROPAGATION_WORKLOADS);
    all.truncate(MAX_PROPAGATION_WORKLOADS);
    (all, i32::try_from(more).unwrap_or(i32::MAX))
}

/// The propagation record of the versions `hash` after this reconcile, from the previous one
/// and the pods seen now; and, when this reconcile is the first to see a rotation reach every
/// pod, the time it took (for the histogram).
///
/// A record starts when the hash changes: `since` is now, unless there was no record before
/// (the versions a DsoSecret starts with are not a rotation, and have no `since`). `completed`
/// is set the first time every pod (at least one) is current and kept afterwards.
pub fn advance(
    previous: Option<&PropagationStatus>,
    hash: &str,
    pods: &[PodStanding],
    now: &Time,
) -> (PropagationStatus, Option<Duration>) {
    let same = previous.filter(|p| p.versions_hash == hash);
    let since = match (previous, same) {
        (_, Some(p)) => p.since.clone(),
        (Some(_), None) => Some(now.clone()),
        (None, None) => None,
    };
    let total = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let current = i32::try_from(pods.iter().filter(|p| p.current).count()).unwrap_or(i32::MAX);
    let everyone = total > 0 && current == total;
    let was_complete = same.and_then(|p| p.completed.clone());
    let completed = was_complete
        .clone()
        .or_else(|| everyone.then(|| now.clone()));
    let took = match (&since, &was_complete, &completed) {
        (Some(since), None, Some(done)) => {
            let ms = done.0.as_millisecond() - since.0.as_millisecond();
            Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
        }
        _ => None,
    };
    let (workloads, more_workloads) = per_workload(pods);
    (
        PropagationStatus {
            versions_hash: hash.to_string(),
            since,
            completed,
            current: format!("{current}/{total}"),
            pods: total,
            current_pods: current,
            workloads,
            more_workloads,
        },
        took,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + s).expect("time"))
    }

    fn standing(workload: &str, current: bool) -> PodStanding {
        PodStanding {
            workload: workload.into(),
            current,
        }
    }

    #[test]
    fn a_pod_belongs_to_its_deployment_statefulset_or_itself() {
        let pod = |owner: serde_json::Value, labels: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "labels": labels,
                "ownerReferences": owner}}))
            .expect("pod")
        };
        let rs = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
                          "uid": "u", "controller": true}]);
        assert_eq!(
            workload_of(&pod(rs.clone(), json!({"pod-template-hash": "7d9f"}))),
            "Deployment/web"
        );
        assert_eq!(workload_of(&pod(rs, json!({}))), "ReplicaSet/web-7d9f");
        let sts = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                           "uid": "u", "controller": true}]);
        assert_eq!(workload_of(&pod(sts, json!({}))), "StatefulSet/db");
        let not_controller = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "c",
                                      "uid": "u"}]);
        assert_eq!(workload_of(&pod(not_controller, json!({}))), "Pod/p");
    }

    #[test]
    fn workloads_are_listed_most_stale_first_and_at_most_ten() {
        let mut pods = vec![
            standing("Deployment/a", true),
            standing("Deployment/b", false),
            standing("Deployment/b", true),
        ];
        pods.extend((0..12).map(|i| standing(&format!("Pod/x{i:02}"), true)));
        let (listed, more) = per_workload(&pods);
        assert_eq!(listed.len(), MAX_PROPAGATION_WORKLOADS);
        assert_eq!(more, 4);
        assert_eq!(
            listed[0],
            WorkloadPropagation {
                workload: "Deployment/b".into(),
                pods: 2,
                current: 1
            }
        );
        assert_eq!(listed[1].workload, "Deployment/a");
    }

    #[test]
    fn a_rotation_completes_once_every_pod_is_current_and_is_timed_once() {
        let initial = advance(None, "h1", &[standing("Deployment/w", true)], &at(0));
        assert_eq!(initial.0.since, None, "the first versions are no rotation");
        assert_eq!(initial.1, None, "not timed");
        assert_eq!(initial.0.current, "1/1");

        let pods = |n: usize| -> Vec<PodStanding> {
            (0..3).map(|i| standing("Deployment/w", i < n)).collect()
        };
        let (started, took) = advance(Some(&initial.0), "h2", &pods(0), &at(100));
        assert_eq!(started.since, Some(at(100)));
        assert_eq!(
            (started.current.as_str(), started.completed.clone()),
            ("0/3", None)
        );
        assert_eq!(took, None);

        let (partway, took) = advance(Some(&started), "h2", &pods(2), &at(104));
        assert_eq!((partway.current.as_str(), took), ("2/3", None));

        let (done, took) = advance(Some(&partway), "h2", &pods(3), &at(107));
        assert_eq!(done.current, "3/3");
        assert_eq!(done.completed, Some(at(107)));
        assert_eq!(took, Some(Duration::from_secs(7)));

        let (later, took) = advance(Some(&done), "h2", &pods(2), &at(200));
        assert_eq!(took, None, "a rotation is timed once");
        assert_eq!(later.completed, Some(at(107)), "completion is kept");
        assert_eq!(later.current, "2/3", "the count stays live");
    }

    #[test]
    fn no_pod_means_no_completion() {
        let (p, took) = advance(Some(&PropagationStatus::default()), "h", &[], &at(5));
        assert_eq!((p.current.as_str(), p.completed, took), ("0/0", None, None));
    }
}
