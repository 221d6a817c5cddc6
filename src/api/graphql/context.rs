//! What a resolver looks up in its request: the node's services
//! ([`runtime`]) and the authenticated caller ([`caller`]). The HTTP layer
//! puts both into each request's data.

use async_graphql::dynamic::ResolverContext;
use async_graphql::ErrorExtensions;

use super::runtime::Runtime;
use crate::policy::access::Caller;

/// The node's services, or an error when the schema was built only to be
/// printed.
pub(crate) fn runtime<'a>(ctx: &ResolverContext<'a>) -> async_graphql::Result<&'a Runtime> {
    ctx.ctx.data_opt::<Runtime>().ok_or_else(|| {
        async_graphql::Error::new("this schema was built to be printed; it serves no data")
    })
}

/// The request's authenticated caller.
pub(crate) fn caller<'a>(ctx: &ResolverContext<'a>) -> async_graphql::Result<&'a Caller> {
    ctx.ctx.data_opt::<Caller>().ok_or_else(|| {
        async_graphql::Error::new("no authenticated caller")
            .extend_with(|_, e| e.set("code", "UNAUTHENTICATED"))
    })
}
