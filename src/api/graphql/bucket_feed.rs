//! `<product>Buckets(<key>, every, lateness, since)`: one entity's
//! `series` buckets, pushed as they close — a live chart, like an
//! InfluxDB task over `aggregateWindow`, an eKuiper tumbling window or a
//! Timescale continuous aggregate with its refresh lag.
//!
//! Driven by the writer's durable change feed (the source of
//! `<product>Changes`: published after the durability barrier, so a
//! subscriber never sees a bucket a crash could take back). Per
//! subscription, `timeseries::closing` keeps the entity's event-time
//! watermark; a bucket `[start, end)` closes when the watermark reaches
//! `end + lateness` and is then emitted (`revision: 0`, empty buckets
//! left out); an event landing in a bucket already closed emits it again
//! with the next `revision`, so a client replaces its point (a revised
//! bucket that became empty comes with count 0). `revision` counts the
//! subscription's revisions, so it grows with every re-emission and the
//! highest one of a bucket is its newest state. `since` first emits the
//! closed buckets from `since` on from history (a chart's backfill),
//! bounded and costed like `series`.
//!
//! **Why recompute, not accumulate.** Each bucket that closes or is
//! revised is read back from the store by `timeseries::read::entity_series`
//! over exactly `[start, end)` — the code `series` runs, so an emitted
//! bucket equals `series(since: start, until: end, every)`, masks
//! included (a `round` mask aggregates rounded values; a `redact`/`hash`
//! masked number field has no statistics for that role). Incremental
//! per-bucket accumulators would have to be kept per open bucket,
//! replayed for late events, and would silently disagree with the store
//! after a retention sweep, an erasure or a crash; a recompute is exact
//! in all of these. It is cheap: a closed bucket is its events in the
//! open tail or a few sealed block summaries, read once per close. So the
//! state per subscription is O(1) (the watermark, the revision count)
//! plus the buckets of one batch of changes waiting to be sent — no
//! event is buffered.
//!
//! Event times: a change whose instance's event time moved past the
//! watermark carries its own; a change at or below it (a late event, or
//! one at the same instant) has its event time read from history by
//! version: one short read of the newest events per batch.
//!
//! **Event time, and the clock only when asked.** By default a bucket
//! closes only when a newer event arrives, so an entity that stops
//! sending does not close its last bucket (nor those `lateness` holds
//! open) until it sends again: right for replayed or buffered data,
//! whose event times lag the clock. `wallClock: true` also reads the
//! node's clock when the first open bucket is due (its end plus
//! `lateness`) and counts it as the watermark, as a dashboard of live
//! devices expects (eKuiper's processing-time windows); an event that
//! arrives after that revises the bucket. A device whose clock runs
//! behind the node's then revises every bucket: give it a `lateness`.
//!
//! **What it does not do.** Text statistics of a bucket start from an
//! unknown state at the bucket's start (as any `series` does at `since`);
//! the backfill is one `series` over `[since, first open bucket)`, where
//! a state carries across buckets. Erasures are not in the change feed: an
//! erased entity's closed buckets are not re-sent (a re-created entity's
//! late events revise theirs, recomputed from what the store holds).
//!
//! Everything `series` and `<product>Changes` enforce applies: the
//! `subscribe` right, the row filter (checked on the entity's current
//! state at every emission: a hidden entity emits nothing, whether or
//! not it exists), masks, the query cost (the backfill's buckets as
//! `series` counts them), the subscription slots of the connection and
//! the identity, the token re-check, the lag error (then the watermark
//! is re-read from the store, so closes resume; revisions missed meanwhile
//! are not: re-query `series`), and the end on shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::dynamic::{
    Field, FieldValue, InputValue, Object, SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use async_graphql::{ErrorExtensions, Value as Gql};
use tokio::sync::broadcast::error::RecvError;

use super::args::{opt_string, opt_time};
use super::budget::SubscriptionSlot;
use super::context::runtime;
use super::instance::shown;
use super::policy::{require, view};
use super::product_api::ProductApi;
use super::resolve::{blocking, getter, ready};
use super::runtime::SubscriptionGuard;
use super::series::{every_micros, summarised, MAX_BUCKETS, MAX_SERIES_EVENTS};
use super::subscription::{lagged, open_slot, revoked};
use super::values;
use crate::policy::access::{StillValid, View};
use crate::record::Timestamp;
use crate::store::{ChangeEvent, HistoryQuery, Store};
use crate::timeseries::buckets::{Bucket, FieldKind, Fill, Window};
use crate::timeseries::closing::{Closer, Flush};
use crate::timeseries::read::{entity_series, SeriesError};

