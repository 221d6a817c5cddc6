//! Sync rules: what a product sends to which upstream, and when.

use std::collections::BTreeSet;
use std::time::Duration;

use indexmap::IndexMap;
use marked_yaml::Node;

use super::diagnostic::Diagnostics;
use super::field::FieldTable;
use super::filter::{parse_row_filter, parse_row_filter_text, FilterContext, RowFilter};
use super::mask::{parse_masks, Mask};
use super::reader::{self, did_you_mean, elements, expect_list, Entry, MapReader};

/// One sync rule: a filtered, masked view of the product sent to one
/// upstream.
#[derive(Clone, Debug)]
pub struct SyncRule {
    /// The upstream, by its name in the hub config.
    pub to: String,
    /// The fields sent; `None` sends all. The key field is always sent:
    /// it is added to the list when missing.
    pub fields: Option<Vec<String>>,
    /// Only instances matching this filter are sent (`where:`).
    pub row_filter: Option<RowFilter>,
    /// Masks applied before sending (`mask:`).
    pub masks: IndexMap<String, Mask>,
    pub when: SyncWhen,
    pub priority: Priority,
    pub mode: SyncMode,
}

/// One reference-data rule (`- from: <upstream>`): the product's
/// instances flow *down* from the mesh (a JetStream key-value bucket, or an
/// aggregator's `GET /sync/v1/reference/<product>`) into this node's store,
/// filtered by `where` and masked by `mask` on this node, before they are
/// stored: what a rule drops or masks never reaches the disk here.
#[derive(Clone, Debug)]
pub struct ReferenceRule {
    /// The upstream, by its name in the hub config.
    pub from: String,
    /// The `where` text as written: `${node_id}` and `${node_site}` are
    /// replaced by this node's values when sync starts
    /// ([`ReferenceRule::row_filter`]); checked at load with placeholders.
    pub filter_source: Option<String>,
    /// The fields kept; `None` keeps all (the key is always kept).
    pub fields: Option<Vec<String>>,
    /// Masks applied before storing (`mask:`).
    pub masks: IndexMap<String, Mask>,
}

/// The placeholders a reference rule's `where` may use.
pub const REFERENCE_PLACEHOLDERS: [&str; 2] = ["${node_id}", "${node_site}"];

impl ReferenceRule {
    /// The `where` with this node's id and site put in (as string
    /// literals). An error names what is missing (a `${node_site}` on a
    /// node without `node_site`).
    pub fn row_filter(
        &self,
        node_id: &str,
        node_site: Option<&str>,
    ) -> Result<Option<RowFilter>, String> {
        let Some(source) = &self.filter_source else {
            return Ok(None);
        };
        let mut text = source.replace("${node_id}", &quote(node_id));
        if text.contains("${node_site}") {
            let site = node_site.ok_or_else(|| {
                format!(
                    "reference rule `from: {}` filters on `${{node_site}}`, but this node has no `node_site` in its config",
                    self.from
                )
            })?;
            text = text.replace("${node_site}", &quote(site));
        }
        crate::expr::parse(&text).map(Some).map_err(|e| {
            format!(
                "reference rule `from: {}`: where `{text}`: {}",
                self.from, e.message
            )
        })
    }
}

/// `value` as a filter string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// When a change is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncWhen {
    /// Send on every change (coalesced by `min_interval`). When false, the
    /// latest state is sent every `min_interval`, which is then required.
    pub on_change: bool,
    /// At most one send per entity per interval; changes in between are
    /// coalesced to the latest.
    pub min_interval: Option<Duration>,
    /// Most entries in one upstream batch (1–10,000; default 500).
    pub batch_size: usize,
    /// A partial batch is sent once its oldest entry is this old (default 1s).
    pub batch_age: Duration,
}

impl Default for SyncWhen {
    fn default() -> Self {
        SyncWhen {
            on_change: true,
            min_interval: None,
            batch_size: 500,
            batch_age: Duration::from_secs(1),
        }
    }
}

/// Which outbox entries go first, and which are dropped last when the
/// sync disk budget overflows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub const NAMES: [&'static str; 3] = ["low", "normal", "high"];

    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// What is sent for an entity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SyncMode {
    /// Its latest state; intermediate states may be coalesced away.
    #[default]
    Latest,
    /// Every history event, in order: for products whose past matters
    /// upstream (meter readings, audits).
    History,
}

