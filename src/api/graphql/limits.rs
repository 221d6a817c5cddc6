//! Limits every GraphQL request is held to, on by default, over HTTP and
//! WebSocket alike (they are checked in an async-graphql extension, which
//! both transports run):
//!
//! | what | limit | checked |
//! |---|---|---|
//! | HTTP body | [`MAX_BODY_BYTES`] | before reading further (413) |
//! | query text | [`MAX_QUERY_BYTES`] | before parsing |
//! | bracket nesting in the text | [`MAX_NESTING`] | before parsing (the parser recurses) |
//! | field selections | [`MAX_SELECTIONS`] | after parsing, before validation (whose overlap check is quadratic) |
//! | aliases | [`MAX_ALIASES`] | after parsing |
//! | selection depth | [`MAX_DEPTH`] | validation |
//! | complexity (fields, fragments expanded) | [`MAX_COMPLEXITY`] | validation |
//! | cost (fields × page sizes, see `cost.rs`) | [`MAX_COST`] | after parsing |
//! | `first` / `last` | [`MAX_PAGE`] | in the resolver |
//! | batching | off | HTTP: a JSON array is refused |
//! | raw payload bytes read, response bytes | `api.max_response_bytes` | in the resolver, after execution (`budget.rs`) |
//! | queries at once per identity | `api.max_concurrent_queries` | before execution, HTTP and WebSocket (`budget.rs`) |
//!
//! Each refusal is a GraphQL error whose message names the limit and whose
//! `extensions.code` says which one, so clients can tell them apart.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};

use super::budget::{identity_key, ConnectionSlots};
use super::parse_cache::ParseCache;
use super::runtime::Runtime;
use crate::policy::access::Caller;

pub(crate) const MAX_BODY_BYTES: usize = 256 * 1024;
pub(crate) const MAX_QUERY_BYTES: usize = 64 * 1024;
pub(crate) const MAX_NESTING: usize = 64;
pub(crate) const MAX_SELECTIONS: usize = 2_000;
pub(crate) const MAX_ALIASES: usize = 50;
pub(crate) const MAX_DEPTH: usize = 20;
pub(crate) const MAX_COMPLEXITY: usize = 1_000;
pub(crate) const MAX_PAGE: usize = 1_000;
/// Estimated values one query may ask for (page sizes multiplied through
/// nested lists): a full page of 1000 instances with a few fields each
/// fits, a page of instances each with a page of history does not.
pub(crate) const MAX_COST: u64 = 50_000;
/// `first` when neither `first` nor `last` is given.
pub(crate) const DEFAULT_PAGE: usize = 100;

/// A GraphQL error with `extensions.code`.
pub(crate) fn error(code: &str, message: impl Into<String>) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    err.extensions = Some(extensions);
    err
}

/// Deepest nesting of `{[(` in a query text, outside strings and comments.
pub(crate) fn nesting(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// Field selections and aliases written in a document (fragments counted
/// once, where they are defined).
pub(crate) fn selections_and_aliases(doc: &ExecutableDocument) -> (usize, usize) {
    fn walk(set: &SelectionSet, counts: &mut (usize, usize)) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    counts.0 += 1;
                    if field.node.alias.is_some() {
                        counts.1 += 1;
                    }
                    walk(&field.node.selection_set.node, counts);
                }
                Selection::InlineFragment(fragment) => {
                    walk(&fragment.node.selection_set.node, counts)
                }
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    let mut counts = (0, 0);
    for (_, operation) in doc.operations.iter() {
        walk(&operation.node.selection_set.node, &mut counts);
    }
    for fragment in doc.fragments.values() {
        walk(&fragment.node.selection_set.node, &mut counts);
    }
    counts
}

/// Checks the query text before it is parsed: size and nesting.
pub(crate) fn check_text(query: &str) -> Result<(), ServerError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(error(
            "QUERY_TOO_LARGE",
            format!(
                "the query is {} bytes; at most {MAX_QUERY_BYTES} are accepted",
                query.len()
            ),
        ));
    }
    let nested = nesting(query);
    if nested > MAX_NESTING {
        return Err(error(
            "QUERY_TOO_DEEP",
            format!(
                "the query nests brackets {nested} levels deep; at most {MAX_NESTING} are accepted"
            ),
        ));
    }
    Ok(())
}

