//! Relay's Global Object Identification: the `Node` interface, which
//! every product's instance type implements with a global `id: ID!`, and
//! the root fields `node(id:)` and `nodes(ids:)` that refetch instances
//! by it (what Relay's refetch containers and normalized caches need).
//!
//! A global id is `<Type>:<entity key>` (`Sensor:s1`) in URL-safe base64
//! without padding — opaque to clients, stable across restarts and
//! reloads as long as the product keeps its name. The key in it is the
//! key as the caller's role sees it: a role whose mask hides the key gets
//! an id made of the pseudonym (nothing leaks), which `node` then does
//! not find, exactly as a lookup by that pseudonym does not.
//!
//! `node(id:)` is the product's lookup (`<product>(key:)`) behind a
//! global id, with the same policy: a role without the read right gets
//! `FORBIDDEN`, an entity that does not exist or that the row filter
//! hides is `null`. An id that is not one of ours is `BAD_ARGUMENT`.
//! `nodes(ids:)` takes at most [`MAX_IDS`] ids and answers one entry per
//! id, in order.
//!
//! A product with a field named `id` of its own keeps it: its instance
//! type does not implement `Node` (the field cannot be both), and ids of
//! it are never made.
//!
//! `Query.nodes` was the aggregator's list of edges before; that list is
//! `syncNodes` now (`sync_status.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputValue, Interface, InterfaceField, ResolverContext, TypeRef,
};
use async_graphql::Value as Gql;
use base64::Engine;

use super::connection::lookup_visible;
use super::context::runtime;
use super::field_errors::{bad_argument, null_item};
use super::instance::field_output;
use super::policy::{require, view};
use super::product_api::ProductApi;
use crate::store::Instance;

/// The interface's name.
pub(crate) const NODE: &str = "Node";
/// Ids one `nodes(ids:)` call takes at most.
pub(crate) const MAX_IDS: usize = 100;

/// Whether instances of `api`'s product are `Node`s.
pub(crate) fn is_node(api: &ProductApi) -> bool {
    !api.product.fields.contains_key("id")
}

/// The `Node` interface.
pub(crate) fn interface() -> Interface {
    Interface::new(NODE)
        .description("An object with a global id, refetched with `node(id:)` (Relay).")
        .field(InterfaceField::new("id", TypeRef::named_nn(TypeRef::ID)))
}

/// The global id of an entity of the type `object` whose key reads `key`.
pub(crate) fn global_id(object: &str, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{object}:{key}"))
}

/// `(type, key)` of a global id; `None` when it is not one.
pub(crate) fn parse_global_id(id: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (object, key) = text.split_once(':')?;
    Some((object.to_string(), key.to_string()))
}

/// The `id` field of `api`'s instance type.
pub(crate) fn id_field(api: &Arc<ProductApi>) -> Field {
    let object = api.names.object.clone();
    let key = api.product.key.clone();
    let key_type = api.product.key_field().ty;
    Field::new("id", TypeRef::named_nn(TypeRef::ID), move |ctx| {
        let id = ctx.parent_value.try_downcast_ref::<Instance>().map(|i| {
            let key = match field_output(i, &key, key_type, true, None) {
                Gql::String(s) => s,
                other => other.to_string(),
            };
            FieldValue::value(Gql::String(global_id(&object, &key)))
        });
        FieldFuture::Value(id.ok())
    })
    .description("The global id (Relay's `Node`): pass it to `node(id:)` to refetch this instance.")
}

/// The product APIs that are `Node`s, by instance type name.
type ByType = HashMap<String, Arc<ProductApi>>;

/// `node(id:)` and `nodes(ids:)`.
pub(crate) fn root_fields(apis: &[Arc<ProductApi>]) -> Vec<Field> {
    let by_type: Arc<ByType> = Arc::new(
        apis.iter()
            .filter(|api| is_node(api))
            .map(|api| (api.names.object.clone(), api.clone()))
            .collect(),
    );
    let one = by_type.clone();
    let many = by_type;
    vec![
        Field::new("node", TypeRef::named(NODE), move |ctx| {
            let by_type = one.clone();
            FieldFuture::new(async move {
                let id = ctx.args.try_get("id")?.string()?.to_string();
                resolve(&ctx, &by_type, &id).await
            })
        })
        .description("The instance with this global id, or null (Relay).")
        .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID))),
        Field::new("nodes", TypeRef::named_list_nn(NODE), move |ctx| {
            let by_type = many.clone();
            FieldFuture::new(async move {
                let ids = ctx.args.try_get("ids")?.list()?;
                if ids.len() > MAX_IDS {
                    return Err(bad_argument(format!(
                        "`ids` has {} ids; at most {MAX_IDS} are taken per call",
                        ids.len()
                    )));
                }
                let mut out = Vec::with_capacity(ids.len());
                for id in ids.iter() {
                    let id = id.string()?.to_string();
                    out.push(resolve(&ctx, &by_type, &id).await?.unwrap_or_else(null_item));
                }
                Ok(Some(FieldValue::list(out)))
            })
        })
        .description(format!(
            "The instances with these global ids, in order, null where there is none (Relay); at most {MAX_IDS} ids."
        ))
        .argument(InputValue::new("ids", TypeRef::named_nn_list_nn(TypeRef::ID))),
    ]
}

/// The instance `id` names, as its product's lookup answers it.
async fn resolve<'a>(
    ctx: &ResolverContext<'a>,
    by_type: &ByType,
    id: &str,
) -> async_graphql::Result<Option<FieldValue<'a>>> {
    let unknown = || bad_argument(format!("`{id}` is not a global id of this node"));
    let (object, key) = parse_global_id(id).ok_or_else(unknown)?;
    let api = by_type.get(&object).ok_or_else(unknown)?;
    let runtime = runtime(ctx)?;
    let view = view(ctx, api)?;
    require(ctx, &view, view.read, "read")?;
    runtime.usage.query(api.name());
    Ok(lookup_visible(runtime, api, &view, key)
        .await?
        .map(|i| FieldValue::owned_any(Arc::unwrap_or_clone(i)).with_type(object)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ids_round_trip() {
        let id = global_id("MachineHealth", "PR:0042");
        assert_eq!(
            parse_global_id(&id),
            Some(("MachineHealth".to_string(), "PR:0042".to_string()))
        );
        assert_eq!(parse_global_id("not base64!"), None);
        assert_eq!(
            parse_global_id(&global_id("", "x")),
            Some((String::new(), "x".into()))
        );
    }
}
