//! The pipeline as ingest uses it: a product definition, a source shape, a
//! payload in, records or located reasons out.

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::product::{parse_definition, LoadContext, PayloadFormat, Product};
use crate::record::{Fields, Value};

// --- helpers -----------------------------------------------------------------

/// A machine-health product with one field of every type and constraint.
/// Sources: 0 mqtt json (topic captures, map, event time), 1 http json,
/// 2 mqtt telemetry, 3 mqtt raw, 4 file csv, 5 http ndjson.
fn machine(on_invalid: &str) -> Product {
    let yaml = format!(
        r#"
product: machine_health
version: 1
domain: plant
owner: team@example.com
key: machine_id
fields:
  machine_id:    {{ type: string, required: true, pattern: "m[0-9]+" }}
  site:          {{ type: string }}
  temperature_c: {{ type: float, min: -40, max: 150 }}
  status:        {{ type: string, enum: [ok, warn, fault] }}
  serial:        {{ type: string, pattern: "[A-Z]{{3}}[0-9]{{4}}" }}
  count:         {{ type: int, min: 0 }}
  running:       {{ type: bool }}
  serviced_at:   {{ type: timestamp }}
  extra:         {{ type: json }}
  firmware:      {{ type: string, required: true }}
sources:
  - mqtt:
      topic: "plant/{{site}}/machine/{{machine_id}}/telemetry"
      event_time: /ts
      map: {{ temperature_c: /temp, status: /state/code }}
  - http: {{}}
  - mqtt: {{ topic: "t/{{machine_id}}", format: telemetry }}
  - mqtt: {{ topic: "r/{{machine_id}}/temp", format: raw, field: temperature_c }}
  - file:
      path: machines.csv
      format: csv
      columns: [machine_id, firmware, temperature_c, serviced_at, status]
      event_time: /serviced_at
  - http: {{ format: ndjson }}
quality: {{ on_invalid: {on_invalid} }}
"#
    );
    parse_definition(Path::new("machine.yaml"), &yaml, &LoadContext::default())
        .unwrap_or_else(|e| panic!("test definition loads: {:?}", e.messages()))
}

/// A product keyed by an int field.
fn counter() -> Product {
    let yaml = "
product: counter
version: 1
domain: test
owner: team@example.com
key: id
fields:
  id: { type: int, required: true }
  n: { type: int }
sources:
  - http: {}
";
    parse_definition(Path::new("counter.yaml"), yaml, &LoadContext::default())
        .unwrap_or_else(|e| panic!("test definition loads: {:?}", e.messages()))
}

fn shape(product: &Product, source: usize) -> SourceShape {
    SourceShape::from_source(&product.sources[source])
}

const ARRIVAL: Timestamp = Timestamp(1_700_000_000_000_000);

fn run_with(
    product: &Product,
    shape: &SourceShape,
    payload: &[u8],
    captures: &[(&str, &str)],
    limits: &Limits,
) -> Processed {
    let captures: Vec<(String, String)> = captures
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let input = Input {
        payload,
        captures: &captures,
        arrival: ARRIVAL,
        origin: Origin::new("test").with_actor("device-7"),
    };
    process(product, shape, &input, limits)
}

fn run(product: &Product, source: usize, payload: &str) -> Processed {
    run_with(
        product,
        &shape(product, source),
        payload.as_bytes(),
        &[],
        &Limits::default(),
    )
}

/// The only record of a payload, which must be accepted.
fn accepted(processed: Processed) -> Accepted {
    assert!(processed.invalid.is_empty(), "{:?}", processed.invalid);
    assert_eq!(processed.accepted.len(), 1, "{:?}", processed.accepted);
    processed.accepted.into_iter().next().expect("one record")
}

/// The displayed reasons of the only invalid record of a payload.
fn refused(processed: Processed) -> (Option<usize>, Vec<String>) {
    assert!(processed.accepted.is_empty(), "{:?}", processed.accepted);
    assert_eq!(processed.invalid.len(), 1, "{:?}", processed.invalid);
    let invalid = processed.invalid.into_iter().next().expect("one record");
    (
        invalid.index,
        invalid.reasons.iter().map(ToString::to_string).collect(),
    )
}

fn rules(invalid: &Invalid) -> Vec<Rule> {
    invalid.reasons.iter().map(|v| v.rule).collect()
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("valid time")
}

// --- json ----------------------------------------------------------------------

