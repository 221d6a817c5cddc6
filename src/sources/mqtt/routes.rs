//! Which product sources a topic feeds.
//!
//! Every MQTT source of every product contributes its topic template; a
//! message goes to every source whose template matches (one sensor topic
//! may feed a live-state product and a history-heavy one), with the
//! template's captures as field values. Matching is a linear walk over the
//! templates: a gateway has tens of them, and a template match is a few
//! string compares per level.

use std::sync::Arc;

use crate::ingest::{IngestMetrics, SourceCounters};
use crate::pipeline::{Plan, SourceShape};
use super::MqttSource;
use crate::product::{Product, ProductSet};

/// One MQTT source of one product.
#[derive(Clone, Debug)]
pub struct MqttRoute {
    pub product: Arc<Product>,
    /// `mqtt:<index in the product's sources>`.
    pub source_id: String,
    pub shape: SourceShape,
    /// The shape compiled against the product once, for every message.
    pub plan: Plan,
    pub qos: u8,
    /// This source's counters, looked up once here instead of per message.
    pub counters: Arc<SourceCounters>,
    template: crate::product::TopicTemplate,
}

/// A topic's match: the route and the captured field values.
pub struct Matched<'r> {
    pub route: &'r MqttRoute,
    pub captures: Vec<(String, String)>,
}

/// The routing table of a product set.
#[derive(Clone, Debug, Default)]
pub struct MqttRoutes {
    routes: Vec<MqttRoute>,
}

impl MqttRoutes {
    pub fn new(products: &ProductSet, metrics: &IngestMetrics) -> MqttRoutes {
        let mut routes = Vec::new();
        for product in products.iter() {
            for (index, source) in product.sources.iter().enumerate() {
                if let Some(mqtt) = source.get::<MqttSource>() {
                    let source_id = source.id(index).to_string();
                    let shape = SourceShape::from_source(source);
                    routes.push(MqttRoute {
                        plan: Plan::new(product, &shape),
                        counters: metrics.source(&product.name, &source_id),
                        product: product.clone(),
                        source_id,
                        shape,
                        qos: mqtt.qos,
                        template: mqtt.topic.clone(),
                    });
                }
            }
        }
        MqttRoutes { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &MqttRoute> {
        self.routes.iter()
    }

    /// The subscription filters, each once, with the highest QoS any of its
    /// sources asks for.
    pub fn filters(&self) -> Vec<(String, u8)> {
        let mut filters: Vec<(String, u8)> = Vec::new();
        for route in &self.routes {
            let filter = route.template.filter();
            match filters.iter_mut().find(|(f, _)| *f == filter) {
                Some((_, qos)) => *qos = (*qos).max(route.qos),
                None => filters.push((filter, route.qos)),
            }
        }
        filters
    }

    /// Every source `topic` feeds, in definition order.
    pub fn matching<'r>(&'r self, topic: &str) -> Vec<Matched<'r>> {
        self.routes
            .iter()
            .filter_map(|route| {
                route.template.match_topic(topic).map(|captures| Matched {
                    route,
                    captures: captures
                        .into_iter()
                        .map(|(field, value)| (field.to_string(), value.to_string()))
                        .collect(),
                })
            })
            .collect()
    }
}
