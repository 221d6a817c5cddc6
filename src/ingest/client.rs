//! External broker mode: the node subscribes to Mosquitto, EMQX or any MQTT
//! 3.1.1 broker with rumqttc.
//!
//! The session is persistent (`clean_session = false`, a stable client id),
//! so the broker queues QoS 1 messages while the node is down or
//! restarting, and acks are manual: a message is acknowledged only after
//! its records passed the durability barrier, in the order received. A
//! write that fails is not acknowledged; the client reconnects so the
//! broker redelivers it (the dedupe set recognises what was already
//! written).
//!
//! As a Sparkplug primary host (see `sparkplug_state`), the client
//! registers an offline STATE as its MQTT will at every CONNECT, publishes
//! online after each CONNACK and offline before a clean DISCONNECT. It
//! also subscribes to its own STATE topic: an offline there while it runs
//! (the will of an earlier session, delivered late by the broker, or any
//! client's retained message) is answered with online again, so edges are
//! never left believing a running host is gone.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::sparkplug_state::{HostSession, PrimaryHost};
use super::{Ingestor, MqttMessage, PendingMessage};
use crate::config::ExternalBrokerConfig;

/// Capacity of rumqttc's request channel (our acks and subscriptions).
const REQUEST_CHANNEL: usize = 1_024;
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Why the external broker settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("mqtt.external.url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("mqtt.external: cannot read {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt.external: {0}")]
    Tls(String),
}

/// Builds the rumqttc options: address, identity, session, TLS.
pub fn options(
    config: &ExternalBrokerConfig,
    node_id: &str,
) -> Result<MqttOptions, ClientConfigError> {
    let url_error = |reason: &str| ClientConfigError::Url {
        url: config.url.clone(),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(rest) = config.url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = config.url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(url_error("expected mqtt://host:port or mqtts://host:port"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| url_error("the port is not a number from 1 to 65535"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(url_error("no host"));
    }
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("meshlet-{node_id}"));
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
        .set_request_channel_capacity(REQUEST_CHANNEL);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if tls {
        let tls_config = tls_config(config)?;
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config)),
        ));
    }
    Ok(options)
}

/// rustls with the ring provider; the configured CA or the system roots;
/// a client certificate when configured.
fn tls_config(config: &ExternalBrokerConfig) -> Result<rustls::ClientConfig, ClientConfigError> {
    rustls_client_config(
        config.ca_file.as_deref(),
        config.client_cert_file.as_deref(),
        config.client_key_file.as_deref(),
    )
}

