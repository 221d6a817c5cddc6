//! The columnar layout of a chunk body (pure transform, no I/O).
//!
//! Row by row (`Vec<StoredEvent>` as named MessagePack) every event repeats
//! its field names, variant tags and origin, and numbers are stored in
//! full: an `f64` reading is 9 bytes of near-random mantissa even when the
//! device sent `71.3`. zstd finds the repeated names but not the small
//! steps between consecutive values, so rows cost ~40 bytes per telemetry
//! event. Columns fix what dominates:
//!
//! - versions, event times, `Int` and `Timestamp` values are stored as
//!   deltas from the previous one in their column (telemetry: tiny, and
//!   repetitive); arrival time as the delay after the event time;
//! - a `Float` column whose values are all short decimals (what JSON
//!   senders send) is stored as integer mantissas at one decimal scale,
//!   delta coded, and restored bit-exactly (a value that does not restore
//!   exactly stays an `f64`);
//! - each field name and each run of equal origins appears once.
//!
//! Lossless: `from_columns(to_columns(events)) == events` for every input
//! (tested with proptest), so this is a storage detail like compression.

use serde::{Deserialize, Serialize};

use super::codec::CodecError;
use super::stored::StoredEvent;
use crate::record::{Fields, Origin, Timestamp, Value};

/// Largest decimal scale tried for floats (10^15 < 2^53 keeps the
/// division exact).
const MAX_SCALE: u32 = 9;

const ABSENT: u8 = 0;
const NULL: u8 = 1;
const BOOL: u8 = 2;
const INT: u8 = 3;
const DECIMAL: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;
const TIMESTAMP: u8 = 7;
const JSON: u8 = 8;

/// One field across the chunk's events.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Column {
    name: String,
    /// Per event: which vector its value is in (`ABSENT`: the event has no
    /// such field).
    kinds: Vec<u8>,
    bools: Vec<bool>,
    /// Deltas from the previous `Int` of the column.
    ints: Vec<i64>,
    /// Decimal scale of `decimals` (value = mantissa / 10^scale).
    scale: u32,
    /// Mantissa deltas from the previous decimal of the column.
    decimals: Vec<i64>,
    floats: Vec<f64>,
    strings: Vec<String>,
    /// Deltas from the previous `Timestamp` of the column.
    times: Vec<i64>,
    /// JSON text.
    json: Vec<String>,
}

/// The body of a columnar chunk.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Columns {
    /// Deltas from the previous version (the first from 0).
    versions: Vec<u64>,
    /// Deltas from the previous event time (the first from 0).
    event_times: Vec<i64>,
    /// `received_at - event_time` per event.
    delays: Vec<i64>,
    /// (events, origin) runs.
    origins: Vec<(u64, Origin)>,
    fields: Vec<Column>,
}

/// The decimal scale at which `f` is exactly `mantissa / 10^scale`.
fn decimal_scale(f: f64) -> Option<u32> {
    (0..=MAX_SCALE).find(|&k| decimal_mantissa(f, k).is_some())
}

fn decimal_mantissa(f: f64, scale: u32) -> Option<i64> {
    if !f.is_finite() {
        return None;
    }
    let power = 10f64.powi(scale as i32);
    let scaled = (f * power).round();
    if scaled.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    let mantissa = scaled as i64;
    ((mantissa as f64 / power).to_bits() == f.to_bits()).then_some(mantissa)
}

/// Transposes events (any order kept) into columns.
pub(crate) fn to_columns(events: &[StoredEvent]) -> Columns {
    let mut columns = Columns::default();
    let (mut version, mut time) = (0u64, 0i64);
    for event in events {
        columns.versions.push(event.version.wrapping_sub(version));
        version = event.version;
        columns
            .event_times
            .push(event.event_time.0.wrapping_sub(time));
        time = event.event_time.0;
        columns
            .delays
            .push(event.received_at.0.wrapping_sub(event.event_time.0));
        match columns.origins.last_mut() {
            Some((count, origin)) if *origin == event.origin => *count += 1,
            _ => columns.origins.push((1, event.origin.clone())),
        }
    }
    let mut names: Vec<&String> = events.iter().flat_map(|e| e.fields.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let values: Vec<Option<&Value>> = events.iter().map(|e| e.fields.get(name)).collect();
        columns.fields.push(column(name, &values));
    }
    columns
}