#[test]
fn json_object_becomes_one_typed_record() {
    let p = machine("quarantine");
    let a = accepted(run(
        &p,
        1,
        r#"{"machine_id": "m1", "firmware": "1.2", "temperature_c": "21.5",
            "status": "ok", "serial": "ABC1234", "count": 3.0, "running": 1,
            "serviced_at": 1714564800000, "extra": {"k": [1, 2]}, "site": 7,
            "undeclared": "ignored"}"#,
    ));
    assert_eq!(a.record.entity, "m1");
    let expected: Fields = [
        ("machine_id", string("m1")),
        ("firmware", string("1.2")),
        ("temperature_c", Value::Float(21.5)),
        ("status", string("ok")),
        ("serial", string("ABC1234")),
        ("count", Value::Int(3)),
        ("running", Value::Bool(true)),
        ("serviced_at", Value::Timestamp(at("2024-05-01T12:00:00Z"))),
        ("extra", Value::Json(json!({"k": [1, 2]}))),
        ("site", string("7")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(a.record.fields, expected);
    // HTTP sources read no event time.
    assert_eq!(a.record.event_time, ARRIVAL);
    assert!(!a.event_time_from_payload);
    assert_eq!(a.record.origin, Origin::new("test").with_actor("device-7"));
    assert!(a.dropped.is_empty());
}

#[test]
fn json_array_gives_one_record_per_object_and_locates_the_rest() {
    let p = machine("quarantine");
    let processed = run(
        &p,
        1,
        r#"[{"machine_id": "m1", "firmware": "a"}, 42, {"machine_id": "m2", "firmware": "b"}, []]"#,
    );
    let entities: Vec<&str> = processed
        .accepted
        .iter()
        .map(|a| a.record.entity.as_str())
        .collect();
    assert_eq!(entities, ["m1", "m2"]);
    let invalid: Vec<(Option<usize>, String)> = processed
        .invalid
        .iter()
        .map(|i| (i.index, i.reasons[0].to_string()))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                Some(1),
                "payload: expected a JSON object, found 42".to_string()
            ),
            (
                Some(3),
                "payload: expected a JSON object, found an array".to_string()
            ),
        ]
    );
    assert_eq!(processed.invalid[0].reasons[0].rule, Rule::NotAnObject);
}

