//! Sync digests: what an upstream should hold of this node (edge side,
//! *sent* digests, per upstream and product) and what this node holds of
//! each edge (aggregator side, *held* digests, per origin and product),
//! kept so that edge and aggregator can prove they agree without
//! comparing everything.
//!
//! A digest is 256 **buckets** (a key's bucket is the first byte of the
//! xxh3 hash of its entity key); a bucket is the XOR of its keys' **leaf**
//! hashes and their count. A leaf is `xxh3_128(entity, event time, fields)`
//! — the state the upstream holds (mode `latest`: the projected, masked
//! state the edge sent; its entity key as sent). XOR makes each change
//! O(1): the old leaf goes out, the new one in. Comparing two digests
//! costs 256 buckets; a bucket that differs lists its leaves (about n/256),
//! and the keys whose leaves differ are exactly the entities to send again.
//! xxh3 is not a cryptographic hash: the digest finds lost and stale
//! records, it does not stand against someone forging both sides.
//!
//! Both are **maintained in the write transaction** that changes what they
//! cover, so a crash keeps both or neither: the sent digest by the outbox
//! (`OutboxTx::push`: every `latest` item and tombstone), the held digest
//! by ingestion (every change applied to state by a `sync:<origin>`
//! record) and by entity removal (erasure, expiry). They live in the
//! `outbox_index` tree, which every one of those transactions already
//! writes (tag `G`, apart from the outbox's own `S`, `E`, `L`):
//!
//! - `G s|h l part(scope) part(product) bucket entity` → leaf (16 bytes
//!   big-endian), then, for sent leaves, the local entity key (the sent
//!   one may be pseudonymised);
//! - `G s|h b part(scope) part(product) bucket` → XOR (16) | count (u64 BE);
//! - `G h w part(product) entity` → the origin that holds the entity (so a
//!   change from another origin moves its leaf);
//! - `G s|h v` → the format version, written by a rebuild: a store without
//!   it (written by an older version) is rebuilt from its instances.
//!
//! A rebuild ([`Store::rebuild_held_digests`],
//! [`Store::rebuild_sent_digests`]) recomputes from the instances under
//! the writer lock; the aggregator does it at every start with
//! `aggregator.digest_rebuild_on_start`, so records lost or edited behind
//! the store's back (a restore, a disk fault, an offline edit) show up in
//! its digest (otherwise only once, for a store that predates them).

use serde::{Deserialize, Serialize};

use super::codec;
use super::hot::TxTree;
use super::tx::{abort, TxResult};
use super::{Change, OutboxItem, Store, StoreError};
use crate::record::{Fields, Record, Timestamp};

/// Buckets per digest.
pub const BUCKETS: usize = 256;
const TAG: u8 = b'G';
const SENT: u8 = b's';
const HELD: u8 = b'h';
const LEAF: u8 = b'l';
const BUCKET: u8 = b'b';
const OWNER: u8 = b'w';
const VERSION: u8 = b'v';
const FORMAT: u8 = 1;

/// Whose digest: what this node sent an upstream, or holds of an origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Edge side: what `upstream` should hold of this node.
    Sent(&'a str),
    /// Aggregator side: what this node holds of edge `origin`.
    Held(&'a str),
}

impl Scope<'_> {
    fn kind(self) -> u8 {
        match self {
            Scope::Sent(_) => SENT,
            Scope::Held(_) => HELD,
        }
    }

    fn name(&self) -> &str {
        match self {
            Scope::Sent(n) | Scope::Held(n) => n,
        }
    }
}

/// One non-empty bucket of a digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    pub bucket: u8,
    /// XOR of the bucket's leaves (hex on the wire: JSON has no u128).
    #[serde(with = "hex128")]
    pub xor: u128,
    pub count: u64,
}

/// One key of a bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// The entity key as the upstream holds it.
    pub entity: String,
    #[serde(with = "hex128")]
    pub hash: u128,
    /// The local entity key (sent digests only; `None` on the wire).
    #[serde(skip)]
    pub local: Option<String>,
}

