//! Sync figures for `/metrics`, and the one place each sync event is both
//! logged and counted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::record::Timestamp;
use crate::store::{OutboxStats, Store};
use crate::telemetry::expose;

/// Counters keyed by label values; a handful of series, so a locked map
/// off the hot path is fine.
#[derive(Default)]
pub struct SyncMetrics {
    counters: Mutex<BTreeMap<(&'static str, Vec<String>), u64>>,
    last_ack: Mutex<BTreeMap<String, Timestamp>>,
    /// Per upstream: why some of its entries wait (the refusals of the
    /// products it passes over), as its sender says.
    waiting: Mutex<BTreeMap<String, String>>,
    upstreams: Mutex<Vec<String>>,
    /// Per JetStream durable this aggregator consumes: its lag as last
    /// read. Bounded by `[aggregator.nats]` (one durable per node).
    consumers: Mutex<BTreeMap<String, ConsumerStatus>>,
    /// Per (upstream, product) reference replica (`from:` rules): bounded
    /// by the loaded definitions.
    references: Mutex<BTreeMap<(String, String), ReferenceStatus>>,
    /// Per upstream: when its digests were last compared, and how many
    /// buckets differed then (`sync::digest`).
    verify: Mutex<BTreeMap<String, (Timestamp, u64)>>,
}

/// One reference-data replica on this node (a `sync: - from:` rule).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceStatus {
    pub upstream: String,
    pub product: String,
    /// The last revision applied (durable in the store).
    pub revision: u64,
    /// Instances stored, filtered out by `where`, erased, malformed since
    /// start.
    pub stored: u64,
    pub filtered: u64,
    pub erased: u64,
    pub malformed: u64,
    /// When a page was last applied.
    pub last_applied: Option<Timestamp>,
    /// The last failure (connection, watch, store), until a page applies.
    pub error: Option<String>,
}

/// A JetStream consumer's lag, as JetStream reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerLag {
    /// Messages in the stream (matching the filter) not yet delivered.
    pub pending: u64,
    /// Delivered and not yet acknowledged (over every node on the durable).
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting on the server.
    pub waiting: u64,
}

