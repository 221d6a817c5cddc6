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
//! Built on the first aggregate of the product by a full scan that does
//! *not* hold the store's writer lock (2.4 s at 20,000 instances in the
//! dev profile would stall ingest): while it runs, the hooks below already
//! apply to the (empty) projection, and the scanned states are merged in
//! at the end only for entities no hook touched meanwhile (a committed
//! state is newer than or equal to what the scan read; a forgotten one is
//! re-read). Then it is kept current by the same three hooks as the
//! lookup cache, all called under the writer lock:
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
//! # Columnar
//!
//! Besides the shared states (rows, for row filters, query filters and
//! [`Store::current_instances`]), every field is kept as a column of
//! [`Cell`]s, one per row slot, text interned per column (reference
//! counted, so a column's dictionary holds only values some row holds).
//! An aggregate copies the columns it needs ([`Store::fleet_columns`]: a
//! memcpy of 16 bytes per row and column, under the projection's lock for
//! about a millisecond at 100,000 rows) and groups them without touching
//! an instance, a hash of a text or an allocation per row
//! (`timeseries::aggregate::aggregate_columns`).
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
/// dropped in favour of the scan: ~110,000 instances of four scalar
/// fields (~600 estimated bytes each, columns included); most of the
/// states' memory is shared with the lookup cache.
pub(crate) const PROJECTION_MAX_BYTES: usize = 96 * 1024 * 1024;

/// Dirty entities beyond this share of the projection make the next
/// aggregate rebuild it rather than re-read them one by one.
const DIRTY_REBUILD_DIVISOR: usize = 8;

/// Estimated bytes of one interned text beyond its characters (the map
/// entry, the slot, the `Arc`).
const TEXT_OVERHEAD: usize = 64;

static BUILDS: AtomicU64 = AtomicU64::new(0);
static REREADS: AtomicU64 = AtomicU64::new(0);
static OVER_BOUND: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Built {
    /// Not built yet, or dropped by [`Projection::clear`].
    No,
    /// A scan is filling it; the hooks already apply.
    Building,
    Yes,
    /// Passed the bound; aggregates scan.
    OverBound,
}

/// One field of one row as the columns keep it: scalars inline, text as
/// a code in the column's dictionary. JSON values are `Other` (the
/// reader takes them from the row); a null (which a state does not hold:
/// a cleared field is absent) is `Absent`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell {
    Absent,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A timestamp in microseconds.
    Time(i64),
    Text(u32),
    Other,
}

/// A column's interned texts, counted by the cells that hold them.
#[derive(Default)]
struct Dict {
    codes: HashMap<Arc<str>, u32>,
    /// Code → the text and how many cells hold it (`None`: free).
    texts: Vec<Option<(Arc<str>, u32)>>,
    free: Vec<u32>,
}

impl Dict {
    /// The code of `text`, one more cell counted; the bytes it added.
    fn intern(&mut self, text: &str) -> (u32, usize) {
        if let Some(&code) = self.codes.get(text) {
            if let Some((_, count)) = &mut self.texts[code as usize] {
                *count += 1;
            }
            return (code, 0);
        }
        let text: Arc<str> = Arc::from(text);
        let entry = Some((Arc::clone(&text), 1));
        let code = match self.free.pop() {
            Some(code) => {
                self.texts[code as usize] = entry;
                code
            }
            None => {
                self.texts.push(entry);
                (self.texts.len() - 1) as u32
            }
        };
        let bytes = TEXT_OVERHEAD + text.len();
        self.codes.insert(text, code);
        (code, bytes)
    }

    /// One cell less holds `code`; the bytes freed.
    fn release(&mut self, code: u32) -> usize {
        let slot = &mut self.texts[code as usize];
        let Some((text, count)) = slot else {
            return 0;
        };
        *count -= 1;
        if *count > 0 {
            return 0;
        }
        let bytes = TEXT_OVERHEAD + text.len();
        self.codes.remove(&**text);
        *slot = None;
        self.free.push(code);
        bytes
    }
}

