//! The bodies of the fuzz targets, shared by the cargo-fuzz crate (this
//! folder's `fuzz_targets/`, each a one-line call) and by the corpus replay
//! in the main test run (`tests/it/fuzz_corpus.rs`, stable Rust, no
//! cargo-fuzz), so the two cannot drift.
//!
//! Every body takes the bytes a hostile or broken sender could produce,
//! feeds them to the same function the node uses on untrusted input, and
//! panics (the fuzzer's "crash") if that function panics or an invariant
//! that is cheap to check does not hold:
//!
//! - payloads (`json`, `csv`, `telemetry`): every record ends up accepted or
//!   invalid with at least one reason, and an accepted record, written back
//!   as the JSON object of its values and pushed through the product's HTTP
//!   source, is accepted again with the same entity, fields and event time;
//! - `sparkplug`: a sequence of framed messages through the host state
//!   machine; a rebirth request it asks for is a well-formed NCMD;
//! - `row_filter`: a parsed expression prints to text that parses back to
//!   an equal expression, `not (e)` evaluates to the opposite of `e`, and an
//!   error points inside the text;
//! - `mqtt_packet`: a decoded packet consumed bytes (else the read loop
//!   would spin), and encodes and decodes back to itself;
//! - `product_definition`: a refused definition has located diagnostics; an
//!   accepted one has a key field and its sources read a payload.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::BytesMut;
use meshlet::expr;
use meshlet::pipeline::{self, Input, Limits, SourceShape};
use meshlet::product::{parse_definition, LoadContext, PayloadFormat, Product};
use meshlet::record::{Fields, Origin, Timestamp, Value};
use meshlet::sources::file::FileSource;
use meshlet::sources::http::HttpSource;
use meshlet::sources::mqtt::broker::{
    check_connect_frame, decode_packet, decode_packet_v5, Decoded,
};
use meshlet::sources::mqtt::MqttSource;
use meshlet::sources::sparkplug::host::{Host, MessageType, Topic};
use rumqttc::mqttbytes::v4::Packet;

/// A target body: one input, a panic when it finds a problem.
pub type Body = fn(&[u8]);

/// Every target, by the name of its corpus folder and cargo-fuzz binary.
pub const TARGETS: &[(&str, Body)] = &[
    ("json", json),
    ("csv", csv),
    ("telemetry", telemetry),
    ("sparkplug", sparkplug),
    ("row_filter", row_filter),
    ("mqtt_packet", mqtt_packet),
    ("mqtt5_packet", mqtt5_packet),
    ("product_definition", product_definition),
];

/// The product the payload targets decode into: every field type, every
/// quality rule, a mapped MQTT JSON source, a telemetry source, a csv file
/// source and an HTTP source (used for the round trip).
const PRODUCT: &str = r#"
product: fuzzed
version: 1
domain: fuzzing
owner: fuzz@example.com
key: device
fields:
  device:  { type: string, required: true, pattern: "[A-Za-z0-9_.-]{1,32}" }
  count:   { type: int, min: -1000000, max: 1000000 }
  temp:    { type: float, min: -40, max: 150 }
  on:      { type: bool }
  state:   { type: string, enum: [ok, warn, fault] }
  seen_at: { type: timestamp }
  note:    { type: string }
  extra:   { type: json }
sources:
  - mqtt:
      topic: "fuzz/json"
      format: json
      event_time: /ts
      map: { device: /id, temp: /t/c, note: /n }
  - mqtt:
      topic: "fuzz/telemetry"
      format: telemetry
  - file:
      path: /var/lib/fuzz/readings.csv
      format: csv
      columns: [device, seen_at, count, temp, on, state, note]
      event_time: /seen_at
  - http: { format: json }
quality:
  on_invalid: ON_INVALID
"#;

/// The product under both repair rules: `quarantine` keeps invalid records
/// whole, `drop_field` removes bad optional fields from accepted ones.
fn products() -> &'static [Product; 2] {
    static PRODUCTS: OnceLock<[Product; 2]> = OnceLock::new();
    PRODUCTS.get_or_init(|| {
        let load = |rule: &str| {
            let text = PRODUCT.replace("ON_INVALID", rule);
            match parse_definition(Path::new("fuzzed.yaml"), &text, &LoadContext::default()) {
                Ok(product) => product,
                Err(errors) => panic!("the fuzz product does not load:\n{errors}"),
            }
        };
        [load("quarantine"), load("drop_field")]
    })
}

