//! The embedded MQTT 3.1.1 broker: devices connect straight to the node.
//!
//! Why not a general-purpose broker crate (rumqttd): such a broker
//! acknowledges a device's QoS 1 PUBLISH as soon as it has routed it in
//! memory, and the node would read it afterwards as a subscriber. A crash
//! in between loses a message the device was told was delivered. Here the
//! broker *is* the ingest: a PUBLISH goes through the pipeline to the
//! writer, and its PUBACK (QoS 1) or PUBREC (QoS 2) leaves only after the
//! records passed the store's durability barrier. Acks go out in the order
//! the publishes came in (MQTT 3.1.1 §4.6), while many of them share one
//! fsync.
//!
//! What it offers beyond ingest, for devices that also talk to each other
//! or to local apps: subscriptions (delivered at QoS 0), retained messages
//! (kept in memory, within `max_retained_bytes`) and last wills.
//! Persistent sessions (`clean_session = false`) are kept in the store
//! with their subscriptions, so after a node restart a device hears
//! `session_present = 1` and resends its unacknowledged QoS 1 messages
//! (clients discard them otherwise); they expire `session_expiry` after
//! their client left. What is not kept: QoS 1/2 deliveries queued for
//! offline subscribers (deliveries are QoS 0).
//!
//! As a Sparkplug primary host (see `sparkplug_state`) the broker retains
//! the node's online STATE at start and routes offline at a clean stop,
//! before it closes client connections, so connected edges hear it.
//!
//! Protection: a connection limit counted from `accept` (a socket that has
//! not sent CONNECT yet holds a slot; one beyond the limit gets CONNACK
//! 0x03), a CONNECT deadline and size limit, optional username/password,
//! MQTT 3.1.1 strictness (`broker_connect`: other protocol levels get
//! CONNACK 0x01), a maximum packet size (a larger packet closes the
//! connection: MQTT 3.1.1 cannot refuse one packet), keep-alive
//! enforcement, and at most `max_inflight` publishes per connection waiting
//! for their ack — beyond that the connection is not read, so the device's
//! TCP window closes instead of the node's memory growing. Memory held for
//! clients is bounded in bytes (`broker_limits`): retained messages,
//! subscriptions per client, deliveries queued per subscriber; persistent
//! sessions expire after `session_expiry` without their client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, Publish,
    SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, matches, valid_filter, valid_topic, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use super::broker_connect::{self, Violation};
use super::broker_limits::{Held, Outbox, PacketBudget, QueuedBytes, Retained};
use super::metrics::IngestMetrics;
use super::sparkplug_state::PrimaryHost;
use super::{Ingestor, MqttMessage, PendingMessage};
use crate::config::EmbeddedBrokerConfig;
use crate::listen::Acceptor;

/// Packets queued towards one client (acks and subscription deliveries);
/// deliveries beyond it (or beyond `max_queued_bytes`) are dropped for
/// that subscriber, acks wait.
const OUTGOING_QUEUE: usize = 1_024;
/// Sockets beyond `max_connections` that are told so (their CONNECT read,
/// CONNACK 0x03 sent) at the same time; more are closed at once.
const REFUSALS_IN_FLIGHT: usize = 32;
/// How long a socket beyond the limit may take to send its CONNECT before
/// it is closed without CONNACK.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("embedded MQTT broker cannot listen on {addr}: {source}")]
pub struct BrokerBindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// A bound broker: the caller learns the real port before serving starts.
pub struct EmbeddedBroker {
    listener: TcpListener,
    addr: SocketAddr,
    config: EmbeddedBrokerConfig,
}

/// The [`PacketBudget`] of a broker and how often a connection waited for
/// it.
struct Budget {
    bytes: PacketBudget,
    metrics: Arc<IngestMetrics>,
}

/// Subscriptions, retained messages and live client ids, shared by every
/// connection.
struct Shared {
    /// Bytes of large packets still arriving, over every connection.
    packets: Budget,
    subscriptions: RwLock<Vec<Subscription>>,
    retained: RwLock<Retained>,
    max_retained_bytes: usize,
    /// Client id → the token that closes its current connection (a new
    /// connection with the same id takes over, as MQTT requires).
    clients: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_connection: AtomicU64,
    metrics: Arc<IngestMetrics>,
}

impl Shared {
    fn new(config: &EmbeddedBrokerConfig, metrics: Arc<IngestMetrics>) -> Shared {
        Shared {
            packets: Budget {
                bytes: PacketBudget::new(config.max_pending_packet_bytes),
                metrics: metrics.clone(),
            },
            subscriptions: RwLock::default(),
            retained: RwLock::default(),
            max_retained_bytes: config.max_retained_bytes,
            clients: Mutex::default(),
            next_connection: AtomicU64::new(0),
            metrics,
        }
    }

