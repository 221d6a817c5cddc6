//! Sync in the catalog: `syncStatus` (per upstream: pending, oldest
//! pending age, last ack, errors, drops) and, on an aggregator,
//! `syncNodes` (the edges it heard from: id, last seen, lag, pending).
//!
//! `syncNodes` was `Query.nodes` until Relay's `nodes(ids:)` took that
//! name (`relay.rs`). The old name cannot stay, so there is no alias under
//! it; `edgeNodes`, deprecated, answers the same list for one release —
//! for clients that were pointed at it while moving off `nodes` — and
//! then goes. Instances show
//! their origin node in `_meta { source }` (`sync:<node id>`). On an
//! aggregator that consumes a NATS JetStream durable, `syncConsumers`
//! shows its lag (pending, ack pending, redelivered) and naks.

use async_graphql::dynamic::{Field, FieldFuture, FieldValue, Object, Type, TypeRef};
use async_graphql::Value as Gql;

use super::context::runtime;
use super::resolve::{blocking, getter};
use crate::sync::{ConsumerStatus, NodeStatus, ReferenceStatus, UpstreamStatus};

fn text(s: &str) -> Gql {
    Gql::String(s.to_string())
}

fn int(n: u64) -> Gql {
    Gql::from(i64::try_from(n).unwrap_or(i64::MAX))
}

pub(crate) fn types() -> Vec<Type> {
    let upstream = Object::new("SyncUpstream")
        .description("What sync owes one upstream, and how sending goes.")
        .field(getter::<UpstreamStatus>(
            "name",
            TypeRef::named_nn(TypeRef::STRING),
            |u| text(&u.name),
        ))
        .field(
            getter::<UpstreamStatus>("pending", TypeRef::named_nn(TypeRef::INT), |u| {
                int(u.pending)
            })
            .description("Outbox entries not yet acknowledged."),
        )
        .field(getter::<UpstreamStatus>(
            "pendingBytes",
            TypeRef::named_nn(TypeRef::INT),
            |u| int(u.pending_bytes),
        ))
        .field(
            getter::<UpstreamStatus>(
                "oldestPendingSeconds",
                TypeRef::named(TypeRef::FLOAT),
                |u| u.oldest_pending_age_seconds.map_or(Gql::Null, Gql::from),
            )
            .description("Age of the oldest pending entry; null when none is pending."),
        )
        .field(
            getter::<UpstreamStatus>("lastAck", TypeRef::named(TypeRef::STRING), |u| {
                u.last_ack.map_or(Gql::Null, |t| Gql::String(t.to_string()))
            })
            .description(
                "When the upstream last acknowledged a batch (RFC 3339), since the node started.",
            ),
        )
        .field(
            getter::<UpstreamStatus>("errors", TypeRef::named_nn(TypeRef::INT), |u| int(u.errors))
                .description("Failed sends since the node started."),
        )
        .field(
            getter::<UpstreamStatus>("dropped", TypeRef::named_nn(TypeRef::INT), |u| {
                int(u.dropped)
            })
            .description(
                "Entries removed by the disk budget (coalesced or dropped) since the node started.",
            ),
        )
        .field(
            getter::<UpstreamStatus>("refusals", TypeRef::named_nn(TypeRef::INT), |u| {
                int(u.refusals)
            })
            .description(
                "Batches the upstream refused without acknowledging them since the node started (e.g. a product it does not know); they stay pending and are sent again.",
            ),
        )
        .field(
            getter::<UpstreamStatus>("waiting", TypeRef::named(TypeRef::STRING), |u| {
                u.waiting.as_deref().map_or(Gql::Null, text)
            })
            .description(
                "Why pending entries wait: the upstream's last refusal, until it acknowledges again; null when sending goes.",
            ),
        );
    let node = Object::new("SyncNode")
        .description("An edge this aggregator received sync from (since it started).")
        .field(getter::<NodeStatus>(
            "id",
            TypeRef::named_nn(TypeRef::STRING),
            |n| text(&n.id),
        ))
        .field(getter::<NodeStatus>(
            "lastSeen",
            TypeRef::named_nn(TypeRef::STRING),
            |n| text(&n.last_seen),
        ))
        .field(
            getter::<NodeStatus>("lag", TypeRef::named_nn(TypeRef::FLOAT), |n| {
                Gql::from(n.lag_seconds)
            })
            .description("Seconds between the newest event it sent and its arrival here."),
        )
        .field(
            getter::<NodeStatus>("pending", TypeRef::named_nn(TypeRef::INT), |n| {
                int(n.pending)
            })
            .description("Entries it still held after its last envelopes."),
        );
    let lag = |c: &ConsumerStatus, f: fn(&crate::sync::ConsumerLag) -> u64| {
        c.lag.as_ref().map_or(Gql::Null, |l| int(f(l)))
    };
    let consumer = Object::new("SyncConsumer")
        .description("A NATS JetStream durable consumer this aggregator takes envelopes from.")
        .field(getter::<ConsumerStatus>(
            "durable",
            TypeRef::named_nn(TypeRef::STRING),
            |c| text(&c.durable),
        ))
        .field(getter::<ConsumerStatus>(
            "stream",
            TypeRef::named_nn(TypeRef::STRING),
            |c| text(&c.stream),
        ))
        .field(getter::<ConsumerStatus>(
            "filterSubject",
            TypeRef::named_nn(TypeRef::STRING),
            |c| text(&c.filter_subject),
        ))
        .field(
            getter::<ConsumerStatus>("pending", TypeRef::named(TypeRef::INT), move |c| {
                lag(c, |l| l.pending)
            })
            .description("Messages in the stream for this consumer not yet delivered; null until JetStream answered."),
        )
        .field(
            getter::<ConsumerStatus>("ackPending", TypeRef::named(TypeRef::INT), move |c| {
                lag(c, |l| l.ack_pending)
            })
            .description("Delivered and not yet acknowledged, over every node on the durable."),
        )
        .field(
            getter::<ConsumerStatus>("redelivered", TypeRef::named(TypeRef::INT), move |c| {
                lag(c, |l| l.redelivered)
            })
            .description("Delivered more than once and not yet acknowledged."),
        )
        .field(
            getter::<ConsumerStatus>("naks", TypeRef::named_nn(TypeRef::INT), |c| int(c.naks))
                .description("Envelopes not applied and offered again (e.g. an unknown product) since the node started."),
        )
        .field(
            getter::<ConsumerStatus>("error", TypeRef::named(TypeRef::STRING), |c| {
                c.error.as_deref().map_or(Gql::Null, text)
            })
            .description("The last connection or consumer error, until JetStream answers again."),
        );
    let reference = Object::new("SyncReference")
        .description("A reference-data replica this node keeps (a product's `sync: - from:` rule).")
        .field(getter::<ReferenceStatus>(
            "upstream",
            TypeRef::named_nn(TypeRef::STRING),
            |r| text(&r.upstream),
        ))
        .field(getter::<ReferenceStatus>(
            "product",
            TypeRef::named_nn(TypeRef::STRING),
            |r| text(&r.product),
        ))
        .field(
            getter::<ReferenceStatus>("revision", TypeRef::named_nn(TypeRef::INT), |r| {
                int(r.revision)
            })
            .description("The last revision applied to the store (0: none yet); the next watch or poll starts after it."),
        )
        .field(
            getter::<ReferenceStatus>("stored", TypeRef::named_nn(TypeRef::INT), |r| int(r.stored))
                .description("Instances stored since the node started."),
        )
        .field(
            getter::<ReferenceStatus>("filtered", TypeRef::named_nn(TypeRef::INT), |r| {
                int(r.filtered)
            })
            .description("Instances not stored since start: the rule's `where` does not match on this node."),
        )
        .field(
            getter::<ReferenceStatus>("lastApplied", TypeRef::named(TypeRef::STRING), |r| {
                r.last_applied.map_or(Gql::Null, |t| Gql::String(t.to_string()))
            })
            .description("When a page was last applied (RFC 3339), since the node started."),
        )
        .field(
            getter::<ReferenceStatus>("error", TypeRef::named(TypeRef::STRING), |r| {
                r.error.as_deref().map_or(Gql::Null, text)
            })
            .description("The last watch, poll or store failure, until a page applies again."),
        );
    vec![
        upstream.into(),
        node.into(),
        consumer.into(),
        reference.into(),
    ]
}

