//! Ingest counters: per product and source, what arrived and what became
//! of it, plus the node-wide figures no single product owns.
//!
//! Counters are plain atomics, registered once per (product, source) at
//! start, so the hot path never takes a lock. `/metrics` reads them at
//! scrape time (src/telemetry/expose.rs), and so do the GraphQL catalog and
//! `/status/v1`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::pipeline::{Invalid, Rule};
use crate::record::Timestamp;
use crate::telemetry::expose;

/// What became of one record (or of one payload that yielded none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
    Quarantined,
    Duplicate,
    /// A retained message for an entity the node already knows: the
    /// broker's last-known state, not a new event.
    RetainedKnown,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Rejected,
        Outcome::Quarantined,
        Outcome::Duplicate,
        Outcome::RetainedKnown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Quarantined => "quarantined",
            Outcome::Duplicate => "duplicate",
            Outcome::RetainedKnown => "retained_known",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters of one source of one product: the handle a source
/// resolves once at start, so counting (and the internal events below)
/// costs no lookup or allocation per record.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Whose counters these are, for the internal events' log lines.
    product: String,
    source: String,
    /// When an event of this source last logged at warn (Unix µs): at
    /// most one warn per [`WARN_INTERVAL`], debug otherwise.
    last_warned: AtomicI64,
    /// Payloads (MQTT messages, HTTP bodies, file lines) that reached the
    /// source's decoder.
    messages: AtomicU64,
    bytes: AtomicU64,
    outcomes: [AtomicU64; 5],
    /// Newest event time accepted, in microseconds; `i64::MIN` for none.
    last_event_time: AtomicI64,
    /// Invalid records by the first rule they broke.
    by_rule: Mutex<BTreeMap<&'static str, u64>>,
    /// Sources that read by themselves (pollers): failed reads by reason.
    read_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Pollers: devices polled, and those the last poll did not reach
    /// (`-1` devices: not a polled source).
    devices: AtomicI64,
    devices_down: AtomicI64,
}

/// A snapshot of one source's counters, for the catalog and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceFigures {
    pub messages: u64,
    pub bytes: u64,
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    pub retained_known: u64,
    pub last_event_time: Option<Timestamp>,
}

/// How often one source may log a refusal at warn level.
const WARN_INTERVAL_MICROS: i64 = 10_000_000;

impl SourceCounters {
    fn new(product: &str, source: &str) -> SourceCounters {
        SourceCounters {
            product: product.to_string(),
            source: source.to_string(),
            last_warned: AtomicI64::new(i64::MIN),
            last_event_time: AtomicI64::new(i64::MIN),
            devices: AtomicI64::new(-1),
            ..SourceCounters::default()
        }
    }

    pub fn message(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.outcomes[outcome.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn invalid_rule(&self, rule: Rule) {
        *lock(&self.by_rule).entry(rule.name()).or_default() += 1;
    }

    /// Rejected records by the first rule they broke.
    pub fn invalid_by_rule(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.by_rule).clone()
    }

    /// A poller's read failed (`connect`, `timeout`, `io`, `exception`).
    pub fn read_error(&self, reason: &'static str) {
        *lock(&self.read_errors).entry(reason).or_default() += 1;
    }

    /// Failed reads by reason.
    pub fn read_errors(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.read_errors).clone()
    }

    /// Marks this source as a poller of `n` devices.
    pub fn polled_devices(&self, n: usize) {
        self.devices.store(n as i64, Ordering::Relaxed);
    }

    /// How many devices the last poll did not reach.
    pub fn devices_down(&self, n: usize) {
        self.devices_down.store(n as i64, Ordering::Relaxed);
    }

    /// A polling source's devices and those its last poll did not reach;
    /// `None` for a source that does not poll.
    pub fn devices(&self) -> Option<(u64, u64)> {
        let devices = self.devices.load(Ordering::Relaxed);
        let down = self.devices_down.load(Ordering::Relaxed);
        (devices >= 0).then(|| (devices as u64, down.max(0) as u64))
    }

