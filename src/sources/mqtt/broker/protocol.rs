//! One connection's MQTT protocol state as a pure state machine, apart
//! from the socket (in the manner of rumqttc's `MqttState`): the
//! connection task reads a packet, hands it to
//! [`ConnectionState::on_packet`] with the time, and carries out the
//! [`Action`]s it gets back (hand a publish to ingest and to subscribers,
//! send a packet behind the acks before it, add subscriptions, complete a
//! delivery, close with a reason and maybe a will). Nothing here reads a
//! clock, a socket or a lock, so every protocol decision is unit-tested
//! with exact expected actions.
//!
//! What it decides: topic checks and MQTT 5 topic aliases of PUBLISH, the
//! ack each QoS calls for, inbound QoS 2 (packet ids awaiting PUBREL: a
//! PUBLISH resent with one of them is acknowledged again and not handed
//! on a second time, MQTT 3.1.1 §4.3.3 / 5 §4.3.3; more of them than the
//! receive maximum the CONNACK announced closes an MQTT 5 connection with
//! 0x93), SUBSCRIBE verdicts (shared subscriptions, invalid filters,
//! `subscribe_acl`; the subscription quotas are the shared router's),
//! keep-alive expiry (one and a half periods without a packet), the
//! session expiry a DISCONNECT may change, and on every close the reason
//! an MQTT 5 client is told and whether its will goes (and after which
//! delay).
//!
//! What it leaves to the connection task: the subscriptions shared by all
//! connections, the QoS 1/2 deliveries of the session (`session`, itself
//! pure), the store, the durable acks' order.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, LastWill, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, Publish, PublishProperties, RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::{valid_filter, valid_topic, QoS};

use super::connect::{self, Violation};
use super::v5::{ClientLimits, Refusal, SessionExpiry, TopicAliases};
use super::wire::{self, Protocol};
use super::ConnectionError;

/// What the broker's configuration tells every connection's state.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The highest QoS a subscription is granted.
    pub max_delivery_qos: QoS,
    /// `session_expiry`: the longest session a DISCONNECT may ask for
    /// (zero: no cap).
    pub max_session_expiry: Duration,
    /// Topic aliases an MQTT 5 client may set.
    pub max_topic_aliases: u16,
    /// The receive maximum announced in CONNACK.
    pub receive_maximum: u16,
}

/// One connection's protocol state, from its accepted CONNECT on.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    pub protocol: Protocol,
    pub client_id: String,
    /// The session expiry granted (a DISCONNECT may change it).
    pub expiry: SessionExpiry,
    /// What the client said about itself (MQTT 5).
    pub limits: ClientLimits,
    /// The filter patterns `subscribe_acl` lets its user subscribe to;
    /// `None`: anything.
    acl: Option<Vec<String>>,
    will: Option<LastWill>,
    /// One and a half keep-alive periods (none for keep-alive 0).
    idle: Option<Duration>,
    last_packet: Instant,
    aliases: TopicAliases,
    /// Inbound QoS 2 packet ids PUBRECed (or about to be) and not yet
    /// released by the client's PUBREL.
    awaiting_release: BTreeSet<u16>,
    settings: Settings,
    closed: bool,
}

/// What the connection task is to do, in this order.
// A few of these live per packet, each moved once: boxing the larger
// variants would add an allocation per packet for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Route the publish to subscribers and hand it to ingest; `ack`
    /// leaves once its records are durable (`None`: QoS 0, only counted).
    Ingest {
        publish: Publish,
        ack: Option<Packet>,
    },
    /// Send this packet, in order behind the acks before it.
    Send(Packet),
    /// Add the granted subscriptions (within the connection's quotas),
    /// answer with a SUBACK of one code per filter, then send the
    /// retained messages the grants call for.
    Subscribe { pkid: u16, filters: Vec<Requested> },
    /// Remove these filters of the connection and answer with an UNSUBACK.
    Unsubscribe { pkid: u16, filters: Vec<String> },
    /// The client acknowledged a QoS 1 delivery (PUBACK) or finished a
    /// QoS 2 one (PUBCOMP).
    Delivered(u16),
    /// The client received a QoS 2 delivery (PUBREC): release it.
    Release(u16),
    /// A DISCONNECT set a session expiry shorter than the server's.
    ShorterExpiry(Duration),
    /// Close the connection.
    Close(Close),
}

/// One filter of a SUBSCRIBE and what the protocol says of it.
#[derive(Debug, PartialEq)]
pub(crate) struct Requested {
    pub filter: String,
    pub verdict: Result<Grant, SubscribeReasonCode>,
}

/// A subscription the protocol allows (the quotas may still refuse it).
#[derive(Debug, PartialEq)]
pub(crate) struct Grant {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retained: RetainForwardRule,
}

/// Why a connection ends.
#[derive(Debug, PartialEq)]
pub(crate) enum Cause {
    /// The client sent DISCONNECT; `with_will` for MQTT 5's reason 0x04.
    Disconnect { with_will: bool },
    /// The broker is stopping.
    ShuttingDown,
    /// A new connection with the same client id took over.
    TakenOver,
    /// A protocol error, a violation, keep-alive expiry or the network.
    Error(ConnectionError),
}

