//! `GET /status/v1`: the node's state as one JSON document with a stable,
//! versioned shape — what `meshlet status` shows and the console's node
//! panel reads. Before it, `meshlet status` parsed the `/metrics` text,
//! which ties a tool to exposition details (OpenMetrics suffixes, label
//! order) that are not a contract.
//!
//! The shape is [`NodeStatus`] (serde structs, also used by the CLI to read
//! it back). Within `v1` fields are only ever added, never renamed,
//! retyped or removed; a breaking change is `/status/v2`. The golden key
//! set in the tests below fails when a key moves, so a change to the
//! shape is a deliberate one.
//!
//! Counters are totals since start (rates are the reader's: sample twice);
//! times are RFC 3339 strings in UTC, except `started_at` (Unix seconds,
//! as `process_start_time_seconds` in `/metrics`). Counts and names only,
//! never data values: behind the same authentication layer as the console
//! and GraphQL, showing nothing the open `/metrics` does not, but the store
//! size and resident memory.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{ApiState, Phase};
use crate::record::Timestamp;

/// The path, with its version.
pub const PATH: &str = "/status/v1";

/// The document's `status_version`.
pub const VERSION: u32 = 1;

/// The whole answer of `GET /status/v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Always [`VERSION`] at this path.
    pub status_version: u32,
    pub node_id: String,
    /// The meshlet build (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Unix seconds.
    pub started_at: f64,
    pub uptime_seconds: f64,
    pub readiness: ReadinessStatus,
    /// Null where the platform does not say (not Linux).
    pub memory_rss_bytes: Option<u64>,
    pub store: StoreStatus,
    pub ingest: IngestStatus,
    pub sync: SyncStatus,
}

/// `/ready`'s view: the phase and the problems an operator must see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessStatus {
    pub phase: Phase,
    pub problems: Vec<String>,
}

/// The store: its on-disk format, size, and the journal-first write
/// path's figures (what a crash would replay now, checkpoint work).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The data format this build writes (`STORE_FORMAT_VERSION`).
    pub format_version: u32,
    /// Null when the store could not be measured.
    pub bytes_on_disk: Option<u64>,
    /// Hot state not yet checkpointed into the trees.
    pub hot_bytes: u64,
    pub journal: JournalStatus,
    pub checkpoints: CheckpointStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalStatus {
    pub frames_written: u64,
    /// Bytes as stored (compressed, sealed).
    pub frame_bytes: u64,
    /// Applied at open, after a crash.
    pub frames_replayed: u64,
    /// Written since the last checkpoint: what a replay would read now.
    pub pending_frames: u64,
    pub pending_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    pub count: u64,
    /// Keys written or removed.
    pub keys: u64,
    pub seconds: f64,
}

/// Ingest: per (product, source) and the node-wide figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestStatus {
    pub sources: Vec<SourceStatus>,
    /// MQTT messages whose topic matched no product source.
    pub unmatched_messages: u64,
    /// Write batches the store refused (senders not acknowledged).
    pub write_failures: u64,
    pub batches_written: u64,
    pub records_written: u64,
}

/// One source of one product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub product: String,
    /// `mqtt:0`, `http:1`, ... (the product's source list, by index).
    pub source: String,
    /// Payloads that reached the source's decoder, and their bytes.
    pub messages: u64,
    pub bytes: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    pub retained_known: u64,
    /// Rejected records by the first quality rule they broke.
    pub invalid_by_rule: BTreeMap<String, u64>,
    /// Newest accepted event time; null before the first.
    pub last_event_time: Option<String>,
    /// Polling sources: devices polled and not reached by the last poll,
    /// failed reads by reason; null (empty) for other sources.
    pub devices: Option<u64>,
    pub devices_down: Option<u64>,
    pub read_errors: BTreeMap<String, u64>,
}

