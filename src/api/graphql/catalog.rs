//! The catalog: what products this node serves and how they are doing
//! (`products`, `product(name)`), their quarantined payloads
//! (`quarantine`), and the schema's own state (`schemaStatus`, where a
//! refused reload shows its problems).
//!
//! Each product also carries its ODCS data contract (`contract`), rendered
//! by the same code as `meshlet contract export`. Any role with a right on
//! the product sees it, as it sees the product's fields and
//! classification: a contract is metadata (schema, rules, SLAs, which
//! roles get which masks and row filters), never instance values, and it
//! is the document the node publishes to the central catalog anyway. A
//! role with no right on a product does not see the product at all.
//!
//! Quality figures and usage count since the node started; `lastUpdate`
//! is the newest `lastSeen` of the product's instances (found by one scan
//! on first request, then kept current from the change feed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputValue, Object, Type, TypeRef,
};
use async_graphql::{Name, Value as Gql};
use base64::Engine;

use super::args::{opt_string, page_size};
use super::budget::ResponseBudget;
use super::context::{caller, runtime};
use super::field_errors;
use super::limits;
use super::paging::SCAN_BUDGET;
use super::policy::require;
use super::resolve::{blocking, getter, ready};
use super::runtime::StatusData;
use super::schema::PageInfoData;
use super::values;
use crate::contract::{self, ContractFormat};
use crate::product::{Field as ProductField, Product, ProductSet};
use crate::record::Timestamp;
use crate::store::QuarantineEntry;

struct FreshnessData {
    sla: Option<Duration>,
    last: Option<Timestamp>,
    stale: bool,
}

struct QualityData {
    accepted: u64,
    rejected: u64,
    quarantined: u64,
    duplicates: u64,
}

struct UsageData {
    queries: u64,
    subscriptions: i64,
}

struct QuarantinePage {
    edges: Vec<(String, QuarantineEntry)>,
    page_info: PageInfoData,
    total: u64,
}

fn long(n: u64) -> Gql {
    Gql::from(n)
}

fn text(s: &str) -> Gql {
    Gql::String(s.to_string())
}

fn opt_text(s: Option<&str>) -> Gql {
    s.map(text).unwrap_or(Gql::Null)
}

fn opt_time(t: Option<Timestamp>) -> Gql {
    t.map(values::timestamp).unwrap_or(Gql::Null)
}

/// A `Long!` figure of a catalog product read from the store (off the
/// async threads: `count` walks a tree). Counts only, never values, so any
/// role with a right on the product may see them.
fn store_count_field(
    name: &'static str,
    description: &'static str,
    count: fn(&crate::store::Store, &str) -> Result<u64, crate::store::StoreError>,
) -> Field {
    Field::new(name, TypeRef::named_nn(values::LONG), move |ctx| {
        FieldFuture::new(async move {
            let product = ctx
                .parent_value
                .try_downcast_ref::<Arc<Product>>()?
                .name
                .clone();
            let store = runtime(&ctx)?.store().clone();
            let n = blocking(move || count(&store, &product).map_err(|e| e.to_string())).await?;
            Ok(Some(FieldValue::value(long(n))))
        })
    })
    .description(description)
}

/// The catalog's types.
/// One field in the catalog: as declared, and its GraphQL type (an enum
/// type for an `enum:` field that is one, `enums.rs`).
struct CatalogFieldOut {
    field: ProductField,
    graphql_type: String,
}