mod hex128 {
    pub fn serialize<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// The bucket of an entity key (as the upstream sees it).
pub fn bucket_of(entity: &str) -> u8 {
    (xxhash_rust::xxh3::xxh3_64(entity.as_bytes()) >> 56) as u8
}

/// The leaf of one entity's state: its key, event time and fields
/// (MessagePack of the sorted field map, so equal states hash equal).
pub fn leaf_hash(entity: &str, event_time: Timestamp, fields: &Fields) -> u128 {
    let mut bytes = Vec::with_capacity(entity.len() + 64);
    bytes.extend_from_slice(&(entity.len() as u64).to_be_bytes());
    bytes.extend_from_slice(entity.as_bytes());
    bytes.extend_from_slice(&event_time.0.to_be_bytes());
    // Encoding a field map cannot fail (strings and plain values); an
    // error would give an empty encoding, i.e. a leaf that never matches
    // a real one — a mismatch, never a false agreement on data.
    bytes.extend_from_slice(&codec::encode(fields).unwrap_or_default());
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

fn part(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&bytes[..usize::from(len)]);
}

fn scoped(scope: Scope, what: u8, product: &str) -> Vec<u8> {
    let mut key = vec![TAG, scope.kind(), what];
    part(&mut key, scope.name());
    part(&mut key, product);
    key
}

fn leaf_key(scope: Scope, product: &str, entity: &str) -> Vec<u8> {
    let mut key = scoped(scope, LEAF, product);
    key.push(bucket_of(entity));
    key.extend_from_slice(entity.as_bytes());
    key
}

fn bucket_key(scope: Scope, product: &str, bucket: u8) -> Vec<u8> {
    let mut key = scoped(scope, BUCKET, product);
    key.push(bucket);
    key
}

fn owner_key(product: &str, entity: &str) -> Vec<u8> {
    let mut key = vec![TAG, HELD, OWNER];
    part(&mut key, product);
    key.extend_from_slice(entity.as_bytes());
    key
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::CorruptBookkeeping {
        owner: "sync digest".into(),
        what,
        detail: "wrong length".into(),
    }
}

fn decode_bucket(bytes: &[u8]) -> Result<(u128, u64), StoreError> {
    let xor = bytes
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| corrupt("digest bucket"))?;
    let count = bytes
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("digest bucket"))?;
    Ok((xor, count))
}

fn decode_leaf(bytes: &[u8]) -> Result<(u128, Option<String>), StoreError> {
    let hash = bytes
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| corrupt("digest leaf"))?;
    let local = (bytes.len() > 16).then(|| String::from_utf8_lossy(&bytes[16..]).into_owned());
    Ok((hash, local))
}

/// The transaction side: sets or removes leaves, keeping their bucket.
pub(crate) struct DigestTx<'a, 'b> {
    pub index: &'a TxTree<'b>,
}

impl DigestTx<'_, '_> {
    fn tx_corrupt(
        what: &'static str,
    ) -> sled::transaction::ConflictableTransactionError<StoreError> {
        abort(corrupt(what))
    }

    fn adjust(
        &self,
        scope: Scope,
        product: &str,
        entity: &str,
        xor: u128,
        add: i64,
    ) -> TxResult<()> {
        let key = bucket_key(scope, product, bucket_of(entity));
        let (old, count) = match self.index.get(&key)? {
            Some(bytes) => decode_bucket(&bytes).map_err(|_| Self::tx_corrupt("digest bucket"))?,
            None => (0, 0),
        };
        let count = count.saturating_add_signed(add);
        if count == 0 {
            self.index.remove(&key)?;
        } else {
            let mut value = Vec::with_capacity(24);
            value.extend_from_slice(&(old ^ xor).to_be_bytes());
            value.extend_from_slice(&count.to_be_bytes());
            self.index.overwrite(&key, value);
        }
        Ok(())
    }