/// The most buckets `lateness` may hold open (`lateness / every`): a close
/// reads at most this many plus one, so one read stays small.
pub(crate) const MAX_OPEN_BUCKETS: i64 = 1_000;

/// One emitted bucket.
struct Closed {
    entity: String,
    revision: u64,
    bucket: Bucket,
}

/// `<Product>BucketClose`.
pub(crate) fn close_object(api: &Arc<ProductApi>) -> Object {
    Object::new(&api.names.bucket_close)
        .description(format!(
            "A closed bucket of one `{}` entity's series: first when the watermark (newest event time) passes its end plus the lateness, again for each late event that lands in it.",
            api.product.name
        ))
        .field(getter::<Closed>("entity", TypeRef::named_nn(TypeRef::STRING), |c| {
            Gql::String(c.entity.clone())
        }))
        .field(
            getter::<Closed>("revision", TypeRef::named_nn(values::LONG), |c| {
                Gql::from(c.revision)
            })
            .description("0 when the bucket closes (or comes from the backfill); a re-emission after a late event gets the subscription's next revision number, so the highest revision of a bucket is its newest state."),
        )
        .field(
            Field::new("bucket", TypeRef::named_nn(&api.names.bucket), |ctx| {
                ready(
                    ctx.parent_value
                        .try_downcast_ref::<Closed>()
                        .map(|c| Some(FieldValue::borrowed_any(&c.bucket))),
                )
            })
            .description("The bucket, as `series` over exactly [start, end) returns it."),
        )
}

/// What the blocking reads need: the entity, its fields and the view.
struct Reader {
    store: Store,
    product: String,
    entity: String,
    spec: Vec<(String, FieldKind)>,
    view: Arc<View>,
    every: i64,
}

/// A store read's failure, or a bucket over the event bound.
fn read_error(e: SeriesError) -> String {
    match e {
        SeriesError::Store(e) => e.to_string(),
        SeriesError::TooLarge(n) => {
            format!("more than {n} events lie in one bucket; subscribe with a smaller `every`")
        }
    }
}

impl Reader {
    /// The buckets of `[since, until)` as `series` computes them.
    fn series(&self, since: i64, until: i64, fill: Fill) -> Result<Vec<Bucket>, SeriesError> {
        let window = Window {
            since,
            until,
            every: self.every,
        };
        // As `series`: summaries hold clear values, so a role with a mask
        // on a summarised field reads the events, masked one by one.
        let masker = self.view.masker();
        let clear = !self.spec.iter().any(|(name, _)| masker.masks_field(name));
        let mask = |fields: &mut crate::record::Fields| self.view.mask_fields(fields);
        entity_series(
            &self.store,
            &self.product,
            &self.entity,
            &self.spec,
            &window,
            fill,
            clear,
            MAX_SERIES_EVENTS,
            &mask,
        )
        .map(|outcome| outcome.buckets)
    }

    /// The entity's newest event time in the store.
    fn watermark(&self) -> Result<Option<i64>, String> {
        Ok(self
            .store
            .get(&self.product, &self.entity)
            .map_err(|e| e.to_string())?
            .map(|i| i.event_time.as_micros()))
    }