/// The shape of `product`'s first source in `format`.
fn shape(product: &Product, format: PayloadFormat) -> SourceShape {
    let source = product
        .sources
        .iter()
        .find(|source| {
            if let Some(mqtt) = source.get::<MqttSource>() {
                mqtt.format == format
            } else if let Some(file) = source.get::<FileSource>() {
                file.format == format
            } else if let Some(http) = source.get::<HttpSource>() {
                http.format == format && format != PayloadFormat::Json
            } else {
                // The others build their own documents; no payload format to fuzz.
                false
            }
        })
        .unwrap_or_else(|| panic!("the fuzz product has no {} source", format.name()));
    SourceShape::from_source(source)
}

fn http_shape(product: &Product) -> SourceShape {
    let source = product
        .sources
        .iter()
        .find(|source| source.get::<HttpSource>().is_some())
        .unwrap_or_else(|| panic!("the fuzz product has no http source"));
    SourceShape::from_source(source)
}

/// A small record limit, so a payload of many short records is refused
/// as too many rather than slowing the fuzzer down.
fn limits() -> Limits {
    Limits {
        max_records: 64,
        ..Limits::default()
    }
}

const ARRIVAL: Timestamp = Timestamp(1_714_564_800_000_000);

/// A payload in `format` through the pipeline, then the invariants.
fn payload(data: &[u8], format: PayloadFormat) {
    let limits = limits();
    for product in products() {
        let shape = shape(product, format);
        let input = Input {
            payload: data,
            captures: &[],
            arrival: ARRIVAL,
            origin: Origin::new("fuzz"),
        };
        let processed = pipeline::process(product, &shape, &input, &limits);
        for invalid in &processed.invalid {
            assert!(
                !invalid.reasons.is_empty(),
                "an invalid record without a reason: {invalid:?}"
            );
        }
        if processed.invalid.iter().any(|i| i.index.is_none()) {
            assert_eq!(
                (processed.accepted.len(), processed.invalid.len()),
                (0, 1),
                "a payload refused whole is one invalid entry and nothing else"
            );
        }
        let mut indexes: Vec<usize> = processed
            .accepted
            .iter()
            .map(|a| a.index)
            .chain(processed.invalid.iter().filter_map(|i| i.index))
            .collect();
        let count = indexes.len();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), count, "a record index used twice");
        for accepted in &processed.accepted {
            round_trip(product, accepted, &limits);
        }
    }
}

/// An accepted record, pushed again as the JSON object of its values over
/// the product's HTTP source, is accepted with the same content.
fn round_trip(product: &Product, accepted: &pipeline::Accepted, limits: &Limits) {
    let record = &accepted.record;
    let object: serde_json::Map<String, serde_json::Value> = record
        .fields
        .iter()
        .map(|(name, value)| (name.clone(), value.to_json()))
        .collect();
    let text = serde_json::Value::Object(object).to_string();
    let input = Input {
        payload: text.as_bytes(),
        captures: &[],
        arrival: record.event_time,
        origin: record.origin.clone(),
    };
    let again = pipeline::process(product, &http_shape(product), &input, limits);
    assert!(
        again.invalid.is_empty() && again.accepted.len() == 1,
        "accepted {record:?}, but its values {text} are refused: {:?}",
        again.invalid
    );
    let back = &again.accepted[0].record;
    assert_eq!(back.entity, record.entity, "entity changed on the way back");
    assert_eq!(back.event_time, record.event_time);
    assert_eq!(
        back.fields, record.fields,
        "fields changed on the way back through {text}"
    );
}

/// A JSON payload (one object or an array of them) of the mapped MQTT source.
pub fn json(data: &[u8]) {
    payload(data, PayloadFormat::Json);
}

/// A csv payload of the file source.
pub fn csv(data: &[u8]) {
    payload(data, PayloadFormat::Csv);
}

