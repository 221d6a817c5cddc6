//! Typed values and records: the currency that moves between stages.
//!
//! The pipeline produces [`Record`]s (one observation of one entity of one
//! product), the store merges them into instances and history, and the API
//! and sync read them back. Every stage speaks these types, never raw JSON,
//! so a value's type is decided once, at ingest, against the product's
//! declared field type.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in time, in microseconds since the Unix epoch (UTC).
///
/// Microseconds keep sub-millisecond device clocks without a float, and an
/// `i64` of them spans ±292,000 years, so no realistic event time overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        Timestamp(jiff::Timestamp::now().as_microsecond())
    }

    pub fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    pub fn from_millis(millis: i64) -> Timestamp {
        Timestamp(millis.saturating_mul(1_000))
    }

    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000)
    }

    /// `self - duration`, saturating at the ends of the range.
    pub fn saturating_sub(self, duration: std::time::Duration) -> Timestamp {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(micros))
    }

    /// `self + duration`, saturating at the ends of the range.
    pub fn saturating_add(self, duration: std::time::Duration) -> Timestamp {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// Parses RFC 3339 / ISO 8601 with an offset (`2024-05-01T12:00:00Z`,
    /// `2024-05-01T14:00:00.5+02:00`).
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampError> {
        let parsed: jiff::Timestamp =
            text.trim()
                .parse()
                .map_err(|e: jiff::Error| TimestampError {
                    input: text.to_string(),
                    reason: e.to_string(),
                })?;
        Ok(Timestamp(parsed.as_microsecond()))
    }

    /// RFC 3339 in UTC, e.g. `2024-05-01T12:00:00.123456Z`; `None` outside the
    /// range an RFC 3339 string can represent (years 0000–9999 or so).
    pub fn to_rfc3339(self) -> Option<String> {
        jiff::Timestamp::from_microsecond(self.0)
            .ok()
            .map(|t| t.to_string())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_rfc3339() {
            Some(text) => f.write_str(&text),
            None => write!(f, "@{}us", self.0),
        }
    }
}

/// A string that is not a valid RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{input}` is not an RFC 3339 timestamp: {reason}")]
pub struct TimestampError {
    pub input: String,
    pub reason: String,
}

/// One field value, already coerced to the product's declared field type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Timestamp(Timestamp),
    /// Free-form JSON, for fields declared `type: json`.
    Json(serde_json::Value),
}

impl Value {
    /// The name of this value's type, as used in product definitions.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Timestamp(_) => "timestamp",
            Value::Json(_) => "json",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as JSON, for the API and upstream envelopes. Timestamps
    /// become RFC 3339 strings; non-finite floats become `null`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Timestamp(t) => match t.to_rfc3339() {
                Some(text) => serde_json::Value::String(text),
                None => serde_json::Value::from(t.0),
            },
            Value::Json(j) => j.clone(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Timestamp(t) => write!(f, "{t}"),
            Value::Json(j) => write!(f, "{j}"),
        }
    }
}

/// Field name → value. Ordered so that encodings and digests are stable.
pub type Fields = BTreeMap<String, Value>;

/// Where a record came from and on whose authority it was written: what
/// the audit trail keeps about a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The source, e.g. `mqtt:plant/berlin/machine/m1/telemetry`,
    /// `http`, `file:/var/log/meter.ndjson`, `graphql`.
    pub source: String,
    /// The identity behind it when there is one (API token name, client
    /// certificate subject, MQTT client id).
    pub actor: Option<String>,
}

impl Origin {
    pub fn new(source: impl Into<String>) -> Origin {
        Origin {
            source: source.into(),
            actor: None,
        }
    }

    pub fn with_actor(mut self, actor: impl Into<String>) -> Origin {
        self.actor = Some(actor.into());
        self
    }
}

/// One observation of one entity of one product: the pipeline's output and
/// the store's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The entity key's value, rendered as text (int keys in decimal).
    pub entity: String,
    /// The fields this observation carries; absent fields are left as they
    /// were on the instance, an explicit [`Value::Null`] clears one.
    pub fields: Fields,
    /// When the observation was made (from the payload, or arrival time).
    pub event_time: Timestamp,
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_rfc3339_with_offsets() {
        let t = Timestamp::parse_rfc3339("2024-05-01T14:00:00.5+02:00").expect("valid");
        assert_eq!(t.to_rfc3339().as_deref(), Some("2024-05-01T12:00:00.5Z"));
        assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Ok(t));
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn value_json_keeps_types_and_drops_non_finite_floats() {
        assert_eq!(Value::Int(3).to_json(), serde_json::json!(3));
        assert_eq!(Value::Float(f64::NAN).to_json(), serde_json::Value::Null);
        assert_eq!(
            Value::Timestamp(Timestamp::from_secs(0)).to_json(),
            serde_json::json!("1970-01-01T00:00:00Z")
        );
    }
}
