//! Resolver plumbing shared by every part of the schema: blocking store
//! work off the async runtime, ready field futures, getters on a parent
//! value, and GraphQL `null` as "no value".

use async_graphql::dynamic::{Field, FieldFuture, FieldValue, TypeRef};
use async_graphql::Value as Gql;

/// Runs blocking store work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> async_graphql::Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(async_graphql::Error::new(message)),
        Err(join) => Err(async_graphql::Error::new(format!(
            "internal error while reading the store: {join}"
        ))),
    }
}

/// A resolver result as a field future without an async block.
pub(crate) fn ready<'a>(result: async_graphql::Result<Option<FieldValue<'a>>>) -> FieldFuture<'a> {
    match result {
        Ok(value) => FieldFuture::Value(value),
        Err(err) => FieldFuture::new(async move { Err::<Option<FieldValue<'a>>, _>(err) }),
    }
}

/// A field that reads one value off a parent of type `T`.
pub(crate) fn getter<T: std::any::Any + Send + Sync>(
    name: &str,
    ty: TypeRef,
    get: impl Fn(&T) -> Gql + Send + Sync + 'static,
) -> Field {
    Field::new(name, ty, move |ctx| {
        ready(
            ctx.parent_value
                .try_downcast_ref::<T>()
                .map(|parent| non_null(get(parent))),
        )
    })
}

/// A value as a field result: GraphQL `null` is "no value" (custom
/// scalars do not accept a null value).
pub(crate) fn non_null<'a>(value: Gql) -> Option<FieldValue<'a>> {
    match value {
        Gql::Null => None,
        value => Some(FieldValue::value(value)),
    }
}
