//! Builds the dynamic schema of a [`ProductSet`]: the shared types, one set
//! of types and root fields per product (see `instance.rs`,
//! `connection.rs`, `mutation.rs`, `subscription.rs`) and the catalog.
//!
//! A schema is immutable; a reload builds a new one. Building checks the
//! generated names first (see `names.rs`) and reports every problem at
//! once; async-graphql's own checks come after.
//!
//! What resolvers share lives beside it: `product_api` (one product as
//! the schema sees it), `context` (the runtime and caller of a request),
//! `policy` (the caller's view, applied by every resolver), `args`
//! (optional arguments) and `resolve` (resolver plumbing).

use std::sync::Arc;

use async_graphql::dynamic::{Enum, Object, Schema, Subscription, TypeRef};
use async_graphql::Value as Gql;

use super::names::{self, ProductNames};
use super::prepared::PreparedLookups;
use super::product_api::ProductApi;
use super::reload::Generation;
use super::resolve::getter;
use super::runtime::Runtime;
use super::{
    catalog, connection, enums, field_errors, filter, instance, limits, mutation, relay,
    subscription, values,
};
use crate::product::ProductSet;

/// Why a schema could not be built from a set of definitions.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the GraphQL schema cannot be generated:\n  {}", .0.join("\n  "))]
pub struct BuildError(pub Vec<String>);

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
        builder = builder
            .register(subscription::change_object(api))
            .register(super::bucket_feed::close_object(api));
        query = query
            .field(connection::lookup_field(api))
            .field(connection::list_field(api))
            .field(super::aggregate::aggregate_field(api));
        mutation = mutation
            .field(mutation::upsert_field(api))
            .field(mutation::erase_field(api));
        subscription = subscription
            .field(subscription::changes_field(api))
            .field(super::bucket_feed::buckets_field(api));
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
