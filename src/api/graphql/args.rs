//! Optional arguments of root fields and connections, read with errors
//! that name the argument: integers, strings, `DateTime`s, page sizes
//! (bounded by [`limits::MAX_PAGE`]).

use async_graphql::dynamic::ResolverContext;
use async_graphql::ErrorExtensions;

use super::{field_errors, limits};
use crate::record::Timestamp;

/// An optional integer argument; explicit `null` counts as absent.
pub(crate) fn opt_i64(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<Option<i64>> {
    match ctx.args.get(name) {
        Some(value) if !value.is_null() => Ok(Some(value.i64()?)),
        _ => Ok(None),
    }
}

pub(crate) fn opt_string(
    ctx: &ResolverContext<'_>,
    name: &str,
) -> async_graphql::Result<Option<String>> {
    match ctx.args.get(name) {
        Some(value) if !value.is_null() => Ok(Some(value.string()?.to_string())),
        _ => Ok(None),
    }
}

/// An optional `DateTime` argument.
pub(crate) fn opt_time(
    ctx: &ResolverContext<'_>,
    name: &str,
) -> async_graphql::Result<Option<Timestamp>> {
    opt_string(ctx, name)?
        .map(|text| {
            Timestamp::parse_rfc3339(&text)
                .map_err(|e| field_errors::bad_argument(format!("`{name}`: {e}")))
        })
        .transpose()
}

/// A page size argument, checked against [`limits::MAX_PAGE`].
pub(crate) fn page_size(
    ctx: &ResolverContext<'_>,
    name: &str,
) -> async_graphql::Result<Option<usize>> {
    match opt_i64(ctx, name)? {
        None => Ok(None),
        Some(n) if n < 0 => Err(field_errors::bad_argument(format!(
            "`{name}` must not be negative"
        ))),
        Some(n) if n as u64 > limits::MAX_PAGE as u64 => {
            let mut err = async_graphql::Error::new(format!(
                "`{name}` is {n}; at most {} items are returned per page: page with cursors",
                limits::MAX_PAGE
            ));
            err = err.extend_with(|_, e| e.set("code", "PAGE_TOO_LARGE"));
            Err(err)
        }
        Some(n) => Ok(Some(n as usize)),
    }
}
