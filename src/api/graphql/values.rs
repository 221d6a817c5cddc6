//! Field types as GraphQL types, and values across the boundary.
//!
//! | definition | GraphQL | on the wire |
//! |---|---|---|
//! | `string` | `String` | string |
//! | `int` | `Long` (custom) | JSON number, 64-bit signed |
//! | `float` | `Float` | JSON number |
//! | `bool` | `Boolean` | true / false |
//! | `timestamp` | `DateTime` (custom) | RFC 3339 string, UTC out, any offset in |
//! | `json` | `JSON` (custom) | any JSON value |
//!
//! `int` fields are 64-bit, GraphQL's `Int` is 32-bit: a counter or an
//! epoch in milliseconds would not fit, so they get `Long`.
//!
//! `Long` input is a JSON number or a string of decimal digits
//! (`"9007199254740993"`), the form JavaScript clients can send without
//! rounding. Output is always a JSON number, exact in the JSON text: one
//! type per field keeps typed clients (codegen, Apollo's cache) simple,
//! and most values (versions, counts, counters) are far below 2^53. A
//! JavaScript client reading values above ±2^53 must parse the JSON
//! losslessly (e.g. `lossless-json`, or `JSON.parse` with a reviver's
//! `context.source` in Node 21+ and current browsers): plain `JSON.parse`
//! rounds them.
//!
//! A stored value whose type no longer matches the field's declared type
//! (the definition changed and was reloaded) is returned as `null` rather
//! than as a value of the wrong type.

use async_graphql::dynamic::Scalar;
use async_graphql::Value as Gql;

use crate::product::FieldType;
use crate::record::{Timestamp, Value};

pub(crate) const LONG: &str = "Long";
pub(crate) const DATE_TIME: &str = "DateTime";
pub(crate) const JSON: &str = "JSON";
pub(crate) const DURATION: &str = "Duration";

/// The GraphQL type name of a field type.
pub(crate) fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "String",
        FieldType::Int => LONG,
        FieldType::Float => "Float",
        FieldType::Bool => "Boolean",
        FieldType::Timestamp => DATE_TIME,
        FieldType::Json => JSON,
    }
}

/// The custom scalars, with the checks their input gets.
pub(crate) fn scalars() -> [Scalar; 4] {
    [
        Scalar::new(LONG)
            .description("A 64-bit signed integer (`int` fields). Returned as a JSON number (exact in the JSON text: parse it losslessly above 2^53 in JavaScript); accepted as a JSON number or as a string of decimal digits.")
            .validator(|v| long(v).is_some()),
        Scalar::new(DATE_TIME)
            .description(
                "A point in time as an RFC 3339 string, e.g. `2024-05-01T12:00:00Z`; returned in UTC with up to microsecond precision.",
            )
            .specified_by_url("https://datatracker.ietf.org/doc/html/rfc3339")
            .validator(|v| matches!(v, Gql::String(s) if Timestamp::parse_rfc3339(s).is_ok())),
        Scalar::new(JSON).description("Any JSON value, stored as is (`json` fields)."),
        Scalar::new(DURATION)
            .description("A length of time as text: `30s`, `5m`, `1h`, `1d`, `1h 30m`.")
            .validator(|v| matches!(v, Gql::String(s) if humantime::parse_duration(s.trim()).is_ok())),
    ]
}

