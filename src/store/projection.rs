//! Every current instance of a product in memory, for fleet aggregates
//! (`<product>Aggregate`): the aggregate reads shared, already decoded
//! states instead of scanning and decoding every instance in sled.
//!
//! Why: an aggregate over 100,000 instances spent its time in the scan
//! (sled iteration, opening and decoding each value: 57 µs per instance
//! in the dev profile), not in grouping. The states are the very
//! `Arc<Instance>`s the writer hands the lookup cache (`current.rs`), so
//! an entity both hold costs its memory once.
//!
//! # Kept current
//!
//! Built on the first aggregate of the product (a full scan under the
//! store's writer lock, so no commit falls between the scan and the
//! install), then kept current by the same three hooks as the lookup
//! cache, all called under the writer lock:
//!
//! - ingest's commit puts each committed state in ([`Projection::committed`]);
//! - erase, expiry and retention rewrites *forget* the entity before and
//!   after their transaction: it is removed and marked dirty with a fresh
//!   generation, and the next aggregate re-reads it through the store
//!   (only if no later hook touched it since: a re-read that raced a
//!   commit is discarded);
//! - handing out the raw database drops everything: rebuilt on the next
//!   aggregate.
//!
//! Too many dirty entities (a retention sweep over the fleet) make the
//! next aggregate rebuild instead of re-reading them one by one.
//!
//! # Bounded
//!
//! The states are counted in estimated bytes ([`instance_bytes`]). Above
//! [`PROJECTION_MAX_BYTES`] the projection is dropped and stays off: every
//! aggregate of that product scans the store as before (counted in
//! `meshlet_aggregate_scans_total{reason="over_bound"}`). The answer is
//! the same either way; only the time differs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::read::decode_instance;
use super::{Instance, Store, StoreError};
use crate::record::Value;

/// Bytes of states one product's projection may hold before it is
/// dropped in favour of the scan. 64 MiB holds ~150,000 instances of a
/// dozen scalar fields; most of it is shared with the lookup cache.
pub(crate) const PROJECTION_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Dirty entities beyond this share of the projection make the next
/// aggregate rebuild it rather than re-read them one by one.
const DIRTY_REBUILD_DIVISOR: usize = 8;

static BUILDS: AtomicU64 = AtomicU64::new(0);
static REREADS: AtomicU64 = AtomicU64::new(0);
static OVER_BOUND: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Built {
    /// Not built yet, or dropped by [`Projection::clear`].
    No,
    Yes,
    /// Passed the bound; aggregates scan.
    OverBound,
}

struct State {
    built: Built,
    entries: HashMap<String, Arc<Instance>>,
    bytes: usize,
    /// Forgotten entities to re-read, with the generation of the forget.
    dirty: HashMap<String, u64>,
    generation: u64,
}

/// One product's projection; see the module docs.
pub(crate) struct Projection {
    state: Mutex<State>,
    max_bytes: usize,
}

/// Estimated heap and inline bytes of one state: what it costs to keep.
pub(crate) fn instance_bytes(instance: &Instance) -> usize {
    // The map entry, the Arc, the instance itself and its B-tree nodes.
    let mut bytes = 96 + std::mem::size_of::<Instance>() + 2 * instance.entity.len();
    bytes += instance.last_origin.source.len()
        + instance.last_origin.actor.as_ref().map_or(0, String::len);
    for (name, value) in &instance.fields {
        bytes += 48 + name.len() + value_bytes(value);
    }
    bytes
}

fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Json(j) => json_bytes(j),
        _ => 0,
    }
}

fn json_bytes(j: &serde_json::Value) -> usize {
    32 + match j {
        serde_json::Value::String(s) => s.len(),
        serde_json::Value::Array(items) => items.iter().map(json_bytes).sum(),
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| k.len() + json_bytes(v)).sum(),
        _ => 0,
    }
}

