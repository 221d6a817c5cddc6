//! Sparkplug B sources in the ingest path: MQTT messages in the `spBv1.0`
//! namespace go through the [`Host`] state machine, its decoded updates
//! become one JSON document per product source (the shape
//! `SourceShape::sparkplug` reads) and run through the ordinary pipeline,
//! so coercion, validation, quarantine and durability acks are the same as
//! for every other source. Rebirth requests leave through
//! [`SparkplugIngest::commands`], which the embedded broker and the
//! external broker client both publish.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value as Json};
use tokio::sync::broadcast;

use super::host::{Host, Topic, Update, UpdateKind, NAMESPACE};
use crate::ingest::{IngestMetrics, SourceCounters};
use super::metrics::SparkplugMetrics;
use super::SparkplugSource;
use crate::pipeline::Plan;
use crate::product::{Product, ProductSet};

/// Commands queued for publishing; a slow publisher loses the oldest
/// (a rebirth request is repeated anyway while the problem persists).
const COMMAND_QUEUE: usize = 64;

/// A message the node publishes (QoS 1, not retained).
#[derive(Clone, Debug)]
pub struct Command {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// One Sparkplug source of one product.
pub(crate) struct SparkplugRoute {
    pub product: Arc<Product>,
    /// `sparkplug:<index in the product's sources>`.
    pub source_id: String,
    /// The source's shape compiled against the product once, for every
    /// message.
    pub plan: Plan,
    pub counters: Arc<SourceCounters>,
    source: SparkplugSource,
}

/// The host state and routing table of every Sparkplug source. The table
/// follows definition reloads ([`SparkplugIngest::reroute`]); the host
/// state (births, aliases, sequence numbers) and the command channel stay.
pub struct SparkplugIngest {
    pub(crate) host: Mutex<Host>,
    routes: std::sync::RwLock<Arc<Vec<SparkplugRoute>>>,
    commands: broadcast::Sender<Command>,
    metrics: Arc<SparkplugMetrics>,
}

impl SparkplugIngest {
    /// Registers the Sparkplug counters on `metrics`: one per node.
    pub fn new(products: &ProductSet, metrics: &IngestMetrics) -> SparkplugIngest {
        let own = Arc::new(SparkplugMetrics::default());
        metrics.register_kind(own.clone());
        SparkplugIngest {
            metrics: own,
            host: Mutex::new(Host::new()),
            routes: std::sync::RwLock::new(Arc::new(Self::table(products, metrics))),
            commands: broadcast::channel(COMMAND_QUEUE).0,
        }
    }

    /// Replaces the routing table with `products`' Sparkplug sources.
    pub(crate) fn reroute(&self, products: &ProductSet, metrics: &IngestMetrics) {
        let table = Arc::new(Self::table(products, metrics));
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// The current routing table (a message is routed on one table, to
    /// its end).
    pub(crate) fn routes(&self) -> Arc<Vec<SparkplugRoute>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn table(products: &ProductSet, metrics: &IngestMetrics) -> Vec<SparkplugRoute> {
        let mut routes = Vec::new();
        for product in products.iter() {
            for (index, source) in product.sources.iter().enumerate() {
                if let Some(sp) = source.get::<SparkplugSource>() {
                    let source_id = source.id(index).to_string();
                    routes.push(SparkplugRoute {
                        counters: metrics.source(&product.name, &source_id),
                        plan: Plan::new(product, &source.shape()),
                        product: product.clone(),
                        source_id,
                        source: sp.clone(),
                    });
                }
            }
        }
        routes
    }

    /// `spBv1.0/<group>/#` once per group, QoS 1.
    pub fn filters(&self) -> Vec<(String, u8)> {
        let mut filters: Vec<(String, u8)> = Vec::new();
        for route in self.routes().iter() {
            let filter = format!("{NAMESPACE}/{}/#", route.source.group);
            if !filters.iter().any(|(f, _)| *f == filter) {
                filters.push((filter, 1));
            }
        }
        filters
    }

    /// Whether any source reads `topic`'s group.
    pub(crate) fn reads_group(&self, topic: &Topic<'_>) -> bool {
        self.reads_group_named(topic.group)
    }

    pub(crate) fn reads_group_named(&self, group: &str) -> bool {
        self.routes().iter().any(|r| r.source.group == group)
    }

    /// The commands to publish (rebirth requests), from now on.
    pub fn commands(&self) -> broadcast::Receiver<Command> {
        self.commands.subscribe()
    }

    /// The Sparkplug counters.
    pub fn metrics(&self) -> &SparkplugMetrics {
        &self.metrics
    }

    pub(crate) fn send(&self, command: Command) {
        self.metrics.rebirth();
        // No receiver (no broker running yet): nothing to publish through.
        let _ = self.commands.send(command);
    }

    /// Locks the host; a poisoned lock means a panic elsewhere, and the
    /// state is still a consistent picture (each message updates it
    /// before any code that could panic).
    pub(crate) fn handle(&self, topic: &Topic<'_>, payload: &[u8]) -> super::host::Handled {
        let mut host = match self.host.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        host.handle(topic, payload, Instant::now())
    }
}

impl SparkplugRoute {
    /// Whether this source takes `update` (see `SparkplugSource`).
    pub(crate) fn accepts(&self, update: &Update) -> bool {
        let s = &self.source;
        s.group == update.group
            && s.edge_node.as_ref().is_none_or(|n| *n == update.edge_node)
            && match (&s.device, &update.device) {
                (Some(want), Some(device)) => want == device,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    /// Whether this source reads messages of `topic` (its group, edge
    /// node and device), whatever they carry.
    pub(crate) fn reads_topic(&self, topic: &super::host::Topic<'_>) -> bool {
        let s = &self.source;
        s.group == topic.group
            && s.edge_node.as_ref().is_none_or(|n| n == topic.edge_node)
            && match (&s.device, topic.device) {
                (Some(want), Some(device)) => want == device,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    /// The JSON document of `update` for this source; `None` when it
    /// carries nothing this source maps.
    pub(crate) fn document(&self, update: &Update) -> Option<Json> {
        let mut metrics = Map::new();
        for (name, value) in &update.metrics {
            if self.source.metrics.values().any(|m| m == name) {
                metrics.insert(name.clone(), value.clone());
            }
        }
        let online = match (update.kind, &self.source.online) {
            (_, None) | (UpdateKind::Data, _) => None,
            (UpdateKind::Birth, Some(_)) => Some(true),
            (UpdateKind::Death, Some(_)) => Some(false),
        };
        if metrics.is_empty() && online.is_none() {
            return None;
        }
        let id = update.device.as_deref().unwrap_or(&update.edge_node);
        let mut doc = Map::new();
        doc.insert(self.product.key.clone(), Json::from(id));
        doc.insert("__metrics".to_string(), Json::Object(metrics));
        if let Some(ts) = update.timestamp {
            doc.insert("__ts".to_string(), Json::from(ts));
        }
        if let Some(online) = online {
            doc.insert("__online".to_string(), Json::Bool(online));
        }
        Some(Json::Object(doc))
    }
}
