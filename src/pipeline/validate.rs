//! Mapping and quality rules: one decoded document to a record, or the
//! complete list of reasons it is not one.
//!
//! Every declared field is looked up (topic capture first, then the `map`
//! pointer, then the same-named key), coerced to its type and checked
//! against its constraints; all violations of a record are collected, so a
//! quarantined record says everything that is wrong with it at once.

use crate::product::{Field, FieldType, OnInvalid, Product};
use crate::record::{Fields, Record, Timestamp, Value};

use super::coerce::coerce;
use super::fingerprint::fingerprint;
use super::node::Node;
use super::plan::{From, Plan, Planned};
use super::violation::{quote, Rule, Violation};
use super::{Accepted, Input};

/// Builds the record for one document, or returns every violation found.
/// `plan` is `product`'s (checked by the caller).
pub(crate) fn build(
    product: &Product,
    plan: &Plan,
    document: &Node<'_>,
    input: &Input<'_>,
) -> Result<Accepted, Vec<Violation>> {
    let mut fields = Fields::new();
    let mut violations = Vec::new();
    for planned in &plan.fields {
        let Some((_, field)) = product.fields.get_index(planned.index) else {
            continue;
        };
        match field_value(field, planned, document, input) {
            Ok(Some(value)) => {
                fields.insert(field.name.clone(), value);
            }
            Ok(None) => {}
            Err(mut problems) => violations.append(&mut problems),
        }
    }
    if !plan.key_declared {
        // Only a hand-built product can name an undeclared key.
        violations.push(Violation::field(
            &product.key,
            Rule::MissingKey,
            "the key field is not declared by the product",
        ));
    }
    let (event_time, event_time_from_payload) = match event_time(plan, document, input) {
        Ok(Some(t)) => (t, true),
        Ok(None) => (input.arrival, false),
        Err(problem) => {
            violations.push(problem);
            (input.arrival, false)
        }
    };

    let droppable = |v: &Violation| {
        product.quality.on_invalid == OnInvalid::DropField
            && v.field.as_deref().is_some_and(|name| {
                name != product.key && product.field(name).is_some_and(|f| !f.required)
            })
    };
    if !violations.iter().all(droppable) {
        return Err(violations);
    }
    let entity = match fields.get(&product.key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        // The key is a string or int field, checked at load; a hand-built
        // product with another key type gets its key as text.
        Some(other) => other.to_string(),
        None => {
            return Err(vec![Violation::field(
                &product.key,
                Rule::MissingKey,
                "key field is missing",
            )])
        }
    };
    let record = Record {
        entity,
        fields,
        event_time,
        origin: input.origin.clone(),
    };
    Ok(Accepted {
        index: 0,
        fingerprint: fingerprint(&product.name, &record, event_time_from_payload),
        record,
        event_time_from_payload,
        dropped: violations,
    })
}

