use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectProperties, Filter, LastWillProperties,
    PingReq, PubRel, PubRelReason, SubAck, Subscribe, Unsubscribe,
};

use super::super::session::Deliveries;
use super::*;

const KEEP_ALIVE: u16 = 10;

fn settings() -> Settings {
    Settings {
        max_delivery_qos: QoS::ExactlyOnce,
        max_session_expiry: Duration::from_secs(7200),
        max_topic_aliases: 2,
        receive_maximum: 2,
    }
}

fn expiry(secs: u64) -> SessionExpiry {
    SessionExpiry {
        granted: Duration::from_secs(secs),
        asked: Some(u32::try_from(secs).unwrap_or(u32::MAX)),
    }
}

fn unlimited() -> ClientLimits {
    ClientLimits {
        receive_maximum: u16::MAX,
        max_packet_bytes: usize::MAX,
    }
}

fn will(delay: Option<u32>) -> LastWill {
    LastWill::new(
        "dev/1/status",
        "gone",
        QoS::AtLeastOnce,
        true,
        delay.map(|d| LastWillProperties {
            delay_interval: Some(d),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

/// The will's publish as the state hands it on.
fn will_publish(with_properties: bool) -> Publish {
    let mut publish = Publish::new("dev/1/status", QoS::AtLeastOnce, "gone", None);
    publish.retain = true;
    if with_properties {
        publish.properties = Some(PublishProperties::default());
    }
    publish
}

fn state(protocol: Protocol, now: Instant) -> ConnectionState {
    ConnectionState::new(
        protocol,
        "dev-1".to_string(),
        KEEP_ALIVE,
        expiry(3600),
        Some(will(None)),
        unlimited(),
        Some(vec!["dev/#".to_string()]),
        settings(),
        now,
    )
}

fn publish(topic: &str, qos: QoS, pkid: u16) -> Publish {
    let mut publish = Publish::new(topic, qos, "21.5", None);
    publish.pkid = pkid;
    publish
}

fn aliased(topic: &str, alias: u16) -> Publish {
    let mut publish = publish(topic, QoS::AtMostOnce, 0);
    publish.properties = Some(PublishProperties {
        topic_alias: Some(alias),
        ..PublishProperties::default()
    });
    publish
}

fn puback(pkid: u16) -> Packet {
    Packet::PubAck(PubAck {
        pkid,
        reason: PubAckReason::Success,
        properties: None,
    })
}

fn pubrec(pkid: u16) -> Packet {
    Packet::PubRec(PubRec {
        pkid,
        reason: PubRecReason::Success,
        properties: None,
    })
}

fn pubrel(pkid: u16) -> Packet {
    Packet::PubRel(PubRel {
        pkid,
        reason: PubRelReason::Success,
        properties: None,
    })
}

fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(PubComp {
        pkid,
        reason: PubCompReason::Success,
        properties: None,
    })
}

fn closed(cause: Cause, reason: Option<DisconnectReasonCode>, will: Option<Will>) -> Vec<Action> {
    vec![Action::Close(Close {
        cause,
        reason,
        will,
    })]
}

fn refused(code: DisconnectReasonCode, reason: &str) -> Cause {
    Cause::Error(ConnectionError::Refused(Refusal::new(code, reason)))
}

fn immediate_will() -> Option<Will> {
    Some(Will {
        publish: will_publish(false),
        delay: Duration::ZERO,
    })
}

#[test]
fn qos0_and_qos1_publishes_are_handed_on_with_their_ack() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V311, t0);
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/1/t", QoS::AtMostOnce, 0)), t0),
        vec![Action::Ingest {
            publish: publish("dev/1/t", QoS::AtMostOnce, 0),
            ack: None
        }]
    );
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/1/t", QoS::AtLeastOnce, 7)), t0),
        vec![Action::Ingest {
            publish: publish("dev/1/t", QoS::AtLeastOnce, 7),
            ack: Some(puback(7))
        }]
    );
    // A QoS 1 resend is handed on again: the store's dedupe knows it.
    let mut again = publish("dev/1/t", QoS::AtLeastOnce, 7);
    again.dup = true;
    assert_eq!(
        s.on_packet(Packet::Publish(again.clone()), t0),
        vec![Action::Ingest {
            publish: again,
            ack: Some(puback(7))
        }]
    );
}

