//! Ingestion: sources → pipeline → one batching writer → store.
//!
//! Every source (the embedded broker, the external broker client, HTTP
//! push, file tails) hands its payloads to the [`Ingestor`], which routes
//! them to products, runs each product's pipeline (decode, map, coerce,
//! validate), sends what must be written to the store's [`writer`](crate::store::writer) and returns a
//! pending result that resolves once the records are durable. Sources
//! acknowledge their senders (MQTT PUBACK, HTTP 2xx, the file offset) only
//! then, so a kill at any moment loses nothing acknowledged.
//!
//! Invalid records follow the product's `quality.on_invalid`: `reject`
//! (counted, logged, acknowledged: resending would not make them valid),
//! `quarantine` (raw payload and every reason stored in the same step as
//! the valid records of the same payload, replayable later), `drop_field`
//! (the pipeline removes bad optional fields; records it cannot repair are
//! rejected).

pub mod metrics;
pub mod priority;
pub mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::config::IngestSettings;
use crate::pipeline::{self, Input, Invalid, Limits, Plan, Processed, SourceShape};
use crate::product::{OnInvalid, PayloadFormat, Product, ProductSet};
use crate::record::{Origin, Timestamp};
use crate::store::{IngestBatch, IngestLimits, IngestRecord, QuarantineItem, Store};

pub use crate::store::{ChangeEvent, PendingWrite, WriteError, WriteJob, Writer, Written};
pub use metrics::{IngestMetrics, KindMetrics, Outcome, SourceCounters, SourceFigures};

/// Quarantined payloads larger than this keep only their first bytes (the
/// reason says so): a quarantine of oversized payloads must not fill the
/// disk.
const QUARANTINE_PAYLOAD_MAX: usize = 64 * 1024;

/// How often the same source may log an invalid record at warn level; the
/// rest go to debug and to the counters.
const INVALID_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The shared entry point of every source. Cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
}

struct Inner {
    /// The definitions in force; swapped whole by [`Ingestor::follow`].
    current: std::sync::RwLock<Arc<Current>>,
    /// Counts reloads, so sources with standing subscriptions (the
    /// external broker client) can follow them.
    reloads: tokio::sync::watch::Sender<u64>,
    /// Called by [`Ingestor::follow`] with the new definitions before any
    /// payload is routed on them: source kinds that keep their own routing
    /// tables (MQTT topics, Sparkplug groups) rebuild them here, so ingest
    /// never names a source kind.
    on_follow: std::sync::RwLock<Vec<FollowHook>>,
    writer: Writer,
    metrics: Arc<IngestMetrics>,
    limits: Limits,
    dedupe_capacity: u64,
    store: Store,
    last_warned: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// One generation of definitions as ingestion sees them. A payload is
/// run through one generation from routing to queueing; records queued
/// under an older one are written as they were accepted.
struct Current {
    products: Arc<ProductSet>,
}

/// A source kind's reaction to new definitions (see [`Ingestor::on_follow`]).
pub type FollowHook = Box<dyn Fn(&Arc<ProductSet>, &IngestMetrics) + Send + Sync>;

/// An NDJSON content type, as HTTP pushes name it (MQTT 5 publishes carry
/// one in their content type property).
pub(crate) fn is_ndjson_content_type(content_type: &str) -> bool {
    let content_type = content_type.to_ascii_lowercase();
    content_type.contains("ndjson")
        || content_type.contains("jsonl")
        || content_type.contains("json-seq")
}

/// What a submitted payload will come to: resolves once everything it
/// produced is durable.
#[must_use = "a source acknowledges only after the pending result resolved"]
pub struct PendingMessage {
    writes: Vec<(PendingWrite, Arc<SourceCounters>, Vec<Timestamp>)>,
}

/// A submitted payload's figures, once durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub accepted: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    pub retained_known: usize,
    /// An idempotent push whose key was already applied: nothing was
    /// written, and this is what the first request was answered.
    pub resend: Option<crate::store::Resend>,
}

impl PendingMessage {
    pub(crate) fn empty() -> PendingMessage {
        PendingMessage { writes: Vec::new() }
    }

