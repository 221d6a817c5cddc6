//! Access rules: what each role may do with a product, and how it sees it.

use indexmap::IndexMap;

use super::diagnostic::Diagnostics;
use super::field::FieldTable;
use super::filter::{parse_row_filter, FilterContext, RowFilter};
use super::mask::{parse_masks, Mask};
use super::reader::{self, entries, expect_mapping, Entry, MapReader};

/// One role's rights on a product. A role without a rule has no access.
#[derive(Clone, Debug)]
pub struct AccessRule {
    pub role: String,
    /// Query instances, history and audit.
    pub read: bool,
    /// Change subscriptions; defaults to `read`.
    pub subscribe: bool,
    /// Write mutations.
    pub write: bool,
    /// Erase mutations (right to be forgotten).
    pub erase: bool,
    /// Only instances matching this filter are visible (`where:`).
    pub row_filter: Option<RowFilter>,
    /// How fields are masked for this role (`mask:`).
    pub masks: IndexMap<String, Mask>,
}

const RULE_KEYS: &[&str] = &["read", "subscribe", "write", "erase", "where", "mask"];
const MAX_ROLE_LEN: usize = 64;

/// `[A-Za-z_][A-Za-z0-9_-]*`, at most 64 characters: role names appear
/// in token configuration and logs.
fn is_role_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_ROLE_LEN
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn parse_access(
    entry: &Entry<'_>,
    fields: &FieldTable,
    key_field: Option<&str>,
    filters: &FilterContext<'_>,
    diags: &mut Diagnostics,
) -> IndexMap<String, AccessRule> {
    let mut rules = IndexMap::new();
    let Some(map) = expect_mapping(
        entry,
        "a mapping of role name to access rule, e.g. `operator: { read: true }`",
        diags,
    ) else {
        return rules;
    };
    for (role, rule_entry) in entries(map, &entry.path) {
        if !is_role_name(role.as_str()) {
            diags.push(
                rule_entry.item.key_at,
                &rule_entry.path,
                format!(
                    "invalid role name `{}`: expected letters, digits, `_` and `-`, starting with a letter or `_`, at most {MAX_ROLE_LEN} characters",
                    reader::shorten(role.as_str())
                ),
            );
        }
        if let Some(rule) = parse_rule(
            role.as_str(),
            &rule_entry,
            fields,
            key_field,
            filters,
            diags,
        ) {
            rules.insert(role.as_str().to_string(), rule);
        }
    }
    rules
}

fn parse_rule(
    role: &str,
    entry: &Entry<'_>,
    fields: &FieldTable,
    key_field: Option<&str>,
    filters: &FilterContext<'_>,
    diags: &mut Diagnostics,
) -> Option<AccessRule> {
    let map = MapReader::open(
        entry,
        "an access rule, e.g. `{ read: true, mask: { email: hash } }`",
        RULE_KEYS,
        diags,
    )?;
    let flag =
        |key: &str, diags: &mut Diagnostics| map.get(key).and_then(|e| reader::boolean(&e, diags));
    let read = flag("read", diags).unwrap_or(false);
    let subscribe = flag("subscribe", diags);
    if subscribe == Some(true) && !read {
        if let Some(e) = map.get("subscribe") {
            diags.push(
                e.at(),
                &e.path,
                "`subscribe: true` needs `read: true`: a role that cannot read cannot subscribe",
            );
        }
    }
    Some(AccessRule {
        role: role.to_string(),
        read,
        subscribe: subscribe.unwrap_or(read),
        write: flag("write", diags).unwrap_or(false),
        erase: flag("erase", diags).unwrap_or(false),
        row_filter: map
            .get("where")
            .and_then(|e| parse_row_filter(&e, filters, diags)),
        masks: map
            .get("mask")
            .map(|e| parse_masks(&e, fields, key_field, diags))
            .unwrap_or_default(),
    })
}