/// Sync: per upstream (edge), per JetStream durable (aggregator), per
/// reference replica (`sync: - from:` rules).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub upstreams: Vec<UpstreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
    pub references: Vec<ReferenceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// Outbox entries (and their bytes) not yet acknowledged.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Age of the oldest unacknowledged entry; null when none.
    pub oldest_pending_seconds: Option<f64>,
    pub last_ack: Option<String>,
    /// Since start: failed sends, entries dropped by the disk budget,
    /// batches refused without an acknowledgement.
    pub errors: u64,
    pub dropped: u64,
    pub refusals: u64,
    /// Why some pending entries wait; null when nothing waits.
    pub waiting: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumerStatus {
    pub durable: String,
    pub stream: String,
    pub filter_subject: String,
    /// JetStream's lag figures; null until it answered once.
    pub pending: Option<u64>,
    pub ack_pending: Option<u64>,
    pub redelivered: Option<u64>,
    pub naks: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceStatus {
    pub upstream: String,
    pub product: String,
    /// The last revision applied (durable).
    pub revision: u64,
    pub stored: u64,
    pub filtered: u64,
    pub erased: u64,
    pub malformed: u64,
    pub last_applied: Option<String>,
    pub error: Option<String>,
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route(PATH, get(status))
}

async fn status(State(state): State<ApiState>) -> Response {
    // Outbox figures and the size on disk read the store: off the runtime.
    match tokio::task::spawn_blocking(move || snapshot(&state)).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "reading the node status failed");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "reading the node status failed\n",
            )
                .into_response()
        }
    }
}

fn time(t: Option<Timestamp>) -> Option<String> {
    t.and_then(Timestamp::to_rfc3339)
}

/// The node's status now (blocking: reads outbox figures and walks the
/// data directory for its size).
pub(crate) fn snapshot(state: &ApiState) -> NodeStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let started_at = super::started_at();
    let now = Timestamp::now().as_micros() as f64 / 1e6;
    let store = state.ingestor.store();
    let journal = store.journal_stats();
    let metrics = state.ingestor.metrics();
    let sources = metrics
        .sources()
        .into_iter()
        .map(|((product, source), counters)| {
            let f = counters.figures();
            let devices = counters.devices();
            SourceStatus {
                product,
                source,
                messages: f.messages,
                bytes: f.bytes,
                accepted: f.accepted,
                rejected: f.rejected,
                quarantined: f.quarantined,
                duplicates: f.duplicates,
                retained_known: f.retained_known,
                invalid_by_rule: counters
                    .invalid_by_rule()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                last_event_time: time(f.last_event_time),
                devices: devices.map(|(n, _)| n),
                devices_down: devices.map(|(_, down)| down),
                read_errors: counters
                    .read_errors()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        })
        .collect();
    let sync = match &state.sync {
        None => SyncStatus {
            upstreams: Vec::new(),
            consumers: Vec::new(),
            references: Vec::new(),
        },
        Some(sync) => SyncStatus {
            upstreams: sync
                .upstreams()
                .into_iter()
                .map(|u| UpstreamStatus {
                    name: u.name,
                    pending: u.pending,
                    pending_bytes: u.pending_bytes,
                    oldest_pending_seconds: u.oldest_pending_age_seconds,
                    last_ack: time(u.last_ack),
                    errors: u.errors,
                    dropped: u.dropped,
                    refusals: u.refusals,
                    waiting: u.waiting,
                })
                .collect(),
            consumers: sync
                .consumers()
                .into_iter()
                .map(|c| ConsumerStatus {
                    durable: c.durable,
                    stream: c.stream,
                    filter_subject: c.filter_subject,
                    pending: c.lag.map(|l| l.pending),
                    ack_pending: c.lag.map(|l| l.ack_pending),
                    redelivered: c.lag.map(|l| l.redelivered),
                    naks: c.naks,
                    error: c.error,
                })
                .collect(),
            references: sync
                .references()
                .into_iter()
                .map(|r| ReferenceStatus {
                    upstream: r.upstream,
                    product: r.product,
                    revision: r.revision,
                    stored: r.stored,
                    filtered: r.filtered,
                    erased: r.erased,
                    malformed: r.malformed,
                    last_applied: time(r.last_applied),
                    error: r.error,
                })
                .collect(),
        },
    };
    NodeStatus {
        status_version: VERSION,
        node_id: state.node_id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        uptime_seconds: (now - started_at).max(0.0),
        readiness: ReadinessStatus {
            phase: state.readiness.phase(),
            problems: state.readiness.problems(),
        },
        memory_rss_bytes: resident_bytes(),
        store: StoreStatus {
            format_version: crate::store::STORE_FORMAT_VERSION,
            bytes_on_disk: store.size_on_disk().ok(),
            hot_bytes: store.hot_bytes() as u64,
            journal: JournalStatus {
                frames_written: journal.frames_written.load(Relaxed),
                frame_bytes: journal.frame_bytes.load(Relaxed),
                frames_replayed: journal.frames_replayed.load(Relaxed),
                pending_frames: store.journal_pending_frames(),
                pending_bytes: store.journal_pending_bytes(),
            },
            checkpoints: CheckpointStatus {
                count: journal.checkpoints.load(Relaxed),
                keys: journal.checkpoint_keys.load(Relaxed),
                seconds: journal.checkpoint_micros.load(Relaxed) as f64 / 1e6,
            },
        },
        ingest: IngestStatus {
            sources,
            unmatched_messages: metrics.unmatched_messages.load(Relaxed),
            write_failures: metrics.write_failures.load(Relaxed),
            batches_written: metrics.batches_written.load(Relaxed),
            records_written: metrics.records_written.load(Relaxed),
        },
        sync,
    }
}

