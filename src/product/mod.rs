//! Product definitions: YAML files (one product each) parsed into the one
//! compiled, typed [`Product`] every other module reads.
//!
//! Loading never stops at the first problem: every problem in every file
//! becomes a [`Diagnostic`] with file, line, column and key path, and a
//! definition with any problem is refused whole (a node never starts
//! half-configured). The format is documented for editors in
//! `schema/product.schema.json`, with examples in `schema/examples/`.
//!
//! Layout: [`yaml`] loads text into a spanned tree (with size and depth
//! limits), [`reader`] reads typed values off it, one file per section of
//! the format checks that section, and [`definition`] puts them together.

mod access;
mod definition;
mod diagnostic;
mod duration;
mod field;
mod filter;
mod load;
mod mask;
mod policies;
mod reader;
mod source;
mod sync;
mod topic;
mod yaml;

pub use access::AccessRule;
pub use definition::{parse_definition, LoadContext, Product};
pub use diagnostic::{Diagnostic, LoadErrors, Location, DOCUMENT_KEY};
pub use duration::parse_duration;
pub use field::{Classification, Field, FieldType};
pub use filter::RowFilter;
pub use load::{load_path, ProductSet};
pub use mask::Mask;
pub use policies::{HistoryPolicy, OnInvalid, QualityPolicy, RetentionPolicy};
pub use source::{check_json_pointer, FileSource, HttpSource, MqttSource, PayloadFormat, Source};
pub use sync::{Priority, SyncMode, SyncRule, SyncWhen};
pub use topic::TopicTemplate;
pub use yaml::{yaml_to_json, MAX_DEFINITION_BYTES, MAX_DEPTH};
