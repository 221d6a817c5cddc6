//! One product's root query fields: `<product>(key)` and the Relay
//! connection `<product>Connection(first, after, last, before, filter,
//! orderBy)` with its edge, filter and order types. The paging itself is
//! in `paging.rs`, cursors in `order.rs`.

use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, Type, TypeRef,
};
use async_graphql::Value as Gql;

use super::args::{opt_string, page_size};
use super::context::runtime;
use super::field_errors;
use super::filter::{self, Filter};
use super::limits;
use super::order::{self, Order, OrderTerm};
use super::paging::{self, PageArgs, ProductScan, SCAN_BUDGET};
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::{blocking, getter, ready};
use super::runtime::Runtime;
use super::schema::PageInfoData;
use super::values;
use crate::policy::access::View;
use crate::store::Instance;

/// A page of instances, with what `totalCount` needs.
struct ConnectionData {
    edges: Vec<(String, Instance)>,
    page_info: PageInfoData,
    product: String,
    filter: Option<Filter>,
    view: Arc<View>,
}

/// Edge, connection, filter and order types of one product.
pub(crate) fn types(api: &Arc<ProductApi>) -> Vec<Type> {
    let names = &api.names;
    let product = &api.product;
    let edge = Object::new(&names.edge)
        .field(getter::<(String, Instance)>(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |e| Gql::String(e.0.clone()),
        ))
        .field(Field::new(
            "node",
            TypeRef::named_nn(&names.object),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<(String, Instance)>()
                        .map(|e| Some(FieldValue::borrowed_any(&e.1))),
                )
            },
        ));
    let connection = Object::new(&names.connection)
        .description(format!(
            "A page of `{}` instances (Relay connection).",
            product.name
        ))
        .field(Field::new(
            "edges",
            TypeRef::named_nn_list_nn(&names.edge),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<ConnectionData>()
                        .map(|c| {
                            Some(FieldValue::list(
                                c.edges.iter().map(|x| FieldValue::borrowed_any(x)),
                            ))
                        }),
                )
            },
        ))
        .field(Field::new(
            "nodes",
            TypeRef::named_nn_list_nn(&names.object),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<ConnectionData>()
                        .map(|c| {
                            Some(FieldValue::list(
                                c.edges.iter().map(|e| FieldValue::borrowed_any(&e.1)),
                            ))
                        }),
                )
            },
        ))
        .field(Field::new(
            "pageInfo",
            TypeRef::named_nn("PageInfo"),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<ConnectionData>()
                        .map(|c| Some(FieldValue::borrowed_any(&c.page_info))),
                )
            },
        ))
        .field(total_count_field());
    let order_field = Enum::new(&names.order_field)
        .description(format!("The fields `{}` can be ordered by.", product.name))
        .items(product.fields.keys().cloned());
    let order = InputObject::new(&names.order)
        .description("One ordering term; ties are broken by the entity key.")
        .field(InputValue::new(
            "field",
            TypeRef::named_nn(&names.order_field),
        ))
        .field(
            InputValue::new("direction", TypeRef::named("OrderDirection"))
                .default_value(Gql::Enum(async_graphql::Name::new("ASC"))),
        );
    vec![
        edge.into(),
        connection.into(),
        order_field.into(),
        order.into(),
        filter::product_filter_input(product, &api.enums, &names.filter).into(),
    ]
}

fn total_count_field() -> Field {
    Field::new("totalCount", TypeRef::named_nn(values::LONG), |ctx| {
        FieldFuture::new(async move {
            let data = ctx.parent_value.try_downcast_ref::<ConnectionData>()?;
            let runtime = runtime(&ctx)?;
            let store = runtime.store().clone();
            let product = data.product.clone();
            let filter = data.filter.clone();
            let view = data.view.clone();
            let total = blocking(move || match filter {
                None if view.reads_clear() => store.count(&product).map_err(|e| e.to_string()),
                filter => paging::count(
                    &ProductScan {
                        store: &store,
                        product: &product,
                        view: &view,
                    },
                    &filter.unwrap_or(Filter::And(Vec::new())),
                    SCAN_BUDGET,
                )
                .map_err(|e| e.to_string()),
            })
            .await?;
            Ok(Some(FieldValue::value(Gql::from(total))))
        })
    })
    .description(
        "Instances matching the filter, over all pages (a scan of the product when filtered).",
    )
}

/// `<product>(key: ...)`.
pub(crate) fn lookup_field(api: &Arc<ProductApi>) -> Field {
    let handle = api.clone();
    Field::new(
        &api.names.lookup,
        TypeRef::named(&api.names.object),
        move |ctx| {
            let api = handle.clone();
            FieldFuture::new(async move {
                let runtime = runtime(&ctx)?;
                let view = view(&ctx, &api)?;
                require(&ctx, &view, view.read, "read")?;
                let entity = api.entity_arg(&ctx)?;
                runtime.usage.query(api.name());
                Ok(lookup_visible(runtime, &api, &view, entity)
                    .await?
                    .map(|i| FieldValue::owned_any(Arc::unwrap_or_clone(i))))
            })
        },
    )
    .description(format!(
        "One `{}` instance by its key, or null.",
        api.product.name
    ))
    .argument(InputValue::new(&api.product.key, api.key_type()))
}

