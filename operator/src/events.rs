//! Event-driven detection, the pure part: what a Secrets Manager change event says, which
//! watched secrets it is about, and whether it is worth a reconcile. The queue reader that feeds
//! it is [`crate::sqs`].
//!
//! Events come from EventBridge (a rule on the default bus, targeting an SQS queue; see
//! `docs/rotation.md`), in three shapes, all with `"source": "aws.secretsmanager"`:
//! - `AWS API Call via CloudTrail`: `detail.eventName` (`PutSecretValue`,
//!   `UpdateSecretVersionStage`, `RotateSecret`...), the secret in
//!   `detail.requestParameters.secretId` (as the caller wrote it: name or ARN) and in
//!   `detail.responseElements.arn` (`aRN` in older events);
//! - `AWS Service Event via CloudTrail`: rotation and version-deletion steps Secrets Manager
//!   itself takes (`RotationSucceeded`, `EndSecretVersionDelete`...), the secret in
//!   `detail.additionalEventData.SecretId`;
//! - `Secret Label Updated`: Secrets Manager's own event when a staging label moves (no
//!   CloudTrail needed), the secret in `resources` (ARN) and `detail.name`.
//!
//! An event only says "look again": the reconcile it triggers asks AWS for fresh metadata, so an
//! event can never make the operator believe something AWS does not say. [`Inbox`] drops what
//! cannot help: duplicates (SQS delivers at least once), events older than one already handled
//! for the same secrets (the fresh lookup made for the newer one saw their effect too), events
//! about secrets no DsoSecret names, and messages that are not such events at all.

use crate::domain::SecretKey;
use dso_api::DsoSecretSpec;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What became of one message read from the queue (the `outcome` label of
/// `dso_secret_events_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Watched secrets changed: their DsoSecrets were reconciled at once.
    Reconciled,
    /// The same event again (SQS delivers at least once).
    Duplicate,
    /// Older than an event already handled for the same secrets.
    OutOfOrder,
    /// About secrets no DsoSecret names.
    UnknownSecret,
    /// A Secrets Manager event that changes no version (a read, a tag, a failed call), or
    /// another service's event.
    Irrelevant,
    /// Not JSON, or not an EventBridge event of a known shape.
    Malformed,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Reconciled => "reconciled",
            Outcome::Duplicate => "duplicate",
            Outcome::OutOfOrder => "out_of_order",
            Outcome::UnknownSecret => "unknown_secret",
            Outcome::Irrelevant => "irrelevant",
            Outcome::Malformed => "malformed",
        }
    }

    /// Every outcome (the metric family is filled with zeros at start).
    pub const ALL: [Outcome; 6] = [
        Outcome::Reconciled,
        Outcome::Duplicate,
        Outcome::OutOfOrder,
        Outcome::UnknownSecret,
        Outcome::Irrelevant,
        Outcome::Malformed,
    ];
}

/// The EventBridge `detail-type` of API calls recorded by CloudTrail.
pub const API_CALL: &str = "AWS API Call via CloudTrail";
/// The EventBridge `detail-type` of Secrets Manager's own steps recorded by CloudTrail.
pub const SERVICE_EVENT: &str = "AWS Service Event via CloudTrail";
/// Secrets Manager's native event when a staging label moves to another version.
pub const LABEL_UPDATED: &str = "Secret Label Updated";

/// The CloudTrail event names that can change what a DsoSecret resolves to: a new version, a
/// moved staging label, a secret created, deleted or restored, a version removed.
pub const CHANGES: [&str; 12] = [
    "PutSecretValue",
    "UpdateSecretVersionStage",
    "RotateSecret",
    "UpdateSecret",
    "CreateSecret",
    "DeleteSecret",
    "RestoreSecret",
    "RotationSucceeded",
    "RotationAbandoned",
    "EndSecretVersionDelete",
    "ReplicateSecretToRegions",
    "RemoveRegionsFromReplication",
];

