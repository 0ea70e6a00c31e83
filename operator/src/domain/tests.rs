use super::*;
use dso_api::FileSpec;
use dso_api::{AwsSpec, RefreshSpec};
use proptest::prelude::*;
use rstest::rstest;

fn file(secret_id: &str) -> FileSpec {
    FileSpec {
        path: Some("f".into()),
        secret_id: secret_id.into(),
        ..FileSpec::default()
    }
}

fn spec(files: Vec<FileSpec>) -> DsoSecretSpec {
    DsoSecretSpec {
        aws: None,
        files,
        file_mode: None,
        refresh: Some(RefreshSpec::default()),
    }
}

fn meta(versions: &[(&str, &[&str])]) -> Lookup {
    Ok(SecretMeta {
        versions: versions
            .iter()
            .map(|(id, st)| (id.to_string(), st.iter().map(|s| s.to_string()).collect()))
            .collect(),
        ..SecretMeta::default()
    })
}

fn problem(kind: ProblemKind) -> Lookup {
    Err(AwsProblem {
        kind,
        message: "DescribeSecret x: boom".into(),
    })
}

fn key(id: &str) -> SecretKey {
    SecretKey {
        region: "us-east-1".into(),
        secret_id: id.into(),
    }
}

fn resolve_with(s: &DsoSecretSpec, lookups: &BTreeMap<SecretKey, Lookup>) -> Resolution {
    resolve("db", s, "us-east-1", |k| lookups.get(k))
}

#[test]
fn a_stage_resolves_to_the_version_holding_it() {
    let s = spec(vec![file("prod/db")]);
    let l = BTreeMap::from([(
        key("prod/db"),
        meta(&[("v1", &["AWSPREVIOUS"]), ("v2", &["AWSCURRENT"])]),
    )]);
    let r = resolve_with(&s, &l);
    assert_eq!(r.reason(), Reason::Synced);
    assert_eq!(r.secrets[0].version_id.as_deref(), Some("v2"));
    assert_eq!(r.secrets[0].version_stage.as_deref(), Some("AWSCURRENT"));
    assert_eq!(r.following["db/prod/db"].version_id, "v2");
}

#[test]
fn a_pinned_version_resolves_to_itself_and_is_not_followed() {
    let mut f = file("prod/db");
    f.version_id = Some("pinned-0000000000000000000000000000".into());
    let s = spec(vec![f]);
    let l = BTreeMap::from([(key("prod/db"), meta(&[("v2", &["AWSCURRENT"])]))]);
    let r = resolve_with(&s, &l);
    assert_eq!(r.reason(), Reason::Synced);
    assert_eq!(
        r.secrets[0].version_id.as_deref(),
        Some("pinned-0000000000000000000000000000")
    );
    assert_eq!(r.secrets[0].version_stage, None);
    assert!(r.following.is_empty(), "pinned entries never roll");
}

#[rstest]
#[case(ProblemKind::NotFound, Reason::SecretNotFound, false)]
#[case(ProblemKind::AccessDenied, Reason::AccessDenied, false)]
#[case(ProblemKind::Transient, Reason::AwsError, true)]
#[case(ProblemKind::Permanent, Reason::AwsError, false)]
fn aws_problems_map_to_ready_reasons(
    #[case] kind: ProblemKind,
    #[case] reason: Reason,
    #[case] transient: bool,
) {
    let s = spec(vec![file("prod/db")]);
    let l = BTreeMap::from([(key("prod/db"), problem(kind))]);
    let r = resolve_with(&s, &l);
    assert_eq!(r.reason(), reason);
    assert_eq!(r.transient, transient);
    assert!(r.problem.expect("problem").1.contains("boom"));
    assert!(r.following.is_empty());
}

#[test]
fn a_missing_stage_is_secret_not_found_naming_the_stage() {
    let mut f = file("prod/db");
    f.version_stage = Some("BLUE".into());
    let r = resolve_with(
        &spec(vec![f]),
        &BTreeMap::from([(key("prod/db"), meta(&[("v1", &["AWSCURRENT"])]))]),
    );
    assert_eq!(r.reason(), Reason::SecretNotFound);
    assert!(r.problem.expect("problem").1.contains("BLUE"));
}