#[test]
fn json_scalar_and_empty_array() {
    let p = machine("quarantine");
    let (index, reasons) = refused(run(&p, 1, r#""m1""#));
    assert_eq!(index, Some(0));
    assert_eq!(reasons, [r#"payload: expected a JSON object, found "m1""#]);
    let processed = run(&p, 1, "[]");
    assert!(processed.accepted.is_empty() && processed.invalid.is_empty());
}

#[test]
fn malformed_json_names_line_and_column() {
    let p = machine("quarantine");
    let (index, reasons) = refused(run(&p, 1, r#"{"a": }"#));
    assert_eq!(index, None);
    assert_eq!(
        reasons,
        ["payload: invalid JSON at line 1 column 7: expected value"]
    );
    let (_, reasons) = refused(run(&p, 1, "{\n  \"a\": 1,\n}"));
    assert_eq!(
        reasons,
        ["payload: invalid JSON at line 3 column 1: trailing comma"]
    );
    let processed = run(&p, 1, "");
    assert_eq!(processed.invalid[0].reasons[0].rule, Rule::Malformed);
}

#[test]
fn too_many_records_refuses_the_whole_payload() {
    let p = machine("quarantine");
    let limits = Limits {
        max_records: 2,
        ..Limits::default()
    };
    let record = r#"{"machine_id": "m1", "firmware": "a"}"#;
    let array = format!("[{record},{record},{record}]");
    let processed = run_with(&p, &shape(&p, 1), array.as_bytes(), &[], &limits);
    let (index, reasons) = refused(processed);
    assert_eq!(index, None);
    assert_eq!(
        reasons,
        ["payload: 3 records is over the limit of 2 per payload"]
    );
    let lines = format!("{record}\n{record}\n\n{record}\n");
    let processed = run_with(&p, &shape(&p, 5), lines.as_bytes(), &[], &limits);
    assert_eq!(rules(&processed.invalid[0]), [Rule::TooManyRecords]);
    let rows = "m1,a\nm2,b\nm3,c\n";
    let processed = run_with(&p, &shape(&p, 4), rows.as_bytes(), &[], &limits);
    assert_eq!(rules(&processed.invalid[0]), [Rule::TooManyRecords]);
    assert!(processed.accepted.is_empty());
    let two = format!("[{record},{record}]");
    let processed = run_with(&p, &shape(&p, 1), two.as_bytes(), &[], &limits);
    assert_eq!(processed.accepted.len(), 2);
}

// --- payload limits ------------------------------------------------------------

#[test]
fn deep_nesting_is_refused_without_recursion() {
    let p = machine("quarantine");
    let arrays = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let (index, reasons) = refused(run(&p, 1, &arrays));
    assert_eq!(index, None);
    assert_eq!(
        reasons,
        ["payload: JSON nested deeper than 64 levels (at byte 64)"]
    );
    // Unclosed, and in objects.
    let objects = r#"{"a":"#.repeat(10_000);
    let processed = run(&p, 1, &objects);
    assert_eq!(rules(&processed.invalid[0]), [Rule::TooDeep]);
    // Beyond serde_json's own limit of 128, which reports it its way.
    let limits = Limits {
        max_depth: 10_000,
        ..Limits::default()
    };
    let processed = run_with(&p, &shape(&p, 1), arrays.as_bytes(), &[], &limits);
    assert_eq!(
        processed.invalid[0].reasons[0].to_string(),
        "payload: JSON nested deeper than 10000 levels"
    );
    // Exactly at the limit is fine.
    let limits = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    let ok = r#"{"machine_id": "m1", "firmware": "a", "extra": {"b": [1]}}"#;
    let processed = run_with(&p, &shape(&p, 1), ok.as_bytes(), &[], &limits);
    assert_eq!(processed.accepted.len(), 1);
    // In ndjson, only the deep line is refused.
    let lines = format!("{ok}\n{arrays}\n");
    let processed = run(&p, 5, &lines);
    assert_eq!(processed.accepted.len(), 1);
    assert_eq!(processed.invalid[0].index, Some(1));
    assert_eq!(rules(&processed.invalid[0]), [Rule::TooDeep]);
    // Telemetry and raw survive it too.
    assert_eq!(rules(&run(&p, 2, &arrays).invalid[0]), [Rule::TooDeep]);
    let raw = run_with(
        &p,
        &shape(&p, 3),
        arrays.as_bytes(),
        &[("machine_id", "m1")],
        &Limits::default(),
    );
    assert_eq!(rules(&raw.invalid[0]), [Rule::Type, Rule::Required]);
}

#[test]
fn oversized_payload_is_refused_unread() {
    let p = machine("quarantine");
    let limits = Limits {
        max_payload_bytes: 16,
        ..Limits::default()
    };
    let payload = br#"{"machine_id": "m1", "firmware": "a"}"#;
    let (index, reasons) = refused(run_with(&p, &shape(&p, 1), payload, &[], &limits));
    assert_eq!(index, None);
    assert_eq!(reasons, ["payload: 37 bytes is over the limit of 16 bytes"]);
}

#[test]
fn invalid_utf8_is_refused_for_every_format() {
    let p = machine("quarantine");
    for source in 0..p.sources.len() {
        let processed = run_with(
            &p,
            &shape(&p, source),
            b"{\"machine_id\": \"m\xff1\"}",
            &[("machine_id", "m1")],
            &Limits::default(),
        );
        let (index, reasons) = refused(processed);
        assert_eq!(index, None);
        assert_eq!(
            reasons,
            ["payload: not UTF-8 text: invalid byte sequence at byte 17"]
        );
    }
}

#[test]
fn a_leading_byte_order_mark_is_ignored() {
    let p = machine("quarantine");
    let a = accepted(run(
        &p,
        1,
        "\u{feff}{\"machine_id\": \"m1\", \"firmware\": \"a\"}",
    ));
    assert_eq!(a.record.entity, "m1");
}

// --- ndjson --------------------------------------------------------------------

#[test]
fn ndjson_refuses_bad_lines_alone() {
    let p = machine("quarantine");
    let payload = "{\"machine_id\": \"m1\", \"firmware\": \"a\"}\r\n\
                   {\"machine_id\": \"m2\", \"firmware\": }\n\
                   \n\
                   [1]\n\
                   {\"machine_id\": \"m3\", \"firmware\": \"c\", \"temperature_c\": 999}\n\
                   {\"machine_id\": \"m4\", \"firmware\": \"d\"}";
    let processed = run(&p, 5, payload);
    let entities: Vec<&str> = processed
        .accepted
        .iter()
        .map(|a| a.record.entity.as_str())
        .collect();
    assert_eq!(entities, ["m1", "m4"]);
    let invalid: Vec<(Option<usize>, Vec<String>)> = processed
        .invalid
        .iter()
        .map(|i| (i.index, i.reasons.iter().map(ToString::to_string).collect()))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                Some(1),
                vec!["payload: invalid JSON at line 2 column 34: expected value".to_string()]
            ),
            (
                Some(3),
                vec!["payload: expected a JSON object, found an array".to_string()]
            ),
            (
                Some(4),
                vec!["temperature_c: 999 is above max 150".to_string()]
            ),
        ]
    );
}

// --- telemetry -----------------------------------------------------------------

#[test]
fn telemetry_reads_values_and_ts() {
    let p = machine("quarantine");
    let a = accepted(run(
        &p,
        2,
        r#"{"ts": 1714564800000, "values": {"machine_id": "m1", "firmware": "a", "temperature_c": 20}}"#,
    ));
    assert!(a.event_time_from_payload);
    assert_eq!(a.record.event_time, at("2024-05-01T12:00:00Z"));
    assert_eq!(a.record.fields["temperature_c"], Value::Float(20.0));

    // An array of them; `ts` absent means arrival time; bad `values`.
    let processed = run(
        &p,
        2,
        r#"[{"ts": "2024-05-01T12:00:00Z", "values": {"machine_id": "m1", "firmware": "a"}},
            {"values": {"machine_id": "m2", "firmware": "b"}},
            {"ts": 1, "values": [1]},
            {"ts": 1}]"#,
    );
    assert_eq!(processed.accepted.len(), 2);
    assert_eq!(processed.accepted[1].record.event_time, ARRIVAL);
    assert!(!processed.accepted[1].event_time_from_payload);
    let invalid: Vec<(Option<usize>, String)> = processed
        .invalid
        .iter()
        .map(|i| (i.index, i.reasons[0].to_string()))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                Some(2),
                "payload: expected `values` to be an object of field values, found an array"
                    .to_string()
            ),
            (
                Some(3),
                "payload: expected a telemetry object {\"ts\": ..., \"values\": {...}}, found no `values`"
                    .to_string()
            ),
        ]
    );
}