/// A `{"ts": ..., "values": {...}}` payload.
pub fn telemetry(data: &[u8]) {
    payload(data, PayloadFormat::Telemetry);
}

/// Framed Sparkplug messages: per message one byte (its kind, and whether
/// it is about device `d1` or `d2`), two bytes of payload length
/// (little-endian), the protobuf payload. A short last frame takes the rest.
pub fn sparkplug(data: &[u8]) {
    const KINDS: [&str; 6] = ["NBIRTH", "NDATA", "DBIRTH", "DDATA", "DDEATH", "NDEATH"];
    let mut host = Host::new();
    let now = Instant::now();
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let kind = KINDS[usize::from(head) % KINDS.len()];
        let device = match (kind.starts_with('D'), head & 0x80 != 0) {
            (false, _) => "",
            (true, false) => "/d1",
            (true, true) => "/d2",
        };
        let (length, tail) = match tail {
            [lo, hi, tail @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), tail),
            _ => (tail.len(), &[][..]),
        };
        let (message, tail) = tail.split_at(length.min(tail.len()));
        rest = tail;
        let topic_text = format!("spBv1.0/g1/{kind}/e1{device}");
        let topic = match Topic::parse(&topic_text) {
            Some(Ok(topic)) => topic,
            other => panic!("{topic_text} does not parse as a Sparkplug topic: {other:?}"),
        };
        let handled = host.handle(&topic, message, now);
        for update in &handled.updates {
            assert_eq!(
                (update.group.as_str(), update.edge_node.as_str()),
                ("g1", "e1")
            );
        }
        if let Some(rebirth) = handled.rebirth {
            match Topic::parse(&rebirth.topic) {
                Some(Ok(ncmd)) => {
                    assert_eq!(ncmd.kind, MessageType::NCmd);
                    assert_eq!((ncmd.group, ncmd.edge_node), ("g1", "e1"));
                }
                other => panic!("rebirth topic {} is not an NCMD: {other:?}", rebirth.topic),
            }
        }
    }
    // The topic parser on its own: any text, never a panic.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Topic::parse(text);
    }
}

/// A row filter (`where:`) expression.
pub fn row_filter(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match expr::parse(source) {
        Ok(parsed) => parsed,
        Err(error) => {
            assert!(
                error.offset <= source.len() && source.is_char_boundary(error.offset),
                "error offset {} outside {source:?}",
                error.offset
            );
            return;
        }
    };
    let canonical = parsed.to_string();
    let reparsed = match expr::parse(&canonical) {
        Ok(reparsed) => reparsed,
        Err(error) => panic!("{source:?} prints as {canonical:?}, which does not parse: {error}"),
    };
    assert_eq!(
        reparsed, parsed,
        "{source:?} prints as {canonical:?}, a different tree"
    );
    // Depth: `not (…)` adds one level, which the limit may refuse.
    // One clock and one `_meta` for both, so `now()` cannot move between them.
    let now = Timestamp::from_secs(1_714_564_800);
    let meta = expr::RowMeta {
        version: 3,
        first_seen: Timestamp::from_secs(1_714_000_000),
        last_seen: now,
        event_time: Timestamp::from_secs(1_714_564_000),
    };
    if let Ok(negated) = expr::parse(&format!("not ({canonical})")) {
        for fields in sample_records(&parsed) {
            assert_eq!(
                negated.eval_at(&fields, Some(&meta), now),
                !parsed.eval_at(&fields, Some(&meta), now),
                "not ({canonical}) is not the opposite on {fields:?}"
            );
        }
    }
    let _ = parsed.check(&|name| match name.len() % 7 {
        0 => None,
        1 => Some(expr::OperandType::String),
        2 => Some(expr::OperandType::Int),
        3 => Some(expr::OperandType::Float),
        4 => Some(expr::OperandType::Bool),
        5 => Some(expr::OperandType::Timestamp),
        _ => Some(expr::OperandType::Json),
    });
}