impl SyncMode {
    pub const NAMES: [&'static str; 2] = ["latest", "history"];

    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Latest => "latest",
            SyncMode::History => "history",
        }
    }
}

const RULE_KEYS: &[&str] = &[
    "to", "from", "fields", "where", "mask", "when", "priority", "mode",
];
const WHEN_KEYS: &[&str] = &["on_change", "min_interval", "batch_size", "batch_age"];
const MAX_BATCH: u64 = 10_000;

pub(crate) struct SyncContext<'a> {
    pub fields: &'a FieldTable,
    pub key_field: Option<&'a str>,
    pub upstreams: &'a BTreeSet<String>,
    pub filters: &'a FilterContext<'a>,
}

/// The rules of a `sync:` list: `to:` rules (up) and `from:` rules
/// (reference data down).
pub(crate) fn parse_sync(
    entry: &Entry<'_>,
    ctx: &SyncContext<'_>,
    diags: &mut Diagnostics,
) -> (Vec<SyncRule>, Vec<ReferenceRule>) {
    let Some(seq) = expect_list(entry, "a list of sync rules, e.g. `- to: central`", diags) else {
        return Default::default();
    };
    let mut up = Vec::new();
    let mut down = Vec::new();
    for e in elements(seq, &entry.path).iter() {
        let is_from =
            matches!(e.node(), Node::Mapping(m) if m.keys().any(|k| k.as_str() == "from"));
        if is_from {
            down.extend(parse_reference_rule(e, ctx, diags));
        } else {
            up.extend(parse_rule(e, ctx, diags));
        }
    }
    (up, down)
}

/// Keys a `from:` rule takes (timing, priority and mode are the sender's).
const REFERENCE_KEYS: &[&str] = &["from", "fields", "where", "mask"];

fn parse_reference_rule(
    entry: &Entry<'_>,
    ctx: &SyncContext<'_>,
    diags: &mut Diagnostics,
) -> Option<ReferenceRule> {
    let map = MapReader::open(
        entry,
        "a reference rule, e.g. `{ from: central, where: \"site == ${node_site}\" }`",
        REFERENCE_KEYS,
        diags,
    )?;
    let from = map
        .required("from", diags)
        .and_then(|e| known_upstream(&e, ctx, diags));
    let fields = map.get("fields").map(|e| parse_field_list(&e, ctx, diags));
    let masks = map
        .get("mask")
        .map(|e| parse_masks(&e, ctx.fields, ctx.key_field, diags))
        .unwrap_or_default();
    let filter_source = map.get("where").and_then(|e| {
        let source = reader::string(&e, diags)?;
        // Checked with each placeholder as a string; an unknown `${…}`
        // is named here rather than as a parse error of `$`.
        let mut probe = source.clone();
        for p in REFERENCE_PLACEHOLDERS {
            probe = probe.replace(p, "'x'");
        }
        if let Some(start) = probe.find("${") {
            let name: String = probe[start..].chars().take_while(|c| *c != '}').collect();
            diags.push(
                e.at(),
                &e.path,
                format!(
                    "unknown placeholder `{name}}}` in a reference rule's where; use {}",
                    REFERENCE_PLACEHOLDERS.join(" or ")
                ),
            );
            return None;
        }
        parse_row_filter_text(&e, &probe, ctx.filters, diags).map(|_| source)
    });
    Some(ReferenceRule {
        from: from?,
        filter_source,
        fields: fields.flatten(),
        masks,
    })
}

/// `e` as the name of an upstream the hub config declares (else reported).
fn known_upstream(e: &Entry<'_>, ctx: &SyncContext<'_>, diags: &mut Diagnostics) -> Option<String> {
    let name = reader::string(e, diags)?;
    if ctx.upstreams.contains(&name) {
        return Some(name);
    }
    let declared: Vec<&str> = ctx.upstreams.iter().map(String::as_str).collect();
    let message = if declared.is_empty() {
        format!(
            "unknown upstream `{}`: the hub config declares no upstreams",
            reader::shorten(&name)
        )
    } else {
        format!(
            "unknown upstream `{}`{}; declared upstreams: {}",
            reader::shorten(&name),
            did_you_mean(&name, &declared),
            declared.join(", ")
        )
    };
    diags.push(e.at(), &e.path, message);
    None
}

