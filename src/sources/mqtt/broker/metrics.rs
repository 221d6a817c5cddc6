//! The embedded broker's protocol-violation counters, owned by the broker
//! (not by ingest) and rendered on `/metrics` with the ingest families
//! through [`IngestMetrics::register_kind`](crate::ingest::IngestMetrics::register_kind).

use std::sync::atomic::{AtomicU64, Ordering};

use super::Violation;
use crate::ingest::KindMetrics;
use crate::telemetry::expose;

/// CONNECTs or topics refused per MQTT 3.1.1 or 5, by [`Violation::ALL`]
/// index.
#[derive(Debug, Default)]
pub struct ViolationCounters {
    counts: [AtomicU64; Violation::ALL.len()],
}

impl ViolationCounters {
    pub fn count(&self, violation: Violation) {
        self.counts[violation.index()].fetch_add(1, Ordering::Relaxed);
    }
}

impl KindMetrics for ViolationCounters {
    fn encode_metrics(&self, enc: &mut expose::Encoder<'_>) -> expose::Encoded {
        let mut f = expose::counter_family(
            enc,
            "meshlet_broker_violations_total",
            "Connections the embedded broker closed for breaking MQTT 3.1.1 or 5, by violation (unsupported_protocol got CONNACK 0x01).",
        )?;
        for (violation, count) in Violation::ALL.iter().zip(&self.counts) {
            f.sample(
                &[("violation", violation.name())],
                count.load(Ordering::Relaxed),
            )?;
        }
        Ok(())
    }
}