#[test]
fn qos2_is_handed_on_once_until_released() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V311, t0);
    let first = publish("dev/1/t", QoS::ExactlyOnce, 3);
    assert_eq!(
        s.on_packet(Packet::Publish(first.clone()), t0),
        vec![Action::Ingest {
            publish: first.clone(),
            ack: Some(pubrec(3))
        }]
    );
    // The client did not see the PUBREC and resends: PUBREC again, not
    // handed on a second time.
    let mut resent = first.clone();
    resent.dup = true;
    assert_eq!(
        s.on_packet(Packet::Publish(resent), t0),
        vec![Action::Send(pubrec(3))]
    );
    assert_eq!(s.on_packet(pubrel(3), t0), vec![Action::Send(pubcomp(3))]);
    // A PUBREL resent after the PUBCOMP was lost: PUBCOMP again.
    assert_eq!(s.on_packet(pubrel(3), t0), vec![Action::Send(pubcomp(3))]);
    // Released: the id is free for a new message.
    assert_eq!(
        s.on_packet(Packet::Publish(first.clone()), t0),
        vec![Action::Ingest {
            publish: first,
            ack: Some(pubrec(3))
        }]
    );
}

#[test]
fn delivery_acks_in_any_order_complete_and_release() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V5, t0);
    // Three deliveries in a window of two: ids 1 and 2 go out.
    let mut deliveries = Deliveries::new(1 << 20, 2);
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce] {
        assert!(deliveries.push(publish("dev/2/cmd", qos, 0)));
    }
    let sent: Vec<u16> = deliveries
        .next()
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.pkid),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![1, 2]);
    // The QoS 2 one is PUBRECed before the QoS 1 one is PUBACKed.
    let actions = s.on_packet(pubrec(2), t0);
    assert_eq!(actions, vec![Action::Release(2)]);
    assert_eq!(deliveries.received(2), Some(pubrel(2)));
    assert_eq!(s.on_packet(puback(1), t0), vec![Action::Delivered(1)]);
    assert!(deliveries.complete(1));
    // Room for the third.
    assert!(matches!(deliveries.next().as_slice(), [Packet::Publish(p)] if p.pkid == 3));
    assert_eq!(s.on_packet(pubcomp(2), t0), vec![Action::Delivered(2)]);
    assert!(deliveries.complete(2));
    // An ack of an id not in flight completes nothing.
    assert_eq!(s.on_packet(puback(9), t0), vec![Action::Delivered(9)]);
    assert!(!deliveries.complete(9));
}

#[test]
fn keep_alive_expires_after_one_and_a_half_periods_of_silence() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V5, t0);
    assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(15)));
    assert_eq!(s.on_tick(t0 + Duration::from_secs(14)), vec![]);
    let t1 = t0 + Duration::from_secs(14);
    assert_eq!(
        s.on_packet(Packet::PingReq(PingReq), t1),
        vec![Action::Send(Packet::PingResp(PingResp))]
    );
    assert_eq!(s.deadline(), Some(t1 + Duration::from_secs(15)));
    assert_eq!(s.on_tick(t0 + Duration::from_secs(20)), vec![]);
    assert_eq!(
        s.on_tick(t1 + Duration::from_secs(15)),
        closed(
            Cause::Error(ConnectionError::KeepAlive),
            Some(DisconnectReasonCode::KeepAliveTimeout),
            immediate_will()
        )
    );
    // Closed: nothing more happens.
    assert_eq!(s.on_tick(t1 + Duration::from_secs(60)), vec![]);
    assert_eq!(s.on_packet(Packet::PingReq(PingReq), t1), vec![]);
    // Keep-alive 0: no deadline.
    let s = ConnectionState::new(
        Protocol::V311,
        "dev-2".to_string(),
        0,
        expiry(0),
        None,
        unlimited(),
        None,
        settings(),
        t0,
    );
    assert_eq!(s.deadline(), None);
}

#[test]
fn a_take_over_or_a_shutdown_says_why_and_sends_the_will() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.close(Cause::TakenOver),
        Close {
            cause: Cause::TakenOver,
            reason: Some(DisconnectReasonCode::SessionTakenOver),
            will: immediate_will(),
        }
    );
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.close(Cause::ShuttingDown),
        Close {
            cause: Cause::ShuttingDown,
            reason: Some(DisconnectReasonCode::ServerShuttingDown),
            will: immediate_will(),
        }
    );
}

