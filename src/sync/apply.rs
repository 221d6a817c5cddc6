//! Aggregator mode: applying envelopes from edges, exactly once in effect.
//!
//! Per (origin, link, lane, product) a high-water mark — the highest
//! sequence number applied — is stored as a source offset
//! (`syncp:<origin>:<lane>:<product>:<link>`; origins and product names
//! contain no `:`) in the same store transaction as the records it covers,
//! so a crash keeps both or neither. A redelivered envelope (the edge did
//! not see our answer) finds its records at or below the mark and skips
//! them: at-least-once on the wire, exactly-once in effect. Marks are per
//! product because an edge passes over a product this node refused for
//! now and sends the others' later entries first. A store written by an
//! older version has one mark per lane (`sync:<origin>:<lane>:<link>`): it
//! still counts, as a floor under every product's mark. Envelopes are
//! applied one at a time (one lock), so check and write never interleave.
//!
//! Each instance is stored with its origin node (`origin.source` =
//! `sync:<origin node id>`). **Conflicts** between edges writing the same
//! entity are last-writer-wins by (event time, origin node id), the
//! store's merge rule: a record older than the instance's event time — or
//! as old, from a smaller origin id — does not overwrite the state (it only
//! fills fields the instance lacks, and goes to history).
//!
//! **Redeliveries from a shared JetStream consumer.** First deliveries of
//! one (origin, link, lane, product) reach any one node in ascending
//! order, so the high-water mark holds for them. A *redelivered* message
//! (not acknowledged in time: its node crashed, or it was refused for now)
//! may reach this node after later envelopes of the same key were applied
//! here — by then the mark is above it, though this node never applied it.
//! So a mark fed from JetStream also keeps the last [`RECENT_ENVELOPES`]
//! envelopes applied under it (first sequence number, and up to where): a
//! redelivery is held against that list, not against the mark — what this
//! node applied of it is skipped, the rest applied. The list lives in the
//! same stored value as the mark (written with the records, so a crash
//! keeps both or neither); a value of 8 bytes (older versions, and links
//! over HTTPS or MQTT, which deliver in order) is a bare mark.
//!
//! A tombstone erases the entity (a no-op when it is already gone); its
//! mark is written right after, so a crash in between re-erases, which is
//! harmless.
//!
//! A record of a product this node does not know (yet: its definition may
//! arrive with the next reload, which ingestion follows) is **refused, and
//! the refusal is never an acknowledgement**: what came before it in the
//! envelope is applied with its mark, the mark does not move past it, and
//! the envelope fails with [`ApplyError::UnknownProduct`] (HTTP 409, code
//! `unknown_product`; over MQTT, no PUBACK). The edge keeps the entries in
//! its outbox and sends them again, with back-off, until this node knows
//! the product (its other products go on meanwhile); each refusal is
//! counted (`meshlet_sync_refused_total{reason="unknown_product"}`) and
//! logged.

use std::sync::Arc;

use tokio::sync::Mutex;

use super::envelope::{Envelope, EnvelopeError, EnvelopeRecord};
use super::metrics::SyncMetrics;
use crate::ingest::Ingestor;
use crate::record::{Origin, Record, Timestamp};
use crate::store::{IngestBatch, IngestRecord, SourceOffset, StoreError, SYNC_ORIGIN_PREFIX};
use crate::store::{WriteError, WriteJob};

/// Why an envelope was not applied. Its sender must retry (or, for
/// [`ApplyError::Envelope`], fix what it sends).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("write: {0}")]
    Write(#[from] WriteError),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Not applied, and not to be acknowledged: the sender keeps the
    /// records and sends them again once this node knows the product.
    #[error("the aggregator does not know product `{product}` (sent by `{origin}`): its records wait at the edge until a definition of it is loaded on the aggregator")]
    UnknownProduct { origin: String, product: String },
}

/// What one envelope did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub applied: usize,
    pub duplicates: usize,
}

