//! The MQTT transport: each envelope is one QoS 1 publish to
//! `<topic_prefix>/<origin node>/<product>` on any broker; the broker's
//! PUBACK is the acknowledgement. One publish is in flight at a time, so
//! the first PUBACK after it is its own; after any failure the client is
//! dropped and rebuilt, so a stale retransmission can never be mistaken
//! for the current one. TLS and client certificates use the external
//! broker client's setup (`tls::mqtt::options`).
//!
//! Also the aggregator's subscriber: `<topic_prefix>/+/+` with a persistent
//! session and manual acks; a message is acknowledged once applied and
//! durable (or refused as malformed, which retrying cannot fix). An
//! envelope of a product the aggregator does not know is not acknowledged:
//! the broker's session keeps it and redelivers it (with growing back-off)
//! until a reload brings the definition.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::apply::{ApplyError, Receiver};
use super::TransportError;
use crate::config::{ExternalBrokerConfig, UpstreamConfig};

pub struct MqttTransport {
    options: MqttOptions,
    topic_prefix: String,
    origin: String,
    client: Option<(AsyncClient, EventLoop)>,
}

/// The broker settings of an upstream, in the external client's shape.
fn broker_config(url: &str, config: &UpstreamConfig, client_id: String) -> ExternalBrokerConfig {
    ExternalBrokerConfig {
        url: url.to_string(),
        client_id: Some(client_id),
        username: config.username.clone(),
        password: config.password.clone(),
        ca_file: config.ca_file.clone(),
        client_cert_file: config.client_cert_file.clone(),
        client_key_file: config.client_key_file.clone(),
        clean_session: true,
        max_packet_bytes: 64 << 20,
        ..ExternalBrokerConfig::default()
    }
}

impl MqttTransport {
    pub fn new(
        upstream: &str,
        url: &str,
        config: &UpstreamConfig,
        origin: &str,
    ) -> Result<MqttTransport, TransportError> {
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("meshlet-sync-{origin}-{upstream}"));
        let options = crate::tls::mqtt::options(&broker_config(url, config, client_id), origin)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        Ok(MqttTransport {
            options,
            topic_prefix: config.topic_prefix.trim_end_matches('/').to_string(),
            origin: origin.to_string(),
            client: None,
        })
    }

    /// Publishes one encoded envelope; Ok once the broker sent PUBACK.
    pub async fn send(&mut self, product: &str, body: Vec<u8>) -> Result<(), TransportError> {
        let topic = format!("{}/{}/{}", self.topic_prefix, self.origin, product);
        let result = self.publish(topic, body).await;
        if result.is_err() {
            self.client = None;
        }
        result
    }

    async fn publish(&mut self, topic: String, body: Vec<u8>) -> Result<(), TransportError> {
        let options = self.options.clone();
        let (client, eventloop) = self
            .client
            .get_or_insert_with(|| AsyncClient::new(options, 16));
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let mut published = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(_))) => published = true,
                Ok(Event::Incoming(Packet::PubAck(_))) if published => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(TransportError::Unreachable(e.to_string())),
            }
        }
    }
}

/// Aggregator: applies envelopes published under `topic_prefix` until
/// `shutdown`, reconnecting with back-off.
pub async fn subscribe(
    config: ExternalBrokerConfig,
    topic_prefix: String,
    node_id: String,
    receiver: Arc<Receiver>,
    shutdown: CancellationToken,
) {
    let mut config = config;
    if config.client_id.is_none() {
        config.client_id = Some(format!("meshlet-aggregator-{node_id}"));
    }
    let options = match crate::tls::mqtt::options(&config, &node_id) {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "aggregator MQTT settings unusable; not subscribing");
            return;
        }
    };
    let filter = format!("{}/+/+", topic_prefix.trim_end_matches('/'));
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let mut backoff = Duration::from_millis(200);
    // Set while the last envelope could not be applied: reconnecting does
    // not reset the back-off then, so a refused envelope (a product this
    // node does not know yet) is retried ever more slowly, not 5 times a
    // second.
    let mut refusing = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if !refusing {
                    backoff = Duration::from_millis(200);
                }
                if let Err(e) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                    warn!(error = %e, "subscribing to the sync topic failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    warn!(filter = %filter, "the broker refused the sync subscription (check its ACL)");
                } else {
                    info!(filter = %filter, "aggregator subscribed to the sync topic");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // A DUP delivery is a broker's redelivery after a reconnect
                // (e.g. of an envelope this node refused): it can come after
                // later envelopes of its link were applied, so it is held
                // against the envelopes remembered as applied, not against
                // the high-water mark, which would skip it and ack it unapplied.
                match receiver.apply_delivery(&publish.payload, publish.dup).await {
                    Ok(_) | Err(ApplyError::Envelope(_)) => {
                        refusing = false;
                        if let Err(e) = client.ack(&publish).await {
                            warn!(error = %e, "sync PUBACK not sent; the broker will redeliver");
                        }
                    }
                    Err(e) => {
                        // Not acknowledged: reconnecting makes the broker
                        // redeliver it (and what follows).
                        warn!(error = %e, topic = %publish.topic, retry_in = ?backoff, "sync envelope not applied; not acknowledged, reconnecting for redelivery");
                        refusing = true;
                        let _ = client.disconnect().await;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "aggregator MQTT connection failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    let _ = client.disconnect().await;
}