/// Records to evaluate an expression on: each field it reads set to one
/// value of each type (and absent).
fn sample_records(parsed: &expr::Expr) -> Vec<Fields> {
    let names: BTreeSet<&str> = parsed.fields();
    let values = [
        Value::Null,
        Value::Bool(true),
        Value::Int(3),
        Value::Float(2.5),
        Value::Float(f64::NAN),
        Value::String("berlin".to_string()),
        Value::Timestamp(ARRIVAL),
        Value::Json(serde_json::json!(["red", 1])),
    ];
    let mut records = vec![Fields::new()];
    records.extend(values.iter().map(|value| {
        names
            .iter()
            .map(|name| (name.to_string(), value.clone()))
            .collect()
    }));
    records
}

/// The bytes a client sends the embedded broker: packets are read off the
/// front one by one, as the connection's read loop does, with a small
/// packet size limit; each CONNECT frame also goes through the checks the
/// broker runs on it before parsing (`check_connect_frame`), and so do the
/// raw bytes as a whole.
pub fn mqtt_packet(data: &[u8]) {
    const MAX_PACKET_BYTES: usize = 4 * 1024;
    let _ = check_connect_frame(data);
    let mut buffer = BytesMut::from(data);
    loop {
        let before = buffer.clone();
        match decode_packet(&mut buffer, MAX_PACKET_BYTES) {
            Ok(Decoded::Packet(packet)) => {
                assert!(
                    buffer.len() < before.len(),
                    "{packet:?} decoded without consuming a byte"
                );
                if matches!(packet, Packet::Connect(..)) {
                    let frame = before
                        .get(..before.len() - buffer.len())
                        .unwrap_or_default();
                    let _ = check_connect_frame(frame);
                }
                let mut encoded = BytesMut::new();
                if packet.write(&mut encoded, usize::MAX).is_ok() {
                    let length = encoded.len();
                    match decode_packet(&mut encoded, usize::MAX) {
                        Ok(Decoded::Packet(back)) => {
                            assert_eq!(back, packet, "re-encoded differently")
                        }
                        other => panic!("{packet:?} encodes to {length} bytes that read {other:?}"),
                    }
                    assert!(
                        encoded.is_empty(),
                        "{packet:?} re-encodes with trailing bytes"
                    );
                }
            }
            Ok(Decoded::Partial { missing }) => {
                assert_eq!(buffer, before, "an incomplete packet consumed bytes");
                assert!(missing > 0, "a partial packet that misses nothing");
                return;
            }
            Err(_) => return,
        }
    }
}

/// The bytes an MQTT 5 client sends the embedded broker, read off the
/// front packet by packet with the reader a level 5 connection uses: it
/// never panics, and a packet it returns took bytes off the buffer.
pub fn mqtt5_packet(data: &[u8]) {
    const MAX_PACKET_BYTES: usize = 4 * 1024;
    let mut buffer = BytesMut::from(data);
    loop {
        let before = buffer.len();
        match decode_packet_v5(&mut buffer, MAX_PACKET_BYTES) {
            Ok(Some(packet)) => assert!(
                buffer.len() < before,
                "{packet:?} decoded without consuming a byte"
            ),
            Ok(None) => {
                assert_eq!(buffer.len(), before, "an incomplete packet consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

/// A product definition file.
pub fn product_definition(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = LoadContext::with_upstreams(["central".to_string()].into_iter().collect());
    let lines = text.lines().count().max(1);
    match parse_definition(Path::new("fuzz.yaml"), text, &ctx) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without a diagnostic");
            for diagnostic in &errors.0 {
                assert!(
                    diagnostic.line >= 1 && diagnostic.line <= lines + 1 && diagnostic.column >= 1,
                    "{diagnostic} is outside the {lines}-line text"
                );
                assert!(!diagnostic.message.is_empty(), "{diagnostic} says nothing");
            }
        }
        Ok(product) => {
            let _ = product.key_field();
            let limits = limits();
            for source in &product.sources {
                let shape = SourceShape::from_source(source);
                let input = Input {
                    payload: br#"{"a": 1}"#,
                    captures: &[],
                    arrival: ARRIVAL,
                    origin: Origin::new("fuzz"),
                };
                let _ = pipeline::process(&product, &shape, &input, &limits);
            }
            for rule in product.access.values() {
                let _ = format!("{rule:?}");
            }
        }
    }
}
