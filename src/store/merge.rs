//! Merging one record's fields into an instance's state (pure).
//!
//! - An on-time record (event time ≥ the instance's) overwrites every field
//!   it carries; fields it does not carry stay; an explicit `Value::Null`
//!   removes the field.
//! - A late record (event time < the instance's) must not roll newer state
//!   back: it only fills fields the instance does not have, and its
//!   `Value::Null`s are ignored. It is still a full history event.
//! - A field counts as changed only if its value actually differs (floats
//!   by bit pattern, so `NaN` over `NaN` is no change, and `0.0`/`-0.0` is).

use crate::record::{Fields, Value};

/// Merges `incoming` into `state`; returns the names of the fields whose
/// value changed, in name order.
pub(crate) fn merge_fields(state: &mut Fields, incoming: &Fields, late: bool) -> Vec<String> {
    let mut changed = Vec::new();
    for (name, value) in incoming {
        if value.is_null() {
            if !late && state.remove(name).is_some() {
                changed.push(name.clone());
            }
            continue;
        }
        match state.get_mut(name) {
            Some(current) if late || same_value(current, value) => {}
            Some(current) => {
                *current = value.clone();
                changed.push(name.clone());
            }
            None => {
                state.insert(name.clone(), value.clone());
                changed.push(name.clone());
            }
        }
    }
    changed
}

/// Value equality for change detection: like `==`, but floats compare by
/// bit pattern so a repeated `NaN` is not reported as a change forever.
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn on_time_record_overwrites_keeps_absent_and_null_clears() {
        let mut state = fields(&[
            ("a", Value::Int(1)),
            ("b", Value::Int(2)),
            ("c", Value::Int(3)),
        ]);
        let changed = merge_fields(
            &mut state,
            &fields(&[
                ("a", Value::Int(10)),
                ("b", Value::Int(2)),
                ("c", Value::Null),
                ("d", Value::Bool(true)),
            ]),
            false,
        );
        assert_eq!(changed, vec!["a", "c", "d"]);
        assert_eq!(
            state,
            fields(&[
                ("a", Value::Int(10)),
                ("b", Value::Int(2)),
                ("d", Value::Bool(true))
            ])
        );
    }

    #[test]
    fn null_on_an_absent_field_is_no_change() {
        let mut state = Fields::new();
        assert!(merge_fields(&mut state, &fields(&[("x", Value::Null)]), false).is_empty());
        assert!(state.is_empty());
    }

    #[test]
    fn late_record_only_fills_missing_fields() {
        let mut state = fields(&[("a", Value::Int(1))]);
        let changed = merge_fields(
            &mut state,
            &fields(&[
                ("a", Value::Int(0)),
                ("b", Value::Int(5)),
                ("a2", Value::Null),
            ]),
            true,
        );
        assert_eq!(changed, vec!["b"]);
        assert_eq!(state, fields(&[("a", Value::Int(1)), ("b", Value::Int(5))]));
        let changed = merge_fields(&mut state, &fields(&[("a", Value::Null)]), true);
        assert!(changed.is_empty(), "a late null does not clear newer state");
        assert!(state.contains_key("a"));
    }

    #[test]
    fn floats_compare_by_bits() {
        assert!(same_value(&Value::Float(f64::NAN), &Value::Float(f64::NAN)));
        assert!(!same_value(&Value::Float(0.0), &Value::Float(-0.0)));
        assert!(!same_value(&Value::Int(1), &Value::Float(1.0)));
    }
}
