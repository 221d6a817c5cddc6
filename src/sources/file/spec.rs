//! The `file:` source definition and its checks.

use std::path::PathBuf;

use indexmap::IndexMap;

use crate::product::diagnostic::Diagnostics;
use crate::product::reader::{self, Entry, MapReader};
use crate::product::source::{format_of, payload_shape, SourceContext};
use crate::product::PayloadFormat;

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

const KEYS: &[&str] = &["path", "format", "columns", "map", "event_time"];

/// Parses a `file:` source; a relative path is resolved against the
/// definition's folder.
pub(crate) fn parse(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<FileSource> {
    let map = MapReader::open(
        entry,
        "file source settings, e.g. `{ path: /var/log/meter.ndjson }`",
        KEYS,
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
