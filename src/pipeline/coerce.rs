//! Type coercion: a JSON value from a payload (or a topic capture, or a csv
//! cell, both seen as JSON strings) to the field's declared type.
//!
//! Devices are sloppy about types in predictable ways — numbers sent as
//! text, `1` for true, epoch milliseconds for times — so coercion accepts
//! every unambiguous spelling of a value and refuses everything else with a
//! message naming what was expected and what was found. It never guesses:
//! `3.5` is not an int, `"yes"` is not a bool, NaN and infinities are not
//! numbers.

use crate::product::FieldType;
use crate::record::{Timestamp, Value};

use super::node::Node;
use super::violation::describe;

/// Coerces a non-null value to `ty`. The error is the message of a
/// [`Rule::Type`](super::Rule::Type) violation, e.g.
/// `expected a float, found "hot"`.
pub(crate) fn coerce(value: &Node<'_>, ty: FieldType) -> Result<Value, String> {
    let coerced = match ty {
        FieldType::String => to_string(value).map(Value::String),
        FieldType::Int => to_int(value).map(Value::Int),
        FieldType::Float => to_float(value).map(Value::Float),
        FieldType::Bool => to_bool(value).map(Value::Bool),
        FieldType::Timestamp => to_timestamp(value).map(Value::Timestamp),
        FieldType::Json => Ok(Value::Json(value.to_json())),
    };
    coerced.map_err(|why| {
        format!(
            "expected {}, found {}{}",
            expected(ty),
            describe(value),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        )
    })
}

/// A coercion failure, with an optional reason beyond "wrong type".
type Refused = Option<&'static str>;

fn expected(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Int => "an int",
        FieldType::Float => "a float",
        FieldType::Bool => "a bool (true/false or 1/0)",
        FieldType::Timestamp => {
            "a timestamp (RFC 3339 text with an offset, or epoch seconds, milliseconds or microseconds)"
        }
        FieldType::Json => "any JSON value",
    }
}

fn to_string(value: &Node) -> Result<String, Refused> {
    match value {
        Node::String(s) => Ok(s.to_string()),
        Node::Number(n) => Ok(n.to_string()),
        Node::Bool(b) => Ok(b.to_string()),
        _ => Err(None),
    }
}

/// Integers as they are; floats and numeric text only when integral and
/// inside the i64 range.
fn to_int(value: &Node) -> Result<i64, Refused> {
    match value {
        Node::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(Some("outside the 64-bit integer range"))
            } else {
                integral(n.as_f64().ok_or(None)?)
            }
        }
        Node::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => Ok(i),
                Err(_) => integral(parse_finite(s)?),
            }
        }
        _ => Err(None),
    }
}

/// 2^63 as an f64: the first float that no longer fits in an i64.
const I64_END: f64 = 9_223_372_036_854_775_808.0;

fn integral(f: f64) -> Result<i64, Refused> {
    if f.fract() != 0.0 {
        Err(Some("not a whole number"))
    } else if !(-I64_END..I64_END).contains(&f) {
        Err(Some("outside the 64-bit integer range"))
    } else {
        // In range and whole: the cast is exact.
        Ok(f as i64)
    }
}

fn to_float(value: &Node) -> Result<f64, Refused> {
    match value {
        Node::Number(n) => n.as_f64().filter(|f| f.is_finite()).ok_or(None),
        Node::String(s) => parse_finite(s.trim()),
        _ => Err(None),
    }
}

/// Decimal text to a finite float. Rust's parser also reads "NaN", "inf"
/// and "infinity", which are refused: they break min/max checks, sorting
/// and every JSON consumer downstream.
fn parse_finite(s: &str) -> Result<f64, Refused> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(_) => Err(Some("not a finite number")),
        Err(_) => Err(None),
    }
}

fn to_bool(value: &Node) -> Result<bool, Refused> {
    match value {
        Node::Bool(b) => Ok(*b),
        Node::Number(n) => match n.as_u64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(None),
        },
        Node::String(s) => {
            let s = s.trim();
            if s.eq_ignore_ascii_case("true") || s == "1" {
                Ok(true)
            } else if s.eq_ignore_ascii_case("false") || s == "0" {
                Ok(false)
            } else {
                Err(None)
            }
        }
        _ => Err(None),
    }
}