#[test]
fn entries_of_one_secret_share_one_lookup_and_one_status_line() {
    let mut a = file("prod/db");
    a.json_key = Some("user".into());
    let mut b = file("prod/db");
    b.path = Some("g".into());
    b.json_key = Some("password".into());
    let s = spec(vec![a, b]);
    assert_eq!(secret_keys(&s, "us-east-1").len(), 1);
    let r = resolve_with(
        &s,
        &BTreeMap::from([(key("prod/db"), meta(&[("v1", &["AWSCURRENT"])]))]),
    );
    assert_eq!(r.secrets.len(), 1);
}

#[test]
fn a_templates_sources_are_looked_up_and_followed_like_entries() {
    let templated: FileSpec = serde_json::from_value(serde_json::json!({
        "path": "url", "template": "{{ db.password }}{{ api }}",
        "sources": {"db": {"secretId": "prod/db"}, "api": {"secretId": "prod/api", "versionStage": "BLUE"}}
    }))
    .expect("template entry");
    let s = spec(vec![templated]);
    let ids: Vec<String> = secret_keys(&s, "us-east-1")
        .into_iter()
        .map(|k| k.secret_id)
        .collect();
    assert_eq!(ids, ["prod/api", "prod/db"]);
    let r = resolve_with(
        &s,
        &BTreeMap::from([
            (key("prod/db"), meta(&[("v1", &["AWSCURRENT"])])),
            (key("prod/api"), meta(&[("v7", &["BLUE"])])),
        ]),
    );
    assert_eq!(r.reason(), Reason::Synced);
    assert_eq!(r.secrets.len(), 2);
    assert_eq!(
        r.following.len(),
        2,
        "a source rotation rolls like an entry's"
    );
}

#[test]
fn the_region_comes_from_the_arn_then_the_spec_then_the_default() {
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf";
    let mut s = spec(vec![file(arn), file("plain")]);
    s.aws = Some(AwsSpec {
        region: Some("us-west-2".into()),
        role_arn: None,
    });
    assert_eq!(
        secret_key(&s, &s.files[0].secret_id, "x").region,
        "eu-west-1"
    );
    assert_eq!(
        secret_key(&s, &s.files[1].secret_id, "x").region,
        "us-west-2"
    );
    s.aws = None;
    assert_eq!(secret_key(&s, &s.files[1].secret_id, "x").region, "x");
}

#[test]
fn the_condition_keeps_its_transition_time_while_the_status_holds() {
    let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1000).expect("ts"));
    let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2000).expect("ts"));
    let first = ready_condition(&[], Reason::Synced, "ok", Some(1), t0.clone());
    let again = ready_condition(
        std::slice::from_ref(&first),
        Reason::Synced,
        "ok",
        Some(2),
        t1.clone(),
    );
    assert_eq!(again.last_transition_time, t0);
    let failed = ready_condition(&[again], Reason::AccessDenied, "no", Some(2), t1.clone());
    assert_eq!(failed.last_transition_time, t1);
    assert_eq!(failed.status, "False");
    assert_eq!(failed.reason, "AccessDenied");
}

fn status(id: &str, stage: Option<&str>, version: &str) -> SecretVersionStatus {
    SecretVersionStatus {
        secret_id: id.into(),
        version_stage: stage.map(str::to_string),
        version_id: Some(version.into()),
        last_changed_date: None,
    }
}

#[test]
fn rotations_are_stage_entries_whose_version_changed() {
    let prev = vec![
        status("a", Some("AWSCURRENT"), "1"),
        status("b", Some("AWSCURRENT"), "1"),
        status("p", None, "pin"),
    ];
    let now = vec![
        status("a", Some("AWSCURRENT"), "2"),
        status("b", Some("AWSCURRENT"), "1"),
        status("p", None, "pin2"),
        status("c", Some("AWSCURRENT"), "1"),
    ];
    let r = rotations(&prev, &now);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].from.as_str(), r[0].to.as_str()), ("1", "2"));
    assert!(
        rotations(&[], &now).is_empty(),
        "a first status is not a rotation"
    );
}

