//! `<product>Aggregate(filter:, groupBy:)`: the current instances a role
//! may see, grouped, with per group the count and per number field min,
//! max and avg. Thin: the instances come through the role's view (its
//! row filter skips instances, its masks apply before grouping, so a
//! `round` mask aggregates rounded values and a `redact`/`hash`/`null`
//! masked number field has no statistics for that role); the grouping is
//! `timeseries::aggregate`.
//!
//! The instances come from the store's in-memory projection of current
//! states (`store/projection.rs`), read as columns (the wanted fields'
//! cells copied; the rows only when a row filter or `filter` must read
//! them), or, when that is over its memory bound, from a scan of the
//! store; the answers are
//! the same (`tests/it/graphql_timeseries.rs` compares them with brute force
//! under random writes, erasures, row filters and masks).
//!
//! Bounds: at most `paging::SCAN_BUDGET` instances are visited, and
//! at most [`MAX_GROUPS`] groups are made (`AGGREGATE_TOO_LARGE`); the
//! query cost counts `groups` as [`MAX_GROUPS`] entries.

use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputValue, Object, Type, TypeRef,
};
use async_graphql::{ErrorExtensions, Value as Gql};

use super::context::runtime;
use super::field_errors;
use super::filter;
use super::paging::{self, ProductScan, SCAN_BUDGET};
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::{blocking, getter, ready};
use super::values;
use crate::product::FieldType;
use crate::record::Value;
use crate::timeseries::aggregate::{aggregate_columns, Aggregator, Group, KeyPart, Mask, Numbers};

/// A field's mask as the role applies it, owned by the query.
type OwnedMask<'a> = Box<dyn Fn(&Value) -> Option<Value> + 'a>;

/// Groups one aggregate may return.
pub(crate) const MAX_GROUPS: usize = 1_000;

/// Fields instances can be grouped by: string, int and bool fields.
fn groupable(api: &ProductApi) -> Vec<(String, FieldType)> {
    api.product
        .fields
        .values()
        .filter(|f| matches!(f.ty, FieldType::String | FieldType::Int | FieldType::Bool))
        .map(|f| (f.name.clone(), f.ty))
        .collect()
}

/// Number fields (int, float), the key left out.
fn numeric(api: &ProductApi) -> Vec<String> {
    api.product
        .fields
        .values()
        .filter(|f| f.name != api.product.key)
        .filter(|f| matches!(f.ty, FieldType::Int | FieldType::Float))
        .map(|f| f.name.clone())
        .collect()
}

/// One group as the schema reads it, with which statistic an object of
/// `<Product>Numbers` shows.
struct GroupOut {
    group: Group,
    group_by: Arc<Vec<String>>,
}

#[derive(Clone, Copy)]
enum Stat {
    Min,
    Max,
    Avg,
}

struct NumbersOut {
    numbers: Vec<Option<Numbers>>,
    stat: Stat,
}

struct AggregateOut {
    groups: Vec<GroupOut>,
}

fn key_value(part: &KeyPart) -> Gql {
    match part {
        KeyPart::Null => Gql::Null,
        KeyPart::Bool(b) => Gql::Boolean(*b),
        KeyPart::Int(i) => Gql::from(*i),
        KeyPart::Text(s) => Gql::String(s.clone()),
    }
}