/// The entity key of a record that may be invalid otherwise: the key field
/// as `build` would read it (topic capture first), when it is present and
/// coerces. `document` is `None` when the payload could not be decoded;
/// only a topic capture can name the entity then.
pub(crate) fn entity_of(
    product: &Product,
    plan: &Plan,
    document: Option<&Node<'_>>,
    input: &Input<'_>,
) -> Option<String> {
    let planned = plan.fields.first().filter(|planned| planned.is_key)?;
    let (_, field) = product.fields.get_index(planned.index)?;
    let value = field_value(field, planned, document.unwrap_or(&Node::Null), input).ok()??;
    match value {
        Value::String(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The field's coerced value: `None` when absent, `Some(Value::Null)` for
/// an explicit null (which clears the stored field), or every violation.
fn field_value(
    field: &Field,
    planned: &Planned,
    document: &Node<'_>,
    input: &Input<'_>,
) -> Result<Option<Value>, Vec<Violation>> {
    let is_key = planned.is_key;
    let missing = |what: &str| {
        if is_key {
            Err(vec![Violation::field(
                &field.name,
                Rule::MissingKey,
                format!("key field is {what}"),
            )])
        } else if field.required {
            Err(vec![Violation::field(
                &field.name,
                Rule::Required,
                format!("required field is {what}"),
            )])
        } else {
            Ok(None)
        }
    };
    // A topic capture wins (the topic is what the broker routed on, the
    // payload only what the device claims); it is seen as a JSON string,
    // borrowed, not copied.
    let captured;
    let found = match input.captures.iter().rev().find(|(f, _)| *f == field.name) {
        Some((_, level)) => {
            captured = Node::text(level);
            Some(&captured)
        }
        None => lookup(&field.name, planned, document),
    };
    let raw = match found {
        None => return missing("missing"),
        Some(Node::Null) => return missing("null").map(|_| Some(Value::Null)),
        Some(raw) => raw,
    };
    let value = coerce(raw, field.ty)
        .map_err(|message| vec![Violation::field(&field.name, Rule::Type, message)])?;
    if is_key {
        if let Value::String(s) = &value {
            if s.trim().is_empty() {
                return missing("empty");
            }
        }
    }
    let problems = constraints(field, &value);
    if problems.is_empty() {
        Ok(Some(value))
    } else {
        Err(problems)
    }
}

/// Where a field's value is in the document, as the plan says: the
/// field's `map` pointer, else the same-named key (of `values` for
/// telemetry; the payload itself for a raw source's `field`).
fn lookup<'n, 'a>(name: &str, planned: &Planned, document: &'n Node<'a>) -> Option<&'n Node<'a>> {
    match &planned.from {
        From::Pointer(pointer) => pointer.find(document),
        From::Values => document.get("values").and_then(|v| v.get(name)),
        From::Key => document.get(name),
        From::Document => Some(document),
        From::Nowhere => None,
    }
}

/// min, max, enum and pattern: every one that fails.
fn constraints(field: &Field, value: &Value) -> Vec<Violation> {
    let mut problems = Vec::new();
    let number = match value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    if let Some(n) = number {
        if let Some(min) = field.min.filter(|min| n < *min) {
            problems.push(Violation::field(
                &field.name,
                Rule::Min,
                format!("{value} is below min {min}"),
            ));
        }
        if let Some(max) = field.max.filter(|max| n > *max) {
            problems.push(Violation::field(
                &field.name,
                Rule::Max,
                format!("{value} is above max {max}"),
            ));
        }
    }
    if let Value::String(s) = value {
        if !field.enum_values.is_empty() && !field.enum_values.contains(s) {
            problems.push(Violation::field(
                &field.name,
                Rule::Enum,
                format!(
                    "{} is not one of: {}",
                    quote(s),
                    field.enum_values.join(", ")
                ),
            ));
        }
        if let Some(pattern) = field.pattern.as_ref().filter(|p| !p.is_match(s)) {
            problems.push(Violation::field(
                &field.name,
                Rule::Pattern,
                format!(
                    "{} does not match the pattern {}",
                    quote(s),
                    written_pattern(pattern.as_str())
                ),
            ));
        }
    }
    problems
}

/// The pattern as the definition wrote it: product patterns are compiled
/// anchored, as `^(?:pattern)$`.
fn written_pattern(compiled: &str) -> &str {
    compiled
        .strip_prefix("^(?:")
        .and_then(|p| p.strip_suffix(")$"))
        .unwrap_or(compiled)
}

/// The event time in the document: `None` when there is no pointer, or it
/// finds nothing or null (the arrival time is used then). Raw payloads
/// have no event time. When the document has none and the pointer is one
/// top-level key (`/ts`), a capture of that name gives it: the transport's
/// metadata (an MQTT 5 user property, a topic level) can carry the event
/// time of a payload that does not.
fn event_time(
    plan: &Plan,
    document: &Node<'_>,
    input: &Input<'_>,
) -> Result<Option<Timestamp>, Violation> {
    let Some(at) = &plan.event_time else {
        return Ok(None);
    };
    let captured;
    let found = match at.pointer.find(document) {
        None | Some(Node::Null) => {
            let capture = at
                .capture
                .as_deref()
                .and_then(|key| input.captures.iter().rev().find(|(f, _)| f == key));
            match capture {
                Some((_, text)) => {
                    captured = Node::text(text);
                    Some(&captured)
                }
                None => None,
            }
        }
        found => found,
    };
    let pointer = &at.text;
    match found {
        None | Some(Node::Null) => Ok(None),
        Some(raw) => match coerce(raw, FieldType::Timestamp) {
            Ok(Value::Timestamp(t)) => Ok(Some(t)),
            Ok(other) => Err(Violation::payload(
                Rule::EventTime,
                format!("event time at {pointer}: expected a timestamp, found {other}"),
            )),
            Err(message) => Err(Violation::payload(
                Rule::EventTime,
                format!("event time at {pointer}: {message}"),
            )),
        },
    }
}