/// One field over every row slot.
#[derive(Default)]
struct Column {
    cells: Vec<Cell>,
    dict: Dict,
    /// Cells that are [`Cell::Other`] (then readers need the rows).
    others: usize,
}

impl Column {
    /// Puts `value` in `slot`, releasing what was there; the byte change.
    fn set(&mut self, slot: usize, value: Option<&Value>) -> isize {
        let mut delta = 0isize;
        match self.cells[slot] {
            Cell::Text(code) => delta -= self.dict.release(code) as isize,
            Cell::Other => self.others -= 1,
            _ => {}
        }
        self.cells[slot] = match value {
            None | Some(Value::Null) => Cell::Absent,
            Some(Value::Bool(b)) => Cell::Bool(*b),
            Some(Value::Int(i)) => Cell::Int(*i),
            Some(Value::Float(x)) => Cell::Float(*x),
            Some(Value::Timestamp(t)) => Cell::Time(t.as_micros()),
            Some(Value::String(s)) => {
                let (code, added) = self.dict.intern(s);
                delta += added as isize;
                Cell::Text(code)
            }
            Some(Value::Json(_)) => {
                self.others += 1;
                Cell::Other
            }
        };
        delta
    }
}

/// A copy of one column for one aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnSnapshot {
    /// One cell per row slot.
    pub cells: Vec<Cell>,
    /// Code → text, for the `Text` cells (`None`: a code no cell holds).
    pub texts: Vec<Option<Arc<str>>>,
}

impl ColumnSnapshot {
    /// The value a cell stands for; `None` for `Absent` and `Other` (the
    /// latter is in the row).
    pub fn value(&self, cell: Cell) -> Option<Value> {
        Some(match cell {
            Cell::Absent | Cell::Other => return None,
            Cell::Bool(b) => Value::Bool(b),
            Cell::Int(i) => Value::Int(i),
            Cell::Float(x) => Value::Float(x),
            Cell::Time(t) => Value::Timestamp(crate::record::Timestamp(t)),
            Cell::Text(code) => Value::String(self.text(code)?.to_string()),
        })
    }

    /// The text of a code.
    pub fn text(&self, code: u32) -> Option<&Arc<str>> {
        self.texts.get(code as usize).and_then(Option::as_ref)
    }
}

/// What an aggregate reads: the wanted columns over every row slot, and
/// the rows themselves when asked for (or when a wanted column holds a
/// JSON value, which only the row has).
#[derive(Debug)]
pub struct FleetColumns {
    /// Which slots hold an instance.
    pub live: Vec<bool>,
    /// The wanted columns in the order asked; an empty one for a field
    /// no instance holds.
    pub columns: Vec<ColumnSnapshot>,
    /// The states by slot, when asked for or needed.
    pub rows: Option<Vec<Option<Arc<Instance>>>>,
}

struct State {
    built: Built,
    /// Entity → its row slot.
    slots: HashMap<String, u32>,
    /// Slot → the shared state (`None`: free).
    rows: Vec<Option<Arc<Instance>>>,
    free: Vec<u32>,
    /// Field name → column.
    columns: HashMap<String, Column>,
    bytes: usize,
    /// Forgotten entities to re-read, with the generation of the forget.
    dirty: HashMap<String, u64>,
    generation: u64,
    /// Bumped by every [`Projection::clear`]: a build that started before
    /// one is discarded.
    epoch: u64,
}

impl State {
    fn empty(built: Built, epoch: u64) -> State {
        State {
            built,
            slots: HashMap::new(),
            rows: Vec::new(),
            free: Vec::new(),
            columns: HashMap::new(),
            bytes: 0,
            dirty: HashMap::new(),
            generation: 0,
            epoch,
        }
    }

    /// Whether the hooks apply (built, or being built).
    fn kept(&self) -> bool {
        matches!(self.built, Built::Yes | Built::Building)
    }