/// The per-product types.
pub(crate) fn types(api: &Arc<ProductApi>) -> Vec<Type> {
    let names = &api.names;
    let mut out = Vec::new();

    let mut field_enum = Enum::new(&names.group_field).description(format!(
        "A `{}` field instances can be grouped by.",
        api.product.name
    ));
    let mut key = Object::new(&names.group_key).description(
        "The values a group's instances share (the group-by fields; the others are null).",
    );
    for (name, ty) in groupable(api) {
        field_enum = field_enum.item(name.as_str());
        let wanted = name.clone();
        let enum_type = api.enums.get(&name).cloned();
        let type_name = enum_type
            .as_ref()
            .map_or(values::type_name(ty), |e| e.name.as_str());
        key = key.field(Field::new(&name, TypeRef::named(type_name), move |ctx| {
            ready(ctx.parent_value.try_downcast_ref::<GroupOut>().map(|g| {
                g.group_by
                    .iter()
                    .position(|n| *n == wanted)
                    .and_then(|i| g.group.key.get(i))
                    .map(|part| match (&enum_type, part) {
                        (Some(e), KeyPart::Text(s)) => {
                            e.output(&crate::record::Value::String(s.clone()))
                        }
                        _ => key_value(part),
                    })
                    .and_then(super::resolve::non_null)
            }))
        }));
    }
    out.push(field_enum.into());
    out.push(key.into());

    let numeric = numeric(api);
    let mut group = Object::new(&names.group)
        .description("Instances sharing the group-by values.")
        .field(Field::new(
            "key",
            TypeRef::named_nn(&names.group_key),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<GroupOut>()
                        .map(|g| Some(FieldValue::borrowed_any(g))),
                )
            },
        ))
        .field(
            getter::<GroupOut>("count", TypeRef::named_nn(TypeRef::INT), |g| {
                Gql::from(g.group.count)
            })
            .description("Instances in the group."),
        );
    if !numeric.is_empty() {
        let mut numbers = Object::new(&names.numbers).description(
            "One statistic per number field, over the group's instances that hold a number there as the caller's role sees it (null: none does, or the role's mask hides the number).",
        );
        for (i, name) in numeric.iter().enumerate() {
            numbers = numbers.field(Field::new(
                name,
                TypeRef::named(TypeRef::FLOAT),
                move |ctx| {
                    ready(ctx.parent_value.try_downcast_ref::<NumbersOut>().map(|n| {
                        n.numbers.get(i).copied().flatten().map(|x| {
                            FieldValue::value(Gql::from(match n.stat {
                                Stat::Min => x.min,
                                Stat::Max => x.max,
                                Stat::Avg => x.avg(),
                            }))
                        })
                    }))
                },
            ));
        }
        out.push(numbers.into());
        for (name, stat) in [("min", Stat::Min), ("max", Stat::Max), ("avg", Stat::Avg)] {
            group = group.field(Field::new(
                name,
                TypeRef::named_nn(&names.numbers),
                move |ctx| {
                    ready(ctx.parent_value.try_downcast_ref::<GroupOut>().map(|g| {
                        Some(FieldValue::owned_any(NumbersOut {
                            numbers: g.group.numbers.clone(),
                            stat,
                        }))
                    }))
                },
            ));
        }
    }
    out.push(group.into());
    out.push(
        Object::new(&names.aggregate_type)
            .description(format!("`{}` instances in groups.", api.product.name))
            .field(
                Field::new("groups", TypeRef::named_nn_list_nn(&names.group), |ctx| {
                    ready(
                        ctx.parent_value
                            .try_downcast_ref::<AggregateOut>()
                            .map(|a| {
                                Some(FieldValue::list(
                                    a.groups.iter().map(|g| FieldValue::borrowed_any(g)),
                                ))
                            }),
                    )
                })
                .description("The groups in key order (null first)."),
            )
            .into(),
    );
    out
}

fn bad(code: &'static str, message: String) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(move |_, e| e.set("code", code))
}