/// How a connection ends.
#[derive(Debug, PartialEq)]
pub(crate) struct Close {
    pub cause: Cause,
    /// The server DISCONNECT's reason (sent to MQTT 5 clients only).
    pub reason: Option<DisconnectReasonCode>,
    /// The will to publish, if the close calls for it.
    pub will: Option<Will>,
}

/// A last will as it is to be published.
#[derive(Debug, PartialEq)]
pub(crate) struct Will {
    pub publish: Publish,
    /// MQTT 5 will delay, capped by the session expiry: the will waits
    /// this long, unless the client comes back.
    pub delay: Duration,
}

impl PartialEq for ConnectionError {
    /// Same kind, same words (`std::io::Error` has no equality).
    fn eq(&self, other: &ConnectionError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl ConnectionState {
    /// The state of a connection whose CONNECT was accepted at `now`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        protocol: Protocol,
        client_id: String,
        keep_alive: u16,
        expiry: SessionExpiry,
        will: Option<LastWill>,
        limits: ClientLimits,
        acl: Option<Vec<String>>,
        settings: Settings,
        now: Instant,
    ) -> ConnectionState {
        ConnectionState {
            protocol,
            client_id,
            expiry,
            limits,
            acl,
            will,
            // MQTT: the server disconnects after one and a half keep-alive
            // periods without a packet.
            idle: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1_500)),
            last_packet: now,
            aliases: TopicAliases::new(match protocol {
                Protocol::V5 => settings.max_topic_aliases,
                Protocol::V311 => 0,
            }),
            awaiting_release: BTreeSet::new(),
            settings,
            closed: false,
        }
    }

    /// When the connection is closed for silence, unless a packet comes.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.idle.map(|idle| self.last_packet + idle)
    }

    /// Whether `subscribe_acl` lets this connection's user subscribe to
    /// `filter`.
    pub(crate) fn may_subscribe(&self, filter: &str) -> bool {
        match &self.acl {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|pattern| connect::filter_covered(filter, pattern)),
        }
    }

    /// The time passed: past the keep-alive deadline the connection closes.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match self.deadline() {
            Some(deadline) if !self.closed && now >= deadline => {
                vec![self.close_action(Cause::Error(ConnectionError::KeepAlive))]
            }
            _ => Vec::new(),
        }
    }

    /// The connection ends for `cause`: the reason a v5 client is told and
    /// the will, if it goes.
    pub(crate) fn close(&mut self, cause: Cause) -> Close {
        self.closed = true;
        let (reason, with_will) = match &cause {
            Cause::Disconnect { with_will } => (None, *with_will),
            Cause::ShuttingDown => (Some(DisconnectReasonCode::ServerShuttingDown), true),
            Cause::TakenOver => (Some(DisconnectReasonCode::SessionTakenOver), true),
            Cause::Error(err) => (err.disconnect_reason(), true),
        };
        let will = self.will.take().filter(|_| with_will);
        Close {
            cause,
            reason,
            will: will.and_then(|will| will_of(will, self.expiry.granted)),
        }
    }

    fn close_action(&mut self, cause: Cause) -> Action {
        Action::Close(self.close(cause))
    }

    /// One packet from the client, read at `now`.
    pub(crate) fn on_packet(&mut self, packet: Packet, now: Instant) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        self.last_packet = now;
        match packet {
            Packet::Publish(publish) => match self.on_publish(publish) {
                Ok(action) => vec![action],
                Err(err) => vec![self.close_action(Cause::Error(err))],
            },
            Packet::PubRel(rel) => {
                // An unknown id is answered all the same: the session's
                // inbound QoS 2 state does not outlive the connection, and
                // a client resuming it resends PUBREL for what it had
                // PUBRECed.
                self.awaiting_release.remove(&rel.pkid);
                vec![Action::Send(Packet::PubComp(PubComp {
                    pkid: rel.pkid,
                    reason: PubCompReason::Success,
                    properties: None,
                }))]
            }
            Packet::Subscribe(subscribe) => {
                if subscribe.filters.iter().any(|f| connect::has_nul(&f.path)) {
                    return vec![self.close_action(Cause::Error(ConnectionError::Violation(
                        Violation::NulCharacter,
                    )))];
                }
                let filters = subscribe
                    .filters
                    .into_iter()
                    .map(|filter| {
                        let verdict = if filter.path.starts_with("$share/") {
                            Err(SubscribeReasonCode::SharedSubscriptionsNotSupported)
                        } else if !valid_filter(&filter.path) {
                            Err(SubscribeReasonCode::TopicFilterInvalid)
                        } else if !self.may_subscribe(&filter.path) {
                            Err(SubscribeReasonCode::NotAuthorized)
                        } else {
                            Ok(Grant {
                                qos: wire::downgrade(filter.qos, self.settings.max_delivery_qos),
                                no_local: filter.nolocal,
                                retain_as_published: filter.preserve_retain,
                                retained: filter.retain_forward_rule,
                            })
                        };
                        Requested {
                            filter: filter.path,
                            verdict,
                        }
                    })
                    .collect();
                vec![Action::Subscribe {
                    pkid: subscribe.pkid,
                    filters,
                }]
            }
            Packet::Unsubscribe(unsubscribe) => {
                if unsubscribe.filters.iter().any(|t| connect::has_nul(t)) {
                    return vec![self.close_action(Cause::Error(ConnectionError::Violation(
                        Violation::NulCharacter,
                    )))];
                }
                vec![Action::Unsubscribe {
                    pkid: unsubscribe.pkid,
                    filters: unsubscribe.filters,
                }]
            }
            Packet::PingReq(_) => vec![Action::Send(Packet::PingResp(PingResp))],
            Packet::Disconnect(disconnect) => {
                let mut actions = Vec::new();
                if let Some(asked) = disconnect
                    .properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                {
                    // §3.14.2.2.2: from zero to non-zero is an error.
                    if !self.expiry.persistent() && asked > 0 {
                        let err = ConnectionError::Protocol(
                            "DISCONNECT sets a session expiry the CONNECT did not have".to_string(),
                        );
                        return vec![self.close_action(Cause::Error(err))];
                    }
                    let asked = Duration::from_secs(u64::from(asked));
                    let max = self.settings.max_session_expiry;
                    self.expiry.granted = if max.is_zero() { asked } else { asked.min(max) };
                    if self.expiry.granted < max {
                        actions.push(Action::ShorterExpiry(self.expiry.granted));
                    }
                }
                let with_will =
                    disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                actions.push(self.close_action(Cause::Disconnect { with_will }));
                actions
            }
            Packet::PubAck(ack) => vec![Action::Delivered(ack.pkid)],
            Packet::PubComp(comp) => vec![Action::Delivered(comp.pkid)],
            Packet::PubRec(rec) => vec![Action::Release(rec.pkid)],
            other => {
                let err = ConnectionError::Protocol(format!(
                    "unexpected {} from a client",
                    super::packet_kind(&other)
                ));
                vec![self.close_action(Cause::Error(err))]
            }
        }
    }

    /// The checks of a PUBLISH, and what it comes to.
    fn on_publish(&mut self, mut publish: Publish) -> Result<Action, ConnectionError> {
        if self.protocol == Protocol::V5 {
            self.aliases
                .resolve(&mut publish)
                .map_err(ConnectionError::Refused)?;
        }
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return Err(ConnectionError::Malformed(
                "topic name is not UTF-8".to_string(),
            ));
        };
        if connect::has_nul(topic) {
            return Err(ConnectionError::Violation(Violation::NulCharacter));
        }
        if !valid_topic(topic) || topic.is_empty() {
            let reason = format!("invalid topic name `{topic}` in PUBLISH");
            return Err(match self.protocol {
                Protocol::V311 => ConnectionError::Protocol(reason),
                Protocol::V5 => ConnectionError::Refused(Refusal::new(
                    DisconnectReasonCode::TopicNameInvalid,
                    reason,
                )),
            });
        }
        let pkid = publish.pkid;
        let ack = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck {
                pkid,
                reason: PubAckReason::Success,
                properties: None,
            })),
            QoS::ExactlyOnce => {
                let pubrec = Packet::PubRec(PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                    properties: None,
                });
                if self.awaiting_release.contains(&pkid) {
                    // Resent before its PUBREL: handed on once already; its
                    // PUBREC again, behind the first one.
                    return Ok(Action::Send(pubrec));
                }
                if self.protocol == Protocol::V5
                    && self.awaiting_release.len() >= usize::from(self.settings.receive_maximum)
                {
                    return Err(ConnectionError::Refused(Refusal::new(
                        DisconnectReasonCode::ReceiveMaximumExceeded,
                        format!(
                            "more than {} QoS 2 publishes awaiting PUBREL",
                            self.settings.receive_maximum
                        ),
                    )));
                }
                self.awaiting_release.insert(pkid);
                Some(pubrec)
            }
        };
        Ok(Action::Ingest { publish, ack })
    }
}

/// The publish a will comes to, and its delay; `None` for a will topic
/// no subscriber could match.
fn will_of(will: LastWill, session_expiry: Duration) -> Option<Will> {
    let topic = std::str::from_utf8(&will.topic).ok()?;
    if !valid_topic(topic) || topic.is_empty() {
        return None;
    }
    let delay = will
        .properties
        .as_ref()
        .and_then(|p| p.delay_interval)
        .map(|d| Duration::from_secs(u64::from(d)).min(session_expiry))
        .unwrap_or_default();
    let properties = will.properties.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Some(Will {
        publish: Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            pkid: 0,
            payload: will.message,
            properties,
        },
        delay,
    })
}

#[cfg(test)]
mod tests;
