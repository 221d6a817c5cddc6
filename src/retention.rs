//! The retention sweeper: the background task that enforces each
//! product's `history.keep`, `history.max_age` and `retention.expire_after`
//! through [`Store::sweep_retention`], and the figures it leaves in
//! `/metrics`.
//!
//! Work is bounded: each wake (`store.retention_interval`) visits at most
//! `store.retention_budget` entities per product and resumes after the last
//! one on the next wake, so a product with millions of entities never
//! stalls ingest. Every sweep call is counted with the entities it visited,
//! which makes the bound observable (`visited ≤ sweeps × budget`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::product::ProductSet;
use crate::record::Timestamp;
use crate::store::{RetentionSpec, Store, SweepReport};

/// How often and how much the sweeper works.
#[derive(Clone, Copy, Debug)]
pub struct SweepSchedule {
    pub interval: Duration,
    /// Entities per product per wake (0 counts as 1).
    pub budget: usize,
}

/// Totals of one product since start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProductRetention {
    pub sweeps: u64,
    pub entities_visited: u64,
    pub history_events_removed: u64,
    pub entities_expired: u64,
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Figures {
    products: BTreeMap<String, ProductRetention>,
    /// Wall time of the last wake (all products), and when it ended.
    last_duration: Option<Duration>,
    last_run: Option<Timestamp>,
}

/// One counter family of `/metrics`: name, help, and its value per product.
type Family = (&'static str, &'static str, fn(&ProductRetention) -> u64);

/// What the sweeper did, shared with `/metrics`. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RetentionMetrics {
    inner: Arc<Mutex<Figures>>,
}

impl RetentionMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Figures> {
        // Plain numbers: still usable after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn swept(&self, product: &str, report: &SweepReport) {
        let mut figures = self.lock();
        let totals = figures.products.entry(product.to_string()).or_default();
        totals.sweeps += 1;
        totals.entities_visited += report.entities_visited;
        totals.history_events_removed += report.events_removed;
        totals.entities_expired += report.entities_expired;
        totals.errors += report.errors.len() as u64;
    }

    fn failed(&self, product: &str) {
        let mut figures = self.lock();
        figures
            .products
            .entry(product.to_string())
            .or_default()
            .errors += 1;
    }

    fn woke(&self, took: Duration) {
        let mut figures = self.lock();
        figures.last_duration = Some(took);
        figures.last_run = Some(Timestamp::now());
    }

    /// A product's totals (tests, catalog).
    pub fn product(&self, product: &str) -> ProductRetention {
        self.lock()
            .products
            .get(product)
            .cloned()
            .unwrap_or_default()
    }

    /// The retention families of `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        let figures = self.lock();
        let families: [Family; 5] = [
            (
                "meshlet_retention_sweeps_total",
                "Retention sweep steps run (one per product per wake).",
                |p| p.sweeps,
            ),
            (
                "meshlet_retention_entities_visited_total",
                "Entities the retention sweeper examined (at most store.retention_budget per step).",
                |p| p.entities_visited,
            ),
            (
                "meshlet_retention_history_events_removed_total",
                "History events removed by history.keep, history.max_age or expiry.",
                |p| p.history_events_removed,
            ),
            (
                "meshlet_retention_entities_expired_total",
                "Entities removed by retention.expire_after.",
                |p| p.entities_expired,
            ),
            (
                "meshlet_retention_errors_total",
                "Retention steps that failed, or entities skipped as corrupt.",
                |p| p.errors,
            ),
        ];
        for (name, help, value) in families {
            let mut f = crate::telemetry::expose::counter_family(enc, name, help)?;
            for (product, totals) in &figures.products {
                f.sample(&[("product", product.as_str())], value(totals))?;
            }
        }
        if let (Some(took), Some(at)) = (figures.last_duration, figures.last_run) {
            crate::telemetry::expose::gauge(
                enc,
                "meshlet_retention_sweep_duration_seconds",
                "Wall time of the last retention wake (all products).",
                took.as_secs_f64(),
            )?;
            crate::telemetry::expose::gauge(
                enc,
                "meshlet_retention_last_run_timestamp_seconds",
                "When the last retention wake ended (Unix time).",
                at.as_micros() as f64 / 1e6,
            )?;
        }
        Ok(())
    }
}

/// Sweeps until `shutdown`, a bounded slice per product per wake, resuming
/// where the previous wake stopped. `products` is asked at every wake, so
/// the sweep follows definition reloads (a product's cursor is kept by
/// name).
pub async fn sweeper(
    store: Store,
    products: impl Fn() -> Arc<ProductSet>,
    schedule: SweepSchedule,
    metrics: RetentionMetrics,
    shutdown: CancellationToken,
) {
    let mut cursors: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut tick = tokio::time::interval(schedule.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let mut swept_any = false;
        let products = products();
        cursors.retain(|name, _| products.get(name).is_some());
        for product in products.iter() {
            let cursor = cursors.entry(product.name.clone()).or_default();
            let spec = RetentionSpec {
                history_keep: product.history.keep,
                history_max_age: product.history.max_age,
                expire_after: product.retention.expire_after,
            };
            if spec.history_keep.is_none()
                && spec.history_max_age.is_none()
                && spec.expire_after.is_none()
            {
                continue;
            }
            swept_any = true;
            let store = store.clone();
            let name = product.name.clone();
            let from = cursor.take();
            let budget = schedule.budget;
            let swept = tokio::task::spawn_blocking(move || {
                store.sweep_retention(&name, &spec, Timestamp::now(), from.as_deref(), budget)
            })
            .await;
            match swept {
                Ok(Ok(report)) => {
                    if report.events_removed > 0 || report.entities_expired > 0 {
                        info!(
                            product = %product.name,
                            events_removed = report.events_removed,
                            entities_expired = report.entities_expired,
                            "retention sweep"
                        );
                    }
                    metrics.swept(&product.name, &report);
                    *cursor = report.next_cursor;
                }
                Ok(Err(err)) => {
                    metrics.failed(&product.name);
                    warn!(product = %product.name, error = %err, "retention sweep failed")
                }
                // The runtime shutting down cancels a blocking task not
                // yet run: not a failure, and nothing more to sweep.
                Err(join) if join.is_cancelled() => {
                    tracing::debug!(product = %product.name, "retention sweep cancelled by shutdown");
                    return;
                }
                Err(join) => {
                    metrics.failed(&product.name);
                    warn!(product = %product.name, error = %join, "retention sweep panicked")
                }
            }
        }
        if swept_any {
            metrics.woke(started.elapsed());
        }
    }
}