/// One Secrets Manager change event, as far as the operator cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEvent {
    /// The EventBridge event id (the same for every delivery of one event).
    pub id: Option<String>,
    /// `detail.eventName`, or the `detail-type` of a native event.
    pub name: String,
    /// When it happened in AWS (`detail.eventTime`, else the event's `time`).
    pub time: Option<Timestamp>,
    /// The region it happened in (`region`, else `detail.awsRegion`); empty when absent.
    pub region: String,
    /// The secret, as the event names it (names and ARNs, in the order found, no repeats).
    pub secret_ids: Vec<String>,
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Reads one queue message body. `Err` says why it is no event worth a look.
pub fn parse(body: &str) -> Result<SecretEvent, Outcome> {
    let mut v: Value = serde_json::from_str(body).map_err(|_| Outcome::Malformed)?;
    // EventBridge → SNS → SQS: the event is the notification's Message.
    if text(&v, "/Type") == Some("Notification")
        && let Some(inner) = text(&v, "/Message")
    {
        v = serde_json::from_str(inner).map_err(|_| Outcome::Malformed)?;
    }
    let (Some(source), Some(detail_type), Some(detail)) = (
        text(&v, "/source"),
        text(&v, "/detail-type"),
        v.get("detail").filter(|d| d.is_object()),
    ) else {
        return Err(Outcome::Malformed);
    };
    if source != "aws.secretsmanager" {
        return Err(Outcome::Irrelevant);
    }
    let mut ids: Vec<String> = Vec::new();
    let mut add = |id: Option<&str>| {
        if let Some(id) = id.map(str::trim).filter(|s| !s.is_empty())
            && !ids.iter().any(|x| x == id)
        {
            ids.push(id.to_string());
        }
    };
    let name = match detail_type {
        API_CALL | SERVICE_EVENT => {
            let name = text(detail, "/eventName").ok_or(Outcome::Malformed)?;
            if !CHANGES.contains(&name) || detail.get("errorCode").is_some_and(|e| !e.is_null()) {
                return Err(Outcome::Irrelevant);
            }
            for p in [
                "/requestParameters/secretId",
                "/responseElements/arn",
                "/responseElements/aRN",
                "/responseElements/name",
                "/additionalEventData/SecretId",
                "/additionalEventData/secretId",
                "/serviceEventDetails/secretId",
            ] {
                add(text(detail, p));
            }
            if detail_type == API_CALL && name == "CreateSecret" {
                add(text(detail, "/requestParameters/name"));
            }
            for r in detail
                .get("resources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                add(text(r, "/ARN").filter(|a| is_secret_arn(a)));
            }
            name.to_string()
        }
        LABEL_UPDATED => {
            add(text(detail, "/name"));
            detail_type.to_string()
        }
        _ => return Err(Outcome::Irrelevant),
    };
    for r in v
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add(r.as_str().filter(|a| is_secret_arn(a)));
    }
    if ids.is_empty() {
        return Err(Outcome::Malformed);
    }
    let time = text(detail, "/eventTime")
        .or_else(|| text(&v, "/time"))
        .and_then(|t| t.parse::<Timestamp>().ok());
    let region = text(&v, "/region")
        .or_else(|| text(detail, "/awsRegion"))
        .unwrap_or_default()
        .to_string();
    Ok(SecretEvent {
        id: text(&v, "/id").map(str::to_string),
        name,
        time,
        region,
        secret_ids: ids,
    })
}