    /// The event times of history events `versions`, read in one range
    /// (version → time; a version gone to retention or an erasure is
    /// absent). The versions are one batch's: a short range of the newest.
    fn event_times(&self, versions: &[u64]) -> Result<HashMap<u64, i64>, String> {
        let (Some(first), Some(last)) = (versions.iter().min(), versions.iter().max()) else {
            return Ok(HashMap::new());
        };
        let query = HistoryQuery {
            after_version: Some(first.saturating_sub(1)),
            before_version: Some(last.saturating_add(1)),
            newest_first: true,
            limit: usize::try_from(last - first + 1).unwrap_or(usize::MAX),
            ..HistoryQuery::default()
        };
        Ok(self
            .store
            .history(&self.product, &self.entity, &query)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|e| (e.version, e.event_time.as_micros()))
            .collect())
    }

    /// The buckets one batch closed and revised, recomputed from the store
    /// (`true`: a revision); nothing while the row filter hides the entity.
    fn emit(&self, flush: Flush) -> Result<Vec<(Bucket, bool)>, String> {
        let (closes, revisions) = flush.finish();
        if !shown(&self.store, &self.view, &self.product, &self.entity)? {
            return Ok(Vec::new());
        }
        let texts = self.spec.iter().any(|(_, kind)| *kind == FieldKind::Text);
        let mut out = Vec::new();
        for (from, to) in closes {
            let buckets = self.series(from, to, Fill::None).map_err(read_error)?;
            if texts && buckets.len() > 1 {
                // A text state carries across buckets within one window:
                // each bucket alone, as `series` over it answers.
                for b in buckets {
                    let alone = self
                        .series(b.start, b.end, Fill::None)
                        .map_err(read_error)?;
                    out.extend(alone.into_iter().map(|b| (b, false)));
                }
            } else {
                out.extend(buckets.into_iter().map(|b| (b, false)));
            }
        }
        for start in revisions {
            let end = start.saturating_add(self.every);
            let buckets = self.series(start, end, Fill::Null).map_err(read_error)?;
            out.extend(buckets.into_iter().map(|b| (b, true)));
        }
        Ok(out)
    }
}

/// What one subscription's stream carries between events.
struct Feed {
    changes: tokio::sync::broadcast::Receiver<Arc<ChangeEvent>>,
    reader: Arc<Reader>,
    closer: Closer,
    /// Revisions emitted so far.
    revisions: u64,
    /// The feed lagged: re-read the watermark before the next change.
    resync: bool,
    /// Also close buckets by the node's clock (`wallClock`).
    wall_clock: bool,
    still_valid: Option<StillValid>,
    validated_at: Instant,
    /// The credential was revoked: the error was sent, the stream ends.
    ended: bool,
    pending: VecDeque<async_graphql::Result<Closed>>,
    shutdown: tokio_util::sync::CancellationToken,
    _open: SubscriptionGuard,
    /// Counted against the connection's and the caller's caps.
    _slot: SubscriptionSlot,
}

impl Feed {
    /// Queues what a batch produced, numbering revisions.
    fn queue(&mut self, out: Vec<(Bucket, bool)>) {
        let entity = self.reader.view.entity_key(&self.reader.entity);
        for (bucket, revised) in out {
            let revision = if revised {
                self.revisions += 1;
                self.revisions
            } else {
                0
            };
            self.pending.push_back(Ok(Closed {
                entity: entity.clone(),
                revision,
                bucket,
            }));
        }
    }

    /// Runs a batch (the entity's changes as (version, instance event
    /// time, created), a re-read of the watermark, or a clock reading)
    /// through the closer and queues what it emits.
    async fn step(&mut self, changes: Vec<(u64, i64, bool)>, resync: bool, clock: Option<i64>) {
        let reader = self.reader.clone();
        let mut closer = self.closer;
        let work = blocking(move || {
            let _span = tracing::debug_span!(
                "bucket_feed",
                product = reader.product,
                entity = reader.entity,
                changes = changes.len()
            )
            .entered();
            let mut flush = Flush::default();
            let mut result = Ok(());
            if let Some(now) = clock {
                flush.add(closer.observe(now));
            }
            if resync {
                match reader.watermark() {
                    Ok(Some(t)) => flush.add(closer.observe(t)),
                    Ok(None) => {}
                    Err(e) => result = Err(e),
                }
            }
            // A change that creates the entity or moves the watermark
            // carries its own event time (the instance's); one at or below
            // the watermark may be late: its time is read from history,
            // all of the batch's in one range. Those do not move the
            // watermark, so which is which is known before the read.
            let carries =
                |w: Option<i64>, time: i64, created: bool| created || w.is_none_or(|w| time > w);
            let mut w = closer.watermark();
            let mut unknown = Vec::new();
            for (version, time, created) in &changes {
                if carries(w, *time, *created) {
                    w = Some(w.map_or(*time, |w| w.max(*time)));
                } else {
                    unknown.push(*version);
                }
            }
            let times = reader.event_times(&unknown).unwrap_or_else(|e| {
                result = Err(e);
                HashMap::new()
            });
            for (version, time, created) in changes {
                let time = if carries(closer.watermark(), time, created) {
                    time
                } else {
                    match times.get(&version) {
                        Some(time) => *time,
                        None => continue,
                    }
                };
                flush.add(closer.observe(time));
            }
            let out = if flush.is_empty() {
                Ok(Vec::new())
            } else {
                reader.emit(flush)
            };
            Ok((closer, result.and(out)))
        });
        match work.await {
            Ok((closer, Ok(out))) => {
                self.closer = closer;
                self.queue(out);
            }
            Ok((closer, Err(message))) => {
                self.closer = closer;
                self.pending
                    .push_back(Err(async_graphql::Error::new(message)));
            }
            Err(err) => self.pending.push_back(Err(err)),
        }
    }
}