#[test]
fn telemetry_of_the_energy_meter_example() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/examples/energy_meter.yaml");
    let text = std::fs::read_to_string(&path).expect("example exists");
    let ctx = LoadContext::with_upstreams(BTreeSet::from(["central".to_string()]));
    let p = parse_definition(&path, &text, &ctx).expect("example loads");
    let shape = shape(&p, 0);
    assert_eq!(shape.format, PayloadFormat::Telemetry);
    let payload = br#"{"ts": 1714564800000, "values": {"energy_kwh": 10234.5, "power_kw": 3.2, "voltage_v": 900, "tariff": "peak"}}"#;
    let a = accepted(run_with(
        &p,
        &shape,
        payload,
        &[("meter_id", "M-0007")],
        &Limits::default(),
    ));
    assert_eq!(a.record.entity, "M-0007");
    assert_eq!(
        a.record.fields["read_at"],
        Value::Timestamp(at("2024-05-01T12:00:00Z"))
    );
    assert_eq!(a.record.fields["tariff"], string("peak"));
    // drop_field: the bad voltage goes, the energy reading stays.
    assert!(!a.record.fields.contains_key("voltage_v"));
    assert_eq!(a.record.fields["energy_kwh"], Value::Float(10234.5));
    let dropped: Vec<String> = a.dropped.iter().map(ToString::to_string).collect();
    assert_eq!(dropped, ["voltage_v: 900 is above max 500"]);

    // The modbus source of the same example: the poller's document, with
    // `read_at` (its time_field) filled with the poll's time, which is
    // then the event time.
    let polled = SourceShape::from_source(&p.sources[1]);
    let doc = br#"{"meter_id": "M-0007", "read_at": "2024-05-01T12:15:00Z", "energy_kwh": 10234.5, "power_kw": 3.2, "voltage_v": 231.4, "power_factor": 0.97}"#;
    let a = accepted(run_with(&p, &polled, doc, &[], &Limits::default()));
    assert_eq!(a.record.event_time, at("2024-05-01T12:15:00Z"));
    assert_eq!(a.record.fields["power_factor"], Value::Float(0.97));
}

// --- csv -----------------------------------------------------------------------

#[test]
fn csv_rows_with_quotes_header_and_empty_cells() {
    let p = machine("quarantine");
    let payload = "machine_id,firmware,temperature_c,serviced_at,status\n\
                   m1,\"1.2, beta\",21.5,2024-05-01T12:00:00Z,ok\n\
                   \n\
                   m2,\"say \"\"hi\"\"\n twice\",,1714564800,\n";
    let processed = run(&p, 4, payload);
    assert!(processed.invalid.is_empty(), "{:?}", processed.invalid);
    let [one, two] = processed.accepted.as_slice() else {
        panic!("two records: {:?}", processed.accepted);
    };
    assert_eq!(one.record.fields["firmware"], string("1.2, beta"));
    assert_eq!(one.record.fields["temperature_c"], Value::Float(21.5));
    assert_eq!(one.record.event_time, at("2024-05-01T12:00:00Z"));
    assert!(one.event_time_from_payload);
    assert_eq!(two.record.fields["firmware"], string("say \"hi\"\n twice"));
    // Empty cells are absent, not null.
    assert!(!two.record.fields.contains_key("temperature_c"));
    assert!(!two.record.fields.contains_key("status"));
    assert_eq!(two.record.event_time, at("2024-05-01T12:00:00Z"));
}

#[test]
fn csv_wrong_column_count_refuses_that_row() {
    let p = machine("quarantine");
    let processed = run(&p, 4, "m1,a,,,\nm2,b,1,2,ok,extra\nm3,c,hot\n");
    assert_eq!(processed.accepted.len(), 1);
    let invalid: Vec<(Option<usize>, Vec<String>)> = processed
        .invalid
        .iter()
        .map(|i| (i.index, i.reasons.iter().map(ToString::to_string).collect()))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                Some(1),
                vec!["payload: expected 5 csv columns (machine_id, firmware, temperature_c, serviced_at, status), found 6".to_string()]
            ),
            (
                Some(2),
                vec!["payload: expected 5 csv columns (machine_id, firmware, temperature_c, serviced_at, status), found 3".to_string()]
            ),
        ]
    );
}

// --- raw -----------------------------------------------------------------------

