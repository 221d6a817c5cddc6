//! The embedded MQTT broker (3.1.1 and 5): devices connect straight to the
//! node.
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
//! or to local apps: subscriptions at QoS 0, 1 and 2 (QoS 1/2 deliveries
//! of a session in `session`: in-flight window, resent with DUP on
//! reconnect, queued while a persistent session's client is away; one
//! delivery per client at the highest QoS of its overlapping
//! subscriptions), retained messages (in memory within
//! `max_retained_bytes`, mirrored into the store by `retained` so
//! they survive a restart) and last wills.
//! Persistent sessions (`clean_session = false`, or an MQTT 5 session
//! expiry) are kept in the store with their subscriptions and their QoS,
//! so after a node restart a device hears `session_present = 1` and
//! resends its unacknowledged QoS 1 messages (clients discard them
//! otherwise); they expire `session_expiry` after their client left. What
//! a node restart loses: QoS 1/2 deliveries queued for away clients.
//!
//! As a Sparkplug primary host (see `sources::sparkplug::state`) the broker retains
//! the node's online STATE at start and routes offline at a clean stop,
//! before it closes client connections, so connected edges hear it.
//!
//! Both versions: a connection speaks the version of its CONNECT (level 4
//! or 5); the broker works on MQTT 5 packets throughout and a 3.1.1
//! connection is converted at its edge (`wire`). What MQTT 5 adds —
//! CONNACK properties and reason codes, session expiry, topic aliases,
//! receive maximum, maximum packet size, server DISCONNECT reasons, will
//! delay, message expiry, publish properties forwarded to subscribers
//! (response topic and correlation data included) and handed to the
//! pipeline (content type, user properties) — is in `v5`.
//!
//! Protection: a connection limit counted from `accept` (a socket that has
//! not sent CONNECT yet holds a slot; one beyond the limit gets CONNACK
//! 0x03, 0x89 server busy in MQTT 5), a CONNECT deadline and size limit,
//! optional username/password, protocol strictness (`connect`:
//! other protocol levels get CONNACK 0x01), a maximum packet size (a
//! larger packet closes the connection, with DISCONNECT 0x95 in MQTT 5),
//! keep-alive
//! enforcement, and at most `max_inflight` publishes per connection waiting
//! for their ack — beyond that the connection is not read, so the device's
//! TCP window closes instead of the node's memory growing. Memory held for
//! clients is bounded in bytes (`limits`): retained messages,
//! subscriptions per client, deliveries queued per subscriber; persistent
//! sessions expire after `session_expiry` without their client.

mod connect;
mod limits;
mod metrics;
mod protocol;
mod retained;
mod session;
mod v5;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectReturnCode, DisconnectReasonCode, Login, Packet, Publish,
    PublishProperties, RetainForwardRule, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

pub(crate) use self::connect::Violation;
use self::limits::{Held, Outbox, PacketBudget, QueuedBytes, Retained};
use self::protocol::{Action, Cause, Close, ConnectionState, Requested, Settings, Will};
use self::retained::RetainedChange;
use self::session::{Deliveries, SessionBudget};
use self::v5::{ClientLimits, Refusal, SessionExpiry};
use self::wire::{Frame, Protocol, WireError};
use crate::config::EmbeddedBrokerConfig;
use crate::ingest::IngestMetrics;
use super::dispatch::{MqttIngest, MqttMessage};
use crate::ingest::PendingMessage;
use crate::listen::Acceptor;
use crate::sources::sparkplug::state::PrimaryHost;

/// Packets queued towards one client (acks and subscription deliveries);
/// deliveries beyond it (or beyond `max_queued_bytes`) are dropped for
/// that subscriber, acks wait.
const OUTGOING_QUEUE: usize = 1_024;
/// Sockets beyond `max_connections` that are told so (their CONNECT read,
/// CONNACK 0x03 sent) at the same time; more are closed at once.
const REFUSALS_IN_FLIGHT: usize = 32;
/// How long a closing connection may take to send the QoS 1/2 deliveries
/// queued for it when it closed.
const FINAL_DELIVERIES: Duration = Duration::from_secs(2);
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
    /// Connections closed for protocol violations, by kind.
    violations: Arc<metrics::ViolationCounters>,
    subscriptions: RwLock<Vec<Subscription>>,
    retained: RwLock<Retained>,
    max_retained_bytes: usize,
    /// Client id → the token that closes its current connection (a new
    /// connection with the same id takes over, as MQTT requires).
    clients: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// Client id → the token that cancels its will, while the will waits
    /// out its delay interval (MQTT 5): the client reconnecting cancels it.
    delayed_wills: Mutex<HashMap<String, CancellationToken>>,
    /// Client id → the session expiry granted, for sessions granted less
    /// than `session_expiry` (MQTT 5). Kept in memory: after a node restart
    /// such a session expires after `session_expiry`.
    expiries: Mutex<HashMap<String, Duration>>,
    /// Client id → the QoS 1/2 deliveries of its session, while it is
    /// connected and, for a persistent session, while it is away.
    sessions: Mutex<HashMap<String, SessionHandle>>,
    /// The highest QoS a subscription is granted.
    max_delivery_qos: QoS,
    /// The bytes all sessions' QoS 1/2 deliveries may hold together.
    session_bytes: SessionBudget,
    /// Retained changes on their way to the store (`retained`).
    persist: mpsc::Sender<RetainedChange>,
    next_connection: AtomicU64,
    metrics: Arc<IngestMetrics>,
}

/// One session's QoS 1/2 deliveries and the wake-up of the task that
/// sends them while the client is connected.
#[derive(Clone)]
struct SessionHandle {
    deliveries: Arc<Mutex<Deliveries>>,
    wake: Arc<Notify>,
}

impl SessionHandle {
    fn new(limit: usize, window: usize, budget: SessionBudget) -> SessionHandle {
        SessionHandle {
            deliveries: Arc::new(Mutex::new(Deliveries::with_budget(limit, window, budget))),
            wake: Arc::new(Notify::new()),
        }
    }

    fn same(&self, other: &SessionHandle) -> bool {
        Arc::ptr_eq(&self.deliveries, &other.deliveries)
    }
}

impl Shared {
    fn new(
        config: &EmbeddedBrokerConfig,
        metrics: Arc<IngestMetrics>,
        persist: mpsc::Sender<RetainedChange>,
    ) -> Shared {
        let violations = Arc::new(metrics::ViolationCounters::default());
        metrics.register_kind(violations.clone());
        Shared {
            violations,
            persist,
            packets: Budget {
                bytes: PacketBudget::new(config.max_pending_packet_bytes),
                metrics: metrics.clone(),
            },
            subscriptions: RwLock::default(),
            retained: RwLock::default(),
            max_retained_bytes: config.max_retained_bytes,
            clients: Mutex::default(),
            delayed_wills: Mutex::default(),
            expiries: Mutex::default(),
            sessions: Mutex::default(),
            session_bytes: SessionBudget::new(config.max_session_bytes),
            max_delivery_qos: match config.max_delivery_qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            next_connection: AtomicU64::new(0),
            metrics,
        }
    }

