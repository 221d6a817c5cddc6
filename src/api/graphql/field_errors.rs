//! Field errors as the GraphQL spec has them (§6.4.4 "Handling Field
//! Errors"): every error raised while resolving a field carries the
//! field's `path` and an `extensions.code`, and the field's value becomes
//! `null` — the field itself when it is nullable, else its nearest nullable
//! ancestor (the whole `data` when there is none).
//!
//! Why here: async-graphql 7.2's dynamic schema does neither. Its
//! `collect_field` turns a resolver's `Err` into a server error without a
//! path, and its container leaves a failed field out of the object
//! altogether, nullable or not (`dynamic/resolve.rs`,
//! `resolver_utils/container.rs`), so `data` no longer matched the
//! selection and clients with `errorPolicy: 'all'` (Apollo, Relay) broke.
//! Rather than patch the crate, this extension sits in its `resolve` hook,
//! which wraps every field (resolver and sub-selection) in queries,
//! mutations and subscription events alike:
//!
//! - a field whose resolution fails gets its path and, when it has none,
//!   the code [`INTERNAL`]; the error is held back and the field answers
//!   `null`, so the container keeps the key;
//! - when the field is non-null, its position is noted as *failed*. The
//!   hook also wraps every list item, and a hook completes after those of
//!   its children: one that finds a failed position right under it (a
//!   field of its object, an item of its list) answers `null` itself, and
//!   is failed in turn when it is non-null — so the null climbs to the
//!   nearest nullable field or list item, as the spec says;
//! - the `execute` hook (once per operation, once per subscription event)
//!   appends the held-back errors and sets `data` to `null` when a
//!   non-null root field failed.
//!
//! It also gives lists of objects the `null` items the engine cannot hold
//! ([`null_item`]; Relay's `nodes(ids:)` needs them).
//!
//! Each is counted in `meshlet_graphql_field_errors_total{code}`.
//!
//! Errors from the engine itself (a nested field the hook already handled,
//! validation) keep their own shape. The cost when nothing fails is one
//! atomic load per field.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, NextSubscribe,
    ResolveInfo,
};
use async_graphql::{
    ErrorExtensionValues, PathSegment, Response, ServerError, ServerResult, Value,
};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::runtime::Runtime;

/// `extensions.code` of a field error that did not say what it is.
pub(crate) const INTERNAL: &str = "INTERNAL_SERVER_ERROR";
/// `extensions.code` of an argument the resolver cannot use.
pub(crate) const BAD_ARGUMENT: &str = "BAD_ARGUMENT";

/// A resolver error for an argument value it cannot use (`BAD_ARGUMENT`).
pub(crate) fn bad_argument(message: impl Into<String>) -> async_graphql::Error {
    with_code(async_graphql::Error::new(message), BAD_ARGUMENT)
}

/// `err` with `extensions.code` set to `code`.
pub(crate) fn with_code(mut err: async_graphql::Error, code: &str) -> async_graphql::Error {
    err.extensions
        .get_or_insert_with(ErrorExtensionValues::default)
        .set("code", code);
    err
}

/// A `null` item in a list of objects or interfaces, which async-graphql
/// 7.2's dynamic schema cannot hold (it resolves every item as the named
/// type): the item is made of a type name no schema has, the engine
/// fails it naming that type, and the hook answers the `null` it stands
/// for — without an error — when the item may be null.
pub(crate) fn null_item<'a>() -> async_graphql::dynamic::FieldValue<'a> {
    async_graphql::dynamic::FieldValue::NULL.with_type(NULL_ITEM)
}

/// Not a GraphQL name (`#`), so no type of any schema has it.
const NULL_ITEM: &str = "#null";
/// How async-graphql 7.2 fails an item of that type in a list of an
/// interface (no message of ours starts so, whatever a caller sent).
const NULL_ITEM_MESSAGE: &str = "internal: object \"#null\" does not implement interface";

/// The extension (registered on every schema generation).
#[derive(Default)]
pub(crate) struct FieldErrors;

impl ExtensionFactory for FieldErrors {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(FieldErrorsExtension::default())
    }
}

