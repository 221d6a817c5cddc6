//! MQTT message dispatch: a message from the embedded broker or the
//! external client goes to the `sparkplug` sources reading its group (host
//! state, problem counters, rebirth requests) and to every `mqtt` source
//! whose topic template matches, then through the ordinary pipeline of the
//! [`Ingestor`]. The routing tables live here, not in ingest, and follow
//! definition reloads through [`Ingestor::on_follow`]: ingest knows no
//! source kind.

use std::sync::{Arc, RwLock, Weak};

use tracing::{debug, warn};

use super::routes::MqttRoutes;
use crate::ingest::{
    is_ndjson_content_type, whole_payload_item, Ingestor, PendingMessage, Prepared, Provenance,
};
use crate::pipeline::Plan;
use crate::product::{OnInvalid, PayloadFormat};
use crate::record::{Origin, Timestamp};
use crate::sources::sparkplug::{host as sparkplug, route as sparkplug_route};
use crate::store::IngestBatch;

/// One MQTT message as a source received it.
pub struct MqttMessage<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Delivered as the broker's retained last-known state.
    pub retained: bool,
    /// The transport says this may be a redelivery (MQTT DUP flag).
    pub redelivery: bool,
    /// The MQTT client id of the publisher, when known.
    pub client: Option<&'a str>,
    /// MQTT 5 content type: an NDJSON type reads the payload as NDJSON
    /// (as an HTTP push's `Content-Type` does).
    pub content_type: Option<&'a str>,
    /// MQTT 5 user properties: one named like a field of the product gives
    /// that field (a topic capture wins over it, it wins over the
    /// payload), one named like the source's top-level event time key
    /// gives the event time when the payload has none.
    pub user_properties: &'a [(String, String)],
}


/// The node's MQTT ingest: the [`Ingestor`] plus the topic routes and the
/// Sparkplug host state and routes. One per node (the Sparkplug host state
/// and command channel are shared by the broker and the external client).
/// Cheap to clone; derefs to its [`Ingestor`] for the kind-agnostic paths.
#[derive(Clone)]
pub struct MqttIngest {
    inner: Arc<Inner>,
}

struct Inner {
    ingestor: Ingestor,
    /// The topic routes of the definitions in force, rebuilt on reload.
    routes: RwLock<Arc<MqttRoutes>>,
    sparkplug: sparkplug_route::SparkplugIngest,
}

impl std::ops::Deref for MqttIngest {
    type Target = Ingestor;

    fn deref(&self) -> &Ingestor {
        &self.inner.ingestor
    }
}

