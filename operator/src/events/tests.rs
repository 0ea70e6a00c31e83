//! Events as EventBridge delivers them to SQS (`operator/tests/event-samples/*.json`, shaped after the
//! CloudTrail entries and the `Secret Label Updated` event AWS documents for Secrets Manager).

use super::*;
use proptest::prelude::*;
use rstest::rstest;

const PUT: &str = include_str!("../../tests/event-samples/put-secret-value.json");
const STAGE: &str = include_str!("../../tests/event-samples/update-secret-version-stage.json");
const ROTATED: &str = include_str!("../../tests/event-samples/rotation-succeeded.json");
const LABEL: &str = include_str!("../../tests/event-samples/secret-label-updated.json");
const READ: &str = include_str!("../../tests/event-samples/get-secret-value.json");

const DB_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/shop/db-AbC123";

fn key(secret_id: &str) -> SecretKey {
    SecretKey {
        region: "us-east-1".into(),
        secret_id: secret_id.into(),
    }
}

fn edit(body: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(body).expect("fixture");
    f(&mut v);
    v.to_string()
}

fn at(t: &str) -> Option<Timestamp> {
    Some(t.parse().expect("time"))
}

#[rstest]
#[case::put_secret_value(PUT, "PutSecretValue", &["prod/shop/db", DB_ARN], "2026-11-29T22:10:05Z")]
#[case::stage_moved(STAGE, "UpdateSecretVersionStage", &[DB_ARN, "prod/shop/db"], "2026-11-29T22:11:30Z")]
#[case::rotation_succeeded(ROTATED, "RotationSucceeded", &[DB_ARN], "2026-11-29T22:11:32Z")]
#[case::label_updated(LABEL, "Secret Label Updated", &["prod/shop/api", "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/shop/api-Zx9Yw8"], "2026-11-29T22:12:48Z")]
fn a_change_event_names_its_secret_its_time_and_region(
    #[case] body: &str,
    #[case] name: &str,
    #[case] ids: &[&str],
    #[case] time: &str,
) {
    let e = parse(body).expect("an event");
    assert_eq!(e.name, name);
    assert_eq!(e.secret_ids, ids);
    assert_eq!(e.time, at(time));
    assert_eq!(e.region, "us-east-1");
    assert!(e.id.is_some());
}

#[test]
fn an_event_forwarded_through_sns_is_read_inside_its_notification() {
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": PUT});
    assert_eq!(parse(&sns.to_string()), parse(PUT));
}

#[test]
fn the_arn_key_of_events_before_february_2024_is_read_too() {
    let old = edit(PUT, |v| {
        let re = &mut v["detail"]["responseElements"];
        re["aRN"] = re["arn"].take();
        re.as_object_mut().expect("object").remove("arn");
    });
    assert_eq!(
        parse(&old).expect("event").secret_ids,
        ["prod/shop/db", DB_ARN]
    );
}

#[rstest]
#[case::empty("")]
#[case::not_json("PutSecretValue prod/shop/db")]
#[case::a_json_array("[]")]
#[case::a_json_string("\"event\"")]
#[case::no_detail_type(&edit(PUT, |v| { v.as_object_mut().expect("o").remove("detail-type"); }))]
#[case::detail_not_an_object(&edit(PUT, |v| v["detail"] = Value::from("PutSecretValue")))]
#[case::no_event_name(&edit(PUT, |v| { v["detail"].as_object_mut().expect("o").remove("eventName"); }))]
#[case::no_secret_named(&edit(PUT, |v| { v["detail"]["requestParameters"] = Value::Null; v["detail"]["responseElements"] = Value::Null; }))]
#[case::label_event_without_secret(&edit(LABEL, |v| { v["resources"] = serde_json::json!([]); v["detail"] = serde_json::json!({}); }))]
#[case::sns_notification_of_garbage(r#"{"Type":"Notification","Message":"not json"}"#)]
fn a_message_that_is_no_event_is_malformed(#[case] body: &str) {
    assert_eq!(parse(body), Err(Outcome::Malformed));
}

