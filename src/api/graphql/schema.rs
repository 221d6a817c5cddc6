//! Builds the dynamic schema of a [`ProductSet`]: the shared types, one set
//! of types and root fields per product (see `instance.rs`,
//! `connection.rs`, `mutation.rs`, `subscription.rs`) and the catalog.
//!
//! A schema is immutable; a reload builds a new one. Building checks the
//! generated names first (see `names.rs`) and reports every problem at
//! once; async-graphql's own checks come after.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, Object, ResolverContext, Schema, Subscription, TypeRef,
};
use async_graphql::{ErrorExtensions, Value as Gql};

use super::names::{self, ProductNames};
use super::prepared::PreparedLookups;
use super::reload::Generation;
use super::runtime::Runtime;
use super::{
    catalog, connection, enums, field_errors, filter, instance, limits, mutation, relay,
    subscription, values,
};
use crate::policy::access::{Caller, View};
use crate::product::{FieldType, Product, ProductSet};
use crate::record::Timestamp;

/// Why a schema could not be built from a set of definitions.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the GraphQL schema cannot be generated:\n  {}", .0.join("\n  "))]
pub struct BuildError(pub Vec<String>);

/// One product as the schema sees it, shared by its resolvers.
pub(crate) struct ProductApi {
    pub product: Arc<Product>,
    pub names: ProductNames,
    pub types: HashMap<String, FieldType>,
    /// The `enum:` fields that are GraphQL enums (`enums.rs`).
    pub enums: enums::Enums,
}

impl ProductApi {
    fn new(product: &Arc<Product>) -> ProductApi {
        let names = ProductNames::new(&product.name);
        ProductApi {
            enums: enums::of_product(product, &names.object),
            names,
            types: product
                .fields
                .values()
                .map(|f| (f.name.clone(), f.ty))
                .collect(),
            product: product.clone(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.product.name
    }

    /// The GraphQL type of the key argument of lookups and erasures.
    pub(crate) fn key_type(&self) -> TypeRef {
        TypeRef::named_nn(values::type_name(self.product.key_field().ty))
    }

    /// The entity key given as the key argument, rendered as the store
    /// keeps it (int keys in decimal).
    pub(crate) fn entity_arg(&self, ctx: &ResolverContext<'_>) -> async_graphql::Result<String> {
        let key = &self.product.key;
        let value = ctx.args.try_get(key)?;
        match self.product.key_field().ty {
            FieldType::Int => values::long(value.as_value())
                .map(|i| i.to_string())
                .ok_or_else(|| field_errors::bad_argument(format!("`{key}`: expected a Long"))),
            _ => Ok(value.string()?.to_string()),
        }
    }

    /// Whether an instance last seen at `last_seen` is stale by the
    /// product's freshness SLA (never, without one).
    pub(crate) fn is_stale(&self, last_seen: Option<Timestamp>, now: Timestamp) -> bool {
        match self.product.freshness {
            None => false,
            Some(sla) => last_seen.is_none_or(|seen| seen < now.saturating_sub(sla)),
        }
    }
}

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

/// The shared `PageInfo` data.
#[derive(Clone, Debug, Default)]
pub(crate) struct PageInfoData {
    pub has_next: bool,
    pub has_previous: bool,
    pub start: Option<String>,
    pub end: Option<String>,
}

fn page_info_object() -> Object {
    let opt = |s: &Option<String>| s.clone().map(Gql::String).unwrap_or(Gql::Null);
    Object::new("PageInfo")
        .description("Where a page sits in its connection (Relay).")
        .field(getter::<PageInfoData>(
            "hasNextPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| Gql::Boolean(p.has_next),
        ))
        .field(getter::<PageInfoData>(
            "hasPreviousPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| Gql::Boolean(p.has_previous),
        ))
        .field(getter::<PageInfoData>(
            "startCursor",
            TypeRef::named(TypeRef::STRING),
            move |p| opt(&p.start),
        ))
        .field(getter::<PageInfoData>(
            "endCursor",
            TypeRef::named(TypeRef::STRING),
            move |p| opt(&p.end),
        ))
}

/// Builds the schema of `products` that serves data, with its (empty)
/// plan cache.
pub(crate) fn build_generation(
    products: &Arc<ProductSet>,
    runtime: Runtime,
) -> Result<Generation, BuildError> {
    let (schema, apis) = build(products, Some(runtime))?;
    Ok(Generation {
        schema,
        prepared: PreparedLookups::new(&apis),
    })
}

/// Builds the schema of `products`, and returns it with its products'
/// APIs. `runtime` is `None` for a schema that is only printed (`meshlet
/// schema print`, the golden files).
///
/// Never panics: the generated names are checked first, and should a
/// definition still trip one of async-graphql's registration asserts
/// (`Field 'x' already exists`), the panic is caught here and becomes a
/// [`BuildError`] like any other — a definition cannot stop the node, at
/// start-up or on reload.
fn build(
    products: &Arc<ProductSet>,
    runtime: Option<Runtime>,
) -> Result<(Schema, Vec<Arc<ProductApi>>), BuildError> {
    let mut problems = names::check_with_enums(products.iter().map(|p| {
        let object = ProductNames::new(&p.name).object;
        let enum_types = enums::enum_fields(p)
            .flat_map(|f| {
                let ty = enums::type_name(&object, &f.name);
                [enums::filter_name(&ty), ty]
            })
            .collect();
        (
            p.name.as_str(),
            p.fields.keys().map(String::as_str).collect(),
            enum_types,
        )
    }));
    for product in products.iter() {
        problems.extend(
            enums::value_problems(product)
                .into_iter()
                .map(|message| names::Problem {
                    product: product.name.clone(),
                    message,
                }),
        );
    }
    if !problems.is_empty() {
        return Err(BuildError(
            problems
                .into_iter()
                .map(|problem| match products.get(&problem.product) {
                    Some(p) => format!("{}: {}", p.file.display(), problem.message),
                    None => problem.message,
                })
                .collect(),
        ));
    }
    let assembled =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assemble(products, runtime)));
    match assembled {
        Ok(built) => built,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            let files: Vec<String> = products
                .iter()
                .map(|p| p.file.display().to_string())
                .collect();
            Err(BuildError(vec![format!(
                "schema construction failed ({what}) for the definitions in {}",
                files.join(", ")
            )]))
        }
    }
}

