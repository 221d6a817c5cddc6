//! What MQTT 5 adds to a connection of the embedded broker, as pure
//! functions and small state: what the CONNACK tells the client, the
//! session expiry granted, inbound topic aliases, the client's own limits
//! (receive maximum, maximum packet size) and the reason codes the broker
//! closes a connection with.
//!
//! Why apart from `broker`: these are protocol rules, testable without a
//! socket; `broker` only moves packets between them and the store.
//!
//! Choices (MQTT 5 leaves them to the server):
//! - the session expiry granted is the client's, capped by
//!   `mqtt.embedded.session_expiry`; a 3.1.1 client with
//!   `clean_session = false` gets that cap (3.1.1 has no interval);
//! - `receive_maximum` = `max_inflight`: beyond that many unacknowledged
//!   QoS 1/2 publishes the connection is not read (TCP backpressure), as
//!   for 3.1.1, rather than closed with 0x93 — MQTT.js 5 does not honour
//!   a server's receive maximum, and closing would cut such devices off
//!   at every burst;
//! - `topic_alias_maximum` = `mqtt.embedded.max_topic_aliases` (inbound
//!   only: the broker does not alias what it sends);
//! - `maximum_packet_size` = `max_packet_bytes`; a delivery larger than
//!   the client's own maximum is not sent to it (§3.1.2.11.4), counted as
//!   dropped;
//! - no shared subscriptions, no subscription identifiers, no AUTH.

use std::collections::HashMap;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnAckProperties, Connect, Disconnect, DisconnectProperties, DisconnectReasonCode, Publish,
};

use super::wire::Protocol;
use crate::config::EmbeddedBrokerConfig;

/// A 3.1.1 client that asked for a persistent session, or an MQTT 5
/// client's session expiry interval, capped by the server's maximum.
/// Zero: the session ends with the connection.
pub(crate) fn session_expiry(
    protocol: Protocol,
    connect: &Connect,
    max: Duration,
) -> SessionExpiry {
    match protocol {
        Protocol::V311 if connect.clean_start => SessionExpiry::none(),
        // 3.1.1 leaves expiry to the server: `session_expiry`, or never
        // (`0s`).
        Protocol::V311 => SessionExpiry {
            granted: if max.is_zero() { Duration::MAX } else { max },
            asked: None,
        },
        Protocol::V5 => {
            let asked = connect
                .properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0);
            let asked_duration = if asked == u32::MAX {
                Duration::MAX
            } else {
                Duration::from_secs(u64::from(asked))
            };
            let granted = if max.is_zero() {
                // `0s` in the config: sessions never expire.
                asked_duration
            } else {
                asked_duration.min(max)
            };
            SessionExpiry {
                granted,
                asked: Some(asked),
            }
        }
    }
}

/// The session expiry of a connection: what the client asked (MQTT 5) and
/// what it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SessionExpiry {
    pub granted: Duration,
    pub asked: Option<u32>,
}

impl SessionExpiry {
    fn none() -> SessionExpiry {
        SessionExpiry {
            granted: Duration::ZERO,
            asked: None,
        }
    }

    /// Whether the session outlives its connection.
    pub(crate) fn persistent(&self) -> bool {
        !self.granted.is_zero()
    }

    /// The interval to announce in CONNACK when it differs from what the
    /// client asked (§3.2.2.3.2).
    fn announce(&self) -> Option<u32> {
        let granted = u32::try_from(self.granted.as_secs()).unwrap_or(u32::MAX);
        match self.asked {
            Some(asked) if asked != granted => Some(granted),
            _ => None,
        }
    }
}

/// The properties of a successful CONNACK to an MQTT 5 client: the
/// server's limits, so the client never has to learn them by being cut.
pub(crate) fn connack_properties(
    config: &EmbeddedBrokerConfig,
    expiry: SessionExpiry,
    assigned_client_id: Option<&str>,
) -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: expiry.announce(),
        receive_max: Some(receive_maximum(config)),
        max_qos: None, // QoS 2 is supported
        retain_available: Some(1),
        max_packet_size: Some(u32::try_from(config.max_packet_bytes).unwrap_or(u32::MAX)),
        assigned_client_identifier: assigned_client_id.map(str::to_string),
        topic_alias_max: Some(config.max_topic_aliases),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// How many QoS 1/2 publishes a client may have unacknowledged.
pub(crate) fn receive_maximum(config: &EmbeddedBrokerConfig) -> u16 {
    u16::try_from(config.max_inflight.max(1)).unwrap_or(u16::MAX)
}