    /// Loads the retained messages the store kept, through the
    /// `max_retained_bytes` budget: what no longer fits (the budget was
    /// lowered) is removed from the store too, counted as refused.
    async fn load_retained(&self, store: &crate::store::Store) {
        let reading = store.clone();
        let stored = match tokio::task::spawn_blocking(move || reading.mqtt_retained()).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(err)) => {
                warn!(error = %err, "stored retained messages could not be read; starting without them");
                return;
            }
            Err(_) => return,
        };
        let mut refused = Vec::new();
        let mut loaded = 0usize;
        {
            let mut retained = write(&self.retained);
            for message in stored {
                let message = match message {
                    Ok(message) => message,
                    Err(err) => {
                        warn!(error = %err, "a stored retained message is unreadable; skipped");
                        continue;
                    }
                };
                let topic = message.topic.clone();
                let (publish, since) = retained::from_stored(message);
                match retained.set_since(&publish, self.max_retained_bytes, since) {
                    Ok(()) => loaded += 1,
                    Err(_) => {
                        self.metrics
                            .broker_retained_refused
                            .fetch_add(1, Ordering::Relaxed);
                        refused.push(topic);
                    }
                }
            }
            self.metrics
                .broker_retained_bytes
                .store(retained.bytes() as i64, Ordering::Relaxed);
        }
        if !refused.is_empty() {
            warn!(
                refused = refused.len(),
                limit = self.max_retained_bytes,
                "stored retained messages beyond max_retained_bytes dropped"
            );
        }
        for topic in refused {
            let _ = self.persist.send(RetainedChange::Clear(topic)).await;
        }
        if loaded > 0 {
            info!(loaded, "retained messages loaded from the store");
        }
    }

    /// Retains (or clears) and forwards a publish to subscribers. A
    /// retained message beyond `max_retained_bytes` is delivered but not
    /// retained (the previous one of its topic stays), counted. `from` is
    /// the publishing connection, for subscriptions with MQTT 5's no-local.
    ///
    /// Overlapping subscriptions: a client whose subscriptions match the
    /// topic more than once gets the message once, at the highest QoS
    /// granted among them (MQTT 3.1.1 §3.3.5 requires it; MQTT 5 §3.3.4
    /// allows it), retained-as-published if any of them asks.
    ///
    /// Returns the change to the retained messages for the store, which
    /// [`Shared::publish`] hands on.
    fn route(&self, publish: &Publish, from: Option<u64>) -> Option<RetainedChange> {
        let topic = topic_of(publish);
        let mut change = None;
        if publish.retain {
            let mut kept = publish.clone();
            kept.pkid = 0;
            kept.dup = false;
            let mut retained = write(&self.retained);
            match retained.set(&kept, self.max_retained_bytes) {
                Ok(()) if kept.payload.is_empty() => {
                    change = Some(RetainedChange::Clear(topic.to_string()));
                }
                Ok(()) => change = Some(RetainedChange::Set(retained::to_stored(&kept))),
                Err(refused) => {
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
            }
            self.metrics
                .broker_retained_bytes
                .store(retained.bytes() as i64, Ordering::Relaxed);
        }
        let subs = read(&self.subscriptions);
        // (subscription, highest QoS granted, retain as published)
        let mut targets: Vec<(&Subscription, QoS, bool)> = Vec::new();
        for sub in subs.iter() {
            if (sub.no_local && from == Some(sub.connection))
                || !connect::topic_matches(topic, &sub.filter)
            {
                continue;
            }
            match targets.iter_mut().find(|(t, _, _)| t.client == sub.client) {
                Some((_, qos, rap)) => {
                    if (sub.qos as u8) > (*qos as u8) {
                        *qos = sub.qos;
                    }
                    *rap |= sub.retain_as_published;
                }
                None => targets.push((sub, sub.qos, sub.retain_as_published)),
            }
        }
        for (sub, granted, retain_as_published) in targets {
            let out = Publish {
                dup: false,
                qos: wire::downgrade(publish.qos, granted),
                retain: retain_as_published && publish.retain,
                topic: publish.topic.clone(),
                pkid: 0,
                payload: publish.payload.clone(),
                properties: forwarded(publish.properties.as_ref()),
            };
            if !self.deliver(sub, out) {
                self.metrics
                    .broker_deliveries_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        change
    }

    /// [`Shared::route`], then the retained change on to the store: waits
    /// while the store writer is behind, so no retained change is left out
    /// of the store.
    async fn publish(&self, publish: &Publish, from: Option<u64>) {
        if let Some(change) = self.route(publish, from) {
            let _ = self.persist.send(change).await;
        }
    }

    /// Hands one delivery to a subscriber: QoS 0 to its connection's queue
    /// (lost when it is full or the client is away: a slow subscriber
    /// loses QoS 0 deliveries, never the broker's memory or the
    /// publisher's throughput), QoS 1/2 to its session (kept while the
    /// client is away, within `max_queued_bytes`). `false`: dropped.
    fn deliver(&self, sub: &Subscription, out: Publish) -> bool {
        if out.size() > sub.max_packet_bytes {
            debug!(
                size = out.payload.len(),
                max = sub.max_packet_bytes,
                "delivery larger than the client's maximum packet size; not sent"
            );
            return false;
        }
        if out.qos == QoS::AtMostOnce {
            return match &sub.deliver {
                Some(outbox) => outbox.deliver(out),
                // Away: QoS 0 is not queued for it (MQTT allows either).
                None => true,
            };
        }
        let queued = lock(&sub.session.deliveries).push(out);
        if queued {
            sub.session.wake.notify_one();
        }
        queued
    }
}

/// The properties a publish is forwarded with (§3.3.2.3): all but the
/// topic alias (one connection's) and subscription identifiers (not
/// supported).
fn forwarded(properties: Option<&PublishProperties>) -> Option<PublishProperties> {
    let mut out = properties?.clone();
    out.topic_alias = None;
    out.subscription_identifiers.clear();
    Some(out)
}

/// The topic of a publish the broker accepted (checked UTF-8 on the way
/// in; the node's own publishes are built from strings).
fn topic_of(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.topic).unwrap_or_default()
}

struct Subscription {
    filter: String,
    /// The client id of the session it belongs to.
    client: String,
    /// The connection that made it (or restored it), for no-local.
    connection: u64,
    /// The connection's queue, `None` while a persistent session's client
    /// is away.
    deliver: Option<Outbox>,
    /// Where its QoS 1/2 deliveries go.
    session: SessionHandle,
    /// The QoS granted.
    qos: QoS,
    /// The client's maximum packet size (MQTT 5; unlimited for 3.1.1).
    max_packet_bytes: usize,
    /// MQTT 5 subscription options (§3.8.3.1); 3.1.1: all off.
    no_local: bool,
    retain_as_published: bool,
}

/// What this connection's subscriptions deliver through.
struct Attached {
    client_id: String,
    outbox: Outbox,
    session: SessionHandle,
    max_packet_bytes: usize,
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
        ingestor: MqttIngest,
        host: Option<PrimaryHost>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let (persist, changes) = mpsc::channel(retained::PERSIST_QUEUE);
        let shared = Arc::new(Shared::new(
            &self.config,
            ingestor.metrics().clone(),
            persist,
        ));
        tasks.spawn(retained::persist(ingestor.store().clone(), changes));
        shared.load_retained(ingestor.store()).await;
        let state = host.as_ref().map(PrimaryHost::session);
        if let Some(session) = &state {
            shared
                .publish(&state_publish(&session.topic, session.payload(true)), None)
                .await;
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
                        shared
                            .publish(&state_publish(&session.topic, session.payload(false)), None)
                            .await;
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
                closing: closing.clone(),
                tasks: tasks.clone(),
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
/// [`REFUSAL_DEADLINE`]) and answered with CONNACK 0x03 server unavailable
/// (MQTT 5: 0x89 server busy).
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
    if let Ok(Ok((protocol, Packet::Connect(..)))) = connect {
        let refusal = connack(ConnectReturnCode::ServerBusy, false, None);
        let _ = write_packet(&mut stream, protocol, &refusal).await;
    }
}

fn connack(
    code: ConnectReturnCode,
    session_present: bool,
    properties: Option<rumqttc::v5::mqttbytes::v5::ConnAckProperties>,
) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        properties,
    })
}

