//! One definition file → one [`Product`], or every problem in it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use super::access::{parse_access, AccessRule};
use super::diagnostic::{Diagnostics, LoadErrors, Location};
use super::field::{parse_fields, Field, FieldTable, FieldType};
use super::filter::FilterContext;
use super::policies::{
    parse_history, parse_quality, parse_retention, HistoryPolicy, QualityPolicy, RetentionPolicy,
};
use super::reader::{self, Entry, MapReader};
use super::source::{parse_sources, Source, SourceContext, SourceParser};
use super::sync::{parse_sync, ReferenceRule, SyncContext, SyncRule};
use super::yaml;

/// What a definition is checked against besides itself.
#[derive(Clone, Debug)]
pub struct LoadContext {
    /// The upstream names declared in the hub config; sync rules may only
    /// name these.
    pub upstreams: BTreeSet<String>,
    /// The source kinds a definition may list, with their parsers: the
    /// registry of `crate::sources`. The product module does not know the
    /// kinds, so `LoadContext`'s `Default` (every registered kind) is
    /// implemented there.
    pub(crate) kinds: &'static [SourceParser],
}

impl LoadContext {
    /// Every registered source kind, sync rules checked against
    /// `upstreams`.
    pub fn with_upstreams(upstreams: BTreeSet<String>) -> LoadContext {
        LoadContext {
            upstreams,
            ..LoadContext::default()
        }
    }

    /// The names of the source kinds a definition may list.
    pub fn source_kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(SourceParser::name)
    }
}

/// A compiled product definition: every name resolved, every value typed.
/// Other modules read this and never the YAML.
#[derive(Clone, Debug)]
pub struct Product {
    /// `[a-z][a-z0-9_]{0,62}`: used in GraphQL type names, store trees,
    /// topics and URLs.
    pub name: String,
    pub version: u32,
    pub domain: String,
    pub owner: String,
    pub description: Option<String>,
    /// The entity key field: a declared string or int field, always
    /// required.
    pub key: String,
    /// In declaration order (the order of the GraphQL type's fields).
    pub fields: IndexMap<String, Field>,
    pub sources: Vec<Source>,
    pub quality: QualityPolicy,
    pub history: HistoryPolicy,
    pub retention: RetentionPolicy,
    /// The longest an instance may go without an update before the catalog
    /// calls it stale.
    pub freshness: Option<Duration>,
    /// Role name → rule, in declaration order.
    pub access: IndexMap<String, AccessRule>,
    pub sync: Vec<SyncRule>,
    /// `sync: - from: …` rules: reference data this node receives.
    pub reference: Vec<ReferenceRule>,
    /// The definition file.
    pub file: PathBuf,
}

impl Product {
    /// The entity key field.
    ///
    /// # Panics
    /// If `key` names no field, which a loaded product never does (it is
    /// checked at load); only a hand-built `Product` can get this wrong.
    pub fn key_field(&self) -> &Field {
        &self.fields[self.key.as_str()]
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }
}

const TOP_KEYS: &[&str] = &[
    "product",
    "version",
    "domain",
    "owner",
    "description",
    "key",
    "fields",
    "sources",
    "quality",
    "history",
    "retention",
    "freshness",
    "access",
    "sync",
];

const MAX_NAME_LEN: usize = 63;

/// Parses and checks one definition. `file` is used for diagnostics and to
/// resolve relative file-source paths; it is not read.
pub fn parse_definition(file: &Path, text: &str, ctx: &LoadContext) -> Result<Product, LoadErrors> {
    parse_located(file, text, ctx).map(|(product, _)| product)
}

/// [`parse_definition`], also returning where the product name is written
/// (for cross-file diagnostics).
pub(crate) fn parse_located(
    file: &Path,
    text: &str,
    ctx: &LoadContext,
) -> Result<(Product, Location), LoadErrors> {
    let mut diags = Diagnostics::new(file);
    let text = yaml::strip_bom(text);
    let product = yaml::load(text, &mut diags).and_then(|root| {
        let entry = Entry::new(&root, String::new());
        build(&entry, file, text, ctx, &mut diags)
    });
    match product {
        Some(found) if diags.is_empty() => Ok(found),
        _ => Err(LoadErrors(diags.into_sorted())),
    }
}

