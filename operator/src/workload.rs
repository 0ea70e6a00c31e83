//! The workloads DSO rolls — Deployments, StatefulSets, DaemonSets — seen through one shape,
//! and the server-side apply patch that owns only DSO's two annotations.

use crate::domain;
use dso_api::DsoSecret;
use dso_api::annotations::{RECORDED_VERSIONS, VERSIONS_HASH};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Annotation `kubectl apply` (client side) leaves on objects; large, useless here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn selector(&self) -> Option<&LabelSelector>;
    /// Drops what DSO never reads (status, the pod spec, managed fields), to keep the watch
    /// caches small on big clusters.
    fn slim(&mut self);
}

macro_rules! workload_kind {
    ($t:ty, $kind:literal) => {
        impl WorkloadKind for $t {
            const KIND: &'static str = $kind;
            fn template(&self) -> Option<&PodTemplateSpec> {
                self.spec.as_ref().map(|s| &s.template)
            }
            fn selector(&self) -> Option<&LabelSelector> {
                self.spec.as_ref().map(|s| &s.selector)
            }
            fn slim(&mut self) {
                self.status = None;
                self.managed_fields_mut().clear();
                self.annotations_mut().remove(LAST_APPLIED);
                if let Some(spec) = self.spec.as_mut() {
                    spec.template.spec = None;
                }
            }
        }
    };
}
workload_kind!(Deployment, "Deployment");
workload_kind!(StatefulSet, "StatefulSet");
workload_kind!(DaemonSet, "DaemonSet");

/// One workload, as the rollout logic needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub template_annotations: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub selector: Option<LabelSelector>,
}

impl Workload {
    /// The view of any workload kind.
    pub fn of<K: WorkloadKind>(obj: &K) -> Self {
        Workload {
            kind: K::KIND,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            template_annotations: obj
                .template()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
            annotations: obj.annotations().clone(),
            selector: obj.selector().cloned(),
        }
    }

    /// `Kind/name`, as listed in `status.lastRotation.workloads`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
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
            "kind": self.kind,
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
}
