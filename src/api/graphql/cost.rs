//! An estimate of how much a query can return, checked before it runs.
//!
//! async-graphql's complexity counts each selected field once, whatever the
//! page size, so `itemConnection(first: 1000) { nodes { history(first:
//! 1000) { ... } } }` would look cheap while asking for a million events.
//! Here every field costs 1 and a paged field (one with `first`/`last`, or
//! a connection, `history`, `audit` or `quarantine` without them, which
//! default to [`DEFAULT_PAGE`]) multiplies the cost of what it selects by
//! its page size. Fragments are expanded (each costed once and memoised,
//! so a fragment bomb stays cheap to estimate; cycles count as 0 here and
//! are refused by validation).
//!
//! A `series` multiplies what it selects by its bucket count (from
//! `since`, `until` — now when left out, as the resolver does — and
//! `every` when given as constants or variables, else the default window
//! or the most a call returns): the cost, not a fixed bucket cap, is
//! what limits a chart. A bucket's `values` costs nothing itself: it
//! only groups the per-field statistics, which are counted, so a 30-day
//! chart in 5-minute buckets of count + min/max/avg (8,641 × 5) fits
//! the limit and the same chart in 1-minute buckets does not.
//!
//! A `<product>Buckets` subscription is costed per event (one closed
//! bucket, its `values` free as in `series`), times the buckets of its
//! backfill when it has `since` (counted as `series` counts them, to
//! now), so a backfill too long to query as a `series` is refused too.
//!
//! The `groups` of an aggregate count as the most groups one may make,
//! Relay's `nodes(ids:)` as its number of ids.
//!
//! Raw payloads count by their size: inside `quarantine`, `payload` and
//! `payloadBase64` cost [`PAYLOAD_COST`] each (a quarantined payload is
//! up to 64 KiB, kept whole), so a page of a thousand payloads is refused
//! before it is read, while a page of their reasons is not.
//!
//! `auditVerified` costs [`AUDIT_VERIFY_COST`] (it reads the entity's
//! whole audit and the history it covers): one entity's is affordable, a
//! page of a hundred is refused.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Field, Selection, SelectionSet};
use async_graphql::{Name, Value, Variables};

use super::limits::{DEFAULT_PAGE, MAX_PAGE};

/// What one raw payload field costs: a quarantined payload is kept up to
/// 64 KiB, i.e. about as many bytes as 64 ordinary values of a KiB.
pub(crate) const PAYLOAD_COST: u64 = 64;

/// What `auditVerified` costs: it reads every audit line of the entity
/// and the history they cover, as much as a page of [`MAX_PAGE`] events.
pub(crate) const AUDIT_VERIFY_COST: u64 = MAX_PAGE as u64;

/// Fields that return a raw payload (inside `quarantine`).
fn is_payload(name: &str) -> bool {
    matches!(name, "payload" | "payloadBase64")
}

/// Paged fields that default to a page of [`DEFAULT_PAGE`].
fn pages_by_default(name: &str) -> bool {
    name.ends_with("Connection") || matches!(name, "history" | "audit" | "quarantine")
}

/// A constant argument of `field`, variables resolved.
fn argument(field: &Field, name: &str, variables: &Variables) -> Option<Value> {
    field
        .arguments
        .iter()
        .find(|(n, _)| n.node.as_str() == name)
        .and_then(|(_, value)| {
            value
                .node
                .clone()
                .into_const_with(|var| variables.get(&var).cloned().ok_or(()))
                .ok()
        })
        .filter(|v| !matches!(v, Value::Null))
}

/// The buckets a `series` field can return: computed from `since`,
/// `until` (now when not given) and `every`, the default window without
/// `since`, else the most a call may return.
fn series_buckets(field: &Field, variables: &Variables) -> u64 {
    use super::series::{DEFAULT_BUCKETS, MAX_BUCKETS};
    let time = |name: &str| match argument(field, name, variables) {
        Some(Value::String(s)) => crate::record::Timestamp::parse_rfc3339(&s)
            .ok()
            .map(|t| t.as_micros()),
        _ => None,
    };
    let every = match argument(field, "every", variables) {
        Some(Value::String(s)) => humantime::parse_duration(s.trim())
            .ok()
            .and_then(|d| i64::try_from(d.as_micros()).ok())
            .filter(|d| *d > 0),
        _ => None,
    };
    let since_given = argument(field, "since", variables).is_some();
    let until_given = argument(field, "until", variables).is_some();
    let until = if until_given {
        time("until")
    } else {
        Some(crate::record::Timestamp::now().as_micros())
    };
    let buckets = match (time("since"), until, every) {
        (Some(since), Some(until), Some(every)) if since < until => {
            u64::try_from((until - since).saturating_add(every - 1) / every + 1)
                .unwrap_or(MAX_BUCKETS)
        }
        _ if !since_given && !until_given => DEFAULT_BUCKETS as u64 + 1,
        _ => MAX_BUCKETS,
    };
    buckets.min(MAX_BUCKETS)
}

