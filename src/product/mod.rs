//! Product definitions: YAML files (one product each) parsed into the one
//! compiled, typed [`Product`] every other module reads.
//!
//! Loading never stops at the first problem: every problem in every file
//! becomes a [`Diagnostic`] with file, line, column, key path and a message
//! that says what was found and what was expected, and a definition with
//! any problem is refused whole (a node never starts half-configured). The
//! format is described for editors by `schema/product.schema.json`, with
//! realistic examples in `schema/examples/` (all checked by the tests).
//!
//! Layout: `yaml` loads text into marked-yaml's spanned tree (with size and
//! depth limits); `reader` reads typed values off it (`MapReader` reports
//! unknown keys with the expected ones); one file per section of the format
//! checks that section (`field`, `source`, `topic`, `mask`, `access`,
//! `sync`, `policies`, `filter`); `definition` puts them together and
//! `load` handles files, folders and cross-file checks.
//!
//! # Decisions
//!
//! - **Scalars are typed strictly**, by the YAML 1.2 core schema: `42` is a
//!   number, `true` a boolean, `"42"` (quoted) a string. A number where text
//!   is expected is refused ("quote it to use it as text"), exactly as the
//!   JSON Schema does, so editor and node never disagree.
//! - **Field patterns are anchored**: `^(?:pattern)$`, the whole value must
//!   match.
//! - **The key field** must be a declared `string` or `int` field, is always
//!   required, and may only be masked with `hash` (other masks would make
//!   distinct entities look the same).
//! - **Masks keep the field's type** (one GraphQL schema for every role):
//!   `hash`, `redact`, `partial` on string fields, `round` on int/float
//!   fields (whole steps on int), `null` on any field.
//! - **Topic templates** allow empty levels (MQTT does, and devices that
//!   publish `/devices/x` exist); a capture never matches an empty level.
//!   See [`TopicTemplate`].
//! - **Sync `fields`** always include the key (added when missing); a sync
//!   mask must be on a field the rule sends; `on_change: false` needs
//!   `min_interval`.
//! - **`subscribe`** defaults to `read` and needs it.
//! - **Relative file-source paths** resolve against the definition's folder.
//! - **One problem, one diagnostic**: a field whose own declaration is wrong
//!   is not reported again where it is used; when `fields` is unusable,
//!   references to fields are not checked.
//! - **Duplicate keys** are reported with both lines, then the file is
//!   re-read with the last value winning so the rest is still checked.
//!   Only the first duplicate of a file is reported (the loader stops there).
//! - **Missing keys** are reported at the mapping that lacks them (its first
//!   key), under the missing key's path.
//! - **Row filter errors** are placed at the offending character when the
//!   expression sits on the value's line without escapes (quoted or plain);
//!   otherwise at the value's start. The message always carries the column
//!   inside the expression.
//! - **Limits**: files over [`MAX_DEFINITION_BYTES`] (256 KiB), lines
//!   indented more than 256 columns and nesting deeper than [`MAX_DEPTH`]
//!   are refused before any recursive walk; a second YAML document (`---`)
//!   in a file is an error rather than silently ignored; anchors, aliases and
//!   tags are refused; a leading byte-order mark is ignored.
//! - **Problems without a key** (syntax, size, unreadable file) use the key
//!   [`DOCUMENT_KEY`], `(document)`, so the display format stays
//!   `file:line:column: key: message`.

mod access;
mod definition;
pub(crate) mod diagnostic;
mod duration;
mod field;
mod filter;
mod load;
mod mask;
mod policies;
pub(crate) mod reader;
pub(crate) mod source;
mod sync;
mod topic;
mod yaml;

pub use access::AccessRule;
pub use definition::{parse_definition, LoadContext, Product};
pub use diagnostic::{Diagnostic, LoadErrors, Location, DOCUMENT_KEY};
pub use duration::parse_duration;
pub use field::{Classification, Field, FieldType};
pub use filter::RowFilter;
pub use load::{load_path, load_paths, ProductSet};
pub use mask::Mask;
pub use policies::{HistoryPolicy, OnInvalid, QualityPolicy, RetentionPolicy};
pub use source::{
    check_json_pointer, PayloadFormat, Source, SourceId, SourceParser, SourceSettings, SourceShape,
};
pub use sync::{Priority, ReferenceRule, SyncMode, SyncRule, SyncWhen, REFERENCE_PLACEHOLDERS};
pub use topic::TopicTemplate;
pub use yaml::{yaml_to_json, MAX_DEFINITION_BYTES, MAX_DEPTH};
