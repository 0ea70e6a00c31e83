//! The workloads DSO rolls — Deployments, StatefulSets, DaemonSets — seen through one shape,
//! the server-side apply patch that owns only DSO's two annotations, and when a rollout is over.

use crate::domain;
use dso_api::DsoSecret;
use dso_api::annotations::{RECORDED_VERSIONS, VERSIONS_HASH};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Annotation `kubectl apply` (client side) leaves on objects; large, useless here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Where a slimmed object in the watch cache keeps [`template_digest`] of the template it had
/// (never written to the cluster).
const TEMPLATE_DIGEST: &str = "operator.dso.dev/template-digest";

/// A digest of a pod template without DSO's own annotation: it changes when the workload's
/// owner changes the template (a new image, `kubectl rollout restart`), not when DSO rolls it,
/// nor on a scale or an edit of the workload's metadata (those bump `metadata.generation` too).
/// Compared within this process only.
pub fn template_digest(template: &PodTemplateSpec) -> String {
    use std::hash::{Hash, Hasher};
    let mut t = template.clone();
    if let Some(a) = t.metadata.as_mut().and_then(|m| m.annotations.as_mut()) {
        a.remove(VERSIONS_HASH);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&t).unwrap_or_default().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The three kinds of workload DSO rolls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of workload with a pod template.
pub trait WorkloadKind:
    Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Which of the three it is.
    const KIND: Kind;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn selector(&self) -> Option<&LabelSelector>;
    /// Drops what DSO never reads (the pod spec, managed fields), to keep the watch caches
    /// small on big clusters, keeping the template's [`template_digest`]. The status stays: it
    /// says how far a rollout has come.
    fn slim(&mut self);
    /// How far the rollout of its current template has come (from a full object, not slimmed).
    fn progress(&self) -> Progress;
}

/// The rollout state of a workload, in the terms common to the three kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// `metadata.generation`: bumped by the template patch.
    pub generation: i64,
    /// `status.observedGeneration`: the generation its controller has acted on.
    pub observed_generation: i64,
    /// Pods (or scheduled nodes, for a DaemonSet) wanted.
    pub desired: i32,
    /// Of those, how many run the current template.
    pub updated: i32,
    /// Pods (or scheduled nodes) ready: a Deployment's or DaemonSet's available ones, a
    /// StatefulSet's ready ones (what `kubectl rollout status` waits for).
    pub ready: i32,
    /// Pods (or scheduled nodes) there are, old and new.
    pub total: i32,
    /// The rollout is paused (`spec.paused` of a Deployment): it will not go on by itself.
    pub paused: bool,
    /// The rollout has stalled (a Deployment's `Progressing` condition is `False` with reason
    /// `ProgressDeadlineExceeded`, and its controller has observed the current generation: an
    /// older verdict is about an earlier template): it will not go on by itself either.
    pub stalled: bool,
}

/// Where a rollout in progress stands, for the slot it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Still going: keep the slot.
    Going,
    /// Over (or the workload is gone).
    Complete,
    /// Paused by its owner.
    Paused,
    /// Past its progress deadline.
    Stalled,
}

/// Where a rollout stands: complete first (a paused Deployment may have finished), then paused,
/// then stalled.
pub fn standing(p: &Progress) -> Standing {
    if rollout_complete(p) {
        Standing::Complete
    } else if p.paused {
        Standing::Paused
    } else if p.stalled {
        Standing::Stalled
    } else {
        Standing::Going
    }
}

/// Whether a rollout is over: the workload's controller has seen the new template, every
/// wanted pod runs it and is ready, and no pod of an older template is left.
pub fn rollout_complete(p: &Progress) -> bool {
    p.observed_generation >= p.generation
        && p.updated >= p.desired
        && p.total <= p.updated
        && p.ready >= p.desired
}

fn deployment_progress(d: &Deployment) -> Progress {
    let st = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let observed_generation = st.observed_generation.unwrap_or(0);
    // A condition written before the current generation was observed is about an earlier
    // template: right after DSO's patch, an old ProgressDeadlineExceeded says nothing of the
    // new rollout.
    let stalled = observed_generation >= generation
        && st.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    Progress {
        generation,
        observed_generation,
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        updated: st.updated_replicas.unwrap_or(0),
        total: st.replicas.unwrap_or(0),
        ready: st.available_replicas.unwrap_or(0),
        paused: d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false),
        stalled,
    }
}

