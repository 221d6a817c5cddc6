//! `series` on every instance: its history downsampled into windows of
//! event time (`<Product>Bucket`), and the shared statistics types. Thin:
//! the events are read through the caller's view (row filter, masks), the
//! bucketing is `timeseries::buckets`, this file only reads arguments,
//! bounds the work and renders buckets.
//!
//! Bounds: the query cost model (`cost.rs`) counts every bucket a
//! `series` can return times what each bucket selects, so a 30-day chart
//! in 5-minute buckets (8,640) of a few statistics passes and a 1-minute
//! one (43,200) is refused before it runs (`QUERY_TOO_COSTLY`). Behind
//! it, at most [`MAX_BUCKETS`] buckets per call (checked before any read;
//! the cost model's estimate cannot know `until` = now to the
//! microsecond) and at most [`MAX_SERIES_EVENTS`] events in the window
//! (the read stops and the call is refused with `SERIES_TOO_LARGE`), so
//! one call's memory is bounded whatever the history holds.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputValue, Object, Type, TypeRef,
};
use async_graphql::{ErrorExtensions, Value as Gql};

use super::args::{opt_string, opt_time};
use super::context::runtime;
use super::instance::{describe, shown};
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::{blocking, getter, ready};
use super::values;
use crate::product::FieldType;
use crate::record::Timestamp;
use crate::timeseries::buckets::{
    Bucket, FieldKind, FieldStats, Fill, NumberStats, ValueShare, ValueStats, Window,
};
use crate::timeseries::read::{entity_series, SeriesError};

/// Buckets one `series` call may return: as many as the cost limit could
/// ever let through (each bucket costs at least 1); the cost model is
/// what bounds a query, this only backs it.
pub(crate) const MAX_BUCKETS: u64 = super::limits::MAX_COST;
/// Decoded events plus chunk summary blocks one `series` call may hold
/// (decoded: about 2.3 days of a 1 Hz sensor; read from summaries, far
/// more: a block stands for up to a chunk's events).
pub(crate) const MAX_SERIES_EVENTS: usize = 200_000;
/// Buckets when `since` is not given: `since = until - DEFAULT_BUCKETS · every`.
pub(crate) const DEFAULT_BUCKETS: i64 = 100;

pub(crate) const FILL_ENUM: &str = "SeriesFill";
pub(crate) const NUMBER_STATS: &str = "NumberStats";
pub(crate) const VALUE_STATS: &str = "ValueStats";
pub(crate) const VALUE_SHARE: &str = "ValueShare";

/// The product fields a bucket summarises, in schema order: numbers
/// (`int`, `float`) and text states (`string`), the key left out.
pub(crate) fn summarised(api: &ProductApi) -> Vec<(String, FieldType, FieldKind)> {
    api.product
        .fields
        .values()
        .filter(|f| f.name != api.product.key)
        .filter_map(|f| {
            let kind = match f.ty {
                FieldType::Int | FieldType::Float => FieldKind::Numeric,
                FieldType::String => FieldKind::Text,
                _ => return None,
            };
            Some((f.name.clone(), f.ty, kind))
        })
        .collect()
}