/// The instance `<product>(key)` returns: as `view` shows it (masked),
/// or `None` when absent or hidden by the row filter (as if absent, so a
/// lookup does not tell whether the entity exists). Shared with the
/// prepared lookups (`prepared.rs`), which must answer exactly as this
/// resolver does. A view that reads clear gets the cached state itself,
/// not a copy.
pub(crate) async fn lookup_visible(
    runtime: &Runtime,
    api: &ProductApi,
    view: &View,
    entity: String,
) -> async_graphql::Result<Option<Arc<Instance>>> {
    // A cached state is read in place (no sled, no decode). A miss reads
    // sled on the blocking pool: under ingest that read waits for the
    // writer's transaction (sled's process-wide lock), and on a runtime
    // worker it would stall every other request of that worker meanwhile.
    let store = runtime.store();
    let cached = store
        .get_cached(api.name(), &entity)
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    let instance = match cached {
        Some(instance) => Some(instance),
        None => {
            let (store, product) = (store.clone(), api.name().to_string());
            blocking(move || store.get(&product, &entity).map_err(|e| e.to_string()))
                .await?
                .map(Arc::new)
        }
    };
    Ok(instance.and_then(|i| {
        if view.reads_clear() {
            Some(i)
        } else {
            paging::see(view, Arc::unwrap_or_clone(i)).map(Arc::new)
        }
    }))
}

/// `<product>Connection(...)`.
pub(crate) fn list_field(api: &Arc<ProductApi>) -> Field {
    let handle = api.clone();
    Field::new(&api.names.list, TypeRef::named_nn(&api.names.connection), move |ctx| {
        let api = handle.clone();
        FieldFuture::new(async move {
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.read, "read")?;
            runtime.usage.query(api.name());
            let (first, last) = match (page_size(&ctx, "first")?, page_size(&ctx, "last")?) {
                (None, None) => (Some(limits::DEFAULT_PAGE), None),
                given => given,
            };
            let order = parse_order(&ctx, &api)?;
            let cursor = |name: &str| -> async_graphql::Result<_> {
                opt_string(&ctx, name)?
                    .map(|c| {
                        order
                            .decode(&c)
                            .map_err(|e| field_errors::bad_argument(format!("`{name}`: {e}")))
                    })
                    .transpose()
            };
            let args = PageArgs {
                first,
                last,
                after: cursor("after")?,
                before: cursor("before")?,
            };
            let filter = match ctx.args.get("filter") {
                Some(value) if !value.is_null() => filter::parse(
                    &api.types,
                    &super::enums::decode_filter(&api.enums, value.as_value()),
                )
                    .map_err(|e| field_errors::bad_argument(format!("`filter`: {e}")))?,
                _ => None,
            };
            let key_order = order.is_key_order(&api.product);
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let scan_view = view.clone();
            let (out, order, filter) = blocking(move || {
                paging::page(
                    &ProductScan {
                        store: &store,
                        product: &product,
                        view: &scan_view,
                    },
                    filter.as_ref(),
                    &order,
                    key_order,
                    &args,
                    SCAN_BUDGET,
                )
                .map(|out| (out, order, filter))
                .map_err(|e| e.to_string())
            })
            .await?;
            let edges: Vec<(String, Instance)> = out
                .items
                .into_iter()
                .map(|(key, instance)| (order.encode(&key), instance))
                .collect();
            let page_info = PageInfoData {
                has_next: out.has_next,
                has_previous: out.has_previous,
                start: edges.first().map(|e| e.0.clone()),
                end: edges.last().map(|e| e.0.clone()),
            };
            Ok(Some(FieldValue::owned_any(ConnectionData {
                edges,
                page_info,
                product: api.name().to_string(),
                filter,
                view,
            })))
        })
    })
    .description(format!(
        "`{}` instances, filtered and ordered, a page at a time: `first` items after the cursor `after`, or `last` items before `before` (at most 1000; default: first 100). Default order: by entity key. `orderBy` takes up to 3 terms, ties broken by the entity key; a cursor belongs to the orderBy it was made with.",
        api.product.name
    ))
    .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)))
    .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
    .argument(InputValue::new("last", TypeRef::named(TypeRef::INT)))
    .argument(InputValue::new("before", TypeRef::named(TypeRef::STRING)))
    .argument(InputValue::new("filter", TypeRef::named(&api.names.filter)))
    .argument(InputValue::new("orderBy", TypeRef::named_nn_list(&api.names.order)))
}

fn parse_order(
    ctx: &async_graphql::dynamic::ResolverContext<'_>,
    api: &ProductApi,
) -> async_graphql::Result<Order> {
    let Some(value) = ctx.args.get("orderBy").filter(|v| !v.is_null()) else {
        return Ok(Order::default());
    };
    let mut terms = Vec::new();
    for item in value.list()?.iter() {
        let item = item.object()?;
        let field = item.try_get("field")?.enum_name()?.to_string();
        if !api.types.contains_key(&field) {
            return Err(field_errors::bad_argument(format!(
                "`orderBy`: no field `{field}`"
            )));
        }
        let descending = match item.get("direction").filter(|d| !d.is_null()) {
            Some(direction) => direction.enum_name()? == "DESC",
            None => false,
        };
        terms.push(OrderTerm { field, descending });
    }
    if terms.len() > order::MAX_TERMS {
        return Err(field_errors::bad_argument(format!(
            "`orderBy` has {} terms; at most {} are accepted",
            terms.len(),
            order::MAX_TERMS
        )));
    }
    Ok(Order { terms })
}
