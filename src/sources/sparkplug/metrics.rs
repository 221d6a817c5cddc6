//! The Sparkplug B counters: messages with a problem, by kind, and
//! rebirth requests sent. Owned by the Sparkplug sources (not by ingest),
//! rendered on `/metrics` with the ingest families through
//! [`IngestMetrics::register_kind`](crate::ingest::IngestMetrics::register_kind).

use std::sync::atomic::{AtomicU64, Ordering};

use super::host::Problem;
use crate::ingest::KindMetrics;
use crate::telemetry::expose;

#[derive(Debug, Default)]
pub struct SparkplugMetrics {
    /// By [`Problem::ALL`] index.
    problems: [AtomicU64; Problem::ALL.len()],
    rebirths: AtomicU64,
}

impl SparkplugMetrics {
    /// Counts one message with `problem`.
    pub fn problem(&self, problem: Problem) {
        if let Some(i) = Problem::ALL.iter().position(|p| *p == problem) {
            self.problems[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one rebirth request sent.
    pub fn rebirth(&self) {
        self.rebirths.fetch_add(1, Ordering::Relaxed);
    }
}

impl KindMetrics for SparkplugMetrics {
    fn encode_metrics(&self, enc: &mut expose::Encoder<'_>) -> expose::Encoded {
        let mut f = expose::counter_family(
            enc,
            "meshlet_sparkplug_problems_total",
            "Sparkplug B messages with a problem, by kind (bad payload, seq gap, unknown alias, ...).",
        )?;
        for (problem, count) in Problem::ALL.iter().zip(&self.problems) {
            f.sample(
                &[("problem", problem.name())],
                count.load(Ordering::Relaxed),
            )?;
        }
        expose::counter(
            enc,
            "meshlet_sparkplug_rebirth_requests_total",
            "Rebirth commands (NCMD Node Control/Rebirth) sent to edge nodes.",
            self.rebirths.load(Ordering::Relaxed),
        )
    }
}
