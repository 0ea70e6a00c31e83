//! `dso-operator` on the real cluster while AWS fails: its AWS endpoint is
//! tests/aws-fault-proxy.py in front of moto, taken down, throttling, or denying one secret's
//! calls mid-sweep. What a user must see: no workload restarted while AWS is unreadable, the
//! DsoSecret's status saying why, and on recovery Ready again with no rollout — except the one
//! a rotation made during the outage asks for, exactly once.
//!
//! dso-init's side (a fault mid-fetch leaves no file) is in init-image/tests/against_moto.rs.

use dso_api::DsoSecret;
use dso_e2e::operator::{get_dso, replicasets, template_hash, wait_ready, wait_recorded};
use dso_e2e::{
    Operator, app_container, apply, apply_crd, client, create_secret, dso_secret, env, namespace,
    put_secret_value, quick_deployment, unique, wait_for,
};
use dso_test_support::FaultProxy;
use serde_json::json;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn condition(d: &DsoSecret) -> (String, String) {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.first())
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn version_of(d: &DsoSecret) -> Option<String> {
    d.status.as_ref()?.secrets.first()?.version_id.clone()
}

/// Waits until the proxy has forwarded `n` more `DescribeSecret` calls than `since`: the
/// operator has looked again (a full sweep of both DsoSecrets when `n` is 2).
async fn wait_describes(proxy: &FaultProxy, since: usize, n: usize) {
    wait_for(
        "the operator's next DescribeSecret calls",
        TIMEOUT,
        || async { Ok((proxy.count("DescribeSecret pass") >= since + n).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
}

#[tokio::test]
async fn aws_down_throttling_or_denied_rolls_nothing_says_why_and_recovers_without_a_spurious_rollout()
 {
    apply_crd();
    let ns = namespace(&client().await, "op-faults", &[]).await;
    let (id_a, id_b) = (unique("e2e/faults/a"), unique("e2e/faults/b"));
    let v1 = create_secret(&id_a, "canary-faults-a").await;
    create_secret(&id_b, "canary-faults-b").await;
    let proxy = FaultProxy::start(&env("DSO_MOTO_ENDPOINT"), Some(18561));
    let op = Operator::start(&ns, 18560, &proxy.url);
    op.ready().await;
    for (name, id) in [("a", &id_a), ("b", &id_b)] {
        let refresh = json!({"refresh": {"interval": "10s", "strategy": "Rollout"}});
        apply(&ns, &dso_secret(name, id, refresh));
    }
    apply(
        &ns,
        &quick_deployment("web", "a,b", app_container("app", "sleep 3600")),
    );
    wait_ready(&ns, "a", "True", "Synced").await;
    wait_ready(&ns, "b", "True", "Synced").await;
    wait_recorded(&ns, "web").await;
    assert_eq!(replicasets(&ns, "web").await, 1);
    let mut table = vec!["| fault | DsoSecret status | workload |".to_string()];

    // 1. AWS down while secret a rotates: nothing rolls, status says why; when AWS is back,
    //    the rotation rolls the Deployment exactly once.
    proxy.set(json!({"mode": "down"}));
    let t = Instant::now();
    let v2 = put_secret_value(&id_a, "canary-faults-a-2").await;
    let d = wait_ready(&ns, "a", "False", "AwsError").await;
    let (_, message) = condition(&d);
    assert!(message.contains("DescribeSecret"), "{message}");
    // Observed, not asserted: status.secrets is emptied while AWS cannot be read (the last
    // version read, v1, is not kept).
    let kept = version_of(&d).as_deref() == Some(v1.as_str());
    wait_ready(&ns, "b", "False", "AwsError").await;
    assert_eq!(
        replicasets(&ns, "web").await,
        1,
        "rolled while AWS was down"
    );
    assert_eq!(template_hash(&ns, "web").await, None);
    table.push(format!(
        "| down (connection refused), a rotated meanwhile | AwsError after {:.1}s: {message}; status keeps v1: {kept} | not restarted |",
        t.elapsed().as_secs_f64()
    ));
    proxy.set(json!({"mode": "pass"}));
    let t = Instant::now();
    let d = wait_for("a Ready with the new version", TIMEOUT, || {
        let (ns, v2) = (ns.to_string(), v2.clone());
        async move {
            let d = get_dso(&ns, "a").await?;
            Ok((condition(&d).0 == "Synced" && version_of(&d) == Some(v2)).then_some(d))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.status.is_some());
    wait_ready(&ns, "b", "True", "Synced").await;
    wait_for("the rotation's rollout", TIMEOUT, || {
        let ns = ns.to_string();
        async move { Ok((replicasets(&ns, "web").await == 2).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let hash = template_hash(&ns, "web").await.expect("hash stamped");
    table.push(format!(
        "| recovery | Synced {:.1}s after AWS returned, new version | rolled once (the rotation) |",
        t.elapsed().as_secs_f64()
    ));

    // 2. Throttling, no rotation: nothing rolls; recovery rolls nothing either.
    proxy.set(json!({"mode": "throttle"}));
    let t = Instant::now();
    let d = wait_ready(&ns, "a", "False", "AwsError").await;
    let (_, message) = condition(&d);
    assert!(message.contains("Throttling"), "{message}");
    table.push(format!(
        "| throttle (400 ThrottlingException) | AwsError after {:.1}s: {message} | not restarted |",
        t.elapsed().as_secs_f64()
    ));
    proxy.set(json!({"mode": "toomany"}));
    let d = wait_for("a's message naming TooManyRequests", TIMEOUT, || {
        let ns = ns.to_string();
        async move {
            let d = get_dso(&ns, "a").await?;
            Ok(condition(&d).1.contains("TooManyRequests").then_some(d))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    table.push(format!(
        "| toomany (429) | {}: {} | not restarted |",
        condition(&d).0,
        condition(&d).1
    ));
    proxy.set(json!({"mode": "pass"}));
    let t = Instant::now();
    wait_ready(&ns, "a", "True", "Synced").await;
    wait_ready(&ns, "b", "True", "Synced").await;
    let seen = proxy.count("DescribeSecret pass");
    wait_describes(&proxy, seen, 2).await;
    assert_eq!(replicasets(&ns, "web").await, 2, "a spurious rollout");
    assert_eq!(template_hash(&ns, "web").await.as_ref(), Some(&hash));
    table.push(format!(
        "| recovery | Synced {:.1}s after | not restarted (no spurious rollout) |",
        t.elapsed().as_secs_f64()
    ));

    // 3. AccessDenied for one secret's calls mid-sweep: that DsoSecret says so, the other stays
    //    Ready, nothing rolls; recovery rolls nothing.
    proxy.set(json!({"mode": "deny", "match": id_b}));
    let t = Instant::now();
    let d = wait_ready(&ns, "b", "False", "AccessDenied").await;
    let (_, message) = condition(&d);
    assert!(message.contains("not authorized"), "{message}");
    let seen = proxy.count("DescribeSecret pass");
    wait_describes(&proxy, seen, 1).await;
    assert_eq!(condition(&get_dso(&ns, "a").await.expect("a")).0, "Synced");
    assert_eq!(
        replicasets(&ns, "web").await,
        2,
        "rolled while b was denied"
    );
    table.push(format!(
        "| deny b only (400 AccessDeniedException) | b AccessDenied after {:.1}s: {message}; a stays Synced | not restarted |",
        t.elapsed().as_secs_f64()
    ));
    proxy.set(json!({"mode": "pass"}));
    let t = Instant::now();
    wait_ready(&ns, "b", "True", "Synced").await;
    let seen = proxy.count("DescribeSecret pass");
    wait_describes(&proxy, seen, 2).await;
    assert_eq!(replicasets(&ns, "web").await, 2, "a spurious rollout");
    assert_eq!(template_hash(&ns, "web").await.as_ref(), Some(&hash));
    table.push(format!(
        "| recovery | b Synced {:.1}s after | not restarted |",
        t.elapsed().as_secs_f64()
    ));
    assert!(!op.log().contains("canary-faults"), "a value in the log");
    eprintln!("dso-operator under AWS faults:\n{}", table.join("\n"));
    op.stop();
}