/// One JetStream consumer of this aggregator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsumerStatus {
    pub durable: String,
    pub stream: String,
    pub filter_subject: String,
    /// `None` until JetStream answered once.
    pub lag: Option<ConsumerLag>,
    /// Envelopes nak'ed (not applied, offered again) since start.
    pub naks: u64,
    /// The last connection or consumer error, until the next lag reading.
    pub error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SyncMetrics {
    pub fn register_upstream(&self, name: &str) {
        let mut upstreams = lock(&self.upstreams);
        if !upstreams.iter().any(|u| u == name) {
            upstreams.push(name.to_string());
        }
    }

    fn add(&self, name: &'static str, labels: &[&str], n: u64) {
        *lock(&self.counters)
            .entry((name, labels.iter().map(|l| l.to_string()).collect()))
            .or_default() += n;
    }

    /// A digest comparison ran (`sync::digest`).
    pub fn verified(&self, report: &super::digest::VerifyReport) {
        let upstream = report.upstream.as_str();
        let repaired = report.resent + report.tombstones;
        let result = if report.differing == 0 {
            "ok"
        } else {
            "repaired"
        };
        self.add("meshlet_sync_verify_runs_total", &[upstream, result], 1);
        self.add("meshlet_sync_verify_repaired_total", &[upstream], repaired);
        lock(&self.verify).insert(
            upstream.to_string(),
            (Timestamp::now(), report.mismatched_buckets as u64),
        );
    }

    /// A digest comparison could not run.
    pub fn verify_failed(&self, upstream: &str, error: &str) {
        tracing::warn!(
            upstream,
            error,
            "sync digest comparison failed; trying again at the next interval"
        );
        self.add("meshlet_sync_verify_runs_total", &[upstream, "error"], 1);
    }

    /// The upstream acknowledged a batch.
    pub fn acked(&self, upstream: &str, records: usize, bytes: usize) {
        tracing::debug!(upstream, records, bytes, "sync batch acknowledged");
        self.add(
            "meshlet_sync_sent_records_total",
            &[upstream],
            records as u64,
        );
        self.add("meshlet_sync_sent_bytes_total", &[upstream], bytes as u64);
        self.add("meshlet_sync_batches_total", &[upstream], 1);
        lock(&self.last_ack).insert(upstream.to_string(), Timestamp::now());
    }

    /// Why some of `upstream`'s entries wait (`None`: none does).
    pub fn waiting(&self, upstream: &str, why: Option<String>) {
        let mut waiting = lock(&self.waiting);
        match why {
            Some(why) => waiting.insert(upstream.to_string(), why),
            None => waiting.remove(upstream),
        };
    }

    /// The upstream refused a batch it cannot take yet; the batch stays in
    /// the outbox and is sent again.
    pub fn deferred(&self, upstream: &str, reason: &'static str, detail: &str) {
        tracing::warn!(
            upstream,
            reason,
            detail,
            "sync batch refused by the upstream; it stays in the outbox and is sent again"
        );
        self.add("meshlet_sync_refusals_total", &[upstream, reason], 1);
    }

    /// A send failed; the batch stays in the outbox.
    pub fn send_failed(&self, upstream: &str, error: &str) {
        tracing::warn!(upstream, error, "sync send failed; retrying with back-off");
        self.add("meshlet_sync_errors_total", &[upstream], 1);
    }

    /// An envelope was too large for the upstream; it goes again, smaller.
    pub fn split(&self, upstream: &str, records: usize, limit: usize, detail: &str) {
        tracing::warn!(
            upstream,
            records,
            limit,
            detail,
            "sync envelope too large for the upstream; sending fewer records at a time"
        );
        self.add("meshlet_sync_split_envelopes_total", &[upstream], 1);
    }

    /// Outbox entries removed by the disk budget.
    pub fn dropped(&self, upstream: &str, reason: &str, count: u64) {
        if count == 0 {
            return;
        }
        tracing::warn!(
            upstream,
            reason,
            count,
            "sync outbox over budget: entries removed"
        );
        self.add("meshlet_sync_dropped_total", &[upstream, reason], count);
    }

    /// Aggregator: a JetStream durable this node consumes.
    pub fn register_consumer(&self, durable: &str, stream: &str, filter_subject: &str) {
        lock(&self.consumers).insert(
            durable.to_string(),
            ConsumerStatus {
                durable: durable.to_string(),
                stream: stream.to_string(),
                filter_subject: filter_subject.to_string(),
                ..ConsumerStatus::default()
            },
        );
    }

    /// Aggregator: the durable's lag as JetStream reports it.
    pub fn consumer_lag(&self, durable: &str, lag: ConsumerLag) {
        if let Some(c) = lock(&self.consumers).get_mut(durable) {
            c.lag = Some(lag);
            c.error = None;
        }
    }

    /// Aggregator: the durable could not be reached or bound.
    pub fn consumer_error(&self, durable: &str, error: &str) {
        self.add("meshlet_sync_jetstream_errors_total", &[durable], 1);
        if let Some(c) = lock(&self.consumers).get_mut(durable) {
            c.error = Some(error.chars().take(300).collect());
        }
    }

    /// Aggregator: a message was not applied and not acknowledged;
    /// JetStream offers it again after the retry delay.
    pub fn consumer_nak(&self, durable: &str, reason: &'static str, detail: &str) {
        tracing::warn!(
            durable,
            reason,
            detail,
            "sync envelope from JetStream not applied; nak'ed, it is delivered again"
        );
        self.add("meshlet_sync_jetstream_naks_total", &[durable, reason], 1);
        if let Some(c) = lock(&self.consumers).get_mut(durable) {
            c.naks += 1;
        }
    }

    /// Aggregator: the JetStream durables this node consumes.
    /// A reference replica starts at `revision` (read from the store).
    pub fn register_reference(&self, upstream: &str, product: &str, revision: u64) {
        lock(&self.references).insert(
            (upstream.to_string(), product.to_string()),
            ReferenceStatus {
                upstream: upstream.to_string(),
                product: product.to_string(),
                revision,
                ..ReferenceStatus::default()
            },
        );
    }

    pub fn reference_applied(
        &self,
        upstream: &str,
        product: &str,
        revision: u64,
        page: &super::reference::PageOutcome,
    ) {
        let mut all = lock(&self.references);
        let r = all
            .entry((upstream.to_string(), product.to_string()))
            .or_default();
        r.upstream = upstream.to_string();
        r.product = product.to_string();
        r.revision = r.revision.max(revision);
        r.stored += page.stored as u64;
        r.filtered += page.filtered as u64;
        r.erased += page.erased as u64;
        r.malformed += page.malformed as u64;
        r.last_applied = Some(Timestamp::now());
        r.error = None;
    }

    /// A reference replica's failure (logged by the caller), counted in
    /// `meshlet_sync_reference_errors_total`.
    pub fn reference_error(&self, upstream: &str, product: &str, error: &str) {
        self.add(
            "meshlet_sync_reference_errors_total",
            &[upstream, product],
            1,
        );
        if let Some(r) =
            lock(&self.references).get_mut(&(upstream.to_string(), product.to_string()))
        {
            r.error = Some(error.chars().take(300).collect());
        }
    }

    pub fn references(&self) -> Vec<ReferenceStatus> {
        lock(&self.references).values().cloned().collect()
    }

    pub fn consumers(&self) -> Vec<ConsumerStatus> {
        lock(&self.consumers).values().cloned().collect()
    }

    /// Aggregator: an envelope was applied.
    pub fn received(&self, origin: &str, applied: usize, duplicates: usize) {
        tracing::debug!(origin, applied, duplicates, "sync envelope applied");
        self.add("meshlet_sync_received_envelopes_total", &[origin], 1);
        self.add(
            "meshlet_sync_applied_records_total",
            &[origin],
            applied as u64,
        );
        self.add(
            "meshlet_sync_duplicate_records_total",
            &[origin],
            duplicates as u64,
        );
    }

    /// Aggregator: an envelope or a record of it was refused.
    pub fn refused(&self, reason: &'static str, detail: &str) {
        tracing::warn!(reason, detail, "sync input refused");
        self.add("meshlet_sync_refused_total", &[reason], 1);
    }

    /// Per upstream: pending entries and bytes, oldest pending age, last
    /// ack, errors and drops (for the GraphQL catalog).
    pub fn upstreams(&self, store: &Store) -> Vec<UpstreamStatus> {
        let upstreams = lock(&self.upstreams).clone();
        let counters = lock(&self.counters).clone();
        let last_ack = lock(&self.last_ack).clone();
        let waiting = lock(&self.waiting).clone();
        let sum = |name: &str, upstream: &str| -> u64 {
            counters
                .iter()
                .filter(|((n, labels), _)| {
                    *n == name && labels.first().map(String::as_str) == Some(upstream)
                })
                .map(|(_, v)| *v)
                .sum()
        };
        let now = Timestamp::now();
        upstreams
            .iter()
            .map(|name| {
                let stats = store.outbox_stats(name).unwrap_or_default();
                UpstreamStatus {
                    name: name.clone(),
                    pending: stats.pending,
                    pending_bytes: stats.bytes,
                    oldest_pending_age_seconds: stats
                        .oldest
                        .map(|o| (now.0 - o.0).max(0) as f64 / 1e6),
                    last_ack: last_ack.get(name).copied(),
                    errors: sum("meshlet_sync_errors_total", name),
                    dropped: sum("meshlet_sync_dropped_total", name),
                    refusals: sum("meshlet_sync_refusals_total", name),
                    waiting: waiting.get(name).cloned(),
                }
            })
            .collect()
    }

    /// Every sync family for `/metrics`, plus the outbox gauges read from
    /// the store (src/telemetry/expose.rs).
    pub fn encode_metrics(&self, store: &Store, enc: &mut expose::Encoder<'_>) -> expose::Encoded {
        // Name, label names, HELP text.
        const LABELS: &[(&str, &[&str], &str)] = &[
            (
                "meshlet_sync_sent_records_total",
                &["upstream"],
                "Records sent to an upstream and acknowledged.",
            ),
            (
                "meshlet_sync_sent_bytes_total",
                &["upstream"],
                "Encoded envelope bytes an upstream acknowledged.",
            ),
            (
                "meshlet_sync_batches_total",
                &["upstream"],
                "Envelopes an upstream acknowledged.",
            ),
            (
                "meshlet_sync_errors_total",
                &["upstream"],
                "Failed sends to an upstream.",
            ),
            (
                "meshlet_sync_refusals_total",
                &["upstream", "reason"],
                "Batches an upstream refused without acknowledging them (e.g. unknown_product); they stay in the outbox and are sent again.",
            ),
            (
                "meshlet_sync_split_envelopes_total",
                &["upstream"],
                "Envelopes an upstream could not take in one message (too large); sent again with fewer records.",
            ),
            (
                "meshlet_sync_dropped_total",
                &["upstream", "reason"],
                "Outbox entries removed by the disk budget.",
            ),
            (
                "meshlet_sync_received_envelopes_total",
                &["origin"],
                "Envelopes received from an edge (aggregator).",
            ),
            (
                "meshlet_sync_applied_records_total",
                &["origin"],
                "Records from an edge applied to the store (aggregator).",
            ),
            (
                "meshlet_sync_duplicate_records_total",
                &["origin"],
                "Records from an edge already applied (aggregator).",
            ),
            (
                "meshlet_sync_refused_total",
                &["reason"],
                "Envelopes refused (aggregator).",
            ),
            (
                "meshlet_sync_jetstream_naks_total",
                &["durable", "reason"],
                "JetStream messages not applied and not acknowledged (nak'ed: delivered again) (aggregator).",
            ),
            (
                "meshlet_sync_verify_runs_total",
                &["upstream", "result"],
                "Digest comparisons with an upstream (result: ok, repaired, error).",
            ),
            (
                "meshlet_sync_verify_repaired_total",
                &["upstream"],
                "Entities whose state (or tombstone) a digest comparison enqueued again.",
            ),
            (
                "meshlet_sync_jetstream_errors_total",
                &["durable"],
                "JetStream connection or consumer failures, retried with back-off (aggregator).",
            ),
            (
                "meshlet_sync_reference_errors_total",
                &["upstream", "product"],
                "Reference-data watch, long-poll or store failures, retried with back-off (edge).",
            ),
        ];
        let counters = lock(&self.counters).clone();
        for (name, label_names, help) in LABELS {
            let mut f = expose::counter_family(enc, name, help)?;
            for ((_, values), n) in counters.iter().filter(|((s, _), _)| s == name) {
                let set: Vec<(&str, &str)> = label_names
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                f.sample(&set, *n)?;
            }
        }
        self.encode_consumers(enc)?;
        self.encode_references(enc)?;
        let upstreams = lock(&self.upstreams).clone();
        let last_ack = lock(&self.last_ack).clone();
        let now = Timestamp::now();
        let mut stats: Vec<(String, OutboxStats)> = Vec::new();
        for upstream in &upstreams {
            match store.outbox_stats(upstream) {
                Ok(s) => stats.push((upstream.clone(), s)),
                Err(e) => tracing::warn!(upstream, error = %e, "reading outbox figures failed"),
            }
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_pending",
            "Outbox entries an upstream has not acknowledged yet.",
        )?;
        for (u, s) in &stats {
            f.sample(&[("upstream", u.as_str())], s.pending)?;
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_pending_bytes",
            "Bytes of the outbox entries an upstream has not acknowledged yet.",
        )?;
        for (u, s) in &stats {
            f.sample(&[("upstream", u.as_str())], s.bytes)?;
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_oldest_pending_seconds",
            "Age of the oldest unacknowledged outbox entry (0 when none).",
        )?;
        for (u, s) in &stats {
            let age = s.oldest.map_or(0.0, |o| (now.0 - o.0).max(0) as f64 / 1e6);
            f.sample(&[("upstream", u.as_str())], age)?;
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_last_ack_timestamp_seconds",
            "When an upstream last acknowledged an envelope (Unix seconds).",
        )?;
        for (u, t) in &last_ack {
            f.sample(&[("upstream", u.as_str())], t.0 as f64 / 1e6)?;
        }
        let verify = lock(&self.verify).clone();
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_verify_mismatched_buckets",
            "Digest buckets that differed from the upstream's at the last comparison.",
        )?;
        for (u, (_, buckets)) in &verify {
            f.sample(&[("upstream", u.as_str())], *buckets)?;
        }
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_verify_last_run_timestamp_seconds",
            "When the digests were last compared with an upstream (Unix seconds).",
        )?;
        for (u, (t, _)) in &verify {
            f.sample(&[("upstream", u.as_str())], t.0 as f64 / 1e6)?;
        }
        Ok(())
    }
}