fn build(
    root: &Entry<'_>,
    file: &Path,
    text: &str,
    ctx: &LoadContext,
    diags: &mut Diagnostics,
) -> Option<(Product, Location)> {
    let map = MapReader::open(root, "a product definition mapping", TOP_KEYS, diags)?;
    let name_entry = map.required("product", diags);
    let name = name_entry.as_ref().and_then(|e| product_name(e, diags));
    let version = map
        .required("version", diags)
        .and_then(|e| reader::integer(&e, 1, u64::from(u32::MAX), diags))
        .map(|v| v as u32);
    let domain = map
        .required("domain", diags)
        .and_then(|e| reader::non_empty_string(&e, diags));
    let owner = map
        .required("owner", diags)
        .and_then(|e| reader::non_empty_string(&e, diags));
    let description = map
        .get("description")
        .and_then(|e| reader::string(&e, diags));
    let mut table = map
        .required("fields", diags)
        .map(|e| parse_fields(&e, diags))
        .unwrap_or_default();
    let key = map
        .required("key", diags)
        .and_then(|e| key_field(&e, &table, diags));
    if let Some(field) = key.as_ref().and_then(|k| table.fields.get_mut(k)) {
        field.required = true;
    }
    let base_dir = file.parent().unwrap_or_else(|| Path::new(""));
    let sources = map
        .get("sources")
        .map(|e| {
            parse_sources(
                &e,
                &SourceContext {
                    fields: &table,
                    base_dir,
                },
                ctx.kinds,
                diags,
            )
        })
        .unwrap_or_default();
    let quality = map
        .get("quality")
        .map(|e| parse_quality(&e, diags))
        .unwrap_or_default();
    let history = map
        .get("history")
        .map(|e| parse_history(&e, diags))
        .unwrap_or_default();
    let retention = map
        .get("retention")
        .map(|e| parse_retention(&e, diags))
        .unwrap_or_default();
    let freshness = map
        .get("freshness")
        .and_then(|e| reader::duration(&e, diags));
    let filters = FilterContext {
        text,
        fields: &table,
    };
    let access = map
        .get("access")
        .map(|e| parse_access(&e, &table, key.as_deref(), &filters, diags))
        .unwrap_or_default();
    let sync_ctx = SyncContext {
        fields: &table,
        key_field: key.as_deref(),
        upstreams: &ctx.upstreams,
        filters: &filters,
    };
    let (sync, reference) = map
        .get("sync")
        .map(|e| parse_sync(&e, &sync_ctx, diags))
        .unwrap_or_default();
    let product = Product {
        name: name?,
        version: version?,
        domain: domain?,
        owner: owner?,
        description,
        key: key?,
        fields: std::mem::take(&mut table.fields),
        sources,
        quality,
        history,
        retention,
        freshness,
        access,
        sync,
        reference,
        file: file.to_path_buf(),
    };
    Some((
        product,
        name_entry.map(|e| e.at()).unwrap_or(Location::START),
    ))
}

/// `[a-z][a-z0-9_]{0,62}`.
fn product_name(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<String> {
    let name = reader::string(entry, diags)?;
    let mut chars = name.chars();
    let valid = name.len() <= MAX_NAME_LEN
        && matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
    if !valid {
        diags.push(
            entry.at(),
            &entry.path,
            format!(
                "invalid product name `{}`: expected lowercase letters, digits and `_`, starting with a letter, at most {MAX_NAME_LEN} characters, e.g. machine_health",
                reader::shorten(&name)
            ),
        );
        return None;
    }
    Some(name)
}

/// The key: a declared string or int field.
fn key_field(entry: &Entry<'_>, table: &FieldTable, diags: &mut Diagnostics) -> Option<String> {
    let name = reader::string(entry, diags)?;
    let field = table.resolve(&name, "key", entry.at(), &entry.path, diags)?;
    if !matches!(field.ty, FieldType::String | FieldType::Int) {
        diags.push(
            entry.at(),
            &entry.path,
            format!(
                "key field `{name}` is {}: the key must be a string or int field",
                field.ty.a_field()
            ),
        );
        return None;
    }
    Some(name)
}