#[test]
fn the_will_goes_on_an_abnormal_close_and_on_disconnect_0x04_only() {
    let t0 = Instant::now();
    // The network: no DISCONNECT to send, the will goes.
    let mut s = state(Protocol::V311, t0);
    let gone = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the client");
    assert_eq!(
        s.close(Cause::Error(ConnectionError::Io(gone))),
        Close {
            cause: Cause::Error(ConnectionError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed by the client"
            ))),
            reason: None,
            will: immediate_will(),
        }
    );
    // A normal DISCONNECT: no will.
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.on_packet(
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
            t0
        ),
        closed(Cause::Disconnect { with_will: false }, None, None)
    );
    // DISCONNECT 0x04: the will all the same.
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.on_packet(
            Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::DisconnectWithWillMessage
            )),
            t0
        ),
        closed(
            Cause::Disconnect { with_will: true },
            None,
            immediate_will()
        )
    );
    // A will delay longer than the session expiry waits the expiry.
    let mut s = ConnectionState::new(
        Protocol::V5,
        "dev-1".to_string(),
        KEEP_ALIVE,
        expiry(10),
        Some(will(Some(30))),
        unlimited(),
        None,
        settings(),
        t0,
    );
    assert_eq!(
        s.close(Cause::Error(ConnectionError::Protocol("x".to_string()))),
        Close {
            cause: Cause::Error(ConnectionError::Protocol("x".to_string())),
            reason: Some(DisconnectReasonCode::ProtocolError),
            will: Some(Will {
                publish: will_publish(true),
                delay: Duration::from_secs(10),
            }),
        }
    );
}

#[test]
fn a_disconnect_may_shorten_a_persistent_session_but_not_start_one() {
    let t0 = Instant::now();
    let with_expiry = |secs| {
        Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: Some(DisconnectProperties {
                session_expiry_interval: Some(secs),
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            }),
        })
    };
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.on_packet(with_expiry(60), t0),
        vec![
            Action::ShorterExpiry(Duration::from_secs(60)),
            Action::Close(Close {
                cause: Cause::Disconnect { with_will: false },
                reason: None,
                will: None,
            })
        ]
    );
    assert_eq!(s.expiry.granted, Duration::from_secs(60));
    let mut s = ConnectionState::new(
        Protocol::V5,
        "dev-1".to_string(),
        KEEP_ALIVE,
        expiry(0),
        Some(will(None)),
        unlimited(),
        None,
        settings(),
        t0,
    );
    assert_eq!(
        s.on_packet(with_expiry(60), t0),
        closed(
            Cause::Error(ConnectionError::Protocol(
                "DISCONNECT sets a session expiry the CONNECT did not have".to_string()
            )),
            Some(DisconnectReasonCode::ProtocolError),
            immediate_will()
        )
    );
}

#[test]
fn mqtt5_qos2_beyond_the_receive_maximum_closes_with_0x93() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V5, t0);
    for pkid in [1, 2] {
        assert_eq!(
            s.on_packet(
                Packet::Publish(publish("dev/1/t", QoS::ExactlyOnce, pkid)),
                t0
            ),
            vec![Action::Ingest {
                publish: publish("dev/1/t", QoS::ExactlyOnce, pkid),
                ack: Some(pubrec(pkid))
            }]
        );
    }
    // A resend of one awaiting release is not a new one.
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/1/t", QoS::ExactlyOnce, 2)), t0),
        vec![Action::Send(pubrec(2))]
    );
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/1/t", QoS::ExactlyOnce, 3)), t0),
        closed(
            refused(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "more than 2 QoS 2 publishes awaiting PUBREL"
            ),
            Some(DisconnectReasonCode::ReceiveMaximumExceeded),
            immediate_will()
        )
    );
    // Released in time, a third one is fine.
    let mut s = state(Protocol::V5, t0);
    for pkid in [1, 2] {
        s.on_packet(
            Packet::Publish(publish("dev/1/t", QoS::ExactlyOnce, pkid)),
            t0,
        );
    }
    assert_eq!(s.on_packet(pubrel(1), t0), vec![Action::Send(pubcomp(1))]);
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/1/t", QoS::ExactlyOnce, 3)), t0),
        vec![Action::Ingest {
            publish: publish("dev/1/t", QoS::ExactlyOnce, 3),
            ack: Some(pubrec(3))
        }]
    );
}

#[test]
fn mqtt5_topic_aliases_are_set_used_and_refused() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V5, t0);
    let resolved = |topic: &str| {
        let mut p = publish(topic, QoS::AtMostOnce, 0);
        p.properties = Some(PublishProperties::default());
        p
    };
    assert_eq!(
        s.on_packet(Packet::Publish(aliased("dev/1/t", 1)), t0),
        vec![Action::Ingest {
            publish: resolved("dev/1/t"),
            ack: None
        }]
    );
    assert_eq!(
        s.on_packet(Packet::Publish(aliased("", 1)), t0),
        vec![Action::Ingest {
            publish: resolved("dev/1/t"),
            ack: None
        }]
    );
    assert_eq!(
        s.on_packet(Packet::Publish(aliased("", 2)), t0),
        closed(
            refused(
                DisconnectReasonCode::ProtocolError,
                "topic alias 2 used before it was set"
            ),
            Some(DisconnectReasonCode::ProtocolError),
            immediate_will()
        )
    );
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.on_packet(Packet::Publish(aliased("dev/1/t", 3)), t0),
        closed(
            refused(
                DisconnectReasonCode::TopicAliasInvalid,
                "topic alias 3 outside 1..=2"
            ),
            Some(DisconnectReasonCode::TopicAliasInvalid),
            immediate_will()
        )
    );
}