    /// Adds one write [`Ingestor::queue`] queued.
    pub(crate) fn push(&mut self, write: (PendingWrite, Arc<SourceCounters>, Vec<Timestamp>)) {
        self.writes.push(write);
    }

    /// The pending result of one write [`Ingestor::queue`] queued.
    pub(crate) fn of(write: (PendingWrite, Arc<SourceCounters>, Vec<Timestamp>)) -> PendingMessage {
        PendingMessage {
            writes: vec![write],
        }
    }

    /// Waits until durable; an error means the sender must not be
    /// acknowledged (it will redeliver).
    pub async fn wait(self) -> Result<Summary, WriteError> {
        let mut summary = Summary::default();
        let mut failure = None;
        for (pending, counters, times) in self.writes {
            match pending.wait().await {
                Ok(written) => {
                    let accepted = written.accepted;
                    counters.count(Outcome::Accepted, accepted as u64);
                    counters.count(Outcome::Duplicate, written.outcome.duplicates as u64);
                    counters.records_quarantined(written.outcome.quarantined);
                    counters.count(Outcome::RetainedKnown, written.retained_known.len() as u64);
                    if let Some(newest) = times.iter().max() {
                        counters.event_time(*newest);
                    }
                    summary.accepted += accepted;
                    summary.duplicates += written.outcome.duplicates;
                    summary.quarantined += written.outcome.quarantined;
                    summary.retained_known += written.retained_known.len();
                    if written.outcome.resend.is_some() {
                        summary.resend = written.outcome.resend;
                    }
                }
                Err(err) => failure = Some(err),
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(summary),
        }
    }
}

/// A payload run through one product's pipeline, ready to write.
pub struct Prepared {
    pub batch: IngestBatch,
    /// Invalid records the policy rejects (not written).
    pub rejected: Vec<Invalid>,
    /// Event times of the accepted records, for the freshness counters.
    pub event_times: Vec<Timestamp>,
}

/// Where a payload came from, as quarantine keeps it for replay.
pub struct Provenance<'a> {
    pub source_id: &'a str,
    pub topic: Option<&'a str>,
    pub captures: &'a [(String, String)],
    pub arrival: Timestamp,
    pub origin: &'a Origin,
    pub redelivery: bool,
}

impl Ingestor {
    /// Builds the ingestor and starts its writer (tracked by `tasks`, run
    /// on `runtime`: the ingest runtime of [`priority`]).
    pub fn new(
        products: Arc<ProductSet>,
        store: Store,
        settings: &IngestSettings,
        tasks: &tokio_util::task::TaskTracker,
        runtime: &priority::IngestRuntime,
    ) -> Ingestor {
        let metrics = Arc::new(IngestMetrics::default());
        metrics.cpu_nice.store(
            u64::from(runtime.nice()),
            std::sync::atomic::Ordering::Relaxed,
        );
        register_sources(&products, &metrics);
        let writer = Writer::spawn(
            store.clone(),
            metrics.clone(),
            settings.queue_depth,
            settings.batch_max_records,
            tasks,
            runtime.handle(),
        );
        Ingestor {
            inner: Arc::new(Inner {
                current: std::sync::RwLock::new(Arc::new(Current {
                    products: products.clone(),
                })),
                reloads: tokio::sync::watch::channel(0).0,
                on_follow: Default::default(),
                writer,
                metrics,
                limits: Limits {
                    max_payload_bytes: settings.max_payload_bytes,
                    ..Limits::default()
                },
                dedupe_capacity: settings.dedupe_capacity,
                store,
                last_warned: Default::default(),
            }),
        }
    }

    fn current(&self) -> Arc<Current> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The definitions ingestion runs on now (they follow reloads).
    pub fn products(&self) -> Arc<ProductSet> {
        self.current().products.clone()
    }

