//! Why a payload or a record was refused: one [`Violation`] per problem,
//! each tagged with the [`Rule`] it broke so callers can count by rule.

use std::fmt;

use super::node::Node;

/// The rule a payload or record broke. [`Rule::name`] is the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The payload is larger than [`Limits::max_payload_bytes`](super::Limits).
    TooLarge,
    /// The payload is not UTF-8 text.
    NotUtf8,
    /// The payload (or one line or row of it) cannot be decoded in its
    /// format: JSON syntax, a csv row with the wrong number of columns.
    Malformed,
    /// JSON nested deeper than [`Limits::max_depth`](super::Limits).
    TooDeep,
    /// More records than [`Limits::max_records`](super::Limits).
    TooManyRecords,
    /// A record that should be a JSON object is something else.
    NotAnObject,
    /// The entity key is absent, null or empty.
    MissingKey,
    /// The entity key is longer than the store keeps
    /// ([`Limits::max_key_bytes`](super::Limits)).
    KeyTooLong,
    /// A required field is absent or null.
    Required,
    /// A value cannot be coerced to its field's declared type.
    Type,
    Min,
    Max,
    Enum,
    Pattern,
    /// The event time in the payload is not a timestamp.
    EventTime,
}

impl Rule {
    pub const ALL: [Rule; 15] = [
        Rule::TooLarge,
        Rule::NotUtf8,
        Rule::Malformed,
        Rule::TooDeep,
        Rule::TooManyRecords,
        Rule::NotAnObject,
        Rule::MissingKey,
        Rule::KeyTooLong,
        Rule::Required,
        Rule::Type,
        Rule::Min,
        Rule::Max,
        Rule::Enum,
        Rule::Pattern,
        Rule::EventTime,
    ];

    /// snake_case, stable: used as a metrics label and in quarantine entries.
    pub fn name(self) -> &'static str {
        match self {
            Rule::TooLarge => "too_large",
            Rule::NotUtf8 => "not_utf8",
            Rule::Malformed => "malformed",
            Rule::TooDeep => "too_deep",
            Rule::TooManyRecords => "too_many_records",
            Rule::NotAnObject => "not_an_object",
            Rule::MissingKey => "missing_key",
            Rule::KeyTooLong => "key_too_long",
            Rule::Required => "required",
            Rule::Type => "type",
            Rule::Min => "min",
            Rule::Max => "max",
            Rule::Enum => "enum",
            Rule::Pattern => "pattern",
            Rule::EventTime => "event_time",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem with a payload or record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The declared field involved; `None` when the problem is with the
    /// payload or the record as a whole (including its event time).
    pub field: Option<String>,
    pub rule: Rule,
    /// What was found and what was expected, without the field name
    /// (Display adds it): `212 is above max 150`.
    pub message: String,
}

impl Violation {
    pub(crate) fn payload(rule: Rule, message: impl Into<String>) -> Violation {
        Violation {
            field: None,
            rule,
            message: message.into(),
        }
    }

    pub(crate) fn field(field: &str, rule: Rule, message: impl Into<String>) -> Violation {
        Violation {
            field: Some(field.to_string()),
            rule,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    /// `temperature_c: 212 is above max 150`, or
    /// `payload: invalid JSON at line 1 column 7: expected value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = self.field.as_deref().unwrap_or("payload");
        write!(f, "{subject}: {}", self.message)
    }
}

/// Longest piece of input quoted in a message; payloads can be large and
/// messages end up in logs, metrics and quarantine entries.
const MAX_QUOTED_CHARS: usize = 64;

/// How a found JSON value is shown in a message: scalars as JSON text
/// (strings quoted, shortened), containers by kind.
pub(crate) fn describe(value: &Node<'_>) -> String {
    match value {
        Node::Null => "null".to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Number(n) => n.to_string(),
        Node::String(s) => quote(s),
        Node::Array(_) => "an array".to_string(),
        Node::Object(_) => "an object".to_string(),
    }
}

/// `s` as a JSON string literal, cut to [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn quote(s: &str) -> String {
    let mut chars = s.char_indices();
    match chars.nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => {
            let shown = serde_json::Value::String(s[..cut].to_string()).to_string();
            format!("{}…\"", &shown[..shown.len() - 1])
        }
        None => serde_json::Value::String(s.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_are_unique_snake_case() {
        let names: std::collections::BTreeSet<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
        assert!(names.iter().all(|n| n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())));
    }

    #[test]
    fn display_names_the_field_or_the_payload() {
        let v = Violation::field("temperature_c", Rule::Max, "212 is above max 150");
        assert_eq!(v.to_string(), "temperature_c: 212 is above max 150");
        let v = Violation::payload(
            Rule::Malformed,
            "invalid JSON at line 1 column 7: expected value",
        );
        assert_eq!(
            v.to_string(),
            "payload: invalid JSON at line 1 column 7: expected value"
        );
    }

    #[test]
    fn long_strings_are_shortened_in_messages() {
        let long = "x".repeat(500);
        let shown = quote(&long);
        assert!(shown.len() < 80, "{shown}");
        assert!(shown.ends_with("…\""));
        assert_eq!(quote("a\"b"), r#""a\"b""#);
        assert_eq!(describe(&Node::Array(vec![])), "an array");
    }
}