/// Sets the bytes a projection holds, keeping the process-wide gauge.
fn resize(state: &mut State, bytes: usize) {
    if bytes >= state.bytes {
        BYTES.fetch_add((bytes - state.bytes) as u64, Ordering::Relaxed);
    } else {
        let less = ((state.bytes - bytes) as u64).min(BYTES.load(Ordering::Relaxed));
        BYTES.fetch_sub(less, Ordering::Relaxed);
    }
    state.bytes = bytes;
}

impl Projection {
    pub fn new() -> Projection {
        Projection::with_bound(PROJECTION_MAX_BYTES)
    }

    pub fn with_bound(max_bytes: usize) -> Projection {
        Projection {
            state: Mutex::new(State {
                built: Built::No,
                entries: HashMap::new(),
                bytes: 0,
                dirty: HashMap::new(),
                generation: 0,
            }),
            max_bytes,
        }
    }

    // Every update is whole under the lock, so poison is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts committed states in (under the writer lock, in commit order).
    pub fn committed<'a>(&self, states: impl IntoIterator<Item = &'a Arc<Instance>>) {
        let mut state = self.lock();
        if state.built != Built::Yes {
            return;
        }
        for instance in states {
            let added = instance_bytes(instance);
            state.dirty.remove(instance.entity.as_str());
            let old = state
                .entries
                .insert(instance.entity.clone(), Arc::clone(instance));
            let freed = old.as_deref().map_or(0, instance_bytes);
            let bytes = (state.bytes + added).saturating_sub(freed);
            resize(&mut state, bytes);
        }
        self.check_bound(&mut state);
    }

    /// Removes `entity` and marks it for a re-read (before and after a
    /// transaction that removes or rewrites it outside ingest).
    pub fn forget(&self, entity: &str) {
        let mut state = self.lock();
        if state.built != Built::Yes {
            return;
        }
        if let Some(old) = state.entries.remove(entity) {
            let bytes = state.bytes.saturating_sub(instance_bytes(&old));
            resize(&mut state, bytes);
        }
        state.generation += 1;
        let generation = state.generation;
        state.dirty.insert(entity.to_string(), generation);
    }

    /// Drops everything; the next aggregate rebuilds (not after the bound
    /// was passed: that stays).
    pub fn clear(&self) {
        let mut state = self.lock();
        if state.built == Built::Yes {
            state.built = Built::No;
        }
        Self::drop_entries(&mut state);
    }

    fn drop_entries(state: &mut State) {
        state.entries = HashMap::new();
        state.dirty = HashMap::new();
        resize(state, 0);
    }

    fn check_bound(&self, state: &mut State) {
        if state.bytes > self.max_bytes {
            tracing::warn!(
                bytes = state.bytes,
                bound = self.max_bytes,
                "the fleet-aggregate projection passed its bound; aggregates of this product scan the store"
            );
            OVER_BOUND.fetch_add(1, Ordering::Relaxed);
            state.built = Built::OverBound;
            Self::drop_entries(state);
        }
    }
}

impl Default for Projection {
    fn default() -> Self {
        Projection::new()
    }
}

