//! Sources: where a product's records come from, and how a payload maps to
//! fields.
//!
//! Mapping rules shared by every source (the pipeline implements them, this
//! module only checks that they are well-formed):
//! - a field listed in `map` takes the value at that JSON pointer;
//! - any other field takes the same-named top-level key of the payload
//!   object (for `telemetry`, the same-named key of `values`);
//! - a field captured from the topic takes the topic level;
//! - the event time is read at `event_time` when given (for `telemetry`, at
//!   `/ts` by default), else it is the arrival time.
//!
//! For `csv`, `columns` names the field of each column in order; the row is
//! also seen as an object keyed by column name, so `event_time: /read_at`
//! names a column. For `raw`, the whole payload is one scalar value that
//! goes to `field`.
//!
//! `sparkplug` sources have no payload mapping of their own: `metrics`
//! maps fields to Sparkplug metric names, the key field takes the device
//! (or edge node) id and the event time is the payload timestamp (see
//! [`SparkplugSource`]; `sources::sparkplug::host` is the host state machine).

use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::diagnostic::Diagnostics;
use super::field::FieldTable;
use super::reader::{self, elements, entries, expect_list, expect_mapping, Entry, MapReader};
use super::topic::TopicTemplate;
use crate::sources::SourceKind;

/// One source of records for a product.
#[derive(Clone, Debug)]
pub enum Source {
    Mqtt(MqttSource),
    /// Records pushed to the node's HTTP ingest endpoint for this product.
    Http(HttpSource),
    /// A local file, tailed.
    File(FileSource),
    /// Sparkplug B edge nodes and devices, read as a host application.
    Sparkplug(SparkplugSource),
    /// Modbus TCP devices, polled (`sources::modbus`).
    Modbus(crate::sources::modbus::ModbusSource),
    /// OPC UA nodes, monitored (`sources::opcua`).
    Opcua(crate::sources::opcua::OpcuaSource),
}

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// One JSON object, or an array of objects (one record each).
    Json,
    /// `{"ts": <time>, "values": {<field>: <value>, ...}}`, the shape most
    /// IoT platforms and device SDKs publish.
    Telemetry,
    /// Comma-separated values, one record per line, columns named by
    /// `columns`.
    Csv,
    /// The payload is one scalar value (a number, a word) for `field`.
    Raw,
    /// Newline-delimited JSON: one object per line.
    Ndjson,
}

