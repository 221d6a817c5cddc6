//! One sender per upstream: reads the outbox in priority and sequence
//! order, sends batches, deletes them only once acknowledged, backs off
//! with jitter while the upstream is away, and keeps the outbox within its
//! disk budget.
//!
//! An envelope the upstream cannot take in one message
//! ([`TransportError::TooLarge`], NATS's `max_payload`) is sent again at
//! once with half the records, down to one (counted in
//! `meshlet_sync_split_envelopes_total`); the limit doubles back after
//! each acknowledged envelope.
//!
//! A batch is sent when it is full (`batch_size`) or its oldest entry is
//! `batch_age` old; both are the smallest over the sync rules that name
//! this upstream. One envelope holds one lane and one product (the longest
//! run from the head), so the receiver's per-(origin, link, lane) high-water mark
//! sees ascending sequence numbers. An upstream without a `url` is parked:
//! its outbox fills (within the budget) and nothing is sent.
//!
//! An upstream that answers "not yet" ([`TransportError::Deferred`]: an
//! aggregator that does not know the product) has acknowledged nothing:
//! the batch stays in the outbox, the refusal is counted
//! (`meshlet_sync_refusals_total`) and shown in `syncStatus { waiting }`,
//! and that product is passed over (its own back-off, `retry_min` doubling
//! to `retry_max`) while the other products go on; then it is offered
//! again, from its oldest entry, until the upstream takes it. Receivers
//! keep their marks per product, so what is sent of each product per lane
//! is still in ascending sequence order.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::envelope::Envelope;
use super::http::HttpTransport;
use super::metrics::SyncMetrics;
use super::mqtt::MqttTransport;
#[cfg(feature = "nats")]
use super::nats::NatsTransport;
use super::TransportError;
use crate::config::{SyncSettings, UpstreamConfig};
use crate::product::ProductSet;
use crate::record::Timestamp;
use crate::store::{PendingEntry, Store};

/// How often an idle sender looks at its outbox.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// How often a parked upstream's budget is checked.
const PARKED_TICK: Duration = Duration::from_secs(1);
const ZSTD_LEVEL: i32 = 3;

pub(crate) enum Transport {
    Http(HttpTransport),
    Mqtt(Box<MqttTransport>),
    #[cfg(feature = "nats")]
    Nats(Box<NatsTransport>),
}

impl Transport {
    pub(crate) fn new(
        upstream: &str,
        config: &UpstreamConfig,
        origin: &str,
    ) -> Result<Option<Transport>, TransportError> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        #[cfg(feature = "nats")]
        if super::nats::is_nats_url(url) {
            return Ok(Some(Transport::Nats(Box::new(NatsTransport::new(
                upstream, url, config, origin,
            )?))));
        }
        #[cfg(not(feature = "nats"))]
        if super::nats::is_nats_url(url) {
            return Err(super::nats::unavailable(url));
        }
        if url.starts_with("mqtt://") || url.starts_with("mqtts://") {
            return Ok(Some(Transport::Mqtt(Box::new(MqttTransport::new(
                upstream, url, config, origin,
            )?))));
        }
        Ok(Some(Transport::Http(HttpTransport::new(url, config)?)))
    }

    async fn send(
        &mut self,
        #[cfg_attr(not(feature = "nats"), allow(unused_variables))] envelope: &Envelope,
        product: &str,
        body: Vec<u8>,
    ) -> Result<(), TransportError> {
        match self {
            Transport::Http(t) => t.send(body).await,
            Transport::Mqtt(t) => t.send(product, body).await,
            #[cfg(feature = "nats")]
            Transport::Nats(t) if t.publishes_reference() => t.put_reference(envelope).await,
            #[cfg(feature = "nats")]
            Transport::Nats(t) => {
                let id = super::nats::message_id(
                    &envelope.origin,
                    &envelope.link,
                    envelope.lane,
                    envelope.first_seq,
                    envelope.last_seq,
                );
                t.send(product, id, body).await
            }
        }
    }
}

