//! Fleet aggregates: current instances grouped by the values of some
//! fields, with per group the instance count and per number field the
//! min, max and avg (over the instances that hold a number there).
//!
//! Groups are keyed by the exact values (null, booleans, integers, text;
//! an instance without the field falls in the null group), kept in key
//! order, and bounded: the [`Aggregator`] refuses an instance that would
//! open group number `max_groups + 1`, so memory stays bounded whatever
//! the fleet holds.
//!
//! Two ways in, one answer: [`Aggregator`] takes instances' field maps
//! one by one; [`aggregate_columns`] takes the store's columnar
//! projection (`store/projection.rs`) and groups it without touching an
//! instance unless a row or query filter must read one: a group-by value
//! becomes a small per-query id once per distinct text (so a row costs
//! an array index, not a hash of its text), numbers are read from flat
//! cells.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::record::{Fields, Value};
use crate::store::{Cell, ColumnSnapshot, FleetColumns, Instance};

/// One part of a group key: the value of one group-by field.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
}

impl KeyPart {
    #[cfg(test)]
    fn of(value: Option<&Value>) -> KeyPart {
        KeyRef::of(value).owned()
    }
}

/// Min, max and sum of one number field over a group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Numbers {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

impl Numbers {
    /// Counts `x` into a group's running figures, the first value opening
    /// them (the row path and the column path share it).
    pub fn add(slot: &mut Option<Numbers>, x: f64) {
        match slot {
            Some(n) => {
                n.count += 1;
                n.min = n.min.min(x);
                n.max = n.max.max(x);
                n.sum += x;
            }
            None => {
                *slot = Some(Numbers {
                    count: 1,
                    min: x,
                    max: x,
                    sum: x,
                })
            }
        }
    }

    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// One group's result: its key (in the order of the group-by fields),
/// its instance count, and per number field (in the order given) its
/// statistics, `None` where no instance of the group holds a number.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub key: Vec<KeyPart>,
    pub count: u64,
    pub numbers: Vec<Option<Numbers>>,
}

/// The aggregate would need more groups than allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("more than {0} groups")]
pub struct TooManyGroups(pub usize);

/// A group-by value as read from an instance, borrowed: looking up an
/// existing group allocates nothing (the fleet aggregate adds 100,000
/// instances into a handful of groups).
#[derive(Hash)]
enum KeyRef<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Text(std::borrow::Cow<'a, str>),
}