fn versions(pairs: &[(&str, &str)]) -> Versions {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                format!("db/{k}"),
                Consumed {
                    secret_id: k.to_string(),
                    version_id: v.to_string(),
                },
            )
        })
        .collect()
}

fn report(pairs: &[(&str, &str)]) -> Vec<ReportedVersion> {
    pairs
        .iter()
        .map(|(s, v)| ReportedVersion {
            secret_id: s.to_string(),
            version_id: v.to_string(),
        })
        .collect()
}

#[test]
fn a_template_stamped_with_the_current_hash_is_current() {
    let cur = versions(&[("a", "2")]);
    let h = hash(&cur);
    let rec = record(&cur);
    assert_eq!(decide(&cur, Some(&h), Some(&rec), None), Decision::Current);
    assert_eq!(decide(&cur, Some(&h), None, None), Decision::Record);
}

#[test]
fn a_workload_seen_first_asks_for_its_pods() {
    let cur = versions(&[("a", "2")]);
    assert_eq!(decide(&cur, None, None, None), Decision::NeedPods);
}

#[rstest]
#[case::no_reports_first_sight_is_current(vec![], Decision::Record)]
#[case::pods_run_the_current_version(vec![vec![("a", "2")]], Decision::Record)]
#[case::a_pod_runs_an_older_version(vec![vec![("a", "2")], vec![("a", "1")]], Decision::Roll)]
#[case::reports_about_other_secrets_say_nothing(vec![vec![("z", "9")]], Decision::Record)]
fn first_sight_follows_the_pods_reports(
    #[case] pods: Vec<Vec<(&str, &str)>>,
    #[case] expected: Decision,
) {
    let cur = versions(&[("a", "2")]);
    let reports: Vec<_> = pods.iter().map(|p| report(p)).collect();
    assert_eq!(decide(&cur, None, None, Some(&reports)), expected);
}

#[test]
fn a_recorded_older_version_rolls_when_no_pod_reports() {
    let cur = versions(&[("a", "2")]);
    let old = record(&versions(&[("a", "1")]));
    assert_eq!(decide(&cur, None, Some(&old), None), Decision::NeedPods);
    assert_eq!(decide(&cur, None, Some(&old), Some(&[])), Decision::Roll);
}

#[test]
fn a_stale_stamp_of_ours_without_a_record_rolls() {
    let cur = versions(&[("a", "2")]);
    let old = hash(&versions(&[("a", "1")]));
    assert_eq!(decide(&cur, Some(&old), None, Some(&[])), Decision::Roll);
}

#[test]
fn a_newly_consumed_dsosecret_only_records() {
    // The user added a DsoSecret to the template: that edit rolled the pods already.
    let cur = versions(&[("a", "1"), ("b", "1")]);
    let old = versions(&[("a", "1")]);
    let (h, rec) = (hash(&old), record(&old));
    assert_eq!(
        decide(&cur, Some(&h), Some(&rec), Some(&[])),
        Decision::Record
    );
}

#[test]
fn nothing_consumed_means_nothing_to_do() {
    assert_eq!(
        decide(&Versions::new(), None, None, None),
        Decision::Current
    );
}

#[test]
fn consumed_names_need_the_opt_in() {
    let mut a = BTreeMap::from([(
        dso_api::annotations::SECRETS.to_string(),
        "db, api".to_string(),
    )]);
    assert!(consumed_names(Some(&a)).is_empty());
    a.insert(dso_api::annotations::INJECT.into(), "true".into());
    assert_eq!(consumed_names(Some(&a)), vec!["db", "api"]);
}