/// The shared types: the fill enum and the statistics objects.
pub(crate) fn shared_types() -> Vec<Type> {
    let fill = Enum::new(FILL_ENUM)
        .description("What a `series` bucket without events becomes.")
        .item(async_graphql::dynamic::EnumItem::new("NONE").description("Left out."))
        .item(
            async_graphql::dynamic::EnumItem::new("NULL")
                .description("Kept, with count 0 and null number statistics."),
        )
        .item(async_graphql::dynamic::EnumItem::new("PREVIOUS").description(
            "Kept, each number field repeating the last value before it (min = max = avg = first = last, count 0, sum null).",
        ));
    let float = |v: f64| Gql::from(v);
    let number = Object::new(NUMBER_STATS)
        .description("A number field's statistics over one bucket's events that carried it.")
        .field(getter::<NumberStats>(
            "count",
            TypeRef::named_nn(TypeRef::INT),
            |s| Gql::from(s.count),
        ))
        .field(getter::<NumberStats>(
            "min",
            TypeRef::named_nn(TypeRef::FLOAT),
            move |s| float(s.min),
        ))
        .field(getter::<NumberStats>(
            "max",
            TypeRef::named_nn(TypeRef::FLOAT),
            move |s| float(s.max),
        ))
        .field(getter::<NumberStats>(
            "avg",
            TypeRef::named_nn(TypeRef::FLOAT),
            move |s| float(s.avg),
        ))
        .field(
            getter::<NumberStats>("sum", TypeRef::named(TypeRef::FLOAT), |s| {
                s.sum.map(Gql::from).unwrap_or(Gql::Null)
            })
            .description("Null in a bucket filled from the previous value."),
        )
        .field(
            getter::<NumberStats>("first", TypeRef::named_nn(TypeRef::FLOAT), move |s| {
                float(s.first)
            })
            .description("The value of the bucket's earliest event (by event time)."),
        )
        .field(
            getter::<NumberStats>("last", TypeRef::named_nn(TypeRef::FLOAT), move |s| {
                float(s.last)
            })
            .description("The value of the bucket's latest event (by event time)."),
        );
    let share = Object::new(VALUE_SHARE)
        .description("One value of a text field within a bucket.")
        .field(getter::<ValueShare>("value", TypeRef::named_nn(TypeRef::STRING), |s| {
            Gql::String(s.value.clone())
        }))
        .field(
            getter::<ValueShare>("count", TypeRef::named_nn(TypeRef::INT), |s| Gql::from(s.count))
                .description("The bucket's events that carried it."),
        )
        .field(
            getter::<ValueShare>("seconds", TypeRef::named_nn(TypeRef::FLOAT), |s| {
                Gql::from(s.held as f64 / 1e6)
            })
            .description("Seconds it was held inside the bucket: from the event that carried it to the next event carrying the field (or `until`)."),
        );
    let stats = Object::new(VALUE_STATS)
        .description("A text field (a state such as `status`) over one bucket.")
        .field(
            getter::<ValueStats>("longest", TypeRef::named(TypeRef::STRING), |s| {
                s.longest.clone().map(Gql::String).unwrap_or(Gql::Null)
            })
            .description("The value held longest in the bucket (ties: the smaller value); null if none was held."),
        )
        .field(Field::new(
            "values",
            TypeRef::named_nn_list_nn(VALUE_SHARE),
            |ctx| {
                ready(ctx.parent_value.try_downcast_ref::<ValueStats>().map(|s| {
                    Some(FieldValue::list(s.values.iter().map(|v| FieldValue::borrowed_any(v))))
                }))
            },
        ).description("Every value carried or held in the bucket, by value."));
    vec![fill.into(), number.into(), share.into(), stats.into()]
}

/// The `<Product>Bucket` type and, when the product has fields to
/// summarise, its `<Product>BucketValues`: per-field statistics sit one
/// level down (as an event's `values` do), so a product field named
/// `start`, `end` or `count` cannot collide with the bucket's own.
pub(crate) fn bucket_types(api: &Arc<ProductApi>) -> Vec<Type> {
    let time = |t: i64| values::timestamp(Timestamp(t));
    let mut object = Object::new(&api.names.bucket)
        .description(format!(
            "One window of a `{}` entity's history, by event time: [start, end).",
            api.product.name
        ))
        .field(getter::<Bucket>(
            "start",
            TypeRef::named_nn(values::DATE_TIME),
            move |b| time(b.start),
        ))
        .field(getter::<Bucket>(
            "end",
            TypeRef::named_nn(values::DATE_TIME),
            move |b| time(b.end),
        ))
        .field(
            getter::<Bucket>("count", TypeRef::named_nn(TypeRef::INT), |b| {
                Gql::from(b.count)
            })
            .description("Events with event time in the bucket."),
        );
    let fields = summarised(api);
    if fields.is_empty() {
        return vec![object.into()];
    }
    let mut stats = Object::new(&api.names.bucket_values).description(format!(
        "Per-field statistics of one `{}` bucket: numbers get count, min, max, sum, avg, first and last; text the value held longest and each value's share.",
        api.product.name
    ));
    for (i, (name, _, kind)) in fields.into_iter().enumerate() {
        let described = api
            .product
            .fields
            .get(&name)
            .map(describe)
            .unwrap_or_default();
        let ty = match kind {
            FieldKind::Numeric => NUMBER_STATS,
            FieldKind::Text => VALUE_STATS,
        };
        stats = stats.field(
            Field::new(&name, TypeRef::named(ty), move |ctx| {
                ready(ctx.parent_value.try_downcast_ref::<Bucket>().map(
                    |b| match b.fields.get(i) {
                        Some(FieldStats::Number(Some(stats))) => {
                            Some(FieldValue::borrowed_any(stats))
                        }
                        Some(FieldStats::Text(stats)) => Some(FieldValue::borrowed_any(stats)),
                        _ => None,
                    },
                ))
            })
            .description(described),
        );
    }
    object = object.field(
        Field::new(
            "values",
            TypeRef::named_nn(&api.names.bucket_values),
            |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<Bucket>()
                        .map(|b| Some(FieldValue::borrowed_any(b))),
                )
            },
        )
        .description("Per-field statistics of the events in the bucket."),
    );
    vec![object.into(), stats.into()]
}

fn bad(code: &str, message: String) -> async_graphql::Error {
    let code = code.to_string();
    async_graphql::Error::new(message).extend_with(move |_, e| e.set("code", code.as_str()))
}