impl SyncMetrics {
    /// The reference replicas' revision gauge and counters.
    fn encode_references(&self, enc: &mut expose::Encoder<'_>) -> expose::Encoded {
        let references = self.references();
        let mut f = expose::gauge_family(
            enc,
            "meshlet_sync_reference_revision",
            "The last reference-data revision applied to the store, per upstream and product (edge).",
        )?;
        for r in &references {
            f.sample(&reference_labels(r), r.revision)?;
        }
        type Series = (&'static str, &'static str, fn(&ReferenceStatus) -> u64);
        let series: [Series; 3] = [
            (
                "meshlet_sync_reference_stored_total",
                "Reference instances stored since start (edge).",
                |r| r.stored,
            ),
            (
                "meshlet_sync_reference_filtered_total",
                "Reference instances not stored: the rule's where does not match here (edge).",
                |r| r.filtered,
            ),
            (
                "meshlet_sync_reference_malformed_total",
                "Reference values that do not decode or name another entity than their key (edge).",
                |r| r.malformed,
            ),
        ];
        for (name, help, value) in series {
            let mut f = expose::counter_family(enc, name, help)?;
            for r in &references {
                f.sample(&reference_labels(r), value(r))?;
            }
        }
        Ok(())
    }

    /// The JetStream consumer lag gauges (only series JetStream answered).
    fn encode_consumers(&self, enc: &mut expose::Encoder<'_>) -> expose::Encoded {
        let consumers = self.consumers();
        type Gauge = (&'static str, &'static str, fn(&ConsumerLag) -> u64);
        let gauges: [Gauge; 3] = [
            (
                "meshlet_sync_jetstream_pending",
                "Messages in the sync stream for a durable consumer not yet delivered (aggregator).",
                |l| l.pending,
            ),
            (
                "meshlet_sync_jetstream_ack_pending",
                "Messages delivered to a durable consumer and not yet acknowledged, over all its nodes (aggregator).",
                |l| l.ack_pending,
            ),
            (
                "meshlet_sync_jetstream_redelivered",
                "Messages of a durable consumer delivered more than once and not yet acknowledged (aggregator).",
                |l| l.redelivered,
            ),
        ];
        for (name, help, value) in gauges {
            let mut f = expose::gauge_family(enc, name, help)?;
            for c in &consumers {
                if let Some(lag) = &c.lag {
                    f.sample(&[("durable", c.durable.as_str())], value(lag))?;
                }
            }
        }
        Ok(())
    }
}

fn reference_labels(r: &ReferenceStatus) -> [(&'static str, &str); 2] {
    [
        ("upstream", r.upstream.as_str()),
        ("product", r.product.as_str()),
    ]
}

/// One upstream's sync status.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamStatus {
    pub name: String,
    pub pending: u64,
    pub pending_bytes: u64,
    pub oldest_pending_age_seconds: Option<f64>,
    pub last_ack: Option<Timestamp>,
    pub errors: u64,
    pub dropped: u64,
    /// Batches the upstream refused without acknowledging (since start).
    pub refusals: u64,
    /// Why some pending entries wait: the upstream's refusal of each
    /// product it cannot take yet; `None` when nothing waits.
    pub waiting: Option<String>,
}