#[test]
fn reports_parse_from_the_init_termination_message() {
    let r = parse_report(r#"{"versions":[{"secretId":"a","versionId":"v1"}]}"#).expect("report");
    assert_eq!(r, report(&[("a", "v1")]));
    assert!(parse_report("Error: exit 1").is_none());
    assert!(parse_record(Some(&"not json".to_string())).is_none());
}

/// Applies a decision the way the shell does: what the workload looks like afterwards.
fn apply(
    d: Decision,
    cur: &Versions,
    t: Option<String>,
    rec: Option<BTreeMap<String, String>>,
) -> (Option<String>, Option<BTreeMap<String, String>>) {
    match d {
        Decision::Roll => (Some(hash(cur)), Some(record(cur))),
        Decision::Record => (t, Some(record(cur))),
        Decision::Current | Decision::NeedPods => (t, rec),
    }
}

fn arb_versions() -> impl Strategy<Value = Versions> {
    prop::collection::btree_map("[a-c]", "[1-3]", 1..4).prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                (
                    format!("db/{k}"),
                    Consumed {
                        secret_id: k,
                        version_id: v,
                    },
                )
            })
            .collect()
    })
}

proptest! {
    /// After acting once, the same versions never ask for anything again: a second reconcile or
    /// a restarted operator rolls nothing.
    #[test]
    fn acting_on_a_decision_converges(cur in arb_versions(), old in arb_versions(),
                                      stamped in any::<bool>(), recorded in any::<bool>()) {
        let t = stamped.then(|| hash(&old));
        let rec = recorded.then(|| record(&old));
        let d = match decide(&cur, t.as_deref(), rec.as_ref(), None) {
            Decision::NeedPods => decide(&cur, t.as_deref(), rec.as_ref(), Some(&[])),
            d => d,
        };
        let (t2, rec2) = apply(d, &cur, t, rec);
        prop_assert_eq!(decide(&cur, t2.as_deref(), rec2.as_ref(), None), Decision::Current);
    }

    /// After a rollout, a rotation rolls exactly when a version the pods run changed.
    #[test]
    fn a_workload_rolls_exactly_when_a_consumed_version_changed(old in arb_versions(), cur in arb_versions()) {
        let (t, rec) = (hash(&old), record(&old));
        let d = match decide(&cur, Some(&t), Some(&rec), None) {
            Decision::NeedPods => decide(&cur, Some(&t), Some(&rec), Some(&[])),
            d => d,
        };
        let changed = cur.iter().any(|(k, c)| old.get(k).is_some_and(|o| o.version_id != c.version_id));
        prop_assert_eq!(d == Decision::Roll, changed);
    }

    /// The hash depends only on the versions, never on the order they were found in.
    #[test]
    fn the_hash_is_a_function_of_the_versions(cur in arb_versions()) {
        let rebuilt: Versions = cur.clone().into_iter().rev().collect();
        prop_assert_eq!(hash(&cur), hash(&rebuilt));
    }
}

#[test]
fn a_secret_arn_with_a_host_for_a_region_is_an_invalid_spec_and_names_no_lookup() {
    let bad = "arn:aws:secretsmanager:x@127.0.0.1/:123456789012:secret:db";
    let s = spec(vec![file(bad)]);
    let r = invalid_spec(&s).expect("refused");
    assert_eq!(r.reason(), Reason::InvalidSpec);
    let message = &r.problem.as_ref().expect("problem").1;
    assert!(
        message.starts_with("spec.files[0].secretId: is not a Secrets Manager secret ARN"),
        "{message}"
    );
    assert!(message.contains("region"), "{message}");
    assert!(r.secrets.is_empty() && r.following.is_empty());
    // Were it looked up anyway, the malformed region would not be used as one.
    assert_eq!(
        secret_key(&s, &s.files[0].secret_id, "us-east-1").region,
        "us-east-1"
    );
    assert_eq!(invalid_spec(&spec(vec![file("prod/db")])), None);
}