impl MqttIngest {
    /// Builds the routing tables of `ingestor`'s definitions and keeps
    /// them following its reloads.
    pub fn new(ingestor: Ingestor) -> MqttIngest {
        let products = ingestor.products();
        let metrics = ingestor.metrics().clone();
        let inner = Arc::new(Inner {
            routes: RwLock::new(Arc::new(MqttRoutes::new(&products, &metrics))),
            sparkplug: sparkplug_route::SparkplugIngest::new(&products, &metrics),
            ingestor,
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        inner.ingestor.on_follow(Box::new(move |products, metrics| {
            if let Some(inner) = weak.upgrade() {
                let routes = Arc::new(MqttRoutes::new(products, metrics));
                *inner.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
                inner.sparkplug.reroute(products, metrics);
            }
        }));
        MqttIngest { inner }
    }

    /// The ingestor this dispatches into.
    pub fn ingestor(&self) -> &Ingestor {
        &self.inner.ingestor
    }

    /// The MQTT routes of the definitions in force.
    pub fn routes(&self) -> Arc<MqttRoutes> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn sparkplug(&self) -> &sparkplug_route::SparkplugIngest {
        &self.inner.sparkplug
    }

    /// Every MQTT subscription the node's sources need (`mqtt` topic
    /// templates and `sparkplug` groups), each once, with its QoS.
    pub fn filters(&self) -> Vec<(String, u8)> {
        let mut filters = self.routes().filters();
        filters.extend(self.inner.sparkplug.filters());
        filters
    }

    /// Routes an MQTT message to every matching product source, runs their
    /// pipelines and queues the writes (waiting while the writer's queue is
    /// full). The returned result resolves once it is all durable.
    pub async fn submit(&self, message: MqttMessage<'_>) -> PendingMessage {
        let arrival = Timestamp::now();
        let mut pending = PendingMessage::empty();
        let sparkplug = self.submit_sparkplug(&message, arrival, &mut pending).await;
        let routes = self.routes();
        let matched = routes.matching(message.topic);
        if matched.is_empty() && sparkplug {
            return pending;
        }
        if matched.is_empty() {
            self.ingestor()
                .metrics()
                .unmatched_messages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(
                topic = message.topic,
                "no product source matches this topic"
            );
            return PendingMessage::empty();
        }
        let origin = Origin {
            source: format!("mqtt:{}", message.topic),
            actor: message.client.map(str::to_string),
        };
        for m in matched {
            let route = m.route;
            let counters = &route.counters;
            counters.message(message.payload.len());
            // MQTT 5 user properties before the topic's captures: the last
            // of a name wins, and the topic is what the broker routed on.
            let with_properties;
            let captures = if message.user_properties.is_empty() {
                &m.captures
            } else {
                with_properties = message
                    .user_properties
                    .iter()
                    .chain(&m.captures)
                    .cloned()
                    .collect::<Vec<_>>();
                &with_properties
            };
            let provenance = Provenance {
                source_id: &route.source_id,
                topic: Some(message.topic),
                captures,
                arrival,
                origin: &origin,
                redelivery: message.redelivery,
            };
            let plan = match message.content_type {
                Some(content_type)
                    if route.shape.format == PayloadFormat::Json
                        && is_ndjson_content_type(content_type) =>
                {
                    let shape = route.shape.clone().with_format(PayloadFormat::Ndjson);
                    std::borrow::Cow::Owned(Plan::new(&route.product, &shape))
                }
                _ => std::borrow::Cow::Borrowed(&route.plan),
            };
            if let Some(write) = self
                .ingestor()
                .queue_planned(
                    &route.product,
                    &plan,
                    message.payload,
                    &provenance,
                    message.retained,
                    counters,
                )
                .await
            {
                pending.push(write);
            }
        }
        pending
    }

    /// Handles a message in the Sparkplug namespace when a `sparkplug`
    /// source reads its group: host state, problem counters, rebirth
    /// requests, and one record per update and matching source. `false`
    /// when no Sparkplug source reads it.
    async fn submit_sparkplug(
        &self,
        message: &MqttMessage<'_>,
        arrival: Timestamp,
        pending: &mut PendingMessage,
    ) -> bool {
        let sp = self.sparkplug();
        let sp_routes = sp.routes();
        if sp_routes.is_empty() {
            return false;
        }
        let count = |problem: sparkplug::Problem| sp.metrics().problem(problem);
        let topic = match sparkplug::Topic::parse(message.topic) {
            None => return false,
            Some(Err(problem)) => {
                // Only a group some source reads makes it our problem.
                let group = message.topic.split('/').nth(1).unwrap_or_default();
                if !sp.reads_group_named(group) {
                    return false;
                }
                count(problem);
                debug!(topic = message.topic, %problem, "sparkplug message ignored");
                return true;
            }
            Some(Ok(topic)) => topic,
        };
        if !sp.reads_group(&topic) {
            return false;
        }
        let handled = sp.handle(&topic, message.payload);
        for problem in &handled.problems {
            count(*problem);
        }
        if let Some(first) = handled.problems.first() {
            let node = format!("sparkplug/{}/{}", topic.group, topic.edge_node);
            if self.ingestor().may_warn(&node, "") {
                warn!(topic = message.topic, problem = %first, problems = handled.problems.len(), "sparkplug message problem");
            } else {
                debug!(topic = message.topic, problem = %first, "sparkplug message problem");
            }
        }
        if let Some(rebirth) = handled.rebirth {
            tracing::info!(topic = %rebirth.topic, reason = %rebirth.reason, "requesting a sparkplug rebirth");
            sp.send(
                sparkplug_route::Command {
                    topic: rebirth.topic,
                    payload: rebirth.payload,
                },
            );
        }
        let origin = Origin {
            source: format!("mqtt:{}", message.topic),
            actor: message.client.map(str::to_string),
        };
        if handled.problems.contains(&sparkplug::Problem::BadPayload) {
            self.quarantine_sparkplug(message, &topic, arrival, &origin, pending)
                .await;
        }
        for update in &handled.updates {
            for route in sp_routes.iter().filter(|r| r.accepts(update)) {
                let Some(document) = route.document(update) else {
                    continue;
                };
                let Ok(bytes) = serde_json::to_vec(&document) else {
                    continue;
                };
                route.counters.message(bytes.len());
                let provenance = Provenance {
                    source_id: &route.source_id,
                    topic: Some(message.topic),
                    captures: &[],
                    arrival,
                    origin: &origin,
                    redelivery: message.redelivery,
                };
                if let Some(write) = self
                    .ingestor()
                    .queue_planned(
                        &route.product,
                        &route.plan,
                        &bytes,
                        &provenance,
                        message.retained,
                        &route.counters,
                    )
                    .await
                {
                    pending.push(write);
                }
            }
        }
        true
    }

    /// A Sparkplug payload that does not decode is, for every source that
    /// reads its topic, what any bad payload is under the product's
    /// `quality.on_invalid`: with `quarantine` it is kept whole (durably,
    /// before the PUBACK) with the reason, so it can be looked at and
    /// erased with its entity; otherwise it is counted as rejected.
    async fn quarantine_sparkplug(
        &self,
        message: &MqttMessage<'_>,
        topic: &sparkplug::Topic<'_>,
        arrival: Timestamp,
        origin: &Origin,
        pending: &mut PendingMessage,
    ) {
        let routes = self.sparkplug().routes();
        let entity = topic.device.unwrap_or(topic.edge_node);
        for route in routes.iter().filter(|r| r.reads_topic(topic)) {
            route.counters.message(message.payload.len());
            if route.product.quality.on_invalid != OnInvalid::Quarantine {
                route
                    .counters
                    .payload_rejected(&sparkplug::Problem::BadPayload);
                continue;
            }
            let provenance = Provenance {
                source_id: &route.source_id,
                topic: Some(message.topic),
                captures: &[],
                arrival,
                origin,
                redelivery: message.redelivery,
            };
            let item = whole_payload_item(
                message.payload,
                &provenance,
                vec![sparkplug::Problem::BadPayload.to_string()],
                None,
                Some(entity.to_string()),
            );
            debug!(product = %route.product.name, topic = message.topic, "undecodable sparkplug payload quarantined");
            let mut batch = IngestBatch::default();
            batch.quarantine.push(item);
            let prepared = Prepared {
                batch,
                rejected: Vec::new(),
                event_times: Vec::new(),
            };
            if let Some(write) = self
                .ingestor()
                .queue(
                    &route.product,
                    prepared,
                    message.retained,
                    arrival,
                    &route.counters,
                )
                .await
            {
                pending.push(write);
            }
        }
    }

}