/// A product the upstream refused for now, and when to offer it again.
pub(crate) struct Deferral {
    until: Instant,
    backoff: Duration,
    /// The upstream's reason, as it said it.
    detail: String,
}

pub(crate) struct Sender {
    pub upstream: String,
    pub origin: String,
    pub store: Store,
    pub transport: Option<Transport>,
    pub settings: SyncSettings,
    pub max_bytes: u64,
    pub batch_size: usize,
    pub batch_age: Duration,
    pub metrics: Arc<SyncMetrics>,
    /// Products the upstream cannot take yet (`unknown_product`): passed
    /// over by reads until their own back-off ends. Bounded by the
    /// products this node syncs.
    pub deferred: BTreeMap<String, Deferral>,
    /// Records per envelope while the upstream refuses larger messages
    /// ([`TransportError::TooLarge`]): halved on each refusal, doubled
    /// back after each acknowledged envelope until `batch_size`.
    pub max_records: Option<usize>,
}

/// The batch timing of an upstream: the smallest over its rules.
pub(crate) fn batch_timing(products: &ProductSet, upstream: &str) -> (usize, Duration) {
    let rules = products
        .iter()
        .flat_map(|p| p.sync.iter())
        .filter(|r| r.to == upstream);
    let mut size = None::<usize>;
    let mut age = None::<Duration>;
    for rule in rules {
        size = Some(size.map_or(rule.when.batch_size, |s| s.min(rule.when.batch_size)));
        age = Some(age.map_or(rule.when.batch_age, |a| a.min(rule.when.batch_age)));
    }
    (size.unwrap_or(500), age.unwrap_or(Duration::from_secs(1)))
}

/// The head run of one product (entries are already one lane).
fn first_run(mut entries: Vec<PendingEntry>) -> Vec<PendingEntry> {
    let Some(product) = entries.first().map(|e| e.entry.item.product.clone()) else {
        return entries;
    };
    let end = entries
        .iter()
        .position(|e| e.entry.item.product != product)
        .unwrap_or(entries.len());
    entries.truncate(end);
    entries
}

/// `base` scaled by a random factor in [0.5, 1.5): senders of many edges
/// that lost the same upstream do not come back in lockstep.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