/// Checks a parsed document: selections, aliases and cost.
pub(crate) fn check_document(
    doc: &ExecutableDocument,
    variables: &Variables,
) -> Result<(), ServerError> {
    let (selections, aliases) = selections_and_aliases(doc);
    if selections > MAX_SELECTIONS {
        return Err(error(
            "TOO_MANY_FIELDS",
            format!("the query selects {selections} fields; at most {MAX_SELECTIONS} are accepted"),
        ));
    }
    if aliases > MAX_ALIASES {
        return Err(error(
            "TOO_MANY_ALIASES",
            format!("the query uses {aliases} aliases; at most {MAX_ALIASES} are accepted"),
        ));
    }
    let cost = super::cost::estimate(doc, variables);
    if cost > MAX_COST {
        return Err(error(
            "QUERY_TOO_COSTLY",
            format!("the query may return about {cost} values (fields multiplied by the page sizes of the lists around them); at most {MAX_COST} are accepted: ask for smaller pages (`first`/`last`) or fewer nested lists"),
        ));
    }
    Ok(())
}

/// The extension that applies the limits, times requests, and keeps
/// parsed documents (see `parse_cache.rs`).
#[derive(Default)]
pub(crate) struct Limits {
    parsed: Arc<ParseCache>,
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension {
            parsed: Arc::clone(&self.parsed),
            slot: Mutex::new(None),
        })
    }
}

/// One per request (async-graphql creates extensions per request).
struct LimitsExtension {
    parsed: Arc<ParseCache>,
    /// The caller's query slot of a query or mutation sent over the
    /// WebSocket, held until the request (and so this extension) ends.
    /// Over HTTP the handler holds the slot (see `budget.rs`).
    slot: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl LimitsExtension {
    /// A query or mutation over a WebSocket takes a query slot of its
    /// caller like one over HTTP: the socket is no way around the budget.
    async fn take_slot_on_websocket(
        &self,
        ctx: &ExtensionContext<'_>,
        doc: &ExecutableDocument,
    ) -> Result<(), ServerError> {
        let over_websocket = ctx.data_opt::<Arc<ConnectionSlots>>().is_some();
        let runs_now = doc
            .operations
            .iter()
            .any(|(_, op)| op.node.ty != OperationType::Subscription);
        if !over_websocket || !runs_now {
            return Ok(());
        }
        let (Some(runtime), Some(caller)) = (ctx.data_opt::<Runtime>(), ctx.data_opt::<Caller>())
        else {
            return Ok(());
        };
        let budgets = &runtime.budgets;
        match budgets.query_slot(&identity_key(&caller.identity)).await {
            Some(permit) => {
                *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
                Ok(())
            }
            None => Err(error(
                "TOO_MANY_CONCURRENT_QUERIES",
                format!(
                    "this caller already runs {} queries (api.max_concurrent_queries) and none ended within {:?} (api.queue_timeout); retry when one has ended",
                    budgets.limits().concurrent_queries(),
                    budgets.limits().queue_timeout
                ),
            )),
        }
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for LimitsExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        if let Some(runtime) = ctx.data_opt::<Runtime>() {
            runtime
                .metrics
                .request(started.elapsed(), response.errors.is_empty());
        }
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        check_text(query)?;
        let doc = match self.parsed.get(query) {
            Some(doc) => doc,
            None => {
                let doc = next.run(ctx, query, variables).await?;
                self.parsed.insert(query, &doc);
                doc
            }
        };
        check_document(&doc, variables)?;
        self.take_slot_on_websocket(ctx, &doc).await?;
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|err| match err.message.as_str() {
                    "Query is nested too deep." => error(
                        "QUERY_TOO_DEEP",
                        format!("the query selects fields more than {MAX_DEPTH} levels deep"),
                    ),
                    "Query is too complex." => error(
                        "QUERY_TOO_COMPLEX",
                        format!("the query is more complex than {MAX_COMPLEXITY} (one per field selected, fragments expanded)"),
                    ),
                    _ => err,
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_ignores_strings_and_comments() {
        assert_eq!(nesting("{ a { b } }"), 2);
        assert_eq!(nesting(r#"{ a(x: "{{{{") { b { c } } } # {{{{{"#), 3);
        assert_eq!(nesting("{ a(x: \"\"\"{{{ \\\"\"\" {{\"\"\") }"), 2);
        let bomb = "{a".repeat(10_000) + &"}".repeat(10_000);
        assert_eq!(nesting(&bomb), 10_000);
        assert!(check_text(&bomb).is_err());
    }

    #[test]
    fn aliases_and_selections_are_counted() {
        let query = format!(
            "{{ {} }} fragment F on Query {{ x: a }}",
            (0..60)
                .map(|i| format!("a{i}: a"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let doc = async_graphql::parser::parse_query(&query).expect("parses");
        assert_eq!(selections_and_aliases(&doc), (61, 61));
        let err = check_document(&doc, &Variables::default()).expect_err("too many aliases");
        assert!(err.message.contains("61 aliases"), "{}", err.message);
    }
}