pub(crate) fn root_fields() -> Vec<Field> {
    vec![
        Field::new(
            "syncStatus",
            TypeRef::named_nn_list_nn("SyncUpstream"),
            |ctx| {
                FieldFuture::new(async move {
                    let Some(sync) = runtime(&ctx)?.sync.clone() else {
                        return Ok(Some(FieldValue::list(Vec::<FieldValue>::new())));
                    };
                    let upstreams = blocking(move || Ok(sync.upstreams())).await?;
                    Ok(Some(FieldValue::list(
                        upstreams.into_iter().map(FieldValue::owned_any),
                    )))
                })
            },
        )
        .description("Per upstream: pending entries, oldest pending age, last ack, errors, drops."),
        sync_nodes("syncNodes")
            .description("Aggregator mode: the edges heard from; empty on an edge."),
        sync_nodes(DEPRECATED_SYNC_NODES)
            .description("Aggregator mode: the edges heard from (as `syncNodes`).")
            .deprecation(Some(
                "Use `syncNodes` (this list was `Query.nodes` before Relay's `nodes(ids:)`); removed in the next release.",
            )),
        Field::new(
            "syncConsumers",
            TypeRef::named_nn_list_nn("SyncConsumer"),
            |ctx| {
                FieldFuture::new(async move {
                    let consumers = runtime(&ctx)?
                        .sync
                        .as_ref()
                        .map(|s| s.consumers())
                        .unwrap_or_default();
                    Ok(Some(FieldValue::list(
                        consumers.into_iter().map(FieldValue::owned_any),
                    )))
                })
            },
        )
        .description("Aggregator mode: the NATS JetStream durables consumed, with their lag; empty otherwise."),
        Field::new(
            "syncReferences",
            TypeRef::named_nn_list_nn("SyncReference"),
            |ctx| {
                FieldFuture::new(async move {
                    let references = runtime(&ctx)?
                        .sync
                        .as_ref()
                        .map(|s| s.references())
                        .unwrap_or_default();
                    Ok(Some(FieldValue::list(
                        references.into_iter().map(FieldValue::owned_any),
                    )))
                })
            },
        )
        .description("The reference-data replicas this node keeps (`sync: - from:` rules), with the revision each has applied; empty when none."),
    ]
}

/// The deprecated alias of `syncNodes`.
pub(crate) const DEPRECATED_SYNC_NODES: &str = "edgeNodes";

/// The edges this aggregator heard from, as field `name`.
fn sync_nodes(name: &str) -> Field {
    Field::new(name, TypeRef::named_nn_list_nn("SyncNode"), |ctx| {
        FieldFuture::new(async move {
            let nodes = runtime(&ctx)?
                .sync
                .as_ref()
                .map(|s| s.nodes())
                .unwrap_or_default();
            Ok(Some(FieldValue::list(
                nodes.into_iter().map(FieldValue::owned_any),
            )))
        })
    })
}
