//! The object types of one product's instances: `<Product>` (typed fields,
//! `_meta`, `history`, `audit`, `auditHead`, `auditVerified`), its history
//! events (`<Product>Event` with `<Product>Values`) and history connection,
//! and the shared `InstanceMeta`, `AuditLine`, `AuditVerification` and
//! `AuditBreak`.

use std::any::Any;
use std::sync::Arc;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputValue, Object, Type, TypeRef,
};
use async_graphql::Value as Gql;

use super::args::{opt_string, opt_time, page_size};
use super::budget::{fields_bytes, ResponseBudget};
use super::context::runtime;
use super::enums::EnumType;
use super::field_errors;
use super::limits;
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::{blocking, getter, non_null, ready};
use super::schema::PageInfoData;
use super::values;
use crate::policy::access::View;
use crate::product::{Field as ProductField, FieldType};
use crate::record::{Fields, Timestamp};
use crate::store::{
    AuditAction, AuditBreak, AuditEntry, AuditQuery, AuditVerdict, HistoryEvent, HistoryQuery,
    Instance, Store,
};

/// Something with a product's fields: an instance, or a history event.
pub(crate) trait HasFields: Any + Send + Sync {
    fn fields(&self) -> &Fields;
    /// The entity key, when the fields may lack it.
    fn entity(&self) -> Option<&str>;
}

impl HasFields for Instance {
    fn fields(&self) -> &Fields {
        &self.fields
    }
    fn entity(&self) -> Option<&str> {
        Some(&self.entity)
    }
}

impl HasFields for HistoryEvent {
    fn fields(&self) -> &Fields {
        &self.fields
    }
    fn entity(&self) -> Option<&str> {
        None
    }
}

/// A field's description in the schema: its own, then unit and
/// classification, so a client sees what the catalog says.
pub(crate) fn describe(field: &ProductField) -> String {
    let mut text = field.description.clone().unwrap_or_default();
    let mut facts = Vec::new();
    if let Some(unit) = &field.unit {
        facts.push(format!("unit: {unit}"));
    }
    facts.push(format!("classification: {}", field.classification));
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(&format!("({})", facts.join("; ")));
    text
}

/// One typed product field read off a parent of type `T`.
fn typed_field<T: HasFields>(
    api: &ProductApi,
    field: &ProductField,
    required: bool,
    is_key: bool,
) -> Field {
    let ty = field.ty;
    let name = field.name.clone();
    let enum_type = api.enums.get(&field.name).cloned();
    let type_name = enum_type
        .as_ref()
        .map_or(values::type_name(ty), |e| e.name.as_str());
    let type_ref = if required {
        TypeRef::named_nn(type_name)
    } else {
        TypeRef::named(type_name)
    };
    Field::new(&field.name, type_ref, move |ctx| {
        ready(ctx.parent_value.try_downcast_ref::<T>().map(|parent| {
            non_null(field_output(
                parent,
                &name,
                ty,
                is_key,
                enum_type.as_deref(),
            ))
        }))
    })
    .description(describe(field))
}

/// The value of the product field `name` (of type `ty`, a GraphQL enum
/// when `enum_type` is given) of `parent`, as the schema returns it.
/// Shared with the prepared lookups (`prepared.rs`).
pub(crate) fn field_output<T: HasFields>(
    parent: &T,
    name: &str,
    ty: FieldType,
    is_key: bool,
    enum_type: Option<&EnumType>,
) -> Gql {
    match parent.fields().get(name) {
        Some(value) => match enum_type {
            Some(e) => e.output(value),
            None => values::output(ty, value),
        },
        None if is_key => key_value(ty, parent.entity()),
        None => Gql::Null,
    }
}

/// The entity key as the key field's value (for an instance whose fields
/// lack it, which the pipeline never produces).
fn key_value(ty: FieldType, entity: Option<&str>) -> Gql {
    match (ty, entity) {
        (FieldType::Int, Some(e)) => e.parse::<i64>().map(Gql::from).unwrap_or(Gql::Null),
        (_, Some(e)) => Gql::String(e.to_string()),
        (_, None) => Gql::Null,
    }
}

/// What `_meta` shows.
struct MetaData {
    version: u64,
    first_seen: Timestamp,
    last_seen: Timestamp,
    event_time: Timestamp,
    source: String,
    actor: Option<String>,
    stale: bool,
}

