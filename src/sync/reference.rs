//! Reference data flowing down (`sync: - from: <upstream>`): a product's
//! instances published centrally into a JetStream key-value bucket, and
//! replicated into each edge's store, so an edge serves them while offline.
//!
//! **Central side.** An upstream with `publish = "reference"` turns the
//! sender's envelopes into key-value writes ([`put_envelope`]): each record
//! is put under `<product>.<entity token>` (a tombstone deletes the key),
//! and the outbox entry goes only once every put of its envelope is
//! acknowledged by JetStream — the same at-least-once as the sync stream;
//! a repeated put only moves the key's revision. Any node can publish so:
//! an aggregator whose `to:` rule names the reference upstream republishes
//! what its edges send it, a head-office node publishes what it is given.
//!
//! **Edge side.** One task per `from:` rule watches the bucket's keys of
//! its product from the revision after the last one applied
//! (`reference_nats`), or long-polls an aggregator's
//! `GET /sync/v1/reference/<product>?after=<revision>` (`reference_http`).
//! Both hand pages of [`ReferenceEntry`] to [`Applier::apply`], which
//! evaluates the rule's `where` on this node (`${node_id}` and
//! `${node_site}` put in), keeps the rule's fields, applies its masks and
//! writes the page as one atomic write **with the page's last revision as
//! the source position** (`reference:<upstream>:<product>`). A crash
//! before the write re-reads the page; after it, resumes past it. The
//! bucket keeps one value per key (history 1), so an edge that was away
//! reads only each key's newest value, however many updates it missed.
//!
//! An instance that no longer matches the `where` (it moved to another
//! site) is erased here, as an erased one is (a tombstone). Records carry
//! the origin `reference:<upstream>`.
//!
//! MQTT-only sites: an MQTT broker has no "everything after revision N"
//! (retained messages give the newest value per topic but no revision to
//! resume from, and no deletes that survive a reconnect without a clean
//! session), so a `from:` rule needs a `nats://`/`tls://` or `https://`
//! upstream; `meshlet check` says so for an `mqtt://` one.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::metrics::SyncMetrics;
use crate::expr::RowMeta;
use crate::ingest::Ingestor;
use crate::policy::masking::{MaskSecret, Masker};
use crate::product::{Product, ReferenceRule, RowFilter};
use crate::record::{Fields, Origin, Record, Timestamp};
use crate::store::{IngestBatch, IngestRecord, SourceOffset, Store, StoreError, WriteJob};

/// The content type of a `GET /sync/v1/reference/…` answer.
pub const PAGE_CONTENT_TYPE: &str = "application/vnd.meshlet.reference+msgpack";
/// Most entries in one page (one store write).
pub const MAX_PAGE: usize = 500;

/// One instance as published (the key-value value; MessagePack with names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceValue {
    pub entity: String,
    pub event_time: Timestamp,
    /// The publishing node's definition version of the product.
    pub definition_version: u32,
    pub fields: Fields,
}

impl ReferenceValue {
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec_named(self).map_err(|e| e.to_string())
    }

    pub fn decode(bytes: &[u8]) -> Result<ReferenceValue, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// One change of the bucket: a key's new value, or its deletion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceEntry {
    /// The key-value revision (the bucket stream's sequence).
    pub revision: u64,
    pub entity: String,
    /// `None`: the key was deleted (the entity erased centrally).
    pub value: Option<ReferenceValue>,
}

/// A long-poll answer: the entries after `after`, oldest first, and the
/// revision to ask after next time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferencePage {
    pub entries: Vec<ReferenceEntry>,
    pub revision: u64,
}

/// The key of `entity` of `product` in the bucket: the entity as it is
/// when it is made of `[A-Za-z0-9_-]`, else `=` and its base64url (a
/// key-value key allows few characters, and `.` separates tokens).
pub fn kv_key(product: &str, entity: &str) -> String {
    let plain = !entity.is_empty()
        && entity
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{product}.{entity}")
    } else {
        use base64::Engine as _;
        format!(
            "{product}.={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(entity)
        )
    }
}

/// The entity of a bucket key of `product` (inverse of [`kv_key`]).
pub fn entity_of_key(product: &str, key: &str) -> Option<String> {
    let token = key.strip_prefix(product)?.strip_prefix('.')?;
    match token.strip_prefix('=') {
        Some(encoded) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(token.to_string()),
    }
}

/// The store position of a (upstream, product) replica.
pub fn position_source(upstream: &str, product: &str) -> String {
    format!("reference:{upstream}:{product}")
}