/// One per request (or subscription): what its fields' failures left.
#[derive(Default)]
struct FieldErrorsExtension {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// `failed.len()`, read on every field without taking the lock.
    failures: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Errors held back from the engine (which would drop the field).
    errors: Vec<ServerError>,
    /// Non-null positions that are `null` now; the enclosing field's hook
    /// takes them up.
    failed: Vec<Vec<PathSegment>>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts what the fields of one execution left into its response: the
    /// held-back errors, and `data: null` when a non-null root field failed.
    fn settle(&self, mut response: Response) -> Response {
        if self.failures.load(Ordering::Acquire) == 0 && self.state().errors.is_empty() {
            return response;
        }
        let mut state = self.state();
        if state.failed.iter().any(|path| path.len() == 1) {
            response.data = Value::Null;
        }
        state.failed.clear();
        self.failures.store(0, Ordering::Release);
        response.errors.append(&mut state.errors);
        response
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for FieldErrorsExtension {
    /// Queries and mutations over HTTP, and each subscription event.
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = next.run(ctx, operation_name).await;
        self.shared.settle(response)
    }

    /// Over the WebSocket a query or mutation runs without the `execute`
    /// hook: its one response passes here. (Subscription events were
    /// settled by `execute` already; this finds nothing left for them.)
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let shared = Arc::clone(&self.shared);
        next.run(ctx, stream)
            .map(move |response| shared.settle(response))
            .boxed()
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let nullable = !info.return_type.trim_end().ends_with('!');
        let node = info.path_node;
        match next.run(ctx, info).await {
            Ok(value) => {
                if self.shared.failures.load(Ordering::Acquire) == 0 {
                    return Ok(value);
                }
                let path = path_of(node);
                let mut state = self.shared.state();
                let before = state.failed.len();
                state.failed.retain(|failed| !is_child(failed, &path));
                if state.failed.len() == before {
                    return Ok(value);
                }
                // A non-null child (field, or list item) is null: so is
                // this value; and when it may not be, its parent's.
                if !nullable {
                    state.failed.push(path);
                }
                self.shared
                    .failures
                    .store(state.failed.len(), Ordering::Release);
                Ok(None)
            }
            // A null item (`null_item`), not a failure: the engine's own
            // message about the marker type, on a list item.
            Err(err)
                if nullable
                    && matches!(node.segment, async_graphql::QueryPathSegment::Index(_))
                    && err.message.starts_with(NULL_ITEM_MESSAGE) =>
            {
                Ok(None)
            }
            Err(mut err) => {
                let path = path_of(node);
                if err.path.is_empty() {
                    err.path = path.clone();
                }
                let extensions = err.extensions.get_or_insert_with(Default::default);
                if extensions.get("code").is_none() {
                    extensions.set("code", INTERNAL);
                }
                if let Some(runtime) = ctx.data_opt::<Runtime>() {
                    let code = match extensions.get("code") {
                        Some(Value::String(code)) => code.as_str(),
                        _ => "other",
                    };
                    runtime.metrics.field_error(code);
                }
                let mut state = self.shared.state();
                state.errors.push(err);
                if !nullable {
                    state.failed.push(path);
                    self.shared
                        .failures
                        .store(state.failed.len(), Ordering::Release);
                }
                Ok(None)
            }
        }
    }
}

/// The path of the field `info` resolves.
fn path_of(node: &async_graphql::QueryPathNode<'_>) -> Vec<PathSegment> {
    let mut path: Vec<PathSegment> = std::iter::once(node)
        .chain(node.parents())
        .map(|n| match n.segment {
            async_graphql::QueryPathSegment::Index(i) => PathSegment::Index(i),
            async_graphql::QueryPathSegment::Name(name) => PathSegment::Field(name.to_string()),
        })
        .collect();
    path.reverse();
    path
}

/// `failed` is right under `path`: one of its fields, or one of its items.
fn is_child(failed: &[PathSegment], path: &[PathSegment]) -> bool {
    failed.len() == path.len() + 1 && failed.starts_with(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> PathSegment {
        PathSegment::Field(name.to_string())
    }

    #[test]
    fn only_direct_children_are_taken_up() {
        let sensor = [f("sensor")];
        assert!(is_child(&[f("sensor"), f("history")], &sensor));
        assert!(is_child(&[f("sensor"), PathSegment::Index(3)], &sensor));
        assert!(!is_child(&[f("sensor"), f("a"), f("b")], &sensor));
        assert!(!is_child(&[f("other"), f("history")], &sensor));
        assert!(!is_child(&[f("sensor")], &sensor));
    }
}