fn statefulset_progress(s: &StatefulSet) -> Progress {
    let st = s.status.clone().unwrap_or_default();
    Progress {
        generation: s.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        updated: st.updated_replicas.unwrap_or(0),
        total: st.replicas,
        ready: st.ready_replicas.unwrap_or(0),
        ..Progress::default()
    }
}

fn daemonset_progress(d: &DaemonSet) -> Progress {
    let st = d.status.clone().unwrap_or_default();
    Progress {
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        desired: st.desired_number_scheduled,
        updated: st.updated_number_scheduled.unwrap_or(0),
        total: st.desired_number_scheduled,
        ready: st.number_available.unwrap_or(0),
        ..Progress::default()
    }
}

macro_rules! workload_kind {
    ($t:ident, $progress:ident) => {
        impl WorkloadKind for $t {
            const KIND: Kind = Kind::$t;
            fn progress(&self) -> Progress {
                $progress(self)
            }
            fn template(&self) -> Option<&PodTemplateSpec> {
                self.spec.as_ref().map(|s| &s.template)
            }
            fn selector(&self) -> Option<&LabelSelector> {
                self.spec.as_ref().map(|s| &s.selector)
            }
            fn slim(&mut self) {
                self.managed_fields_mut().clear();
                self.annotations_mut().remove(LAST_APPLIED);
                if let Some(digest) = self.template().map(template_digest) {
                    self.annotations_mut()
                        .insert(TEMPLATE_DIGEST.into(), digest);
                }
                if let Some(spec) = self.spec.as_mut() {
                    spec.template.spec = None;
                }
            }
        }
    };
}
workload_kind!(Deployment, deployment_progress);
workload_kind!(StatefulSet, statefulset_progress);
workload_kind!(DaemonSet, daemonset_progress);

/// One workload, as the rollout logic needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub template_annotations: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub selector: Option<LabelSelector>,
    /// [`template_digest`] of its pod template.
    pub template_digest: Option<String>,
    /// How far the rollout of its current template has come (from the watch cache).
    pub progress: Progress,
}

impl Workload {
    /// The view of any workload kind.
    pub fn of<K: WorkloadKind>(obj: &K) -> Self {
        Workload {
            kind: K::KIND,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            uid: obj.uid(),
            template_annotations: obj
                .template()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
            annotations: obj.annotations().clone(),
            selector: obj.selector().cloned(),
            // A slimmed object keeps it; a full one (tests) has its template.
            template_digest: obj
                .annotations()
                .get(TEMPLATE_DIGEST)
                .cloned()
                .or_else(|| obj.template().map(template_digest)),
            progress: obj.progress(),
        }
    }

    /// `Kind/name`, as listed in `status.lastRotation.workloads`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// A reference to it, for events (`kubectl describe` matches events by uid too).
    pub fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(self.kind.as_str().into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            ..ObjectReference::default()
        }
    }

    /// The DsoSecrets its pod template consumes.
    pub fn consumes(&self) -> Vec<String> {
        domain::consumed_names(Some(&self.template_annotations))
    }

    /// The versions hash on its pod template.
    pub fn template_hash(&self) -> Option<&str> {
        self.template_annotations
            .get(VERSIONS_HASH)
            .map(String::as_str)
    }

    /// The versions its pods were last recorded running.
    pub fn recorded(&self) -> Option<BTreeMap<String, String>> {
        domain::parse_record(self.annotations.get(RECORDED_VERSIONS))
    }

    /// The server-side apply body: the record on the workload, and the hash on its template
    /// when there is one to own. Everything else stays with its owners (GitOps tools see no
    /// drift). Leaving out a field DSO applied before would remove it, so the current hash is
    /// re-applied as is when only the record changes.
    pub fn apply_patch(
        &self,
        template_hash: Option<&str>,
        record: &BTreeMap<String, String>,
    ) -> Value {
        let record = serde_json::to_string(record).unwrap_or_default();
        let mut patch = json!({
            "apiVersion": "apps/v1",
            "kind": self.kind.as_str(),
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "annotations": {RECORDED_VERSIONS: record},
            },
        });
        if let Some(hash) = template_hash {
            patch["spec"] =
                json!({"template": {"metadata": {"annotations": {VERSIONS_HASH: hash}}}});
        }
        patch
    }
}