#[test]
fn raw_payload_is_one_value_for_its_field() {
    let p = machine("drop_field");
    let s = shape(&p, 3);
    let captures = [("machine_id", "m1"), ("firmware", "x")];
    let a = accepted(run_with(&p, &s, b" 21.5\n", &captures, &Limits::default()));
    assert_eq!(a.record.entity, "m1");
    assert_eq!(a.record.fields["temperature_c"], Value::Float(21.5));
    assert_eq!(a.record.event_time, ARRIVAL);
    let a = accepted(run_with(&p, &s, b"\"22\"", &captures, &Limits::default()));
    assert_eq!(a.record.fields["temperature_c"], Value::Float(22.0));
    let a = accepted(run_with(&p, &s, b"hot", &captures, &Limits::default()));
    assert!(!a.record.fields.contains_key("temperature_c"));
    assert_eq!(
        a.dropped[0].to_string(),
        r#"temperature_c: expected a float, found "hot""#
    );
}

// --- mapping -------------------------------------------------------------------

#[test]
fn topic_captures_and_map_pointers() {
    let p = machine("quarantine");
    let payload =
        br#"{"machine_id": "m9", "site": "paris", "firmware": "a", "temp": 30, "temperature_c": 99, "state": {"code": "warn"}, "ts": "2024-05-01T12:00:00Z"}"#;
    let a = accepted(run_with(
        &p,
        &shape(&p, 0),
        payload,
        &[("site", "berlin"), ("machine_id", "m1")],
        &Limits::default(),
    ));
    // Captures win over the payload.
    assert_eq!(a.record.entity, "m1");
    assert_eq!(a.record.fields["machine_id"], string("m1"));
    assert_eq!(a.record.fields["site"], string("berlin"));
    // Mapped fields read their pointer, not their own name.
    assert_eq!(a.record.fields["temperature_c"], Value::Float(30.0));
    assert_eq!(a.record.fields["status"], string("warn"));
    assert_eq!(a.record.event_time, at("2024-05-01T12:00:00Z"));
    assert!(a.event_time_from_payload);
}

