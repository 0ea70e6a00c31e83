//! The operator across a restart of the kube-apiserver during a rotation, on the local cluster:
//! exactly one rollout per rotation, none lost and none duplicated.
//!
//! Its own test binary: restarting the API server disturbs every test running at the time, so
//! no other test may run beside it. The restart is `tests/cluster/restart-apiserver.sh`, which
//! restarts only the API server of the cluster named by `DSO_CLUSTER_DIR` (etcd, the
//! controllers and the node keep running). The test fails, with a hint, on a cluster it cannot
//! restart (no `DSO_CLUSTER_DIR`).

use dso_e2e::operator::{apply_consumer, replicasets, revision, wait_available, wait_replicasets};
use dso_e2e::{
    Operator, app_container, apply, apply_crd, client, create_secret, env, namespace,
    put_secret_value, quick_deployment, refreshing, repo_root, unique, wait_for,
};
use std::time::{Duration, Instant};

/// The schema's shortest refresh interval: how soon the operator notices a rotation.
const INTERVAL: Duration = Duration::from_secs(10);

/// Restarts the cluster's API server (in a blocking task); returns how long it was away.
async fn restart_apiserver() -> String {
    env("DSO_CLUSTER_DIR");
    let script = repo_root().join("tests/cluster/restart-apiserver.sh");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(script)
            .output()
            .expect("run restart-apiserver.sh")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "restart-apiserver.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits for a reconcile after `count`, then one more interval with slack: whatever the
/// operator would do about the current state is done by then.
async fn settle(op: &Operator, count: f64) {
    wait_for("another reconcile", Duration::from_secs(90), || async {
        Ok((op.reconciles().await > count).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(INTERVAL + Duration::from_secs(3)).await;
}

#[tokio::test]
async fn an_apiserver_restart_during_a_rotation_leaves_exactly_one_rollout_per_rotation() {
    apply_crd();
    let ns = namespace(&client().await, "op-apiserver", &[]).await;
    let secret = unique("e2e/op/apiserver");
    create_secret(&secret, "canary-apiserver-1").await;
    // A Lease long enough to outlast the restart (its renew deadline is 20 s): the test is
    // about the watches and writes of one leader, not a failover.
    let op = Operator::start_with(
        &ns,
        18560,
        &env("DSO_MOTO_ENDPOINT"),
        &["--lease-duration", "30s"],
    );
    op.ready().await;
    apply(&ns, &refreshing("db", &secret, "10s", "Rollout"));
    let web = quick_deployment("web", "db", app_container("app", "sleep 3600"));
    apply_consumer(&ns, "db", &web).await;
    assert_eq!(replicasets(&ns, "web").await, 1);

    // Rotation 1: the API server goes away right after the rotation, before the operator's
    // next look.
    put_secret_value(&secret, "canary-apiserver-2").await;
    let rotated = Instant::now();
    let down_1 = restart_apiserver().await;
    wait_replicasets(&ns, "web", 2, Duration::from_secs(90)).await;
    let rolled_1 = rotated.elapsed();
    settle(&op, op.reconciles().await).await;
    let (rs_1, rev_1) = (replicasets(&ns, "web").await, revision(&ns, "web").await);

    // Rotation 2: the API server goes away in the middle of the rollout (just after the patch).
    put_secret_value(&secret, "canary-apiserver-3").await;
    let rotated = Instant::now();
    wait_replicasets(&ns, "web", 3, Duration::from_secs(90)).await;
    let rolled_2 = rotated.elapsed();
    let down_2 = restart_apiserver().await;
    wait_available(&ns, "web").await;
    settle(&op, op.reconciles().await).await;
    let (rs_2, rev_2) = (replicasets(&ns, "web").await, revision(&ns, "web").await);
    let rollouts = op
        .try_metric("dso_rollouts_total{kind=\"Deployment\"}")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "[apiserver] rotation 1: API server restarted right after it ({down_1}), rolled {rolled_1:?} after the rotation; ReplicaSets {rs_1}, revision {rev_1:?}"
    );
    eprintln!(
        "[apiserver] rotation 2: rolled {rolled_2:?} after the rotation, API server restarted mid-rollout ({down_2}); ReplicaSets {rs_2}, revision {rev_2:?}; the operator counted {rollouts} rollout(s)"
    );
    assert_eq!(rs_1, 2, "one rollout for rotation 1");
    assert_eq!(rev_1.as_deref(), Some("2"));
    assert_eq!(rs_2, 3, "one rollout for rotation 2");
    assert_eq!(rev_2.as_deref(), Some("3"));
    // The operator's own count: while its watch cache still shows the old template (the API
    // server away) it must not apply, count and announce the same rollout again (it did: 5).
    assert_eq!(
        rollouts, 2.0,
        "the operator applied one rollout per rotation"
    );
    assert_eq!(
        op.metric("dso_leader").await,
        1.0,
        "still the leader after the restarts"
    );
    op.stop();
}