#[rstest]
#[case::a_read(READ)]
#[case::a_tag(&edit(PUT, |v| v["detail"]["eventName"] = "TagResource".into()))]
#[case::a_failed_call(&edit(PUT, |v| { v["detail"]["errorCode"] = "AccessDenied".into(); v["detail"]["responseElements"] = Value::Null; }))]
#[case::another_service(&edit(PUT, |v| v["source"] = "aws.s3".into()))]
#[case::another_detail_type(&edit(PUT, |v| v["detail-type"] = "AWS Console Sign In via CloudTrail".into()))]
fn an_event_that_changes_no_version_is_irrelevant(#[case] body: &str) {
    assert_eq!(parse(body), Err(Outcome::Irrelevant));
}

#[rstest]
#[case::same_name("prod/db", "prod/db", true)]
#[case::name_and_full_arn(
    "prod/db",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    true
)]
#[case::full_arn_and_name(
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    "prod/db",
    true
)]
#[case::same_full_arn(
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    true
)]
#[case::partial_and_full_arn(
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    true
)]
#[case::name_ending_like_a_suffix("my-secret", "my-secret", true)]
#[case::partial_arn_of_a_name_ending_like_a_suffix(
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:my-secret",
    "my-secret",
    true
)]
#[case::another_name("prod/db", "prod/db2", false)]
#[case::a_longer_name(
    "prod/db",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-x-AbC123",
    false
)]
#[case::a_recreated_secret(
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-ZzZ999",
    false
)]
#[case::another_account(
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbC123",
    "arn:aws:secretsmanager:us-east-1:210987654321:secret:prod/db-AbC123",
    false
)]
#[case::another_region_in_the_arn(
    "prod/db",
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbC123",
    false
)]
fn an_event_names_a_secret_by_name_or_arn(
    #[case] watched: &str,
    #[case] named: &str,
    #[case] matches: bool,
) {
    assert_eq!(refers_to(&key(watched), "us-east-1", named), matches);
}

#[test]
fn a_name_in_an_event_of_another_region_is_another_secret() {
    assert!(!refers_to(&key("prod/db"), "eu-west-1", "prod/db"));
    assert!(refers_to(&key("prod/db"), "", "prod/db"), "no region said");
}

type Target = (&'static str, &'static str);

fn watched() -> Vec<(Target, SecretKey)> {
    vec![
        (("shop", "db"), key("prod/shop/db")),
        (("billing", "db-by-arn"), key(DB_ARN)),
        (("shop", "api"), key("prod/shop/api")),
    ]
}

#[test]
fn an_event_reconciles_every_dsosecret_naming_the_secret_by_name_or_arn() {
    let mut inbox = Inbox::default();
    let e = parse(PUT).expect("event");
    let a = inbox.accept(&e, None, &watched()).expect("accepted");
    assert_eq!(
        a.targets.into_iter().collect::<Vec<_>>(),
        [("billing", "db-by-arn"), ("shop", "db")]
    );
    assert_eq!(
        a.keys.into_iter().collect::<Vec<_>>(),
        [key(DB_ARN), key("prod/shop/db")]
    );
}

#[test]
fn a_duplicate_delivery_is_ignored() {
    let mut inbox = Inbox::default();
    let e = parse(PUT).expect("event");
    assert!(inbox.accept(&e, Some("m1"), &watched()).is_ok());
    assert_eq!(
        inbox.accept(&e, Some("m2"), &watched()),
        Err(Outcome::Duplicate)
    );
    // Without an event id, the queue's message id tells a redelivery.
    let mut anonymous = e.clone();
    anonymous.id = None;
    anonymous.time = None;
    assert!(inbox.accept(&anonymous, Some("m3"), &watched()).is_ok());
    assert_eq!(
        inbox.accept(&anonymous, Some("m3"), &watched()),
        Err(Outcome::Duplicate)
    );
}

#[test]
fn an_event_older_than_one_handled_for_the_same_secret_is_out_of_order() {
    let mut inbox = Inbox::default();
    let newer = parse(STAGE).expect("event"); // 22:11:30
    let older = parse(PUT).expect("event"); // 22:10:05
    assert!(inbox.accept(&newer, None, &watched()).is_ok());
    assert_eq!(
        inbox.accept(&older, None, &watched()),
        Err(Outcome::OutOfOrder)
    );
    // Another secret's older event still counts.
    let api = parse(LABEL).expect("event");
    let mut old_api = api.clone();
    old_api.time = at("2026-11-29T20:00:00Z");
    assert!(inbox.accept(&old_api, None, &watched()).is_ok());
}