pub(crate) fn types() -> Vec<Type> {
    let product = Object::new("CatalogProduct")
        .description("A data product this node serves: its contract and its current figures.")
        .field(getter::<Arc<Product>>(
            "name",
            TypeRef::named_nn(TypeRef::STRING),
            |p| text(&p.name),
        ))
        .field(getter::<Arc<Product>>(
            "version",
            TypeRef::named_nn(TypeRef::INT),
            |p| Gql::from(p.version),
        ))
        .field(getter::<Arc<Product>>(
            "domain",
            TypeRef::named_nn(TypeRef::STRING),
            |p| text(&p.domain),
        ))
        .field(getter::<Arc<Product>>(
            "owner",
            TypeRef::named_nn(TypeRef::STRING),
            |p| text(&p.owner),
        ))
        .field(getter::<Arc<Product>>(
            "description",
            TypeRef::named(TypeRef::STRING),
            |p| opt_text(p.description.as_deref().map(str::trim)),
        ))
        .field(
            getter::<Arc<Product>>("key", TypeRef::named_nn(TypeRef::STRING), |p| text(&p.key))
                .description("The entity key field."),
        )
        .field(getter::<Arc<Product>>(
            "graphqlType",
            TypeRef::named_nn(TypeRef::STRING),
            |p| text(&super::names::pascal(&p.name)),
        ))
        .field(Field::new(
            "fields",
            TypeRef::named_nn_list_nn("CatalogField"),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<Arc<Product>>()
                        .map(|p| {
                            let object = super::names::pascal(&p.name);
                            let enums: Vec<&str> = super::enums::enum_fields(p)
                                .map(|f| f.name.as_str())
                                .collect();
                            Some(FieldValue::list(p.fields.values().map(|f| {
                                let graphql_type = if enums.contains(&f.name.as_str()) {
                                    super::enums::type_name(&object, &f.name)
                                } else {
                                    values::type_name(f.ty).to_string()
                                };
                                FieldValue::owned_any(CatalogFieldOut {
                                    field: f.clone(),
                                    graphql_type,
                                })
                            })))
                        }),
                )
            },
        ))
        .field(contract_field())
        .field(freshness_field())
        .field(store_count_field(
            "entities",
            "Instances stored now (one per entity key); counting walks the keys.",
            |store, product| store.count(product),
        ))
        .field(store_count_field(
            "quarantineCount",
            "Payloads in the quarantine now (`quality.quarantined` counts since the node started).",
            |store, product| store.quarantine_count(product),
        ))
        .field(Field::new("quality", TypeRef::named_nn("Quality"), |ctx| {
            ready((|| {
                let p = ctx.parent_value.try_downcast_ref::<Arc<Product>>()?;
                let figures = runtime(&ctx)?.ingestor.metrics().product_figures(&p.name);
                Ok(Some(FieldValue::owned_any(QualityData {
                    accepted: figures.accepted,
                    rejected: figures.rejected,
                    quarantined: figures.quarantined,
                    duplicates: figures.duplicates,
                })))
            })())
        }))
        .field(Field::new("usage", TypeRef::named_nn("Usage"), |ctx| {
            ready((|| {
                let p = ctx.parent_value.try_downcast_ref::<Arc<Product>>()?;
                let usage = runtime(&ctx)?.usage.of(&p.name);
                Ok(Some(FieldValue::owned_any(UsageData {
                    queries: usage.queries.load(Ordering::Relaxed),
                    subscriptions: usage.subscriptions.load(Ordering::Relaxed),
                })))
            })())
        }));

    let field = Object::new("CatalogField")
        .description("One declared field of a product.")
        .field(getter::<CatalogFieldOut>(
            "name",
            TypeRef::named_nn(TypeRef::STRING),
            |f| text(&f.field.name),
        ))
        .field(
            getter::<CatalogFieldOut>("type", TypeRef::named_nn(TypeRef::STRING), |f| {
                text(f.field.ty.name())
            })
            .description("As declared: string, int, float, bool, timestamp, json."),
        )
        .field(getter::<CatalogFieldOut>(
            "graphqlType",
            TypeRef::named_nn(TypeRef::STRING),
            |f| text(&f.graphql_type),
        ))
        .field(getter::<CatalogFieldOut>(
            "unit",
            TypeRef::named(TypeRef::STRING),
            |f| opt_text(f.field.unit.as_deref()),
        ))
        .field(getter::<CatalogFieldOut>(
            "classification",
            TypeRef::named_nn(TypeRef::STRING),
            |f| text(f.field.classification.name()),
        ))
        .field(getter::<CatalogFieldOut>(
            "required",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |f| Gql::Boolean(f.field.required),
        ))
        .field(getter::<CatalogFieldOut>(
            "description",
            TypeRef::named(TypeRef::STRING),
            |f| opt_text(f.field.description.as_deref()),
        ));

    let freshness = Object::new("Freshness")
        .description("How current a product is against its freshness SLA.")
        .field(
            getter::<FreshnessData>("sla", TypeRef::named(TypeRef::STRING), |f| {
                opt_text(
                    f.sla
                        .map(|d| humantime::format_duration(d).to_string())
                        .as_deref(),
                )
            })
            .description("The SLA as written, e.g. `1m`; null without one."),
        )
        .field(getter::<FreshnessData>(
            "slaSeconds",
            TypeRef::named(TypeRef::FLOAT),
            |f| {
                f.sla
                    .map(|d| Gql::from(d.as_secs_f64()))
                    .unwrap_or(Gql::Null)
            },
        ))
        .field(
            getter::<FreshnessData>("lastUpdate", TypeRef::named(values::DATE_TIME), |f| {
                opt_time(f.last)
            })
            .description("The newest lastSeen of any instance."),
        )
        .field(
            getter::<FreshnessData>("stale", TypeRef::named_nn(TypeRef::BOOLEAN), |f| {
                Gql::Boolean(f.stale)
            })
            .description("No update within the SLA (never stale without one)."),
        );

    let quality = Object::new("Quality")
        .description("Records by outcome since the node started, over every source.")
        .field(getter::<QualityData>(
            "accepted",
            TypeRef::named_nn(values::LONG),
            |q| long(q.accepted),
        ))
        .field(getter::<QualityData>(
            "rejected",
            TypeRef::named_nn(values::LONG),
            |q| long(q.rejected),
        ))
        .field(getter::<QualityData>(
            "quarantined",
            TypeRef::named_nn(values::LONG),
            |q| long(q.quarantined),
        ))
        .field(getter::<QualityData>(
            "duplicates",
            TypeRef::named_nn(values::LONG),
            |q| long(q.duplicates),
        ));

    let usage = Object::new("Usage")
        .description("API use since the node started.")
        .field(
            getter::<UsageData>("queries", TypeRef::named_nn(values::LONG), |u| {
                long(u.queries)
            })
            .description("Lookups and connections served."),
        )
        .field(
            getter::<UsageData>("subscriptions", TypeRef::named_nn(TypeRef::INT), |u| {
                Gql::from(u.subscriptions)
            })
            .description("Subscriptions open now."),
        );

    let entry = Object::new("QuarantineEntry")
        .description("A payload that failed validation, kept whole with every reason.")
        .field(getter::<QuarantineEntry>(
            "id",
            TypeRef::named_nn(values::LONG),
            |e| long(e.id),
        ))
        .field(getter::<QuarantineEntry>(
            "quarantinedAt",
            TypeRef::named_nn(values::DATE_TIME),
            |e| values::timestamp(e.quarantined_at),
        ))
        .field(getter::<QuarantineEntry>(
            "source",
            TypeRef::named_nn(TypeRef::STRING),
            |e| text(&e.item.source),
        ))
        .field(getter::<QuarantineEntry>(
            "topic",
            TypeRef::named(TypeRef::STRING),
            |e| opt_text(e.item.topic.as_deref()),
        ))
        .field(
            getter::<QuarantineEntry>("index", TypeRef::named(TypeRef::INT), |e| {
                e.item.index.map(Gql::from).unwrap_or(Gql::Null)
            })
            .description("Which record of the payload; null: the payload as a whole."),
        )
        .field(getter::<QuarantineEntry>(
            "reasons",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            |e| Gql::List(e.item.reasons.iter().map(|r| text(r)).collect()),
        ))
        .field(
            getter::<QuarantineEntry>("payload", TypeRef::named_nn(TypeRef::STRING), |e| {
                Gql::String(String::from_utf8_lossy(&e.item.payload).into_owned())
            })
            .description("The raw payload as text (invalid UTF-8 replaced)."),
        )
        .field(
            getter::<QuarantineEntry>("payloadBase64", TypeRef::named_nn(TypeRef::STRING), |e| {
                Gql::String(base64::engine::general_purpose::STANDARD.encode(&e.item.payload))
            })
            .description("The raw payload, byte for byte."),
        )
        .field(getter::<QuarantineEntry>(
            "payloadBytes",
            TypeRef::named_nn(TypeRef::INT),
            |e| Gql::from(e.item.payload.len()),
        ));
    let edge = Object::new("QuarantineEdge")
        .field(getter::<(String, QuarantineEntry)>(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |e| text(&e.0),
        ))
        .field(Field::new(
            "node",
            TypeRef::named_nn("QuarantineEntry"),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<(String, QuarantineEntry)>()
                        .map(|e| Some(FieldValue::borrowed_any(&e.1))),
                )
            },
        ));
    let connection = Object::new("QuarantineConnection")
        .description("A page of quarantined payloads, oldest first.")
        .field(getter::<QuarantinePage>(
            "totalCount",
            TypeRef::named_nn(values::LONG),
            |p| long(p.total),
        ))
        .field(Field::new(
            "edges",
            TypeRef::named_nn_list_nn("QuarantineEdge"),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<QuarantinePage>()
                        .map(|p| {
                            Some(FieldValue::list(
                                p.edges.iter().map(|x| FieldValue::borrowed_any(x)),
                            ))
                        }),
                )
            },
        ))
        .field(Field::new(
            "nodes",
            TypeRef::named_nn_list_nn("QuarantineEntry"),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<QuarantinePage>()
                        .map(|p| {
                            Some(FieldValue::list(
                                p.edges.iter().map(|e| FieldValue::borrowed_any(&e.1)),
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
                        .try_downcast_ref::<QuarantinePage>()
                        .map(|p| Some(FieldValue::borrowed_any(&p.page_info))),
                )
            },
        ));

    let status = Object::new("SchemaStatus")
        .description("The schema this node serves, and how its last reload went.")
        .field(getter::<StatusData>("generation", TypeRef::named_nn(TypeRef::INT), |s| Gql::from(s.generation)).description("1 at start, +1 per successful reload."))
        .field(getter::<StatusData>("loadedAt", TypeRef::named(values::DATE_TIME), |s| opt_time(s.loaded_at)))
        .field(getter::<StatusData>("lastAttemptAt", TypeRef::named(values::DATE_TIME), |s| opt_time(s.last_attempt)))
        .field(getter::<StatusData>("products", TypeRef::named_nn_list_nn(TypeRef::STRING), |s| {
            Gql::List(s.products.iter().map(|p| text(p)).collect())
        }))
        .field(getter::<StatusData>("problems", TypeRef::named_nn_list_nn(TypeRef::STRING), |s| {
            Gql::List(s.problems.iter().map(|p| text(p)).collect())
        }).description("Why the last reload was refused (the previous schema stays); empty when it succeeded."));

    let contract_format = Enum::new("ContractFormat")
        .description("How `CatalogProduct.contract` renders the ODCS contract.")
        .item("YAML")
        .item("JSON");

    vec![
        product.into(),
        contract_format.into(),
        field.into(),
        freshness.into(),
        quality.into(),
        usage.into(),
        entry.into(),
        edge.into(),
        connection.into(),
        status.into(),
    ]
}

/// `contract(format)`: the product's ODCS v3 data contract as text, the
/// same bytes `meshlet contract export` prints. Text rather than a JSON
/// value because contract tools (catalogs, contract testers) take the
/// YAML file as is; `JSON` serves clients that parse it themselves.
fn contract_field() -> Field {
    Field::new("contract", TypeRef::named_nn(TypeRef::STRING), |ctx| {
        ready((|| {
            let product = ctx.parent_value.try_downcast_ref::<Arc<Product>>()?;
            let format = match ctx.args.try_get("format")?.enum_name()? {
                "JSON" => ContractFormat::Json,
                _ => ContractFormat::Yaml,
            };
            Ok(Some(FieldValue::value(Gql::String(contract::render(
                product, format,
            )))))
        })())
    })
    .description(
        "The product's ODCS v3 data contract (Bitol Open Data Contract Standard), exactly as `meshlet contract export` writes it: YAML by default, or JSON.",
    )
    .argument(
        InputValue::new("format", TypeRef::named_nn("ContractFormat"))
            .default_value(Gql::Enum(Name::new("YAML"))),
    )
}

fn freshness_field() -> Field {
    Field::new("freshness", TypeRef::named_nn("Freshness"), |ctx| {
        FieldFuture::new(async move {
            let product = ctx.parent_value.try_downcast_ref::<Arc<Product>>()?.clone();
            let runtime = runtime(&ctx)?;
            let tracker = runtime.freshness.clone();
            let store = runtime.store().clone();
            let name = product.name.clone();
            let last =
                blocking(move || Ok(tracker.last_update_blocking(&store, &name, SCAN_BUDGET)))
                    .await?;
            let stale = match product.freshness {
                None => false,
                Some(sla) => last.is_none_or(|t| t < Timestamp::now().saturating_sub(sla)),
            };
            Ok(Some(FieldValue::owned_any(FreshnessData {
                sla: product.freshness,
                last,
                stale,
            })))
        })
    })
}

/// Quarantine entries read per store call (each up to 64 KiB), charging
/// the byte budget between calls.
const QUARANTINE_READ_STEP: usize = 16;

/// `products`, `product`, `quarantine` and `schemaStatus`.
pub(crate) fn root_fields(products: &Arc<ProductSet>) -> Vec<Field> {
    let all = products.clone();
    let one = products.clone();
    let quarantined = products.clone();
    vec![
        Field::new(
            "products",
            TypeRef::named_nn_list_nn("CatalogProduct"),
            move |ctx| {
                ready(caller(&ctx).map(|caller| {
                    Some(FieldValue::list(
                        all.iter()
                            .filter(|p| caller.view(p).any_right())
                            .cloned()
                            .map(FieldValue::owned_any),
                    ))
                }))
            },
        )
        .description("Every product this node serves that the caller's role has any right on, by name."),
        Field::new("product", TypeRef::named("CatalogProduct"), move |ctx| {
            ready((|| {
                let caller = caller(&ctx)?;
                let name = ctx.args.try_get("name")?.string()?;
                Ok(one
                    .get(name)
                    .filter(|p| caller.view(p).any_right())
                    .cloned()
                    .map(FieldValue::owned_any))
            })())
        })
        .description("One product by name, or null (also when the caller's role has no right on it).")
        .argument(InputValue::new("name", TypeRef::named_nn(TypeRef::STRING))),
        Field::new(
            "quarantine",
            TypeRef::named_nn("QuarantineConnection"),
            move |ctx| {
                let products = quarantined.clone();
                FieldFuture::new(async move {
                    let runtime = runtime(&ctx)?;
                    let name = ctx.args.try_get("product")?.string()?.to_string();
                    let Some(product) = products.get(&name) else {
                        return Err(field_errors::bad_argument(format!(
                            "no product named `{name}`"
                        )));
                    };
                    let view = caller(&ctx)?.view(product);
                    require(&ctx, &view, view.may_see_quarantine(), "see the raw quarantined payloads of")?;
                    let first = page_size(&ctx, "first")?.unwrap_or(limits::DEFAULT_PAGE);
                    let after = opt_string(&ctx, "after")?
                        .map(|c| {
                            c.parse::<u64>().map_err(|_| {
                                field_errors::bad_argument(format!(
                                    "`{c}` is not a quarantine cursor"
                                ))
                            })
                        })
                        .transpose()?;
                    let store = runtime.store().clone();
                    // Raw payloads are the bulk of the answer: read a few
                    // at a time, each charged to the request's byte budget
                    // as it is read, so the reads of all aliases together
                    // stop at the budget.
                    let budget = ctx.ctx.data_opt::<Arc<ResponseBudget>>().cloned();
                    let charged = budget.clone();
                    let (total, mut entries, over_budget) = blocking(move || {
                        let total = store.quarantine_count(&name).map_err(|e| e.to_string())?;
                        let want = first.saturating_add(1);
                        let mut cursor = after;
                        let mut entries = Vec::new();
                        while entries.len() < want {
                            let step = QUARANTINE_READ_STEP.min(want - entries.len());
                            let page = store
                                .quarantine_list(&name, cursor, step)
                                .map_err(|e| e.to_string())?;
                            let last_page = page.len() < step;
                            for entry in page {
                                if let Some(budget) = &charged {
                                    if budget.charge(entry.item.payload.len()).is_err() {
                                        return Ok((total, entries, true));
                                    }
                                }
                                cursor = Some(entry.id);
                                entries.push(entry);
                            }
                            if last_page {
                                break;
                            }
                        }
                        Ok((total, entries, false))
                    })
                    .await?;
                    if let (true, Some(budget)) = (over_budget, &budget) {
                        return Err(budget.refusal());
                    }
                    let has_next = entries.len() > first;
                    entries.truncate(first);
                    let edges: Vec<(String, QuarantineEntry)> =
                        entries.into_iter().map(|e| (e.id.to_string(), e)).collect();
                    let page_info = PageInfoData {
                        has_next,
                        has_previous: false,
                        start: edges.first().map(|e| e.0.clone()),
                        end: edges.last().map(|e| e.0.clone()),
                    };
                    Ok(Some(FieldValue::owned_any(QuarantinePage {
                        edges,
                        page_info,
                        total,
                    })))
                })
            },
        )
        .description(
            "A product's quarantined payloads with every reason and the raw payload, oldest first: `first` per page (default 100, at most 1000) after the cursor `after`.",
        )
        .argument(InputValue::new(
            "product",
            TypeRef::named_nn(TypeRef::STRING),
        ))
        .argument(
            InputValue::new("first", TypeRef::named(TypeRef::INT)),
        )
        .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING))),
        Field::new("schemaStatus", TypeRef::named_nn("SchemaStatus"), |ctx| {
            ready(runtime(&ctx).map(|r| Some(FieldValue::owned_any(r.status.get()))))
        })
        .description("The schema's generation and the problems of a refused reload."),
    ]
}