impl<'a> KeyRef<'a> {
    fn of(value: Option<&'a Value>) -> KeyRef<'a> {
        match value {
            Some(Value::Bool(b)) => KeyRef::Bool(*b),
            Some(Value::Int(i)) => KeyRef::Int(*i),
            Some(Value::String(s)) => KeyRef::Text(s.as_str().into()),
            // Group-by fields are string, int or bool; a masked value of
            // another shape groups as what it is shown as.
            Some(Value::Float(x)) => KeyRef::Text(x.to_string().into()),
            Some(Value::Timestamp(t)) => KeyRef::Int(t.as_micros()),
            Some(Value::Json(j)) => KeyRef::Text(j.to_string().into()),
            Some(Value::Null) | None => KeyRef::Null,
        }
    }

    fn matches(&self, part: &KeyPart) -> bool {
        match (self, part) {
            (KeyRef::Null, KeyPart::Null) => true,
            (KeyRef::Bool(a), KeyPart::Bool(b)) => a == b,
            (KeyRef::Int(a), KeyPart::Int(b)) => a == b,
            (KeyRef::Text(a), KeyPart::Text(b)) => a == b,
            _ => false,
        }
    }

    fn owned(self) -> KeyPart {
        match self {
            KeyRef::Null => KeyPart::Null,
            KeyRef::Bool(b) => KeyPart::Bool(b),
            KeyRef::Int(i) => KeyPart::Int(i),
            KeyRef::Text(s) => KeyPart::Text(s.into_owned()),
        }
    }
}

/// Accumulates instances' fields into groups.
pub struct Aggregator {
    group_by: Vec<String>,
    numeric: Vec<String>,
    max_groups: usize,
    /// Groups in the order they were opened; sorted by key at the end.
    groups: Vec<Group>,
    /// Hash of a key → the groups with that hash.
    index: HashMap<u64, Vec<usize>>,
}

impl Aggregator {
    pub fn new(group_by: Vec<String>, numeric: Vec<String>, max_groups: usize) -> Aggregator {
        Aggregator {
            group_by,
            numeric,
            max_groups,
            groups: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Counts one instance's (already masked) fields in its group.
    pub fn add(&mut self, fields: &Fields) -> Result<(), TooManyGroups> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for name in &self.group_by {
            KeyRef::of(fields.get(name)).hash(&mut hasher);
        }
        let hash = hasher.finish();
        let found = self.index.get(&hash).and_then(|ids| {
            ids.iter().copied().find(|&i| {
                self.group_by
                    .iter()
                    .zip(&self.groups[i].key)
                    .all(|(name, part)| KeyRef::of(fields.get(name)).matches(part))
            })
        });
        let i = match found {
            Some(i) => i,
            None => {
                if self.groups.len() >= self.max_groups {
                    return Err(TooManyGroups(self.max_groups));
                }
                self.groups.push(Group {
                    key: self
                        .group_by
                        .iter()
                        .map(|name| KeyRef::of(fields.get(name)).owned())
                        .collect(),
                    count: 0,
                    numbers: vec![None; self.numeric.len()],
                });
                self.index
                    .entry(hash)
                    .or_default()
                    .push(self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[i];
        group.count += 1;
        for (name, slot) in self.numeric.iter().zip(group.numbers.iter_mut()) {
            let x = match fields.get(name) {
                Some(Value::Int(i)) => *i as f64,
                Some(Value::Float(x)) if x.is_finite() => *x,
                _ => continue,
            };
            Numbers::add(slot, x);
        }
        Ok(())
    }

    /// The groups in key order.
    pub fn finish(mut self) -> Vec<Group> {
        self.groups.sort_by(|a, b| a.key.cmp(&b.key));
        self.groups
    }
}

/// A field's mask as the caller's role applies it (`None`: removed).
pub type Mask<'a> = &'a dyn Fn(&Value) -> Option<Value>;

/// A number as the aggregate counts it: ints and finite floats.
fn number(value: Option<&Value>) -> Option<f64> {
    match value {
        Some(Value::Int(i)) => Some(*i as f64),
        Some(Value::Float(x)) if x.is_finite() => Some(*x),
        _ => None,
    }
}

/// The value one cell stands for, the row's for JSON.
fn cell_value(
    column: &ColumnSnapshot,
    cell: Cell,
    row: Option<&Instance>,
    name: &str,
) -> Option<Value> {
    match cell {
        Cell::Other => row.and_then(|r| r.fields.get(name)).cloned(),
        cell => column.value(cell),
    }
}

/// Group-by values of one column → small ids, for one query.
struct KeyIds {
    /// Text code → id (`u32::MAX`: not seen yet).
    by_code: Vec<u32>,
    absent: u32,
    bools: [u32; 2],
    by_part: HashMap<KeyPart, u32>,
    parts: Vec<KeyPart>,
}

const UNSEEN: u32 = u32::MAX;

impl KeyIds {
    fn new() -> KeyIds {
        KeyIds {
            by_code: Vec::new(),
            absent: UNSEEN,
            bools: [UNSEEN; 2],
            by_part: HashMap::new(),
            parts: Vec::new(),
        }
    }

    fn intern(&mut self, part: KeyPart) -> u32 {
        if let Some(&id) = self.by_part.get(&part) {
            return id;
        }
        let id = self.parts.len() as u32;
        self.parts.push(part.clone());
        self.by_part.insert(part, id);
        id
    }

    /// The id of `slot`'s value in `column`, masked by `mask`.
    fn id(
        &mut self,
        column: &ColumnSnapshot,
        slot: usize,
        row: Option<&Instance>,
        name: &str,
        mask: Option<Mask<'_>>,
    ) -> u32 {
        let cell = column.cells[slot];
        // The fast cases: a mask is a function of the value, so its
        // result is as cacheable as the value.
        let cached = match cell {
            Cell::Text(code) => self.by_code.get(code as usize).copied(),
            // A masked view hides nothing of a missing field (null).
            Cell::Absent => Some(self.absent),
            Cell::Bool(b) if mask.is_none() => Some(self.bools[usize::from(b)]),
            _ => None,
        };
        if let Some(id) = cached.filter(|id| *id != UNSEEN) {
            return id;
        }
        let value = cell_value(column, cell, row, name);
        let value = match mask {
            Some(mask) => value.and_then(|v| mask(&v)),
            None => value,
        };
        let id = self.intern(KeyRef::of(value.as_ref()).owned());
        match cell {
            Cell::Text(code) => {
                let code = code as usize;
                if self.by_code.len() <= code {
                    self.by_code.resize(code + 1, UNSEEN);
                }
                self.by_code[code] = id;
            }
            Cell::Absent => self.absent = id,
            Cell::Bool(b) if mask.is_none() => self.bools[usize::from(b)] = id,
            _ => {}
        }
        id
    }
}

/// The groups of the live rows of `fleet` (its columns: `group_by`'s,
/// then `numeric`'s) that `keep` keeps (it sees the row; `fleet.rows`
/// must be there when `keep` is given), each field through its mask in
/// `masks` (same order as the columns). The same groups [`Aggregator`]
/// makes from the rows' masked fields, sums added in slot order.
pub fn aggregate_columns(
    fleet: &FleetColumns,
    group_by: &[String],
    numeric: &[String],
    masks: &[Option<Mask<'_>>],
    keep: Option<&dyn Fn(&Instance) -> bool>,
    max_groups: usize,
) -> Result<Vec<Group>, TooManyGroups> {
    let k = group_by.len();
    let (keys, numbers) = fleet.columns.split_at(k.min(fleet.columns.len()));
    let mask = |i: usize| masks.get(i).copied().flatten();
    let mut ids: Vec<KeyIds> = (0..k).map(|_| KeyIds::new()).collect();
    let mut groups: Vec<Group> = Vec::new();
    // Group of one key id (one group-by field) or of several.
    let mut by_id: Vec<u32> = Vec::new();
    let mut by_ids: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut scratch = vec![0u32; k];
    let rows = fleet.rows.as_deref();
    for (slot, live) in fleet.live.iter().enumerate() {
        if !*live {
            continue;
        }
        let row = rows.and_then(|r| r[slot].as_deref());
        if let Some(keep) = keep {
            if !row.is_some_and(keep) {
                continue;
            }
        }
        for (j, column) in keys.iter().enumerate() {
            scratch[j] = ids[j].id(column, slot, row, &group_by[j], mask(j));
        }
        let found = match k {
            0 => (!groups.is_empty()).then_some(0),
            1 => by_id
                .get(scratch[0] as usize)
                .copied()
                .filter(|g| *g != UNSEEN),
            _ => by_ids.get(&scratch[..]).copied(),
        };
        let g = match found {
            Some(g) => g as usize,
            None => {
                if groups.len() >= max_groups {
                    return Err(TooManyGroups(max_groups));
                }
                let g = groups.len() as u32;
                groups.push(Group {
                    key: scratch
                        .iter()
                        .zip(&ids)
                        .map(|(id, ids)| ids.parts[*id as usize].clone())
                        .collect(),
                    count: 0,
                    numbers: vec![None; numeric.len()],
                });
                match k {
                    0 => {}
                    1 => {
                        let id = scratch[0] as usize;
                        if by_id.len() <= id {
                            by_id.resize(id + 1, UNSEEN);
                        }
                        by_id[id] = g;
                    }
                    _ => {
                        by_ids.insert(scratch.clone(), g);
                    }
                }
                g as usize
            }
        };
        let group = &mut groups[g];
        group.count += 1;
        for (i, (column, slot_numbers)) in numbers.iter().zip(group.numbers.iter_mut()).enumerate()
        {
            let cell = column.cells[slot];
            let x = match (mask(k + i), cell) {
                (None, Cell::Int(v)) => v as f64,
                (None, Cell::Float(x)) if x.is_finite() => x,
                (None, Cell::Other) => match number(row.and_then(|r| r.fields.get(&numeric[i]))) {
                    Some(x) => x,
                    None => continue,
                },
                (None, _) | (Some(_), Cell::Absent) => continue,
                (Some(mask), cell) => {
                    let masked = cell_value(column, cell, row, &numeric[i]).and_then(|v| mask(&v));
                    match number(masked.as_ref()) {
                        Some(x) => x,
                        None => continue,
                    }
                }
            };
            Numbers::add(slot_numbers, x);
        }
    }
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(site: Option<&str>, up: Option<bool>, temp: Option<f64>) -> Fields {
        let mut f = Fields::new();
        if let Some(s) = site {
            f.insert("site".into(), Value::String(s.into()));
        }
        if let Some(u) = up {
            f.insert("up".into(), Value::Bool(u));
        }
        if let Some(t) = temp {
            f.insert("temp".into(), Value::Float(t));
        }
        f
    }

    proptest! {
        /// Each group equals a filter-and-fold over the instances with
        /// that key; the groups together count every instance once.
        #[test]
        fn groups_equal_a_brute_force_computation(
            rows in prop::collection::vec((
                prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
                prop::option::of(any::<bool>()),
                prop::option::of(-100i32..100),
            ), 0..200)
        ) {
            let rows: Vec<Fields> = rows
                .into_iter()
                .map(|(s, u, t)| fields(s, u, t.map(|t| f64::from(t) / 2.0)))
                .collect();
            let mut agg = Aggregator::new(vec!["site".into(), "up".into()], vec!["temp".into()], 100);
            for row in &rows {
                agg.add(row).expect("few groups");
            }
            let groups = agg.finish();
            prop_assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), rows.len() as u64);
            for g in &groups {
                let members: Vec<&Fields> = rows
                    .iter()
                    .filter(|r| KeyPart::of(r.get("site")) == g.key[0] && KeyPart::of(r.get("up")) == g.key[1])
                    .collect();
                prop_assert_eq!(g.count, members.len() as u64);
                let temps: Vec<f64> = members
                    .iter()
                    .filter_map(|r| match r.get("temp") { Some(Value::Float(x)) => Some(*x), _ => None })
                    .collect();
                match &g.numbers[0] {
                    None => prop_assert!(temps.is_empty()),
                    Some(n) => {
                        prop_assert_eq!(n.count, temps.len() as u64);
                        prop_assert_eq!(n.min, temps.iter().copied().fold(f64::INFINITY, f64::min));
                        prop_assert_eq!(n.max, temps.iter().copied().fold(f64::NEG_INFINITY, f64::max));
                        prop_assert!((n.avg() - temps.iter().sum::<f64>() / temps.len() as f64).abs() < 1e-9);
                    }
                }
            }
            prop_assert!(groups.windows(2).all(|w| w[0].key < w[1].key));
        }
    }

    #[test]
    fn groups_are_bounded() {
        let mut agg = Aggregator::new(vec!["site".into()], Vec::new(), 2);
        agg.add(&fields(Some("a"), None, None)).expect("first");
        agg.add(&fields(None, None, None))
            .expect("second: the null group");
        agg.add(&fields(Some("a"), None, None))
            .expect("an existing group");
        assert_eq!(
            agg.add(&fields(Some("b"), None, None)),
            Err(TooManyGroups(2))
        );
    }
}