/// The shared `InstanceMeta` type.
pub(crate) fn meta_object() -> Object {
    Object::new("InstanceMeta")
        .description("What the node knows about an instance besides its fields.")
        .field(
            getter::<MetaData>("version", TypeRef::named_nn(values::LONG), |m| {
                Gql::from(m.version)
            })
            .description("Records applied since the entity was (re)created; the newest history version."),
        )
        .field(
            getter::<MetaData>("firstSeen", TypeRef::named_nn(values::DATE_TIME), |m| {
                values::timestamp(m.first_seen)
            })
            .description("Arrival of the first record."),
        )
        .field(
            getter::<MetaData>("lastSeen", TypeRef::named_nn(values::DATE_TIME), |m| {
                values::timestamp(m.last_seen)
            })
            .description("Arrival of the latest record."),
        )
        .field(
            getter::<MetaData>("eventTime", TypeRef::named_nn(values::DATE_TIME), |m| {
                values::timestamp(m.event_time)
            })
            .description("The newest event time applied to the state."),
        )
        .field(
            getter::<MetaData>("source", TypeRef::named_nn(TypeRef::STRING), |m| {
                Gql::String(m.source.clone())
            })
            .description("Where the latest record came from, e.g. `mqtt:plant/berlin/machine/PR-0042/telemetry`, `http`, `graphql`."),
        )
        .field(
            getter::<MetaData>("actor", TypeRef::named(TypeRef::STRING), |m| {
                m.actor.clone().map(Gql::String).unwrap_or(Gql::Null)
            })
            .description("Who sent it, when known (MQTT client id, API token name)."),
        )
        .field(
            getter::<MetaData>("stale", TypeRef::named_nn(TypeRef::BOOLEAN), |m| {
                Gql::Boolean(m.stale)
            })
            .description("Not seen within the product's freshness SLA (never stale without one)."),
        )
}

pub(crate) fn audit_action_enum() -> Enum {
    Enum::new("AuditAction")
        .description("What an audit line records.")
        .item("CREATED")
        .item("UPDATED")
        .item("ERASED")
        .item("EXPIRED")
}

/// The shared `AuditLine` type.
pub(crate) fn audit_object() -> Object {
    let time = |t: Timestamp| values::timestamp(t);
    Object::new("AuditLine")
        .description("Who or what changed an entity, when; field names, never values. Consecutive changes from one origin share a line.")
        .field(getter::<AuditEntry>("action", TypeRef::named_nn("AuditAction"), |a| {
            Gql::Enum(async_graphql::Name::new(match a.action {
                AuditAction::Created => "CREATED",
                AuditAction::Updated => "UPDATED",
                AuditAction::Erased => "ERASED",
                AuditAction::Expired => "EXPIRED",
            }))
        }))
        .field(getter::<AuditEntry>("firstAt", TypeRef::named_nn(values::DATE_TIME), move |a| time(a.first_at)))
        .field(getter::<AuditEntry>("lastAt", TypeRef::named_nn(values::DATE_TIME), move |a| time(a.last_at)))
        .field(getter::<AuditEntry>("fromVersion", TypeRef::named_nn(values::LONG), |a| Gql::from(a.from_version)))
        .field(getter::<AuditEntry>("toVersion", TypeRef::named_nn(values::LONG), |a| Gql::from(a.to_version)))
        .field(getter::<AuditEntry>("count", TypeRef::named_nn(values::LONG), |a| Gql::from(a.count)))
        .field(getter::<AuditEntry>("fields", TypeRef::named_nn_list_nn(TypeRef::STRING), |a| {
            Gql::List(a.fields.iter().cloned().map(Gql::String).collect())
        }))
        .field(getter::<AuditEntry>("source", TypeRef::named_nn(TypeRef::STRING), |a| {
            Gql::String(a.origin.source.clone())
        }))
        .field(getter::<AuditEntry>("actor", TypeRef::named(TypeRef::STRING), |a| {
            a.origin.actor.clone().map(Gql::String).unwrap_or(Gql::Null)
        }))
        .field(getter::<AuditEntry>("hash", TypeRef::named(TypeRef::STRING), |a| {
            a.hash.clone().map(Gql::String).unwrap_or(Gql::Null)
        }).description("Hex SHA-256 of the line in the entity's audit hash chain; null for a line written before the chain."))
}