impl Store {
    /// Every current instance of `product` as shared states, in no
    /// particular order, from the in-memory projection (built on first
    /// use, see `projection.rs`); `None` when the projection is over its
    /// bound and the caller must scan. What a full [`Store::scan`] would
    /// return, corrupt entries left out.
    pub fn current_instances(
        &self,
        product: &str,
    ) -> Result<Option<Vec<Arc<Instance>>>, StoreError> {
        let trees = self.product(product)?;
        let projection = &trees.current.projection;
        let _span = tracing::debug_span!("current_instances", product).entered();
        loop {
            let (built, dirty, total) = {
                let state = projection.lock();
                let dirty: Vec<(String, u64)> =
                    state.dirty.iter().map(|(e, g)| (e.clone(), *g)).collect();
                (state.built, dirty, state.entries.len())
            };
            match built {
                Built::OverBound => return Ok(None),
                Built::No => {
                    self.build_projection(&trees)?;
                    continue;
                }
                Built::Yes if dirty.len() > total / DIRTY_REBUILD_DIVISOR + 64 => {
                    projection.lock().built = Built::No;
                    continue;
                }
                Built::Yes => {}
            }
            let mut reread = Vec::with_capacity(dirty.len());
            for (entity, generation) in dirty {
                let instance = trees
                    .instances
                    .get(entity.as_bytes())
                    .map_err(|e| {
                        StoreError::sled(
                            format!("product `{product}`, entity `{entity}`: reading instance"),
                            e,
                        )
                    })?
                    .map(|bytes| decode_instance(&trees, &entity, &bytes))
                    .transpose();
                match instance {
                    Ok(instance) => reread.push((entity, generation, instance.map(Arc::new))),
                    Err(e) => {
                        tracing::warn!(product, entity, error = %e, "skipping corrupt instance in the aggregate projection");
                        reread.push((entity, generation, None));
                    }
                }
            }
            let mut state = projection.lock();
            if state.built != Built::Yes {
                continue;
            }
            for (entity, generation, instance) in reread {
                // Touched again since: the re-read may be stale; the hook
                // that touched it has put in (or will re-mark) the newer.
                if state.dirty.get(&entity) != Some(&generation) {
                    continue;
                }
                state.dirty.remove(&entity);
                REREADS.fetch_add(1, Ordering::Relaxed);
                if let Some(instance) = instance {
                    let bytes = state.bytes + instance_bytes(&instance);
                    resize(&mut state, bytes);
                    state.entries.insert(entity, instance);
                }
            }
            projection.check_bound(&mut state);
            if state.built != Built::Yes {
                return Ok(None);
            }
            if !state.dirty.is_empty() {
                // Forgotten again while re-reading: another round.
                drop(state);
                continue;
            }
            SERVED.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(state.entries.values().cloned().collect()));
        }
    }

    /// Scans the product into its projection under the writer lock.
    fn build_projection(&self, trees: &super::ProductTrees) -> Result<(), StoreError> {
        let _span = tracing::info_span!("build_projection", product = %trees.name).entered();
        let projection = &trees.current.projection;
        let _writer = self.write_lock();
        if projection.lock().built != Built::No {
            return Ok(());
        }
        let mut entries = HashMap::new();
        let mut bytes = 0usize;
        let mut after: Option<String> = None;
        loop {
            let page = self.scan(&trees.name, after.as_deref(), 1_024)?;
            for instance in page.instances {
                bytes += instance_bytes(&instance);
                entries.insert(instance.entity.clone(), Arc::new(instance));
            }
            if bytes > projection.max_bytes {
                break;
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut state = projection.lock();
        BUILDS.fetch_add(1, Ordering::Relaxed);
        state.entries = entries;
        resize(&mut state, bytes);
        state.dirty.clear();
        state.built = Built::Yes;
        projection.check_bound(&mut state);
        Ok(())
    }
}

/// The projection's counters and bytes for `/metrics`.
pub(crate) fn encode_metrics(
    enc: &mut crate::telemetry::expose::Encoder<'_>,
) -> crate::telemetry::expose::Encoded {
    use crate::telemetry::expose;
    let mut f = expose::counter_family(
        enc,
        "meshlet_aggregate_projection_events_total",
        "The in-memory projection fleet aggregates read: builds (a full scan), entities re-read after erase/expiry/retention, aggregates served, and projections dropped for passing their bound (those products' aggregates scan the store).",
    )?;
    for (event, counter) in [
        ("build", &BUILDS),
        ("reread", &REREADS),
        ("served", &SERVED),
        ("over_bound", &OVER_BOUND),
    ] {
        f.sample(&[("event", event)], counter.load(Ordering::Relaxed))?;
    }
    expose::gauge(
        enc,
        "meshlet_aggregate_projection_bytes",
        "Estimated bytes of instance states the fleet-aggregate projections hold (shared with the lookup cache where both hold one).",
        BYTES.load(Ordering::Relaxed) as i64,
    )
}