/// Whether `field` is a `<product>Buckets` subscription (a root field
/// ending in `Buckets` that takes `every`: no product field takes
/// arguments).
fn is_bucket_feed(field: &Field) -> bool {
    field.name.node.ends_with("Buckets") && field.arguments.iter().any(|(n, _)| n.node == "every")
}

/// The page size a field asks for, 1 for a field that is not paged.
fn page_of(field: &Field, variables: &Variables) -> u64 {
    if is_bucket_feed(field) {
        // Its backfill from `since` to now is a `series`; without it,
        // one bucket per event.
        return match argument(field, "since", variables) {
            Some(_) => series_buckets(field, variables),
            None => 1,
        };
    }
    match field.name.node.as_str() {
        "series" => return series_buckets(field, variables),
        // The groups of a `<product>Aggregate`: as many as it may make.
        "groups" => return super::aggregate::MAX_GROUPS as u64,
        // Relay's `nodes(ids:)`: one instance per id (a connection's
        // `nodes` has no `ids` and costs nothing more than its page).
        "nodes" if field.arguments.iter().any(|(n, _)| n.node == "ids") => {
            let max = super::relay::MAX_IDS as u64;
            return match argument(field, "ids", variables) {
                Some(Value::List(ids)) => (ids.len() as u64).min(max),
                _ => max,
            };
        }
        _ => {}
    }
    let mut page = None;
    for (name, value) in &field.arguments {
        if matches!(name.node.as_str(), "first" | "last") {
            let n = match value
                .node
                .clone()
                .into_const_with(|var| variables.get(&var).cloned().ok_or(()))
            {
                Ok(Value::Number(n)) => n.as_u64(),
                _ => None,
            };
            if let Some(n) = n {
                page = Some(page.unwrap_or(0).max(n));
            }
        }
    }
    match page {
        Some(n) => n.min(MAX_PAGE as u64),
        None if pages_by_default(&field.name.node) => DEFAULT_PAGE as u64,
        None => 1,
    }
}

struct Estimator<'d> {
    doc: &'d ExecutableDocument,
    variables: &'d Variables,
    /// (Fragment, inside `quarantine`, what it is the selection of) →
    /// its cost; `None` while it is being costed (a cycle).
    fragments: HashMap<(&'d Name, bool, Within), Option<u64>>,
}

/// What a selection set selects from, where that changes costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Within {
    Other,
    /// A bucket (of `series`, or of a closed bucket): `values` is free.
    Bucket,
    /// A `<product>Buckets` event: its `bucket` is a bucket.
    BucketClose,
}

impl<'d> Estimator<'d> {
    /// `quarantine`: the set is inside a `quarantine` field, where raw
    /// payloads are selected; `within`: a bucket's set, whose `values`
    /// wrapper is free, or a closed bucket's, whose `bucket` is one.
    fn selection_set(&mut self, set: &'d SelectionSet, quarantine: bool, within: Within) -> u64 {
        let mut cost = 0u64;
        for selection in &set.items {
            let one = match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let name = field.name.node.as_str();
                    let inside = quarantine || name == "quarantine";
                    let inner_within = if name == "series"
                        || (within == Within::BucketClose && name == "bucket")
                    {
                        Within::Bucket
                    } else if is_bucket_feed(field) {
                        Within::BucketClose
                    } else {
                        Within::Other
                    };
                    let inner = self.selection_set(&field.selection_set.node, inside, inner_within);
                    let own = if quarantine && is_payload(name) {
                        PAYLOAD_COST
                    } else if name == "auditVerified" && !quarantine {
                        AUDIT_VERIFY_COST
                    } else if within == Within::Bucket && name == "values" {
                        0
                    } else {
                        1
                    };
                    own.saturating_add(inner.saturating_mul(page_of(field, self.variables)))
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node, quarantine, within)
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(&spread.node.fragment_name.node, quarantine, within)
                }
            };
            cost = cost.saturating_add(one);
        }
        cost
    }

    fn fragment(&mut self, name: &'d Name, quarantine: bool, within: Within) -> u64 {
        match self.fragments.get(&(name, quarantine, within)) {
            Some(Some(cost)) => return *cost,
            Some(None) => return 0,
            None => {}
        }
        let Some(fragment) = self.doc.fragments.get(name) else {
            return 0;
        };
        self.fragments.insert((name, quarantine, within), None);
        let cost = self.selection_set(&fragment.node.selection_set.node, quarantine, within);
        self.fragments
            .insert((name, quarantine, within), Some(cost));
        cost
    }
}