    /// Puts (or replaces) one entity's state, row and columns.
    fn put(&mut self, instance: Arc<Instance>) {
        let mut bytes = self.bytes as isize + instance_bytes(&instance) as isize;
        let slot = match self.slots.get(instance.entity.as_str()) {
            Some(&slot) => slot as usize,
            None => {
                let slot = match self.free.pop() {
                    Some(slot) => slot as usize,
                    None => {
                        self.rows.push(None);
                        for column in self.columns.values_mut() {
                            column.cells.push(Cell::Absent);
                        }
                        self.rows.len() - 1
                    }
                };
                self.slots.insert(instance.entity.clone(), slot as u32);
                slot
            }
        };
        if let Some(old) = self.rows[slot].take() {
            bytes -= instance_bytes(&old) as isize;
            for name in old.fields.keys() {
                if !instance.fields.contains_key(name) {
                    if let Some(column) = self.columns.get_mut(name) {
                        bytes += column.set(slot, None);
                    }
                }
            }
        }
        let rows = self.rows.len();
        for (name, value) in &instance.fields {
            let column = match self.columns.get_mut(name) {
                Some(column) => column,
                None => self.columns.entry(name.clone()).or_insert_with(|| Column {
                    cells: vec![Cell::Absent; rows],
                    ..Column::default()
                }),
            };
            bytes += column.set(slot, Some(value));
        }
        self.rows[slot] = Some(instance);
        resize(self, bytes.max(0) as usize);
    }

    /// Removes one entity's state, if held.
    fn remove(&mut self, entity: &str) {
        let Some(slot) = self.slots.remove(entity) else {
            return;
        };
        let slot = slot as usize;
        let Some(old) = self.rows[slot].take() else {
            return;
        };
        let mut bytes = self.bytes as isize - instance_bytes(&old) as isize;
        for name in old.fields.keys() {
            if let Some(column) = self.columns.get_mut(name) {
                bytes += column.set(slot, None);
            }
        }
        self.free.push(slot as u32);
        resize(self, bytes.max(0) as usize);
    }

    fn contains(&self, entity: &str) -> bool {
        self.slots.contains_key(entity)
    }

    /// Drops every state, keeping `built` and the epoch.
    fn drop_entries(&mut self) {
        let (built, epoch) = (self.built, self.epoch);
        resize(self, 0);
        *self = State::empty(built, epoch);
    }
}

/// One product's projection; see the module docs.
pub(crate) struct Projection {
    state: Mutex<State>,
    /// Held by the one thread that builds; others wait for it.
    building: Mutex<()>,
    max_bytes: usize,
}