/// A `Long` input: a JSON number that is an i64, or a decimal string.
pub(crate) fn long(value: &Gql) -> Option<i64> {
    match value {
        Gql::Number(n) => n.as_i64(),
        Gql::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A timestamp as GraphQL returns it.
pub(crate) fn timestamp(t: Timestamp) -> Gql {
    match t.to_rfc3339() {
        Some(text) => Gql::String(text),
        None => Gql::Null,
    }
}

/// A stored value as GraphQL returns it for a field of type `ty`.
pub(crate) fn output(ty: FieldType, value: &Value) -> Gql {
    match (ty, value) {
        (FieldType::String, Value::String(s)) => Gql::String(s.clone()),
        (FieldType::Int, Value::Int(i)) => Gql::from(*i),
        (FieldType::Float, Value::Float(f)) => serde_json::Number::from_f64(*f)
            .map(Gql::Number)
            .unwrap_or(Gql::Null),
        (FieldType::Float, Value::Int(i)) => Gql::from(*i as f64),
        (FieldType::Bool, Value::Bool(b)) => Gql::Boolean(*b),
        (FieldType::Timestamp, Value::Timestamp(t)) => timestamp(*t),
        (FieldType::Json, value) => Gql::from_json(value.to_json()).unwrap_or(Gql::Null),
        _ => Gql::Null,
    }
}

/// A GraphQL input value as a typed value of a field of type `ty` (for
/// filter operands). The scalar validators already ran; this only
/// converts.
pub(crate) fn input(ty: FieldType, value: &Gql) -> Result<Value, String> {
    let wrong = || format!("expected a {} value, got {value}", type_name(ty));
    match (ty, value) {
        (_, Gql::Null) => Ok(Value::Null),
        (FieldType::String, Gql::String(s)) => Ok(Value::String(s.clone())),
        (FieldType::Int, value) => long(value).map(Value::Int).ok_or_else(wrong),
        (FieldType::Float, Gql::Number(n)) => n.as_f64().map(Value::Float).ok_or_else(wrong),
        (FieldType::Bool, Gql::Boolean(b)) => Ok(Value::Bool(*b)),
        (FieldType::Timestamp, Gql::String(s)) => Timestamp::parse_rfc3339(s)
            .map(Value::Timestamp)
            .map_err(|e| e.to_string()),
        (FieldType::Json, value) => value
            .clone()
            .into_json()
            .map(Value::Json)
            .map_err(|e| e.to_string()),
        _ => Err(wrong()),
    }
}

/// A GraphQL input value as the JSON a record of the pipeline carries (for
/// mutations, which go through the ingest pipeline).
pub(crate) fn input_json(value: &Gql) -> Result<serde_json::Value, String> {
    value.clone().into_json().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_come_as_numbers_or_decimal_strings() {
        assert_eq!(long(&Gql::from(5)), Some(5));
        assert_eq!(
            long(&Gql::String("9007199254740993".into())),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(long(&Gql::String("1.5".into())), None);
        assert_eq!(long(&Gql::String("99999999999999999999".into())), None);
        assert_eq!(long(&Gql::Boolean(true)), None);
    }

    #[test]
    fn outputs_follow_the_declared_type() {
        assert_eq!(
            output(FieldType::Int, &Value::Int(i64::MAX)),
            Gql::from(i64::MAX)
        );
        assert_eq!(
            output(
                FieldType::Timestamp,
                &Value::Timestamp(Timestamp::from_secs(0))
            ),
            Gql::String("1970-01-01T00:00:00Z".into())
        );
        assert_eq!(output(FieldType::Float, &Value::Float(f64::NAN)), Gql::Null);
        assert_eq!(
            output(FieldType::Int, &Value::String("x".into())),
            Gql::Null
        );
        assert_eq!(
            output(FieldType::Json, &Value::Json(serde_json::json!({"a": [1]}))),
            Gql::from_json(serde_json::json!({"a": [1]})).expect("json")
        );
    }

    #[test]
    fn inputs_convert_or_say_why_not() {
        assert_eq!(input(FieldType::Int, &Gql::from(5)), Ok(Value::Int(5)));
        assert_eq!(
            input(FieldType::Float, &Gql::from(5)),
            Ok(Value::Float(5.0))
        );
        assert_eq!(
            input(
                FieldType::Timestamp,
                &Gql::String("2024-05-01T14:00:00+02:00".into())
            ),
            Ok(Value::Timestamp(
                Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").expect("valid")
            ))
        );
        assert!(input(FieldType::Bool, &Gql::from(1)).is_err());
    }
}