/// The rustls client setup shared by every outgoing TLS connection (the
/// external broker, sync upstreams): ring provider, a CA file or the
/// system roots, an optional client certificate.
pub(crate) fn rustls_client_config(
    ca_file: Option<&Path>,
    client_cert_file: Option<&Path>,
    client_key_file: Option<&Path>,
) -> Result<rustls::ClientConfig, ClientConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;

    struct Files<'a> {
        ca_file: Option<&'a Path>,
        client_cert_file: Option<&'a Path>,
        client_key_file: Option<&'a Path>,
    }
    let config = Files {
        ca_file,
        client_cert_file,
        client_key_file,
    };
    if config.client_cert_file.is_some() != config.client_key_file.is_some() {
        return Err(ClientConfigError::Tls(
            "client_cert_file and client_key_file go together".to_string(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = read_certs(path, "CA file")?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    ClientConfigError::Tls(format!("CA file {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ClientConfigError::Tls(
                    "no system CA certificates found; set mqtt.external.ca_file".to_string(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs(cert_path, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                ClientConfigError::Tls(format!("client key {}: {e}", key_path.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientConfigError::Tls(format!("client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(ClientConfigError::Tls(
            "client_cert_file and client_key_file go together".to_string(),
        )),
    }
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ClientConfigError> {
    use rustls_pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|source| ClientConfigError::File {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientConfigError::Tls(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientConfigError::Tls(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A new STATE session for the next CONNECT: its offline message becomes
/// the connection's will.
fn renew_state(options: &mut MqttOptions, host: Option<&PrimaryHost>) -> Option<HostSession> {
    let session = host?.session();
    options.set_last_will(LastWill::new(
        session.topic.clone(),
        session.payload(false),
        QoS::AtLeastOnce,
        true,
    ));
    Some(session)
}

/// Whether a STATE payload says `"online": false` (anything else, such as
/// our own online or an unreadable payload, needs no answer).
fn says_offline(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .is_ok_and(|v| v.get("online") == Some(&serde_json::Value::Bool(false)))
}

/// Publishes the session's STATE (retained, QoS 1).
async fn publish_state(client: &AsyncClient, session: &HostSession, online: bool) {
    if let Err(err) = client
        .publish(
            session.topic.clone(),
            QoS::AtLeastOnce,
            true,
            session.payload(online),
        )
        .await
    {
        warn!(error = %err, online, "publishing the sparkplug host STATE failed");
    }
}

/// Runs the client until `shutdown`: connects (and reconnects with
/// back-off), subscribes to every product topic, ingests, acks; as
/// Sparkplug primary host `host`, keeps its STATE.
pub async fn run(
    mut options: MqttOptions,
    ingestor: Ingestor,
    host: Option<PrimaryHost>,
    shutdown: CancellationToken,
) {
    let mut state = renew_state(&mut options, host.as_ref());
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
    let subscriptions = |ingestor: &Ingestor| {
        let mut filters = ingestor.mqtt_filters();
        if let Some(host) = &host {
            filters.push((host.topic().to_string(), 1));
        }
        filters
    };
    let mut filters = subscriptions(&ingestor);
    let mut reloads = ingestor.reloads();
    let mut commands = ingestor.sparkplug().commands();
    let metrics = ingestor.metrics().clone();
    let mut backoff = RECONNECT_MIN;
    loop {
        // One ack pipeline per round; a failed write ends the round.
        // Unbounded on purpose: the event loop must never wait for the
        // acker, because the acker's acks only leave while the event loop
        // is polled (a bounded queue here deadlocked under load). What
        // bounds it is the broker's in-flight window for QoS 1 and, for
        // every message, the writer's bounded queue that `submit_mqtt`
        // waits on.
        let (unacked, unacked_rx) = mpsc::unbounded_channel();
        let write_failed = CancellationToken::new();
        let acker = tokio::spawn(ack_loop(client.clone(), unacked_rx, write_failed.clone()));
        let mut connected = false;
        let ended = loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break RoundEnd::Shutdown,
                _ = write_failed.cancelled() => break RoundEnd::WriteFailed,
                event = eventloop.poll() => event,
                changed = reloads.changed() => {
                    // Definitions reloaded: subscribe to the topics new
                    // sources read, drop those no source reads any more
                    // (a reconnect subscribes to the new list anyway).
                    if changed.is_err() {
                        // Cannot happen while `ingestor` lives; never spin.
                        reloads = ingestor.reloads();
                        continue;
                    }
                    let next = subscriptions(&ingestor);
                    if connected {
                        follow_subscriptions(&client, &filters, &next).await;
                    }
                    filters = next;
                    continue;
                }
                command = commands.recv() => {
                    // Sparkplug rebirth requests; a lagged receiver only
                    // lost requests that are repeated while needed.
                    if let Ok(command) = command {
                        if let Err(err) = client
                            .publish(command.topic, QoS::AtLeastOnce, false, command.payload)
                            .await
                        {
                            warn!(error = %err, "publishing a command failed");
                        }
                    }
                    continue;
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    metrics
                        .upstream_broker_connects
                        .fetch_add(1, Ordering::Relaxed);
                    backoff = RECONNECT_MIN;
                    info!(
                        session_present = ack.session_present,
                        "connected to the external MQTT broker"
                    );
                    if !filters.is_empty() {
                        let subscriptions = filters.iter().map(|(filter, qos)| {
                            rumqttc::SubscribeFilter::new(filter.clone(), qos_of(*qos))
                        });
                        if let Err(err) = client.subscribe_many(subscriptions).await {
                            warn!(error = %err, "subscribing failed");
                        }
                    }
                    connected = true;
                    if let Some(session) = &state {
                        publish_state(&client, session, true).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if state.as_ref().is_some_and(|s| s.topic == publish.topic) =>
                {
                    // Our own STATE: not data. Acked in order like the rest.
                    if let Some(session) = &state {
                        if says_offline(&publish.payload) {
                            info!(topic = %session.topic, "the host STATE says offline while this node runs; publishing online again");
                            publish_state(&client, session, true).await;
                        }
                    }
                    if unacked.send((publish, PendingMessage::empty())).is_err() {
                        break RoundEnd::WriteFailed;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let pending = ingestor
                        .submit_mqtt(MqttMessage {
                            topic: &publish.topic,
                            payload: &publish.payload,
                            retained: publish.retain,
                            redelivery: publish.dup,
                            client: None,
                        })
                        .await;
                    if unacked.send((publish, pending)).is_err() {
                        break RoundEnd::WriteFailed;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    if suback
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        warn!("the broker refused a subscription (check its ACL)");
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    metrics
                        .upstream_broker_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(error = %err, retry_in = ?backoff, "external MQTT broker connection failed");
                    // The next poll connects anew: a new STATE session.
                    connected = false;
                    state = renew_state(&mut eventloop.mqtt_options, host.as_ref());
                    tokio::select! {
                        _ = shutdown.cancelled() => break RoundEnd::Shutdown,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        };
        // Let the acker finish what was read: those writes are queued.
        drop(unacked);
        let _ = acker.await;
        match ended {
            RoundEnd::Shutdown => {
                // A clean DISCONNECT discards the will: say offline first.
                if let (Some(session), true) = (&state, connected) {
                    publish_state(&client, session, false).await;
                }
                // Poll briefly so queued PUBACKs leave before disconnecting.
                let _ = client.disconnect().await;
                drain_until_disconnected(&mut eventloop).await;
                debug!("external MQTT client stopped");
                return;
            }
            RoundEnd::WriteFailed => {
                // Drop the connection so the broker redelivers what was not
                // acknowledged; the next poll reconnects.
                let _ = client.disconnect().await;
                drain_until_disconnected(&mut eventloop).await;
                state = renew_state(&mut eventloop.mqtt_options, host.as_ref());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Subscribes to the filters of `next` that `now` lacks (or asks a
/// different QoS of) and unsubscribes from those `next` dropped.
async fn follow_subscriptions(client: &AsyncClient, now: &[(String, u8)], next: &[(String, u8)]) {
    let added: Vec<rumqttc::SubscribeFilter> = next
        .iter()
        .filter(|f| !now.contains(f))
        .map(|(filter, qos)| rumqttc::SubscribeFilter::new(filter.clone(), qos_of(*qos)))
        .collect();
    if !added.is_empty() {
        info!(
            topics = added.len(),
            "definitions reloaded: subscribing to new topics"
        );
        if let Err(err) = client.subscribe_many(added).await {
            warn!(error = %err, "subscribing failed");
        }
    }
    for (filter, _) in now
        .iter()
        .filter(|(f, _)| !next.iter().any(|(n, _)| n == f))
    {
        if let Err(err) = client.unsubscribe(filter.clone()).await {
            warn!(error = %err, topic = %filter, "unsubscribing failed");
        }
    }
}

enum RoundEnd {
    Shutdown,
    WriteFailed,
}

/// Polls until the connection is gone (or briefly, if it never goes).
async fn drain_until_disconnected(eventloop: &mut EventLoop) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Acknowledges in arrival order, each once its records are durable.
async fn ack_loop(
    client: AsyncClient,
    mut unacked: mpsc::UnboundedReceiver<(rumqttc::Publish, PendingMessage)>,
    reconnect: CancellationToken,
) {
    while let Some((publish, pending)) = unacked.recv().await {
        match pending.wait().await {
            Ok(_) => {
                if publish.qos != QoS::AtMostOnce {
                    if let Err(err) = client.ack(&publish).await {
                        debug!(error = %err, "ack not sent; the broker will redeliver");
                    }
                }
            }
            Err(err) => {
                warn!(error = %err, topic = %publish.topic, "write failed; not acknowledging, reconnecting for redelivery");
                reconnect.cancel();
                // Everything after it stays unacknowledged too; the broker
                // redelivers the lot and dedupe drops what was written.
                while unacked.try_recv().is_ok() {}
                return;
            }
        }
    }
}

fn qos_of(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}
