//! What resolvers need from the running node, shared by every schema
//! generation (a reload swaps the schema, not these): the ingestor (store,
//! writer, counters), usage counters, freshness, and the schema status the
//! catalog reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::sync::CancellationToken;

use super::metrics::GraphqlMetrics;
use crate::ingest::Ingestor;
use crate::record::Timestamp;
use crate::store::Store;

/// Everything resolvers reach, handed to each schema as its data.
#[derive(Clone)]
pub(crate) struct Runtime {
    pub ingestor: Ingestor,
    /// The node secret `hash` masks are keyed with.
    pub secret: crate::policy::masking::MaskSecret,
    pub usage: Arc<Usage>,
    pub freshness: Arc<Freshness>,
    pub status: Arc<SchemaStatus>,
    pub metrics: Arc<GraphqlMetrics>,
    /// Per-identity budgets and the response byte cap (`[api]`).
    pub budgets: Arc<super::budget::Budgets>,
    /// Cancelled at shutdown: open subscriptions end.
    pub shutdown: CancellationToken,
    /// Upstream sync status, for `syncStatus` and `nodes`.
    pub sync: Option<Arc<crate::sync::SyncHandle>>,
}

impl Runtime {
    pub(crate) fn store(&self) -> &Store {
        self.ingestor.store()
    }
}

/// Per-product API usage since the node started.
#[derive(Default)]
pub(crate) struct Usage {
    /// Read on every request, written once per product: a read lock (see
    /// `PreparedLookups::plans` for why not a mutex).
    products: RwLock<HashMap<String, Arc<UsageCounters>>>,
}

#[derive(Default)]
pub(crate) struct UsageCounters {
    /// Lookups and connections served.
    pub queries: AtomicU64,
    /// Subscriptions open now.
    pub subscriptions: AtomicI64,
}

impl Usage {
    pub(crate) fn of(&self, product: &str) -> Arc<UsageCounters> {
        if let Some(counters) = self
            .products
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(product)
        {
            return counters.clone();
        }
        let mut products = self.products.write().unwrap_or_else(|p| p.into_inner());
        products.entry(product.to_string()).or_default().clone()
    }

    pub(crate) fn query(&self, product: &str) {
        self.of(product).queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a subscription as open until the guard drops.
    pub(crate) fn subscribe(&self, product: &str) -> SubscriptionGuard {
        let counters = self.of(product);
        counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        SubscriptionGuard(counters)
    }

    /// Open subscriptions over all products.
    pub(crate) fn open_subscriptions(&self) -> i64 {
        let products = self.products.read().unwrap_or_else(|p| p.into_inner());
        products
            .values()
            .map(|c| c.subscriptions.load(Ordering::Relaxed))
            .sum()
    }
}

/// Keeps a subscription counted while it lives.
pub(crate) struct SubscriptionGuard(Arc<UsageCounters>);

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When each product last got an update (the newest `last_seen` of its
/// instances): found once by a scan on first request, then kept current
/// from the change feed (see [`super::watch_freshness`]).
#[derive(Default)]
pub(crate) struct Freshness {
    products: Mutex<HashMap<String, Known>>,
}

#[derive(Clone, Copy, Default)]
struct Known {
    last: Option<Timestamp>,
    /// The store was scanned once: `last` is complete.
    scanned: bool,
}

impl Freshness {
    /// Notes an update seen on the change feed.
    pub(crate) fn saw(&self, product: &str, at: Timestamp) {
        let mut products = self.products.lock().unwrap_or_else(|p| p.into_inner());
        let known = products.entry(product.to_string()).or_default();
        known.last = known.last.max(Some(at));
    }

    /// Forgets every scan (the feed lagged: updates may have been missed).
    pub(crate) fn rescan_all(&self) {
        let mut products = self.products.lock().unwrap_or_else(|p| p.into_inner());
        for known in products.values_mut() {
            known.scanned = false;
        }
    }

    /// The newest update of `product`, scanning the store the first time
    /// (blocking; at most `budget` instances).
    pub(crate) fn last_update_blocking(
        &self,
        store: &Store,
        product: &str,
        budget: usize,
    ) -> Option<Timestamp> {
        let known = {
            let products = self.products.lock().unwrap_or_else(|p| p.into_inner());
            products.get(product).copied().unwrap_or_default()
        };
        if known.scanned {
            return known.last;
        }
        let mut newest: Option<Timestamp> = None;
        let mut after: Option<String> = None;
        let mut visited = 0usize;
        loop {
            let page = match store.scan(product, after.as_deref(), 1_024) {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(product, error = %err, "cannot scan for freshness");
                    return known.last;
                }
            };
            visited += page.instances.len();
            newest = newest.max(page.instances.iter().map(|i| i.last_seen).max());
            match page.next_after {
                Some(next) if visited < budget => after = Some(next),
                _ => break,
            }
        }
        let mut products = self.products.lock().unwrap_or_else(|p| p.into_inner());
        let entry = products.entry(product.to_string()).or_default();
        entry.last = entry.last.max(newest);
        entry.scanned = true;
        entry.last
    }
}

/// The schema's state as the catalog and `/readyz` report it.
#[derive(Default)]
pub(crate) struct SchemaStatus {
    inner: RwLock<StatusData>,
}

#[derive(Clone, Default)]
pub(crate) struct StatusData {
    /// 1 for the schema built at start, +1 per successful reload.
    pub generation: u64,
    pub loaded_at: Option<Timestamp>,
    pub products: Vec<String>,
    /// Why the last reload was refused; empty when it succeeded.
    pub problems: Vec<String>,
    pub last_attempt: Option<Timestamp>,
}

impl SchemaStatus {
    pub(crate) fn get(&self) -> StatusData {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn loaded(&self, products: Vec<String>) {
        let mut data = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        data.generation += 1;
        data.loaded_at = Some(now);
        data.last_attempt = Some(now);
        data.products = products;
        data.problems.clear();
    }

    pub(crate) fn refused(&self, problems: Vec<String>) {
        let mut data = self.inner.write().unwrap_or_else(|p| p.into_inner());
        data.last_attempt = Some(Timestamp::now());
        data.problems = problems;
    }
}