/// Applies envelopes to the local store.
pub struct Receiver {
    ingestor: Ingestor,
    metrics: Arc<SyncMetrics>,
    one_at_a_time: Mutex<()>,
    /// Per origin: last seen, lag, pending per link. Bounded by the number
    /// of edges that sent a valid envelope.
    nodes: std::sync::Mutex<std::collections::BTreeMap<String, Seen>>,
}

#[derive(Clone, Default)]
struct Seen {
    at: Option<Timestamp>,
    newest_event: Option<Timestamp>,
    pending: std::collections::BTreeMap<String, u64>,
}

/// The mark of one (origin, link, lane) as versions before per-product
/// marks kept it: it covers every product of the lane. Read, never
/// written any more.
fn lane_mark_source(origin: &str, link: &str, lane: u8) -> String {
    format!("sync:{origin}:{lane}:{link}")
}

/// The mark of one (origin, link, lane, product). Product names contain
/// no `:` and origins none either; the link comes last, so no two keys
/// meet, and the `syncp:` prefix keeps them apart from lane marks.
fn mark_source(origin: &str, link: &str, lane: u8, product: &str) -> String {
    format!("syncp:{origin}:{lane}:{product}:{link}")
}

/// Envelopes remembered under each mark, for redeliveries (16 bytes each).
pub const RECENT_ENVELOPES: usize = 64;

/// A high-water mark and the envelopes last applied under it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Mark {
    /// The highest sequence number applied.
    high: u64,
    /// (first sequence number of an envelope, last of its records applied
    /// here), oldest first, at most [`RECENT_ENVELOPES`].
    recent: Vec<(u64, u64)>,
}

impl Mark {
    /// 8 bytes of mark, then 16 per recent envelope (big-endian); a value
    /// that does not parse counts as no mark at all beyond its first 8 bytes.
    fn decode(bytes: &[u8]) -> Mark {
        let word = |at: usize| -> Option<u64> {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let high = word(0).unwrap_or(0);
        let recent = (0..(bytes.len().saturating_sub(8)) / 16)
            .filter_map(|i| Some((word(8 + 16 * i)?, word(16 + 16 * i)?)))
            .collect();
        Mark { high, recent }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 16 * self.recent.len());
        out.extend_from_slice(&self.high.to_be_bytes());
        for (first, upto) in &self.recent {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&upto.to_be_bytes());
        }
        out
    }

    /// Records `first_seq`'s envelope as applied up to `upto`; `remember`
    /// it only where redeliveries may come out of order (JetStream), so
    /// the marks of HTTPS and MQTT links stay 8 bytes.
    fn applied(&mut self, first_seq: u64, upto: u64, remember: bool) {
        self.high = self.high.max(upto);
        if !remember {
            return;
        }
        self.recent.retain(|(first, _)| *first != first_seq);
        self.recent.push((first_seq, upto));
        if self.recent.len() > RECENT_ENVELOPES {
            let excess = self.recent.len() - RECENT_ENVELOPES;
            self.recent.drain(..excess);
        }
    }

    /// What of the envelope starting at `first_seq` this node applied (0:
    /// none it remembers).
    fn applied_of(&self, first_seq: u64) -> u64 {
        self.recent
            .iter()
            .find(|(first, _)| *first == first_seq)
            .map_or(0, |(_, upto)| *upto)
    }
}

/// How an envelope reached this node.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    /// HTTPS: each link's envelopes come in sequence order.
    InOrder,
    /// A JetStream durable or an MQTT session; `redelivered` when delivered
    /// before (JetStream's count above 1, MQTT's DUP flag): a broker may
    /// redeliver a refused envelope after later ones were applied.
    JetStream { redelivered: bool },
}

fn read_mark(store: &crate::store::Store, source: &str) -> Result<Mark, StoreError> {
    Ok(store
        .source_offset(source)?
        .map(|bytes| Mark::decode(&bytes))
        .unwrap_or_default())
}

