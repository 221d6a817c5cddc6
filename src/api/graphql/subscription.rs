//! `<product>Changes(filter)`: every durable change to a product's
//! instances, from the writer's change feed (published only after the
//! durability barrier, so a subscriber never sees what a crash could take
//! back), filtered on the instance's state after the change.
//!
//! A subscriber that falls more than the feed's buffer behind gets one
//! error event saying how many batches it missed (re-query the state to
//! resynchronise) and then continues. Subscriptions end when the client
//! leaves or the node shuts down; a reload does not end them (they keep
//! the schema they started with). Erasures are not in the feed yet.
//!
//! Each change goes through the subscriber's view: the `subscribe` right
//! is checked once, the row filter on every change (on the clear state),
//! and the payload is masked before the subscriber's filter sees it. A
//! subscription made with a token re-checks it (at most once a second, as
//! changes arrive): revoking the token ends the subscription with an
//! `UNAUTHENTICATED` error.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::dynamic::{
    Field, FieldValue, InputValue, Object, SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use async_graphql::{ErrorExtensions, Value as Gql};
use tokio::sync::broadcast::error::RecvError;

use super::budget::{identity_key, ConnectionSlots, SubscriptionSlot};
use super::context::{caller, runtime};
use super::field_errors;
use super::filter::{self, Filter};
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::{getter, ready};
use super::runtime::SubscriptionGuard;
use super::values;
use crate::policy::access::{StillValid, View};
use crate::store::Change;

/// `<Product>Change`.
pub(crate) fn change_object(api: &Arc<ProductApi>) -> Object {
    Object::new(&api.names.change)
        .description(format!("One durable change to a `{}` instance.", api.product.name))
        .field(getter::<Change>("entity", TypeRef::named_nn(TypeRef::STRING), |c| {
            Gql::String(c.entity.clone())
        }))
        .field(
            getter::<Change>("version", TypeRef::named_nn(values::LONG), |c| Gql::from(c.version))
                .description("The instance's version after the change."),
        )
        .field(
            getter::<Change>("created", TypeRef::named_nn(TypeRef::BOOLEAN), |c| {
                Gql::Boolean(c.created)
            })
            .description("The change created the instance."),
        )
        .field(
            getter::<Change>("changed", TypeRef::named_nn_list_nn(TypeRef::STRING), |c| {
                Gql::List(c.changed.iter().cloned().map(Gql::String).collect())
            })
            .description("Fields whose value changed (empty: a repeat, or a late record that only went to history)."),
        )
        .field(
            Field::new("instance", TypeRef::named_nn(&api.names.object), |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<Change>()
                        .map(|c| Some(FieldValue::borrowed_any(c.instance.as_ref()))),
                )
            })
            .description("The state after the change."),
        )
}

/// What one subscription's stream carries between events.
struct Feed {
    changes: tokio::sync::broadcast::Receiver<Arc<crate::store::ChangeEvent>>,
    product: String,
    filter: Option<Filter>,
    view: Arc<View>,
    /// Re-checks the subscriber's token (at most once per
    /// [`REVALIDATE_EVERY`], when a change is due); `None` for callers
    /// whose credential cannot be revoked (anonymous, certificates).
    still_valid: Option<StillValid>,
    validated_at: Instant,
    /// The credential was revoked: the error was sent, the stream ends.
    ended: bool,
    pending: VecDeque<Change>,
    shutdown: tokio_util::sync::CancellationToken,
    _open: SubscriptionGuard,
    /// Counted against the connection's and the caller's caps.
    _slot: SubscriptionSlot,
}

