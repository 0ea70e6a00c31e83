//! One version cache shared by every DsoSecret: two DsoSecrets naming the same secret cost one
//! AWS lookup per refresh interval, however many DsoSecrets or pods there are.
//!
//! Two lookup modes:
//! - [`LookupMode::Describe`]: one `DescribeSecret` per distinct secret per interval.
//! - [`LookupMode::Sweep`]: one `ListSecrets` pass (100 secrets a page) refreshes every entry of
//!   the region at once; only secrets the list cannot tell about (absent, partial ARN, denied)
//!   are described. Cost per interval: pages of the account's secret list, plus misses.
//!
//! Concurrent callers of one secret (or one sweep) wait for a single call (single flight).
//! Transient failures are never cached; permanent ones are, for the caller's interval.
//! Entries of secrets no DsoSecret names any more are dropped by [`VersionCache::forget_unused`]
//! (run on a timer), with the AWS clients of regions unused for a while.

use crate::aws::Aws;
use crate::domain::{Lookup, SecretKey};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;

/// How stale entries are refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LookupMode {
    /// `DescribeSecret` per distinct secret.
    Describe,
    /// `ListSecrets` pages for the whole region, `DescribeSecret` only for what a list misses.
    Sweep,
}

#[derive(Clone)]
struct Entry {
    fetched: Instant,
    result: Lookup,
}

/// What is cached about one secret, and when an event last said it changed: an answer from a
/// request started before that (a `ListSecrets` sweep in flight) is never stored.
#[derive(Default)]
struct Cached {
    entry: Option<Entry>,
    forgotten: Option<Instant>,
}

impl Cached {
    fn store(&mut self, entry: Entry) {
        if self.forgotten.is_none_or(|f| entry.fetched >= f) {
            self.entry = Some(entry);
        }
    }
}

type Slot = Arc<AsyncMutex<Cached>>;

/// The shared cache.
pub struct VersionCache {
    aws: Arc<Aws>,
    mode: LookupMode,
    slots: Mutex<HashMap<SecretKey, Slot>>,
    sweeps: Mutex<HashMap<String, Arc<AsyncMutex<Option<Instant>>>>>,
}

impl VersionCache {
    pub fn new(aws: Arc<Aws>, mode: LookupMode) -> Self {
        VersionCache {
            aws,
            mode,
            slots: Mutex::new(HashMap::new()),
            sweeps: Mutex::new(HashMap::new()),
        }
    }

    /// The region of secrets whose DsoSecret and id name none.
    pub fn default_region(&self) -> String {
        self.aws.default_region()
    }

    fn slot(&self, key: &SecretKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    /// Drops the entries of secrets not in `live` (a sweep fills entries for every secret of a
    /// region; only those named by a DsoSecret are worth keeping), the sweep state of regions
    /// no live secret is in, and AWS clients unused for `client_idle`. Returns how many entries
    /// and clients were dropped.
    pub fn forget_unused(
        &self,
        live: &HashSet<SecretKey>,
        client_idle: Duration,
    ) -> (usize, usize) {
        let entries = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let before = slots.len();
            slots.retain(|k, _| live.contains(k));
            before - slots.len()
        };
        let regions: HashSet<&str> = live.iter().map(|k| k.region.as_str()).collect();
        self.sweeps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r, _| regions.contains(r.as_str()));
        let clients = self.aws.forget_idle(Instant::now(), client_idle);
        (entries, clients)
    }

    /// How many secrets the cache holds an entry (or a slot) for.
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The metadata of `key`, fetched at or after `not_before` (`None`: any cached answer).
    pub async fn get(&self, key: &SecretKey, not_before: Option<Instant>) -> Lookup {
        let fresh = |e: &Option<Entry>| match (e, not_before) {
            (Some(e), Some(t)) if e.fetched >= t => Some(e.result.clone()),
            (Some(e), None) => Some(e.result.clone()),
            _ => None,
        };
        let slot = self.slot(key);
        if self.mode == LookupMode::Sweep {
            if let Some(r) = fresh(&slot.lock().await.entry) {
                return r;
            }
            self.sweep(&key.region, not_before).await;
        }
        let mut guard = slot.lock().await;
        if let Some(r) = fresh(&guard.entry) {
            return r;
        }
        let started = Instant::now();
        let result = self.aws.describe(&key.region, &key.secret_id).await;
        if !matches!(&result, Err(p) if p.is_transient()) {
            guard.store(Entry {
                fetched: started,
                result: result.clone(),
            });
        }
        result
    }

    /// Drops what is cached about `key` (an event said it changed): the next lookup asks AWS.
    /// Waits for a lookup in flight, so its answer (older than the change) is dropped too; a
    /// sweep in flight, started before now, cannot store its answer for `key` afterwards.
    pub async fn forget(&self, key: &SecretKey) {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        guard.entry = None;
        guard.forgotten = Some(Instant::now());
    }

    /// One `ListSecrets` pass over `region`, unless one started at or after `not_before`.
    async fn sweep(&self, region: &str, not_before: Option<Instant>) {
        let lock = {
            let mut sweeps = self.sweeps.lock().unwrap_or_else(|p| p.into_inner());
            sweeps.entry(region.to_string()).or_default().clone()
        };
        let mut last = lock.lock().await;
        if let Some(last) = *last
            && not_before.is_none_or(|t| last >= t)
        {
            return;
        }
        let started = Instant::now();
        // A failed pass counts too: misses fall back to DescribeSecret until the next interval.
        *last = Some(started);
        match self.aws.list_all(region).await {
            Ok(list) => {
                for meta in list {
                    for id in [meta.name.clone(), meta.arn.clone()].into_iter().flatten() {
                        let key = SecretKey {
                            region: region.to_string(),
                            secret_id: id,
                        };
                        self.slot(&key).lock().await.store(Entry {
                            fetched: started,
                            result: Ok(meta.clone()),
                        });
                    }
                }
            }
            Err(problem) => {
                tracing::warn!(region, %problem, "ListSecrets failed; describing secrets one by one");
            }
        }
    }
}
