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
pub mod digest;
pub mod envelope;
mod http;
pub mod metrics;
mod mqtt;
mod nats;
#[cfg(feature = "nats")]
mod nats_consumer;
pub mod planner;
pub mod reference;
mod reference_http;
#[cfg(feature = "nats")]
mod reference_nats;
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
pub use metrics::{ConsumerLag, ConsumerStatus, ReferenceStatus, SyncMetrics, UpstreamStatus};
pub use reference_http::POLL_WAIT as REFERENCE_POLL_WAIT;

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
    #[error("reference data: {0}")]
    Reference(String),
    #[error("preparing the sync digests: {0}")]
    Digests(StoreError),
}

/// What the API needs of sync: the receiver (aggregator mode) and the
/// figures for `/metrics`.
pub struct SyncHandle {
    pub store: Store,
    pub metrics: Arc<SyncMetrics>,
    /// `Some` when this node accepts `POST /sync/v1`.
    pub receiver: Option<Arc<Receiver>>,
    /// `Some` when this node publishes reference data (an upstream with
    /// `publish = "reference"`): serves `GET /sync/v1/reference/…`.
    #[cfg(feature = "nats")]
    pub reference: Option<Arc<reference_nats::BucketReader>>,
    /// The node's shutdown: a held long-poll answers at once.
    pub shutdown: CancellationToken,
}

impl SyncHandle {
    /// The sync families of `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        self.metrics.encode_metrics(&self.store, enc)
    }

    /// Every upstream's status (reads the outbox figures: blocking, cheap).
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.metrics.upstreams(&self.store)
    }

    /// The JetStream durables this node consumes, with their lag.
    pub fn consumers(&self) -> Vec<ConsumerStatus> {
        self.metrics.consumers()
    }

    /// The reference replicas this node keeps (`from:` rules).
    pub fn references(&self) -> Vec<ReferenceStatus> {
        self.metrics.references()
    }

    /// The reference page of `product` after `after` (long-poll), when
    /// this node publishes reference data.
    pub async fn reference_page(
        &self,
        product: &str,
        after: u64,
        wait: std::time::Duration,
    ) -> Option<Result<reference::ReferencePage, TransportError>> {
        #[cfg(feature = "nats")]
        {
            let reader = self.reference.as_ref()?;
            Some(reader.page(product, after, wait, &self.shutdown).await)
        }
        // Without `nats` no upstream publishes reference data (a NATS
        // upstream is refused at start): there is nothing to serve.
        #[cfg(not(feature = "nats"))]
        {
            let _ = (product, after, wait);
            None
        }
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
        crate::policy::masking::MaskSecret::of_store(store)?,
    )));
    Ok(())
}

/// Aggregator mode: ingestion keeps the held digests from now on; they
/// are rebuilt from the instances first (`always`, or when the store
/// predates them), so what is there is what they say.
pub fn prepare_held_digests(
    store: &Store,
    products: &ProductSet,
    always: bool,
) -> Result<(), StoreError> {
    store.enable_held_digests();
    if always || !store.digests_built(false)? {
        let names: Vec<String> = products.names().map(str::to_string).collect();
        let changed = store.rebuild_held_digests(&names)?;
        info!(changed, "held sync digests rebuilt from the instances");
    }
    Ok(())
}

/// Edge side: the sent digests are kept by the outbox from the moment the
/// planner is installed; a store that predates them gets them rebuilt
/// from its instances (what the rules would send now).
pub fn prepare_sent_digests(store: &Store, products: &ProductSet) -> Result<(), StoreError> {
    if !store.digests_built(true)? {
        let names: Vec<String> = products.names().map(str::to_string).collect();
        let changed = store.rebuild_sent_digests(&names)?;
        info!(changed, "sent sync digests built from the instances");
    }
    Ok(())
}