/// The duplicate filter: the records above the high-water mark `mark`,
/// and how many were at or below it (already applied: a redelivery, or an
/// envelope that overlaps one applied before). Sequence numbers may jump
/// (the edge's budget dropped or coalesced entries in between); a record
/// below the mark is never applied again, whatever order envelopes come in.
/// `mark_of` is the mark that covers a record (its product's).
fn above_mark(
    records: Vec<EnvelopeRecord>,
    mark_of: impl Fn(&EnvelopeRecord) -> u64,
) -> (Vec<EnvelopeRecord>, usize) {
    let total = records.len();
    let fresh: Vec<EnvelopeRecord> = records.into_iter().filter(|r| r.seq > mark_of(r)).collect();
    let duplicates = total - fresh.len();
    (fresh, duplicates)
}

/// What the aggregator knows of one edge (since it started).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeStatus {
    pub id: String,
    /// When its last envelope arrived (RFC 3339).
    pub last_seen: String,
    /// Arrival time minus the event time of the newest record it sent:
    /// how far behind this node's view of the edge is.
    pub lag_seconds: f64,
    /// Entries the edge still held for its links after its last envelopes.
    pub pending: u64,
}

impl Receiver {
    pub fn new(ingestor: Ingestor, metrics: Arc<SyncMetrics>) -> Receiver {
        Receiver {
            ingestor,
            metrics,
            one_at_a_time: Mutex::new(()),
            nodes: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    fn note_node(&self, envelope: &Envelope) {
        let now = Timestamp::now();
        let newest = envelope.records.iter().map(|r| r.event_time).max();
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let seen = nodes.entry(envelope.origin.clone()).or_default();
        seen.at = Some(now);
        seen.newest_event = seen.newest_event.max(newest);
        seen.pending.insert(envelope.link.clone(), envelope.pending);
    }

    /// The edges this aggregator heard from, by id.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .map(|(id, seen)| NodeStatus {
                id: id.clone(),
                last_seen: seen.at.map(|t| t.to_string()).unwrap_or_default(),
                lag_seconds: match (seen.at, seen.newest_event) {
                    (Some(at), Some(e)) => (at.0 - e.0).max(0) as f64 / 1e6,
                    _ => 0.0,
                },
                pending: seen.pending.values().sum(),
            })
            .collect()
    }

    /// Decodes and applies one envelope; returns once what it applied is
    /// durable.
    pub async fn apply_bytes(&self, bytes: &[u8]) -> Result<Applied, ApplyError> {
        let envelope = match Envelope::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.refused("bad_envelope", &e.to_string());
                return Err(e.into());
            }
        };
        self.apply(envelope).await
    }

    /// As [`Receiver::apply_bytes`], for a message the transport delivers
    /// again (`redelivered`: JetStream's delivery count above 1): it is
    /// held against the envelopes this node remembers applying, not
    /// against the high-water mark (see the module doc).
    pub async fn apply_delivery(
        &self,
        bytes: &[u8],
        redelivered: bool,
    ) -> Result<Applied, ApplyError> {
        let envelope = match Envelope::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.refused("bad_envelope", &e.to_string());
                return Err(e.into());
            }
        };
        self.apply_with(envelope, Delivery::JetStream { redelivered })
            .await
    }

    pub async fn apply(&self, envelope: Envelope) -> Result<Applied, ApplyError> {
        self.apply_with(envelope, Delivery::InOrder).await
    }

    async fn apply_with(
        &self,
        envelope: Envelope,
        delivery: Delivery,
    ) -> Result<Applied, ApplyError> {
        let remember = matches!(delivery, Delivery::JetStream { .. });
        let redelivered = matches!(delivery, Delivery::JetStream { redelivered: true });
        let _one = self.one_at_a_time.lock().await;
        let store = self.ingestor.store().clone();
        self.note_node(&envelope);
        let (from, link, lane) = (&envelope.origin, &envelope.link, envelope.lane);
        let lane_mark = read_mark(&store, &lane_mark_source(from, link, lane))?.high;
        // Each product's mark, read once per envelope; only products this
        // node knows have one.
        let mut marks: std::collections::HashMap<String, Mark> = Default::default();
        for record in &envelope.records {
            if !marks.contains_key(&record.product) {
                let mark = if self.ingestor.products().get(&record.product).is_some() {
                    read_mark(&store, &mark_source(from, link, lane, &record.product))?
                } else {
                    Mark::default()
                };
                marks.insert(record.product.clone(), mark);
            }
        }
        let first_seq = envelope.first_seq;
        // What covers a record: its product's mark (at least the lane's,
        // from older versions) — or, for a redelivery, what this node
        // remembers applying of this very envelope.
        let covered: std::collections::HashMap<String, u64> = marks
            .iter()
            .map(|(product, mark)| {
                let floor = if redelivered {
                    mark.applied_of(first_seq)
                } else {
                    mark.high.max(lane_mark)
                };
                (product.clone(), floor)
            })
            .collect();
        let origin = Origin::new(format!("{SYNC_ORIGIN_PREFIX}{}", envelope.origin));
        let mut outcome = Applied::default();
        let (fresh, duplicates) = above_mark(envelope.records, |r| {
            covered.get(&r.product).copied().unwrap_or(lane_mark)
        });
        outcome.duplicates = duplicates;
        let mut i = 0;
        while i < fresh.len() {
            let head = &fresh[i];
            let known = self.ingestor.products().get(&head.product).is_some();
            if !known {
                // What came before is applied and marked; this record and
                // everything after it stay owed by the sender.
                self.metrics.refused(
                    "unknown_product",
                    &format!("origin `{}`, product `{}`", envelope.origin, head.product),
                );
                self.metrics
                    .received(&envelope.origin, outcome.applied, outcome.duplicates);
                return Err(ApplyError::UnknownProduct {
                    origin: envelope.origin.clone(),
                    product: head.product.clone(),
                });
            }
            if head.tombstone {
                let (product, entity, at) =
                    (head.product.clone(), head.entity.clone(), head.event_time);
                let erase_store = store.clone();
                let who = origin.clone();
                tokio::task::spawn_blocking(move || {
                    erase_store.erase_at(&product, &entity, &who, at)
                })
                .await
                .map_err(|_| ApplyError::ShuttingDown)??;
                let source = mark_source(from, link, lane, &head.product);
                let mark = marks.entry(head.product.clone()).or_default();
                mark.applied(first_seq, head.seq, remember);
                let position = mark.encode();
                self.write(&head.product, Vec::new(), &source, position)
                    .await?;
                outcome.applied += 1;
                i += 1;
                continue;
            }
            // A run of upserts of one product: one atomic write with its mark.
            let mut j = i;
            while j < fresh.len() && !fresh[j].tombstone && fresh[j].product == head.product {
                j += 1;
            }
            let records: Vec<IngestRecord> = fresh[i..j]
                .iter()
                .map(|r| IngestRecord {
                    record: Record {
                        entity: r.entity.clone(),
                        fields: r.fields.clone(),
                        event_time: r.event_time,
                        origin: origin.clone(),
                    },
                    fingerprint: None,
                    check_duplicate: false,
                })
                .collect();
            let last = fresh[j - 1].seq;
            outcome.applied += records.len();
            let source = mark_source(from, link, lane, &head.product);
            let mark = marks.entry(head.product.clone()).or_default();
            mark.applied(first_seq, last, remember);
            let position = mark.encode();
            self.write(&head.product, records, &source, position)
                .await?;
            i = j;
        }
        self.metrics
            .received(&envelope.origin, outcome.applied, outcome.duplicates);
        Ok(outcome)
    }

    /// One durable write of `records` with the mark (encoded) `position`.
    async fn write(
        &self,
        product: &str,
        records: Vec<IngestRecord>,
        source: &str,
        position: Vec<u8>,
    ) -> Result<(), ApplyError> {
        let carrier = product.to_string();
        let limits = self
            .ingestor
            .products()
            .get(&carrier)
            .map(|p| self.ingestor.store_limits(p))
            .unwrap_or_default();
        let job = WriteJob {
            product: carrier,
            batch: IngestBatch {
                records,
                quarantine: Vec::new(),
                source_offset: Some(SourceOffset {
                    source: source.to_string(),
                    position,
                }),
                resolve_quarantine: Vec::new(),
                idempotency: None,
            },
            limits,
            retained: false,
            received_at: Timestamp::now(),
        };
        self.ingestor.writer().submit(job).await.wait().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::{load_path, LoadContext};
    use crate::record::{Fields, Value};
    use crate::store::{Store, StoreConfig};
    use crate::sync::envelope::{EnvelopeRecord, ENVELOPE_FORMAT};

    const PRODUCT: &str = "product: p\nversion: 1\ndomain: d\nowner: o@example.com\nkey: id\nfields:\n  id: { type: string }\n  n: { type: int }\n";

    fn envelope(product: &str, seqs: std::ops::RangeInclusive<u64>) -> Envelope {
        let records: Vec<EnvelopeRecord> = seqs
            .map(|seq| EnvelopeRecord {
                seq,
                product: product.to_string(),
                definition_version: 1,
                entity: "e".to_string(),
                event_time: Timestamp(i64::try_from(seq).unwrap_or(0) * 1_000_000),
                fields: Fields::from_iter([("n".to_string(), Value::Int(seq as i64))]),
                tombstone: false,
            })
            .collect();
        Envelope {
            format: ENVELOPE_FORMAT,
            origin: "edge".into(),
            link: "central".into(),
            lane: 1,
            pending: 0,
            first_seq: records.first().map_or(0, |r| r.seq),
            last_seq: records.last().map_or(0, |r| r.seq),
            records,
        }
    }

    /// A store written before marks were per product keeps its lane mark:
    /// it is the floor of every product's mark, so nothing it covers is
    /// applied twice after the upgrade; an unknown product is refused
    /// without moving any mark, and the others go on past it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lane_mark_of_older_stores_is_a_floor_and_refusals_move_no_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.yaml"), PRODUCT).expect("write");
        let products = Arc::new(
            load_path(&dir.path().join("p.yaml"), &LoadContext::default()).expect("loads"),
        );
        let store = Store::open(StoreConfig::new(dir.path().join("store"))).expect("opens");
        let tasks = tokio_util::task::TaskTracker::new();
        let runtime = crate::ingest::priority::IngestRuntime::start(0).expect("runtime");
        let ingestor = Ingestor::new(
            products,
            store.clone(),
            &crate::config::IngestSettings::default(),
            &tasks,
            &runtime,
        );
        // What an older version left: the lane's mark at 5.
        let job = WriteJob {
            product: "p".into(),
            batch: IngestBatch {
                source_offset: Some(SourceOffset {
                    source: lane_mark_source("edge", "central", 1),
                    position: 5u64.to_be_bytes().to_vec(),
                }),
                ..IngestBatch::default()
            },
            limits: Default::default(),
            retained: false,
            received_at: Timestamp::now(),
        };
        ingestor
            .writer()
            .submit(job)
            .await
            .wait()
            .await
            .expect("written");
        let receiver = Receiver::new(ingestor.clone(), Arc::new(SyncMetrics::default()));

        let applied = receiver.apply(envelope("p", 3..=7)).await.expect("applied");
        assert_eq!((applied.applied, applied.duplicates), (2, 3));
        let again = receiver.apply(envelope("p", 3..=7)).await.expect("applied");
        assert_eq!((again.applied, again.duplicates), (0, 5));

        let refused = receiver.apply(envelope("q", 8..=9)).await;
        assert!(
            matches!(&refused, Err(ApplyError::UnknownProduct { product, .. }) if product == "q"),
            "{refused:?}"
        );
        assert_eq!(
            store
                .source_offset(&mark_source("edge", "central", 1, "q"))
                .expect("read"),
            None,
            "a refusal writes no mark"
        );
        let later = receiver
            .apply(envelope("p", 10..=11))
            .await
            .expect("applied");
        assert_eq!(
            later.applied, 2,
            "other products go on past the refused one"
        );
        drop(receiver);
        drop(ingestor);
        tasks.close();
        tasks.wait().await;
        runtime.stop();
    }

    /// A redelivery from a shared JetStream consumer may come after later
    /// envelopes of its key were applied here: held against what this
    /// node remembers applying of it, not against the mark, it is applied
    /// (once), and a redelivery of what was applied here is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redelivery_below_the_mark_is_applied_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("p.yaml"), PRODUCT).expect("write");
        let products = Arc::new(
            load_path(&dir.path().join("p.yaml"), &LoadContext::default()).expect("loads"),
        );
        let store = Store::open(StoreConfig::new(dir.path().join("store"))).expect("opens");
        let tasks = tokio_util::task::TaskTracker::new();
        let runtime = crate::ingest::priority::IngestRuntime::start(0).expect("runtime");
        let ingestor = Ingestor::new(
            products,
            store.clone(),
            &crate::config::IngestSettings::default(),
            &tasks,
            &runtime,
        );
        let receiver = Receiver::new(ingestor.clone(), Arc::new(SyncMetrics::default()));
        let bytes = |e: Envelope| e.encode(1).expect("encodes");

        // 4..=6 first (1..=3 went to a node that died before its ack).
        let applied = receiver
            .apply_delivery(&bytes(envelope("p", 4..=6)), false)
            .await
            .expect("applied");
        assert_eq!((applied.applied, applied.duplicates), (3, 0));
        let late = receiver
            .apply_delivery(&bytes(envelope("p", 1..=3)), true)
            .await
            .expect("applied");
        assert_eq!(
            (late.applied, late.duplicates),
            (3, 0),
            "a redelivery below the mark that this node never applied is applied"
        );
        let again = receiver
            .apply_delivery(&bytes(envelope("p", 1..=3)), true)
            .await
            .expect("applied");
        assert_eq!((again.applied, again.duplicates), (0, 3));
        let again = receiver
            .apply_delivery(&bytes(envelope("p", 4..=6)), true)
            .await
            .expect("applied");
        assert_eq!((again.applied, again.duplicates), (0, 3));
        // First deliveries still go by the mark.
        let stale = receiver
            .apply_delivery(&bytes(envelope("p", 2..=3)), false)
            .await
            .expect("applied");
        assert_eq!((stale.applied, stale.duplicates), (0, 2));
        drop(receiver);
        drop(ingestor);
        tasks.close();
        tasks.wait().await;
        runtime.stop();
    }

    #[test]
    fn marks_round_trip_and_read_older_values() {
        let mut mark = Mark::default();
        for first in 0..(RECENT_ENVELOPES as u64 + 5) {
            mark.applied(first * 10, first * 10 + 3, true);
        }
        assert_eq!(mark.recent.len(), RECENT_ENVELOPES);
        assert_eq!(Mark::decode(&mark.encode()), mark);
        assert_eq!(mark.applied_of(0), 0, "the oldest were forgotten");
        assert_eq!(
            Mark::decode(&7u64.to_be_bytes()),
            Mark {
                high: 7,
                recent: Vec::new()
            }
        );
    }

    fn records(seqs: &[u64]) -> Vec<EnvelopeRecord> {
        seqs.iter()
            .map(|&seq| EnvelopeRecord {
                seq,
                product: "p".into(),
                definition_version: 1,
                entity: format!("e{seq}"),
                event_time: Timestamp::from_secs(seq as i64),
                fields: Fields::new(),
                tombstone: false,
            })
            .collect()
    }

    /// Envelopes in the order they arrive, through the filter and the mark
    /// the receiver stores after each: what is applied, and how many are
    /// counted as duplicates.
    fn deliver(envelopes: &[&[u64]]) -> (Vec<u64>, usize) {
        let mut mark = 0;
        let mut applied = Vec::new();
        let mut duplicates = 0;
        for seqs in envelopes {
            let (fresh, skipped) = above_mark(records(seqs), |_| mark);
            duplicates += skipped;
            if let Some(last) = fresh.last() {
                mark = last.seq;
            }
            applied.extend(fresh.iter().map(|r| r.seq));
        }
        (applied, duplicates)
    }

    #[test]
    fn a_redelivered_envelope_is_applied_once() {
        assert_eq!(deliver(&[&[1, 2, 3], &[1, 2, 3]]), (vec![1, 2, 3], 3));
        assert_eq!(
            deliver(&[&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]]),
            (vec![1, 2, 3], 6)
        );
    }

    #[test]
    fn gaps_in_sequence_numbers_are_applied() {
        // 4..=6 were coalesced or dropped at the edge: nothing waits for them.
        assert_eq!(
            deliver(&[&[1, 2, 3], &[7, 9], &[10]]),
            (vec![1, 2, 3, 7, 9, 10], 0)
        );
        assert_eq!(deliver(&[&[5, 1000]]), (vec![5, 1000], 0));
    }

    #[test]
    fn overlapping_and_reordered_envelopes_apply_only_what_is_new() {
        // A resend that grew: the old part is duplicate, the new part applied.
        assert_eq!(
            deliver(&[&[1, 2, 3], &[2, 3, 4, 5]]),
            (vec![1, 2, 3, 4, 5], 2)
        );
        // A stale redelivery arriving after a newer envelope: all skipped,
        // none applied twice, and the next new envelope still applies.
        assert_eq!(
            deliver(&[&[1, 2], &[3, 4], &[1, 2], &[5]]),
            (vec![1, 2, 3, 4, 5], 2)
        );
        // Reordered between two redeliveries of the same pair.
        assert_eq!(
            deliver(&[&[3, 4], &[1, 2], &[3, 4], &[5, 6]]),
            (vec![3, 4, 5, 6], 4)
        );
    }

    #[test]
    fn the_mark_is_the_boundary_itself() {
        let (fresh, duplicates) = above_mark(records(&[4, 5, 6]), |_| 5);
        assert_eq!(fresh.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![6]);
        assert_eq!(duplicates, 2);
        let (fresh, duplicates) = above_mark(records(&[1, 2]), |_| 0);
        assert_eq!((fresh.len(), duplicates), (2, 0));
    }

    #[test]
    fn marks_are_per_origin_lane_link_and_product() {
        let sources = [
            mark_source("edge-1", "central", 0, "p"),
            mark_source("edge-1", "central", 1, "p"),
            mark_source("edge-1", "backup", 0, "p"),
            mark_source("edge-2", "central", 0, "p"),
            mark_source("edge-1", "central", 0, "q"),
            lane_mark_source("edge-1", "central", 0),
        ];
        let distinct: std::collections::BTreeSet<&String> = sources.iter().collect();
        assert_eq!(distinct.len(), sources.len(), "{sources:?}");
    }

    /// Each record is held against its own product's mark.
    #[test]
    fn each_record_is_filtered_by_its_products_mark() {
        let mut mixed = records(&[3, 4, 5, 6]);
        mixed[1].product = "q".into();
        mixed[3].product = "q".into();
        let (fresh, duplicates) = above_mark(mixed, |r| if r.product == "q" { 5 } else { 3 });
        let kept: Vec<(u64, &str)> = fresh.iter().map(|r| (r.seq, r.product.as_str())).collect();
        assert_eq!(kept, vec![(5, "p"), (6, "q")]);
        assert_eq!(duplicates, 2);
    }
}