    /// Whether an event may log at warn now (at most once per
    /// [`WARN_INTERVAL_MICROS`] per source; a lost race logs at debug).
    fn may_warn(&self) -> bool {
        let now = Timestamp::now().as_micros();
        let last = self.last_warned.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARN_INTERVAL_MICROS
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn event_time(&self, time: Timestamp) {
        self.last_event_time
            .fetch_max(time.as_micros(), Ordering::Relaxed);
    }

    pub fn figures(&self) -> SourceFigures {
        let get = |o: Outcome| self.outcomes[o.index()].load(Ordering::Relaxed);
        let last = self.last_event_time.load(Ordering::Relaxed);
        let figures = SourceFigures {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            received: 0,
            accepted: get(Outcome::Accepted),
            rejected: get(Outcome::Rejected),
            quarantined: get(Outcome::Quarantined),
            duplicates: get(Outcome::Duplicate),
            retained_known: get(Outcome::RetainedKnown),
            last_event_time: (last != i64::MIN).then_some(Timestamp(last)),
        };
        SourceFigures {
            received: figures.accepted
                + figures.rejected
                + figures.quarantined
                + figures.duplicates
                + figures.retained_known,
            ..figures
        }
    }
}

/// Internal events of ingest: each logs and counts in one place (vector's
/// `internal_events` habit), so a refusal is never counted without a log
/// line or logged without a count. A source calls them on its counters
/// handle; refusals log at warn at most once per 10 s per source.
impl SourceCounters {
    /// Records refused by their product's quality rules (not stored, not
    /// quarantined): by outcome, by the first rule each broke.
    pub fn records_rejected(&self, rejected: &[Invalid]) {
        let Some(first) = rejected.first() else {
            return;
        };
        self.count(Outcome::Rejected, rejected.len() as u64);
        for bad in rejected {
            if let Some(reason) = bad.reasons.first() {
                self.invalid_rule(reason.rule);
            }
        }
        let reasons = super::reasons_text(first);
        let (product, source, n) = (&self.product, &self.source, rejected.len());
        if self.may_warn() {
            tracing::warn!(product, source, rejected = n, reasons, "records rejected");
        } else {
            tracing::debug!(product, source, rejected = n, reasons, "records rejected");
        }
    }

    /// A payload refused whole before it became records (a Sparkplug
    /// payload that does not decode, under `on_invalid: reject`).
    pub fn payload_rejected(&self, why: &dyn std::fmt::Display) {
        self.count(Outcome::Rejected, 1);
        let (product, source) = (&self.product, &self.source);
        if self.may_warn() {
            tracing::warn!(product, source, %why, "payload rejected");
        } else {
            tracing::debug!(product, source, %why, "payload rejected");
        }
    }

    /// Records quarantined (kept whole with their reasons, durable): the
    /// reasons are in the quarantine entries, so this logs at debug.
    pub fn records_quarantined(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.count(Outcome::Quarantined, n as u64);
        let (product, source) = (&self.product, &self.source);
        tracing::debug!(
            product,
            source,
            quarantined = n,
            "records quarantined (durable)"
        );
    }
}

/// Every ingest counter of the node.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    sources: Mutex<BTreeMap<(String, String), Arc<SourceCounters>>>,
    /// MQTT messages whose topic matched no product source.
    pub unmatched_messages: AtomicU64,
    /// Write batches the store refused (disk full, I/O error): their
    /// senders were not acknowledged and will redeliver.
    pub write_failures: AtomicU64,
    /// Write batches and the records in them that passed the durability
    /// barrier.
    pub batches_written: AtomicU64,
    pub records_written: AtomicU64,
    /// Durability barriers (fsyncs) passed: records_written / this is how
    /// many records share one fsync.
    pub durable_barriers: AtomicU64,
    /// Microseconds the writer spent applying groups to the store: its
    /// busy share of wall time says whether the single writer is what
    /// limits ingest (near 1) or something before it.
    pub writer_busy_micros: AtomicU64,
    /// Nice levels ingest runs below the rest of the node
    /// (`ingest.nice`; src/ingest/priority.rs).
    pub cpu_nice: AtomicU64,
    /// Embedded broker: open connections, connections refused (limit,
    /// bad credentials), connections closed for protocol errors.
    pub broker_connections: AtomicI64,
    /// Of `broker_connections`, those speaking MQTT 5.
    pub broker_v5_connections: AtomicI64,
    pub broker_refused: AtomicU64,
    pub broker_protocol_errors: AtomicU64,
    /// Embedded broker: sockets open (CONNECT pending included) and
    /// failed accepts.
    pub broker_sockets: AtomicI64,
    pub broker_accept_errors: AtomicU64,
    /// Embedded broker budgets: retained bytes held, retained publishes
    /// not retained, subscriptions refused, deliveries dropped for a slow
    /// subscriber, persistent sessions expired.
    pub broker_retained_bytes: AtomicI64,
    pub broker_retained_refused: AtomicU64,
    pub broker_subscriptions_refused: AtomicU64,
    pub broker_deliveries_dropped: AtomicU64,
    pub broker_sessions_expired: AtomicU64,
    /// Large packets that waited for `max_pending_packet_bytes`.
    pub broker_packet_budget_waits: AtomicU64,
    /// External broker: successful (re)connections and failed attempts.
    pub upstream_broker_connects: AtomicU64,
    pub upstream_broker_errors: AtomicU64,
    /// External broker: connections the client's watchdog dropped because
    /// the broker said nothing for several keep-alives, and outgoing
    /// commands dropped because the client's outbox was full.
    pub upstream_broker_stalls: AtomicU64,
    pub upstream_commands_dropped: AtomicU64,
    /// HTTP pushes whose `Idempotency-Key` was already applied: answered
    /// with the first answer (replayed), or refused because the key came
    /// with another body (conflict). Nothing of either was written.
    pub push_replayed: AtomicU64,
    pub push_key_conflicts: AtomicU64,
    /// Counters a source kind owns (Sparkplug problems, broker
    /// violations), rendered after the ingest families.
    kinds: Mutex<Vec<Arc<dyn KindMetrics>>>,
}