/// The DsoSecrets to reconcile when a workload changes: those its template consumes.
pub fn dsosecrets_of<K: WorkloadKind>(obj: K) -> Vec<ObjectRef<DsoSecret>> {
    let w = Workload::of(&obj);
    w.consumes()
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(&w.namespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn p(generation: i64, observed: i64, desired: i32, updated: i32, total: i32) -> Progress {
        Progress {
            generation,
            observed_generation: observed,
            desired,
            updated,
            total,
            ready: updated,
            ..Progress::default()
        }
    }

    #[rstest]
    #[case::done(p(2, 2, 3, 3, 3), true)]
    #[case::the_controller_has_not_seen_the_patch(p(2, 1, 3, 3, 3), false)]
    #[case::new_pods_still_coming(p(2, 2, 3, 1, 3), false)]
    #[case::old_pods_still_running(p(2, 2, 3, 3, 4), false)]
    #[case::scaled_to_zero(p(2, 2, 0, 0, 0), true)]
    #[case::new_pods_not_ready(Progress { ready: 2, ..p(2, 2, 3, 3, 3) }, false)]
    #[case::observed_ahead_after_another_edit(p(2, 3, 2, 2, 2), true)]
    #[case::nothing_observed_yet(p(1, 0, 1, 0, 0), false)]
    fn a_rollout_is_complete_only_when_every_pod_runs_the_new_template(
        #[case] progress: Progress,
        #[case] complete: bool,
    ) {
        assert_eq!(rollout_complete(&progress), complete, "{progress:?}");
    }

    #[test]
    fn a_paused_or_stalled_rollout_is_told_apart_from_one_still_going() {
        let going = p(2, 2, 3, 1, 3);
        assert_eq!(standing(&going), Standing::Going);
        let paused = Progress {
            paused: true,
            ..going
        };
        assert_eq!(standing(&paused), Standing::Paused);
        let stalled = Progress {
            stalled: true,
            ..going
        };
        assert_eq!(standing(&stalled), Standing::Stalled);
        let done_while_paused = Progress {
            paused: true,
            ..p(2, 2, 3, 3, 3)
        };
        assert_eq!(standing(&done_while_paused), Standing::Complete);
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_is_stalled_and_spec_paused_is_paused() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 4},
            "spec": {"replicas": 2, "paused": true, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "updatedReplicas": 1, "replicas": 3,
                       "conditions": [{"type": "Progressing", "status": "False",
                                       "reason": "ProgressDeadlineExceeded"}]}
        }))
        .expect("deployment");
        let progress = d.progress();
        assert!(progress.paused && progress.stalled, "{progress:?}");
        let fine: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 4},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "updatedReplicas": 1, "replicas": 3,
                       "conditions": [{"type": "Progressing", "status": "True",
                                       "reason": "ReplicaSetUpdated"}]}
        }))
        .expect("deployment");
        assert_eq!(standing(&fine.progress()), Standing::Going);
    }

    #[test]
    fn a_progress_deadline_passed_before_the_current_generation_is_not_a_stall() {
        // DSO just patched the template (generation 5) of a Deployment whose previous rollout
        // had stalled; its controller has not acted on the patch yet.
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 5},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "updatedReplicas": 1, "replicas": 3,
                       "conditions": [{"type": "Progressing", "status": "False",
                                       "reason": "ProgressDeadlineExceeded"}]}
        }))
        .expect("deployment");
        assert!(!d.progress().stalled, "{:?}", d.progress());
        assert_eq!(
            standing(&d.progress()),
            Standing::Going,
            "the slot is kept for the new rollout"
        );
    }

    #[test]
    fn each_kind_is_named_as_kubernetes_names_it() {
        assert_eq!(Deployment::KIND.as_str(), Deployment::kind(&()));
        assert_eq!(StatefulSet::KIND.as_str(), StatefulSet::kind(&()));
        assert_eq!(DaemonSet::KIND.as_str(), DaemonSet::kind(&()));
        assert_eq!(Workload::of(&deployment(json!({}))).id(), "Deployment/web");
    }

    #[test]
    fn each_kind_reports_its_progress_from_its_status() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 4},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "updatedReplicas": 2, "replicas": 3,
                       "availableReplicas": 2}
        }))
        .expect("deployment");
        assert_eq!(d.progress(), p(4, 4, 2, 2, 3));
        assert!(!rollout_complete(&d.progress()), "an old pod is left");
        let s: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "generation": 2},
            "spec": {"selector": {}, "serviceName": "db", "template": {}},
            "status": {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 1,
                       "readyReplicas": 1}
        }))
        .expect("statefulset");
        assert!(rollout_complete(&s.progress()), "replicas default to 1");
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "generation": 3},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "desiredNumberScheduled": 2,
                       "updatedNumberScheduled": 1, "currentNumberScheduled": 2,
                       "numberMisscheduled": 0, "numberReady": 2, "numberAvailable": 1}
        }))
        .expect("daemonset");
        assert_eq!(ds.progress(), p(3, 3, 2, 1, 2));
        assert!(!rollout_complete(&ds.progress()));
    }

    fn deployment(annotations: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {LAST_APPLIED: "{...}"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}]}
                }
            }
        }))
        .expect("deployment")
    }

    #[test]
    fn a_workload_maps_to_the_dsosecrets_its_template_names() {
        let d = deployment(json!({"dso.dev/inject": "true", "dso.dev/secrets": "db,api"}));
        let refs = dsosecrets_of(d);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].name, "db");
        assert_eq!(refs[0].namespace.as_deref(), Some("shop"));
        let not_injected = deployment(json!({"dso.dev/secrets": "db"}));
        assert!(dsosecrets_of(not_injected).is_empty());
    }

    #[test]
    fn the_patch_owns_only_the_two_annotations() {
        let w = Workload::of(&deployment(json!({})));
        let rec = BTreeMap::from([("db/prod/db".to_string(), "v2".to_string())]);
        let p = w.apply_patch(Some("abc"), &rec);
        assert_eq!(
            p,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop",
                             "annotations": {RECORDED_VERSIONS: "{\"db/prod/db\":\"v2\"}"}},
                "spec": {"template": {"metadata": {"annotations": {VERSIONS_HASH: "abc"}}}}
            })
        );
        let record_only = w.apply_patch(None, &rec);
        assert!(
            record_only.get("spec").is_none(),
            "no hash: the template is not touched"
        );
    }

    #[test]
    fn slimming_keeps_what_rollouts_need() {
        let mut d = deployment(json!({"dso.dev/inject": "true", "dso.dev/secrets": "db"}));
        d.slim();
        let w = Workload::of(&d);
        assert_eq!(w.consumes(), vec!["db"]);
        assert!(w.selector.is_some());
        assert!(!w.annotations.contains_key(LAST_APPLIED));
        assert!(d.spec.expect("spec").template.spec.is_none());
    }

    #[test]
    fn the_template_digest_sees_the_owners_template_changes_only() {
        let digest = |mut d: Deployment| {
            d.slim();
            Workload::of(&d).template_digest.expect("digest")
        };
        let before = digest(deployment(json!({"dso.dev/secrets": "db"})));
        let rolled_by_dso = deployment(json!({"dso.dev/secrets": "db", VERSIONS_HASH: "h2"}));
        assert_eq!(digest(rolled_by_dso), before, "DSO's rollout");
        let mut scaled = deployment(json!({"dso.dev/secrets": "db"}));
        scaled.metadata.generation = Some(6);
        scaled
            .annotations_mut()
            .insert("team".into(), "shop".into());
        if let Some(spec) = scaled.spec.as_mut() {
            spec.replicas = Some(5);
        }
        assert_eq!(
            digest(scaled),
            before,
            "a scale, an annotation of the Deployment"
        );
        let mut new_image = deployment(json!({"dso.dev/secrets": "db"}));
        if let Some(c) = new_image
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
        {
            c.containers[0].image = Some("busybox:2".into());
        }
        assert_ne!(digest(new_image), before, "a new image");
        let restarted = deployment(json!({"dso.dev/secrets": "db",
            "kubectl.kubernetes.io/restartedAt": "2026-11-30T05:00:00Z"}));
        assert_ne!(digest(restarted), before, "kubectl rollout restart");
    }
}
