//! The `http:` source definition and its checks.

use indexmap::IndexMap;

use crate::product::diagnostic::Diagnostics;
use crate::product::reader::{Entry, MapReader};
use crate::product::source::{format_of, payload_shape, SourceContext};
use crate::product::PayloadFormat;

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

const KEYS: &[&str] = &["format", "map", "event_time"];
/// Parses an `http:` source (`http:` alone means the defaults).
pub(crate) fn parse(
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
        KEYS,
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