/// Counters a source kind keeps itself, so ingest need not name the kind:
/// registered with [`IngestMetrics::register_kind`], rendered on
/// `/metrics` with the ingest families.
pub trait KindMetrics: std::fmt::Debug + Send + Sync {
    fn encode_metrics(&self, enc: &mut expose::Encoder<'_>) -> expose::Encoded;
}

impl IngestMetrics {
    /// Adds a kind's counters to `/metrics`. Register each once (a family
    /// given twice would break the exposition).
    pub fn register_kind(&self, kind: Arc<dyn KindMetrics>) {
        lock(&self.kinds).push(kind);
    }

    /// The counters of `source` of `product`, created on first use.
    pub fn source(&self, product: &str, source: &str) -> Arc<SourceCounters> {
        let mut sources = lock(&self.sources);
        sources
            .entry((product.to_string(), source.to_string()))
            .or_insert_with(|| Arc::new(SourceCounters::new(product, source)))
            .clone()
    }

    /// Every source's counters handle, by (product, source): for readers
    /// that want more than [`SourceFigures`] (`/status/v1`).
    pub fn sources(&self) -> Vec<((String, String), Arc<SourceCounters>)> {
        lock(&self.sources)
            .iter()
            .map(|(key, c)| (key.clone(), Arc::clone(c)))
            .collect()
    }

    /// Snapshot of every source's figures, by (product, source).
    pub fn figures(&self) -> BTreeMap<(String, String), SourceFigures> {
        let sources = lock(&self.sources);
        sources
            .iter()
            .map(|(key, counters)| (key.clone(), counters.figures()))
            .collect()
    }

    /// Sums a product's figures over its sources.
    pub fn product_figures(&self, product: &str) -> SourceFigures {
        let mut total = SourceFigures::default();
        for ((p, _), f) in self.figures() {
            if p == product {
                total.messages += f.messages;
                total.bytes += f.bytes;
                total.received += f.received;
                total.accepted += f.accepted;
                total.rejected += f.rejected;
                total.quarantined += f.quarantined;
                total.duplicates += f.duplicates;
                total.retained_known += f.retained_known;
                total.last_event_time = total.last_event_time.max(f.last_event_time);
            }
        }
        total
    }