/// Removes persistent sessions whose client stayed away longer than
/// `expiry` (or the shorter expiry an MQTT 5 client was granted), checking
/// a few times per period.
async fn expire_sessions(
    ingestor: MqttIngest,
    shared: Arc<Shared>,
    expiry: Duration,
    shutdown: CancellationToken,
) {
    let every = (expiry / 4).clamp(Duration::from_millis(250), Duration::from_secs(300));
    loop {
        let live: std::collections::HashSet<String> =
            lock(&shared.clients).keys().cloned().collect();
        let shorter: Vec<(String, Duration)> = lock(&shared.expiries)
            .iter()
            .filter(|(id, _)| !live.contains(*id))
            .map(|(id, expiry)| (id.clone(), *expiry))
            .collect();
        let away: Vec<String> = lock(&shared.sessions)
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        let store = ingestor.store().clone();
        let now = crate::record::Timestamp::now().as_micros();
        let cutoff_of = |expiry: Duration| {
            now.saturating_sub(i64::try_from(expiry.as_micros()).unwrap_or(i64::MAX))
        };
        let cutoff = cutoff_of(expiry);
        let short_cutoffs: Vec<(String, i64)> = shorter
            .into_iter()
            .map(|(id, expiry)| (id, cutoff_of(expiry)))
            .collect();
        let swept = tokio::task::spawn_blocking(move || {
            let mut removed = store.expire_mqtt_sessions(cutoff, now, &live)?;
            let mut gone = Vec::new();
            for (id, cutoff) in short_cutoffs {
                if store.mqtt_session_expired(&id, cutoff)? {
                    store.remove_mqtt_session(&id)?;
                    removed += 1;
                    gone.push(id);
                } else if store.mqtt_session(&id)?.is_none() {
                    gone.push(id);
                }
            }
            // Away sessions whose stored session is gone (expired now or
            // before) take their queued deliveries and subscriptions along.
            let mut ended = Vec::new();
            for id in away {
                if store.mqtt_session(&id)?.is_none() {
                    ended.push(id);
                }
            }
            Ok::<_, crate::store::StoreError>((removed, gone, ended))
        })
        .await;
        match swept {
            Ok(Ok((removed, gone, ended))) => {
                let mut expiries = lock(&shared.expiries);
                for id in gone {
                    expiries.remove(&id);
                }
                drop(expiries);
                if !ended.is_empty() {
                    let live: std::collections::HashSet<String> =
                        lock(&shared.clients).keys().cloned().collect();
                    let ended: Vec<String> =
                        ended.into_iter().filter(|id| !live.contains(id)).collect();
                    let mut sessions = lock(&shared.sessions);
                    for id in &ended {
                        sessions.remove(id);
                    }
                    drop(sessions);
                    write(&shared.subscriptions)
                        .retain(|s| s.deliver.is_some() || !ended.contains(&s.client));
                }
                if removed > 0 {
                    shared
                        .metrics
                        .broker_sessions_expired
                        .fetch_add(removed as u64, Ordering::Relaxed);
                    info!(removed, ?expiry, "expired persistent MQTT sessions removed");
                }
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
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload, None);
    publish.retain = true;
    publish
}

/// Publishes the node's own commands (Sparkplug rebirth requests) to the
/// broker's subscribers, as if a client had sent them.
async fn publish_commands(
    mut commands: tokio::sync::broadcast::Receiver<crate::sources::sparkplug::route::Command>,
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
                let publish = Publish::new(command.topic, QoS::AtMostOnce, command.payload, None);
                shared.publish(&publish, None).await;
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
    ingestor: MqttIngest,
    /// Closes this connection: the broker stopping, or a new connection
    /// with its client id taking over.
    shutdown: CancellationToken,
    /// The broker stopping (tells a take-over from a shutdown).
    closing: CancellationToken,
    /// Where delayed wills wait.
    tasks: TaskTracker,
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
    /// Fired once everything before it is queued to the client (a SUBACK
    /// before the retained messages of its subscriptions).
    Reached(tokio::sync::oneshot::Sender<()>),
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("MQTT protocol error: {0}")]
    Protocol(String),
    #[error("malformed MQTT packet: {0}")]
    Malformed(String),
    #[error("MQTT violation: {0}")]
    Violation(Violation),
    /// An MQTT 5 rule broken, with the reason code the connection is
    /// closed with.
    #[error("MQTT 5 violation: {0}")]
    Refused(Refusal),
    #[error("packet larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("no packet within the keep-alive period")]
    KeepAlive,
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<WireError> for ConnectionError {
    fn from(err: WireError) -> ConnectionError {
        match err {
            WireError::Malformed(reason) => ConnectionError::Malformed(reason),
            WireError::TooLarge(limit) => ConnectionError::TooLarge(limit),
        }
    }
}

impl ConnectionError {
    /// The reason an MQTT 5 client is told in the server's DISCONNECT;
    /// `None` when the socket is gone anyway.
    fn disconnect_reason(&self) -> Option<DisconnectReasonCode> {
        Some(match self {
            ConnectionError::Protocol(_) => DisconnectReasonCode::ProtocolError,
            ConnectionError::Malformed(_) | ConnectionError::Violation(_) => {
                DisconnectReasonCode::MalformedPacket
            }
            ConnectionError::Refused(refusal) => refusal.code,
            ConnectionError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
            ConnectionError::KeepAlive => DisconnectReasonCode::KeepAliveTimeout,
            ConnectionError::Io(_) => return None,
        })
    }
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
        let (protocol, connect, will, login) = match connect {
            Ok(Ok((protocol, Packet::Connect(connect, will, login)))) => {
                (protocol, connect, will, login)
            }
            Ok(Err(ConnectionError::Violation(violation))) => {
                self.shared.violations.count(violation);
                info!(%violation, "MQTT CONNECT refused");
                if violation == Violation::UnsupportedProtocol {
                    let refusal = connack(ConnectReturnCode::RefusedProtocolVersion, false, None);
                    let _ = write_packet(&mut stream, Protocol::V311, &refusal).await;
                }
                return;
            }
            Ok(Ok((_, other))) => {
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
        if let Err(violation) = connect::check_strings(&connect, will.as_ref(), login.as_ref()) {
            self.shared.violations.count(violation);
            info!(%violation, "MQTT CONNECT refused");
            return;
        }
        if let Some(code) = self.check_connect(protocol, &connect, login.as_ref()) {
            metrics.broker_refused.fetch_add(1, Ordering::Relaxed);
            info!(client = %connect.client_id, reason = ?code, "MQTT connection refused");
            let _ = write_packet(&mut stream, protocol, &connack(code, false, None)).await;
            return;
        }
        let assigned = connect.client_id.is_empty();
        let client_id = if assigned {
            format!("meshlet-anon-{}", self.id)
        } else {
            connect.client_id.clone()
        };
        self.take_over(&client_id);
        let expiry = v5::session_expiry(protocol, &connect, self.config.session_expiry);
        let restored = self
            .open_session(&client_id, connect.clean_start, expiry)
            .await;
        let session_present = restored.is_some();
        let properties = (protocol == Protocol::V5).then(|| {
            v5::connack_properties(&self.config, expiry, assigned.then_some(client_id.as_str()))
        });
        let accepted = connack(ConnectReturnCode::Success, session_present, properties);
        if write_packet(&mut stream, protocol, &accepted)
            .await
            .is_err()
        {
            self.release(&client_id);
            return;
        }
        metrics.broker_connections.fetch_add(1, Ordering::Relaxed);
        if protocol == Protocol::V5 {
            metrics
                .broker_v5_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        debug!(client = %client_id, keep_alive = connect.keep_alive, session_present, version = protocol.name(), "MQTT client connected");
        let acl = login
            .as_ref()
            .and_then(|login| self.config.subscribe_acl.get(&login.username))
            .cloned();
        let mut session = ConnectionState::new(
            protocol,
            client_id,
            connect.keep_alive,
            expiry,
            will,
            ClientLimits::of(&connect),
            acl,
            self.settings(),
            std::time::Instant::now(),
        );

        let (reader, writer) = stream.into_split();
        let (outgoing, outgoing_rx) = mpsc::channel::<Packet>(OUTGOING_QUEUE);
        let (outgoing, queued) = Outbox::new(outgoing, self.config.max_queued_bytes);
        let (acks, acks_rx) = mpsc::channel::<AckItem>(self.config.max_inflight.max(1));
        let writer_task = tokio::spawn(write_loop(
            writer,
            outgoing_rx,
            queued,
            protocol,
            session.limits.max_packet_bytes,
            metrics.clone(),
        ));
        let acker_task = tokio::spawn(ack_loop(acks_rx, outgoing.clone(), self.shutdown.clone()));
        let window =
            usize::from(session.limits.receive_maximum).min(self.config.max_inflight.max(1));
        let attached = Attached {
            client_id: session.client_id.clone(),
            outbox: outgoing.clone(),
            session: self.attach_session(&session.client_id, session_present, window),
            max_packet_bytes: session.limits.max_packet_bytes,
        };
        // An away session's subscriptions, or a taken-over connection's,
        // are this connection's now.
        self.forget_subscriptions(&session.client_id);
        for stored in restored.unwrap_or_default() {
            let (filter, qos) = session::parse_stored_filter(&stored);
            if !session.may_subscribe(filter) {
                info!(client = %session.client_id, %filter, "stored subscription no longer allowed by mqtt.embedded.subscribe_acl; dropped");
                continue;
            }
            if !self.subscribe(filter, qos, &attached, false, false) {
                warn!(client = %session.client_id, %filter, "stored subscription over the client's limits; dropped");
            }
        }
        let stop_deliveries = CancellationToken::new();
        let delivery_task = tokio::spawn(delivery_loop(
            attached.session.clone(),
            outgoing.clone(),
            stop_deliveries.clone(),
            metrics.clone(),
        ));

        let close = self
            .read_loop(reader, buffer, &mut session, &attached, &acks)
            .await;
        let client_id = session.client_id.clone();
        match &close.cause {
            Cause::Disconnect { .. } => debug!(client = %client_id, "MQTT client disconnected"),
            Cause::ShuttingDown | Cause::TakenOver => {
                debug!(client = %client_id, "MQTT connection closed by the broker")
            }
            Cause::Error(err) => {
                match err {
                    ConnectionError::Violation(violation) => {
                        self.shared.violations.count(*violation);
                    }
                    ConnectionError::Io(_) => {}
                    _ => {
                        metrics
                            .broker_protocol_errors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                info!(client = %client_id, error = %err, "MQTT connection closed");
            }
        }
        let reason = close.reason;
        if let Some(will) = close.will {
            self.publish_will(will, &client_id).await;
        }
        // Let acks for what was read finish (they are durable work), then
        // tell an MQTT 5 client why it is closed, then close the socket.
        // What was delivered and not acknowledged stays in the session.
        stop_deliveries.cancel();
        let unsent = delivery_task.await.unwrap_or_default();
        // What was queued for the client up to now still goes out (the
        // offline STATE routed just before a shutdown closes connections),
        // for as long as the client reads it.
        // Not after a take-over: the new connection sends them.
        let last = if reason == Some(DisconnectReasonCode::SessionTakenOver) {
            Vec::new()
        } else {
            let mut last = unsent;
            last.extend(lock(&attached.session.deliveries).next());
            last
        };
        let flush = async {
            for packet in last {
                if outgoing.deliver_wait(packet).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(FINAL_DELIVERIES, flush).await;
        drop(acks);
        let _ = acker_task.await;
        if let (Protocol::V5, Some(code)) = (protocol, reason) {
            let why = match &close.cause {
                Cause::Error(err) => err.to_string(),
                _ => String::new(),
            };
            let _ = outgoing
                .send(Packet::Disconnect(v5::disconnect(code, &why)))
                .await;
        }
        drop(outgoing);
        let current = lock(&self.shared.clients)
            .get(&client_id)
            .is_some_and(|(id, _)| *id == self.id);
        if session.expiry.persistent() && current {
            self.go_away();
        } else {
            self.unsubscribe_all();
            let mut sessions = lock(&self.shared.sessions);
            if sessions
                .get(&client_id)
                .is_some_and(|h| h.same(&attached.session))
            {
                sessions.remove(&client_id);
            }
        }
        drop(attached);
        let _ = writer_task.await;
        if session.expiry.persistent() {
            self.end_session(&client_id).await;
        } else if protocol == Protocol::V5 && !connect.clean_start {
            // Resumed, but with expiry 0: the session ends now.
            self.remove_session(&client_id).await;
        }
        self.release(&client_id);
        metrics.broker_connections.fetch_sub(1, Ordering::Relaxed);
        if protocol == Protocol::V5 {
            metrics
                .broker_v5_connections
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn check_connect(
        &self,
        protocol: Protocol,
        connect: &Connect,
        login: Option<&Login>,
    ) -> Option<ConnectReturnCode> {
        // MQTT 5 assigns an id to an empty one whatever the session
        // (§3.1.3.1); 3.1.1 only for a clean session.
        if protocol == Protocol::V311 && connect.client_id.is_empty() && !connect.clean_start {
            return Some(ConnectReturnCode::BadClientId);
        }
        // Enhanced authentication (AUTH) is not offered (§4.12).
        if connect
            .properties
            .as_ref()
            .is_some_and(|p| p.authentication_method.is_some())
        {
            return Some(ConnectReturnCode::BadAuthenticationMethod);
        }
        if !self.config.users.is_empty() {
            let ok = login.is_some_and(|login| {
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

    /// Starts the client's session: a clean start ends any stored session;
    /// a persistent one is created, or resumed with its subscriptions
    /// (`Some`, and CONNACK says `session_present`). Sessions survive node
    /// restarts, so a device resends its unacknowledged QoS 1 messages after
    /// the node crashed instead of discarding them.
    async fn open_session(
        &self,
        client_id: &str,
        clean_start: bool,
        granted: SessionExpiry,
    ) -> Option<Vec<String>> {
        let store = self.ingestor.store().clone();
        let id = client_id.to_string();
        // The expiry the stored session was granted when its client left.
        let expiry = lock(&self.shared.expiries)
            .get(client_id)
            .copied()
            .unwrap_or(self.config.session_expiry);
        let persistent = granted.persistent();
        {
            let mut expiries = lock(&self.shared.expiries);
            if persistent && granted.granted < self.config.session_expiry {
                expiries.insert(client_id.to_string(), granted.granted);
            } else {
                expiries.remove(client_id);
            }
        }
        let metrics = self.shared.metrics.clone();
        let opened = tokio::task::spawn_blocking(move || {
            if clean_start {
                store.remove_mqtt_session(&id)?;
                if !persistent {
                    return Ok(None);
                }
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
            let existing = if clean_start {
                None
            } else {
                store.mqtt_session(&id)?
            };
            match (&existing, persistent) {
                (None, true) => {
                    // Durable before CONNACK: a device that publishes right
                    // away and sees the node crash must find its session.
                    store.set_mqtt_session(&id, &[])?;
                    store.durable_blocking()?;
                }
                // Connected again: the session no longer expires.
                (Some(filters), true) => store.set_mqtt_session(&id, filters)?,
                (_, false) => {}
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
            .map(|s| session::stored_filter(&s.filter, s.qos))
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

    /// Ends a session whose expiry ran out with its connection (MQTT 5
    /// session expiry 0).
    async fn remove_session(&self, client_id: &str) {
        let store = self.ingestor.store().clone();
        let id = client_id.to_string();
        let removed = tokio::task::spawn_blocking(move || store.remove_mqtt_session(&id)).await;
        if let Ok(Err(err)) = removed {
            warn!(client = %client_id, error = %err, "could not remove the ended MQTT session");
        }
    }

    /// Closes an earlier connection with the same client id, and cancels
    /// the will it may still have waiting.
    fn take_over(&self, client_id: &str) {
        let mut clients = lock(&self.shared.clients);
        let previous = clients.insert(client_id.to_string(), (self.id, self.shutdown.clone()));
        if let Some(will) = lock(&self.shared.delayed_wills).remove(client_id) {
            debug!(client = %client_id, "client reconnected within its will delay; will cancelled");
            will.cancel();
        }
        drop(clients);
        if let Some((_, previous)) = previous {
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

    /// The protocol settings of this broker's connections.
    fn settings(&self) -> Settings {
        Settings {
            max_delivery_qos: self.shared.max_delivery_qos,
            max_session_expiry: self.config.session_expiry,
            max_topic_aliases: self.config.max_topic_aliases,
            receive_maximum: v5::receive_maximum(&self.config),
        }
    }

    /// Reads packets until the connection ends, handing each to the
    /// protocol state and carrying out what it decides.
    async fn read_loop(
        &self,
        mut reader: OwnedReadHalf,
        mut buffer: BytesMut,
        session: &mut ConnectionState,
        attached: &Attached,
        acks: &mpsc::Sender<AckItem>,
    ) -> Close {
        loop {
            let next = read_packet(
                &mut reader,
                &mut buffer,
                session.protocol,
                self.config.max_packet_bytes,
                Some(&self.shared.packets),
            );
            let deadline = session.deadline().map(tokio::time::Instant::from_std);
            let actions = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return session.close(if self.closing.is_cancelled() {
                        Cause::ShuttingDown
                    } else {
                        Cause::TakenOver
                    });
                }
                packet = until(deadline, next) => match packet {
                    Ok(packet) => session.on_packet(packet, std::time::Instant::now()),
                    Err(ConnectionError::KeepAlive) => {
                        session.on_tick(std::time::Instant::now())
                    }
                    Err(err) => return session.close(Cause::Error(err)),
                },
            };
            for action in actions {
                if let Action::Close(close) = action {
                    return close;
                }
                if let Err(err) = self.execute(action, session, attached, acks).await {
                    return session.close(Cause::Error(err));
                }
            }
        }
    }

    /// Carries out one action of the protocol state (all but closing).
    async fn execute(
        &self,
        action: Action,
        session: &ConnectionState,
        attached: &Attached,
        acks: &mpsc::Sender<AckItem>,
    ) -> Result<(), ConnectionError> {
        match action {
            Action::Ingest { publish, ack } => self.on_publish(publish, ack, session, acks).await,
            Action::Send(packet) => send_ack(acks, AckItem::Now(packet)).await,
            Action::Subscribe { pkid, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                let mut granted = Vec::with_capacity(filters.len());
                for Requested { filter, verdict } in &filters {
                    let grant = match verdict {
                        Ok(grant) => grant,
                        Err(code) => {
                            if *code == SubscribeReasonCode::NotAuthorized {
                                self.shared
                                    .metrics
                                    .broker_subscriptions_refused
                                    .fetch_add(1, Ordering::Relaxed);
                                info!(client = %session.client_id, %filter, "subscription refused by mqtt.embedded.subscribe_acl");
                            }
                            codes.push(*code);
                            continue;
                        }
                    };
                    match self.subscribe_new(
                        filter,
                        grant.qos,
                        attached,
                        grant.no_local,
                        grant.retain_as_published,
                    ) {
                        Some(new) => {
                            codes.push(SubscribeReasonCode::Success(grant.qos));
                            let send = match grant.retained {
                                RetainForwardRule::OnEverySubscribe => true,
                                RetainForwardRule::OnNewSubscribe => new,
                                RetainForwardRule::Never => false,
                            };
                            if send {
                                granted.push((filter.as_str(), grant.qos));
                            }
                        }
                        None => {
                            self.shared
                                .metrics
                                .broker_subscriptions_refused
                                .fetch_add(1, Ordering::Relaxed);
                            debug!(client = %session.client_id, %filter, "subscription refused: the client's subscription limits are reached");
                            codes.push(SubscribeReasonCode::QuotaExceeded);
                        }
                    }
                }
                if session.expiry.persistent() {
                    self.save_session(&session.client_id).await;
                }
                send_ack(
                    acks,
                    AckItem::Now(Packet::SubAck(SubAck {
                        pkid,
                        return_codes: codes,
                        properties: None,
                    })),
                )
                .await?;
                if !granted.is_empty() {
                    // The SUBACK first, then the retained messages.
                    let (reached, queued) = tokio::sync::oneshot::channel();
                    send_ack(acks, AckItem::Reached(reached)).await?;
                    if queued.await.is_err() {
                        return Err(ConnectionError::Protocol(
                            "connection is closing".to_string(),
                        ));
                    }
                }
                for (filter, qos) in granted {
                    self.send_retained(filter, qos, attached).await;
                }
                Ok(())
            }
            Action::Unsubscribe { pkid, filters } => {
                let mut reasons = vec![UnsubAckReason::NoSubscriptionExisted; filters.len()];
                {
                    let mut subs = write(&self.shared.subscriptions);
                    subs.retain(|s| {
                        let position = (s.connection == self.id)
                            .then(|| filters.iter().position(|f| *f == s.filter))
                            .flatten();
                        if let Some(i) = position {
                            if let Some(reason) = reasons.get_mut(i) {
                                *reason = UnsubAckReason::Success;
                            }
                            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
                            self.subscription_bytes
                                .fetch_sub(s.filter.len(), Ordering::Relaxed);
                        }
                        position.is_none()
                    });
                }
                if session.expiry.persistent() {
                    self.save_session(&session.client_id).await;
                }
                send_ack(
                    acks,
                    AckItem::Now(Packet::UnsubAck(UnsubAck {
                        pkid,
                        reasons,
                        properties: None,
                    })),
                )
                .await
            }
            // The client's acks of QoS 1/2 deliveries: a done one makes
            // room in the window.
            Action::Delivered(pkid) => {
                if lock(&attached.session.deliveries).complete(pkid) {
                    attached.session.wake.notify_one();
                }
                Ok(())
            }
            Action::Release(pkid) => {
                let release = lock(&attached.session.deliveries).received(pkid);
                match release {
                    Some(release) => send_ack(acks, AckItem::Now(release)).await,
                    None => Ok(()),
                }
            }
            Action::ShorterExpiry(granted) => {
                lock(&self.shared.expiries).insert(session.client_id.clone(), granted);
                Ok(())
            }
            Action::Close(_) => Ok(()),
        }
    }

    /// A publish the protocol state accepted: to subscribers, to ingest,
    /// and its ack (if any) queued behind the ones before it, to leave
    /// once durable.
    async fn on_publish(
        &self,
        publish: Publish,
        ack: Option<Packet>,
        session: &ConnectionState,
        acks: &mpsc::Sender<AckItem>,
    ) -> Result<(), ConnectionError> {
        self.shared.publish(&publish, Some(self.id)).await;
        let (content_type, user_properties) = v5::metadata(&publish);
        let pending = self
            .ingestor
            .submit(MqttMessage {
                topic: topic_of(&publish),
                payload: &publish.payload,
                retained: false,
                redelivery: publish.dup,
                client: Some(&session.client_id),
                content_type,
                user_properties,
            })
            .await;
        match ack {
            // Written all the same; nothing to acknowledge, only to count.
            None => send_ack(acks, AckItem::Count(pending)).await,
            Some(ack) => send_ack(acks, AckItem::AfterDurable(ack, pending)).await,
        }
    }

    /// Adds a subscription of this connection, unless it would take the
    /// connection over `max_subscriptions` or `max_subscription_bytes`
    /// (`false`). A filter it already holds is granted again.
    fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
        attached: &Attached,
        no_local: bool,
        retain_as_published: bool,
    ) -> bool {
        self.subscribe_new(filter, qos, attached, no_local, retain_as_published)
            .is_some()
    }

    /// [`Connection::subscribe`], saying whether the subscription is new
    /// (`Some(true)`) or replaced one of the same filter (`Some(false)`).
    fn subscribe_new(
        &self,
        filter: &str,
        qos: QoS,
        attached: &Attached,
        no_local: bool,
        retain_as_published: bool,
    ) -> Option<bool> {
        let mut subs = write(&self.shared.subscriptions);
        if let Some(existing) = subs
            .iter_mut()
            .find(|s| s.connection == self.id && s.filter == filter)
        {
            existing.qos = qos;
            existing.no_local = no_local;
            existing.retain_as_published = retain_as_published;
            return Some(false);
        }
        let count = self.subscriptions.load(Ordering::Relaxed);
        let bytes = self.subscription_bytes.load(Ordering::Relaxed);
        if count >= self.config.max_subscriptions
            || bytes + filter.len() > self.config.max_subscription_bytes
        {
            return None;
        }
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.subscription_bytes
            .fetch_add(filter.len(), Ordering::Relaxed);
        subs.push(Subscription {
            filter: filter.to_string(),
            client: attached.client_id.clone(),
            connection: self.id,
            deliver: Some(attached.outbox.clone()),
            session: attached.session.clone(),
            qos,
            max_packet_bytes: attached.max_packet_bytes,
            no_local,
            retain_as_published,
        });
        Some(true)
    }

    /// Sends the retained messages matching a new subscription, every one
    /// of them: QoS 0 ones wait for room in the subscriber's queue (its own
    /// pace holds the SUBSCRIBE's connection back, nothing is cut), QoS 1/2
    /// ones go to its session (within `max_queued_bytes`, counted beyond).
    async fn send_retained(&self, filter: &str, granted: QoS, attached: &Attached) {
        // Clones share the payload bytes: the list costs pointers, not
        // another copy of the retained messages.
        let matching: Vec<(Publish, Duration)> = read(&self.shared.retained)
            .iter()
            .filter(|(topic, _)| connect::topic_matches(topic, filter))
            .map(|(_, kept)| (kept.publish.clone(), kept.since.elapsed()))
            .collect();
        for (mut out, waited) in matching {
            out.retain = true;
            out.qos = wire::downgrade(out.qos, granted);
            match v5::remaining_expiry(&out, waited) {
                Some(Err(())) => continue,
                Some(Ok(left)) => {
                    if let Some(p) = out.properties.as_mut() {
                        p.message_expiry_interval = Some(left);
                    }
                }
                None => {}
            }
            if out.size() > attached.max_packet_bytes {
                self.shared
                    .metrics
                    .broker_deliveries_dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if out.qos == QoS::AtMostOnce {
                if attached
                    .outbox
                    .deliver_wait(Packet::Publish(out))
                    .await
                    .is_err()
                {
                    return;
                }
            } else if lock(&attached.session.deliveries).push(out) {
                attached.session.wake.notify_one();
            } else {
                self.shared
                    .metrics
                    .broker_deliveries_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn unsubscribe_all(&self) {
        write(&self.shared.subscriptions).retain(|s| s.connection != self.id);
    }

    /// The client of a persistent session left: its subscriptions stay,
    /// delivering QoS 1/2 into the session until it returns.
    fn go_away(&self) {
        for sub in write(&self.shared.subscriptions).iter_mut() {
            if sub.connection == self.id {
                sub.deliver = None;
            }
        }
    }

    /// Drops the subscriptions other connections of `client_id` left (an
    /// away session's, a taken-over connection's): the stored session is
    /// what this connection restores.
    fn forget_subscriptions(&self, client_id: &str) {
        write(&self.shared.subscriptions).retain(|s| s.client != client_id);
    }

    /// The QoS 1/2 deliveries of this connection's session: the away
    /// session's when it is resumed, else new ones.
    fn attach_session(&self, client_id: &str, resumed: bool, window: usize) -> SessionHandle {
        let mut sessions = lock(&self.shared.sessions);
        if resumed {
            if let Some(handle) = sessions.get(client_id) {
                lock(&handle.deliveries).reattach(window);
                handle.wake.notify_one();
                return handle.clone();
            }
        }
        let handle = SessionHandle::new(
            self.config.max_queued_bytes,
            window,
            self.shared.session_bytes.clone(),
        );
        sessions.insert(client_id.to_string(), handle.clone());
        handle
    }

    /// Publishes the client's last will after an abnormal disconnect (or
    /// an MQTT 5 DISCONNECT 0x04): to subscribers, and into ingest like any
    /// publish from the client. An MQTT 5 will delay interval (capped by
    /// the session expiry) waits first, unless the client comes back.
    async fn publish_will(&self, will: Will, client_id: &str) {
        let Will { publish, delay } = will;
        let shared = self.shared.clone();
        let ingestor = self.ingestor.clone();
        let client_id = client_id.to_string();
        if delay.is_zero() {
            send_will(&shared, &ingestor, &publish, &client_id).await;
            return;
        }
        // A new connection of the session already came (a take-over): the
        // will is not sent (MQTT 5 §3.1.3.2.2).
        // Checked and noted under the clients lock, which `take_over`
        // holds while it cancels waiting wills: one or the other sees it.
        let cancel = CancellationToken::new();
        {
            let clients = lock(&self.shared.clients);
            if clients
                .get(&client_id)
                .is_some_and(|(id, _)| *id != self.id)
            {
                debug!(client = %client_id, "will dropped: the client is back");
                return;
            }
            lock(&self.shared.delayed_wills).insert(client_id.clone(), cancel.clone());
        }
        let closing = self.closing.clone();
        debug!(client = %client_id, ?delay, "will waits for its delay interval");
        self.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => return,
                // The broker stopping drops the will: the client's
                // reconnect to the restarted node must not find it sent.
                _ = closing.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let mine = {
                let mut wills = lock(&shared.delayed_wills);
                let mine = wills.get(&client_id).is_some_and(|t| !t.is_cancelled());
                if mine {
                    wills.remove(&client_id);
                }
                mine
            };
            if mine {
                send_will(&shared, &ingestor, &publish, &client_id).await;
            }
        });
    }
}

/// Routes a will and hands it to ingest.
async fn send_will(shared: &Shared, ingestor: &MqttIngest, publish: &Publish, client_id: &str) {
    shared.publish(publish, None).await;
    let (content_type, user_properties) = v5::metadata(publish);
    let pending = ingestor
        .submit(MqttMessage {
            topic: topic_of(publish),
            payload: &publish.payload,
            retained: false,
            redelivery: false,
            client: Some(client_id),
            content_type,
            user_properties,
        })
        .await;
    drop(pending);
}

/// Sends a session's QoS 1/2 deliveries while its client is connected:
/// resends first, then what the window lets through, again whenever a
/// delivery is queued or acknowledged. Waits for room in the connection's
/// queue (never drops); `stop` ends it when the connection closes, and it
/// returns what it had taken to send and had not queued yet (in flight
/// for the session: the connection's last flush sends them).
async fn delivery_loop(
    session: SessionHandle,
    outbox: Outbox,
    stop: CancellationToken,
    metrics: Arc<IngestMetrics>,
) -> Vec<Packet> {
    loop {
        let (packets, expired) = {
            let mut deliveries = lock(&session.deliveries);
            (deliveries.next(), deliveries.expired())
        };
        if expired > 0 {
            // Expired while it waited: MQTT 5 says not to send it; counted
            // with the deliveries that were not made.
            metrics
                .broker_deliveries_dropped
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        let mut packets = std::collections::VecDeque::from(packets);
        while let Some(packet) = packets.front().cloned() {
            tokio::select! {
                _ = stop.cancelled() => return packets.into(),
                sent = outbox.deliver_wait(packet) => {
                    if sent.is_err() {
                        return Vec::new();
                    }
                    packets.pop_front();
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Vec::new(),
            _ = session.wake.notified() => {}
        }
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
            AckItem::Reached(reached) => {
                let _ = reached.send(());
                continue;
            }
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

/// Writes what is queued for a client, in its protocol. A delivery larger
/// than the client's own maximum packet size (MQTT 5) is not sent, and
/// counted as dropped (§3.1.2.11.4).
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut packets: mpsc::Receiver<Packet>,
    queued: QueuedBytes,
    protocol: Protocol,
    client_max_packet_bytes: usize,
    metrics: Arc<IngestMetrics>,
) {
    let mut buffer = BytesMut::with_capacity(4 * 1024);
    let encode = |packet: &Packet, buffer: &mut BytesMut| {
        if matches!(packet, Packet::Publish(_)) && packet.size() > client_max_packet_bytes {
            metrics
                .broker_deliveries_dropped
                .fetch_add(1, Ordering::Relaxed);
            debug!(
                size = packet.size(),
                max = client_max_packet_bytes,
                "delivery larger than the client's maximum packet size; not sent"
            );
            return;
        }
        wire::encode(protocol, packet, buffer);
    };
    while let Some(packet) = packets.recv().await {
        buffer.clear();
        let mut bytes = QueuedBytes::cost(&packet);
        encode(&packet, &mut buffer);
        // Coalesce whatever else is ready into one write.
        while buffer.len() < 64 * 1024 {
            match packets.try_recv() {
                Ok(more) => {
                    bytes += QueuedBytes::cost(&more);
                    encode(&more, &mut buffer);
                }
                Err(_) => break,
            }
        }
        let written = if buffer.is_empty() {
            Ok(())
        } else {
            writer.write_all(&buffer).await
        };
        // Counted until the socket took them: a subscriber that does not
        // read holds max_queued_bytes, in the queue and this buffer.
        queued.sent(bytes);
        if written.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn write_packet(
    stream: &mut TcpStream,
    protocol: Protocol,
    packet: &Packet,
) -> std::io::Result<()> {
    let mut buffer = BytesMut::new();
    if !wire::encode(protocol, packet, &mut buffer) {
        return Err(std::io::Error::other(format!(
            "{} cannot be encoded for MQTT {}",
            packet_kind(packet),
            protocol.name()
        )));
    }
    stream.write_all(&buffer).await
}

/// Reads a client's first packet, which must be a CONNECT of at most
/// `max_connect_bytes`: its raw header is checked for what the codec lets
/// through (`connect::check_frame`) before it is parsed, and its
/// protocol level picks the codec of the connection.
async fn read_connect<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    max_connect_bytes: usize,
) -> Result<(Protocol, Packet), ConnectionError> {
    loop {
        if buffer.first().is_some_and(|b| b >> 4 != 1) {
            return Err(ConnectionError::Protocol(
                "first packet is not CONNECT".to_string(),
            ));
        }
        match mqttbytes::check(buffer.iter(), max_connect_bytes) {
            Ok(header) => {
                let frame = buffer.get(..header.frame_length()).unwrap_or_default();
                connect::check_frame(frame).map_err(ConnectionError::Violation)?;
                let protocol = Protocol::of_connect(frame);
                let packet = read_packet(reader, buffer, protocol, max_connect_bytes, None).await?;
                return Ok((protocol, packet));
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

/// What the front of a client's bytes holds.
#[derive(Debug)]
pub enum Decoded {
    /// One whole packet, taken off the buffer.
    Packet(mqttbytes::v4::Packet),
    /// Part of one, left in the buffer: at least `missing` more bytes are
    /// needed.
    Partial { missing: usize },
}

/// The MQTT 3.1.1 packet reader without the socket: takes the first whole
/// packet off the front of `buffer`, or says how much of one is missing.
/// Pure, so the fuzz targets (tests/fuzz) feed it what a client could
/// send; [`decode_packet_v5`] is the same for MQTT 5.
pub fn decode_packet(
    buffer: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Decoded, PacketError> {
    match mqttbytes::v4::Packet::read(buffer, max_packet_bytes) {
        Ok(packet) => Ok(Decoded::Packet(packet)),
        Err(mqttbytes::Error::InsufficientBytes(missing)) => Ok(Decoded::Partial { missing }),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
            Err(PacketError::TooLarge(max_packet_bytes))
        }
        Err(err) => Err(PacketError::Malformed(err.to_string())),
    }
}

/// The MQTT 5 packet reader the broker uses on a level 5 connection, for
/// the fuzz targets: `Ok(None)` when the packet is not whole yet.
pub fn decode_packet_v5(
    buffer: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Option<Packet>, PacketError> {
    match wire::decode(Protocol::V5, buffer, max_packet_bytes) {
        Ok(Frame::Packet(packet)) => Ok(Some(packet)),
        Ok(Frame::Partial { .. }) => Ok(None),
        Err(WireError::Malformed(reason)) => Err(PacketError::Malformed(reason)),
        Err(WireError::TooLarge(limit)) => Err(PacketError::TooLarge(limit)),
    }
}

/// What the broker refuses in a raw CONNECT frame that the codec lets
/// through (see `connect`), by the name of its counter; exposed
/// for the fuzz targets (tests/fuzz).
pub fn check_connect_frame(frame: &[u8]) -> Result<(), &'static str> {
    connect::check_frame(frame).map_err(Violation::name)
}

/// Reads one whole packet, reading from the socket as needed.
async fn read_packet<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    protocol: Protocol,
    max_packet_bytes: usize,
    budget: Option<&Budget>,
) -> Result<Packet, ConnectionError> {
    let mut held = Held::default();
    loop {
        match wire::decode(protocol, buffer, max_packet_bytes)? {
            Frame::Packet(packet) => {
                held.release();
                return Ok(packet);
            }
            Frame::Partial { missing } => {
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

/// `future`, unless `deadline` passes first (a keep-alive expiry).
async fn until<F: std::future::Future<Output = Result<Packet, ConnectionError>>>(
    deadline: Option<tokio::time::Instant>,
    future: F,
) -> Result<Packet, ConnectionError> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future)
            .await
            .unwrap_or(Err(ConnectionError::KeepAlive)),
        None => future.await,
    }
}

fn packet_kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Auth(_) => "AUTH",
        Packet::Connect(..) => "CONNECT",
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
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
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