/// The process's resident set (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_of(&status)
}

fn rss_of(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Every key path of a JSON value (`a.b`, `a.list[].c`), sorted: the
/// shape without the values.
pub fn key_paths(value: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(path.clone());
                    walk(v, &path, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tmeshlet\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(rss_of(status), Some(12345 * 1024));
        assert_eq!(rss_of("Name:\tx\n"), None);
    }

    /// A full document (every list with one item) for the golden test.
    fn full() -> NodeStatus {
        NodeStatus {
            status_version: VERSION,
            node_id: "n".into(),
            version: "0".into(),
            started_at: 1.0,
            uptime_seconds: 2.0,
            readiness: ReadinessStatus {
                phase: Phase::Ready,
                problems: vec!["p".into()],
            },
            memory_rss_bytes: Some(1),
            store: StoreStatus {
                format_version: 4,
                bytes_on_disk: Some(1),
                hot_bytes: 1,
                journal: JournalStatus {
                    frames_written: 1,
                    frame_bytes: 1,
                    frames_replayed: 0,
                    pending_frames: 1,
                    pending_bytes: 1,
                },
                checkpoints: CheckpointStatus {
                    count: 1,
                    keys: 1,
                    seconds: 0.5,
                },
            },
            ingest: IngestStatus {
                sources: vec![SourceStatus {
                    product: "p".into(),
                    source: "mqtt:0".into(),
                    messages: 1,
                    bytes: 1,
                    accepted: 1,
                    rejected: 0,
                    quarantined: 0,
                    duplicates: 0,
                    retained_known: 0,
                    invalid_by_rule: BTreeMap::new(),
                    last_event_time: None,
                    devices: None,
                    devices_down: None,
                    read_errors: BTreeMap::new(),
                }],
                unmatched_messages: 0,
                write_failures: 0,
                batches_written: 1,
                records_written: 1,
            },
            sync: SyncStatus {
                upstreams: vec![UpstreamStatus {
                    name: "u".into(),
                    pending: 0,
                    pending_bytes: 0,
                    oldest_pending_seconds: None,
                    last_ack: None,
                    errors: 0,
                    dropped: 0,
                    refusals: 0,
                    waiting: None,
                }],
                consumers: vec![ConsumerStatus {
                    durable: "d".into(),
                    stream: "s".into(),
                    filter_subject: "f".into(),
                    pending: None,
                    ack_pending: None,
                    redelivered: None,
                    naks: 0,
                    error: None,
                }],
                references: vec![ReferenceStatus {
                    upstream: "u".into(),
                    product: "p".into(),
                    revision: 0,
                    stored: 0,
                    filtered: 0,
                    erased: 0,
                    malformed: 0,
                    last_applied: None,
                    error: None,
                }],
            },
        }
    }

    /// The `v1` contract: these keys, no more, no fewer. Adding a key is
    /// allowed within v1 (add it here too); renaming or removing one is
    /// `/status/v2`.
    #[test]
    fn the_v1_shape_is_the_golden_key_set() {
        let value = serde_json::to_value(full()).expect("serializes");
        let golden = include_str!("status_v1_keys.txt");
        let want: Vec<&str> = golden
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(key_paths(&value), want);
        // Every document reads back as itself (the CLI's side).
        let back: NodeStatus = serde_json::from_value(value).expect("reads back");
        assert_eq!(back, full());
    }
}