    /// Every ingest family for `/metrics` (src/telemetry/expose.rs).
    pub fn encode_metrics(&self, enc: &mut expose::Encoder<'_>) -> expose::Encoded {
        // One snapshot of the sources, so every family shows the same set.
        let sources: Vec<((String, String), Arc<SourceCounters>)> = lock(&self.sources)
            .iter()
            .map(|(key, c)| (key.clone(), c.clone()))
            .collect();
        let labels = |(product, source): &(String, String)| {
            [("product", product.clone()), ("source", source.clone())]
        };
        let mut f = expose::counter_family(
            enc,
            "meshlet_ingest_messages_total",
            "Payloads received per product source.",
        )?;
        for (key, c) in &sources {
            f.sample(&labels(key), c.messages.load(Ordering::Relaxed))?;
        }
        let mut f = expose::counter_family(
            enc,
            "meshlet_ingest_bytes_total",
            "Payload bytes received per product source.",
        )?;
        for (key, c) in &sources {
            f.sample(&labels(key), c.bytes.load(Ordering::Relaxed))?;
        }
        let mut f = expose::counter_family(
            enc,
            "meshlet_ingest_records_total",
            "Records by outcome: accepted, rejected, quarantined, duplicate, retained_known.",
        )?;
        for ((product, source), c) in &sources {
            for o in Outcome::ALL {
                let n = c.outcomes[o.index()].load(Ordering::Relaxed);
                let set = [
                    ("product", product.as_str()),
                    ("source", source.as_str()),
                    ("outcome", o.name()),
                ];
                f.sample(&set, n)?;
            }
        }
        let mut f = expose::counter_family(
            enc,
            "meshlet_ingest_invalid_total",
            "Invalid records by the first quality rule they broke.",
        )?;
        for ((product, source), c) in &sources {
            for (rule, n) in lock(&c.by_rule).iter() {
                let set = [
                    ("product", product.as_str()),
                    ("source", source.as_str()),
                    ("rule", rule),
                ];
                f.sample(&set, *n)?;
            }
        }
        let mut f = expose::counter_family(
            enc,
            "meshlet_ingest_read_errors_total",
            "Failed reads of sources that poll by themselves, by reason: connect, timeout, io, exception, short_reply.",
        )?;
        for ((product, source), c) in &sources {
            for (reason, n) in lock(&c.read_errors).iter() {
                let set = [
                    ("product", product.as_str()),
                    ("source", source.as_str()),
                    ("reason", reason),
                ];
                f.sample(&set, *n)?;
            }
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_ingest_devices_down",
            "Devices of a polling source that its last poll did not reach.",
        )?;
        for (key, c) in &sources {
            if c.devices.load(Ordering::Relaxed) >= 0 {
                f.sample(&labels(key), c.devices_down.load(Ordering::Relaxed))?;
            }
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_ingest_last_event_time_seconds",
            "Newest accepted event time per product source.",
        )?;
        for (key, c) in &sources {
            let last = c.last_event_time.load(Ordering::Relaxed);
            if last != i64::MIN {
                f.sample(&labels(key), last as f64 / 1e6)?;
            }
        }
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "meshlet_ingest_unmatched_messages_total",
                "MQTT messages whose topic matched no product source.",
                &self.unmatched_messages,
            ),
            (
                "meshlet_ingest_write_failures_total",
                "Write batches the store refused; their senders were not acknowledged.",
                &self.write_failures,
            ),
            (
                "meshlet_ingest_batches_written_total",
                "Write batches that passed the durability barrier.",
                &self.batches_written,
            ),
            (
                "meshlet_ingest_records_written_total",
                "Records that passed the durability barrier.",
                &self.records_written,
            ),
            (
                "meshlet_ingest_durable_barriers_total",
                "Durability barriers (one fsync each) shared by the write groups.",
                &self.durable_barriers,
            ),
            (
                "meshlet_broker_refused_total",
                "Connections the embedded broker refused (limit, credentials).",
                &self.broker_refused,
            ),
            (
                "meshlet_broker_protocol_errors_total",
                "Connections closed for MQTT protocol errors or oversized packets.",
                &self.broker_protocol_errors,
            ),
            (
                "meshlet_broker_accept_errors_total",
                "Failed accepts on the embedded broker's listener (mostly: out of file descriptors).",
                &self.broker_accept_errors,
            ),
            (
                "meshlet_broker_retained_refused_total",
                "Retained publishes not retained: max_retained_bytes reached (still ingested and delivered).",
                &self.broker_retained_refused,
            ),
            (
                "meshlet_broker_subscriptions_refused_total",
                "Subscription filters refused with SUBACK 0x80: max_subscriptions or max_subscription_bytes reached.",
                &self.broker_subscriptions_refused,
            ),
            (
                "meshlet_broker_deliveries_dropped_total",
                "QoS 0 deliveries dropped for a subscriber whose queue held max_queued_bytes, or larger than its MQTT 5 maximum packet size.",
                &self.broker_deliveries_dropped,
            ),
            (
                "meshlet_broker_sessions_expired_total",
                "Persistent MQTT sessions removed after session_expiry without their client.",
                &self.broker_sessions_expired,
            ),
            (
                "meshlet_broker_packet_budget_waits_total",
                "Large MQTT packets whose connection was not read until max_pending_packet_bytes had room.",
                &self.broker_packet_budget_waits,
            ),
            (
                "meshlet_mqtt_client_connects_total",
                "Successful connections to the external broker.",
                &self.upstream_broker_connects,
            ),
            (
                "meshlet_mqtt_client_errors_total",
                "Connection errors with the external broker.",
                &self.upstream_broker_errors,
            ),
            (
                "meshlet_mqtt_client_stalls_total",
                "External broker connections dropped and reconnected because the broker said nothing for 3 keep-alives.",
                &self.upstream_broker_stalls,
            ),
        ];
        for (name, help, value) in counters {
            expose::counter(enc, name, help, value.load(Ordering::Relaxed))?;
        }
        expose::counter(
            enc,
            "meshlet_mqtt_client_commands_dropped_total",
            "Commands to the external broker (Sparkplug rebirth requests) dropped because the client's outbox was full.",
            self.upstream_commands_dropped.load(Ordering::Relaxed),
        )?;
        let gauges: [(&str, &str, &AtomicI64); 4] = [
            (
                "meshlet_broker_connections",
                "Open connections to the embedded broker.",
                &self.broker_connections,
            ),
            (
                "meshlet_broker_mqtt5_connections",
                "Open connections to the embedded broker that speak MQTT 5 (of meshlet_broker_connections).",
                &self.broker_v5_connections,
            ),
            (
                "meshlet_broker_sockets",
                "Sockets open on the embedded broker, those still to send CONNECT included (counted against max_connections).",
                &self.broker_sockets,
            ),
            (
                "meshlet_broker_retained_bytes",
                "Bytes (topic + payload) of the retained messages the embedded broker holds.",
                &self.broker_retained_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            expose::gauge(enc, name, help, value.load(Ordering::Relaxed))?;
        }
        expose::gauge(
            enc,
            "meshlet_ingest_cpu_nice",
            "Nice levels the ingest sources and the writer run below the API (ingest.nice); 0: same priority.",
            self.cpu_nice.load(Ordering::Relaxed),
        )?;
        expose::counter(
            enc,
            "meshlet_ingest_priority_failures_total",
            "Ingest threads whose CPU priority could not be lowered; they run at the node's priority.",
            super::priority::priority_failures(),
        )?;
        expose::counter(
            enc,
            "meshlet_ingest_writer_busy_seconds_total",
            "Time the single store writer spent applying write groups; its rate near 1 means the writer limits ingest.",
            self.writer_busy_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )?;
        let mut f = expose::counter_family(
            enc,
            "meshlet_ingest_idempotent_resends_total",
            "HTTP pushes with an Idempotency-Key already applied: replayed (answered as the first time, nothing written) or conflict (the key came with another body, refused).",
        )?;
        f.sample(
            &[("outcome", "replayed")],
            self.push_replayed.load(Ordering::Relaxed),
        )?;
        f.sample(
            &[("outcome", "conflict")],
            self.push_key_conflicts.load(Ordering::Relaxed),
        )?;
        let kinds: Vec<Arc<dyn KindMetrics>> = lock(&self.kinds).clone();
        for kind in kinds {
            kind.encode_metrics(enc)?;
        }
        Ok(())
    }
}

/// Locks plain counters; a poisoned lock only means a panic elsewhere
/// mid-update of numbers that are still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl crate::store::WriterCounters for IngestMetrics {
    fn writer_busy(&self, micros: u64) {
        self.writer_busy_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn write_failed(&self) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn durable_barrier(&self) {
        self.durable_barriers.fetch_add(1, Ordering::Relaxed);
    }

    fn batch_written(&self, records: usize) {
        self.batches_written.fetch_add(1, Ordering::Relaxed);
        self.records_written
            .fetch_add(records as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_events_count_every_time_and_warn_once_per_interval() {
        let metrics = IngestMetrics::default();
        let counters = metrics.source("p", "mqtt:0");
        assert!(counters.may_warn(), "the first refusal of a source warns");
        assert!(!counters.may_warn(), "the next within 10 s logs at debug");
        counters.payload_rejected(&"bad payload");
        counters.payload_rejected(&"bad payload");
        counters.records_quarantined(3);
        counters.records_quarantined(0);
        let figures = counters.figures();
        assert_eq!((figures.rejected, figures.quarantined), (2, 3));
        assert_eq!(figures.received, 5);
    }
}
