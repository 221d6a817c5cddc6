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

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Field, Selection, SelectionSet};
use async_graphql::{Name, Value, Variables};

use super::limits::{DEFAULT_PAGE, MAX_PAGE};

/// Paged fields that default to a page of [`DEFAULT_PAGE`].
fn pages_by_default(name: &str) -> bool {
    name.ends_with("Connection") || matches!(name, "history" | "audit" | "quarantine")
}

/// The page size a field asks for, 1 for a field that is not paged.
fn page_of(field: &Field, variables: &Variables) -> u64 {
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
    /// Fragment → its cost; `None` while it is being costed (a cycle).
    fragments: HashMap<&'d Name, Option<u64>>,
}

impl<'d> Estimator<'d> {
    fn selection_set(&mut self, set: &'d SelectionSet) -> u64 {
        let mut cost = 0u64;
        for selection in &set.items {
            let one = match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let inner = self.selection_set(&field.selection_set.node);
                    1u64.saturating_add(inner.saturating_mul(page_of(field, self.variables)))
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node)
                }
                Selection::FragmentSpread(spread) => self.fragment(&spread.node.fragment_name.node),
            };
            cost = cost.saturating_add(one);
        }
        cost
    }

    fn fragment(&mut self, name: &'d Name) -> u64 {
        match self.fragments.get(name) {
            Some(Some(cost)) => return *cost,
            Some(None) => return 0,
            None => {}
        }
        let Some(fragment) = self.doc.fragments.get(name) else {
            return 0;
        };
        self.fragments.insert(name, None);
        let cost = self.selection_set(&fragment.node.selection_set.node);
        self.fragments.insert(name, Some(cost));
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
        .map(|(_, op)| estimator.selection_set(&op.node.selection_set.node))
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