/// The parts of a Secrets Manager secret ARN:
/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>[-<6 characters>]`.
struct Arn<'a> {
    partition: &'a str,
    region: &'a str,
    account: &'a str,
    /// What follows `secret:`: the name, with AWS's 6-character suffix in a full ARN.
    rest: &'a str,
}

fn arn(s: &str) -> Option<Arn<'_>> {
    let mut p = s.splitn(7, ':');
    let (Some("arn"), Some(partition), Some("secretsmanager"), Some(region), Some(account)) =
        (p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return None;
    };
    let (Some("secret"), Some(rest)) = (p.next(), p.next()) else {
        return None;
    };
    Some(Arn {
        partition,
        region,
        account,
        rest,
    })
}

fn is_secret_arn(s: &str) -> bool {
    arn(s).is_some()
}

/// The names an ARN's tail may stand for: itself (a partial ARN) and, when it ends in `-` and
/// six letters or digits, itself without them (a full ARN). AWS cannot tell these apart either,
/// so both count.
fn names(rest: &str) -> impl Iterator<Item = &str> {
    let stripped = rest.rsplit_once('-').and_then(|(name, suffix)| {
        (!name.is_empty() && suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(name)
    });
    std::iter::once(rest).chain(stripped)
}

/// True when the event's `id` (a name or an ARN, in the event's `region`) may name the secret a
/// DsoSecret looks up as `key`. Names and ARNs (full or partial) match each other; regions must
/// agree, and so must accounts when both sides are ARNs.
pub fn refers_to(key: &SecretKey, region: &str, id: &str) -> bool {
    let (k, e) = (arn(&key.secret_id), arn(id));
    let id_region = e.as_ref().map_or(region, |e| e.region);
    if !id_region.is_empty() && id_region != key.region {
        return false;
    }
    match (k, e) {
        (Some(k), Some(e)) => {
            k.partition == e.partition
                && k.account == e.account
                && (k.rest == e.rest
                    || names(k.rest).any(|n| n == e.rest)
                    || names(e.rest).any(|n| n == k.rest))
        }
        (Some(k), None) => names(k.rest).any(|n| n == id),
        (None, Some(e)) => names(e.rest).any(|n| n == key.secret_id),
        (None, None) => key.secret_id == id,
    }
}

/// What to do about an accepted event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted<R> {
    /// The DsoSecrets to reconcile now.
    pub targets: BTreeSet<R>,
    /// The secrets (as those DsoSecrets look them up) whose cached metadata is now stale.
    pub keys: BTreeSet<SecretKey>,
}

/// How many event ids [`Inbox`] remembers to recognise a duplicate (SQS redelivers within the
/// visibility timeout, so recent ones suffice).
const REMEMBERED: usize = 10_000;

/// The decisions about events, in the order the queue hands them over: duplicates, order, and
/// which watched secrets they name.
#[derive(Default)]
pub struct Inbox {
    seen: HashSet<String>,
    order: VecDeque<String>,
    /// The time of the newest event handled, per watched secret.
    latest: HashMap<SecretKey, Timestamp>,
}

impl Inbox {
    /// Decides about `event`, given what is watched: `(DsoSecret, secret it looks up)` pairs.
    /// `dedup` identifies the delivery when the event has no id (the queue's message id).
    pub fn accept<R: Clone + Ord>(
        &mut self,
        event: &SecretEvent,
        dedup: Option<&str>,
        watched: &[(R, SecretKey)],
    ) -> Result<Accepted<R>, Outcome> {
        if let Some(id) = event.id.as_deref().or(dedup) {
            if self.seen.contains(id) {
                return Err(Outcome::Duplicate);
            }
            self.remember(id);
        }
        let mut accepted = Accepted {
            targets: BTreeSet::new(),
            keys: BTreeSet::new(),
        };
        for (target, key) in watched {
            if event
                .secret_ids
                .iter()
                .any(|id| refers_to(key, &event.region, id))
            {
                accepted.targets.insert(target.clone());
                accepted.keys.insert(key.clone());
            }
        }
        if accepted.keys.is_empty() {
            return Err(Outcome::UnknownSecret);
        }
        if let Some(t) = event.time {
            // Stale only when every secret it names has seen a strictly newer event: CloudTrail
            // times have whole seconds, and two changes in one second must both count.
            if accepted
                .keys
                .iter()
                .all(|k| self.latest.get(k).is_some_and(|l| *l > t))
            {
                return Err(Outcome::OutOfOrder);
            }
            for k in &accepted.keys {
                let l = self.latest.entry(k.clone()).or_insert(t);
                *l = (*l).max(t);
            }
        }
        if self.latest.len() > 2 * watched.len() + 64 {
            let live: HashSet<&SecretKey> = watched.iter().map(|(_, k)| k).collect();
            self.latest.retain(|k, _| live.contains(k));
        }
        Ok(accepted)
    }

    fn remember(&mut self, id: &str) {
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
    }
}

/// How rotations are detected, which sets the refresh interval of DsoSecrets that set none:
/// by the periodic check alone (`spec.refresh.interval`'s default, 5m), or by events with a
/// longer periodic check as fallback — only while the queue can be read.
#[derive(Clone, Debug, Default)]
pub struct Detection(Option<Arc<EventsState>>);

#[derive(Debug)]
struct EventsState {
    fallback: Duration,
    queue_up: AtomicBool,
}

impl Detection {
    /// Events from a queue, with `fallback` as the default interval while it is readable.
    pub fn with_events(fallback: Duration) -> Self {
        Detection(Some(Arc::new(EventsState {
            fallback,
            queue_up: AtomicBool::new(false),
        })))
    }

    /// Records whether the queue can be read; true when that changed.
    pub fn set_queue_up(&self, up: bool) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.queue_up.swap(up, Ordering::Relaxed) != up)
    }

    /// True when events are configured and the queue was readable at the last attempt.
    pub fn queue_up(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.queue_up.load(Ordering::Relaxed))
    }

    /// How often a DsoSecret is checked: its own `refresh.interval` when set; else the events
    /// fallback while the queue is readable; else the default.
    pub fn interval(&self, spec: &DsoSecretSpec) -> Duration {
        let explicit = spec
            .refresh
            .as_ref()
            .and_then(|r| r.interval.as_deref())
            .is_some();
        match &self.0 {
            Some(s) if !explicit && s.queue_up.load(Ordering::Relaxed) => s.fallback,
            _ => dso_api::validate::interval(spec),
        }
    }
}

#[cfg(test)]
mod tests;