    /// Makes `products` the definitions every later payload is routed to
    /// and validated against: the routing tables of the kinds that keep
    /// one ([`Ingestor::on_follow`]: MQTT, Sparkplug), HTTP push,
    /// API writes, file tails (fields and rules; a tail's file is the one
    /// it started with), quarantine replay and aggregator apply. Payloads
    /// already queued are written as they were accepted. Sources with
    /// subscriptions learn of it through [`Ingestor::reloads`].
    pub fn follow(&self, products: Arc<ProductSet>) {
        let metrics = &self.inner.metrics;
        register_sources(&products, metrics);
        for hook in self
            .inner
            .on_follow
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            hook(&products, metrics);
        }
        let next = Arc::new(Current {
            products: products.clone(),
        });
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = next;
        self.inner.reloads.send_modify(|n| *n += 1);
    }

    /// Changes each time [`Ingestor::follow`] installed new definitions.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.reloads.subscribe()
    }

    /// Adds a hook [`Ingestor::follow`] calls with each new generation of
    /// definitions, before payloads are routed on it.
    pub fn on_follow(&self, hook: FollowHook) {
        self.inner
            .on_follow
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    pub fn metrics(&self) -> &Arc<IngestMetrics> {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The store limits of `product`'s writes.
    pub fn store_limits(&self, product: &Product) -> IngestLimits {
        IngestLimits {
            quarantine_max: product.quality.quarantine_max,
            dedupe_capacity: self.inner.dedupe_capacity,
        }
    }

    /// Runs `payload` through `product`'s pipeline for one source and
    /// builds the write batch its quality policy calls for.
    pub fn prepare(
        &self,
        product: &Product,
        shape: &SourceShape,
        payload: &[u8],
        provenance: &Provenance<'_>,
    ) -> Prepared {
        self.prepare_planned(product, &Plan::new(product, shape), payload, provenance)
    }

    /// [`Ingestor::prepare`] by the source's compiled [`Plan`], for a
    /// source that keeps one (an MQTT route): no per-message plan.
    pub fn prepare_planned(
        &self,
        product: &Product,
        plan: &Plan,
        payload: &[u8],
        provenance: &Provenance<'_>,
    ) -> Prepared {
        let input = Input {
            payload,
            captures: provenance.captures,
            arrival: provenance.arrival,
            origin: provenance.origin.clone(),
        };
        let Processed { accepted, invalid } =
            pipeline::run(product, plan, &input, &self.inner.limits);
        let mut batch = IngestBatch::default();
        let mut event_times = Vec::with_capacity(accepted.len());
        for accepted in accepted {
            event_times.push(accepted.record.event_time);
            batch.records.push(IngestRecord {
                check_duplicate: accepted.event_time_from_payload || provenance.redelivery,
                fingerprint: Some(accepted.fingerprint.0),
                record: accepted.record,
            });
        }
        let mut rejected = Vec::new();
        for bad in invalid {
            if product.quality.on_invalid == OnInvalid::Quarantine {
                batch
                    .quarantine
                    .push(quarantine_item(payload, provenance, &bad));
            } else {
                rejected.push(bad);
            }
        }
        Prepared {
            batch,
            rejected,
            event_times,
        }
    }

    /// Counts and logs rejected records (rate-limited per source): the
    /// [`SourceCounters::records_rejected`] event.
    pub fn count_rejected(
        &self,
        _product: &Product,
        _source_id: &str,
        counters: &SourceCounters,
        rejected: &[Invalid],
    ) {
        counters.records_rejected(rejected);
    }

    /// What a route does with one payload: [`Ingestor::prepare_planned`],
    /// its rejections counted, its batch [`Ingestor::queue`]d (received at
    /// the provenance's arrival). `None` when there is nothing to write.
    pub async fn queue_planned(
        &self,
        product: &Product,
        plan: &Plan,
        payload: &[u8],
        provenance: &Provenance<'_>,
        retained: bool,
        counters: &Arc<SourceCounters>,
    ) -> Option<(PendingWrite, Arc<SourceCounters>, Vec<Timestamp>)> {
        let prepared = self.prepare_planned(product, plan, payload, provenance);
        self.count_rejected(product, provenance.source_id, counters, &prepared.rejected);
        self.queue(product, prepared, retained, provenance.arrival, counters)
            .await
    }

    /// Queues a prepared batch for writing; `None` when there is nothing to
    /// write.
    pub async fn queue(
        &self,
        product: &Product,
        prepared: Prepared,
        retained: bool,
        received_at: Timestamp,
        counters: &Arc<SourceCounters>,
    ) -> Option<(PendingWrite, Arc<SourceCounters>, Vec<Timestamp>)> {
        for item in &prepared.batch.quarantine {
            if let Some(first) = item.reasons.first() {
                debug!(product = %product.name, reason = %first, "record quarantined");
            }
        }
        let batch = prepared.batch;
        if batch.records.is_empty()
            && batch.quarantine.is_empty()
            && batch.source_offset.is_none()
            && batch.resolve_quarantine.is_empty()
            && batch.idempotency.is_none()
        {
            return None;
        }
        let job = WriteJob {
            product: product.name.clone(),
            limits: self.store_limits(product),
            batch,
            retained,
            received_at,
        };
        let pending = self.inner.writer.submit(job).await;
        Some((pending, counters.clone(), prepared.event_times))
    }

    /// Whether `product`/`source` may log at warn level now (at most once
    /// per [`INVALID_LOG_INTERVAL`]).
    pub(crate) fn may_warn(&self, product: &str, source: &str) -> bool {
        let key = format!("{product}/{source}");
        let mut last = match self.inner.last_warned.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        match last.get(&key) {
            Some(at) if now.duration_since(*at) < INVALID_LOG_INTERVAL => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

/// Registers the counters of every source of `products`, so `/metrics`
/// lists them before their first message.
fn register_sources(products: &ProductSet, metrics: &IngestMetrics) {
    for product in products.iter() {
        for (index, source) in product.sources.iter().enumerate() {
            metrics.source(&product.name, &source.id(index).to_string());
        }
    }
}

/// Builds the quarantine entry of one invalid record.
fn quarantine_item(payload: &[u8], provenance: &Provenance<'_>, bad: &Invalid) -> QuarantineItem {
    let reasons: Vec<String> = bad.reasons.iter().map(|r| r.to_string()).collect();
    whole_payload_item(
        payload,
        provenance,
        reasons,
        bad.index.map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
        bad.entity.clone(),
    )
}

/// A quarantine entry for `payload` with `reasons`; a payload over
/// [`QUARANTINE_PAYLOAD_MAX`] keeps its first bytes and says so.
pub(crate) fn whole_payload_item(
    payload: &[u8],
    provenance: &Provenance<'_>,
    mut reasons: Vec<String>,
    index: Option<u32>,
    entity: Option<String>,
) -> QuarantineItem {
    let payload = match payload.get(..QUARANTINE_PAYLOAD_MAX) {
        Some(head) if payload.len() > QUARANTINE_PAYLOAD_MAX => {
            reasons.push(format!(
                "payload of {} bytes kept truncated to its first {QUARANTINE_PAYLOAD_MAX}",
                payload.len()
            ));
            head.to_vec()
        }
        _ => payload.to_vec(),
    };
    QuarantineItem {
        source: provenance.source_id.to_string(),
        topic: provenance.topic.map(str::to_string),
        captures: provenance.captures.to_vec(),
        payload,
        reasons,
        arrival: provenance.arrival,
        origin: provenance.origin.clone(),
        index,
        entity,
    }
}

/// Every reason of an invalid record on one line.
pub fn reasons_text(invalid: &Invalid) -> String {
    invalid
        .reasons
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why an HTTP push was refused before anything was written.
#[derive(Debug)]
pub enum PushRefusal {
    UnknownProduct(String),
    /// The product declares no `http` source.
    NotPushable(String),
    /// Some records are invalid; nothing of the request was written.
    Invalid(Vec<Invalid>),
}

impl Ingestor {
    /// An HTTP push: all or nothing. The caller learns synchronously which
    /// records are invalid and why, so nothing is quarantined: either every
    /// record passes and all are written (durably, before this resolves),
    /// or none is and the refusal lists every bad record.
    ///
    /// With an `idempotency` key the request is applied at most once while
    /// the key is in the product's dedupe window: the key is registered in
    /// the same store transaction as the records, and a resend resolves to
    /// a [`Summary`] whose `resend` carries the first answer.
    pub async fn submit_push(
        &self,
        product_name: &str,
        payload: &[u8],
        format: PayloadFormat,
        actor: Option<String>,
        idempotency: Option<crate::store::Idempotency>,
    ) -> Result<PendingMessage, PushRefusal> {
        let product = self.pushable_product(product_name)?;
        let Some((index, source)) = product
            .sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.settings().takes_push())
        else {
            return Err(PushRefusal::NotPushable(product_name.to_string()));
        };
        let shape = SourceShape::from_source(source).with_format(format);
        let origin = Origin {
            source: source.kind().to_string(),
            actor,
        };
        self.submit_whole(
            &product,
            &source.id(index).to_string(),
            &shape,
            payload,
            origin,
            idempotency,
        )
        .await
    }

    /// A write made through the API (GraphQL mutations): one JSON record
    /// whose keys are the field names, no mapping, event time = arrival,
    /// all or nothing like [`Ingestor::submit_push`]. Any product may be
    /// written this way (no `http` source needed: the API's own access
    /// rules decide); it is counted under the source named `origin.source`.
    pub async fn submit_api(
        &self,
        product_name: &str,
        payload: &[u8],
        origin: Origin,
    ) -> Result<PendingMessage, PushRefusal> {
        let product = self.pushable_product(product_name)?;
        let shape = SourceShape::named_fields();
        let source_id = origin.source.clone();
        self.submit_whole(&product, &source_id, &shape, payload, origin, None)
            .await
    }

    /// A record a source built itself (a Modbus poll, an OPC UA cycle): one
    /// JSON object read with the source's `shape` (the field names as keys;
    /// the event time at the source's time field, else the arrival), all
    /// or nothing like [`Ingestor::submit_push`], counted under
    /// `source_id`.
    pub async fn submit_polled(
        &self,
        product: &Arc<Product>,
        source_id: &str,
        shape: &SourceShape,
        payload: &[u8],
        origin: Origin,
    ) -> Result<PendingMessage, PushRefusal> {
        self.submit_whole(product, source_id, shape, payload, origin, None)
            .await
    }

    fn pushable_product(&self, product_name: &str) -> Result<Arc<Product>, PushRefusal> {
        self.products()
            .get(product_name)
            .cloned()
            .ok_or_else(|| PushRefusal::UnknownProduct(product_name.to_string()))
    }

    /// Runs a whole payload through the pipeline and queues it only if
    /// every record passed.
    async fn submit_whole(
        &self,
        product: &Arc<Product>,
        source_id: &str,
        shape: &SourceShape,
        payload: &[u8],
        origin: Origin,
        idempotency: Option<crate::store::Idempotency>,
    ) -> Result<PendingMessage, PushRefusal> {
        let counters = self.inner.metrics.source(&product.name, source_id);
        counters.message(payload.len());
        let arrival = Timestamp::now();
        let input = Input {
            payload,
            captures: &[],
            arrival,
            origin,
        };
        let Processed { accepted, invalid } =
            pipeline::process(product, shape, &input, &self.inner.limits);
        if !invalid.is_empty() {
            self.count_rejected(product, source_id, &counters, &invalid);
            return Err(PushRefusal::Invalid(invalid));
        }
        let mut batch = IngestBatch {
            idempotency,
            ..IngestBatch::default()
        };
        let mut event_times = Vec::with_capacity(accepted.len());
        for accepted in accepted {
            event_times.push(accepted.record.event_time);
            batch.records.push(IngestRecord {
                check_duplicate: accepted.event_time_from_payload,
                fingerprint: Some(accepted.fingerprint.0),
                record: accepted.record,
            });
        }
        let prepared = Prepared {
            batch,
            rejected: Vec::new(),
            event_times,
        };
        let mut pending = PendingMessage::empty();
        if let Some(write) = self
            .queue(product, prepared, false, arrival, &counters)
            .await
        {
            pending.writes.push(write);
        }
        Ok(pending)
    }
}