/// The shared `AuditVerification` type (`auditVerified`).
pub(crate) fn audit_verification_object() -> Object {
    Object::new("AuditVerification")
        .description("The outcome of checking an entity's audit hash chain: every line's hash, its link to the line before, and the digest of the history events it covers while history still holds them.")
        .field(getter::<AuditVerdict>("ok", TypeRef::named_nn(TypeRef::BOOLEAN), |v| Gql::Boolean(v.broken.is_none())))
        .field(getter::<AuditVerdict>("lines", TypeRef::named_nn(values::LONG), |v| Gql::from(v.lines)).description("Lines read (up to the first break)."))
        .field(getter::<AuditVerdict>("linked", TypeRef::named_nn(values::LONG), |v| Gql::from(v.linked)).description("Lines whose hash and link were checked."))
        .field(getter::<AuditVerdict>("unlinked", TypeRef::named_nn(values::LONG), |v| Gql::from(v.unlinked)).description("Lines written before the chain (no hash)."))
        .field(getter::<AuditVerdict>("eventsPruned", TypeRef::named_nn(values::LONG), |v| Gql::from(v.events_pruned)).description("Linked lines whose history retention dropped, so their events digest was not compared."))
        .field(getter::<AuditVerdict>("head", TypeRef::named(TypeRef::STRING), |v| v.head.clone().map(Gql::String).unwrap_or(Gql::Null)).description("Hex hash of the newest linked line."))
        .field(
            Field::new("broken", TypeRef::named("AuditBreak"), |ctx| {
                ready(ctx.parent_value.try_downcast_ref::<AuditVerdict>().map(|v| {
                    v.broken.clone().map(FieldValue::owned_any)
                }))
            })
            .description("The first broken link; null when the chain verifies."),
        )
}

/// The shared `AuditBreak` type.
pub(crate) fn audit_break_object() -> Object {
    Object::new("AuditBreak")
        .description("Where and why an audit hash chain breaks.")
        .field(
            getter::<AuditBreak>("line", TypeRef::named_nn(values::LONG), |b| {
                Gql::from(b.line)
            })
            .description("Position of the line, 1 for the oldest."),
        )
        .field(getter::<AuditBreak>(
            "fromVersion",
            TypeRef::named_nn(values::LONG),
            |b| Gql::from(b.from_version),
        ))
        .field(getter::<AuditBreak>(
            "toVersion",
            TypeRef::named_nn(values::LONG),
            |b| Gql::from(b.to_version),
        ))
        .field(getter::<AuditBreak>(
            "reason",
            TypeRef::named_nn(TypeRef::STRING),
            |b| Gql::String(b.reason.clone()),
        ))
}

/// A page of history events.
struct HistoryPage {
    edges: Vec<(String, HistoryEvent)>,
    page_info: PageInfoData,
}