/// Registers every type and root field of `products` (names already
/// checked) and lets async-graphql check the whole.
fn assemble(
    products: &Arc<ProductSet>,
    runtime: Option<Runtime>,
) -> Result<(Schema, Vec<Arc<ProductApi>>), BuildError> {
    let apis: Vec<Arc<ProductApi>> = products
        .iter()
        .map(|p| Arc::new(ProductApi::new(p)))
        .collect();
    let with_products = !apis.is_empty();
    let mut builder = Schema::build(
        "Query",
        with_products.then_some("Mutation"),
        with_products.then_some("Subscription"),
    )
    .limit_depth(limits::MAX_DEPTH)
    .limit_complexity(limits::MAX_COMPLEXITY)
    .extension(limits::Limits::default())
    .extension(field_errors::FieldErrors);
    if let Some(runtime) = runtime {
        builder = builder.data(runtime);
    }
    for scalar in values::scalars() {
        builder = builder.register(scalar);
    }
    for input in filter::field_filter_inputs() {
        builder = builder.register(input);
    }
    builder = builder
        .register(page_info_object())
        .register(
            Enum::new("OrderDirection")
                .description(
                    "Ascending or descending; absent values sort last ascending, first descending.",
                )
                .item("ASC")
                .item("DESC"),
        )
        .register(relay::interface())
        .register(instance::meta_object())
        .register(instance::audit_object())
        .register(instance::audit_verification_object())
        .register(instance::audit_break_object())
        .register(instance::audit_action_enum());
    for ty in super::series::shared_types() {
        builder = builder.register(ty);
    }
    for ty in catalog::types()
        .into_iter()
        .chain(super::sync_status::types())
    {
        builder = builder.register(ty);
    }

    let mut query = Object::new("Query").description(
        "Every product's instances (lookup by key, filtered connections), and the catalog.",
    );
    let mut mutation = Object::new("Mutation").description(
        "Writes through the ingest pipeline: validated, audited and durable before the answer.",
    );
    let mut subscription =
        Subscription::new("Subscription").description("Durable changes, as they happen.");
    for api in &apis {
        for ty in instance::types(api) {
            builder = builder.register(ty);
        }
        for ty in connection::types(api) {
            builder = builder.register(ty);
        }
        for ty in super::aggregate::types(api) {
            builder = builder.register(ty);
        }
        for (field, e) in &api.enums {
            builder = builder
                .register(e.graphql_type(api.name(), field))
                .register(e.filter_input());
        }
        builder = builder.register(mutation::input_object(api));
        builder = builder.register(subscription::change_object(api));
        query = query
            .field(connection::lookup_field(api))
            .field(connection::list_field(api))
            .field(super::aggregate::aggregate_field(api));
        mutation = mutation
            .field(mutation::upsert_field(api))
            .field(mutation::erase_field(api));
        subscription = subscription.field(subscription::changes_field(api));
    }
    for field in catalog::root_fields(products)
        .into_iter()
        .chain(super::sync_status::root_fields())
        .chain(relay::root_fields(&apis))
    {
        query = query.field(field);
    }
    builder = builder.register(query);
    if with_products {
        builder = builder.register(mutation).register(subscription);
    }
    let schema = builder
        .finish()
        .map_err(|e| BuildError(vec![format!("schema check failed: {e}")]))?;
    Ok((schema, apis))
}

/// The SDL of `products`' schema, as `meshlet schema print` prints it.
pub fn sdl(products: &ProductSet) -> Result<String, BuildError> {
    let (schema, _) = build(&Arc::new(products.clone()), None)?;
    Ok(schema.sdl())
}
