//! Sources: where a product's records come from, and how a payload maps to
//! fields.
//!
//! The product module does not know the kinds of source. A definition's
//! `sources:` item is `<kind>: <settings>`; the loader hands the settings
//! to the parser the kind registered (the registry is `crate::sources`,
//! handed over in [`LoadContext`](super::LoadContext)) and keeps what it
//! returns as a [`Source`]: the kind's name and its settings behind
//! [`SourceSettings`], which tells the rest of the node how payloads are
//! read ([`SourceShape`]) and what the data contract says about them.
//!
//! Mapping rules shared by every source that reads payloads (the pipeline
//! implements them; this module checks that they are well-formed and
//! offers the kinds' parsers the shared pieces: [`payload_shape`],
//! [`format_of`]):
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

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;

use super::diagnostic::Diagnostics;
use super::field::FieldTable;
use super::reader::{self, elements, entries, expect_mapping, Entry, MapReader};
use super::Product;

/// What a kind's parsed settings tell the node without naming the kind.
/// Each kind implements it on its settings type (in its folder under
/// `src/sources/`).
pub trait SourceSettings: Any + fmt::Debug + Send + Sync {
    /// How the pipeline reads this source's payloads.
    fn shape(&self) -> SourceShape;

    /// Where records come from, as a data contract states it.
    fn contract(&self) -> serde_json::Value;

    /// Whether the API's push endpoint (`POST /ingest/<product>`) feeds
    /// this source.
    fn takes_push(&self) -> bool {
        false
    }
}

/// One source of records for a product: the kind's name and its settings.
#[derive(Clone, Debug)]
pub struct Source {
    kind: &'static str,
    settings: Arc<dyn SourceSettings>,
}

impl Source {
    /// A source of kind `kind` (its registered name) with `settings`.
    pub fn new(kind: &'static str, settings: Arc<dyn SourceSettings>) -> Source {
        Source { kind, settings }
    }

    /// The kind's name (`mqtt`, `modbus`, ...), as definitions write it.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The kind's settings, opaque.
    pub fn settings(&self) -> &dyn SourceSettings {
        &*self.settings
    }

    /// The settings as the kind's own type, when they are of type `T`.
    pub fn get<T: SourceSettings>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.settings;
        any.downcast_ref::<T>()
    }

    /// How the pipeline reads this source's payloads.
    pub fn shape(&self) -> SourceShape {
        self.settings.shape()
    }

    /// The id of this source when it is the product's `index`-th.
    pub fn id(&self, index: usize) -> SourceId {
        SourceId {
            kind: self.kind,
            index,
        }
    }
}

/// A source of a product: its kind and its position in the product's
/// `sources:` list. Written `<kind>:<index>` (`mqtt:0`, `http:1`): the name
/// counters, quarantine entries and file-tail offsets use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub kind: &'static str,
    pub index: usize,
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.index)
    }
}

impl Product {
    /// The source a `<kind>:<index>` id names: the one at that index when
    /// it is still of that kind, else the first source of the same kind (a
    /// quarantined entry names the source it came from; after an edit of
    /// the definition that position may hold another kind). `None` for
    /// anything else (API writes are counted under names such as
    /// `graphql`, which are not source ids).
    pub fn source_by_id(&self, id: &str) -> Option<&Source> {
        let (kind, index) = id.split_once(':')?;
        let index: usize = index.parse().ok()?;
        self.sources
            .get(index)
            .filter(|s| s.kind == kind)
            .or_else(|| self.sources.iter().find(|s| s.kind == kind))
    }
}

/// The parser of one registered kind's settings.
pub(crate) type ParseSettings =
    fn(&Entry<'_>, &SourceContext<'_>, &mut Diagnostics) -> Option<Arc<dyn SourceSettings>>;

/// One kind as the loader sees it: its name (the definition key) and the
/// parser of its settings. `crate::sources` registers them.
#[derive(Clone, Copy)]
pub struct SourceParser {
    pub(crate) name: &'static str,
    pub(crate) parse: ParseSettings,
}

impl SourceParser {
    pub(crate) const fn new(name: &'static str, parse: ParseSettings) -> SourceParser {
        SourceParser { name, parse }
    }

    /// The kind's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for SourceParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// How one source's payloads are read, derived from its settings (see the
/// mapping rules above).
#[derive(Clone, Debug)]
pub struct SourceShape {
    pub format: PayloadFormat,
    /// Field → JSON pointer into each record's document.
    pub map: IndexMap<String, String>,
    /// JSON pointer to the event time; `None` means arrival time, except
    /// for `telemetry`, which reads `/ts` then.
    pub event_time: Option<String>,
    /// `csv`: the field of each column, in order.
    pub columns: Vec<String>,
    /// `raw`: the field the payload's value goes to.
    pub field: Option<String>,
}

impl SourceShape {
    /// The shape of `source`.
    pub fn from_source(source: &Source) -> SourceShape {
        source.shape()
    }