/// The estimated cost of the costliest operation of `doc`.
pub(crate) fn estimate(doc: &ExecutableDocument, variables: &Variables) -> u64 {
    let mut estimator = Estimator {
        doc,
        variables,
        fragments: HashMap::new(),
    };
    doc.operations
        .iter()
        .map(|(_, op)| estimator.selection_set(&op.node.selection_set.node, false, Within::Other))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(query: &str) -> u64 {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        estimate(&doc, &Variables::default())
    }

    #[test]
    fn pages_multiply_what_they_select() {
        assert_eq!(cost("{ products { name owner } }"), 3);
        assert_eq!(
            cost("{ itemConnection(first: 10) { nodes { id } } }"),
            1 + 10 * 2
        );
        assert_eq!(cost("{ itemConnection { nodes { id } } }"), 1 + 100 * 2);
        assert_eq!(
            cost("{ itemConnection(first: 1000) { nodes { history(first: 1000) { nodes { version } } } } }"),
            1 + 1000 * (1 + (1 + 1000 * 2))
        );
        let doc = async_graphql::parser::parse_query(
            "query($n: Int) { itemConnection(last: $n) { nodes { id } } }",
        )
        .expect("parses");
        let vars = Variables::from_json(serde_json::json!({ "n": 7 }));
        assert_eq!(estimate(&doc, &vars), 1 + 7 * 2);
    }

    #[test]
    fn series_cost_their_bucket_count() {
        // 1 h in 5 min buckets: at most 13 buckets (an unaligned window
        // touches one more), each costing its 1 + 2 selected fields.
        assert_eq!(
            cost(
                r#"{ m(id: "a") { series(since: "2024-01-01T00:00:00Z", until: "2024-01-01T01:00:00Z", every: "5m") { count temp { avg } } } }"#
            ),
            1 + 1 + 13 * 3
        );
        assert_eq!(
            cost(r#"{ m(id: "a") { series(every: "1m") { count } } }"#),
            2 + 101
        );
        // Without `until` the window ends now: years of 1 s buckets.
        assert!(
            cost(
                r#"{ m(id: "a") { series(since: "2024-01-01T00:00:00Z", every: "1s") { count } } }"#
            ) > super::super::limits::MAX_COST
        );
        // A 30-day chart in 5-minute buckets of count + min/max/avg fits
        // the limit (the bucket's `values` wrapper is free, directly and
        // through a fragment); in 1-minute buckets it does not.
        let month = |every: &str| {
            cost(&format!(
                r#"{{ m(id: "a") {{ series(since: "2024-01-01T00:00:00Z", until: "2024-01-31T00:00:00Z", every: "{every}") {{ count values {{ temp {{ min max avg }} }} }} }} }}"#
            ))
        };
        assert_eq!(month("5m"), 2 + 8_641 * 5);
        assert!(month("5m") <= super::super::limits::MAX_COST);
        assert!(month("1m") > super::super::limits::MAX_COST);
        assert_eq!(
            cost(
                r#"{ m(id: "a") { series(since: "2024-01-01T00:00:00Z", until: "2024-01-31T00:00:00Z", every: "5m") { ...B } } } fragment B on MBucket { count values { temp { min max avg } } }"#
            ),
            2 + 8_641 * 5
        );
        // Only a bucket's `values` is free: an event's still costs 1.
        assert_eq!(
            cost(r#"{ m(id: "a") { history(first: 10) { nodes { values { temp } } } } }"#),
            1 + (1 + 10 * (1 + (1 + 1)))
        );
        assert!(
            cost(
                r#"{ mConnection(first: 100) { nodes { series(every: "1s", since: "2024-01-01T00:00:00Z") { count temp { min max } } } } }"#
            ) > super::super::limits::MAX_COST
        );
    }

    #[test]
    fn bucket_feeds_cost_one_bucket_or_their_backfill() {
        let select = "{ entity revision bucket { start count values { temp { min max avg } } } }";
        assert_eq!(
            cost(&format!(
                r#"subscription {{ mBuckets(id: "a", every: "5m") {select} }}"#
            )),
            1 + (2 + (1 + (2 + (1 + 3)))),
            "one bucket, `values` free"
        );
        assert_eq!(
            cost(&format!(
                r#"subscription {{ mBuckets(id: "a", every: "5m", since: "2024-01-01T00:00:00Z") {select} }}"#
            )),
            1 + 9 * MAX_BUCKETS_FOR_TEST,
            "a backfill of years, as many buckets as a call may return"
        );
        let far = (crate::record::Timestamp::now().as_micros() - 3_600_000_000) / 1_000_000;
        let since = crate::record::Timestamp(far * 1_000_000)
            .to_rfc3339()
            .expect("formats");
        let hour = cost(&format!(
            r#"subscription {{ mBuckets(id: "a", every: "5m", since: "{since}") {{ revision }} }}"#
        ));
        assert!(
            (1 + 13..=1 + 14).contains(&hour),
            "an hour back in 5m buckets: {hour}"
        );
        // A product field called `fooBuckets` takes no `every`: a value.
        assert_eq!(cost("{ m(id: \"a\") { fooBuckets } }"), 2);
    }

    const MAX_BUCKETS_FOR_TEST: u64 = super::super::series::MAX_BUCKETS;

    #[test]
    fn relay_nodes_cost_their_ids() {
        assert_eq!(
            cost(r#"{ nodes(ids: ["a", "b"]) { id } }"#),
            1 + 2,
            "two ids, one field each"
        );
        assert_eq!(
            cost(
                r#"query($ids: [ID!]!) { nodes(ids: $ids) { ... on S { history(first: 1000) { nodes { version } } } } }"#
            ),
            1 + 100 * (1 + 1000 * 2),
            "unknown ids: the most a call takes"
        );
        // A connection's `nodes` is not Relay's.
        assert_eq!(
            cost("{ itemConnection(first: 10) { nodes { id } } }"),
            1 + 10 * 2
        );
    }

    #[test]
    fn aggregate_groups_cost_the_most_groups() {
        assert_eq!(
            cost("{ mAggregate(groupBy: [site]) { groups { key { site } count avg { temp } } } }"),
            1 + 1 + 1_000 * (2 + 1 + 2)
        );
    }

    #[test]
    fn raw_payloads_cost_their_size_inside_the_quarantine_only() {
        let page = "quarantine(product: \"p\", first: 1000) { edges { node { reasons payload } } }";
        assert_eq!(
            cost(&format!("{{ {page} }}")),
            1 + 1000 * (1 + (1 + 1 + PAYLOAD_COST))
        );
        assert!(cost(&format!("{{ {page} }}")) > super::super::limits::MAX_COST);
        assert_eq!(
            cost("{ quarantine(product: \"p\", first: 1000) { edges { node { reasons } } } }"),
            1 + 1000 * (1 + (1 + 1))
        );
        // A product field that happens to be called `payload` is a value.
        assert_eq!(
            cost("{ itemConnection(first: 10) { nodes { payload } } }"),
            1 + 10 * 2
        );
        assert_eq!(
            cost("{ quarantine(product: \"p\", first: 10) { ...E } } fragment E on QuarantineConnection { edges { node { payloadBase64 } } }"),
            1 + 10 * (1 + (1 + PAYLOAD_COST))
        );
    }

    #[test]
    fn audit_verification_costs_a_full_page() {
        assert_eq!(
            cost("{ item(id: 1) { auditVerified { ok } } }"),
            1 + (AUDIT_VERIFY_COST + 1)
        );
        assert!(
            cost("{ itemConnection(first: 100) { nodes { auditVerified { ok } } } }")
                > super::super::limits::MAX_COST
        );
    }

    #[test]
    fn fragments_are_costed_once_and_cycles_end() {
        let mut query = String::from("{ ...F0 }");
        for i in 0..40 {
            query.push_str(&format!(
                " fragment F{i} on Query {{ a: x {{ ...F{} }} b: x {{ ...F{} }} }}",
                i + 1,
                i + 1
            ));
        }
        query.push_str(" fragment F40 on Query { y }");
        assert!(
            cost(&query) > 1 << 40,
            "2^40 fields, estimated without walking them"
        );
        assert_eq!(cost("{ ...A } fragment A on Query { x { ...A } }"), 1);
    }
}
