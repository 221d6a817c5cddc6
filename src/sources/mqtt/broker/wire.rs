//! The embedded broker's wire formats: MQTT 3.1.1 and MQTT 5 bytes in, one
//! packet type out (and back).
//!
//! Why one type: the broker's logic (sessions, routing, acks) is the same
//! for both versions, and MQTT 5's packets are a superset of 3.1.1's
//! (reason codes and properties added). So the broker works on rumqttc's
//! MQTT 5 packets throughout, and a 3.1.1 connection is converted at its
//! edge: a 3.1.1 packet read is lifted into the MQTT 5 form (no
//! properties), and what the broker sends is lowered back (reason codes to
//! the 3.1.1 return codes, properties left out; a server DISCONNECT, which
//! 3.1.1 does not have, is not sent at all — the socket closes). Both codecs
//! are rumqttc's (`mqttbytes::v4`, `v5::mqttbytes::v5`); this module only
//! converts and fills the gaps of the v5 reader noted below. Pure: bytes
//! in, packets out.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as mqtt4;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill, Login,
    Packet, PingReq, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
    PubRel, PubRelReason, Publish, RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck, Unsubscribe,
};
use rumqttc::v5::mqttbytes::Error as Error5;
use rumqttc::v5::mqttbytes::QoS;

/// The MQTT version a connection speaks, from its CONNECT's protocol level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5, protocol level 5.
    V5,
}

impl Protocol {
    /// The protocol of a whole CONNECT frame that passed
    /// `connect::check_frame` (so its name is `MQTT` and its level 4
    /// or 5); 3.1.1 when the frame is too short to say.
    pub fn of_connect(frame: &[u8]) -> Protocol {
        // Fixed header byte, 1-4 remaining-length bytes, then the 6 bytes
        // of the protocol name `MQTT`, then the level.
        let mut at = 1;
        while frame.get(at).is_some_and(|b| b & 0x80 != 0) && at < 4 {
            at += 1;
        }
        match frame.get(at + 1 + 6) {
            Some(5) => Protocol::V5,
            _ => Protocol::V311,
        }
    }

    /// The label of `meshlet_broker_connections_by_version`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// Why the bytes a client sent are not a packet the broker can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("MQTT protocol error: {0}")]
    Malformed(String),
    #[error("packet larger than the {0}-byte limit")]
    TooLarge(usize),
}

/// What the front of a client's bytes holds.
// A packet is moved once from here to its handler: boxing it would cost an
// allocation per packet to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame {
    /// One whole packet, taken off the buffer.
    Packet(Packet),
    /// Part of one, left in the buffer: at least `missing` more bytes are
    /// needed.
    Partial { missing: usize },
}

/// Takes the first whole packet off the front of `buffer`, read as
/// `protocol` speaks it, or says how much of one is missing.
pub fn decode(
    protocol: Protocol,
    buffer: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Frame, WireError> {
    match protocol {
        Protocol::V311 => match v4::Packet::read(buffer, max_packet_bytes) {
            Ok(packet) => Ok(Frame::Packet(from_v4(packet))),
            Err(mqtt4::Error::InsufficientBytes(missing)) => Ok(Frame::Partial { missing }),
            Err(mqtt4::Error::PayloadSizeLimitExceeded(_)) => {
                Err(WireError::TooLarge(max_packet_bytes))
            }
            Err(err) => Err(WireError::Malformed(err.to_string())),
        },
        Protocol::V5 => decode_v5(buffer, max_packet_bytes),
    }
}

fn decode_v5(buffer: &mut BytesMut, max_packet_bytes: usize) -> Result<Frame, WireError> {
    // The v5 reader wants a payload on every packet but PINGREQ/PINGRESP;
    // a DISCONNECT without one (reason 0x00, no properties) is the common
    // case (§3.14.2.1), and AUTH is not supported by this broker.
    match buffer.first() {
        Some(&0xE0) if buffer.get(1) == Some(&0) => {
            let _ = buffer.split_to(2);
            return Ok(Frame::Packet(Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                properties: None,
            })));
        }
        Some(&0xE0) if buffer.len() < 2 => return Ok(Frame::Partial { missing: 1 }),
        _ => {}
    }
    let max = u32::try_from(max_packet_bytes).unwrap_or(u32::MAX);
    match Packet::read(buffer, Some(max)) {
        Ok(packet) => Ok(Frame::Packet(packet)),
        Err(Error5::InsufficientBytes(missing)) => Ok(Frame::Partial { missing }),
        Err(Error5::PayloadSizeLimitExceeded { .. }) => Err(WireError::TooLarge(max_packet_bytes)),
        Err(err) => Err(WireError::Malformed(err.to_string())),
    }
}