#[test]
fn two_changes_in_the_same_second_both_count() {
    let mut inbox = Inbox::default();
    let first = parse(PUT).expect("event");
    let mut second = first.clone();
    second.id = Some("another-event".into());
    assert!(inbox.accept(&first, None, &watched()).is_ok());
    assert!(inbox.accept(&second, None, &watched()).is_ok());
}

#[test]
fn an_event_about_a_secret_nobody_watches_is_unknown() {
    let mut inbox = Inbox::default();
    let e = parse(PUT).expect("event");
    let others = vec![(("shop", "cache"), key("prod/shop/cache"))];
    assert_eq!(inbox.accept(&e, None, &others), Err(Outcome::UnknownSecret));
    assert_eq!(
        inbox.accept::<Target>(&parse(LABEL).expect("event"), None, &[]),
        Err(Outcome::UnknownSecret)
    );
}

#[test]
fn the_inbox_remembers_a_bounded_number_of_events() {
    let mut inbox = Inbox::default();
    let e = parse(PUT).expect("event");
    for n in 0..REMEMBERED + 10 {
        let mut e = e.clone();
        e.id = Some(format!("event-{n}"));
        let _ = inbox.accept(&e, None, &watched());
    }
    assert_eq!(inbox.seen.len(), REMEMBERED);
    assert_eq!(inbox.order.len(), REMEMBERED);
}

fn spec(interval: Option<&str>) -> DsoSecretSpec {
    serde_json::from_value(serde_json::json!({
        "files": [{"path": "p", "secretId": "prod/db"}],
        "refresh": interval.map(|i| serde_json::json!({"interval": i})),
    }))
    .expect("spec")
}

#[test]
fn with_a_readable_queue_the_default_interval_is_the_fallback_and_a_set_one_stays() {
    let five = Duration::from_secs(300);
    let thirty = Duration::from_secs(1800);
    let sweep_only = Detection::default();
    assert_eq!(sweep_only.interval(&spec(None)), five);
    assert!(
        !sweep_only.set_queue_up(true),
        "no queue: nothing to record"
    );

    let events = Detection::with_events(thirty);
    assert_eq!(events.interval(&spec(None)), five, "queue not read yet");
    assert!(events.set_queue_up(true));
    assert_eq!(events.interval(&spec(None)), thirty);
    assert_eq!(
        events.interval(&spec(Some("10m"))),
        Duration::from_secs(600)
    );
    assert!(!events.set_queue_up(true), "no change");
    assert!(events.set_queue_up(false));
    assert_eq!(events.interval(&spec(None)), five, "queue unreadable");
}

proptest! {
    #[test]
    fn no_message_body_crashes_the_reader(body in ".{0,400}") {
        let _ = parse(&body);
    }

    #[test]
    fn no_value_in_any_field_of_an_event_crashes_the_reader(
        field in prop::sample::select(vec![
            "/id", "/time", "/region", "/resources", "/detail", "/detail/eventName",
            "/detail/eventTime", "/detail/requestParameters", "/detail/requestParameters/secretId",
            "/detail/responseElements", "/detail/resources", "/detail/errorCode",
        ]),
        value in prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            Just(serde_json::json!([1, "arn:aws:secretsmanager:x", {"ARN": 2}])),
            Just(serde_json::json!({"ARN": "arn:aws:secretsmanager:::secret:"})),
        ],
    ) {
        for body in [PUT, LABEL, ROTATED] {
            let mut v: Value = serde_json::from_str(body).expect("fixture");
            if let Some(slot) = v.pointer_mut(field) {
                *slot = value.clone();
            }
            if let Ok(e) = parse(&v.to_string()) {
                prop_assert!(!e.secret_ids.is_empty());
                let mut inbox = Inbox::default();
                let _ = inbox.accept(&e, None, &watched());
            }
        }
    }
}