/// Estimated heap and inline bytes of one state: what it costs to keep,
/// its column cells included (interned texts are counted apart).
pub(crate) fn instance_bytes(instance: &Instance) -> usize {
    // The slot entry, the Arc, the instance itself and its B-tree nodes.
    let mut bytes = 96 + std::mem::size_of::<Instance>() + 2 * instance.entity.len();
    bytes += instance.last_origin.source.len()
        + instance.last_origin.actor.as_ref().map_or(0, String::len);
    for (name, value) in &instance.fields {
        bytes += 48 + std::mem::size_of::<Cell>() + name.len() + value_bytes(value);
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
            state: Mutex::new(State::empty(Built::No, 0)),
            building: Mutex::new(()),
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
        if !state.kept() {
            return;
        }
        for instance in states {
            state.dirty.remove(instance.entity.as_str());
            state.put(Arc::clone(instance));
        }
        self.check_bound(&mut state);
    }

    /// Removes `entity` and marks it for a re-read (before and after a
    /// transaction that removes or rewrites it outside ingest).
    pub fn forget(&self, entity: &str) {
        let mut state = self.lock();
        if !state.kept() {
            return;
        }
        state.remove(entity);
        state.generation += 1;
        let generation = state.generation;
        state.dirty.insert(entity.to_string(), generation);
    }

    /// Drops everything; the next aggregate rebuilds (not after the bound
    /// was passed: that stays). A build under way is discarded.
    pub fn clear(&self) {
        let mut state = self.lock();
        if state.kept() {
            state.built = Built::No;
        }
        state.epoch += 1;
        state.drop_entries();
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
            state.drop_entries();
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
        let _span = tracing::debug_span!("current_instances", product).entered();
        self.with_projection(&trees, |state| {
            state.rows.iter().flatten().cloned().collect()
        })
    }

    /// The columns of `fields` (in that order) over every current instance
    /// of `product`, from the projection, with the rows when `with_rows`
    /// (or when a wanted column holds JSON); `None` when the projection is
    /// over its bound and the caller must scan. See the module docs.
    pub fn fleet_columns(
        &self,
        product: &str,
        fields: &[String],
        with_rows: bool,
    ) -> Result<Option<FleetColumns>, StoreError> {
        let trees = self.product(product)?;
        let _span = tracing::debug_span!("fleet_columns", product).entered();
        self.with_projection(&trees, |state| {
            let slots = state.rows.len();
            let mut needs_rows = with_rows;
            let columns = fields
                .iter()
                .map(|name| match state.columns.get(name) {
                    Some(column) => {
                        needs_rows |= column.others > 0;
                        ColumnSnapshot {
                            cells: column.cells.clone(),
                            texts: column
                                .dict
                                .texts
                                .iter()
                                .map(|t| t.as_ref().map(|(text, _)| Arc::clone(text)))
                                .collect(),
                        }
                    }
                    None => ColumnSnapshot {
                        cells: vec![Cell::Absent; slots],
                        texts: Vec::new(),
                    },
                })
                .collect();
            FleetColumns {
                live: state.rows.iter().map(Option::is_some).collect(),
                columns,
                rows: needs_rows.then(|| state.rows.clone()),
            }
        })
    }

    /// Brings the projection up to date (building it, re-reading
    /// forgotten entities) and reads it with `read` under its lock;
    /// `None` when it is over its bound.
    fn with_projection<T>(
        &self,
        trees: &super::ProductTrees,
        read: impl FnOnce(&State) -> T,
    ) -> Result<Option<T>, StoreError> {
        let product = trees.name.as_str();
        let projection = &trees.current.projection;
        loop {
            let (built, dirty, total) = {
                let state = projection.lock();
                let dirty: Vec<(String, u64)> =
                    state.dirty.iter().map(|(e, g)| (e.clone(), *g)).collect();
                (state.built, dirty, state.slots.len())
            };
            match built {
                Built::OverBound => return Ok(None),
                Built::No | Built::Building => {
                    self.build_projection(trees)?;
                    continue;
                }
                Built::Yes if dirty.len() > total / DIRTY_REBUILD_DIVISOR + 64 => {
                    let mut state = projection.lock();
                    if state.built == Built::Yes {
                        state.built = Built::No;
                    }
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
                    .map(|bytes| decode_instance(trees, &entity, &bytes))
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
                    state.put(instance);
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
            return Ok(Some(read(&state)));
        }
    }

    /// Scans the product into its projection, without the writer lock:
    /// the hooks apply meanwhile, and a scanned state is put in only for
    /// an entity no hook touched (see the module docs).
    fn build_projection(&self, trees: &super::ProductTrees) -> Result<(), StoreError> {
        let _span = tracing::info_span!("build_projection", product = %trees.name).entered();
        let projection = &trees.current.projection;
        let _building = projection
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let epoch = {
            let mut state = projection.lock();
            match state.built {
                Built::No | Built::Building => {}
                // Built (or over the bound) by the thread we waited for.
                Built::Yes | Built::OverBound => return Ok(()),
            }
            // A build that failed half-way left a partial map: restart.
            state.built = Built::Building;
            state.drop_entries();
            state.epoch
        };
        let mut after: Option<String> = None;
        loop {
            let page = self.scan(&trees.name, after.as_deref(), 1_024)?;
            let mut state = projection.lock();
            if state.built != Built::Building || state.epoch != epoch {
                // Cleared (raw database handed out) or over the bound.
                return Ok(());
            }
            for instance in page.instances {
                if !state.contains(&instance.entity) && !state.dirty.contains_key(&instance.entity)
                {
                    state.put(Arc::new(instance));
                }
            }
            projection.check_bound(&mut state);
            if state.built != Built::Building {
                return Ok(());
            }
            drop(state);
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut state = projection.lock();
        if state.built == Built::Building && state.epoch == epoch {
            BUILDS.fetch_add(1, Ordering::Relaxed);
            state.built = Built::Yes;
        }
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
