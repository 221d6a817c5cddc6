//! Decoding: payload bytes to the JSON documents records are mapped from,
//! one per record, after the payload-wide checks (size, UTF-8, nesting,
//! record count).
//!
//! Every format ends up as JSON so that mapping has one set of rules: a
//! csv row is an object keyed by column name (values are strings), a raw
//! payload is a scalar. Failures are located: a problem with the payload as
//! a whole is one [`Violation`] for all of it; a problem with one array
//! element, ndjson line or csv row is a violation for that record only, and
//! the others are still decoded.

use std::borrow::Cow;

use crate::product::PayloadFormat;

use super::node::Node;
use super::violation::{describe, Rule, Violation};
use super::{Limits, SourceShape};

/// One record's document, or why it has none.
#[derive(Debug)]
pub(crate) struct Item<'a> {
    /// Array element, or 0-based line of an ndjson line or csv row, or 0
    /// for a single-record payload.
    pub index: usize,
    /// Borrowing from the payload (and a csv source's column names).
    pub document: Result<Node<'a>, Violation>,
}

/// Decodes a payload; `Err` refuses the payload as a whole.
pub(crate) fn decode<'a>(
    payload: &'a [u8],
    shape: &'a SourceShape,
    limits: &Limits,
) -> Result<Vec<Item<'a>>, Violation> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Violation::payload(
            Rule::TooLarge,
            format!(
                "{} bytes is over the limit of {} bytes",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        Violation::payload(
            Rule::NotUtf8,
            format!(
                "not UTF-8 text: invalid byte sequence at byte {}",
                e.valid_up_to()
            ),
        )
    })?;
    // Editors and Windows tools write a byte-order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match shape.format {
        PayloadFormat::Json => json(text, limits, object),
        PayloadFormat::Telemetry => json(text, limits, telemetry),
        PayloadFormat::Ndjson => ndjson(text, limits),
        // Product sources always name columns and the raw field; a shape
        // switched to csv or raw with `with_format` may not, and its
        // payloads would otherwise lose every value without a word.
        PayloadFormat::Csv if shape.columns.is_empty() => Err(Violation::payload(
            Rule::Malformed,
            "csv payloads need columns, and this source names none",
        )),
        PayloadFormat::Csv => csv(text, &shape.columns, limits),
        PayloadFormat::Raw if shape.field.is_none() => Err(Violation::payload(
            Rule::Malformed,
            "raw payloads need a field to go to, and this source names none",
        )),
        PayloadFormat::Raw => Ok(vec![Item {
            index: 0,
            document: Ok(raw(text)),
        }]),
    }
}

/// Checks that a decoded element is a record of the format.
type Check = for<'a> fn(Node<'a>) -> Result<Node<'a>, Violation>;

/// A JSON document: one record, or an array of records.
fn json<'a>(text: &'a str, limits: &Limits, check: Check) -> Result<Vec<Item<'a>>, Violation> {
    let document = parse(text, 0, limits)?;
    match document {
        Node::Array(elements) => {
            if elements.len() > limits.max_records {
                return Err(too_many(elements.len(), limits));
            }
            Ok(elements
                .into_iter()
                .enumerate()
                .map(|(index, element)| Item {
                    index,
                    document: check(element),
                })
                .collect())
        }
        single => Ok(vec![Item {
            index: 0,
            document: check(single),
        }]),
    }
}

fn object(value: Node<'_>) -> Result<Node<'_>, Violation> {
    match value {
        Node::Object(_) => Ok(value),
        other => Err(Violation::payload(
            Rule::NotAnObject,
            format!("expected a JSON object, found {}", describe(&other)),
        )),
    }
}

/// `{"ts": ..., "values": {...}}`: `values` must be an object, since every
/// unmapped field is read from it.
fn telemetry(value: Node<'_>) -> Result<Node<'_>, Violation> {
    let value = object(value)?;
    match value.get("values") {
        Some(Node::Object(_)) => Ok(value),
        Some(other) => Err(Violation::payload(
            Rule::NotAnObject,
            format!(
                "expected `values` to be an object of field values, found {}",
                describe(other)
            ),
        )),
        None => Err(Violation::payload(
            Rule::NotAnObject,
            "expected a telemetry object {\"ts\": ..., \"values\": {...}}, found no `values`",
        )),
    }
}

/// One JSON object per non-empty line; a bad line is refused alone.
fn ndjson<'a>(text: &'a str, limits: &Limits) -> Result<Vec<Item<'a>>, Violation> {
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .collect();
    if lines.len() > limits.max_records {
        return Err(too_many(lines.len(), limits));
    }
    Ok(lines
        .into_iter()
        .map(|(index, line)| Item {
            index,
            document: parse(line, index, limits).and_then(object),
        })
        .collect())
}

/// Rows split into `columns`; quoted fields may hold commas, quotes and
/// newlines. A row that repeats the column names is a header and skipped.
/// An empty cell is an absent value (csv cannot tell "" from nothing, and
/// absent leaves the stored field as it was instead of clearing it).
fn csv<'a>(text: &str, columns: &'a [String], limits: &Limits) -> Result<Vec<Item<'a>>, Violation> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut items: Vec<Item> = Vec::new();
    // A row's index is its 0-based line, but never one a row before it
    // took: the csv reader also ends rows at a lone `\r` without counting a
    // line, and two rows with one index would be replayed together from
    // the quarantine (found by fuzzing).
    let index_of = |items: &[Item], line: Option<u64>| {
        let line = line.map_or(0, |l| l.saturating_sub(1) as usize);
        match items.last() {
            Some(previous) => line.max(previous.index + 1),
            None => line,
        }
    };
    for row in reader.records() {
        let item = match row {
            Ok(row) => {
                if row.iter().eq(columns.iter().map(String::as_str)) {
                    continue;
                }
                Item {
                    index: index_of(&items, row.position().map(csv::Position::line)),
                    document: csv_row(&row, columns),
                }
            }
            Err(e) => Item {
                index: index_of(&items, e.position().map(csv::Position::line)),
                document: Err(Violation::payload(
                    Rule::Malformed,
                    format!("invalid csv: {e}"),
                )),
            },
        };
        if items.len() == limits.max_records {
            return Err(Violation::payload(
                Rule::TooManyRecords,
                format!(
                    "more than {} csv rows, the limit per payload",
                    limits.max_records
                ),
            ));
        }
        items.push(item);
    }
    Ok(items)
}