fn column(name: &str, values: &[Option<&Value>]) -> Column {
    let scale = values
        .iter()
        .filter_map(|v| match v {
            Some(Value::Float(f)) => decimal_scale(*f),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut column = Column {
        name: name.to_string(),
        scale,
        ..Column::default()
    };
    let (mut int, mut mantissa, mut time) = (0i64, 0i64, 0i64);
    for value in values {
        let kind = match value {
            None => ABSENT,
            Some(Value::Null) => NULL,
            Some(Value::Bool(b)) => {
                column.bools.push(*b);
                BOOL
            }
            Some(Value::Int(i)) => {
                column.ints.push(i.wrapping_sub(int));
                int = *i;
                INT
            }
            Some(Value::Float(f)) => match decimal_mantissa(*f, scale) {
                Some(m) => {
                    column.decimals.push(m.wrapping_sub(mantissa));
                    mantissa = m;
                    DECIMAL
                }
                None => {
                    column.floats.push(*f);
                    FLOAT
                }
            },
            Some(Value::String(s)) => {
                column.strings.push(s.clone());
                STRING
            }
            Some(Value::Timestamp(t)) => {
                column.times.push(t.0.wrapping_sub(time));
                time = t.0;
                TIMESTAMP
            }
            Some(Value::Json(j)) => {
                column.json.push(j.to_string());
                JSON
            }
        };
        column.kinds.push(kind);
    }
    column
}

fn missing(what: &str) -> CodecError {
    CodecError(format!("columnar chunk: {what} column is too short"))
}

/// Restores the events [`to_columns`] transposed.
pub(crate) fn from_columns(columns: Columns) -> Result<Vec<StoredEvent>, CodecError> {
    let n = columns.versions.len();
    if columns.event_times.len() != n || columns.delays.len() != n {
        return Err(CodecError(
            "columnar chunk: event columns differ in length".into(),
        ));
    }
    let mut fields: Vec<Fields> = (0..n).map(|_| Fields::new()).collect();
    for column in columns.fields {
        if column.kinds.len() != n {
            return Err(CodecError(format!(
                "columnar chunk: field `{}` has {} values for {n} events",
                column.name,
                column.kinds.len()
            )));
        }
        let power = 10f64.powi(column.scale.min(MAX_SCALE) as i32);
        let mut bools = column.bools.into_iter();
        let mut ints = column.ints.into_iter();
        let mut decimals = column.decimals.into_iter();
        let mut floats = column.floats.into_iter();
        let mut strings = column.strings.into_iter();
        let mut times = column.times.into_iter();
        let mut json = column.json.into_iter();
        let (mut int, mut mantissa, mut time) = (0i64, 0i64, 0i64);
        for (kind, event) in column.kinds.into_iter().zip(fields.iter_mut()) {
            let value = match kind {
                ABSENT => continue,
                NULL => Value::Null,
                BOOL => Value::Bool(bools.next().ok_or_else(|| missing("bool"))?),
                INT => {
                    int = int.wrapping_add(ints.next().ok_or_else(|| missing("int"))?);
                    Value::Int(int)
                }
                DECIMAL => {
                    mantissa =
                        mantissa.wrapping_add(decimals.next().ok_or_else(|| missing("decimal"))?);
                    Value::Float(mantissa as f64 / power)
                }
                FLOAT => Value::Float(floats.next().ok_or_else(|| missing("float"))?),
                STRING => Value::String(strings.next().ok_or_else(|| missing("string"))?),
                TIMESTAMP => {
                    time = time.wrapping_add(times.next().ok_or_else(|| missing("timestamp"))?);
                    Value::Timestamp(Timestamp(time))
                }
                JSON => {
                    let text = json.next().ok_or_else(|| missing("json"))?;
                    Value::Json(
                        serde_json::from_str(&text)
                            .map_err(|e| CodecError(format!("columnar chunk: json value: {e}")))?,
                    )
                }
                other => {
                    return Err(CodecError(format!(
                        "columnar chunk: unknown value kind {other}"
                    )))
                }
            };
            event.insert(column.name.clone(), value);
        }
    }
    let mut origins = columns
        .origins
        .into_iter()
        .flat_map(|(count, origin)| std::iter::repeat_n(origin, count.min(n as u64) as usize));
    let (mut version, mut time) = (0u64, 0i64);
    let mut events = Vec::with_capacity(n);
    for (i, fields) in fields.into_iter().enumerate() {
        version = version.wrapping_add(columns.versions[i]);
        time = time.wrapping_add(columns.event_times[i]);
        events.push(StoredEvent {
            version,
            event_time: Timestamp(time),
            received_at: Timestamp(time.wrapping_add(columns.delays[i])),
            fields,
            origin: origins
                .next()
                .ok_or_else(|| CodecError("columnar chunk: too few origins".into()))?,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            (-100_000i64..100_000).prop_map(|m| Value::Float(m as f64 / 10.0)),
            "[a-z]{0,8}".prop_map(Value::String),
            any::<i64>().prop_map(|t| Value::Timestamp(Timestamp(t))),
            (0i64..100).prop_map(|n| Value::Json(serde_json::json!({"n": n, "s": [1.5, "x"]}))),
        ]
    }

    fn event() -> impl Strategy<Value = StoredEvent> {
        (
            any::<u64>(),
            any::<i64>(),
            any::<i64>(),
            proptest::collection::btree_map("[a-d]", value(), 0..4),
            prop_oneof![Just("a"), Just("b")],
        )
            .prop_map(|(version, t, r, fields, source)| StoredEvent {
                version,
                event_time: Timestamp(t),
                received_at: Timestamp(r),
                fields,
                origin: Origin::new(source),
            })
    }

    /// Bitwise equality (NaN payloads and -0.0 included).
    fn same(a: &[StoredEvent], b: &[StoredEvent]) -> bool {
        rmp_serde::to_vec(a).ok() == rmp_serde::to_vec(b).ok()
    }

    proptest! {
        #[test]
        fn columns_restore_every_event_exactly(events in proptest::collection::vec(event(), 0..20)) {
            let back = from_columns(to_columns(&events)).unwrap();
            prop_assert!(same(&events, &back), "{events:?} != {back:?}");
        }
    }

    #[test]
    fn short_decimals_become_small_integers() {
        assert_eq!(decimal_scale(71.3), Some(1));
        assert_eq!(decimal_scale(1.0), Some(0));
        assert_eq!(decimal_scale(0.1 + 0.2), None);
        assert_eq!(decimal_scale(f64::NAN), None);
        let events: Vec<_> = [71.3, 71.25, -0.0, 1e300, 0.1 + 0.2]
            .iter()
            .enumerate()
            .map(|(i, f)| StoredEvent {
                version: i as u64 + 1,
                event_time: Timestamp(i as i64),
                received_at: Timestamp(i as i64),
                fields: Fields::from([("t".to_string(), Value::Float(*f))]),
                origin: Origin::new("o"),
            })
            .collect();
        let columns = to_columns(&events);
        assert_eq!(columns.fields[0].scale, 2);
        assert_eq!(columns.fields[0].decimals, vec![7130, -5]);
        assert_eq!(
            columns.fields[0].floats.len(),
            3,
            "-0.0, 1e300, 0.30000000000000004"
        );
        assert!(same(&events, &from_columns(columns).unwrap()));
    }
}
