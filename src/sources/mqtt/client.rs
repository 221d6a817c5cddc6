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
//! As a Sparkplug primary host (see `sources::sparkplug::state`), the client
//! registers an offline STATE as its MQTT will at every CONNECT, publishes
//! online after each CONNACK and offline before a clean DISCONNECT. It
//! also subscribes to its own STATE topic: an offline there while it runs
//! (the will of an earlier session, delivered late by the broker, or any
//! client's retained message) is answered with online again, so edges are
//! never left believing a running host is gone.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client_outbox::{Outbox, Queued, Watchdog, COMMANDS_QUEUED, SILENT_KEEP_ALIVES};
use super::dispatch::{MqttIngest, MqttMessage};
use crate::ingest::PendingMessage;
use crate::sources::sparkplug::state::{HostSession, PrimaryHost};
use crate::tls::mqtt::REQUEST_CHANNEL;

const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long stopping (or dropping a connection) may poll to let acks and
/// the last STATE leave.
const DRAIN: Duration = Duration::from_secs(2);
/// How long the acker may take to ack what was read before a round ends
/// (half the default shutdown grace); what it did not ack is redelivered.
const ACKER_DRAIN: Duration = Duration::from_secs(5);

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

/// Runs the client until `shutdown`: connects (and reconnects with
/// back-off), subscribes to every product topic, ingests, acks; as
/// Sparkplug primary host `host`, keeps its STATE.
///
/// The loop that polls the event loop never awaits a send into rumqttc's
/// request channel (see `client_outbox`), and a [`Watchdog`] drops a
/// connection on which the broker said nothing for
/// [`SILENT_KEEP_ALIVES`] keep-alives.
pub async fn run(
    mut options: MqttOptions,
    ingestor: MqttIngest,
    host: Option<PrimaryHost>,
    shutdown: CancellationToken,
) {
    let keep_alive = options.keep_alive();
    let mut state = renew_state(&mut options, host.as_ref());
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
    let subscriptions = |ingestor: &MqttIngest| {
        let mut filters = ingestor.filters();
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
    let mut outbox = Outbox::default();
    let mut watchdog = Watchdog::new(keep_alive);
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
        let mut acker = tokio::spawn(ack_loop(client.clone(), unacked_rx, write_failed.clone()));
        let mut connected = false;
        let ended = loop {
            // Whatever the last event asked to send, as far as it fits.
            outbox.flush(&client, state.as_ref());
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break RoundEnd::Shutdown,
                _ = write_failed.cancelled() => break RoundEnd::WriteFailed,
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
                        follow_subscriptions(&mut outbox, &filters, &next);
                    }
                    filters = next;
                    continue;
                }
                command = commands.recv() => {
                    // Sparkplug rebirth requests; a lagged receiver only
                    // lost requests that are repeated while needed.
                    if let Ok(command) = command {
                        if outbox.command(command) == Queued::Dropped {
                            metrics.upstream_commands_dropped.fetch_add(1, Ordering::Relaxed);
                            warn!(queued = COMMANDS_QUEUED, "the client's outbox is full; a command was dropped");
                        }
                    }
                    continue;
                }
                event = eventloop.poll() => event,
                _ = tokio::time::sleep_until(watchdog.deadline()), if connected => {
                    metrics.upstream_broker_stalls.fetch_add(1, Ordering::Relaxed);
                    metrics.upstream_broker_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(silent_for = ?keep_alive * SILENT_KEEP_ALIVES, "the external MQTT broker said nothing for {SILENT_KEEP_ALIVES} keep-alives; reconnecting");
                    // Drop the socket; the next poll connects anew, and the
                    // broker redelivers what was not acknowledged.
                    eventloop.clean();
                    connected = false;
                    outbox.disconnected();
                    state = renew_state(&mut eventloop.mqtt_options, host.as_ref());
                    continue;
                }
            };
            if matches!(event, Ok(Event::Incoming(_))) {
                watchdog.heard();
            }
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
                    outbox.subscribe(filters.clone());
                    connected = true;
                    if state.is_some() {
                        outbox.state_online();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if state.as_ref().is_some_and(|s| s.topic == publish.topic) =>
                {
                    // Our own STATE: not data. Acked in order like the rest.
                    if let Some(session) = &state {
                        if says_offline(&publish.payload) {
                            info!(topic = %session.topic, "the host STATE says offline while this node runs; publishing online again");
                            outbox.state_online();
                        }
                    }
                    if unacked.send((publish, PendingMessage::empty())).is_err() {
                        break RoundEnd::WriteFailed;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let pending = ingestor
                        .submit(MqttMessage {
                            topic: &publish.topic,
                            payload: &publish.payload,
                            retained: publish.retain,
                            redelivery: publish.dup,
                            client: None,
                            content_type: None,
                            user_properties: &[],
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
                    outbox.disconnected();
                    state = renew_state(&mut eventloop.mqtt_options, host.as_ref());
                    tokio::select! {
                        _ = shutdown.cancelled() => break RoundEnd::Shutdown,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        };
        // Let the acker finish what was read: those writes are queued. Its
        // acks need room in the request channel, so keep polling meanwhile.
        drop(unacked);
        if drive(&mut eventloop, ACKER_DRAIN, &mut acker)
            .await
            .is_none()
        {
            // Not done in time: what it did not ack is redelivered.
            acker.abort();
        }
        match ended {
            RoundEnd::Shutdown => {
                // A clean DISCONNECT discards the will: say offline first.
                let offline = state.as_ref().filter(|_| connected);
                let _ = drive(&mut eventloop, DRAIN, async {
                    if let Some(session) = offline {
                        publish_state(&client, session, false).await;
                    }
                    let _ = client.disconnect().await;
                })
                .await;
                // Poll briefly so queued PUBACKs leave before disconnecting.
                drain_until_disconnected(&mut eventloop).await;
                debug!("external MQTT client stopped");
                return;
            }
            RoundEnd::WriteFailed => {
                // Drop the connection so the broker redelivers what was not
                // acknowledged; the next poll reconnects.
                let _ = drive(&mut eventloop, DRAIN, async {
                    let _ = client.disconnect().await;
                })
                .await;
                drain_until_disconnected(&mut eventloop).await;
                outbox.disconnected();
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

/// Publishes the session's STATE (retained, QoS 1); only while the event
/// loop is polled alongside (see [`drive`]).
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

/// Runs `work` (which may wait for room in the request channel) while
/// polling the event loop, which makes that room; gives up after `limit`
/// or when the connection fails (`None`).
async fn drive<F: std::future::Future>(
    eventloop: &mut EventLoop,
    limit: Duration,
    work: F,
) -> Option<F::Output> {
    tokio::pin!(work);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            _ = &mut deadline => return None,
            event = eventloop.poll() => {
                // Publishes read now are not acked: the broker keeps them.
                if event.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Queues a subscription for the filters of `next` that `now` lacks (or
/// asks a different QoS of) and an unsubscription for those `next`
/// dropped.
fn follow_subscriptions(outbox: &mut Outbox, now: &[(String, u8)], next: &[(String, u8)]) {
    let added: Vec<(String, u8)> = next.iter().filter(|f| !now.contains(f)).cloned().collect();
    if !added.is_empty() {
        info!(
            topics = added.len(),
            "definitions reloaded: subscribing to new topics"
        );
        outbox.subscribe(added);
    }
    for (filter, _) in now
        .iter()
        .filter(|(f, _)| !next.iter().any(|(n, _)| n == f))
    {
        outbox.unsubscribe(filter.clone());
    }
}

enum RoundEnd {
    Shutdown,
    WriteFailed,
}

/// Polls until the connection is gone (or briefly, if it never goes).
async fn drain_until_disconnected(eventloop: &mut EventLoop) {
    let _ = tokio::time::timeout(DRAIN, async {
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