impl Sender {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = self.settings.retry_min;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            self.enforce_budget().await;
            let wait = match self.step().await {
                Ok(true) => {
                    backoff = self.settings.retry_min;
                    continue;
                }
                Ok(false) if self.transport.is_none() => PARKED_TICK,
                Ok(false) => IDLE_TICK,
                Err(e) => {
                    self.metrics.send_failed(&self.upstream, &e.to_string());
                    let wait = jittered(backoff);
                    backoff = (backoff * 2).min(self.settings.retry_max);
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends one batch if one is due. `Ok(true)`: sent and acknowledged.
    async fn step(&mut self) -> Result<bool, TransportError> {
        let Some(transport) = self.transport.as_mut() else {
            return Ok(false);
        };
        let store = self.store.clone();
        let upstream = self.upstream.clone();
        let max = self.batch_size;
        let now = Instant::now();
        let except: HashSet<String> = self
            .deferred
            .iter()
            .filter(|(_, d)| d.until > now)
            .map(|(product, _)| product.clone())
            .collect();
        let entries = tokio::task::spawn_blocking(move || {
            store.outbox_read_except(&upstream, max, Timestamp::now(), &except)
        })
        .await
        .map_err(|e| TransportError::Store(e.to_string()))?
        .map_err(|e| TransportError::Store(e.to_string()))?;
        let Some(oldest) = entries.iter().map(|e| e.entry.enqueued_at).min() else {
            return Ok(false);
        };
        let full = entries.len() >= self.batch_size;
        if !full && Timestamp::now() < oldest.saturating_add(self.batch_age) {
            return Ok(false);
        }
        let mut entries = first_run(entries);
        if let Some(limit) = self.max_records {
            entries.truncate(limit.max(1));
        }
        let pending = self
            .store
            .outbox_stats(&self.upstream)
            .map(|s| s.pending.saturating_sub(entries.len() as u64))
            .unwrap_or(0);
        let Some(envelope) =
            Envelope::from_entries(&self.origin, &self.upstream, pending, &entries)
        else {
            return Ok(false);
        };
        let product = entries
            .first()
            .map(|e| e.entry.item.product.clone())
            .unwrap_or_default();
        let body = envelope
            .encode(ZSTD_LEVEL)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let bytes = body.len();
        debug!(upstream = %self.upstream, records = entries.len(), bytes, first_seq = envelope.first_seq, last_seq = envelope.last_seq, "sending sync batch");
        let sent = tokio::time::timeout(
            self.settings.send_timeout,
            transport.send(&envelope, &product, body),
        )
        .await
        .map_err(|_| TransportError::Unreachable("send timed out".to_string()))?;
        if let Err(TransportError::Deferred { reason, detail }) = sent {
            // Refused, not acknowledged: the entries stay; this product is
            // passed over until its back-off ends, the others go on.
            self.metrics.deferred(&self.upstream, reason, &detail);
            let backoff = self
                .deferred
                .get(&product)
                .map_or(self.settings.retry_min, |d| {
                    (d.backoff * 2).min(self.settings.retry_max)
                });
            let detail = format!("product `{product}` refused ({reason}): {detail}");
            self.deferred.insert(
                product,
                Deferral {
                    until: Instant::now() + jittered(backoff),
                    backoff,
                    detail,
                },
            );
            self.show_waiting();
            return Ok(true);
        }
        if let Err(TransportError::TooLarge(detail)) = &sent {
            if entries.len() > 1 {
                // Nothing was sent: the same entries go again, fewer at a time.
                let limit = entries.len() / 2;
                self.metrics
                    .split(&self.upstream, entries.len(), limit, detail);
                self.max_records = Some(limit);
                return Ok(true);
            }
        }
        sent?;
        self.max_records = self
            .max_records
            .map(|m| m.saturating_mul(2))
            .filter(|m| *m < self.batch_size);
        if self.deferred.remove(&product).is_some() {
            self.show_waiting();
        }
        let keys: Vec<Vec<u8>> = entries.into_iter().map(|e| e.key).collect();
        let records = keys.len();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.outbox_ack(&keys))
            .await
            .map_err(|e| TransportError::Store(e.to_string()))?
            .map_err(|e| TransportError::Store(e.to_string()))?;
        self.metrics.acked(&self.upstream, records, bytes);
        Ok(true)
    }

    /// Tells the metrics (and `syncStatus`) which products wait, and why.
    fn show_waiting(&self) {
        let waiting = (!self.deferred.is_empty()).then(|| {
            self.deferred
                .values()
                .map(|d| d.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        });
        self.metrics.waiting(&self.upstream, waiting);
    }

    async fn enforce_budget(&mut self) {
        let store = self.store.clone();
        let upstream = self.upstream.clone();
        let max = self.max_bytes;
        let report =
            tokio::task::spawn_blocking(move || store.outbox_enforce_budget(&upstream, max)).await;
        match report {
            Ok(Ok(report)) => {
                self.metrics
                    .dropped(&self.upstream, "coalesced", report.coalesced);
                for (priority, count) in report.dropped {
                    let reason = match priority {
                        0 => "budget_low",
                        1 => "budget_normal",
                        _ => "budget_high",
                    };
                    self.metrics.dropped(&self.upstream, reason, count);
                }
            }
            Ok(Err(e)) => {
                warn!(upstream = %self.upstream, error = %e, "outbox budget check failed")
            }
            // The runtime shutting down (a node that stops, or fails to
            // start) cancels a blocking task not yet run: no panic.
            Err(e) if e.is_cancelled() => {
                tracing::debug!(upstream = %self.upstream, "outbox budget check cancelled by shutdown")
            }
            Err(e) => warn!(upstream = %self.upstream, error = %e, "outbox budget check panicked"),
        }
    }
}