/// RFC 3339 text, or an epoch number (or numeric text) whose unit is told
/// by its size: below 1e11 seconds (fractions kept), below 1e14
/// milliseconds, else microseconds. 1e11 seconds is the year 5138 and 1e11
/// milliseconds is 1973, so the ranges do not overlap for any realistic
/// device clock.
pub(crate) fn to_timestamp(value: &Node) -> Result<Timestamp, Refused> {
    let micros = match value {
        Node::String(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                epoch_int(i)
            } else {
                match parse_finite(s) {
                    Ok(f) => epoch_float(f)?,
                    Err(Some(why)) => return Err(Some(why)),
                    Err(None) => return Timestamp::parse_rfc3339(s).map_err(|_| None),
                }
            }
        }
        Node::Number(n) => match n.as_i64() {
            Some(i) => epoch_int(i),
            None => epoch_float(n.as_f64().ok_or(None)?)?,
        },
        _ => return Err(None),
    };
    // Keep to what RFC 3339 can show (years -9999..=9999), so every stored
    // time can be rendered by the API and upstream.
    match jiff::Timestamp::from_microsecond(micros) {
        Ok(_) => Ok(Timestamp::from_micros(micros)),
        Err(_) => Err(Some("outside the years -9999 to 9999")),
    }
}

const SECONDS_BELOW: f64 = 1e11;
const MILLIS_BELOW: f64 = 1e14;

fn epoch_int(i: i64) -> i64 {
    let magnitude = i.unsigned_abs() as f64;
    if magnitude < SECONDS_BELOW {
        i * 1_000_000
    } else if magnitude < MILLIS_BELOW {
        i * 1_000
    } else {
        i
    }
}