/// The root field `<product>Aggregate`.
pub(crate) fn aggregate_field(api: &Arc<ProductApi>) -> Field {
    let handle = api.clone();
    Field::new(&api.names.aggregate, TypeRef::named_nn(&api.names.aggregate_type), move |ctx| {
        let api = handle.clone();
        FieldFuture::new(async move {
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.read, "read")?;
            runtime.usage.query(api.name());
            let filter = match ctx.args.get("filter") {
                Some(value) if !value.is_null() => filter::parse(
                    &api.types,
                    &super::enums::decode_filter(&api.enums, value.as_value()),
                )
                    .map_err(|e| field_errors::bad_argument(format!("`filter`: {e}")))?,
                _ => None,
            };
            let mut group_by = Vec::new();
            if let Some(list) = ctx.args.get("groupBy").filter(|v| !v.is_null()) {
                for item in list.list()?.iter() {
                    let name = item.enum_name()?.to_string();
                    if !group_by.contains(&name) {
                        group_by.push(name);
                    }
                }
            }
            let group_by = Arc::new(group_by);
            let numeric = numeric(&api);
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let keys = group_by.clone();
            let groups = blocking(move || {
                let mut aggregator = Aggregator::new(keys.to_vec(), numeric.clone(), MAX_GROUPS);
                let mut too_many = false;
                let mut wanted = keys.to_vec();
                wanted.extend(numeric.iter().cloned());
                // Row and query filters read the instance (the query
                // filter its masked fields): only then are rows copied.
                let filters = view.filters_rows() || filter.is_some();
                match store
                    .fleet_columns(&product, &wanted, filters)
                    .map_err(|e| e.to_string())?
                {
                    // The in-memory projection, columnar: the same
                    // instances a scan decodes, through the same row
                    // filter, masks and filter.
                    Some(fleet) => {
                        if fleet.live.iter().filter(|l| **l).count() > SCAN_BUDGET {
                            return Err(paging::PagingError::Budget(SCAN_BUDGET).to_string());
                        }
                        // A masked field's cells go through the role's mask.
                        let masks: Vec<Option<OwnedMask<'_>>> = wanted
                            .iter()
                            .map(|name| {
                                let view = &view;
                                view.mask_one(name, &Value::Null).map(|_| {
                                    Box::new(move |v: &Value| view.mask_one(name, v).flatten())
                                        as OwnedMask<'_>
                                })
                            })
                            .collect();
                        let masks: Vec<Option<Mask<'_>>> =
                            masks.iter().map(|m| m.as_deref()).collect();
                        let keep = |instance: &crate::store::Instance| {
                            if !view.shows_instance(instance) {
                                return false;
                            }
                            let Some(filter) = &filter else {
                                return true;
                            };
                            if view.masks_fields() {
                                let mut fields = instance.fields.clone();
                                view.mask_fields(&mut fields);
                                filter.matches(&fields)
                            } else {
                                filter.matches(&instance.fields)
                            }
                        };
                        return Ok(aggregate_columns(
                            &fleet,
                            &keys,
                            &numeric,
                            &masks,
                            filters.then_some(&keep as &dyn Fn(&crate::store::Instance) -> bool),
                            MAX_GROUPS,
                        )
                        .ok());
                    }
                    // Over the projection's bound: scan.
                    None => paging::for_each_match(
                        &ProductScan { store: &store, product: &product, view: &view },
                        filter.as_ref(),
                        SCAN_BUDGET,
                        |instance| {
                            too_many = aggregator.add(&instance.fields).is_err();
                            !too_many
                        },
                    )
                    .map_err(|e| e.to_string())?,
                }
                Ok((!too_many).then(|| aggregator.finish()))
            })
            .await?;
            let groups = groups.ok_or_else(|| {
                bad(
                    "AGGREGATE_TOO_LARGE",
                    format!("this aggregate has more than {MAX_GROUPS} groups; group by fewer or coarser fields, or filter"),
                )
            })?;
            Ok(Some(FieldValue::owned_any(AggregateOut {
                groups: groups
                    .into_iter()
                    .map(|group| GroupOut { group, group_by: group_by.clone() })
                    .collect(),
            })))
        })
    })
    .description(format!(
        "The current `{}` instances the caller may see (row filter applied), filtered, in groups of equal `groupBy` values (none: one group of all), each with its count and per number field min/max/avg. Masks apply before grouping: a `round` mask aggregates rounded values, a number field masked otherwise has no statistics. At most {MAX_GROUPS} groups (`AGGREGATE_TOO_LARGE`).",
        api.product.name
    ))
    .argument(InputValue::new("filter", TypeRef::named(&api.names.filter)))
    .argument(InputValue::new("groupBy", TypeRef::named_nn_list(&api.names.group_field)))
}