#[test]
fn invalid_topics_close_with_the_versions_reason() {
    let t0 = Instant::now();
    let mut s = state(Protocol::V311, t0);
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/+/t", QoS::AtLeastOnce, 1)), t0),
        closed(
            Cause::Error(ConnectionError::Protocol(
                "invalid topic name `dev/+/t` in PUBLISH".to_string()
            )),
            Some(DisconnectReasonCode::ProtocolError),
            immediate_will()
        )
    );
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/+/t", QoS::AtLeastOnce, 1)), t0),
        closed(
            refused(
                DisconnectReasonCode::TopicNameInvalid,
                "invalid topic name `dev/+/t` in PUBLISH"
            ),
            Some(DisconnectReasonCode::TopicNameInvalid),
            immediate_will()
        )
    );
    let mut s = state(Protocol::V5, t0);
    assert_eq!(
        s.on_packet(Packet::Publish(publish("dev/\0", QoS::AtMostOnce, 0)), t0),
        closed(
            Cause::Error(ConnectionError::Violation(Violation::NulCharacter)),
            Some(DisconnectReasonCode::MalformedPacket),
            immediate_will()
        )
    );
}

#[test]
fn subscribe_verdicts_and_unexpected_packets() {
    let t0 = Instant::now();
    let mut s = ConnectionState::new(
        Protocol::V5,
        "dev-1".to_string(),
        KEEP_ALIVE,
        expiry(3600),
        None,
        unlimited(),
        Some(vec!["dev/#".to_string()]),
        Settings {
            max_delivery_qos: QoS::AtLeastOnce,
            ..settings()
        },
        t0,
    );
    let mut no_local = Filter::new("dev/+/cmd", QoS::ExactlyOnce);
    no_local.nolocal = true;
    let subscribe = Subscribe {
        pkid: 4,
        filters: vec![
            no_local,
            Filter::new("$share/g/dev/1", QoS::AtMostOnce),
            Filter::new("dev/#/x", QoS::AtMostOnce),
            Filter::new("plant/#", QoS::AtMostOnce),
        ],
        properties: None,
    };
    assert_eq!(
        s.on_packet(Packet::Subscribe(subscribe), t0),
        vec![Action::Subscribe {
            pkid: 4,
            filters: vec![
                Requested {
                    filter: "dev/+/cmd".to_string(),
                    verdict: Ok(Grant {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: false,
                        retained: RetainForwardRule::OnEverySubscribe,
                    }),
                },
                Requested {
                    filter: "$share/g/dev/1".to_string(),
                    verdict: Err(SubscribeReasonCode::SharedSubscriptionsNotSupported),
                },
                Requested {
                    filter: "dev/#/x".to_string(),
                    verdict: Err(SubscribeReasonCode::TopicFilterInvalid),
                },
                Requested {
                    filter: "plant/#".to_string(),
                    verdict: Err(SubscribeReasonCode::NotAuthorized),
                },
            ],
        }]
    );
    assert_eq!(
        s.on_packet(Packet::Unsubscribe(Unsubscribe::new("dev/+/cmd", None)), t0),
        vec![Action::Unsubscribe {
            pkid: 0,
            filters: vec!["dev/+/cmd".to_string()]
        }]
    );
    let suback = Packet::SubAck(SubAck {
        pkid: 1,
        return_codes: Vec::new(),
        properties: None,
    });
    assert_eq!(
        s.on_packet(suback, t0),
        closed(
            Cause::Error(ConnectionError::Protocol(
                "unexpected SUBACK from a client".to_string()
            )),
            Some(DisconnectReasonCode::ProtocolError),
            None
        )
    );
    let mut s = state(Protocol::V311, t0);
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ConnectReturnCode::Success,
        properties: None,
    });
    assert!(matches!(
        s.on_packet(connack, t0).as_slice(),
        [Action::Close(Close {
            cause: Cause::Error(ConnectionError::Protocol(_)),
            ..
        })]
    ));
}