fn csv_row<'a>(row: &csv::StringRecord, columns: &'a [String]) -> Result<Node<'a>, Violation> {
    if row.len() != columns.len() {
        return Err(Violation::payload(
            Rule::Malformed,
            format!(
                "expected {} csv columns ({}), found {}",
                columns.len(),
                columns.join(", "),
                row.len()
            ),
        ));
    }
    // A repeated column is a repeated key: its last cell counts.
    let object: Vec<(Cow<'a, str>, Node<'a>)> = columns
        .iter()
        .zip(row.iter())
        .filter(|(_, cell)| !cell.is_empty())
        .map(|(column, cell)| {
            (
                Cow::Borrowed(column.as_str()),
                Node::String(Cow::Owned(cell.to_string())),
            )
        })
        .collect();
    Ok(Node::Object(object))
}

/// The trimmed payload: a JSON scalar when it reads as one (`21.5`,
/// `true`, `"on"`), else the text itself (`on`). Arrays and objects are
/// not scalars and stay text.
fn raw(text: &str) -> Node<'_> {
    let text = text.trim();
    if !text.starts_with(['[', '{']) {
        if let Ok(scalar) = serde_json::from_str::<Node>(text) {
            return scalar;
        }
    }
    Node::text(text)
}

/// Parses one JSON document after checking its nesting. `first_line` is
/// the 0-based line the text starts on, so ndjson errors name the line of
/// the payload.
fn parse<'a>(text: &'a str, first_line: usize, limits: &Limits) -> Result<Node<'a>, Violation> {
    if let Some(at) = too_deep_at(text, limits.max_depth) {
        return Err(too_deep(limits, Some(at)));
    }
    serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        if full.starts_with("recursion limit exceeded") {
            return too_deep(limits, None);
        }
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let reason = full.strip_suffix(&suffix).unwrap_or(&full);
        Violation::payload(
            Rule::Malformed,
            format!(
                "invalid JSON at line {} column {}: {reason}",
                first_line + e.line(),
                e.column()
            ),
        )
    })
}

fn too_deep(limits: &Limits, at: Option<usize>) -> Violation {
    Violation::payload(
        Rule::TooDeep,
        match at {
            Some(at) => format!(
                "JSON nested deeper than {} levels (at byte {at})",
                limits.max_depth
            ),
            None => format!("JSON nested deeper than {} levels", limits.max_depth),
        },
    )
}

fn too_many(found: usize, limits: &Limits) -> Violation {
    Violation::payload(
        Rule::TooManyRecords,
        format!(
            "{found} records is over the limit of {} per payload",
            limits.max_records
        ),
    )
}

/// The byte offset where JSON text first nests deeper than `max` arrays
/// and objects, found by a flat scan: a parser would recurse (serde_json
/// stops at 128 levels, dropping the value recurses too) and a deep
/// payload is cheap to send.
fn too_deep_at(text: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (at, byte) in text.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(at);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert_eq!(too_deep_at(r#"{"a":[1,{"b":2}]}"#, 3), None);
        assert_eq!(too_deep_at(r#"{"a":[1,{"b":2}]}"#, 2), Some(8));
        assert_eq!(too_deep_at(r#"{"a":"[[[[\"[[[["}"#, 1), None);
        assert_eq!(too_deep_at(&"[".repeat(100_000), 64), Some(64));
    }

    /// Regression (fuzzing, csv): rows ended by a lone `\r` all had the
    /// index of their line, so two records of one payload shared an index.
    #[test]
    fn csv_rows_have_distinct_indexes_whatever_ends_them() {
        let columns: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let shape = SourceShape {
            format: PayloadFormat::Csv,
            map: Default::default(),
            event_time: None,
            columns,
            field: None,
        };
        let indexes = |text: &str| -> Vec<usize> {
            decode(text.as_bytes(), &shape, &Limits::default())
                .expect("decodes")
                .iter()
                .map(|item| item.index)
                .collect()
        };
        assert_eq!(indexes("1,2\r3,4\r5,6\n7,8\n"), vec![0, 1, 2, 3]);
        assert_eq!(
            indexes("1,2\r\n3,4\r\n"),
            vec![0, 1],
            "CRLF is one line end"
        );
        let quoted = indexes("a,b\n1,\"x\ny\"\n3,4\n");
        assert_eq!(quoted.len(), 2, "{quoted:?}");
        assert!(quoted[0] < quoted[1], "{quoted:?}");
    }

    #[test]
    fn raw_payloads_are_scalars_or_text() {
        assert_eq!(raw(" 21.5\n").to_json(), serde_json::json!(21.5));
        assert_eq!(raw("\"on\"").to_json(), serde_json::json!("on"));
        assert_eq!(raw("on").to_json(), serde_json::json!("on"));
        assert_eq!(raw("[1,2]").to_json(), serde_json::json!("[1,2]"));
        assert_eq!(raw("null"), Node::Null);
    }
}