    /// Retains (or clears) and forwards a publish to subscribers, QoS 0.
    /// A retained message beyond `max_retained_bytes` is delivered but not
    /// retained (the previous one of its topic stays), counted.
    fn route(&self, publish: &Publish) {
        if publish.retain {
            let mut kept = publish.clone();
            kept.qos = QoS::AtMostOnce;
            kept.pkid = 0;
            kept.dup = false;
            let mut retained = write(&self.retained);
            if let Err(refused) = retained.set(&kept, self.max_retained_bytes) {
                let before = self
                    .metrics
                    .broker_retained_refused
                    .fetch_add(1, Ordering::Relaxed);
                // The first and every 1000th, so a device retaining in a
                // loop does not flood the log; the counter has them all.
                if before % 1_000 == 0 {
                    warn!(error = %refused, refused = before + 1, "retained message not retained");
                } else {
                    debug!(error = %refused, "retained message not retained");
                }
            }
            self.metrics
                .broker_retained_bytes
                .store(retained.bytes() as i64, Ordering::Relaxed);
        }
        let subs = read(&self.subscriptions);
        let mut delivered_to = Vec::new();
        for sub in subs.iter() {
            if delivered_to.contains(&sub.connection) || !matches(&publish.topic, &sub.filter) {
                continue;
            }
            delivered_to.push(sub.connection);
            let mut out = Publish::from_bytes(
                publish.topic.clone(),
                QoS::AtMostOnce,
                publish.payload.clone(),
            );
            out.retain = false;
            // A slow subscriber loses QoS 0 deliveries, never the broker's
            // memory or the publisher's throughput.
            if !sub.deliver.deliver(out) {
                self.metrics
                    .broker_deliveries_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Subscription {
    filter: String,
    connection: u64,
    deliver: Outbox,
}

impl EmbeddedBroker {
    pub async fn bind(config: &EmbeddedBrokerConfig) -> Result<EmbeddedBroker, BrokerBindError> {
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerBindError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BrokerBindError { addr, source })?;
        Ok(EmbeddedBroker {
            listener,
            addr,
            config: config.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections until `shutdown`; each connection is a task on
    /// `tasks`, closed when shutdown begins (publishes already read still
    /// get their durable ack when the writer finishes them). With `host`,
    /// the node's Sparkplug STATE is retained online meanwhile.
    pub async fn serve(
        self,
        ingestor: Ingestor,
        host: Option<PrimaryHost>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let shared = Arc::new(Shared::new(&self.config, ingestor.metrics().clone()));
        let state = host.as_ref().map(PrimaryHost::session);
        if let Some(session) = &state {
            shared.route(&state_publish(&session.topic, session.payload(true)));
            info!(topic = %session.topic, "sparkplug host STATE online");
        }
        // Connections close only after the offline STATE was routed to
        // them (a child of `shutdown` could close first and miss it).
        let closing = CancellationToken::new();
        let config = Arc::new(self.config);
        tasks.spawn(publish_commands(
            ingestor.sparkplug().commands(),
            shared.clone(),
            shutdown.clone(),
        ));
        if !config.session_expiry.is_zero() {
            tasks.spawn(expire_sessions(
                ingestor.clone(),
                shared.clone(),
                config.session_expiry,
                shutdown.clone(),
            ));
        }
        let metrics = ingestor.metrics().clone();
        // Slots are taken at accept: a socket that has not sent CONNECT
        // yet holds one, so opening sockets first cannot pass the limit.
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
        let mut acceptor = Acceptor::new(self.listener, "mqtt");
        info!(addr = %self.addr, "embedded MQTT broker listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => {
                    if let Some(session) = &state {
                        shared.route(&state_publish(&session.topic, session.payload(false)));
                    }
                    closing.cancel();
                    break;
                }
                accepted = acceptor.accept(&metrics.broker_accept_errors) => accepted,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.broker_refused.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, limit = config.max_connections, "MQTT connection over the limit");
                if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                    tasks.spawn(refuse(stream, config.clone(), refusing));
                }
                continue;
            };
            metrics.broker_sockets.fetch_add(1, Ordering::Relaxed);
            let connection = Connection {
                id: shared.next_connection.fetch_add(1, Ordering::Relaxed),
                shared: shared.clone(),
                config: config.clone(),
                ingestor: ingestor.clone(),
                shutdown: closing.child_token(),
                _slot: SocketSlot(metrics.clone(), slot),
                subscriptions: AtomicUsize::new(0),
                subscription_bytes: AtomicUsize::new(0),
            };
            tasks.spawn(
                connection
                    .run(stream)
                    .instrument(info_span!("mqtt_connection", %peer)),
            );
        }
        debug!("embedded MQTT broker stopped accepting");
    }
}

/// Tells a socket beyond `max_connections` so: its CONNECT is read (within
/// [`REFUSAL_DEADLINE`]) and answered with CONNACK 0x03, server unavailable.
async fn refuse(
    mut stream: TcpStream,
    config: Arc<EmbeddedBrokerConfig>,
    _refusing: OwnedSemaphorePermit,
) {
    let mut buffer = BytesMut::new();
    let connect = tokio::time::timeout(
        REFUSAL_DEADLINE,
        read_connect(&mut stream, &mut buffer, config.max_connect_bytes),
    )
    .await;
    if let Ok(Ok(Packet::Connect(_))) = connect {
        let refusal = ConnAck::new(ConnectReturnCode::ServiceUnavailable, false);
        let _ = write_packet(&mut stream, &Packet::ConnAck(refusal)).await;
    }
}

/// Removes persistent sessions whose client stayed away longer than
/// `expiry`, checking a few times per period.
async fn expire_sessions(
    ingestor: Ingestor,
    shared: Arc<Shared>,
    expiry: Duration,
    shutdown: CancellationToken,
) {
    let every = (expiry / 4).clamp(Duration::from_millis(250), Duration::from_secs(300));
    loop {
        let live: std::collections::HashSet<String> =
            lock(&shared.clients).keys().cloned().collect();
        let store = ingestor.store().clone();
        let now = crate::record::Timestamp::now().as_micros();
        let cutoff = now.saturating_sub(i64::try_from(expiry.as_micros()).unwrap_or(i64::MAX));
        let swept =
            tokio::task::spawn_blocking(move || store.expire_mqtt_sessions(cutoff, now, &live))
                .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                shared
                    .metrics
                    .broker_sessions_expired
                    .fetch_add(removed as u64, Ordering::Relaxed);
                info!(removed, ?expiry, "expired persistent MQTT sessions removed");
            }
            Ok(Err(err)) => warn!(error = %err, "could not expire MQTT sessions"),
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// A retained STATE message of the node, as a client would publish it.
fn state_publish(topic: &str, payload: Vec<u8>) -> Publish {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
    publish.retain = true;
    publish
}

/// Publishes the node's own commands (Sparkplug rebirth requests) to the
/// broker's subscribers, as if a client had sent them.
async fn publish_commands(
    mut commands: tokio::sync::broadcast::Receiver<super::sparkplug_route::Command>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let command = tokio::select! {
            _ = shutdown.cancelled() => return,
            command = commands.recv() => command,
        };
        match command {
            Ok(command) => {
                let publish = Publish::new(command.topic, QoS::AtMostOnce, command.payload);
                shared.route(&publish);
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                debug!(lost, "commands lost while the broker was busy");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One client connection.
struct Connection {
    id: u64,
    shared: Arc<Shared>,
    config: Arc<EmbeddedBrokerConfig>,
    ingestor: Ingestor,
    shutdown: CancellationToken,
    /// The connection's place under `max_connections`, from accept on.
    _slot: SocketSlot,
    /// This connection's subscriptions and their filters' bytes, under
    /// `max_subscriptions` and `max_subscription_bytes`.
    subscriptions: AtomicUsize,
    subscription_bytes: AtomicUsize,
}

/// Frees a connection slot and counts the socket closed when dropped.
struct SocketSlot(Arc<IngestMetrics>, #[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.broker_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the reader hands the acker, in arrival order.
enum AckItem {
    /// Send this packet once `pending` is durable.
    AfterDurable(Packet, PendingMessage),
    /// Send this packet now (in order behind the ones before it).
    Now(Packet),
    /// A QoS 0 publish: nothing to send, but its outcome is counted once
    /// durable (the counters are updated by whoever waits), and waiting
    /// here bounds how many unacknowledged writes a connection can queue.
    Count(PendingMessage),
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("MQTT protocol error: {0}")]
    Protocol(String),
    #[error("MQTT 3.1.1 violation: {0}")]
    Violation(Violation),
    #[error("packet larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("no packet within the keep-alive period")]
    KeepAlive,
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

impl Connection {
    async fn run(self, mut stream: TcpStream) {
        let metrics = self.ingestor.metrics().clone();
        let _ = stream.set_nodelay(true);
        let mut buffer = BytesMut::with_capacity(1024);
        let connect = tokio::time::timeout(
            self.config.connect_timeout,
            read_connect(&mut stream, &mut buffer, self.config.max_connect_bytes),
        )
        .await;
        let connect = match connect {
            Ok(Ok(Packet::Connect(connect))) => connect,
            Ok(Err(ConnectionError::Violation(violation))) => {
                metrics.broker_violations[violation.index()].fetch_add(1, Ordering::Relaxed);
                info!(%violation, "MQTT CONNECT refused");
                if violation == Violation::UnsupportedProtocol {
                    let refusal = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
                    let _ = write_packet(&mut stream, &Packet::ConnAck(refusal)).await;
                }
                return;
            }
            Ok(Ok(other)) => {
                debug!(packet = ?packet_kind(&other), "first packet is not CONNECT; closing");
                metrics
                    .broker_protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(err)) => {
                debug!(error = %err, "connection closed before CONNECT");
                metrics
                    .broker_protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                debug!("no CONNECT within the deadline; closing");
                metrics
                    .broker_protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Err(violation) = broker_connect::check_strings(&connect) {
            metrics.broker_violations[violation.index()].fetch_add(1, Ordering::Relaxed);
            info!(%violation, "MQTT CONNECT refused");
            return;
        }
        let refusal = self.check_connect(&connect);
        if let Some(code) = refusal {
            metrics.broker_refused.fetch_add(1, Ordering::Relaxed);
            info!(client = %connect.client_id, reason = ?code, "MQTT connection refused");
            let _ = write_packet(&mut stream, &Packet::ConnAck(ConnAck::new(code, false))).await;
            return;
        }
        let client_id = if connect.client_id.is_empty() {
            format!("meshlet-anon-{}", self.id)
        } else {
            connect.client_id.clone()
        };
        self.take_over(&client_id);
        let persistent = !connect.clean_session;
        let restored = self.open_session(&client_id, persistent).await;
        let session_present = restored.is_some();
        if write_packet(
            &mut stream,
            &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present)),
        )
        .await
        .is_err()
        {
            self.release(&client_id);
            return;
        }
        metrics.broker_connections.fetch_add(1, Ordering::Relaxed);
        debug!(client = %client_id, keep_alive = connect.keep_alive, session_present, "MQTT client connected");

        let (reader, writer) = stream.into_split();
        let (outgoing, outgoing_rx) = mpsc::channel::<Packet>(OUTGOING_QUEUE);
        let (outgoing, queued) = Outbox::new(outgoing, self.config.max_queued_bytes);
        let (acks, acks_rx) = mpsc::channel::<AckItem>(self.config.max_inflight.max(1));
        let writer_task = tokio::spawn(write_loop(
            writer,
            outgoing_rx,
            queued,
            self.config.max_packet_bytes,
        ));
        let acker_task = tokio::spawn(ack_loop(acks_rx, outgoing.clone(), self.shutdown.clone()));
        for filter in restored.unwrap_or_default() {
            if !self.subscribe(&filter, &outgoing) {
                warn!(client = %client_id, %filter, "stored subscription over the client's limits; dropped");
            }
        }

        let result = self
            .read_loop(reader, buffer, &client_id, &connect, &outgoing, &acks)
            .await;
        let clean = matches!(result, Ok(true));
        match &result {
            Ok(_) => debug!(client = %client_id, "MQTT client disconnected"),
            Err(ConnectionError::Violation(violation)) => {
                metrics.broker_violations[violation.index()].fetch_add(1, Ordering::Relaxed);
                info!(client = %client_id, %violation, "MQTT connection closed");
            }
            Err(err) => {
                if !matches!(err, ConnectionError::Io(_)) {
                    metrics
                        .broker_protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                info!(client = %client_id, error = %err, "MQTT connection closed");
            }
        }
        if !clean {
            if let Some(will) = &connect.last_will {
                self.publish_will(will, &client_id).await;
            }
        }
        // Let acks for what was read finish (they are durable work), then
        // close the socket.
        drop(acks);
        let _ = acker_task.await;
        drop(outgoing);
        self.unsubscribe_all();
        let _ = writer_task.await;
        if persistent {
            self.end_session(&client_id).await;
        }
        self.release(&client_id);
        metrics.broker_connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn check_connect(&self, connect: &Connect) -> Option<ConnectReturnCode> {
        if connect.client_id.is_empty() && !connect.clean_session {
            return Some(ConnectReturnCode::BadClientId);
        }
        if !self.config.users.is_empty() {
            let ok = connect.login.as_ref().is_some_and(|login| {
                self.config
                    .users
                    .get(&login.username)
                    .is_some_and(|password| {
                        constant_time_eq(password.as_bytes(), login.password.as_bytes())
                    })
            });
            if !ok {
                return Some(ConnectReturnCode::BadUserNamePassword);
            }
        }
        None
    }

    /// Starts the client's session: a clean one ends any stored session; a
    /// persistent one is created, or resumed with its subscriptions
    /// (`Some`, and CONNACK says `session_present`). Sessions survive node
    /// restarts, so a device resends its unacknowledged QoS 1 messages after
    /// the node crashed instead of discarding them.
    async fn open_session(&self, client_id: &str, persistent: bool) -> Option<Vec<String>> {
        let store = self.ingestor.store().clone();
        let id = client_id.to_string();
        let expiry = self.config.session_expiry;
        let metrics = self.shared.metrics.clone();
        let opened = tokio::task::spawn_blocking(move || {
            if !persistent {
                store.remove_mqtt_session(&id)?;
                return Ok(None);
            }
            // An expired session the sweeper has not removed yet is gone
            // all the same.
            let now = crate::record::Timestamp::now().as_micros();
            let cutoff = now.saturating_sub(i64::try_from(expiry.as_micros()).unwrap_or(i64::MAX));
            if !expiry.is_zero() && store.mqtt_session_expired(&id, cutoff)? {
                store.remove_mqtt_session(&id)?;
                metrics
                    .broker_sessions_expired
                    .fetch_add(1, Ordering::Relaxed);
            }
            let existing = store.mqtt_session(&id)?;
            match &existing {
                None => {
                    // Durable before CONNACK: a device that publishes right
                    // away and sees the node crash must find its session.
                    store.set_mqtt_session(&id, &[])?;
                    store.durable_blocking()?;
                }
                // Connected again: the session no longer expires.
                Some(filters) => store.set_mqtt_session(&id, filters)?,
            }
            Ok::<_, crate::store::StoreError>(existing)
        })
        .await;
        match opened {
            Ok(Ok(existing)) => existing,
            Ok(Err(err)) => {
                warn!(client = %client_id, error = %err, "MQTT session state unavailable; starting a new session");
                None
            }
            Err(_) => None,
        }
    }

    /// Stores this connection's subscriptions as its persistent session's.
    async fn save_session(&self, client_id: &str) {
        let filters: Vec<String> = read(&self.shared.subscriptions)
            .iter()
            .filter(|s| s.connection == self.id)
            .map(|s| s.filter.clone())
            .collect();
        let store = self.ingestor.store().clone();
        let id = client_id.to_string();
        let saved =
            tokio::task::spawn_blocking(move || store.set_mqtt_session(&id, &filters)).await;
        if let Ok(Err(err)) = saved {
            warn!(client = %client_id, error = %err, "could not store the MQTT session's subscriptions");
        }
    }

    /// Notes when the client of a persistent session went away: the
    /// session expires `session_expiry` later.
    async fn end_session(&self, client_id: &str) {
        let store = self.ingestor.store().clone();
        let id = client_id.to_string();
        let now = crate::record::Timestamp::now().as_micros();
        let ended =
            tokio::task::spawn_blocking(move || store.disconnect_mqtt_session(&id, now)).await;
        if let Ok(Err(err)) = ended {
            warn!(client = %client_id, error = %err, "could not note the MQTT session's disconnect");
        }
    }

    /// Closes an earlier connection with the same client id.
    fn take_over(&self, client_id: &str) {
        let mut clients = lock(&self.shared.clients);
        if let Some((_, previous)) =
            clients.insert(client_id.to_string(), (self.id, self.shutdown.clone()))
        {
            info!(client = %client_id, "client id reconnected; closing its previous connection");
            previous.cancel();
        }
    }

    fn release(&self, client_id: &str) {
        let mut clients = lock(&self.shared.clients);
        if clients.get(client_id).is_some_and(|(id, _)| *id == self.id) {
            clients.remove(client_id);
        }
    }

    /// Reads packets until the client disconnects (`Ok(true)` for a clean
    /// DISCONNECT) or something goes wrong.
    async fn read_loop(
        &self,
        mut reader: OwnedReadHalf,
        mut buffer: BytesMut,
        client_id: &str,
        connect: &Connect,
        outgoing: &Outbox,
        acks: &mpsc::Sender<AckItem>,
    ) -> Result<bool, ConnectionError> {
        // MQTT: the server disconnects after one and a half keep-alive
        // periods without a packet.
        let idle = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1_500));
        loop {
            let next = read_packet(
                &mut reader,
                &mut buffer,
                self.config.max_packet_bytes,
                Some(&self.shared.packets),
            );
            let packet = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(false),
                packet = maybe_timeout(idle, next) => packet?,
            };
            match packet {
                Packet::Publish(publish) => self.on_publish(publish, client_id, acks).await?,
                Packet::PubRel(rel) => {
                    send_ack(acks, AckItem::Now(Packet::PubComp(PubComp::new(rel.pkid)))).await?
                }
                Packet::Subscribe(subscribe) => {
                    if subscribe
                        .filters
                        .iter()
                        .any(|f| broker_connect::has_nul(&f.path))
                    {
                        return Err(ConnectionError::Violation(Violation::NulCharacter));
                    }
                    let mut codes = Vec::with_capacity(subscribe.filters.len());
                    let mut granted = Vec::with_capacity(subscribe.filters.len());
                    for filter in &subscribe.filters {
                        if !valid_filter(&filter.path) {
                            codes.push(SubscribeReasonCode::Failure);
                        } else if self.subscribe(&filter.path, outgoing) {
                            codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                            granted.push(filter.path.as_str());
                        } else {
                            self.shared
                                .metrics
                                .broker_subscriptions_refused
                                .fetch_add(1, Ordering::Relaxed);
                            debug!(client = %client_id, filter = %filter.path, "subscription refused: the client's subscription limits are reached");
                            codes.push(SubscribeReasonCode::Failure);
                        }
                    }
                    if !connect.clean_session {
                        self.save_session(client_id).await;
                    }
                    send_ack(
                        acks,
                        AckItem::Now(Packet::SubAck(SubAck::new(subscribe.pkid, codes))),
                    )
                    .await?;
                    for filter in granted {
                        self.send_retained(filter, outgoing);
                    }
                }
                Packet::Unsubscribe(unsubscribe) => {
                    if unsubscribe
                        .topics
                        .iter()
                        .any(|t| broker_connect::has_nul(t))
                    {
                        return Err(ConnectionError::Violation(Violation::NulCharacter));
                    }
                    {
                        let mut subs = write(&self.shared.subscriptions);
                        subs.retain(|s| {
                            let gone =
                                s.connection == self.id && unsubscribe.topics.contains(&s.filter);
                            if gone {
                                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                                self.subscription_bytes
                                    .fetch_sub(s.filter.len(), Ordering::Relaxed);
                            }
                            !gone
                        });
                    }
                    if !connect.clean_session {
                        self.save_session(client_id).await;
                    }
                    send_ack(
                        acks,
                        AckItem::Now(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))),
                    )
                    .await?;
                }
                Packet::PingReq => send_ack(acks, AckItem::Now(Packet::PingResp)).await?,
                Packet::Disconnect => return Ok(true),
                // Acks of our QoS 0 deliveries never come; anything else from
                // a client is a protocol violation.
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
                other => {
                    return Err(ConnectionError::Protocol(format!(
                        "unexpected {} from a client",
                        packet_kind(&other)
                    )))
                }
            }
        }
    }

    async fn on_publish(
        &self,
        publish: Publish,
        client_id: &str,
        acks: &mpsc::Sender<AckItem>,
    ) -> Result<(), ConnectionError> {
        if broker_connect::has_nul(&publish.topic) {
            return Err(ConnectionError::Violation(Violation::NulCharacter));
        }
        if !valid_topic(&publish.topic) || publish.topic.is_empty() {
            return Err(ConnectionError::Protocol(format!(
                "invalid topic name `{}` in PUBLISH",
                publish.topic
            )));
        }
        self.route_to_subscribers(&publish);
        let pending = self
            .ingestor
            .submit_mqtt(MqttMessage {
                topic: &publish.topic,
                payload: &publish.payload,
                retained: false,
                redelivery: publish.dup,
                client: Some(client_id),
            })
            .await;
        match publish.qos {
            // Written all the same; nothing to acknowledge, only to count.
            QoS::AtMostOnce => send_ack(acks, AckItem::Count(pending)).await?,
            QoS::AtLeastOnce => {
                send_ack(
                    acks,
                    AckItem::AfterDurable(Packet::PubAck(PubAck::new(publish.pkid)), pending),
                )
                .await?
            }
            QoS::ExactlyOnce => {
                send_ack(
                    acks,
                    AckItem::AfterDurable(Packet::PubRec(PubRec::new(publish.pkid)), pending),
                )
                .await?
            }
        }
        Ok(())
    }

    /// Retains (or clears) and forwards a publish to subscribers, QoS 0.
    fn route_to_subscribers(&self, publish: &Publish) {
        self.shared.route(publish);
    }

    /// Adds a subscription of this connection, unless it would take the
    /// connection over `max_subscriptions` or `max_subscription_bytes`
    /// (`false`). A filter it already holds is granted again.
    fn subscribe(&self, filter: &str, outgoing: &Outbox) -> bool {
        let mut subs = write(&self.shared.subscriptions);
        if subs
            .iter()
            .any(|s| s.connection == self.id && s.filter == filter)
        {
            return true;
        }
        let count = self.subscriptions.load(Ordering::Relaxed);
        let bytes = self.subscription_bytes.load(Ordering::Relaxed);
        if count >= self.config.max_subscriptions
            || bytes + filter.len() > self.config.max_subscription_bytes
        {
            return false;
        }
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.subscription_bytes
            .fetch_add(filter.len(), Ordering::Relaxed);
        subs.push(Subscription {
            filter: filter.to_string(),
            connection: self.id,
            deliver: outgoing.clone(),
        });
        true
    }

    fn send_retained(&self, filter: &str, outgoing: &Outbox) {
        let retained = read(&self.shared.retained);
        for (topic, publish) in retained.iter() {
            if matches(topic, filter) {
                let mut out = publish.clone();
                out.retain = true;
                if !outgoing.deliver(out) {
                    self.shared
                        .metrics
                        .broker_deliveries_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn unsubscribe_all(&self) {
        write(&self.shared.subscriptions).retain(|s| s.connection != self.id);
    }

    /// Publishes the client's last will after an abnormal disconnect: to
    /// subscribers, and into ingest like any publish from the client.
    async fn publish_will(&self, will: &LastWill, client_id: &str) {
        if !valid_topic(&will.topic) || will.topic.is_empty() {
            return;
        }
        let mut publish =
            Publish::from_bytes(will.topic.clone(), QoS::AtMostOnce, will.message.clone());
        publish.retain = will.retain;
        self.route_to_subscribers(&publish);
        let pending = self
            .ingestor
            .submit_mqtt(MqttMessage {
                topic: &will.topic,
                payload: &will.message,
                retained: false,
                redelivery: false,
                client: Some(client_id),
            })
            .await;
        drop(pending);
    }
}

async fn send_ack(acks: &mpsc::Sender<AckItem>, item: AckItem) -> Result<(), ConnectionError> {
    // Blocks while `max_inflight` publishes wait for the writer: the read
    // loop stops reading, the client's TCP window closes.
    acks.send(item)
        .await
        .map_err(|_| ConnectionError::Protocol("connection is closing".to_string()))
}

/// Sends acks in arrival order, each once its records are durable. A
/// failed write closes the connection without acking: the client resends.
async fn ack_loop(mut acks: mpsc::Receiver<AckItem>, outgoing: Outbox, close: CancellationToken) {
    while let Some(item) = acks.recv().await {
        let packet = match item {
            AckItem::Now(packet) => packet,
            AckItem::Count(pending) => {
                if let Err(err) = pending.wait().await {
                    // QoS 0 promised nothing; the failure is counted by
                    // the writer and the connection goes on.
                    warn!(error = %err, "write of a QoS 0 publish failed");
                }
                continue;
            }
            AckItem::AfterDurable(packet, pending) => match pending.wait().await {
                Ok(_) => packet,
                Err(err) => {
                    warn!(error = %err, "write failed; closing the connection without acknowledging, the client will resend");
                    close.cancel();
                    return;
                }
            },
        };
        if outgoing.send(packet).await.is_err() {
            return;
        }
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut packets: mpsc::Receiver<Packet>,
    queued: QueuedBytes,
    max_packet_bytes: usize,
) {
    let mut buffer = BytesMut::with_capacity(4 * 1024);
    while let Some(packet) = packets.recv().await {
        buffer.clear();
        let mut bytes = QueuedBytes::cost(&packet);
        if packet.write(&mut buffer, max_packet_bytes).is_err() {
            queued.sent(bytes);
            continue;
        }
        // Coalesce whatever else is ready into one write.
        while buffer.len() < 64 * 1024 {
            match packets.try_recv() {
                Ok(more) => {
                    bytes += QueuedBytes::cost(&more);
                    let _ = more.write(&mut buffer, max_packet_bytes);
                }
                Err(_) => break,
            }
        }
        let written = writer.write_all(&buffer).await;
        // Counted until the socket took them: a subscriber that does not
        // read holds max_queued_bytes, in the queue and this buffer.
        queued.sent(bytes);
        if written.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn write_packet(stream: &mut TcpStream, packet: &Packet) -> std::io::Result<()> {
    let mut buffer = BytesMut::new();
    packet
        .write(&mut buffer, usize::MAX)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&buffer).await
}

/// Reads a client's first packet, which must be a CONNECT of at most
/// `max_connect_bytes`: its raw header is checked for what the codec lets
/// through (`broker_connect::check_frame`) before it is parsed.
async fn read_connect<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    max_connect_bytes: usize,
) -> Result<Packet, ConnectionError> {
    loop {
        if buffer.first().is_some_and(|b| b >> 4 != 1) {
            return Err(ConnectionError::Protocol(
                "first packet is not CONNECT".to_string(),
            ));
        }
        match mqttbytes::check(buffer.iter(), max_connect_bytes) {
            Ok(header) => {
                let frame = buffer.get(..header.frame_length()).unwrap_or_default();
                broker_connect::check_frame(frame).map_err(ConnectionError::Violation)?;
                return read_packet(reader, buffer, max_connect_bytes, None).await;
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                return Err(ConnectionError::Violation(Violation::ConnectTooLarge));
            }
            Err(err) => return Err(ConnectionError::Protocol(err.to_string())),
        }
        // Grow by what the packet still needs, at most 4 KiB at a time.
        buffer.reserve(4 * 1024);
        let read = reader.read_buf(buffer).await?;
        if read == 0 {
            return Err(ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the client",
            )));
        }
    }
}

/// Why the bytes a client sent are not a packet the broker can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("MQTT protocol error: {0}")]
    Malformed(String),
    #[error("packet larger than the {0}-byte limit")]
    TooLarge(usize),
}

impl From<PacketError> for ConnectionError {
    fn from(err: PacketError) -> ConnectionError {
        match err {
            PacketError::Malformed(reason) => ConnectionError::Protocol(reason),
            PacketError::TooLarge(limit) => ConnectionError::TooLarge(limit),
        }
    }
}

/// What the front of a client's bytes holds.
#[derive(Debug)]
pub enum Decoded {
    /// One whole packet, taken off the buffer.
    Packet(Packet),
    /// Part of one, left in the buffer: at least `missing` more bytes are
    /// needed.
    Partial { missing: usize },
}

/// The packet reader without the socket: takes the first whole packet off
/// the front of `buffer`, or says how much of one is missing. Pure, so
/// the fuzz targets (tests/fuzz) feed it what a client could send.
pub fn decode_packet(
    buffer: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Decoded, PacketError> {
    match Packet::read(buffer, max_packet_bytes) {
        Ok(packet) => Ok(Decoded::Packet(packet)),
        Err(mqttbytes::Error::InsufficientBytes(missing)) => Ok(Decoded::Partial { missing }),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
            Err(PacketError::TooLarge(max_packet_bytes))
        }
        Err(err) => Err(PacketError::Malformed(err.to_string())),
    }
}

/// What the broker refuses in a raw CONNECT frame that the codec lets
/// through (see `broker_connect`), by the name of its counter; exposed
/// for the fuzz targets (tests/fuzz).
pub fn check_connect_frame(frame: &[u8]) -> Result<(), &'static str> {
    broker_connect::check_frame(frame).map_err(Violation::name)
}

/// Reads one whole packet, reading from the socket as needed.
async fn read_packet<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    max_packet_bytes: usize,
    budget: Option<&Budget>,
) -> Result<Packet, ConnectionError> {
    let mut held = Held::default();
    loop {
        match decode_packet(buffer, max_packet_bytes)? {
            Decoded::Packet(packet) => {
                held.release();
                return Ok(packet);
            }
            Decoded::Partial { missing } => {
                if let Some(budget) = budget {
                    let frame_length = buffer.len() + missing;
                    let waits = || {
                        budget
                            .metrics
                            .broker_packet_budget_waits
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(
                            frame_length,
                            "large packet waits for max_pending_packet_bytes"
                        );
                    };
                    budget.bytes.hold(&mut held, frame_length, waits).await;
                }
            }
        }
        buffer.reserve(4 * 1024);
        let read = reader.read_buf(buffer).await?;
        if read == 0 {
            return Err(ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the client",
            )));
        }
    }
}

async fn maybe_timeout<F: std::future::Future<Output = Result<Packet, ConnectionError>>>(
    idle: Option<Duration>,
    future: F,
) -> Result<Packet, ConnectionError> {
    match idle {
        Some(limit) => tokio::time::timeout(limit, future)
            .await
            .unwrap_or(Err(ConnectionError::KeepAlive)),
        None => future.await,
    }
}

fn packet_kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// Compares secrets without an early exit, so timing does not reveal how
/// much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
