//! Fields: the typed schema of a product's instances.

use std::collections::BTreeSet;
use std::fmt;

use indexmap::IndexMap;
use regex::Regex;

use super::diagnostic::{Diagnostics, Location};
use super::reader::{
    self, did_you_mean, elements, entries, expect_list, expect_mapping, Entry, MapReader,
};

/// The declared type of a field; values are coerced to it at ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    Timestamp,
    /// Free-form JSON, stored as is.
    Json,
}

impl FieldType {
    /// Every type, in the order messages list them.
    pub const ALL: [FieldType; 6] = [
        FieldType::String,
        FieldType::Int,
        FieldType::Float,
        FieldType::Bool,
        FieldType::Timestamp,
        FieldType::Json,
    ];

    /// The name used in definitions (`type: float`).
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Json => "json",
        }
    }

    pub fn from_name(name: &str) -> Option<FieldType> {
        FieldType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `int` and `float`: the types `min`, `max` and the `round` mask apply to.
    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Int | FieldType::Float)
    }

    /// "an int field", "a string field": for messages.
    pub(crate) fn a_field(self) -> String {
        let article = if self == FieldType::Int { "an" } else { "a" };
        format!("{article} {} field", self.name())
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How sensitive a field's values are; drives the catalog and audits, and
/// lets reviewers check that every `pii` field is masked for broad roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Classification {
    Public,
    /// The default: fine inside the organisation, not for the public.
    #[default]
    Internal,
    Confidential,
    /// Personal data (GDPR and friends): names, emails, phone numbers.
    Pii,
    Restricted,
}

impl Classification {
    pub const NAMES: [&'static str; 5] =
        ["public", "internal", "confidential", "pii", "restricted"];

    pub fn name(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Pii => "pii",
            Classification::Restricted => "restricted",
        }
    }

