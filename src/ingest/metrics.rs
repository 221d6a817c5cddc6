//! Ingest counters: per product and source, what arrived and what became
//! of it, plus the node-wide figures no single product owns.
//!
//! Counters are plain atomics, registered once per (product, source) at
//! start, so the hot path never takes a lock. They are read by `/metrics`
//! (Prometheus text) and, later, by the GraphQL catalog.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::pipeline::Rule;
use crate::record::Timestamp;

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

/// The counters of one source of one product.
#[derive(Debug, Default)]
pub struct SourceCounters {
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

impl SourceCounters {
    fn new() -> SourceCounters {
        SourceCounters {
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
    /// Embedded broker: sockets open (CONNECT pending included), failed
    /// accepts, and CONNECTs or topics refused per MQTT 3.1.1 by
    /// [`super::broker_connect::Violation::ALL`] index.
    pub broker_sockets: AtomicI64,
    pub broker_accept_errors: AtomicU64,
    pub broker_violations: [AtomicU64; super::broker_connect::Violation::ALL.len()],
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
    /// Sparkplug B messages with a problem, by
    /// [`super::sparkplug::Problem::ALL`] index, and rebirth requests sent.
    pub sparkplug_problems: [AtomicU64; super::sparkplug::Problem::ALL.len()],
    pub sparkplug_rebirths: AtomicU64,
    /// HTTP pushes whose `Idempotency-Key` was already applied: answered
    /// with the first answer (replayed), or refused because the key came
    /// with another body (conflict). Nothing of either was written.
    pub push_replayed: AtomicU64,
    pub push_key_conflicts: AtomicU64,
}

impl IngestMetrics {
    /// The counters of `source` of `product`, created on first use.
    pub fn source(&self, product: &str, source: &str) -> Arc<SourceCounters> {
        let mut sources = lock(&self.sources);
        sources
            .entry((product.to_string(), source.to_string()))
            .or_insert_with(|| Arc::new(SourceCounters::new()))
            .clone()
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

    /// The Prometheus text exposition of every ingest counter.
    pub fn render_prometheus(&self, out: &mut String) {
        // One snapshot per source, so every family shows the same moment.
        let sources: Vec<(String, SourceFigures, Arc<SourceCounters>)> = lock(&self.sources)
            .iter()
            .map(|((product, source), c)| {
                let label = format!(
                    "product=\"{}\",source=\"{}\"",
                    escape(product),
                    escape(source)
                );
                (label, c.figures(), c.clone())
            })
            .collect();
        // One family: its header, then each source's samples as (extra
        // labels, value).
        let mut family = |name: &str, kind: &str, help: &str, samples: &Samples| {
            header(out, name, kind, help);
            for (label, figures, counters) in &sources {
                for (extra, value) in samples(figures, counters) {
                    let _ = writeln!(out, "{name}{{{label}{extra}}} {value}");
                }
            }
        };
        family(
            "meshlet_ingest_messages_total",
            "counter",
            "Payloads received per product source.",
            &|f, _| vec![(String::new(), f.messages.to_string())],
        );
        family(
            "meshlet_ingest_bytes_total",
            "counter",
            "Payload bytes received per product source.",
            &|f, _| vec![(String::new(), f.bytes.to_string())],
        );
        family(
            "meshlet_ingest_records_total",
            "counter",
            "Records by outcome: accepted, rejected, quarantined, duplicate, retained_known.",
            &|_, c| {
                Outcome::ALL
                    .into_iter()
                    .map(|o| {
                        let n = c.outcomes[o.index()].load(Ordering::Relaxed);
                        (format!(",outcome=\"{}\"", o.name()), n.to_string())
                    })
                    .collect()
            },
        );
        family(
            "meshlet_ingest_invalid_total",
            "counter",
            "Invalid records by the first quality rule they broke.",
            &|_, c| {
                lock(&c.by_rule)
                    .iter()
                    .map(|(rule, n)| (format!(",rule=\"{rule}\""), n.to_string()))
                    .collect()
            },
        );
        family(
            "meshlet_ingest_read_errors_total",
            "counter",
            "Failed reads of sources that poll by themselves, by reason: connect, timeout, io, exception, short_reply.",
            &|_, c| {
                lock(&c.read_errors)
                    .iter()
                    .map(|(reason, n)| (format!(",reason=\"{reason}\""), n.to_string()))
                    .collect()
            },
        );
        family(
            "meshlet_ingest_devices_down",
            "gauge",
            "Devices of a polling source that its last poll did not reach.",
            &|_, c| {
                if c.devices.load(Ordering::Relaxed) < 0 {
                    return Vec::new();
                }
                vec![(
                    String::new(),
                    c.devices_down.load(Ordering::Relaxed).to_string(),
                )]
            },
        );
        family(
            "meshlet_ingest_last_event_time_seconds",
            "gauge",
            "Newest accepted event time per product source.",
            &|f, _| {
                f.last_event_time
                    .map(|t| (String::new(), (t.as_micros() as f64 / 1e6).to_string()))
                    .into_iter()
                    .collect()
            },
        );
        let scalars: [(&str, &str, &str, i64); 21] = [
            (
                "meshlet_ingest_unmatched_messages_total",
                "counter",
                "MQTT messages whose topic matched no product source.",
                self.unmatched_messages.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_ingest_write_failures_total",
                "counter",
                "Write batches the store refused; their senders were not acknowledged.",
                self.write_failures.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_ingest_batches_written_total",
                "counter",
                "Write batches that passed the durability barrier.",
                self.batches_written.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_ingest_records_written_total",
                "counter",
                "Records that passed the durability barrier.",
                self.records_written.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_ingest_durable_barriers_total",
                "counter",
                "Durability barriers (one fsync each) shared by the write groups.",
                self.durable_barriers.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_connections",
                "gauge",
                "Open connections to the embedded broker.",
                self.broker_connections.load(Ordering::Relaxed),
            ),
            (
                "meshlet_broker_mqtt5_connections",
                "gauge",
                "Open connections to the embedded broker that speak MQTT 5 (of meshlet_broker_connections).",
                self.broker_v5_connections.load(Ordering::Relaxed),
            ),
            (
                "meshlet_broker_refused_total",
                "counter",
                "Connections the embedded broker refused (limit, credentials).",
                self.broker_refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_protocol_errors_total",
                "counter",
                "Connections closed for MQTT protocol errors or oversized packets.",
                self.broker_protocol_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_sockets",
                "gauge",
                "Sockets open on the embedded broker, those still to send CONNECT included (counted against max_connections).",
                self.broker_sockets.load(Ordering::Relaxed),
            ),
            (
                "meshlet_broker_accept_errors_total",
                "counter",
                "Failed accepts on the embedded broker's listener (mostly: out of file descriptors).",
                self.broker_accept_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_retained_bytes",
                "gauge",
                "Bytes (topic + payload) of the retained messages the embedded broker holds.",
                self.broker_retained_bytes.load(Ordering::Relaxed),
            ),
            (
                "meshlet_broker_retained_refused_total",
                "counter",
                "Retained publishes not retained: max_retained_bytes reached (still ingested and delivered).",
                self.broker_retained_refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_subscriptions_refused_total",
                "counter",
                "Subscription filters refused with SUBACK 0x80: max_subscriptions or max_subscription_bytes reached.",
                self.broker_subscriptions_refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_deliveries_dropped_total",
                "counter",
                "QoS 0 deliveries dropped for a subscriber whose queue held max_queued_bytes, or larger than its MQTT 5 maximum packet size.",
                self.broker_deliveries_dropped.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_sessions_expired_total",
                "counter",
                "Persistent MQTT sessions removed after session_expiry without their client.",
                self.broker_sessions_expired.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_broker_packet_budget_waits_total",
                "counter",
                "Large MQTT packets whose connection was not read until max_pending_packet_bytes had room.",
                self.broker_packet_budget_waits.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_mqtt_client_connects_total",
                "counter",
                "Successful connections to the external broker.",
                self.upstream_broker_connects.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_mqtt_client_errors_total",
                "counter",
                "Connection errors with the external broker.",
                self.upstream_broker_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_mqtt_client_stalls_total",
                "counter",
                "External broker connections dropped and reconnected because the broker said nothing for 3 keep-alives.",
                self.upstream_broker_stalls.load(Ordering::Relaxed) as i64,
            ),
            (
                "meshlet_mqtt_client_commands_dropped_total",
                "counter",
                "Commands to the external broker (Sparkplug rebirth requests) dropped because the client's outbox was full.",
                self.upstream_commands_dropped.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in scalars {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "meshlet_ingest_cpu_nice";
        header(
            out,
            name,
            "gauge",
            "Nice levels the ingest sources and the writer run below the API (ingest.nice); 0: same priority.",
        );
        let _ = writeln!(out, "{name} {}", self.cpu_nice.load(Ordering::Relaxed));
        let name = "meshlet_ingest_priority_failures_total";
        header(
            out,
            name,
            "counter",
            "Ingest threads whose CPU priority could not be lowered; they run at the node's priority.",
        );
        let _ = writeln!(out, "{name} {}", super::priority::priority_failures());
        let name = "meshlet_ingest_writer_busy_seconds_total";
        header(
            out,
            name,
            "counter",
            "Time the single store writer spent applying write groups; its rate near 1 means the writer limits ingest.",
        );
        let busy = self.writer_busy_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name} {busy}");
        let name = "meshlet_sparkplug_problems_total";
        header(
            out,
            name,
            "counter",
            "Sparkplug B messages with a problem, by kind (bad payload, seq gap, unknown alias, ...).",
        );
        for (problem, count) in super::sparkplug::Problem::ALL
            .iter()
            .zip(&self.sparkplug_problems)
        {
            let value = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{problem=\"{}\"}} {value}", problem.name());
        }
        let name = "meshlet_ingest_idempotent_resends_total";
        header(
            out,
            name,
            "counter",
            "HTTP pushes with an Idempotency-Key already applied: replayed (answered as the first time, nothing written) or conflict (the key came with another body, refused).",
        );
        let _ = writeln!(
            out,
            "{name}{{outcome=\"replayed\"}} {}\n{name}{{outcome=\"conflict\"}} {}",
            self.push_replayed.load(Ordering::Relaxed),
            self.push_key_conflicts.load(Ordering::Relaxed)
        );
        let name = "meshlet_broker_violations_total";
        header(
            out,
            name,
            "counter",
            "Connections the embedded broker closed for breaking MQTT 3.1.1 or 5, by violation (unsupported_protocol got CONNACK 0x01).",
        );
        for (violation, count) in super::broker_connect::Violation::ALL
            .iter()
            .zip(&self.broker_violations)
        {
            let value = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{violation=\"{}\"}} {value}", violation.name());
        }
        let name = "meshlet_sparkplug_rebirth_requests_total";
        header(
            out,
            name,
            "counter",
            "Rebirth commands (NCMD Node Control/Rebirth) sent to edge nodes.",
        );
        let _ = writeln!(
            out,
            "{name} {}",
            self.sparkplug_rebirths.load(Ordering::Relaxed)
        );
    }
}

/// One metric family's samples for one source: (extra labels, value).
type Samples = dyn Fn(&SourceFigures, &SourceCounters) -> Vec<(String, String)>;

/// Locks plain counters; a poisoned lock only means a panic elsewhere
/// mid-update of numbers that are still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
