//! The `mqtt:` source definition and its checks.

use indexmap::IndexMap;

use crate::product::diagnostic::Diagnostics;
use crate::product::reader::{self, Entry, MapReader};
use crate::product::source::{format_of, payload_shape, SourceContext};
use crate::product::PayloadFormat;
use crate::product::TopicTemplate;

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

const KEYS: &[&str] = &[
    "topic",
    "format",
    "map",
    "event_time",
    "qos",
    "columns",
    "field",
];
/// Parses an `mqtt:` source; every problem is a diagnostic.
pub(crate) fn parse(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<MqttSource> {
    let map = MapReader::open(
        entry,
        "mqtt source settings, e.g. `{ topic: devices/{id}/data }`",
        KEYS,
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