    fn from_name(name: &str) -> Option<Classification> {
        [
            Classification::Public,
            Classification::Internal,
            Classification::Confidential,
            Classification::Pii,
            Classification::Restricted,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One declared field.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    /// A record without this field is invalid. The key field is always
    /// required, whatever the definition says.
    pub required: bool,
    /// Inclusive bounds, int and float fields only.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Allowed values of a string field; empty means any value.
    pub enum_values: Vec<String>,
    /// String fields only. **Anchored**: compiled as `^(?:pattern)$`, so
    /// the whole value must match, which is what people mean by "the value
    /// has this format".
    pub pattern: Option<Regex>,
    pub unit: Option<String>,
    pub description: Option<String>,
    pub classification: Classification,
}

const FIELD_KEYS: &[&str] = &[
    "type",
    "required",
    "min",
    "max",
    "enum",
    "pattern",
    "unit",
    "description",
    "classification",
];

/// Longest field name accepted (GraphQL and storage keys stay short).
const MAX_NAME_LEN: usize = 64;

/// `[A-Za-z_][A-Za-z0-9_]*`: a name usable in GraphQL, expressions and
/// topic captures alike.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why `name` cannot be a field name, if it cannot. Names starting with
/// `__` are GraphQL's own, and `_meta` is where the API puts an instance's
/// version, first/last seen and source.
fn field_name_problem(name: &str) -> Option<String> {
    if !is_identifier(name) || name.len() > MAX_NAME_LEN {
        Some(format!(
            "invalid field name `{}`: expected letters, digits and `_`, not starting with a digit, at most {MAX_NAME_LEN} characters",
            reader::shorten(name)
        ))
    } else if name.starts_with("__") {
        Some(format!(
            "invalid field name `{name}`: names starting with `__` are reserved by graphql"
        ))
    } else if name == "_meta" {
        Some("invalid field name `_meta`: reserved for instance metadata (version, first and last seen, source)".into())
    } else {
        None
    }
}

/// The declared fields while a definition is checked. Fields whose own
/// definition is wrong (say, `type: flaot`) are remembered as broken:
/// references to them are not reported again, so one mistake gives one
/// diagnostic, not one per place the field is used. Likewise, when
/// `fields` itself is unusable, no reference is reported at all.
#[derive(Default)]
pub(crate) struct FieldTable {
    pub fields: IndexMap<String, Field>,
    /// Declared, but not usable: the declaration was reported.
    pub broken: BTreeSet<String>,
    /// False when `fields` was missing or not a mapping.
    pub usable: bool,
}

impl FieldTable {
    pub(crate) fn get(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// Every declared name, in declaration order of the usable ones first.
    fn declared(&self) -> Vec<&str> {
        self.fields
            .keys()
            .map(String::as_str)
            .chain(self.broken.iter().map(String::as_str))
            .collect()
    }

    /// The field called `name`, reporting it when it is not declared.
    /// `what` starts the message: "map target", "column", "key".
    pub(crate) fn resolve(
        &self,
        name: &str,
        what: &str,
        at: Location,
        path: &str,
        diags: &mut Diagnostics,
    ) -> Option<&Field> {
        if let Some(field) = self.fields.get(name) {
            return Some(field);
        }
        if self.usable && !self.broken.contains(name) {
            let declared = self.declared();
            diags.push(
                at,
                path,
                format!(
                    "{what} `{}` is not a declared field{}; declared fields: {}",
                    reader::shorten(name),
                    did_you_mean(name, &declared),
                    declared.join(", ")
                ),
            );
        }
        None
    }
}

/// Parses the `fields` mapping.
pub(crate) fn parse_fields(entry: &Entry<'_>, diags: &mut Diagnostics) -> FieldTable {
    let mut table = FieldTable::default();
    let Some(map) = expect_mapping(entry, "a mapping of field name to field definition", diags)
    else {
        return table;
    };
    // With no field at all, every reference would be reported again.
    table.usable = !map.is_empty();
    if map.is_empty() {
        diags.push(
            entry.at(),
            &entry.path,
            "no fields declared: expected at least one field, e.g. `id: { type: string }`",
        );
    }
    for (name, field_entry) in entries(map, &entry.path) {
        if let Some(problem) = field_name_problem(name.as_str()) {
            diags.push(field_entry.item.key_at, &field_entry.path, problem);
        }
        match parse_field(name.as_str(), &field_entry, diags) {
            Some(field) => {
                table.fields.insert(name.as_str().to_string(), field);
            }
            None => {
                table.broken.insert(name.as_str().to_string());
            }
        }
    }
    table
}

fn parse_field(name: &str, entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<Field> {
    let map = MapReader::open(
        entry,
        "a mapping of field settings, e.g. `{ type: string }`",
        FIELD_KEYS,
        diags,
    )?;
    let type_names: Vec<&str> = FieldType::ALL.iter().map(|t| t.name()).collect();
    let ty = map
        .required("type", diags)
        .and_then(|e| reader::choice(&e, "field type", &type_names, diags))
        .and_then(FieldType::from_name)?;
    let mut field = Field {
        name: name.to_string(),
        ty,
        required: map
            .get("required")
            .and_then(|e| reader::boolean(&e, diags))
            .unwrap_or(false),
        min: None,
        max: None,
        enum_values: Vec::new(),
        pattern: None,
        unit: map
            .get("unit")
            .and_then(|e| reader::non_empty_string(&e, diags)),
        description: map
            .get("description")
            .and_then(|e| reader::string(&e, diags)),
        classification: map
            .get("classification")
            .and_then(|e| reader::choice(&e, "classification", &Classification::NAMES, diags))
            .and_then(Classification::from_name)
            .unwrap_or_default(),
    };
    let min = map.get("min");
    let max = map.get("max");
    for bound in [&min, &max].into_iter().flatten() {
        if !ty.is_numeric() {
            only_for(bound, "int and float fields", name, ty, diags);
        }
    }
    if ty.is_numeric() {
        field.min = min.as_ref().and_then(|e| reader::number(e, diags));
        field.max = max.as_ref().and_then(|e| reader::number(e, diags));
        if let (Some(lo), Some(hi), Some(min)) = (field.min, field.max, &min) {
            if lo > hi {
                diags.push(
                    min.at(),
                    &min.path,
                    format!("min {lo} is greater than max {hi}: expected min ≤ max"),
                );
            }
        }
    }
    if let Some(e) = map.get("enum") {
        if ty == FieldType::String {
            field.enum_values = parse_enum(&e, diags);
        } else {
            only_for(&e, "string fields", name, ty, diags);
        }
    }
    if let Some(e) = map.get("pattern") {
        if ty == FieldType::String {
            field.pattern = reader::string(&e, diags).and_then(|p| compile_pattern(&p, &e, diags));
        } else {
            only_for(&e, "string fields", name, ty, diags);
        }
    }
    Some(field)
}

/// "`enum` applies only to string fields; `level` is an int field".
fn only_for(
    entry: &Entry<'_>,
    applies_to: &str,
    name: &str,
    ty: FieldType,
    diags: &mut Diagnostics,
) {
    let key = entry.path.rsplit('.').next().unwrap_or_default();
    diags.push(
        entry.item.key_at,
        &entry.path,
        format!(
            "`{key}` applies only to {applies_to}; `{name}` is {}",
            ty.a_field()
        ),
    );
}

fn parse_enum(entry: &Entry<'_>, diags: &mut Diagnostics) -> Vec<String> {
    let Some(seq) = expect_list(
        entry,
        "a list of allowed values, e.g. [ok, warn, fault]",
        diags,
    ) else {
        return Vec::new();
    };
    if seq.is_empty() {
        diags.push(
            entry.at(),
            &entry.path,
            "empty enum: expected at least one allowed value",
        );
    }
    let mut values: Vec<String> = Vec::new();
    for element in elements(seq, &entry.path) {
        let Some(value) = reader::string(&element, diags) else {
            continue;
        };
        if values.contains(&value) {
            diags.push(
                element.at(),
                &element.path,
                format!(
                    "duplicate enum value `{}`: each value may be listed once",
                    reader::shorten(&value)
                ),
            );
        } else {
            values.push(value);
        }
    }
    values
}

/// Compiled-size cap for patterns: plenty for formats like e-mail or
/// serial numbers, far too small for a pathological one to eat memory.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

fn compile_pattern(pattern: &str, entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<Regex> {
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
    };
    // Compiled once as written, so errors describe the user's text, then
    // anchored.
    match build(pattern).and_then(|_| build(&format!("^(?:{pattern})$"))) {
        Ok(regex) => Some(regex),
        Err(err) => {
            diags.push(
                entry.at(),
                &entry.path,
                format!(
                    "invalid regex pattern `{}`: {}",
                    reader::shorten(pattern),
                    regex_reason(&err)
                ),
            );
            None
        }
    }
}

/// The one-line reason inside regex's multi-line error text.
fn regex_reason(err: &regex::Error) -> String {
    match err {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or("syntax error")
            .to_string(),
        regex::Error::CompiledTooBig(_) => "pattern is too large once compiled".to_string(),
        _ => err.to_string(),
    }
}