/// `<product>Changes(filter: <Product>Filter): <Product>Change!`.
pub(crate) fn changes_field(api: &Arc<ProductApi>) -> SubscriptionField {
    let handle = api.clone();
    SubscriptionField::new(&api.names.changes, TypeRef::named_nn(&api.names.change), move |ctx| {
        let api = handle.clone();
        SubscriptionFieldFuture::new(async move {
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.subscribe, "subscribe to")?;
            let (slot, still_valid) = open_slot(&ctx)?;
            let filter = match ctx.args.get("filter") {
                Some(value) if !value.is_null() => filter::parse(
                    &api.types,
                    &super::enums::decode_filter(&api.enums, value.as_value()),
                )
                    .map_err(|e| field_errors::bad_argument(format!("`filter`: {e}")))?,
                _ => None,
            };
            runtime
                .metrics
                .subscriptions_started
                .fetch_add(1, Ordering::Relaxed);
            let feed = Feed {
                changes: runtime.store().subscribe_changes(),
                product: api.name().to_string(),
                filter,
                view,
                still_valid,
                validated_at: Instant::now(),
                ended: false,
                pending: VecDeque::new(),
                shutdown: runtime.shutdown.clone(),
                _open: runtime.usage.subscribe(api.name()),
                _slot: slot,
            };
            Ok(futures_util::stream::unfold(feed, next_change))
        })
    })
    .description(format!(
        "Every durable change to `{}` instances matching the filter (on the state after the change).",
        api.product.name
    ))
    .argument(InputValue::new("filter", TypeRef::named(&api.names.filter)))
}

/// How often, at most, a subscription re-checks its token.
const REVALIDATE_EVERY: Duration = Duration::from_secs(1);

/// A subscription slot of the caller (counted against its connection's
/// and its identity's caps) and its token re-check (`None` for callers
/// whose credential cannot be revoked).
pub(super) fn open_slot(
    ctx: &async_graphql::dynamic::ResolverContext<'_>,
) -> async_graphql::Result<(SubscriptionSlot, Option<StillValid>)> {
    let runtime = runtime(ctx)?;
    let caller = caller(ctx)?;
    let connection = ctx
        .ctx
        .data_opt::<Arc<ConnectionSlots>>()
        .cloned()
        .unwrap_or_default();
    let slot = runtime
        .budgets
        .subscription_slot(&identity_key(&caller.identity), &connection)?;
    Ok((slot, caller.still_valid()))
}

/// Re-checks the token (at most once per [`REVALIDATE_EVERY`], called
/// when something is due to be sent): the error that ends the
/// subscription if it was revoked.
pub(super) fn revoked(
    still_valid: &Option<StillValid>,
    validated_at: &mut Instant,
) -> Option<async_graphql::Error> {
    if validated_at.elapsed() < REVALIDATE_EVERY {
        return None;
    }
    *validated_at = Instant::now();
    if still_valid.as_ref().is_some_and(|valid| !valid()) {
        return Some(
            async_graphql::Error::new(
                "the token of this subscription was revoked; reconnect with a valid one",
            )
            .extend_with(|_, e| e.set("code", "UNAUTHENTICATED")),
        );
    }
    None
}

/// The error sent when a subscriber fell more than the change feed's
/// buffer behind.
pub(super) fn lagged(missed: u64, catch_up: &str) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "this subscription fell behind and missed {missed} change batches; {catch_up}"
    ))
    .extend_with(|_, e| e.set("code", "SUBSCRIPTION_LAGGED"))
}

async fn next_change<'a>(mut feed: Feed) -> Option<(async_graphql::Result<FieldValue<'a>>, Feed)> {
    loop {
        if feed.ended {
            return None;
        }
        if !feed.pending.is_empty() {
            if let Some(err) = revoked(&feed.still_valid, &mut feed.validated_at) {
                feed.ended = true;
                feed.pending.clear();
                return Some((Err(err), feed));
            }
        }
        if let Some(change) = feed.pending.pop_front() {
            return Some((Ok(FieldValue::owned_any(change)), feed));
        }
        let received = tokio::select! {
            _ = feed.shutdown.cancelled() => return None,
            received = feed.changes.recv() => received,
        };
        match received {
            Ok(event) if event.product == feed.product => {
                for change in &event.changes {
                    // Row filter on the clear state, then masks, then the
                    // subscriber's own filter on what it may see.
                    if !feed.view.shows_instance(&change.instance) {
                        continue;
                    }
                    let mut change = change.clone();
                    // Copy on write: the feed's state is shared.
                    feed.view
                        .mask_fields(&mut std::sync::Arc::make_mut(&mut change.instance).fields);
                    change.entity = feed.view.entity_key(&change.entity);
                    if feed
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.matches(&change.instance.fields))
                    {
                        feed.pending.push_back(change);
                    }
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                let err = lagged(missed, "query the current state to catch up");
                return Some((Err(err), feed));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}