/// Appends `packet` to `buffer` as `protocol` writes it; `false` when it
/// has no form in that protocol (a server DISCONNECT to a 3.1.1 client)
/// or does not encode, and nothing was written.
pub fn encode(protocol: Protocol, packet: &Packet, buffer: &mut BytesMut) -> bool {
    match protocol {
        Protocol::V5 => {
            let before = buffer.len();
            if packet.write(buffer, None).is_err() {
                buffer.truncate(before);
                return false;
            }
            true
        }
        Protocol::V311 => {
            let Some(packet) = to_v4(packet) else {
                return false;
            };
            let before = buffer.len();
            if packet.write(buffer, usize::MAX).is_err() {
                buffer.truncate(before);
                return false;
            }
            true
        }
    }
}

/// A 3.1.1 packet in its MQTT 5 form (no properties; a clean session is a
/// clean start — the session expiry the broker derives from it, see
/// `session`).
pub fn from_v4(packet: v4::Packet) -> Packet {
    match packet {
        v4::Packet::Connect(connect) => {
            let will = connect.last_will.map(|will| LastWill {
                topic: Bytes::from(will.topic.into_bytes()),
                message: will.message,
                qos: qos_5(will.qos),
                retain: will.retain,
                properties: None,
            });
            let login = connect.login.map(|login| Login {
                username: login.username,
                password: login.password,
            });
            Packet::Connect(
                Connect {
                    keep_alive: connect.keep_alive,
                    client_id: connect.client_id,
                    clean_start: connect.clean_session,
                    properties: None,
                },
                will,
                login,
            )
        }
        v4::Packet::ConnAck(ack) => Packet::ConnAck(ConnAck {
            session_present: ack.session_present,
            code: match ack.code {
                v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
                v4::ConnectReturnCode::RefusedProtocolVersion => {
                    ConnectReturnCode::RefusedProtocolVersion
                }
                v4::ConnectReturnCode::BadClientId => ConnectReturnCode::BadClientId,
                v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServiceUnavailable,
                v4::ConnectReturnCode::BadUserNamePassword => {
                    ConnectReturnCode::BadUserNamePassword
                }
                v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            },
            properties: None,
        }),
        v4::Packet::Publish(publish) => Packet::Publish(Publish {
            dup: publish.dup,
            qos: qos_5(publish.qos),
            retain: publish.retain,
            topic: Bytes::from(publish.topic.into_bytes()),
            pkid: publish.pkid,
            payload: publish.payload,
            properties: None,
        }),
        v4::Packet::PubAck(ack) => Packet::PubAck(PubAck {
            pkid: ack.pkid,
            reason: PubAckReason::Success,
            properties: None,
        }),
        v4::Packet::PubRec(rec) => Packet::PubRec(PubRec {
            pkid: rec.pkid,
            reason: PubRecReason::Success,
            properties: None,
        }),
        v4::Packet::PubRel(rel) => Packet::PubRel(PubRel {
            pkid: rel.pkid,
            reason: PubRelReason::Success,
            properties: None,
        }),
        v4::Packet::PubComp(comp) => Packet::PubComp(PubComp {
            pkid: comp.pkid,
            reason: PubCompReason::Success,
            properties: None,
        }),
        v4::Packet::Subscribe(subscribe) => Packet::Subscribe(Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|filter| Filter {
                    path: filter.path,
                    qos: qos_5(filter.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::SubAck(ack) => Packet::SubAck(SubAck {
            pkid: ack.pkid,
            return_codes: ack
                .return_codes
                .into_iter()
                .map(|code| match code {
                    v4::SubscribeReasonCode::Success(qos) => {
                        SubscribeReasonCode::Success(qos_5(qos))
                    }
                    v4::SubscribeReasonCode::Failure => SubscribeReasonCode::Failure,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(unsubscribe) => Packet::Unsubscribe(Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.topics,
            properties: None,
        }),
        v4::Packet::UnsubAck(ack) => Packet::UnsubAck(UnsubAck {
            pkid: ack.pkid,
            reasons: Vec::new(),
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(PingReq),
        v4::Packet::PingResp => Packet::PingResp(PingResp),
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: None,
        }),
    }
}

/// What the broker sends, in its 3.1.1 form; `None` when 3.1.1 has none
/// (DISCONNECT and AUTH from a server, a CONNECT).
pub fn to_v4(packet: &Packet) -> Option<v4::Packet> {
    Some(match packet {
        Packet::ConnAck(ack) => v4::Packet::ConnAck(v4::ConnAck::new(
            connack_code_v4(ack.code),
            ack.session_present,
        )),
        Packet::Publish(publish) => {
            let mut out = v4::Publish::from_bytes(
                String::from_utf8_lossy(&publish.topic).into_owned(),
                qos_4(publish.qos),
                publish.payload.clone(),
            );
            out.dup = publish.dup;
            out.retain = publish.retain;
            out.pkid = publish.pkid;
            v4::Packet::Publish(out)
        }
        Packet::PubAck(ack) => v4::Packet::PubAck(v4::PubAck::new(ack.pkid)),
        Packet::PubRec(rec) => v4::Packet::PubRec(v4::PubRec::new(rec.pkid)),
        Packet::PubRel(rel) => v4::Packet::PubRel(v4::PubRel::new(rel.pkid)),
        Packet::PubComp(comp) => v4::Packet::PubComp(v4::PubComp::new(comp.pkid)),
        Packet::SubAck(ack) => v4::Packet::SubAck(v4::SubAck::new(
            ack.pkid,
            ack.return_codes
                .iter()
                .map(|code| match code {
                    SubscribeReasonCode::Success(qos) => {
                        v4::SubscribeReasonCode::Success(qos_4(*qos))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(ack) => v4::Packet::UnsubAck(v4::UnsubAck::new(ack.pkid)),
        Packet::PingReq(_) => v4::Packet::PingReq,
        Packet::PingResp(_) => v4::Packet::PingResp,
        Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::Connect(..)
        | Packet::Disconnect(_)
        | Packet::Auth(_) => return None,
    })
}

/// The 3.1.1 return code closest to an MQTT 5 CONNACK reason code
/// (§3.2.2.3 of MQTT 5 lists the same mapping for servers that fall back).
fn connack_code_v4(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
            v4::ConnectReturnCode::RefusedProtocolVersion
        }
        C::BadClientId | C::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
        C::BadUserNamePassword | C::BadAuthenticationMethod => {
            v4::ConnectReturnCode::BadUserNamePassword
        }
        C::NotAuthorized | C::Banned => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

fn qos_5(qos: mqtt4::QoS) -> QoS {
    match qos {
        mqtt4::QoS::AtMostOnce => QoS::AtMostOnce,
        mqtt4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqtt4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_4(qos: QoS) -> mqtt4::QoS {
    match qos {
        QoS::AtMostOnce => mqtt4::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqtt4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqtt4::QoS::ExactlyOnce,
    }
}

/// The QoS of a publish as the broker keeps it for a subscriber granted
/// `granted`: the lower of the two (§3.8.4).
pub fn downgrade(qos: QoS, granted: QoS) -> QoS {
    if (qos as u8) <= (granted as u8) {
        qos
    } else {
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;

    fn round_trip(protocol: Protocol, packet: &Packet) -> Packet {
        let mut buffer = BytesMut::new();
        assert!(encode(protocol, packet, &mut buffer), "{packet:?}");
        match decode(protocol, &mut buffer, 1 << 20) {
            Ok(Frame::Packet(back)) => {
                assert!(buffer.is_empty());
                back
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_connect_level_picks_the_codec() {
        let mut v4_connect = v4::Connect::new("c");
        v4_connect.keep_alive = 30;
        let mut frame = BytesMut::new();
        v4::Packet::Connect(v4_connect)
            .write(&mut frame, 1024)
            .unwrap();
        assert_eq!(Protocol::of_connect(&frame), Protocol::V311);
        let (v5_connect, _, _) = match round_trip_connect_v5() {
            Packet::Connect(c, w, l) => (c, w, l),
            other => panic!("{other:?}"),
        };
        let mut frame = BytesMut::new();
        Packet::Connect(v5_connect, None, None)
            .write(&mut frame, None)
            .unwrap();
        assert_eq!(Protocol::of_connect(&frame), Protocol::V5);
        assert_eq!(Protocol::of_connect(&[0x10]), Protocol::V311);
    }

    fn round_trip_connect_v5() -> Packet {
        let connect = Connect {
            keep_alive: 30,
            client_id: "device-7".into(),
            clean_start: false,
            properties: Some(rumqttc::v5::mqttbytes::v5::ConnectProperties {
                session_expiry_interval: Some(600),
                receive_maximum: Some(10),
                max_packet_size: Some(4096),
                topic_alias_max: Some(5),
                request_response_info: None,
                request_problem_info: None,
                user_properties: vec![],
                authentication_method: None,
                authentication_data: None,
            }),
        };
        let packet = Packet::Connect(connect, None, None);
        let back = round_trip(Protocol::V5, &packet);
        assert_eq!(back, packet);
        back
    }

    #[test]
    fn a_3_1_1_publish_is_lifted_and_lowered_unchanged() {
        let mut publish = v4::Publish::new("a/b", mqtt4::QoS::AtLeastOnce, b"{}".to_vec());
        publish.pkid = 7;
        publish.retain = true;
        let mut bytes = BytesMut::new();
        v4::Packet::Publish(publish.clone())
            .write(&mut bytes, 1024)
            .unwrap();
        let Ok(Frame::Packet(Packet::Publish(lifted))) =
            decode(Protocol::V311, &mut bytes.clone(), 1024)
        else {
            panic!("not a publish");
        };
        assert_eq!(&lifted.topic[..], b"a/b");
        assert_eq!((lifted.pkid, lifted.retain), (7, true));
        let mut lowered = BytesMut::new();
        assert!(encode(
            Protocol::V311,
            &Packet::Publish(lifted),
            &mut lowered
        ));
        assert_eq!(lowered, bytes, "the same bytes as the client sent");
    }

    #[test]
    fn v5_publish_properties_survive() {
        let properties = PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("ts".into(), "2024-05-01T12:00:00Z".into())],
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"42")),
            ..Default::default()
        };
        let mut publish = Publish::new("t", QoS::ExactlyOnce, b"{}".to_vec(), Some(properties));
        publish.pkid = 9;
        let packet = Packet::Publish(publish);
        assert_eq!(round_trip(Protocol::V5, &packet), packet);
    }

    #[test]
    fn a_bare_v5_disconnect_is_read() {
        let mut bytes = BytesMut::from(&[0xE0, 0x00, 0xC0, 0x00][..]);
        assert!(matches!(
            decode(Protocol::V5, &mut bytes, 1024),
            Ok(Frame::Packet(Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                ..
            })))
        ));
        assert!(matches!(
            decode(Protocol::V5, &mut bytes, 1024),
            Ok(Frame::Packet(Packet::PingReq(_)))
        ));
        let mut half = BytesMut::from(&[0xE0][..]);
        assert!(matches!(
            decode(Protocol::V5, &mut half, 1024),
            Ok(Frame::Partial { .. })
        ));
    }

    #[test]
    fn reason_codes_are_lowered_to_3_1_1_return_codes() {
        let refusal = |code| {
            to_v4(&Packet::ConnAck(ConnAck {
                session_present: false,
                code,
                properties: None,
            }))
        };
        assert_eq!(
            refusal(ConnectReturnCode::BadUserNamePassword),
            Some(v4::Packet::ConnAck(v4::ConnAck::new(
                v4::ConnectReturnCode::BadUserNamePassword,
                false
            )))
        );
        assert_eq!(
            refusal(ConnectReturnCode::QuotaExceeded),
            Some(v4::Packet::ConnAck(v4::ConnAck::new(
                v4::ConnectReturnCode::ServiceUnavailable,
                false
            )))
        );
        let disconnect = Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::ServerShuttingDown,
            properties: None,
        });
        assert!(!encode(Protocol::V311, &disconnect, &mut BytesMut::new()));
        let granted = Packet::SubAck(SubAck {
            pkid: 1,
            return_codes: vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::NotAuthorized,
            ],
            properties: None,
        });
        assert_eq!(
            to_v4(&granted),
            Some(v4::Packet::SubAck(v4::SubAck::new(
                1,
                vec![
                    v4::SubscribeReasonCode::Success(mqtt4::QoS::AtLeastOnce),
                    v4::SubscribeReasonCode::Failure
                ]
            )))
        );
    }

    #[test]
    fn too_large_is_told_apart_from_malformed() {
        let publish = Packet::Publish(Publish::new("t", QoS::AtMostOnce, vec![0; 2000], None));
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut bytes = BytesMut::new();
            assert!(encode(protocol, &publish, &mut bytes));
            assert_eq!(
                decode(protocol, &mut bytes, 1024).unwrap_err(),
                WireError::TooLarge(1024)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic_either_codec(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            for protocol in [Protocol::V311, Protocol::V5] {
                let mut buffer = BytesMut::from(&bytes[..]);
                while let Ok(Frame::Packet(packet)) = decode(protocol, &mut buffer, 1024) {
                    let _ = encode(protocol, &packet, &mut BytesMut::new());
                }
            }
        }
    }

    #[test]
    fn downgrade_takes_the_lower_qos() {
        assert_eq!(
            downgrade(QoS::ExactlyOnce, QoS::AtLeastOnce),
            QoS::AtLeastOnce
        );
        assert_eq!(
            downgrade(QoS::AtMostOnce, QoS::ExactlyOnce),
            QoS::AtMostOnce
        );
    }
}