fn epoch_float(f: f64) -> Result<i64, Refused> {
    if !f.is_finite() {
        return Err(Some("not a finite number"));
    }
    let micros = if f.abs() < SECONDS_BELOW {
        f * 1e6
    } else if f.abs() < MILLIS_BELOW {
        f * 1e3
    } else {
        f
    }
    .round();
    if (-I64_END..I64_END).contains(&micros) {
        Ok(micros as i64)
    } else {
        Err(Some("outside the years -9999 to 9999"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value as Json};

    use super::*;

    /// `value` coerced as the pipeline sees it: decoded from its text.
    fn coerce(value: &Json, ty: FieldType) -> Result<Value, String> {
        let text = value.to_string();
        let node: Node<'_> = serde_json::from_str(&text).expect("decodes");
        super::coerce(&node, ty)
    }

    fn ok(value: Json, ty: FieldType) -> Value {
        coerce(&value, ty).unwrap_or_else(|e| panic!("{value} as {ty}: {e}"))
    }

    fn err(value: Json, ty: FieldType) -> String {
        match coerce(&value, ty) {
            Ok(v) => panic!("{value} as {ty} gave {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn floats_from_numbers_and_numeric_text() {
        assert_eq!(ok(json!(21.5), FieldType::Float), Value::Float(21.5));
        assert_eq!(ok(json!(21), FieldType::Float), Value::Float(21.0));
        assert_eq!(ok(json!(" 21.5 "), FieldType::Float), Value::Float(21.5));
        assert_eq!(ok(json!("-4e2"), FieldType::Float), Value::Float(-400.0));
        assert_eq!(
            err(json!("hot"), FieldType::Float),
            r#"expected a float, found "hot""#
        );
        assert_eq!(
            err(json!("NaN"), FieldType::Float),
            r#"expected a float, found "NaN" (not a finite number)"#
        );
        assert!(err(json!("inf"), FieldType::Float).contains("not a finite number"));
        assert!(err(json!("-infinity"), FieldType::Float).contains("not a finite number"));
        assert_eq!(
            err(json!(true), FieldType::Float),
            "expected a float, found true"
        );
        assert_eq!(
            err(json!({"a": 1}), FieldType::Float),
            "expected a float, found an object"
        );
    }

    #[test]
    fn ints_from_integers_integral_floats_and_text() {
        assert_eq!(ok(json!(42), FieldType::Int), Value::Int(42));
        assert_eq!(ok(json!(-3.0), FieldType::Int), Value::Int(-3));
        assert_eq!(ok(json!("17"), FieldType::Int), Value::Int(17));
        assert_eq!(ok(json!("3.0"), FieldType::Int), Value::Int(3));
        assert_eq!(ok(json!(i64::MIN), FieldType::Int), Value::Int(i64::MIN));
        assert_eq!(
            err(json!(3.5), FieldType::Int),
            "expected an int, found 3.5 (not a whole number)"
        );
        assert_eq!(
            err(json!(u64::MAX), FieldType::Int),
            "expected an int, found 18446744073709551615 (outside the 64-bit integer range)"
        );
        assert!(err(json!(1e19), FieldType::Int).contains("outside the 64-bit integer range"));
        assert!(err(json!("9223372036854775808"), FieldType::Int).contains("outside"));
        assert_eq!(
            err(json!("twelve"), FieldType::Int),
            r#"expected an int, found "twelve""#
        );
        assert_eq!(
            err(json!([1]), FieldType::Int),
            "expected an int, found an array"
        );
    }

    #[test]
    fn bools_from_booleans_zero_one_and_text() {
        for (input, expected) in [
            (json!(true), true),
            (json!(false), false),
            (json!(1), true),
            (json!(0), false),
            (json!("true"), true),
            (json!("FALSE"), false),
            (json!("1"), true),
            (json!("0"), false),
        ] {
            assert_eq!(ok(input, FieldType::Bool), Value::Bool(expected));
        }
        assert_eq!(
            err(json!(2), FieldType::Bool),
            "expected a bool (true/false or 1/0), found 2"
        );
        assert!(err(json!("yes"), FieldType::Bool).contains(r#"found "yes""#));
        assert!(err(json!(1.0), FieldType::Bool).contains("found 1.0"));
    }

    #[test]
    fn strings_from_text_numbers_and_booleans() {
        assert_eq!(
            ok(json!("m1"), FieldType::String),
            Value::String("m1".into())
        );
        assert_eq!(ok(json!(42), FieldType::String), Value::String("42".into()));
        assert_eq!(
            ok(json!(2.5), FieldType::String),
            Value::String("2.5".into())
        );
        assert_eq!(
            ok(json!(true), FieldType::String),
            Value::String("true".into())
        );
        assert_eq!(
            err(json!({"a": 1}), FieldType::String),
            "expected a string, found an object"
        );
    }

    #[test]
    fn json_takes_anything() {
        let v = json!({"a": [1, {"b": null}]});
        assert_eq!(ok(v.clone(), FieldType::Json), Value::Json(v));
        assert_eq!(ok(json!("x"), FieldType::Json), Value::Json(json!("x")));
    }

    #[test]
    fn timestamps_from_rfc3339_and_epochs_of_every_unit() {
        let t = Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").expect("valid");
        let secs = 1_714_564_800_i64;
        for input in [
            json!("2024-05-01T12:00:00Z"),
            json!("2024-05-01T14:00:00+02:00"),
            json!(secs),
            json!(secs as f64),
            json!(secs.to_string()),
            json!(secs * 1_000),
            json!((secs * 1_000).to_string()),
            json!(secs * 1_000_000),
            json!(format!("{}.0", secs * 1_000)),
        ] {
            assert_eq!(
                ok(input.clone(), FieldType::Timestamp),
                Value::Timestamp(t),
                "{input}"
            );
        }
        assert_eq!(
            ok(json!(1.5), FieldType::Timestamp),
            Value::Timestamp(Timestamp::from_micros(1_500_000))
        );
        assert_eq!(
            ok(json!("1714564800.25"), FieldType::Timestamp),
            Value::Timestamp(Timestamp::from_micros(1_714_564_800_250_000))
        );
        assert_eq!(
            ok(json!(-86_400), FieldType::Timestamp),
            Value::Timestamp(Timestamp::from_secs(-86_400))
        );
        assert!(err(json!("yesterday"), FieldType::Timestamp).ends_with(r#"found "yesterday""#));
        // No offset: ambiguous, refused.
        assert!(coerce(&json!("2024-05-01T12:00:00"), FieldType::Timestamp).is_err());
        assert!(err(json!(i64::MAX), FieldType::Timestamp).contains("outside the years"));
        assert!(err(json!(1e300), FieldType::Timestamp).contains("outside the years"));
        assert!(err(json!("NaN"), FieldType::Timestamp).contains("not a finite number"));
        assert!(coerce(&json!(true), FieldType::Timestamp).is_err());
    }
}