/// `every` as µs: humantime text (`1m`, `5m`, `1h`, `1d`), at least 1 s.
pub(crate) fn every_micros(text: &str) -> async_graphql::Result<i64> {
    let every: Duration = humantime::parse_duration(text.trim()).map_err(|e| {
        bad(
            "BAD_ARGUMENT",
            format!("`every`: `{text}` is not a duration ({e}); write e.g. `1m`, `5m`, `1h`, `1d`"),
        )
    })?;
    if every < Duration::from_secs(1) {
        return Err(bad(
            "BAD_ARGUMENT",
            format!("`every` is {text}; buckets are at least 1s wide"),
        ));
    }
    i64::try_from(every.as_micros())
        .map_err(|_| bad("BAD_ARGUMENT", format!("`every`: `{text}` is too long")))
}

/// The `series` field of `<Product>`.
pub(crate) fn series_field(api: &Arc<ProductApi>) -> Field {
    let api = api.clone();
    let bucket = api.names.bucket.clone();
    Field::new("series", TypeRef::named_nn_list_nn(bucket), move |ctx| {
        let api = api.clone();
        FieldFuture::new(async move {
            let instance = ctx.parent_value.try_downcast_ref::<crate::store::Instance>()?;
            let runtime = runtime(&ctx)?;
            let view = view(&ctx, &api)?;
            require(&ctx, &view, view.read, "read")?;
            let every_text = opt_string(&ctx, "every")?.unwrap_or_default();
            let every = every_micros(&every_text)?;
            let until = opt_time(&ctx, "until")?.unwrap_or_else(Timestamp::now).as_micros();
            let since = match opt_time(&ctx, "since")? {
                Some(since) => since.as_micros(),
                None => until.saturating_sub(every.saturating_mul(DEFAULT_BUCKETS)),
            };
            if since >= until {
                return Err(bad("BAD_ARGUMENT", "`since` must be before `until`".to_string()));
            }
            let window = Window { since, until, every };
            let (_, count) = window.span();
            if count > MAX_BUCKETS {
                return Err(bad(
                    "SERIES_TOO_LARGE",
                    format!("this series has {count} buckets; at most {MAX_BUCKETS} per call (and fewer as each bucket selects more): narrow [since, until) or widen `every`"),
                ));
            }
            let fill = match ctx.args.get("fill") {
                Some(v) if !v.is_null() => match v.enum_name()? {
                    "NULL" => Fill::Null,
                    "PREVIOUS" => Fill::Previous,
                    _ => Fill::None,
                },
                _ => Fill::None,
            };
            let spec: Vec<(String, FieldKind)> =
                summarised(&api).into_iter().map(|(name, _, kind)| (name, kind)).collect();
            let store = runtime.store().clone();
            let product = api.name().to_string();
            let entity = instance.entity.clone();
            let visible = view.clone();
            let read = blocking(move || {
                if !shown(&store, &visible, &product, &entity)? {
                    return Ok(None);
                }
                // Summaries hold clear values: a role with a mask on any
                // summarised field reads the events, masked one by one.
                let masker = visible.masker();
                let clear = !spec.iter().any(|(name, _)| masker.masks_field(name));
                let mask = |fields: &mut crate::record::Fields| visible.mask_fields(fields);
                match entity_series(
                    &store, &product, &entity, &spec, &window, fill, clear, MAX_SERIES_EVENTS, &mask,
                ) {
                    Ok(outcome) => Ok(Some(Ok(outcome.buckets))),
                    Err(SeriesError::TooLarge(n)) => Ok(Some(Err(n))),
                    Err(SeriesError::Store(e)) => Err(e.to_string()),
                }
            })
            .await?;
            let out = match read {
                None => Vec::new(),
                Some(Ok(buckets)) => buckets,
                Some(Err(_)) => {
                    return Err(bad(
                        "SERIES_TOO_LARGE",
                        format!("more than {MAX_SERIES_EVENTS} events lie in [since, until); narrow the window"),
                    ))
                }
            };
            Ok(Some(FieldValue::list(out.into_iter().map(FieldValue::owned_any))))
        })
    })
    .description(format!(
        "The entity's history downsampled into windows of event time `every` wide (`1m`, `5m`, `1h`, `1d`; at least 1s), aligned to the Unix epoch (UTC), over [since, until) (until: now; since: {DEFAULT_BUCKETS} buckets before until). Event time decides the bucket, so late events land where they belong. Per number field min/max/avg/sum/first/last, per text field the value held longest and each value's count and seconds held. Buckets count in the query cost (buckets × fields selected per bucket; a 30-day chart in 5-minute buckets of a few statistics fits), and at most {MAX_SERIES_EVENTS} events per call (`SERIES_TOO_LARGE`). Values are as the caller's role sees them: masked values are what is aggregated."
    ))
    .argument(InputValue::new("since", TypeRef::named(values::DATE_TIME)))
    .argument(InputValue::new("until", TypeRef::named(values::DATE_TIME)))
    .argument(InputValue::new("every", TypeRef::named_nn(values::DURATION)))
    .argument(InputValue::new("fill", TypeRef::named(FILL_ENUM)).default_value(Gql::Enum(async_graphql::Name::new("NONE"))))
}