    /// The shape of a JSON object a source or the API builds itself (a
    /// Modbus poll, an OPC UA publishing cycle, a GraphQL mutation): its
    /// keys are the field names, so nothing is mapped, and the event time
    /// is the arrival's.
    pub fn named_fields() -> SourceShape {
        SourceShape {
            format: PayloadFormat::Json,
            map: IndexMap::new(),
            event_time: None,
            columns: Vec::new(),
            field: None,
        }
    }

    /// The shape of the JSON object a polling source (Modbus, OPC UA)
    /// builds: [`SourceShape::named_fields`], with the event time read
    /// from `time_field` when the source fills one with the poll's time.
    pub fn polled(time_field: Option<&str>) -> SourceShape {
        SourceShape {
            event_time: time_field.map(|f| format!("/{}", f.replace('~', "~0").replace('/', "~1"))),
            ..SourceShape::named_fields()
        }
    }

    /// The same shape read as `format` (say, an HTTP push whose
    /// content type says ndjson). Switching to `telemetry` without an
    /// event time pointer sets `/ts`.
    pub fn with_format(mut self, format: PayloadFormat) -> SourceShape {
        self.format = format;
        if format == PayloadFormat::Telemetry && self.event_time.is_none() {
            self.event_time = Some("/ts".to_string());
        }
        self
    }

    /// Where the event time is read, if anywhere.
    pub fn event_time_pointer(&self) -> Option<&str> {
        match (&self.event_time, self.format) {
            (Some(pointer), _) => Some(pointer),
            (None, PayloadFormat::Telemetry) => Some("/ts"),
            (None, _) => None,
        }
    }
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

    pub(crate) fn from_name(name: &str) -> Option<PayloadFormat> {
        PayloadFormat::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
    pub(crate) fn check_field(
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
    kinds: &[SourceParser],
    diags: &mut Diagnostics,
) -> Vec<Source> {
    let Some(seq) = reader::expect_list(
        entry,
        "a list of sources, e.g. `- mqtt: { topic: ... }`",
        diags,
    ) else {
        return Vec::new();
    };
    elements(seq, &entry.path)
        .iter()
        .filter_map(|element| parse_source(element, ctx, kinds, diags))
        .collect()
}

/// One `- <kind>: <settings>` item, through the parser `kinds` registers
/// for its kind; an unknown kind is reported with the registered names.
fn parse_source(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    kinds: &[SourceParser],
    diags: &mut Diagnostics,
) -> Option<Source> {
    let names: Vec<&str> = kinds.iter().map(|k| k.name).collect();
    let expected = names.join(", ");
    let map = MapReader::open(
        entry,
        &format!("a source: one of {expected}"),
        &names,
        diags,
    )?;
    let present: Vec<(&SourceParser, Entry<'_>)> = kinds
        .iter()
        .filter_map(|k| Some((k, map.get(k.name)?)))
        .collect();
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
        [(kind, settings)] => {
            (kind.parse)(settings, ctx, diags).map(|parsed| Source::new(kind.name, parsed))
        }
        [_, (_, second), ..] => {
            diags.push(
                second.item.key_at,
                &second.path,
                "expected one source kind per list item, found several: write each source as its own `- ` item",
            );
            None
        }
    }
}

/// A polling source's `time_field`: a declared `timestamp` field that
/// each record's poll time fills (and that is then its event time).
/// `None` after a diagnostic.
pub(crate) fn time_field(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<String> {
    let name = reader::string(entry, diags)?;
    let field = ctx
        .fields
        .resolve(&name, "time field", entry.at(), &entry.path, diags)?;
    if field.ty != super::field::FieldType::Timestamp {
        diags.push(
            entry.at(),
            &entry.path,
            format!(
                "time field `{name}` must be a timestamp field: it takes the time each record is read"
            ),
        );
        return None;
    }
    Some(name)
}

/// The `format` of a source's settings: `default` when absent, refused
/// when not in `allowed` (`kind` names the source kind in the message).
pub(crate) fn format_of(
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

/// The format-dependent part of a source: map, columns, field, event_time.
#[derive(Default)]
pub(crate) struct PayloadShape {
    pub map: IndexMap<String, String>,
    pub columns: Vec<String>,
    pub field: Option<String>,
    pub event_time: Option<String>,
}

/// Reads and checks the format-dependent keys of a source that reads
/// payloads in `format`.
pub(crate) fn payload_shape(
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
