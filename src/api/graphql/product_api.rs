//! One product as the GraphQL schema sees it ([`ProductApi`]): its
//! generated names, field types and enums, shared by every resolver of the
//! product; and the few questions resolvers ask of it (the key argument,
//! staleness).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dynamic::{ResolverContext, TypeRef};

use super::names::ProductNames;
use super::{enums, field_errors, values};
use crate::product::{FieldType, Product};
use crate::record::Timestamp;

/// One product as the schema sees it, shared by its resolvers.
pub(crate) struct ProductApi {
    pub product: Arc<Product>,
    pub names: ProductNames,
    pub types: HashMap<String, FieldType>,
    /// The `enum:` fields that are GraphQL enums (`enums.rs`).
    pub enums: enums::Enums,
}

impl ProductApi {
    pub(crate) fn new(product: &Arc<Product>) -> ProductApi {
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