/// The last revision applied to this store from `upstream` for `product`
/// (0 when none).
pub fn last_revision(store: &Store, upstream: &str, product: &str) -> Result<u64, StoreError> {
    Ok(store
        .source_offset(&position_source(upstream, product))?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Why a page was not applied (it is read again).
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("product `{0}` is no longer loaded")]
    UnknownProduct(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("write: {0}")]
    Write(#[from] crate::store::WriteError),
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What one page did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageOutcome {
    pub stored: usize,
    /// Entries whose instance does not match the rule's `where` here.
    pub filtered: usize,
    /// Entries that erased an instance here (deleted centrally, or moved
    /// out of the `where`).
    pub erased: usize,
    /// Values that do not decode or name another entity than their key.
    pub malformed: usize,
}

/// Applies pages of one `from:` rule of one product to the local store.
pub struct Applier {
    pub upstream: String,
    pub product: String,
    rule: ReferenceRule,
    filter: Option<RowFilter>,
    ingestor: Ingestor,
    secret: MaskSecret,
    metrics: Arc<SyncMetrics>,
}

impl Applier {
    /// The applier of `rule` on `product`; an error when its `where` needs
    /// a node setting that is missing.
    pub fn new(
        product: &Product,
        rule: &ReferenceRule,
        node_id: &str,
        node_site: Option<&str>,
        ingestor: Ingestor,
        secret: MaskSecret,
        metrics: Arc<SyncMetrics>,
    ) -> Result<Applier, String> {
        let filter = rule.row_filter(node_id, node_site)?;
        Ok(Applier {
            upstream: rule.from.clone(),
            product: product.name.clone(),
            rule: rule.clone(),
            filter,
            ingestor,
            secret,
            metrics,
        })
    }

    /// The last revision applied (0: none yet).
    pub fn last_revision(&self) -> Result<u64, StoreError> {
        last_revision(self.ingestor.store(), &self.upstream, &self.product)
    }

    /// Applies `entries` (ascending revisions) and records `upto` (at
    /// least their last revision: entries skipped as malformed before
    /// count) with them; nothing is applied when it fails.
    pub async fn apply(
        &self,
        entries: Vec<ReferenceEntry>,
        upto: u64,
        malformed: usize,
    ) -> Result<PageOutcome, ReferenceError> {
        let last = entries.last().map_or(upto, |e| e.revision.max(upto));
        let products = self.ingestor.products();
        let product = products
            .get(&self.product)
            .ok_or_else(|| ReferenceError::UnknownProduct(self.product.clone()))?;
        let masker = Masker::new(&self.rule.masks, &product.key, &self.secret);
        let origin = Origin::new(format!("reference:{}", self.upstream));
        let mut outcome = PageOutcome {
            malformed,
            ..PageOutcome::default()
        };
        // The newest entry per entity: a page may hold several of one key
        // (a watch from an old revision sees each put).
        let mut newest: indexmap::IndexMap<String, ReferenceEntry> = indexmap::IndexMap::new();
        for entry in entries {
            newest.shift_remove(&entry.entity);
            newest.insert(entry.entity.clone(), entry);
        }
        let mut records = Vec::new();
        let mut erase = Vec::new();
        for (entity, entry) in newest {
            let Some(value) = entry.value else {
                erase.push((entity, None));
                continue;
            };
            if value.entity != entity {
                outcome.malformed += 1;
                continue;
            }
            let meta = RowMeta {
                version: 0,
                first_seen: value.event_time,
                last_seen: value.event_time,
                event_time: value.event_time,
            };
            if self
                .filter
                .as_ref()
                .is_some_and(|f| !f.eval_row(&value.fields, &meta))
            {
                outcome.filtered += 1;
                erase.push((entity, Some(value.event_time)));
                continue;
            }
            // Only what this node's definition declares, and what the
            // rule keeps, masked before it reaches the store.
            let mut fields: Fields = value
                .fields
                .into_iter()
                .filter(|(name, _)| {
                    product.fields.contains_key(name)
                        && self
                            .rule
                            .fields
                            .as_ref()
                            .is_none_or(|keep| keep.iter().any(|k| k == name))
                })
                .collect();
            masker.apply_fields(&mut fields);
            records.push(IngestRecord {
                record: Record {
                    entity: masker.entity_key(&entity),
                    fields,
                    event_time: value.event_time,
                    origin: origin.clone(),
                },
                fingerprint: None,
                check_duplicate: false,
            });
        }
        let store = self.ingestor.store().clone();
        for (entity, at) in erase {
            let (store, product, who) = (store.clone(), self.product.clone(), origin.clone());
            let at = at.unwrap_or_else(Timestamp::now);
            let entity = masker.entity_key(&entity);
            let erased =
                tokio::task::spawn_blocking(move || store.erase_at(&product, &entity, &who, at))
                    .await
                    .map_err(|_| ReferenceError::ShuttingDown)??;
            outcome.erased += usize::from(erased);
        }
        outcome.stored = records.len();
        let job = WriteJob {
            product: self.product.clone(),
            batch: IngestBatch {
                records,
                quarantine: Vec::new(),
                source_offset: Some(SourceOffset {
                    source: position_source(&self.upstream, &self.product),
                    position: last.to_be_bytes().to_vec(),
                }),
                resolve_quarantine: Vec::new(),
                idempotency: None,
            },
            limits: self.ingestor.store_limits(product),
            retained: false,
            received_at: Timestamp::now(),
        };
        self.ingestor.writer().submit(job).await.wait().await?;
        self.metrics
            .reference_applied(&self.upstream, &self.product, last, &outcome);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(kv_key("site_config", "line-7_a"), "site_config.line-7_a");
        for entity in ["line-7_a", "a.b", "x y/ü", "=", ""] {
            let key = kv_key("p", entity);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-=.".contains(&b)));
            assert_eq!(entity_of_key("p", &key).as_deref(), Some(entity));
        }
        assert_eq!(entity_of_key("q", "p.a"), None);
    }

    #[test]
    fn values_round_trip() {
        let mut fields = Fields::new();
        fields.insert("site".into(), crate::record::Value::String("north".into()));
        let value = ReferenceValue {
            entity: "e1".into(),
            event_time: Timestamp(1_700_000_000_000_000),
            definition_version: 2,
            fields,
        };
        let bytes = value.encode().expect("encodes");
        assert_eq!(ReferenceValue::decode(&bytes).expect("decodes"), value);
        assert!(ReferenceValue::decode(b"\xc1junk").is_err());
    }
}