/// The types of one product's instances and history.
pub(crate) fn types(api: &Arc<ProductApi>) -> Vec<Type> {
    let product = &api.product;
    let names = &api.names;

    let mut object = Object::new(&names.object).description(
        product
            .description
            .clone()
            .map(|d| d.trim().to_string())
            .unwrap_or_else(|| format!("An instance of product `{}`.", product.name)),
    );
    for field in product.fields.values() {
        let is_key = field.name == product.key;
        object = object.field(typed_field::<Instance>(api, field, is_key, is_key));
    }
    if super::relay::is_node(api) {
        object = object
            .implement(super::relay::NODE)
            .field(super::relay::id_field(api));
    }
    object = object
        .field(meta_field(api))
        .field(history_field(api))
        .field(super::series::series_field(api))
        .field(audit_field(api))
        .field(audit_head_field(api))
        .field(audit_verified_field(api));

    let mut values_object = Object::new(&names.values).description(format!(
        "The fields one `{}` record carried, as received (absent: not sent or sent as null).",
        product.name
    ));
    for field in product.fields.values() {
        values_object = values_object.field(typed_field::<HistoryEvent>(api, field, false, false));
    }

    let event = Object::new(&names.event)
        .description(format!(
            "One record of a `{}` entity's history.",
            product.name
        ))
        .field(getter::<HistoryEvent>(
            "version",
            TypeRef::named_nn(values::LONG),
            |e| Gql::from(e.version),
        ))
        .field(getter::<HistoryEvent>(
            "eventTime",
            TypeRef::named_nn(values::DATE_TIME),
            |e| values::timestamp(e.event_time),
        ))
        .field(getter::<HistoryEvent>(
            "receivedAt",
            TypeRef::named_nn(values::DATE_TIME),
            |e| values::timestamp(e.received_at),
        ))
        .field(getter::<HistoryEvent>(
            "source",
            TypeRef::named_nn(TypeRef::STRING),
            |e| Gql::String(e.origin.source.clone()),
        ))
        .field(getter::<HistoryEvent>(
            "actor",
            TypeRef::named(TypeRef::STRING),
            |e| e.origin.actor.clone().map(Gql::String).unwrap_or(Gql::Null),
        ))
        .field(Field::new(
            "values",
            TypeRef::named_nn(&names.values),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<HistoryEvent>()
                        .map(|e| Some(FieldValue::borrowed_any(e))),
                )
            },
        ));

    let edge = Object::new(&names.history_edge)
        .field(getter::<(String, HistoryEvent)>(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |e| Gql::String(e.0.clone()),
        ))
        .field(Field::new("node", TypeRef::named_nn(&names.event), |ctx| {
            ready(
                ctx.parent_value
                    .try_downcast_ref::<(String, HistoryEvent)>()
                    .map(|e| Some(FieldValue::borrowed_any(&e.1))),
            )
        }));
    let connection = Object::new(&names.history_connection)
        .description("A page of history events, oldest first (also when paged backwards with `last`/`before`).")
        .field(Field::new(
            "edges",
            TypeRef::named_nn_list_nn(&names.history_edge),
            |ctx| {
                ready(ctx.parent_value.try_downcast_ref::<HistoryPage>().map(|p| {
                    Some(FieldValue::list(
                        p.edges.iter().map(|x| FieldValue::borrowed_any(x)),
                    ))
                }))
            },
        ))
        .field(Field::new(
            "nodes",
            TypeRef::named_nn_list_nn(&names.event),
            |ctx| {
                ready(ctx.parent_value.try_downcast_ref::<HistoryPage>().map(|p| {
                    Some(FieldValue::list(
                        p.edges.iter().map(|e| FieldValue::borrowed_any(&e.1)),
                    ))
                }))
            },
        ))
        .field(Field::new(
            "pageInfo",
            TypeRef::named_nn("PageInfo"),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<HistoryPage>()
                        .map(|p| Some(FieldValue::borrowed_any(&p.page_info))),
                )
            },
        ));

    let mut types = vec![
        object.into(),
        values_object.into(),
        event.into(),
        edge.into(),
        connection.into(),
    ];
    types.extend(super::series::bucket_types(api));
    types
}

/// Whether the entity's current (clear) state passes the view's row
/// filter. History and audit ask the store rather than trust the parent
/// object: a mutation's answer can be an instance its writer may not read.
pub(crate) fn shown(
    store: &Store,
    view: &View,
    product: &str,
    entity: &str,
) -> Result<bool, String> {
    if view.reads_clear() {
        return Ok(true);
    }
    let current = store.get(product, entity).map_err(|e| e.to_string())?;
    Ok(current.is_some_and(|i| view.shows_instance(&i)))
}

fn meta_field(api: &Arc<ProductApi>) -> Field {
    let api = api.clone();
    Field::new("_meta", TypeRef::named_nn("InstanceMeta"), move |ctx| {
        ready(ctx.parent_value.try_downcast_ref::<Instance>().map(|i| {
            Some(FieldValue::owned_any(MetaData {
                version: i.version,
                first_seen: i.first_seen,
                last_seen: i.last_seen,
                event_time: i.event_time,
                source: i.last_origin.source.clone(),
                actor: i.last_origin.actor.clone(),
                stale: api.is_stale(Some(i.last_seen), Timestamp::now()),
            }))
        }))
    })
    .description("Version, first and last seen, source, staleness.")
}

/// History events read per store call (a sealed chunk's worth by
/// default), charging the byte budget between calls.
const HISTORY_READ_STEP: usize = 256;

/// Which end of the history a page is taken from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum HistoryWindow {
    /// `first`: the oldest events (in the cursors' range).
    Oldest(usize),
    /// `last`: the newest events.
    Newest(usize),
}