impl PayloadFormat {
    pub const ALL: [PayloadFormat; 5] = [
        PayloadFormat::Json,
        PayloadFormat::Telemetry,
        PayloadFormat::Csv,
        PayloadFormat::Raw,
        PayloadFormat::Ndjson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Telemetry => "telemetry",
            PayloadFormat::Csv => "csv",
            PayloadFormat::Raw => "raw",
            PayloadFormat::Ndjson => "ndjson",
        }
    }

    fn from_name(name: &str) -> Option<PayloadFormat> {
        PayloadFormat::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Records from MQTT messages whose topic matches `topic`.
#[derive(Clone, Debug)]
pub struct MqttSource {
    pub topic: TopicTemplate,
    /// Default `json`.
    pub format: PayloadFormat,
    /// Field → JSON pointer into the payload (syntax checked).
    pub map: IndexMap<String, String>,
    /// JSON pointer to the event time; arrival time when absent (`/ts` for
    /// `telemetry`).
    pub event_time: Option<String>,
    /// Subscription QoS, 0 or 1; default 1 (acknowledged only once durable).
    pub qos: u8,
    /// `csv`: the field of each column, in order.
    pub columns: Vec<String>,
    /// `raw`: the field the scalar payload goes to.
    pub field: Option<String>,
}

/// Records pushed over HTTP (`json` or `ndjson`, default `json`).
#[derive(Clone, Debug)]
pub struct HttpSource {
    pub format: PayloadFormat,
    /// Field → JSON pointer into each record.
    pub map: IndexMap<String, String>,
    /// JSON pointer to each record's event time; arrival time when absent.
    /// With it, a retried push is recognised and not written twice.
    pub event_time: Option<String>,
}

/// Records read from a local file as it grows (`ndjson` or `csv`, default
/// `ndjson`).
#[derive(Clone, Debug)]
pub struct FileSource {
    /// Relative paths are resolved against the definition file's folder,
    /// so a product folder can be moved as a whole.
    pub path: PathBuf,
    pub format: PayloadFormat,
    pub columns: Vec<String>,
    pub map: IndexMap<String, String>,
    pub event_time: Option<String>,
}

/// Sparkplug B metrics of the edge nodes and devices of one group
/// (`spBv1.0/<group>/...`), routed from MQTT like `mqtt` sources.
///
/// The entity is the device: device messages (DBIRTH/DDATA/DDEATH) give
/// records keyed by the device id, node messages (NBIRTH/NDATA/NDEATH)
/// records keyed by the edge node id — those only when `device` is not
/// set. Data by exception carries only the metrics that changed; the
/// record carries only those fields, and the store merges them into the
/// entity. The event time is the payload's timestamp.
///
/// Death certificates: when `online` names a boolean field, births set it
/// true and deaths false (an NDEATH also for every device of the node);
/// without it a death writes nothing and the entity simply goes stale by
/// the product's `freshness`.
#[derive(Clone, Debug)]
pub struct SparkplugSource {
    pub group: String,
    /// Only this edge node's messages, when given.
    pub edge_node: Option<String>,
    /// Only this device's messages, when given.
    pub device: Option<String>,
    /// Field → Sparkplug metric name (e.g. `Sensors/Temperature`).
    pub metrics: IndexMap<String, String>,
    /// A boolean field: true after a birth, false after a death.
    pub online: Option<String>,
}

const SPARKPLUG_KEYS: &[&str] = &["group", "edge_node", "device", "metrics", "online"];
const MQTT_KEYS: &[&str] = &[
    "topic",
    "format",
    "map",
    "event_time",
    "qos",
    "columns",
    "field",
];
const HTTP_KEYS: &[&str] = &["format", "map", "event_time"];
const FILE_KEYS: &[&str] = &["path", "format", "columns", "map", "event_time"];

/// Checks a JSON pointer (RFC 6901): empty (the whole payload) or
/// `/`-separated tokens in which `~` is only ever `~0` or `~1`.
pub fn check_json_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "invalid json pointer `{}`: expected a path starting with `/`, e.g. /temp or /values/0",
            reader::shorten(pointer)
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "invalid json pointer `{}`: `~` must be followed by 0 (for `~`) or 1 (for `/`)",
                reader::shorten(pointer)
            ));
        }
    }
    Ok(())
}

/// What every source parser needs to know about the product.
pub(crate) struct SourceContext<'a> {
    pub fields: &'a FieldTable,
    /// The definition file's folder, for relative file paths.
    pub base_dir: &'a Path,
}

impl SourceContext<'_> {
    /// Whether `name` is a declared field; reports it when not. `what`
    /// starts the message ("map target", "column").
    fn check_field(
        &self,
        name: &str,
        what: &str,
        at: &Entry<'_>,
        key_position: bool,
        diags: &mut Diagnostics,
    ) -> bool {
        let location = if key_position {
            at.item.key_at
        } else {
            at.at()
        };
        self.fields
            .resolve(name, what, location, &at.path, diags)
            .is_some()
    }
}