#[test]
fn a_secret_outside_the_namespaces_allowlist_is_an_invalid_spec_naming_file_and_secret() {
    let list = dso_api::allowlist::Allowlist::from_yaml(
        "default: [\"{namespace}/\"]\nnamespaces: {other: [\"shared/\"]}",
    )
    .expect("allowlist");
    let s = spec(vec![file("team-a/db"), file("shared/db")]);
    let r = not_allowed(&s, "team-a", &list).expect("refused");
    assert_eq!(r.reason(), Reason::InvalidSpec);
    let message = &r.problem.as_ref().expect("problem").1;
    assert!(
        message.starts_with("spec.files[1].secretId: secret \"shared/db\" (file \"f\")"),
        "{message}"
    );
    assert!(message.contains("namespace team-a"), "{message}");
    assert!(!message.contains("spec.files[0]"), "{message}");
    assert!(r.secrets.is_empty() && r.following.is_empty());
    assert_eq!(
        not_allowed(&s, "other", &list).map(|r| r.reason()),
        Some(Reason::InvalidSpec)
    );
    assert_eq!(
        not_allowed(&spec(vec![file("team-a/db")]), "team-a", &list),
        None
    );
    let none = dso_api::allowlist::Allowlist::default();
    assert_eq!(
        not_allowed(&s, "team-a", &none),
        None,
        "no allowlist: all allowed"
    );
}

#[test]
fn an_aws_outage_keeps_the_last_versions_read_in_status() {
    let s = spec(vec![file("a"), file("b")]);
    let previous = vec![
        status("a", Some("AWSCURRENT"), "1"),
        status("b", Some("AWSCURRENT"), "1"),
    ];
    // b cannot be read (endpoint down, throttling), a can: a's new version, b's last one.
    let l = BTreeMap::from([
        (key("a"), meta(&[("2", &["AWSCURRENT"])])),
        (key("b"), problem(ProblemKind::Transient)),
    ]);
    let r = resolve_with(&s, &l);
    assert!(r.transient);
    let got = status_versions(&previous, &r);
    let of = |id: &str| {
        got.iter()
            .find(|v| v.secret_id == id)
            .and_then(|v| v.version_id.clone())
    };
    assert_eq!(of("a").as_deref(), Some("2"));
    assert_eq!(of("b").as_deref(), Some("1"), "kept through the outage");
    assert_eq!(got.len(), 2);

    // Not transient (AccessDenied, SecretNotFound): status says what AWS answers now.
    let l = BTreeMap::from([
        (key("a"), meta(&[("2", &["AWSCURRENT"])])),
        (key("b"), problem(ProblemKind::AccessDenied)),
    ]);
    let got = status_versions(&previous, &resolve_with(&s, &l));
    assert!(
        got.iter()
            .all(|v| v.secret_id != "b" || v.version_id.is_none()),
        "{got:?}"
    );
}

#[test]
fn a_rollout_is_for_the_dsosecrets_whose_recorded_versions_changed() {
    let rec = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let names = |s: std::collections::BTreeSet<String>| s.into_iter().collect::<Vec<_>>();
    let before = rec(&[
        ("db/prod/db", "v1"),
        ("cache/prod/redis@AWSPENDING", "r1"),
        ("queue/q", "q1"),
    ]);
    let now = rec(&[
        ("db/prod/db", "v2"),
        ("cache/prod/redis@AWSPENDING", "r2"),
        ("queue/q", "q1"),
    ]);
    assert_eq!(
        names(changed_dsosecrets(Some(&before), &now)),
        ["cache", "db"]
    );
    assert_eq!(
        names(changed_dsosecrets(Some(&now), &now)),
        Vec::<String>::new()
    );
    let added = rec(&[
        ("db/prod/db", "v2"),
        ("cache/prod/redis@AWSPENDING", "r2"),
        ("queue/q", "q1"),
        ("new/x", "n1"),
    ]);
    assert_eq!(names(changed_dsosecrets(Some(&now), &added)), ["new"]);
    assert_eq!(
        names(changed_dsosecrets(None, &now)),
        ["cache", "db", "queue"],
        "no record: every one"
    );
}