/// What an MQTT 5 client said about itself in CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientLimits {
    /// Unacknowledged QoS 1/2 deliveries it accepts at once.
    pub receive_maximum: u16,
    /// Largest packet it accepts.
    pub max_packet_bytes: usize,
}

impl ClientLimits {
    pub(crate) fn of(connect: &Connect) -> ClientLimits {
        let properties = connect.properties.as_ref();
        ClientLimits {
            receive_maximum: properties
                .and_then(|p| p.receive_maximum)
                .filter(|&r| r > 0)
                .unwrap_or(u16::MAX),
            max_packet_bytes: properties
                .and_then(|p| p.max_packet_size)
                .filter(|&m| m > 0)
                .map_or(usize::MAX, |m| m as usize),
        }
    }
}

/// A protocol problem with the reason code MQTT 5 closes it with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct Refusal {
    pub code: DisconnectReasonCode,
    pub reason: String,
}

impl Refusal {
    pub(crate) fn new(code: DisconnectReasonCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// A server DISCONNECT with its reason (sent to MQTT 5 clients only).
pub(crate) fn disconnect(code: DisconnectReasonCode, reason: &str) -> Disconnect {
    Disconnect {
        reason_code: code,
        properties: (!reason.is_empty()).then(|| DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(reason.to_string()),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }
}

/// The topic aliases a client set on its PUBLISHes (§3.3.2.3.4): alias →
/// topic, at most `max` of them, each topic bounded by the packet size.
#[derive(Debug, Default)]
pub(crate) struct TopicAliases {
    max: u16,
    topics: HashMap<u16, String>,
}

impl TopicAliases {
    pub(crate) fn new(max: u16) -> TopicAliases {
        TopicAliases {
            max,
            topics: HashMap::new(),
        }
    }

    /// The topic of `publish` once its alias is applied: a topic with an
    /// alias sets the alias, an empty topic with an alias uses it. The
    /// alias property is removed, since it means nothing past this
    /// connection.
    pub(crate) fn resolve(&mut self, publish: &mut Publish) -> Result<(), Refusal> {
        let alias = publish
            .properties
            .as_mut()
            .and_then(|p| p.topic_alias.take());
        let Some(alias) = alias else {
            return Ok(());
        };
        if alias == 0 || alias > self.max {
            return Err(Refusal::new(
                DisconnectReasonCode::TopicAliasInvalid,
                format!("topic alias {alias} outside 1..={}", self.max),
            ));
        }
        if publish.topic.is_empty() {
            match self.topics.get(&alias) {
                Some(topic) => {
                    publish.topic = bytes::Bytes::copy_from_slice(topic.as_bytes());
                    Ok(())
                }
                None => Err(Refusal::new(
                    DisconnectReasonCode::ProtocolError,
                    format!("topic alias {alias} used before it was set"),
                )),
            }
        } else {
            let topic = std::str::from_utf8(&publish.topic).map_err(|_| {
                Refusal::new(
                    DisconnectReasonCode::TopicNameInvalid,
                    "topic name is not UTF-8",
                )
            })?;
            self.topics.insert(alias, topic.to_string());
            Ok(())
        }
    }
}

/// What a publish's properties tell the pipeline: the content type (which
/// can select the payload format) and the user properties (which can name
/// fields and the event time), see `MqttIngest::submit`.
pub(crate) fn metadata(publish: &Publish) -> (Option<&str>, &[(String, String)]) {
    match &publish.properties {
        Some(p) => (p.content_type.as_deref(), p.user_properties.as_slice()),
        None => (None, &[]),
    }
}

/// The remaining message expiry of a message that waited `waited`
/// (§3.3.2.3.3): `None` when it has none, `Some(Err)` when it expired.
pub(crate) fn remaining_expiry(publish: &Publish, waited: Duration) -> Option<Result<u32, ()>> {
    let interval = publish.properties.as_ref()?.message_expiry_interval?;
    let waited = u32::try_from(waited.as_secs()).unwrap_or(u32::MAX);
    Some(if waited >= interval && interval > 0 {
        Err(())
    } else {
        Ok(interval - waited)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;

    fn connect(clean_start: bool, expiry: Option<u32>) -> Connect {
        Connect {
            keep_alive: 30,
            client_id: "c".into(),
            clean_start,
            properties: expiry.map(|e| ConnectProperties {
                session_expiry_interval: Some(e),
                receive_maximum: Some(5),
                max_packet_size: Some(1000),
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties: vec![],
                authentication_method: None,
                authentication_data: None,
            }),
        }
    }

    #[test]
    fn session_expiry_is_the_clients_capped_by_the_servers() {
        let hour = Duration::from_secs(3600);
        let v5 = |c: &Connect| session_expiry(Protocol::V5, c, hour);
        assert!(!v5(&connect(false, None)).persistent(), "5: 0 by default");
        let asked = v5(&connect(true, Some(60)));
        assert_eq!(asked.granted, Duration::from_secs(60));
        assert_eq!(asked.announce(), None, "granted as asked");
        let capped = v5(&connect(false, Some(u32::MAX)));
        assert_eq!(capped.granted, hour);
        assert_eq!(capped.announce(), Some(3600));
        let never = session_expiry(
            Protocol::V5,
            &connect(false, Some(u32::MAX)),
            Duration::ZERO,
        );
        assert_eq!(never.granted, Duration::MAX);
        let v4 = |clean| session_expiry(Protocol::V311, &connect(clean, None), hour);
        assert!(!v4(true).persistent());
        assert_eq!(v4(false).granted, hour);
        assert_eq!(v4(false).announce(), None, "3.1.1 has no property");
        let forever = session_expiry(Protocol::V311, &connect(false, None), Duration::ZERO);
        assert!(
            forever.persistent(),
            "`0s`: never expires, still persistent"
        );
    }

    #[test]
    fn connack_tells_the_servers_limits() {
        let config = EmbeddedBrokerConfig::default();
        let p = connack_properties(
            &config,
            session_expiry(
                Protocol::V5,
                &connect(false, Some(10)),
                config.session_expiry,
            ),
            Some("meshlet-anon-1"),
        );
        assert_eq!(p.receive_max, Some(config.max_inflight as u16));
        assert_eq!(p.max_packet_size, Some(config.max_packet_bytes as u32));
        assert_eq!(p.topic_alias_max, Some(config.max_topic_aliases));
        assert_eq!(
            p.assigned_client_identifier.as_deref(),
            Some("meshlet-anon-1")
        );
        assert_eq!(p.shared_subscription_available, Some(0));
    }

    #[test]
    fn client_limits_default_to_unlimited() {
        assert_eq!(
            ClientLimits::of(&connect(true, None)),
            ClientLimits {
                receive_maximum: u16::MAX,
                max_packet_bytes: usize::MAX
            }
        );
        assert_eq!(
            ClientLimits::of(&connect(true, Some(0))),
            ClientLimits {
                receive_maximum: 5,
                max_packet_bytes: 1000
            }
        );
    }

    fn aliased(topic: &str, alias: Option<u16>) -> Publish {
        Publish::new(
            topic,
            QoS::AtMostOnce,
            b"{}".to_vec(),
            Some(PublishProperties {
                topic_alias: alias,
                ..Default::default()
            }),
        )
    }

    #[test]
    fn topic_aliases_are_set_used_and_checked() {
        let mut aliases = TopicAliases::new(2);
        let mut set = aliased("plant/m1", Some(1));
        aliases.resolve(&mut set).unwrap();
        assert_eq!(set.properties.unwrap().topic_alias, None, "removed");
        let mut used = aliased("", Some(1));
        aliases.resolve(&mut used).unwrap();
        assert_eq!(&used.topic[..], b"plant/m1");
        let mut plain = aliased("x", None);
        aliases.resolve(&mut plain).unwrap();
        assert_eq!(&plain.topic[..], b"x");
        let unknown = aliases.resolve(&mut aliased("", Some(2))).unwrap_err();
        assert_eq!(unknown.code, DisconnectReasonCode::ProtocolError);
        for bad in [0, 3] {
            let err = aliases.resolve(&mut aliased("t", Some(bad))).unwrap_err();
            assert_eq!(err.code, DisconnectReasonCode::TopicAliasInvalid);
        }
        // Re-pointing an alias.
        aliases.resolve(&mut aliased("plant/m2", Some(1))).unwrap();
        let mut again = aliased("", Some(1));
        aliases.resolve(&mut again).unwrap();
        assert_eq!(&again.topic[..], b"plant/m2");
    }

    #[test]
    fn message_expiry_counts_down() {
        let mut publish = aliased("t", None);
        assert_eq!(remaining_expiry(&publish, Duration::from_secs(5)), None);
        publish.properties = Some(PublishProperties {
            message_expiry_interval: Some(10),
            ..Default::default()
        });
        assert_eq!(
            remaining_expiry(&publish, Duration::from_secs(4)),
            Some(Ok(6))
        );
        assert_eq!(
            remaining_expiry(&publish, Duration::from_secs(10)),
            Some(Err(()))
        );
    }
}
