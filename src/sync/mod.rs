//! Upstream sync: sync rules turned into outbox entries (`planner`), one
//! sender per upstream (`sender`) over MQTT (`mqtt`), HTTPS (`http`) or
//! NATS JetStream (`nats`), the wire envelope (`envelope`), and aggregator
//! mode (`apply`; `nats_consumer` for a JetStream durable): the same
//! binary receiving envelopes from many edges.
//!
//! Guarantees, end to end: the outbox is written in the same transaction
//! as the change (store), an entry is deleted only after the upstream
//! acknowledged it (sender) — a refusal is never an acknowledgement —,
//! and the receiver skips what its per-(origin, link, lane, product)
//! high-water mark already covers (apply) — at-least-once on the wire,
//! exactly-once in effect.

pub mod apply;
pub mod envelope;
mod http;
pub mod metrics;
mod mqtt;
mod nats;
mod nats_consumer;
pub mod planner;
mod sender;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, Instrument};

use crate::config::HubConfig;
use crate::ingest::Ingestor;
use crate::product::ProductSet;
use crate::store::{Store, StoreError};

pub use apply::NodeStatus;
pub use apply::{Applied, ApplyError, Receiver};
pub use metrics::{ConsumerLag, ConsumerStatus, SyncMetrics, UpstreamStatus};

/// Why a send did not get acknowledged, or a transport cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("upstream settings: {0}")]
    Config(String),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream refused the batch: {0}")]
    Refused(String),
    /// The upstream cannot take the batch yet (it does not know the
    /// product): the entries stay in the outbox and are sent again.
    #[error("upstream cannot take the batch yet ({reason}): {detail}")]
    Deferred {
        reason: &'static str,
        detail: String,
    },
    /// The envelope is larger than the upstream takes in one message
    /// (NATS `max_payload`): the sender sends fewer records at a time.
    #[error("envelope too large for the upstream: {0}")]
    TooLarge(String),
    #[error("outbox: {0}")]
    Store(String),
}

/// The refusal code of an aggregator that does not know a product.
pub const UNKNOWN_PRODUCT: &str = "unknown_product";

/// Why sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("upstream `{upstream}`: {source}")]
    Upstream {
        upstream: String,
        source: TransportError,
    },
    #[error("reading the mask secret: {0}")]
    Secret(#[from] StoreError),
}

/// What the API needs of sync: the receiver (aggregator mode) and the
/// figures for `/metrics`.
pub struct SyncHandle {
    pub store: Store,
    pub metrics: Arc<SyncMetrics>,
    /// `Some` when this node accepts `POST /sync/v1`.
    pub receiver: Option<Arc<Receiver>>,
}

impl SyncHandle {
    pub fn render_prometheus(&self, out: &mut String) {
        self.metrics.render_prometheus(&self.store, out);
    }

    /// Every upstream's status (reads the outbox figures: blocking, cheap).
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.metrics.upstreams(&self.store)
    }

    /// The JetStream durables this node consumes, with their lag.
    pub fn consumers(&self) -> Vec<ConsumerStatus> {
        self.metrics.consumers()
    }

    /// The edges this node heard from (empty unless an aggregator).
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.receiver
            .as_ref()
            .map(|r| r.nodes())
            .unwrap_or_default()
    }
}

/// Installs the outbox planner of `products`' sync rules on `store`: every
/// later write and erasure enqueues, in its own transaction, what the rules
/// owe the upstreams. The node does it at start; the offline commands that
/// change data (`meshlet erase`, `meshlet quarantine replay`) do it too, so
/// a change made with the node stopped is synced like the same change made
/// through a running node's API.
pub fn install_planner(store: &Store, products: &Arc<ProductSet>) -> Result<(), StoreError> {
    store.set_outbox_planner(Arc::new(planner::RulePlanner::new(
        products.clone(),
        store.mask_secret()?,
    )));
    Ok(())
}

/// Checks `[aggregator.nats]` as [`start`] would, without connecting.
pub fn check_aggregator_nats(config: &crate::config::AggregatorNatsConfig) -> Result<(), String> {
    nats_consumer::check(config)
        .map(drop)
        .map_err(|e| format!("aggregator.nats: {e}"))
}

/// Checks an upstream's settings as [`start`] would (URL, TLS files,
/// broker options) without connecting.
pub fn check_upstream(
    name: &str,
    upstream: &crate::config::UpstreamConfig,
    node_id: &str,
) -> Result<(), SyncError> {
    sender::Transport::new(name, upstream, node_id)
        .map(drop)
        .map_err(|source| SyncError::Upstream {
            upstream: name.to_string(),
            source,
        })
}

/// Installs the outbox planner, starts one sender per upstream and, in
/// aggregator mode, the receiver (and its MQTT subscription).
pub fn start(
    config: &HubConfig,
    node_id: &str,
    store: &Store,
    products: &Arc<ProductSet>,
    ingestor: &Ingestor,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<Arc<SyncHandle>, SyncError> {
    let metrics = Arc::new(SyncMetrics::default());
    install_planner(store, products)?;
    for (name, upstream) in &config.upstreams {
        let transport = sender::Transport::new(name, upstream, node_id).map_err(|source| {
            SyncError::Upstream {
                upstream: name.clone(),
                source,
            }
        })?;
        metrics.register_upstream(name);
        let (batch_size, batch_age) = sender::batch_timing(products, name);
        info!(upstream = %name, url = upstream.url.as_deref().unwrap_or("(parked)"), "sync sender started");
        let sender = sender::Sender {
            upstream: name.clone(),
            origin: node_id.to_string(),
            store: store.clone(),
            transport,
            settings: config.sync.clone(),
            max_bytes: upstream
                .max_outbox_bytes
                .unwrap_or(config.sync.max_outbox_bytes),
            batch_size,
            batch_age,
            metrics: metrics.clone(),
            deferred: Default::default(),
            max_records: None,
        };
        tasks.spawn(
            sender
                .run(shutdown.clone())
                .instrument(info_span!("sync_sender", upstream = %name)),
        );
    }
    let aggregator = &config.aggregator;
    let receiver = (aggregator.enabled || aggregator.mqtt.is_some() || aggregator.nats.is_some())
        .then(|| Arc::new(Receiver::new(ingestor.clone(), metrics.clone())));
    if let (Some(receiver), Some(nats)) = (&receiver, &aggregator.nats) {
        let endpoint = nats_consumer::check(nats).map_err(|source| SyncError::Upstream {
            upstream: "aggregator.nats".to_string(),
            source,
        })?;
        tasks.spawn(
            nats_consumer::consume(
                nats.clone(),
                endpoint,
                node_id.to_string(),
                receiver.clone(),
                metrics.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("sync_aggregator_nats", durable = %nats.durable)),
        );
    }
    if let (Some(receiver), Some(broker)) = (&receiver, &aggregator.mqtt) {
        let prefix = aggregator
            .topic_prefix
            .clone()
            .unwrap_or_else(|| "meshlet/sync".to_string());
        tasks.spawn(
            mqtt::subscribe(
                broker.clone(),
                prefix,
                node_id.to_string(),
                receiver.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("sync_aggregator_mqtt")),
        );
    }
    Ok(Arc::new(SyncHandle {
        store: store.clone(),
        metrics,
        receiver,
    }))
}