impl HistoryWindow {
    fn of(first: Option<usize>, last: Option<usize>) -> async_graphql::Result<HistoryWindow> {
        match (first, last) {
            (Some(_), Some(_)) => Err(field_errors::bad_argument(
                "give `first` (oldest first, with `after`) or `last` (newest first, with `before`), not both",
            )),
            (None, Some(last)) => Ok(HistoryWindow::Newest(last)),
            (first, None) => Ok(HistoryWindow::Oldest(first.unwrap_or(limits::DEFAULT_PAGE))),
        }
    }

    fn size(self) -> usize {
        match self {
            HistoryWindow::Oldest(n) | HistoryWindow::Newest(n) => n,
        }
    }

    fn newest_first(self) -> bool {
        matches!(self, HistoryWindow::Newest(_))
    }
}

/// A history cursor (an event version) from its string form.
fn history_cursor(cursor: Option<String>) -> async_graphql::Result<Option<u64>> {
    cursor
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| field_errors::bad_argument(format!("`{c}` is not a history cursor")))
        })
        .transpose()
}

fn history_field(api: &Arc<ProductApi>) -> Field {
    let api = api.clone();
    let connection = api.names.history_connection.clone();
    Field::new("history", TypeRef::named_nn(connection), move |ctx| {
        let api = api.clone();
        FieldFuture::new(async move {
            let instance = ctx.parent_value.try_downcast_ref::<Instance>()?;
            let runtime = runtime(&ctx)?;
            // The parent instance came through this view (so it is
            // visible); its past records are masked the same way.
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.read, "read")?;
            let window = HistoryWindow::of(
                page_size(&ctx, "first")?,
                page_size(&ctx, "last")?,
            )?;
            let page = window.size();
            let query = HistoryQuery {
                since: opt_time(&ctx, "since")?,
                until: opt_time(&ctx, "until")?,
                after_version: history_cursor(opt_string(&ctx, "after")?)?,
                before_version: history_cursor(opt_string(&ctx, "before")?)?,
                newest_first: window.newest_first(),
                limit: page.saturating_add(1),
            };
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let entity = instance.entity.clone();
            let visible = view.clone();
            // Past records may carry large values: read in steps, each
            // event charged to the request's byte budget as it is read,
            // so the reads of all aliases together stop at the budget.
            let budget = ctx.ctx.data_opt::<Arc<ResponseBudget>>().cloned();
            let charged = budget.clone();
            let (mut events, over_budget) = blocking(move || {
                if !shown(&store, &visible, &product, &entity)? {
                    return Ok((Vec::new(), false));
                }
                let want = query.limit;
                let mut step = query;
                let mut events = Vec::new();
                while events.len() < want {
                    step.limit = HISTORY_READ_STEP.min(want - events.len());
                    let page = store
                        .history(&product, &entity, &step)
                        .map_err(|e| e.to_string())?;
                    let last_page = page.len() < step.limit;
                    for event in page {
                        if let Some(budget) = &charged {
                            if budget.charge(fields_bytes(&event.fields)).is_err() {
                                return Ok((events, true));
                            }
                        }
                        if step.newest_first {
                            step.before_version = Some(event.version);
                        } else {
                            step.after_version = Some(event.version);
                        }
                        events.push(event);
                    }
                    if last_page {
                        break;
                    }
                }
                Ok((events, false))
            })
            .await?;
            if let (true, Some(budget)) = (over_budget, &budget) {
                return Err(budget.refusal());
            }
            // One more than the page was read: it says whether there is
            // more on the side the page was cut.
            let more = events.len() > page;
            events.truncate(page);
            if window.newest_first() {
                // Read newest first; a page is shown oldest first (Relay).
                events.reverse();
            }
            let edges: Vec<(String, HistoryEvent)> = events
                .into_iter()
                .map(|mut e| {
                    view.mask_fields(&mut e.fields);
                    (e.version.to_string(), e)
                })
                .collect();
            let page_info = PageInfoData {
                has_next: more && !window.newest_first(),
                has_previous: more && window.newest_first(),
                start: edges.first().map(|e| e.0.clone()),
                end: edges.last().map(|e| e.0.clone()),
            };
            Ok(Some(FieldValue::owned_any(HistoryPage { edges, page_info })))
        })
    })
    .description("The entity's past records (as received, not merged) from the stored history chunks, event time in [since, until), each page oldest first. Forward: the `first` (default 100, at most 1000) oldest after the cursor `after`. Backward: the `last` newest before the cursor `before` (`history(last: 20)` is the latest 20; the page's `startCursor` as `before` gives the 20 before them), read from the newest end so its cost does not grow with the history's length. Cursors are event versions, stable in both directions; `after` and `before` bound either.")
    .argument(InputValue::new("since", TypeRef::named(values::DATE_TIME)))
    .argument(InputValue::new("until", TypeRef::named(values::DATE_TIME)))
    .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)))
    .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
    .argument(InputValue::new("last", TypeRef::named(TypeRef::INT)))
    .argument(InputValue::new("before", TypeRef::named(TypeRef::STRING)))
}