    /// Sets `entity`'s leaf to `hash` (`None`: removes it).
    pub fn set(
        &self,
        scope: Scope,
        product: &str,
        entity: &str,
        hash: Option<u128>,
        local: Option<&str>,
    ) -> TxResult<()> {
        let key = leaf_key(scope, product, entity);
        let old = match self.index.get(&key)? {
            Some(bytes) => Some(
                decode_leaf(&bytes)
                    .map_err(|_| Self::tx_corrupt("digest leaf"))?
                    .0,
            ),
            None => None,
        };
        if old == hash {
            return Ok(());
        }
        match (old, hash) {
            (Some(old), Some(new)) => self.adjust(scope, product, entity, old ^ new, 0)?,
            (None, Some(new)) => self.adjust(scope, product, entity, new, 1)?,
            (Some(old), None) => self.adjust(scope, product, entity, old, -1)?,
            (None, None) => {}
        }
        match hash {
            Some(hash) => {
                let mut value = hash.to_be_bytes().to_vec();
                if let Some(local) = local.filter(|l| *l != entity) {
                    value.extend_from_slice(local.as_bytes());
                }
                self.index.overwrite(&key, value);
            }
            None => {
                self.index.remove(&key)?;
            }
        }
        Ok(())
    }

    /// An outbox item was enqueued: a `latest` state or a tombstone is
    /// what the upstream will hold (history items are not digested).
    pub fn sent(&self, item: &OutboxItem) -> TxResult<()> {
        let scope = Scope::Sent(&item.upstream);
        if item.tombstone {
            self.set(scope, &item.product, &item.sent_entity, None, None)
        } else if item.coalesce {
            // The nulls of a `latest` item clear fields upstream: the
            // state it will hold has none of them.
            let hash = if item.fields.values().any(|v| v.is_null()) {
                let held: Fields = item
                    .fields
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                leaf_hash(&item.sent_entity, item.event_time, &held)
            } else {
                leaf_hash(&item.sent_entity, item.event_time, &item.fields)
            };
            self.set(
                scope,
                &item.product,
                &item.sent_entity,
                Some(hash),
                Some(&item.entity),
            )
        } else {
            Ok(())
        }
    }

    /// A record changed an instance: when it came from an edge
    /// (`sync:<origin>`) and changed the state, the instance is that
    /// origin's (its leaf moves there); a local record that changed the
    /// state takes the entity out of every held digest.
    pub fn held(&self, product: &str, change: &Change) -> TxResult<()> {
        if !change.applied_to_state {
            return Ok(());
        }
        let instance = &change.instance;
        let origin = instance
            .last_origin
            .source
            .strip_prefix(super::SYNC_ORIGIN_PREFIX);
        let owner = owner_key(product, &instance.entity);
        let previous = self
            .index
            .get(&owner)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        if let Some(previous) = previous.as_deref().filter(|p| Some(*p) != origin) {
            self.set(Scope::Held(previous), product, &instance.entity, None, None)?;
        }
        match origin {
            Some(origin) => {
                let hash = leaf_hash(&instance.entity, instance.event_time, &instance.fields);
                self.set(
                    Scope::Held(origin),
                    product,
                    &instance.entity,
                    Some(hash),
                    None,
                )?;
                if previous.as_deref() != Some(origin) {
                    self.index.overwrite(&owner, origin.as_bytes());
                }
            }
            None if previous.is_some() => {
                self.index.remove(&owner)?;
            }
            None => {}
        }
        Ok(())
    }

    /// An entity was removed (erasure, expiry): out of the held digest.
    pub fn removed(&self, product: &str, entity: &str) -> TxResult<()> {
        let owner = owner_key(product, entity);
        if let Some(origin) = self.index.remove(&owner)? {
            let origin = String::from_utf8_lossy(&origin).into_owned();
            self.set(Scope::Held(&origin), product, entity, None, None)?;
        }
        Ok(())
    }
}