fn parse_rule(
    entry: &Entry<'_>,
    ctx: &SyncContext<'_>,
    diags: &mut Diagnostics,
) -> Option<SyncRule> {
    let map = MapReader::open(
        entry,
        "a sync rule, e.g. `{ to: central }`",
        RULE_KEYS,
        diags,
    )?;
    let to = map
        .required("to", diags)
        .and_then(|e| known_upstream(&e, ctx, diags));
    let fields = map.get("fields").map(|e| parse_field_list(&e, ctx, diags));
    let masks = map
        .get("mask")
        .map(|e| parse_masks(&e, ctx.fields, ctx.key_field, diags))
        .unwrap_or_default();
    if let (Some(Some(sent)), Some(mask_entry)) = (&fields, map.get("mask")) {
        for name in masks.keys().filter(|m| !sent.contains(m)) {
            diags.push(
                mask_entry.at(),
                &mask_entry.path,
                format!("mask on `{name}`, which this rule does not send: add it to `fields` or drop the mask"),
            );
        }
    }
    let rule = SyncRule {
        to: to?,
        fields: fields.flatten(),
        row_filter: map
            .get("where")
            .and_then(|e| parse_row_filter(&e, ctx.filters, diags)),
        masks,
        when: map
            .get("when")
            .map(|e| parse_when(&e, diags))
            .unwrap_or_default(),
        priority: map
            .get("priority")
            .and_then(|e| reader::choice(&e, "priority", &Priority::NAMES, diags))
            .map(|name| match name {
                "low" => Priority::Low,
                "high" => Priority::High,
                _ => Priority::Normal,
            })
            .unwrap_or_default(),
        mode: map
            .get("mode")
            .and_then(|e| reader::choice(&e, "sync mode", &SyncMode::NAMES, diags))
            .map(|name| {
                if name == "history" {
                    SyncMode::History
                } else {
                    SyncMode::Latest
                }
            })
            .unwrap_or_default(),
    };
    Some(rule)
}

/// The `fields:` list of a rule, with the key field added when missing.
/// `None` when the list itself is unusable (already reported).
fn parse_field_list(
    entry: &Entry<'_>,
    ctx: &SyncContext<'_>,
    diags: &mut Diagnostics,
) -> Option<Vec<String>> {
    let list = reader::string_list(entry, "a list of field names", diags)?;
    if list.is_empty() {
        diags.push(
            entry.at(),
            &entry.path,
            "expected at least one field, found an empty list (leave `fields` out to send every field)",
        );
        return None;
    }
    let mut sent: Vec<String> = Vec::new();
    for (name, e) in list {
        if ctx
            .fields
            .resolve(&name, "sync field", e.at(), &e.path, diags)
            .is_none()
        {
            continue;
        }
        if sent.contains(&name) {
            diags.push(e.at(), &e.path, format!("field `{name}` is listed twice"));
        } else {
            sent.push(name);
        }
    }
    if let Some(key) = ctx.key_field {
        if !sent.iter().any(|f| f == key) {
            sent.insert(0, key.to_string());
        }
    }
    Some(sent)
}

fn parse_when(entry: &Entry<'_>, diags: &mut Diagnostics) -> SyncWhen {
    let mut when = SyncWhen::default();
    let Some(map) = MapReader::open(
        entry,
        "sync timing, e.g. `{ on_change: true, min_interval: 10s }`",
        WHEN_KEYS,
        diags,
    ) else {
        return when;
    };
    if let Some(on_change) = map
        .get("on_change")
        .and_then(|e| reader::boolean(&e, diags))
    {
        when.on_change = on_change;
    }
    when.min_interval = map
        .get("min_interval")
        .and_then(|e| reader::duration(&e, diags));
    if let Some(size) = map
        .get("batch_size")
        .and_then(|e| reader::integer(&e, 1, MAX_BATCH, diags))
    {
        when.batch_size = size as usize;
    }
    if let Some(age) = map
        .get("batch_age")
        .and_then(|e| reader::duration(&e, diags))
    {
        when.batch_age = age;
    }
    if !when.on_change && map.get("min_interval").is_none() {
        if let Some(e) = map.get("on_change") {
            diags.push(
                e.at(),
                &e.path,
                "`on_change: false` needs `min_interval`: without it this rule would never send",
            );
        }
    }
    when
}
