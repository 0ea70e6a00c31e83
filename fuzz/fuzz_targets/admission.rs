//! The webhook's `/mutate` path from the bytes the apiserver sends: an AdmissionReview of a
//! Pod, its request, and the patch builder. Properties: `dso_fuzz::check_admission`.
#![no_main]

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static CATALOG: LazyLock<dso_fuzz::Fake> = LazyLock::new(dso_fuzz::catalog);

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(data) else {
        return;
    };
    let Ok(req): Result<AdmissionRequest<Pod>, _> = review.try_into() else {
        return;
    };
    // The apiserver always sends a pod with a spec (the v1 encoding of its internal Pod). A
    // container whose name is not a DNS-1123 label reaches mutating webhooks (validation runs
    // after them) and the webhook plans an env file for it, which dso-init would refuse, but
    // the apiserver refuses such a pod anyway: left out.
    let Some(pod) = req.object.as_ref().filter(|p| {
        p.spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().all(|c| is_label(&c.name)))
    }) else {
        return;
    };
    // As the router: the request's namespace, else the pod's.
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    if dso_fuzz::check_admission(pod, &namespace, &CATALOG) {
        // The answer the router sends serialises.
        let patch = match dso_webhook::patch::mutate(pod, &namespace, &*CATALOG, &dso_fuzz::cfg()) {
            Ok(dso_webhook::patch::Mutation::Inject(i)) => i.patch,
            other => panic!("a second identical review answered differently: {other:?}"),
        };
        let answer = AdmissionResponse::from(&req)
            .with_patch(patch)
            .expect("the patch serialises");
        serde_json::to_vec(&answer.into_review()).expect("the review serialises");
    }
});

/// A DNS-1123 label, what the apiserver requires of a container name.
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
