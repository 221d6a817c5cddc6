//! Where GraphQL applies policy: every resolver takes the caller's
//! [`view`] of its product and goes through it (rights, row filter, masks)
//! before anything leaves; [`require`] refuses an action the view does not
//! allow. The rules themselves are `crate::policy::access`'s.

use std::sync::Arc;

use async_graphql::dynamic::ResolverContext;
use async_graphql::ErrorExtensions;

use super::context::caller;
use super::product_api::ProductApi;
use crate::policy::access::View;

/// The caller's view of `api`'s product (built once per request).
pub(crate) fn view(
    ctx: &ResolverContext<'_>,
    api: &ProductApi,
) -> async_graphql::Result<Arc<View>> {
    Ok(caller(ctx)?.view(&api.product))
}

/// Refuses an action the view does not allow: a `FORBIDDEN` error that
/// names the role, the product and the action, and nothing of the data.
pub(crate) fn require(
    ctx: &ResolverContext<'_>,
    view: &View,
    allowed: bool,
    action: &str,
) -> async_graphql::Result<()> {
    if allowed {
        return Ok(());
    }
    if let Ok(caller) = caller(ctx) {
        caller.denied();
    }
    Err(async_graphql::Error::new(format!(
        "role `{}` may not {action} product `{}`",
        view.role, view.product
    ))
    .extend_with(|_, e| e.set("code", "FORBIDDEN")))
}