fn audit_head_field(api: &Arc<ProductApi>) -> Field {
    let api = api.clone();
    Field::new("auditHead", TypeRef::named(TypeRef::STRING), move |ctx| {
        let api = api.clone();
        FieldFuture::new(async move {
            let instance = ctx.parent_value.try_downcast_ref::<Instance>()?;
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.read, "read")?;
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let entity = instance.entity.clone();
            let head = blocking(move || {
                if !shown(&store, &view, &product, &entity)? {
                    return Ok(None);
                }
                store
                    .audit_head(&product, &entity)
                    .map_err(|e| e.to_string())
            })
            .await?;
            Ok(head.map(|h| FieldValue::value(Gql::String(h))))
        })
    })
    .description("Hex SHA-256 of the entity's newest audit line: keep it elsewhere, and `auditVerified` (or `meshlet audit verify`) later proves every line up to it unchanged. Null when the entity has no line written since the chain began.")
}

fn audit_verified_field(api: &Arc<ProductApi>) -> Field {
    let api = api.clone();
    Field::new("auditVerified", TypeRef::named("AuditVerification"), move |ctx| {
        let api = api.clone();
        FieldFuture::new(async move {
            let instance = ctx.parent_value.try_downcast_ref::<Instance>()?;
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.read, "read")?;
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let entity = instance.entity.clone();
            let verdict = blocking(move || {
                if !shown(&store, &view, &product, &entity)? {
                    return Ok(None);
                }
                store
                    .verify_audit(&product, &entity)
                    .map(Some)
                    .map_err(|e| e.to_string())
            })
            .await?;
            Ok(verdict.map(FieldValue::owned_any))
        })
    })
    .description("Checks the entity's audit hash chain now (reads every audit line and the history they cover) and reports the first broken link.")
}

fn audit_field(api: &Arc<ProductApi>) -> Field {
    let api = api.clone();
    Field::new(
        "audit",
        TypeRef::named_nn_list_nn("AuditLine"),
        move |ctx| {
            let api = api.clone();
            FieldFuture::new(async move {
                let instance = ctx.parent_value.try_downcast_ref::<Instance>()?;
                let runtime = runtime(&ctx)?;
                let view = view(&ctx, &api)?;
                require(&ctx, &view, view.read, "read")?;
                let query = AuditQuery {
                    since: opt_time(&ctx, "since")?,
                    until: opt_time(&ctx, "until")?,
                    limit: page_size(&ctx, "first")?.unwrap_or(limits::DEFAULT_PAGE),
                };
                let store = runtime.store().clone();
                let product = api.name().to_string();
                let entity = instance.entity.clone();
                let lines = blocking(move || {
                    if !shown(&store, &view, &product, &entity)? {
                        return Ok(Vec::new());
                    }
                    store
                        .audit(&product, &entity, &query)
                        .map_err(|e| e.to_string())
                })
                .await?;
                Ok(Some(FieldValue::list(
                    lines.into_iter().map(FieldValue::owned_any),
                )))
            })
        },
    )
    .description("Who or what changed the entity, oldest first: lines overlapping [since, until), at most `first` (default 100, at most 1000).")
    .argument(
        InputValue::new("since", TypeRef::named(values::DATE_TIME)),
    )
    .argument(
        InputValue::new("until", TypeRef::named(values::DATE_TIME)),
    )
    .argument(
        InputValue::new("first", TypeRef::named(TypeRef::INT)),
    )
}
