//! GraphQL figures for `/metrics`: requests by outcome, their latency, and
//! subscriptions (open now from the usage counters, started in total).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::telemetry::expose;

/// The `extensions.code`s of field errors counted by name (any other is
/// counted as `other`, so the label set stays bounded).
const FIELD_ERROR_CODES: [&str; 11] = [
    "BAD_ARGUMENT",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "PAGE_TOO_LARGE",
    "SERIES_TOO_LARGE",
    "AGGREGATE_TOO_LARGE",
    "RESPONSE_TOO_LARGE",
    "INVALID_RECORD",
    "TOO_MANY_SUBSCRIPTIONS",
    "INTERNAL_SERVER_ERROR",
    "other",
];

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Default)]
pub(crate) struct GraphqlMetrics {
    /// Queries and mutations answered without errors / with errors.
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Requests refused before execution (size, content type, body).
    pub refused: AtomicU64,
    pub subscriptions_started: AtomicU64,
    /// Queries answered from a prepared plan (`prepared.rs`), without the
    /// executor.
    pub prepared: AtomicU64,
    /// Field errors by code (`field_errors.rs`), as [`FIELD_ERROR_CODES`].
    field_errors: [AtomicU64; FIELD_ERROR_CODES.len()],
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_micros: AtomicU64,
}

impl GraphqlMetrics {
    /// Records one executed query or mutation.
    pub(crate) fn request(&self, took: Duration, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.latency_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records one field error with `extensions.code` `code`.
    pub(crate) fn field_error(&self, code: &str) {
        let last = FIELD_ERROR_CODES.len() - 1;
        let i = FIELD_ERROR_CODES[..last]
            .iter()
            .position(|c| *c == code)
            .unwrap_or(last);
        if let Some(counter) = self.field_errors.get(i) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one query answered from a prepared plan (it succeeded).
    pub(crate) fn prepared(&self, took: Duration) {
        self.prepared.fetch_add(1, Ordering::Relaxed);
        self.request(took, true);
    }

    /// The GraphQL request families of `/metrics`.
    pub(crate) fn encode_metrics(
        &self,
        open_subscriptions: i64,
        enc: &mut expose::Encoder<'_>,
    ) -> expose::Encoded {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut f = expose::counter_family(
            enc,
            "meshlet_graphql_requests_total",
            "GraphQL queries and mutations by outcome (refused: before execution).",
        )?;
        for (outcome, value) in [
            ("ok", load(&self.ok)),
            ("error", load(&self.errors)),
            ("refused", load(&self.refused)),
        ] {
            f.sample(&[("outcome", outcome)], value)?;
        }
        let mut f = expose::counter_family(
            enc,
            "meshlet_graphql_field_errors_total",
            "GraphQL field errors (each with its path; the field is null) by extensions.code.",
        )?;
        for (code, counter) in FIELD_ERROR_CODES.iter().zip(&self.field_errors) {
            f.sample(&[("code", *code)], load(counter))?;
        }
        expose::counter(
            enc,
            "meshlet_graphql_prepared_total",
            "GraphQL queries answered from a prepared plan (key lookups of a shape answered before), without the executor; they are also counted in meshlet_graphql_requests_total.",
            load(&self.prepared),
        )?;
        // The buckets count cumulatively; the encoder wants each bucket's
        // own share and adds them up again.
        let count = load(&self.latency_count);
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(bound, bucket)| {
                let cumulative = load(bucket);
                let own = cumulative.saturating_sub(below);
                below = cumulative;
                (*bound, own)
            })
            .collect();
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        expose::histogram_family(
            enc,
            "meshlet_graphql_request_duration_seconds",
            "Time to execute a GraphQL query or mutation.",
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            load(&self.latency_micros) as f64 / 1e6,
            count,
            &buckets,
            None,
        )?;
        expose::gauge(
            enc,
            "meshlet_graphql_subscriptions_open",
            "GraphQL subscriptions open now.",
            open_subscriptions,
        )?;
        expose::counter(
            enc,
            "meshlet_graphql_subscriptions_total",
            "GraphQL subscriptions started.",
            load(&self.subscriptions_started),
        )
    }
}
