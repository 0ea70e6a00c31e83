//! Property: a second pass changes nothing, and no user field is removed.

use super::*;
use proptest::prelude::*;

/// True when everything in `old` is still in `new` (objects by key, arrays element-wise by
/// containment anywhere in the new array, so inserted elements are allowed).
fn contains(new: &Value, old: &Value) -> bool {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => o
            .iter()
            .all(|(k, v)| n.get(k).is_some_and(|nv| contains(nv, v))),
        (Value::Array(n), Value::Array(o)) => {
            o.iter().all(|ov| n.iter().any(|nv| contains(nv, ov)))
        }
        (n, o) => n == o,
    }
}

fn arb_mount() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        "/data",
        "/cache",
        "/run",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ])
    .prop_map(|p| json!({"name": "data", "mountPath": p}))
}

fn arb_container(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(arb_mount(), 0..3)),
        prop::option::of(prop::sample::select(vec![0i64, 1000, 2000])),
        prop::option::of(Just(json!([{"name": "A", "value": "1"}]))),
    )
        .prop_map(move |(mounts, user, env)| {
            let mut c = json!({"name": format!("c{i}"), "image": "img"});
            if let Some(m) = mounts {
                // unique mount paths per container
                let mut seen = std::collections::BTreeSet::new();
                let m: Vec<Value> = m
                    .into_iter()
                    .filter(|v| seen.insert(v["mountPath"].to_string()))
                    .collect();
                c["volumeMounts"] = Value::Array(m);
            }
            if let Some(u) = user {
                c["securityContext"] = json!({"runAsUser": u});
            }
            if let Some(e) = env {
                c["env"] = e;
            }
            c
        })
}

prop_compose! {
    fn arb_pod()(
        n in 1usize..4,
        n_init in prop::option::of(0usize..3),
        pod_sc in prop::option::of(prop::sample::select(vec![json!({}), json!({"runAsUser": 1000}), json!({"fsGroup": 7}), json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})])),
        volumes in prop::option::of(Just(json!([{"name": "data", "emptyDir": {}}]))),
        secrets in prop::sample::select(vec!["db", "db,api", "db-role", "api , db"]),
        select_first in any::<bool>(),
        eks in any::<bool>(),
        c0 in arb_container(0), c1 in arb_container(1), c2 in arb_container(2),
    ) -> Pod {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": NS, "labels": {"app": "x"},
                "annotations": {"dso.dev/inject": "true", "dso.dev/secrets": secrets, "user/key": "v"}},
            "spec": {"containers": vec![c0, c1, c2].into_iter().take(n).collect::<Vec<_>>()}
        });
        if select_first { p["metadata"]["annotations"]["dso.dev/containers"] = json!("c0"); }
        if let Some(k) = n_init { p["spec"]["initContainers"] = Value::Array((0..k).map(|i| json!({"name": format!("i{i}"), "image": "x"})).collect()); }
        if let Some(sc) = pod_sc { p["spec"]["securityContext"] = sc; }
        if let Some(v) = volumes { p["spec"]["volumes"] = v; }
        if eks { merge(&mut p, eks_injected()); p["spec"]["containers"][0]["name"] = json!("c0"); }
        serde_json::from_value(p).expect("generated pod")
    }
}

proptest! {
    #[test]
    fn a_second_pass_changes_nothing_and_no_user_field_is_removed(p in arb_pod()) {
        let cat = catalog().with_sa_role(NS, "default", ROLE_SA);
        let Mutation::Inject(inj) = mutate(&p, NS, &cat, &cfg()).expect("admitted") else {
            panic!("expected an injection");
        };
        let once = apply(&p, &inj.patch);
        prop_assert_eq!(mutate(&once, NS, &cat, &cfg()).expect("admitted"), Mutation::AlreadyInjected);
        let (before, after) = (serde_json::to_value(&p).expect("json"), serde_json::to_value(&once).expect("json"));
        prop_assert!(contains(&after, &before), "a user field was removed:\n{before:#}\n{after:#}");
        // Everything the patch adds lives under our names or in fields the pod had not set.
        let users: Vec<_> = spec(&p).containers.iter().map(|c| c.name.clone()).collect();
        let after_users: Vec<_> = spec(&once).containers.iter().map(|c| c.name.clone()).collect();
        prop_assert_eq!(users, after_users);
    }
}