pub(crate) fn parse_sources(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Vec<Source> {
    let Some(seq) = expect_list(
        entry,
        "a list of sources, e.g. `- mqtt: { topic: ... }`",
        diags,
    ) else {
        return Vec::new();
    };
    elements(seq, &entry.path)
        .iter()
        .filter_map(|element| parse_source(element, ctx, diags))
        .collect()
}

fn parse_source(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<Source> {
    let kinds = SourceKind::names();
    let expected = kinds.join(", ");
    let map = MapReader::open(
        entry,
        &format!("a source: one of {expected}"),
        &kinds,
        diags,
    )?;
    let present: Vec<Entry<'_>> = kinds.iter().filter_map(|k| map.get(k)).collect();
    match present.as_slice() {
        [] => {
            // Unknown keys were reported by `open`; only an empty item is left.
            if map.is_empty() {
                diags.push(
                    entry.at(),
                    &entry.path,
                    format!("expected one of {expected}, found an empty mapping"),
                );
            }
            None
        }
        [one] => match one.path.rsplit('.').next().and_then(SourceKind::parse)? {
            SourceKind::Mqtt => parse_mqtt(one, ctx, diags).map(Source::Mqtt),
            SourceKind::Http => parse_http(one, ctx, diags).map(Source::Http),
            SourceKind::File => parse_file(one, ctx, diags).map(Source::File),
            SourceKind::Sparkplug => parse_sparkplug(one, ctx, diags).map(Source::Sparkplug),
            SourceKind::Modbus => {
                crate::sources::modbus::parse(one, ctx, diags).map(Source::Modbus)
            }
            SourceKind::Opcua => crate::sources::opcua::parse(one, ctx, diags).map(Source::Opcua),
        },
        [_, second, ..] => {
            diags.push(
                second.item.key_at,
                &second.path,
                "expected one source kind per list item, found several: write each source as its own `- ` item",
            );
            None
        }
    }
}

fn format_of(
    map: &MapReader<'_>,
    allowed: &[PayloadFormat],
    default: PayloadFormat,
    kind: &str,
    diags: &mut Diagnostics,
) -> Option<PayloadFormat> {
    let Some(entry) = map.get("format") else {
        return Some(default);
    };
    let names: Vec<&str> = PayloadFormat::ALL.iter().map(|f| f.name()).collect();
    let format = reader::choice(&entry, "payload format", &names, diags)
        .and_then(PayloadFormat::from_name)?;
    if allowed.contains(&format) {
        return Some(format);
    }
    let allowed: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
    diags.push(
        entry.at(),
        &entry.path,
        format!(
            "payload format `{}` is not supported by {kind} sources; expected one of: {}",
            format.name(),
            allowed.join(", ")
        ),
    );
    None
}

fn parse_mqtt(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<MqttSource> {
    let map = MapReader::open(
        entry,
        "mqtt source settings, e.g. `{ topic: devices/{id}/data }`",
        MQTT_KEYS,
        diags,
    )?;
    let topic = map.required("topic", diags).and_then(|e| {
        let text = reader::string(&e, diags)?;
        match TopicTemplate::parse(&text) {
            Ok(topic) => {
                for capture in topic.captures() {
                    ctx.check_field(capture, "topic capture", &e, false, diags);
                }
                Some(topic)
            }
            Err(problem) => {
                diags.push(
                    e.at(),
                    &e.path,
                    format!("invalid topic template: {problem}"),
                );
                None
            }
        }
    });
    let format = format_of(
        &map,
        &PayloadFormat::ALL,
        PayloadFormat::Json,
        "mqtt",
        diags,
    );
    let qos = map
        .get("qos")
        .and_then(|e| reader::integer(&e, 0, 1, diags))
        .unwrap_or(1) as u8;
    let shape = format
        .map(|f| payload_shape(&map, f, ctx, diags))
        .unwrap_or_default();
    if let Some(topic) = &topic {
        for (field, _) in &shape.map {
            if topic.captures().any(|c| c == field) {
                if let Some(e) = map.get("map") {
                    diags.push(
                        e.at(),
                        &e.path,
                        format!("field `{field}` is both captured from the topic and mapped from the payload; keep one"),
                    );
                }
            }
        }
    }
    Some(MqttSource {
        topic: topic?,
        format: format?,
        map: shape.map,
        event_time: shape.event_time,
        qos,
        columns: shape.columns,
        field: shape.field,
    })
}

fn parse_http(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<HttpSource> {
    // `http:` with nothing after it is the common way to say "defaults".
    if let marked_yaml::Node::Scalar(s) = entry.node() {
        if s.as_str().is_empty() && s.may_coerce() {
            return Some(HttpSource {
                format: PayloadFormat::Json,
                map: IndexMap::new(),
                event_time: None,
            });
        }
    }
    let map = MapReader::open(
        entry,
        "http source settings, e.g. `{ format: json }` or `{}`",
        HTTP_KEYS,
        diags,
    )?;
    let format = format_of(
        &map,
        &[PayloadFormat::Json, PayloadFormat::Ndjson],
        PayloadFormat::Json,
        "http",
        diags,
    )?;
    let shape = payload_shape(&map, format, ctx, diags);
    Some(HttpSource {
        format,
        map: shape.map,
        event_time: shape.event_time,
    })
}

fn parse_file(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<FileSource> {
    let map = MapReader::open(
        entry,
        "file source settings, e.g. `{ path: /var/log/meter.ndjson }`",
        FILE_KEYS,
        diags,
    )?;
    let path = map
        .required("path", diags)
        .and_then(|e| reader::non_empty_string(&e, diags))
        .map(|p| ctx.base_dir.join(p));
    let format = format_of(
        &map,
        &[PayloadFormat::Ndjson, PayloadFormat::Csv],
        PayloadFormat::Ndjson,
        "file",
        diags,
    );
    let shape = format
        .map(|f| payload_shape(&map, f, ctx, diags))
        .unwrap_or_default();
    Some(FileSource {
        path: path?,
        format: format?,
        columns: shape.columns,
        map: shape.map,
        event_time: shape.event_time,
    })
}

/// A Sparkplug topic level: no `/`, `+`, `#`, not empty.
fn sparkplug_id(entry: &Entry<'_>, what: &str, diags: &mut Diagnostics) -> Option<String> {
    let text = reader::non_empty_string(entry, diags)?;
    if text.contains(['/', '+', '#']) {
        diags.push(
            entry.at(),
            &entry.path,
            format!(
                "invalid sparkplug {what} `{}`: one topic level, without `/`, `+` or `#`",
                reader::shorten(&text)
            ),
        );
        return None;
    }
    Some(text)
}

fn parse_sparkplug(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<SparkplugSource> {
    let map = MapReader::open(
        entry,
        "sparkplug source settings, e.g. `{ group: plant, metrics: { temperature_c: Sensors/Temperature } }`",
        SPARKPLUG_KEYS,
        diags,
    )?;
    let group = map
        .required("group", diags)
        .and_then(|e| sparkplug_id(&e, "group", diags));
    let edge_node = map
        .get("edge_node")
        .and_then(|e| sparkplug_id(&e, "edge node id", diags));
    let device = map
        .get("device")
        .and_then(|e| sparkplug_id(&e, "device id", diags));
    let mut metrics = IndexMap::new();
    if let Some(e) = map.required("metrics", diags) {
        if let Some(mapping) = expect_mapping(
            &e,
            "a mapping of field name to metric name, e.g. `{ temperature_c: Sensors/Temperature }`",
            diags,
        ) {
            for (field, m) in entries(mapping, &e.path) {
                let known = ctx.check_field(field.as_str(), "metrics target", &m, true, diags);
                if let Some(name) = reader::non_empty_string(&m, diags) {
                    if known {
                        metrics.insert(field.as_str().to_string(), name);
                    }
                }
            }
        }
    }
    let online = map.get("online").and_then(|e| {
        let name = reader::string(&e, diags)?;
        let field = ctx
            .fields
            .resolve(&name, "online field", e.at(), &e.path, diags)?;
        if field.ty != super::field::FieldType::Bool {
            diags.push(
                e.at(),
                &e.path,
                format!(
                    "online field `{name}` must be a bool field: births set it true, deaths false"
                ),
            );
            return None;
        }
        Some(name)
    });
    Some(SparkplugSource {
        group: group?,
        edge_node,
        device,
        metrics,
        online,
    })
}

/// The format-dependent part of a source: map, columns, field, event_time.
#[derive(Default)]
struct PayloadShape {
    map: IndexMap<String, String>,
    columns: Vec<String>,
    field: Option<String>,
    event_time: Option<String>,
}

fn payload_shape(
    map: &MapReader<'_>,
    format: PayloadFormat,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> PayloadShape {
    let mut shape = PayloadShape::default();
    let name = format.name();
    let refuse = |entry: &Entry<'_>, why: &str, diags: &mut Diagnostics| {
        let key = entry.path.rsplit('.').next().unwrap_or_default();
        diags.push(
            entry.item.key_at,
            &entry.path,
            format!("`{key}` does not apply to {name} payloads: {why}"),
        );
    };
    if let Some(e) = map.get("map") {
        match format {
            PayloadFormat::Csv => refuse(&e, "`columns` names the field of each column", diags),
            PayloadFormat::Raw => refuse(&e, "`field` names the field the payload goes to", diags),
            _ => shape.map = parse_map(&e, ctx, diags),
        }
    }
    match (format, map.get("columns")) {
        (PayloadFormat::Csv, Some(e)) => shape.columns = parse_columns(&e, ctx, diags),
        (PayloadFormat::Csv, None) => diags.push(
            map.at,
            &reader_path(map, "columns"),
            "csv payloads need `columns`: the field of each column, in order",
        ),
        (_, Some(e)) => refuse(&e, "only csv payloads have columns", diags),
        (_, None) => {}
    }
    match (format, map.get("field")) {
        (PayloadFormat::Raw, Some(e)) => {
            shape.field = reader::string(&e, diags)
                .filter(|f| ctx.check_field(f, "raw payload field", &e, false, diags));
        }
        (PayloadFormat::Raw, None) => diags.push(
            map.at,
            &reader_path(map, "field"),
            "raw payloads need `field`: the field the payload value goes to",
        ),
        (_, Some(e)) => refuse(&e, "only raw payloads go to a single field", diags),
        (_, None) => {}
    }
    if let Some(e) = map.get("event_time") {
        if format == PayloadFormat::Raw {
            refuse(
                &e,
                "a raw payload has no event time; the arrival time is used",
                diags,
            );
        } else if let Some(pointer) = reader::string(&e, diags) {
            match check_json_pointer(&pointer) {
                Err(problem) => diags.push(e.at(), &e.path, problem),
                Ok(()) if format == PayloadFormat::Csv && !shape.columns.is_empty() => {
                    let column = pointer.strip_prefix('/').unwrap_or_default();
                    if shape.columns.iter().any(|c| c == column) {
                        shape.event_time = Some(pointer);
                    } else {
                        diags.push(
                            e.at(),
                            &e.path,
                            format!("event_time `{pointer}` does not name a csv column; expected `/` and one of: {}", shape.columns.join(", ")),
                        );
                    }
                }
                Ok(()) => shape.event_time = Some(pointer),
            }
        }
    }
    if format == PayloadFormat::Telemetry
        && shape.event_time.is_none()
        && map.get("event_time").is_none()
    {
        shape.event_time = Some("/ts".to_string());
    }
    shape
}

fn reader_path(map: &MapReader<'_>, key: &str) -> String {
    super::yaml::join(&map.path, key)
}

fn parse_map(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> IndexMap<String, String> {
    let mut out = IndexMap::new();
    let Some(map) = expect_mapping(
        entry,
        "a mapping of field name to json pointer, e.g. `{ temperature_c: /temp }`",
        diags,
    ) else {
        return out;
    };
    for (field, e) in entries(map, &entry.path) {
        let known = ctx.check_field(field.as_str(), "map target", &e, true, diags);
        let Some(pointer) = reader::string(&e, diags) else {
            continue;
        };
        if let Err(problem) = check_json_pointer(&pointer) {
            diags.push(e.at(), &e.path, problem);
            continue;
        }
        if known {
            out.insert(field.as_str().to_string(), pointer);
        }
    }
    out
}

fn parse_columns(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    let Some(list) = reader::string_list(entry, "a list of field names, one per csv column", diags)
    else {
        return columns;
    };
    if list.is_empty() {
        diags.push(
            entry.at(),
            &entry.path,
            "expected at least one column, found an empty list",
        );
    }
    for (column, e) in list {
        if columns.contains(&column) {
            diags.push(
                e.at(),
                &e.path,
                format!("column `{column}` is listed twice: each field may be one column"),
            );
        } else if ctx.check_field(&column, "column", &e, false, diags) {
            columns.push(column);
        }
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers_follow_rfc_6901() {
        for ok in ["", "/", "/temp", "/values/0", "/a~0b/c~1d", "/with space"] {
            assert_eq!(check_json_pointer(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_json_pointer("temp").unwrap_err(),
            "invalid json pointer `temp`: expected a path starting with `/`, e.g. /temp or /values/0"
        );
        assert_eq!(
            check_json_pointer("/a~2").unwrap_err(),
            "invalid json pointer `/a~2`: `~` must be followed by 0 (for `~`) or 1 (for `/`)"
        );
        assert!(check_json_pointer("/a~").is_err());
    }
}
