//! `upsert<Product>(input)` and `erase<Product>(key)`.
//!
//! An upsert is one record through the same pipeline as every source
//! (mapping by field name, coercion, quality rules), written by the same
//! writer with audit, and answered only once durable; it fails whole with
//! every reason when the record is invalid (nothing is quarantined: the
//! caller is there to fix it). Its origin is `graphql`, and its event time
//! is its arrival. An erasure removes the instance, its history and audit
//! values (see `Store::erase`) and is answered once durable.
//!
//! Writes use the product definitions ingestion runs on, which a reload
//! installs before it swaps the schema: a field or product the schema
//! shows is one ingestion takes. Access rules come with the policy work.

use std::sync::Arc;

use async_graphql::dynamic::{Field, FieldFuture, FieldValue, InputObject, InputValue, TypeRef};
use async_graphql::{ErrorExtensions, Value as Gql};

use super::context::{caller, runtime};
use super::field_errors;
use super::instance::describe;
use super::paging;
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::blocking;
use super::values;
use crate::ingest::PushRefusal;
use crate::product::FieldType;
use crate::record::Origin;

/// The origin of every API write, as audit and `_meta.source` show it.
pub(crate) const ORIGIN: &str = "graphql";

/// `<Product>Input`: the key required, every other field optional; an
/// explicit `null` clears a field.
pub(crate) fn input_object(api: &Arc<ProductApi>) -> InputObject {
    let product = &api.product;
    let mut input = InputObject::new(&api.names.input).description(format!(
        "One `{}` record: fields left out keep their value, `null` clears one.",
        product.name
    ));
    for field in product.fields.values() {
        let name = match api.enums.get(&field.name) {
            Some(e) => e.name.as_str(),
            None => values::type_name(field.ty),
        };
        let ty = if field.name == product.key {
            TypeRef::named_nn(name)
        } else {
            TypeRef::named(name)
        };
        input = input.field(InputValue::new(&field.name, ty).description(describe(field)));
    }
    input
}

fn refusal(product: &str, refusal: PushRefusal) -> async_graphql::Error {
    match refusal {
        PushRefusal::UnknownProduct(_) | PushRefusal::NotPushable(_) => async_graphql::Error::new(
            format!("product `{product}` is not loaded by ingestion (removed by a reload in the meantime?)"),
        ),
        PushRefusal::Invalid(invalid) => {
            let reasons: Vec<String> = invalid
                .iter()
                .flat_map(|bad| bad.reasons.iter().map(|r| r.to_string()))
                .collect();
            async_graphql::Error::new(format!(
                "invalid `{product}` record, nothing written: {}",
                reasons.join("; ")
            ))
            .extend_with(|_, e| {
                e.set("code", "INVALID_RECORD");
                e.set(
                    "reasons",
                    Gql::List(reasons.iter().cloned().map(Gql::String).collect()),
                );
            })
        }
    }
}

/// `upsert<Product>(input: <Product>Input!): <Product>!`.
pub(crate) fn upsert_field(api: &Arc<ProductApi>) -> Field {
    let handle = api.clone();
    Field::new(&api.names.upsert, TypeRef::named_nn(&api.names.object), move |ctx| {
        let api = handle.clone();
        FieldFuture::new(async move {
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.write, "write")?;
            let who = caller(&ctx)?.identity.name.clone();
            let input = ctx.args.try_get("input")?.object()?;
            let mut record = serde_json::Map::new();
            for (name, value) in input.iter() {
                // A `Long` may come as a decimal string: the pipeline
                // gets the number.
                let long = match api.product.field(name.as_str()).map(|f| f.ty) {
                    Some(FieldType::Int) => values::long(value.as_value()),
                    _ => None,
                };
                let decoded = match api.enums.get(name.as_str()) {
                    Some(e) => e.input(value.as_value()),
                    None => value.as_value().clone(),
                };
                let json = match long {
                    Some(n) => serde_json::Value::from(n),
                    None => values::input_json(&decoded)
                        .map_err(|e| field_errors::bad_argument(format!("`{name}`: {e}")))?,
                };
                record.insert(name.to_string(), json);
            }
            let entity = match record.get(&api.product.key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(field_errors::bad_argument(format!(
                        "`{}`: the key is required",
                        api.product.key
                    )))
                }
            };
            let written: Vec<String> = record.keys().cloned().collect();
            let payload = serde_json::to_vec(&serde_json::Value::Object(record))?;
            let pending = runtime
                .ingestor
                .submit_api(api.name(), &payload, Origin::new(ORIGIN).with_actor(who))
                .await
                .map_err(|r| refusal(api.name(), r))?;
            pending.wait().await.map_err(|e| {
                async_graphql::Error::new(format!("not written, retry later: {e}"))
            })?;
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let instance = blocking(move || {
                store.get(&product, &entity).map_err(|e| e.to_string())
            })
            .await?
            .ok_or_else(|| async_graphql::Error::new("written, but erased again before it could be read"))?;
            // The answer goes through the writer's view too; a writer that
            // may not read the instance sees back only what it sent.
            let instance = match paging::see(&view, instance.clone()) {
                Some(visible) => visible,
                None => {
                    let mut own = instance;
                    own.fields.retain(|name, _| written.contains(name));
                    own
                }
            };
            Ok(Some(FieldValue::owned_any(instance)))
        })
    })
    .description(format!(
        "Writes one `{}` record through the ingest pipeline (validation, audit); answers once it is durable.",
        api.product.name
    ))
    .argument(InputValue::new("input", TypeRef::named_nn(&api.names.input)))
}

/// `erase<Product>(key: ...): Boolean!`.
pub(crate) fn erase_field(api: &Arc<ProductApi>) -> Field {
    let handle = api.clone();
    Field::new(&api.names.erase, TypeRef::named_nn(TypeRef::BOOLEAN), move |ctx| {
        let api = handle.clone();
        FieldFuture::new(async move {
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.erase, "erase")?;
            let origin = Origin::new(ORIGIN).with_actor(caller(&ctx)?.identity.name.clone());
            let entity = api.entity_arg(&ctx)?;
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let existed = blocking(move || {
                store
                    .erase(&product, &entity, &origin)
                    .map_err(|e| e.to_string())
            })
            .await?;
            runtime.store().durable().await.map_err(|e| {
                async_graphql::Error::new(format!("erased, but not yet durable: {e}"))
            })?;
            Ok(Some(FieldValue::value(Gql::Boolean(existed))))
        })
    })
    .description(format!(
        "Erases one `{}` entity: its state, history and audit values; an audit line and a tombstone remain. True if it existed. Answers once durable.",
        api.product.name
    ))
    .argument(InputValue::new(&api.product.key, api.key_type()))
}