fn bad(message: String) -> async_graphql::Error {
    super::field_errors::bad_argument(message)
}

/// `lateness` as µs: humantime text, at most [`MAX_OPEN_BUCKETS`] buckets.
fn lateness_micros(text: Option<String>, every: i64) -> async_graphql::Result<i64> {
    let Some(text) = text else { return Ok(0) };
    let lateness: Duration = humantime::parse_duration(text.trim())
        .map_err(|e| bad(format!("`lateness`: `{text}` is not a duration ({e})")))?;
    let lateness = i64::try_from(lateness.as_micros())
        .map_err(|_| bad(format!("`lateness`: `{text}` is too long")))?;
    if lateness / every > MAX_OPEN_BUCKETS {
        return Err(bad(format!(
            "`lateness` holds {} buckets open; at most {MAX_OPEN_BUCKETS}: widen `every` or shorten `lateness`",
            lateness / every
        )));
    }
    Ok(lateness)
}

/// `<product>Buckets(<key>: …!, every: Duration!, lateness: Duration = "0s", since: DateTime)`.
pub(crate) fn buckets_field(api: &Arc<ProductApi>) -> SubscriptionField {
    let handle = api.clone();
    SubscriptionField::new(
        &api.names.buckets,
        TypeRef::named_nn(&api.names.bucket_close),
        move |ctx| {
            let api = handle.clone();
            SubscriptionFieldFuture::new(async move {
                let runtime = runtime(&ctx)?;
                let view = view(&ctx, &api)?;
                require(&ctx, &view, view.subscribe, "subscribe to")?;
                let entity = api.entity_arg(&ctx)?;
                let every = every_micros(&opt_string(&ctx, "every")?.unwrap_or_default())?;
                let lateness = lateness_micros(opt_string(&ctx, "lateness")?, every)?;
                let since = opt_time(&ctx, "since")?.map(Timestamp::as_micros);
                let (slot, still_valid) = open_slot(&ctx)?;
                // Subscribe before reading the watermark: a change
                // committed in between is seen (at worst as a repeat).
                let changes = runtime.store().subscribe_changes();
                let reader = Arc::new(Reader {
                    store: runtime.store().clone(),
                    product: api.name().to_string(),
                    entity,
                    spec: summarised(&api)
                        .into_iter()
                        .map(|(name, _, kind)| (name, kind))
                        .collect(),
                    view,
                    every,
                });
                let start = reader.clone();
                let (watermark, backfill) = blocking(move || {
                    let watermark = start.watermark()?;
                    let closer = Closer::new(every, lateness, watermark);
                    let (Some(since), Some(until)) = (since, closer.first_open()) else {
                        return Ok((watermark, Ok(Vec::new())));
                    };
                    if since >= until
                        || !shown(&start.store, &start.view, &start.product, &start.entity)?
                    {
                        return Ok((watermark, Ok(Vec::new())));
                    }
                    let (_, count) = Window { since, until, every }.span();
                    if count > MAX_BUCKETS {
                        return Ok((watermark, Err(count)));
                    }
                    match start.series(since, until, Fill::None) {
                        Ok(buckets) => Ok((watermark, Ok(buckets))),
                        Err(SeriesError::TooLarge(_)) => Ok((watermark, Err(0))),
                        Err(SeriesError::Store(e)) => Err(e.to_string()),
                    }
                })
                .await?;
                let backfill = backfill.map_err(|count| {
                    let message = if count > 0 {
                        format!("the backfill from `since` has {count} buckets; at most {MAX_BUCKETS}: move `since` later or widen `every`")
                    } else {
                        format!("more than {MAX_SERIES_EVENTS} events lie between `since` and the first open bucket; move `since` later")
                    };
                    async_graphql::Error::new(message)
                        .extend_with(|_, e| e.set("code", "SERIES_TOO_LARGE"))
                })?;
                runtime
                    .metrics
                    .subscriptions_started
                    .fetch_add(1, Ordering::Relaxed);
                let mut feed = Feed {
                    changes,
                    reader,
                    closer: Closer::new(every, lateness, watermark),
                    revisions: 0,
                    resync: false,
                    wall_clock: ctx
                        .args
                        .get("wallClock")
                        .map(|v| v.boolean())
                        .transpose()?
                        .unwrap_or(false),
                    still_valid,
                    validated_at: Instant::now(),
                    ended: false,
                    pending: VecDeque::new(),
                    shutdown: runtime.shutdown.clone(),
                    _open: runtime.usage.subscribe(api.name()),
                    _slot: slot,
                };
                feed.queue(backfill.into_iter().map(|b| (b, false)).collect());
                Ok(futures_util::stream::unfold(feed, next_close))
            })
        },
    )
    .description(format!(
        "One `{}` entity's `series` buckets as they close, by event time: a bucket [start, end) is sent when an event at or after `end + lateness` arrives (`revision` 0; `lateness`: how long after its end, in event time, a bucket stays open for late events), and again for every later event that lands in it (the next `revision`). Each bucket is `series` over exactly [start, end), computed from the store when it closes, as the caller's role sees it. `since` first sends the closed buckets from `since` on (a chart's backfill, as `series` returns them; costed like `series` up to now). Buckets close on event time: the last bucket of an entity that stops sending stays open until it sends again, unless `wallClock` is true: then the node's clock closes it too, when it passes the bucket's end plus `lateness` (an event that comes later revises it). `lateness` may hold at most {MAX_OPEN_BUCKETS} buckets open.",
        api.product.name
    ))
    .argument(InputValue::new(&api.product.key, api.key_type()))
    .argument(InputValue::new("every", TypeRef::named_nn(values::DURATION)))
    .argument(
        InputValue::new("lateness", TypeRef::named(values::DURATION))
            .default_value(Gql::String("0s".to_string())),
    )
    .argument(InputValue::new("since", TypeRef::named(values::DATE_TIME)))
    .argument(
        InputValue::new("wallClock", TypeRef::named(TypeRef::BOOLEAN))
            .default_value(Gql::Boolean(false)),
    )
}