/// Checks `[aggregator.nats]` as [`start`] would, without connecting.
pub fn check_aggregator_nats(config: &crate::config::AggregatorNatsConfig) -> Result<(), String> {
    #[cfg(feature = "nats")]
    let checked = nats_consumer::check(config).map(drop);
    #[cfg(not(feature = "nats"))]
    let checked = nats::Endpoint::new(&nats::EndpointSettings::of_aggregator(config)).map(drop);
    checked.map_err(|e| format!("aggregator.nats: {e}"))
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

/// Checks every `from:` rule of `products` as [`start`] would: its
/// upstream can carry reference data (`nats://`, `tls://`, `https://`;
/// not MQTT), and its `where` has what it needs (`node_site`).
pub fn check_references(config: &HubConfig, products: &ProductSet, node_id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for product in products.iter() {
        for rule in &product.reference {
            let at = format!("product `{}`, `sync: - from: {}`", product.name, rule.from);
            if let Err(e) = rule.row_filter(node_id, config.node_site.as_deref()) {
                problems.push(format!("{at}: {e}"));
            }
            let Some(upstream) = config.upstreams.get(&rule.from) else {
                problems.push(format!("{at}: no such upstream"));
                continue;
            };
            match upstream.url.as_deref() {
                Some(url) if url.starts_with("mqtt://") || url.starts_with("mqtts://") => {
                    problems.push(format!(
                        "{at}: reference data does not flow over MQTT (a broker has no \"everything after revision N\" to resume from); use a nats:// or https:// upstream"
                    ))
                }
                Some(url) if nats::is_nats_url(url) => {
                    if let Err(e) = nats::check_bucket_name(&upstream.reference_bucket) {
                        problems.push(format!("{at}: {e}"));
                    }
                }
                _ => {}
            }
        }
    }
    problems
}

/// Starts one task per `from:` rule: a key-value watch (NATS) or a
/// long-poll (HTTPS) applying into `store`. A rule whose upstream is
/// parked (no `url`) keeps what the store holds.
fn start_references(
    config: &HubConfig,
    node_id: &str,
    products: &Arc<ProductSet>,
    ingestor: &Ingestor,
    metrics: &Arc<SyncMetrics>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), SyncError> {
    let problems = check_references(config, products, node_id);
    if let Some(first) = problems.into_iter().next() {
        return Err(SyncError::Reference(first));
    }
    let store = ingestor.store();
    for product in products.iter() {
        for rule in &product.reference {
            let upstream_error = |source| SyncError::Upstream {
                upstream: rule.from.clone(),
                source,
            };
            let applier = reference::Applier::new(
                product,
                rule,
                node_id,
                config.node_site.as_deref(),
                ingestor.clone(),
                crate::policy::masking::MaskSecret::of_store(store)?,
                metrics.clone(),
            )
            .map_err(SyncError::Reference)?;
            let revision = applier
                .last_revision()
                .map_err(|e| SyncError::Reference(e.to_string()))?;
            metrics.register_reference(&rule.from, &product.name, revision);
            let Some(upstream) = config.upstreams.get(&rule.from) else {
                continue;
            };
            let Some(url) = upstream.url.as_deref() else {
                continue;
            };
            let span = info_span!("sync_reference", upstream = %rule.from, product = %product.name);
            if nats::is_nats_url(url) {
                let endpoint =
                    nats::Endpoint::new(&nats::EndpointSettings::of_upstream(url, upstream))
                        .map_err(upstream_error)?;
                // Without `nats`, `new` refused: no endpoint exists.
                #[cfg(not(feature = "nats"))]
                match endpoint {}
                #[cfg(feature = "nats")]
                tasks.spawn(
                    reference_nats::watch(
                        endpoint,
                        upstream.reference_bucket.clone(),
                        format!("meshlet-reference-{node_id}-{}", rule.from),
                        applier,
                        metrics.clone(),
                        shutdown.clone(),
                    )
                    .instrument(span),
                );
            } else {
                let transport = http::HttpTransport::new(url, upstream).map_err(upstream_error)?;
                tasks.spawn(
                    reference_http::poll(transport, applier, metrics.clone(), shutdown.clone())
                        .instrument(span),
                );
            }
        }
    }
    Ok(())
}

/// The reader behind `GET /sync/v1/reference/…`: the first upstream with
/// `publish = "reference"` on NATS.
#[cfg(feature = "nats")]
fn reference_reader(
    config: &HubConfig,
    node_id: &str,
) -> Result<Option<Arc<reference_nats::BucketReader>>, SyncError> {
    let Some((name, upstream, url)) = config.upstreams.iter().find_map(|(name, u)| {
        let url = u.url.as_deref()?;
        (u.publish == crate::config::PublishMode::Reference && nats::is_nats_url(url))
            .then_some((name, u, url))
    }) else {
        return Ok(None);
    };
    let endpoint = nats::Endpoint::new(&nats::EndpointSettings::of_upstream(url, upstream))
        .map_err(|source| SyncError::Upstream {
            upstream: name.clone(),
            source,
        })?;
    Ok(Some(Arc::new(reference_nats::BucketReader::new(
        endpoint,
        upstream.reference_bucket.clone(),
        format!("meshlet-reference-reader-{node_id}"),
    ))))
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
    prepare_sent_digests(store, products).map_err(SyncError::Digests)?;
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
    if !config.sync.verify_interval.is_zero() {
        let verified = config
            .upstreams
            .iter()
            .filter(|(_, u)| u.url.is_some() && u.publish != crate::config::PublishMode::Reference);
        for (name, upstream) in verified {
            let verifier = digest::Verifier::new(name, upstream, node_id).map_err(|e| {
                SyncError::Upstream {
                    upstream: name.clone(),
                    source: TransportError::Config(format!("sync.verify_interval: {e}")),
                }
            })?;
            tasks.spawn(
                digest::periodic(
                    verifier,
                    config.sync.verify_interval,
                    store.clone(),
                    products.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )
                .instrument(info_span!("sync_verify", upstream = %name)),
            );
        }
    }
    let aggregator = &config.aggregator;
    if aggregator.enabled || aggregator.mqtt.is_some() || aggregator.nats.is_some() {
        prepare_held_digests(store, products, aggregator.digest_rebuild_on_start)
            .map_err(SyncError::Digests)?;
    }
    let receiver = (aggregator.enabled || aggregator.mqtt.is_some() || aggregator.nats.is_some())
        .then(|| Arc::new(Receiver::new(ingestor.clone(), metrics.clone())));
    #[cfg(not(feature = "nats"))]
    if let Some(nats) = &aggregator.nats {
        return Err(SyncError::Upstream {
            upstream: "aggregator.nats".to_string(),
            source: nats::unavailable(&nats.url),
        });
    }
    #[cfg(feature = "nats")]
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
    start_references(
        config, node_id, products, ingestor, &metrics, shutdown, tasks,
    )?;
    Ok(Arc::new(SyncHandle {
        store: store.clone(),
        metrics,
        receiver,
        #[cfg(feature = "nats")]
        reference: reference_reader(config, node_id)?,
        shutdown: shutdown.clone(),
    }))
}