#[test]
fn null_clears_an_optional_field_and_fails_a_required_one() {
    let p = machine("quarantine");
    let a = accepted(run(
        &p,
        1,
        r#"{"machine_id": "m1", "firmware": "a", "status": null}"#,
    ));
    assert_eq!(a.record.fields["status"], Value::Null);
    let (_, reasons) = refused(run(&p, 1, r#"{"machine_id": "m1", "firmware": null}"#));
    assert_eq!(reasons, ["firmware: required field is null"]);
}

#[test]
fn int_keys_are_entities_in_decimal() {
    let p = counter();
    let processed = run(
        &p,
        0,
        r#"[{"id": 7, "n": "3"}, {"id": "0042"}, {"id": 1.5}]"#,
    );
    let entities: Vec<&str> = processed
        .accepted
        .iter()
        .map(|a| a.record.entity.as_str())
        .collect();
    assert_eq!(entities, ["7", "42"]);
    assert_eq!(processed.accepted[0].record.fields["n"], Value::Int(3));
    assert_eq!(
        processed.invalid[0].reasons[0].to_string(),
        "id: expected an int, found 1.5 (not a whole number)"
    );
}

// --- quality rules -------------------------------------------------------------

#[test]
fn the_key_must_be_present_and_not_empty() {
    let p = machine("drop_field");
    for (payload, expected) in [
        (r#"{"firmware": "a"}"#, "machine_id: key field is missing"),
        (
            r#"{"machine_id": null, "firmware": "a"}"#,
            "machine_id: key field is null",
        ),
        (
            r#"{"machine_id": " ", "firmware": "a"}"#,
            "machine_id: key field is empty",
        ),
        (
            r#"{"machine_id": "x1", "firmware": "a"}"#,
            r#"machine_id: "x1" does not match the pattern m[0-9]+"#,
        ),
    ] {
        let (index, reasons) = refused(run(&p, 1, payload));
        assert_eq!(index, Some(0));
        assert_eq!(reasons, [expected], "{payload}");
    }
    let invalid = &run(&p, 1, "{}").invalid[0];
    assert_eq!(rules(invalid), [Rule::MissingKey, Rule::Required]);
}

#[test]
fn every_violation_of_a_record_is_reported() {
    let p = machine("quarantine");
    let (index, reasons) = refused(run(
        &p,
        0,
        r#"{"machine_id": "m1", "temp": 212, "state": {"code": "boom"}, "serial": "abc",
            "count": -1, "running": "maybe", "serviced_at": "yesterday", "ts": "soon"}"#,
    ));
    assert_eq!(index, Some(0));
    assert_eq!(
        reasons,
        [
            "temperature_c: 212 is above max 150",
            r#"status: "boom" is not one of: ok, warn, fault"#,
            r#"serial: "abc" does not match the pattern [A-Z]{3}[0-9]{4}"#,
            "count: -1 is below min 0",
            r#"running: expected a bool (true/false or 1/0), found "maybe""#,
            r#"serviced_at: expected a timestamp (RFC 3339 text with an offset, or epoch seconds, milliseconds or microseconds), found "yesterday""#,
            "firmware: required field is missing",
            r#"payload: event time at /ts: expected a timestamp (RFC 3339 text with an offset, or epoch seconds, milliseconds or microseconds), found "soon""#,
        ]
    );
    let processed = run(
        &p,
        0,
        r#"{"machine_id": "m1", "temp": -41, "firmware": "a"}"#,
    );
    let invalid = &processed.invalid[0];
    assert_eq!(rules(invalid), [Rule::Min]);
    assert_eq!(invalid.reasons[0].field.as_deref(), Some("temperature_c"));
}

#[test]
fn reject_and_quarantine_refuse_any_violation() {
    for mode in ["reject", "quarantine"] {
        let p = machine(mode);
        let processed = run(
            &p,
            1,
            r#"{"machine_id": "m1", "firmware": "a", "status": "boom"}"#,
        );
        assert_eq!(rules(&processed.invalid[0]), [Rule::Enum], "{mode}");
        assert!(processed.accepted.is_empty());
    }
}

#[test]
fn drop_field_keeps_the_record_without_the_bad_optional_fields() {
    let p = machine("drop_field");
    let a = accepted(run(
        &p,
        1,
        r#"{"machine_id": "m1", "firmware": "a", "temperature_c": 400, "status": "boom",
            "count": 2, "serial": 5}"#,
    ));
    assert_eq!(
        a.record.fields.keys().collect::<Vec<_>>(),
        ["count", "firmware", "machine_id"]
    );
    let dropped: Vec<(Option<&str>, Rule)> = a
        .dropped
        .iter()
        .map(|v| (v.field.as_deref(), v.rule))
        .collect();
    assert_eq!(
        dropped,
        [
            (Some("temperature_c"), Rule::Max),
            (Some("status"), Rule::Enum),
            (Some("serial"), Rule::Pattern),
        ]
    );
}

#[test]
fn drop_field_still_refuses_key_required_and_event_time_problems() {
    let p = machine("drop_field");
    // A required field: invalid, with every reason (the droppable one too).
    let invalid = &run(
        &p,
        1,
        r#"{"machine_id": "m1", "firmware": 5.5e400, "status": "boom"}"#,
    )
    .invalid[0];
    assert_eq!(rules(invalid), [Rule::Malformed]);
    let invalid = &run(
        &p,
        1,
        r#"{"machine_id": "m1", "firmware": [1], "status": "boom"}"#,
    )
    .invalid[0];
    assert_eq!(rules(invalid), [Rule::Enum, Rule::Type]);
    // The key.
    let invalid = &run(&p, 1, r#"{"machine_id": "bad", "firmware": "a"}"#).invalid[0];
    assert_eq!(rules(invalid), [Rule::Pattern]);
    // The event time.
    let processed = run_with(
        &p,
        &shape(&p, 0),
        br#"{"firmware": "a", "ts": true}"#,
        &[("machine_id", "m1")],
        &Limits::default(),
    );
    let (_, reasons) = refused(processed);
    assert_eq!(
        reasons,
        ["payload: event time at /ts: expected a timestamp (RFC 3339 text with an offset, or epoch seconds, milliseconds or microseconds), found true"]
    );
}

// --- fingerprints --------------------------------------------------------------

fn fingerprint_of(payload: &str, arrival: Timestamp, origin: &str) -> Fingerprint {
    let p = machine("quarantine");
    let shape = shape(&p, 0);
    let captures = [("machine_id".to_string(), "m1".to_string())];
    let input = Input {
        payload: payload.as_bytes(),
        captures: &captures,
        arrival,
        origin: Origin::new(origin),
    };
    let processed = process(&p, &shape, &input, &Limits::default());
    accepted(processed).fingerprint
}

#[test]
fn redeliveries_fingerprint_alike_and_changes_do_not() {
    let base = r#"{"firmware": "a", "temp": 20.5, "ts": 1714564800}"#;
    let later = Timestamp(ARRIVAL.0 + 5_000_000);
    let original = fingerprint_of(base, ARRIVAL, "mqtt");
    assert_eq!(original, fingerprint_of(base, later, "mqtt"));
    // Same content, spelled differently: same record, same fingerprint.
    assert_eq!(
        original,
        fingerprint_of(
            r#"{"ts": "2024-05-01T12:00:00Z", "temp": "20.5", "firmware": "a", "x": 1}"#,
            later,
            "http"
        )
    );
    for changed in [
        r#"{"firmware": "a", "temp": 20.6, "ts": 1714564800}"#,
        r#"{"firmware": "a", "temp": 20.5, "ts": 1714564801}"#,
        r#"{"firmware": "b", "temp": 20.5, "ts": 1714564800}"#,
        r#"{"firmware": "a", "temp": 20.5, "ts": 1714564800, "serial": null}"#,
        r#"{"firmware": "a", "temp": 20.5}"#,
    ] {
        assert_ne!(
            original,
            fingerprint_of(changed, ARRIVAL, "mqtt"),
            "{changed}"
        );
    }
    // Without a payload event time, the arrival time is not part of it.
    let untimed = r#"{"firmware": "a", "temp": 20.5}"#;
    assert_eq!(
        fingerprint_of(untimed, ARRIVAL, "mqtt"),
        fingerprint_of(untimed, later, "mqtt")
    );
    // Another entity.
    let p = machine("quarantine");
    let a = accepted(run(&p, 1, r#"{"machine_id": "m1", "firmware": "a"}"#));
    let b = accepted(run(&p, 1, r#"{"machine_id": "m2", "firmware": "a"}"#));
    assert_ne!(a.fingerprint, b.fingerprint);
}

// --- shapes --------------------------------------------------------------------

#[test]
fn shapes_follow_their_sources() {
    let p = machine("quarantine");
    let mqtt = shape(&p, 0);
    assert_eq!(mqtt.format, PayloadFormat::Json);
    assert_eq!(
        mqtt.map.get("temperature_c").map(String::as_str),
        Some("/temp")
    );
    assert_eq!(mqtt.event_time_pointer(), Some("/ts"));
    let http = shape(&p, 1);
    assert!(http.map.is_empty() && http.event_time.is_none());
    assert_eq!(http.event_time_pointer(), None);
    let telemetry = shape(&p, 2);
    assert_eq!(telemetry.event_time.as_deref(), Some("/ts"));
    assert_eq!(shape(&p, 3).field.as_deref(), Some("temperature_c"));
    let csv = shape(&p, 4);
    assert_eq!(csv.columns.len(), 5);
    assert_eq!(csv.event_time.as_deref(), Some("/serviced_at"));
    let pushed_telemetry = http.with_format(PayloadFormat::Telemetry);
    assert_eq!(pushed_telemetry.event_time.as_deref(), Some("/ts"));
    assert_eq!(shape(&p, 5).format, PayloadFormat::Ndjson);
}

#[test]
fn shapes_switched_to_csv_or_raw_without_their_settings_refuse_payloads() {
    let p = machine("quarantine");
    for (format, expected) in [
        (
            PayloadFormat::Csv,
            "payload: csv payloads need columns, and this source names none",
        ),
        (
            PayloadFormat::Raw,
            "payload: raw payloads need a field to go to, and this source names none",
        ),
    ] {
        let shape = shape(&p, 1).with_format(format);
        let processed = run_with(&p, &shape, b"m1,a", &[], &Limits::default());
        let (index, reasons) = refused(processed);
        assert_eq!(index, None);
        assert_eq!(reasons, [expected]);
    }
}

#[test]
fn rule_names_are_metric_labels() {
    assert_eq!(Rule::TooManyRecords.name(), "too_many_records");
    assert_eq!(Rule::NotUtf8.name(), "not_utf8");
    assert_eq!(Rule::EventTime.to_string(), "event_time");
}

// --- robustness ----------------------------------------------------------------

/// Every record is in exactly one list, and every refusal says why.
fn check_invariants(processed: &Processed, payload: &[u8]) {
    for invalid in &processed.invalid {
        assert!(!invalid.reasons.is_empty(), "{payload:?}");
    }
    for accepted in &processed.accepted {
        assert!(!accepted.record.entity.trim().is_empty(), "{payload:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let p = machine("drop_field");
        let limits = Limits { max_depth: 8, max_records: 16, ..Limits::default() };
        for source in 0..p.sources.len() {
            let processed = run_with(&p, &shape(&p, source), &payload, &[("machine_id", "m1")], &limits);
            check_invariants(&processed, &payload);
        }
    }

    #[test]
    fn json_like_text_never_panics(payload in r#"[\[\]{}",:0-9a-z_ .\-\\e\n]{0,200}"#) {
        let p = machine("quarantine");
        for source in 0..p.sources.len() {
            let processed = run_with(&p, &shape(&p, source), payload.as_bytes(), &[], &Limits::default());
            check_invariants(&processed, payload.as_bytes());
        }
    }

    #[test]
    fn any_value_in_any_field_is_accepted_or_explained(
        value in prop_oneof![
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            any::<bool>().prop_map(|b| json!(b)),
            ".{0,20}".prop_map(|s| json!(s)),
            Just(json!(null)),
            Just(json!([1, {"a": 2}])),
        ],
        field in proptest::sample::select(vec![
            "temperature_c", "status", "serial", "count", "running", "serviced_at", "extra", "site",
        ]),
    ) {
        let p = machine("drop_field");
        let payload = json!({"machine_id": "m1", "firmware": "a", field: value}).to_string();
        let processed = run(&p, 1, &payload);
        let a = accepted(processed);
        prop_assert!(a.dropped.len() <= 1);
        prop_assert_eq!(a.dropped.is_empty(), a.record.fields.contains_key(field));
    }
}

// --- the entity of invalid records (erasure finds quarantined payloads) --

#[test]
fn an_invalid_record_names_its_entity_when_the_key_is_readable() {
    let product = machine("quarantine");
    let entities = |processed: Processed| -> Vec<Option<String>> {
        assert!(processed.accepted.is_empty(), "{:?}", processed.accepted);
        processed.invalid.into_iter().map(|i| i.entity).collect()
    };
    // From the payload (HTTP ndjson), one per line, none for a bad key.
    let lines = "{\"machine_id\":\"m1\",\"count\":-1}\n{\"machine_id\":\"nope\",\"firmware\":\"x\"}\n{\"count\":2}";
    assert_eq!(
        entities(run(&product, 5, lines)),
        vec![Some("m1".to_string()), None, None]
    );
    // From the topic, even when the payload does not decode at all.
    let shape = shape(&product, 0);
    let broken = run_with(
        &product,
        &shape,
        b"{not json",
        &[("site", "b"), ("machine_id", "m7")],
        &Limits::default(),
    );
    assert_eq!(entities(broken), vec![Some("m7".to_string())]);
    // An int key is rendered in decimal, as the store keys it.
    assert_eq!(
        entities(run(&counter(), 0, "{\"id\": 42, \"n\": \"x\"}")),
        vec![Some("42".to_string())]
    );
}

/// Transport metadata (an MQTT 5 user property, handed in as a capture)
/// named like the event time's top-level key gives the event time of a
/// payload without one; the payload's own wins.
#[test]
fn a_capture_named_like_the_event_time_key_gives_a_missing_event_time() {
    let p = machine("reject");
    let s = shape(&p, 0);
    let captures = [
        ("ts", "2024-05-01T12:00:00Z"),
        ("site", "berlin"),
        ("machine_id", "m1"),
    ];
    let a = accepted(run_with(
        &p,
        &s,
        br#"{"firmware": "1.0"}"#,
        &captures,
        &Limits::default(),
    ));
    assert_eq!(a.record.event_time, at("2024-05-01T12:00:00Z"));
    assert!(
        a.event_time_from_payload,
        "sent by the device: deduplicated"
    );
    let a = accepted(run_with(
        &p,
        &s,
        br#"{"firmware": "1.0", "ts": "2024-05-01T13:00:00Z"}"#,
        &captures,
        &Limits::default(),
    ));
    assert_eq!(
        a.record.event_time,
        at("2024-05-01T13:00:00Z"),
        "the payload's wins"
    );
}

/// A plan is field positions: handed a product it was not made for (here
/// one of the same name whose fields are declared in another order, as
/// after a definition reload), it is rebuilt for that product instead of
/// reading fields by the old positions.
#[test]
fn a_plan_handed_another_product_is_rebuilt_for_it() {
    let reordered = parse_definition(
        Path::new("counter.yaml"),
        "
product: counter
version: 2
domain: test
owner: team@example.com
key: id
fields:
  n: { type: int, min: 0 }
  id: { type: int, required: true }
sources:
  - http: {}
",
        &LoadContext::default(),
    )
    .unwrap_or_else(|e| panic!("test definition loads: {:?}", e.messages()));
    let old = counter();
    let plan = Plan::new(&old, &shape(&old, 0));
    let input = Input {
        payload: br#"[{"id": 7, "n": 3}, {"id": 8, "n": -1}]"#,
        captures: &[],
        arrival: ARRIVAL,
        origin: Origin::new("test"),
    };
    let by_plan = super::run(&reordered, &plan, &input, &Limits::default());
    let fresh = process(
        &reordered,
        &shape(&reordered, 0),
        &input,
        &Limits::default(),
    );
    assert_eq!(by_plan.accepted.len(), 1, "{by_plan:?}");
    assert_eq!(by_plan.accepted[0].record, fresh.accepted[0].record);
    assert_eq!(by_plan.accepted[0].record.entity, "7");
    assert_eq!(by_plan.invalid.len(), 1, "{by_plan:?}");
    assert_eq!(by_plan.invalid[0].reasons, fresh.invalid[0].reasons);
    assert_eq!(by_plan.invalid[0].reasons[0].rule, Rule::Min);
    assert_eq!(by_plan.invalid[0].entity.as_deref(), Some("8"));
    // Its own product's plan, reused for many payloads, gives what a
    // fresh plan per payload gives.
    let own = Plan::new(&reordered, &shape(&reordered, 0));
    for payload in [
        &br#"{"id": 1}"#[..],
        br#"{"n": 2}"#,
        b"{",
        br#"{"id": "x"}"#,
    ] {
        let input = Input {
            payload,
            ..input.clone()
        };
        let a = super::run(&reordered, &own, &input, &Limits::default());
        let b = process(
            &reordered,
            &shape(&reordered, 0),
            &input,
            &Limits::default(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