/// Turns an instance into the record a sync planner sees for it (a
/// rebuild or a repair asks the planner what it would send for it now).
fn as_record(instance: &super::Instance) -> Record {
    Record {
        entity: instance.entity.clone(),
        fields: instance.fields.clone(),
        event_time: instance.event_time,
        origin: instance.last_origin.clone(),
    }
}

/// The outbox items the installed planner would enqueue for the current
/// state of `instance` (what a rebuild digests and a repair sends).
pub(crate) fn planned_items(
    planner: &dyn super::OutboxPlanner,
    product: &str,
    instance: &super::Instance,
) -> Vec<OutboxItem> {
    let change = Change {
        entity: instance.entity.clone(),
        version: instance.version,
        created: false,
        changed: Vec::new(),
        applied_to_state: true,
        instance: std::sync::Arc::new(instance.clone()),
    };
    planner.on_change(product, &as_record(instance), &change)
}

impl Store {
    /// Makes ingestion keep the held digests (aggregator mode): every
    /// change a `sync:` record makes is digested in its transaction.
    pub fn enable_held_digests(&self) {
        self.inner
            .held_digests
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn held_digests(&self) -> bool {
        self.inner
            .held_digests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The non-empty buckets of a digest, in bucket order.
    pub fn digest_buckets(
        &self,
        scope: Scope,
        product: &str,
    ) -> Result<Vec<BucketDigest>, StoreError> {
        let prefix = scoped(scope, BUCKET, product);
        let (_, index) = self.outbox_trees();
        let mut out = Vec::new();
        for item in index.scan_prefix(&prefix) {
            let (key, value) = item.map_err(|e| StoreError::sled("reading a sync digest", e))?;
            let Some(&bucket) = key.get(prefix.len()) else {
                continue;
            };
            let (xor, count) = decode_bucket(&value)?;
            out.push(BucketDigest { bucket, xor, count });
        }
        Ok(out)
    }

    /// The leaves of one bucket of a digest, in entity key order.
    pub fn digest_leaves(
        &self,
        scope: Scope,
        product: &str,
        bucket: u8,
    ) -> Result<Vec<Leaf>, StoreError> {
        let mut prefix = scoped(scope, LEAF, product);
        prefix.push(bucket);
        let (_, index) = self.outbox_trees();
        let mut out = Vec::new();
        for item in index.scan_prefix(&prefix) {
            let (key, value) = item.map_err(|e| StoreError::sled("reading a sync digest", e))?;
            let entity = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let (hash, local) = decode_leaf(&value)?;
            out.push(Leaf {
                local: Some(local.unwrap_or_else(|| entity.clone())),
                entity,
                hash,
            });
        }
        Ok(out)
    }

    /// Whether the digests of this kind were built by this format (else
    /// a rebuild is due: the store predates them).
    pub fn digests_built(&self, sent: bool) -> Result<bool, StoreError> {
        let (_, index) = self.outbox_trees();
        let key = [TAG, if sent { SENT } else { HELD }, VERSION];
        Ok(index
            .get(key)
            .map_err(|e| StoreError::sled("reading the sync digest version", e))?
            .is_some_and(|v| v.as_ref() == [FORMAT]))
    }

    /// Recomputes every held digest (what this node holds of each origin)
    /// from the instances of `products`. Returns how many leaves it
    /// changed, added or dropped (0 when the digest was right).
    pub fn rebuild_held_digests(&self, products: &[String]) -> Result<u64, StoreError> {
        self.rebuild_digests(HELD, products, |product, instance, out| {
            if let Some(origin) = instance
                .last_origin
                .source
                .strip_prefix(super::SYNC_ORIGIN_PREFIX)
            {
                let hash = leaf_hash(&instance.entity, instance.event_time, &instance.fields);
                out.push((
                    leaf_key(Scope::Held(origin), product, &instance.entity),
                    hash.to_be_bytes().to_vec(),
                ));
                out.push((
                    owner_key(product, &instance.entity),
                    origin.as_bytes().to_vec(),
                ));
            }
        })
    }

    /// Recomputes every sent digest from the instances of `products` and
    /// the installed planner (none installed: nothing is sent, all empty).
    pub fn rebuild_sent_digests(&self, products: &[String]) -> Result<u64, StoreError> {
        let planner = self.planner();
        self.rebuild_digests(SENT, products, |product, instance, out| {
            let Some(planner) = &planner else { return };
            for item in planned_items(planner.as_ref(), product, instance) {
                if item.coalesce && !item.tombstone {
                    let hash = leaf_hash(&item.sent_entity, item.event_time, &item.fields);
                    let mut value = hash.to_be_bytes().to_vec();
                    if item.sent_entity != item.entity {
                        value.extend_from_slice(item.entity.as_bytes());
                    }
                    out.push((
                        leaf_key(Scope::Sent(&item.upstream), product, &item.sent_entity),
                        value,
                    ));
                }
            }
        })
    }

    /// Rebuilds the digests of one kind under the writer lock: reads every
    /// instance, then in one transaction writes the keys that differ,
    /// drops those no instance backs, and rewrites every bucket.
    fn rebuild_digests(
        &self,
        kind: u8,
        products: &[String],
        keys_of: impl Fn(&str, &super::Instance, &mut Vec<(Vec<u8>, Vec<u8>)>),
    ) -> Result<u64, StoreError> {
        let span = tracing::info_span!("store.digest_rebuild", kind = %(kind as char));
        let _enter = span.enter();
        let _writer = self.write_lock();
        let mut wanted: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
        let mut out = Vec::new();
        for product in products {
            let mut after: Option<String> = None;
            loop {
                let page = self.scan(product, after.as_deref(), 1024)?;
                for instance in &page.instances {
                    keys_of(product, instance, &mut out);
                }
                wanted.extend(out.drain(..));
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        // Buckets from the wanted leaves: a bucket key is the leaf key
        // with `b` for `l`, cut after the bucket byte.
        let mut buckets: std::collections::BTreeMap<Vec<u8>, (u128, u64)> = Default::default();
        for (key, value) in &wanted {
            if key.get(2) != Some(&LEAF) {
                continue;
            }
            let Some(cut) = leaf_bucket_end(key) else {
                continue;
            };
            let mut bucket = key[..cut].to_vec();
            bucket[2] = BUCKET;
            let (hash, _) = decode_leaf(value)?;
            let slot = buckets.entry(bucket).or_default();
            slot.0 ^= hash;
            slot.1 += 1;
        }
        let (_, index) = self.outbox_trees();
        let mut stale = Vec::new();
        let mut changed = 0u64;
        for item in index.scan_prefix([TAG, kind]) {
            let (key, value) = item.map_err(|e| StoreError::sled("reading a sync digest", e))?;
            let leaf = key.get(2) == Some(&LEAF);
            match key.get(2) {
                Some(&LEAF) | Some(&OWNER) => match wanted.get(key.as_ref()) {
                    Some(v) if v.as_slice() == value.as_ref() => {
                        wanted.remove(key.as_ref());
                    }
                    Some(_) => {}
                    None => {
                        changed += u64::from(leaf);
                        stale.push(key.to_vec());
                    }
                },
                Some(&BUCKET) if !buckets.contains_key(key.as_ref()) => stale.push(key.to_vec()),
                _ => {}
            }
        }
        changed += wanted.keys().filter(|k| k.get(2) == Some(&LEAF)).count() as u64;
        self.hot_transaction(
            &[index],
            |views| {
                let [index] = views else {
                    return Err(abort(corrupt("digest rebuild: one tree expected")));
                };
                for key in &stale {
                    index.remove(key)?;
                }
                for (key, value) in &wanted {
                    index.overwrite(key, value.clone());
                }
                for (key, (xor, count)) in &buckets {
                    let mut value = xor.to_be_bytes().to_vec();
                    value.extend_from_slice(&count.to_be_bytes());
                    index.overwrite(key, value);
                }
                index.overwrite([TAG, kind, VERSION], vec![FORMAT]);
                Ok(())
            },
            || "rebuilding the sync digests".to_string(),
        )?;
        tracing::info!(changed, "sync digests rebuilt");
        Ok(changed)
    }
}

/// What a repair enqueued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Repaired {
    /// Current states enqueued again.
    pub states: u64,
    /// Tombstones enqueued for entities the upstream holds and this node
    /// does not (any more).
    pub tombstones: u64,
}

impl Store {
    /// Enqueues for `upstream` again what it should hold of `product`: the
    /// current state of each of `entities` (local keys; as the planner
    /// would send it now) and a tombstone for each of `gone` (keys as the
    /// upstream holds them, with no local instance). One transaction under
    /// the writer lock; the entries go out like any other, in order.
    pub fn digest_repair(
        &self,
        upstream: &str,
        product: &str,
        entities: &[String],
        gone: &[String],
    ) -> Result<Repaired, StoreError> {
        let span = tracing::info_span!("store.digest_repair", upstream, product);
        let _enter = span.enter();
        let Some(planner) = self.planner() else {
            return Ok(Repaired::default());
        };
        let _writer = self.write_lock();
        let now = Timestamp::now();
        let mut items = Vec::new();
        let mut repaired = Repaired::default();
        for entity in entities {
            if let Some(instance) = self.get(product, entity)? {
                let before = items.len();
                items.extend(
                    planned_items(planner.as_ref(), product, &instance)
                        .into_iter()
                        .filter(|i| i.upstream == upstream && i.coalesce),
                );
                repaired.states += (items.len() > before) as u64;
            }
        }
        for sent in gone {
            if let Some(mut item) = planner
                .on_erase(product, sent, now)
                .into_iter()
                .find(|i| i.upstream == upstream)
            {
                item.sent_entity = sent.clone();
                items.push(item);
                repaired.tombstones += 1;
            }
        }
        if items.is_empty() {
            return Ok(repaired);
        }
        let (outbox_tree, outbox_index) = self.outbox_trees();
        let delta = self.hot_transaction(
            &[outbox_tree, outbox_index],
            |views| {
                let [entries, index] = views else {
                    return Err(abort(corrupt("digest repair: two trees expected")));
                };
                let outbox = super::outbox::OutboxTx {
                    entries,
                    index,
                    now,
                    keys: self.entity_keys(),
                };
                let mut delta = super::outbox::OutboxDelta::default();
                for item in &items {
                    outbox.push(item.clone(), &mut delta)?;
                }
                Ok(delta)
            },
            || format!("upstream `{upstream}`, product `{product}`: enqueueing a repair"),
        )?;
        self.apply_outbox_delta(delta);
        self.inner.group.wrote();
        Ok(repaired)
    }
}

/// Where the bucket byte of a leaf key ends: after tag, kind, `l`, two
/// parts and the bucket.
fn leaf_bucket_end(key: &[u8]) -> Option<usize> {
    let mut at = 3;
    for _ in 0..2 {
        let len = u16::from_be_bytes(key.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2 + len;
    }
    (key.len() > at).then_some(at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_differ_by_key_time_and_fields() {
        let mut fields = Fields::new();
        fields.insert("t".into(), crate::record::Value::Int(1));
        let a = leaf_hash("m1", Timestamp(5), &fields);
        assert_eq!(a, leaf_hash("m1", Timestamp(5), &fields));
        assert_ne!(a, leaf_hash("m2", Timestamp(5), &fields));
        assert_ne!(a, leaf_hash("m1", Timestamp(6), &fields));
        fields.insert("t".into(), crate::record::Value::Int(2));
        assert_ne!(a, leaf_hash("m1", Timestamp(5), &fields));
    }

    #[test]
    fn bucket_end_of_a_leaf_key() {
        let key = leaf_key(Scope::Held("edge-1"), "machines", "m1");
        let end = leaf_bucket_end(&key).expect("parses");
        assert_eq!(key[end - 1], bucket_of("m1"));
        assert_eq!(&key[end..], b"m1");
    }
}