async fn next_close<'a>(mut feed: Feed) -> Option<(async_graphql::Result<FieldValue<'a>>, Feed)> {
    loop {
        if feed.ended {
            return None;
        }
        if !feed.pending.is_empty() {
            if let Some(err) = revoked(&feed.still_valid, &mut feed.validated_at) {
                feed.ended = true;
                feed.pending.clear();
                return Some((Err(err), feed));
            }
        }
        if let Some(next) = feed.pending.pop_front() {
            return Some((next.map(FieldValue::owned_any), feed));
        }
        if feed.resync {
            feed.resync = false;
            feed.step(Vec::new(), true, None).await;
            continue;
        }
        // With `wallClock`, the clock is read when the first open bucket
        // is due to close.
        let due = if feed.wall_clock {
            feed.closer.next_close_at().map(|at| {
                let wait = at.saturating_sub(Timestamp::now().as_micros()).max(0);
                Duration::from_micros(u64::try_from(wait).unwrap_or(0))
            })
        } else {
            None
        };
        let tick = async move {
            match due {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        let received = tokio::select! {
            _ = feed.shutdown.cancelled() => return None,
            _ = tick => {
                let now = Timestamp::now().as_micros();
                feed.step(Vec::new(), false, Some(now)).await;
                continue;
            }
            received = feed.changes.recv() => received,
        };
        match received {
            Ok(event) if event.product == feed.reader.product => {
                let changes: Vec<(u64, i64, bool)> = event
                    .changes
                    .iter()
                    .filter(|c| c.entity == feed.reader.entity)
                    .map(|c| (c.version, c.instance.event_time.as_micros(), c.created))
                    .collect();
                if !changes.is_empty() {
                    feed.step(changes, false, None).await;
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                feed.resync = true;
                let err = lagged(
                    missed,
                    "buckets closing go on; late events meanwhile were missed: query `series` to catch up",
                );
                return Some((Err(err), feed));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}
