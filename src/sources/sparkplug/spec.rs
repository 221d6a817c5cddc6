//! The `sparkplug:` source definition and its checks.

use indexmap::IndexMap;

use crate::product::diagnostic::Diagnostics;
use crate::product::reader::{self, entries, expect_mapping, Entry, MapReader};
use crate::product::source::SourceContext;

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

const KEYS: &[&str] = &["group", "edge_node", "device", "metrics", "online"];
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

/// Parses a `sparkplug:` source; every problem is a diagnostic.
pub(crate) fn parse(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<SparkplugSource> {
    let map = MapReader::open(
        entry,
        "sparkplug source settings, e.g. `{ group: plant, metrics: { temperature_c: Sensors/Temperature } }`",
        KEYS,
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
        if field.ty != crate::product::FieldType::Bool {
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
