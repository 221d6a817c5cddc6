//! What the embedded broker refuses in a CONNECT (and in topic strings)
//! that the packet codec lets through: pure checks on the raw frame and
//! the parsed packet, so the broker answers per MQTT 3.1.1 instead of
//! half-understanding a client.
//!
//! The broker speaks MQTT 3.1.1 and 5 (protocol name `MQTT`, level 4 or
//! 5; `wire` picks the codec by the level). Any other level under
//! `MQTT` and MQTT 3.1 (`MQIsdp`, level 3) get CONNACK 0x01 "unacceptable
//! protocol version" and are closed (§3.1.2.2). Any other protocol name, a reserved bit
//! set (fixed-header flags, connect flag bit 0), inconsistent will flags,
//! a password without a user name (§3.1.2.9), and U+0000 in any string
//! (§1.5.3) close the connection without CONNACK, as the spec requires.

use rumqttc::v5::mqttbytes::v5::{Connect, LastWill, Login};

/// Why a CONNECT (or a later packet's topic) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// A protocol level this broker does not speak: CONNACK 0x01, close.
    #[error("unsupported MQTT protocol version (3.1.1 and 5 are spoken)")]
    UnsupportedProtocol,
    /// Not an MQTT protocol name at all: close.
    #[error("unknown protocol name")]
    ProtocolName,
    #[error("reserved flag bit set")]
    ReservedFlag,
    #[error("password without user name")]
    PasswordWithoutUsername,
    #[error("will QoS or retain set without a will, or will QoS 3")]
    WillFlags,
    #[error("U+0000 in a string (client id, user name, topic or filter)")]
    NulCharacter,
    #[error("CONNECT larger than mqtt.embedded.max_connect_bytes")]
    ConnectTooLarge,
}

impl Violation {
    pub(crate) const ALL: [Violation; 7] = [
        Violation::UnsupportedProtocol,
        Violation::ProtocolName,
        Violation::ReservedFlag,
        Violation::PasswordWithoutUsername,
        Violation::WillFlags,
        Violation::NulCharacter,
        Violation::ConnectTooLarge,
    ];

    /// The `violation` label of `meshlet_broker_violations_total`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Violation::UnsupportedProtocol => "unsupported_protocol",
            Violation::ProtocolName => "protocol_name",
            Violation::ReservedFlag => "reserved_flag",
            Violation::PasswordWithoutUsername => "password_without_username",
            Violation::WillFlags => "will_flags",
            Violation::NulCharacter => "nul_character",
            Violation::ConnectTooLarge => "connect_too_large",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Checks the fixed header and variable header of a whole CONNECT frame
/// (fixed header included) before the codec parses it. A frame too short
/// to hold them passes: the codec reports it as malformed.
pub(crate) fn check_frame(frame: &[u8]) -> Result<(), Violation> {
    let Some((&first, rest)) = frame.split_first() else {
        return Ok(());
    };
    if first & 0x0f != 0 {
        return Err(Violation::ReservedFlag);
    }
    // Remaining length: 1 to 4 bytes, high bit = more.
    let mut rest = rest;
    for _ in 0..4 {
        let Some((&byte, after)) = rest.split_first() else {
            return Ok(());
        };
        rest = after;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let Some((name, rest)) = split_string(rest) else {
        return Ok(());
    };
    let Some((&level, rest)) = rest.split_first() else {
        return Ok(());
    };
    match (name, level) {
        (b"MQTT", 4 | 5) => {}
        (b"MQTT", _) | (b"MQIsdp", _) => return Err(Violation::UnsupportedProtocol),
        _ => return Err(Violation::ProtocolName),
    }
    let Some(&flags) = rest.first() else {
        return Ok(());
    };
    check_flags(flags)
}

/// The connect flags byte (§3.1.2.3-§3.1.2.9).
fn check_flags(flags: u8) -> Result<(), Violation> {
    const RESERVED: u8 = 0b0000_0001;
    const WILL: u8 = 0b0000_0100;
    const WILL_QOS: u8 = 0b0001_1000;
    const WILL_RETAIN: u8 = 0b0010_0000;
    const PASSWORD: u8 = 0b0100_0000;
    const USERNAME: u8 = 0b1000_0000;
    if flags & RESERVED != 0 {
        return Err(Violation::ReservedFlag);
    }
    let will_qos = (flags & WILL_QOS) >> 3;
    if flags & WILL == 0 && (will_qos != 0 || flags & WILL_RETAIN != 0) || will_qos == 3 {
        return Err(Violation::WillFlags);
    }
    if flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return Err(Violation::PasswordWithoutUsername);
    }
    Ok(())
}

/// Checks the strings of a parsed CONNECT for U+0000 (a will topic that
/// is not UTF-8 counts as one: both make the string malformed).
pub(crate) fn check_strings(
    connect: &Connect,
    will: Option<&LastWill>,
    login: Option<&Login>,
) -> Result<(), Violation> {
    let will_topic = match will.map(|w| std::str::from_utf8(&w.topic)) {
        Some(Ok(topic)) => Some(topic),
        Some(Err(_)) => return Err(Violation::NulCharacter),
        None => None,
    };
    let username = login.map(|l| l.username.as_str());
    let strings = [Some(connect.client_id.as_str()), will_topic, username];
    if strings.into_iter().flatten().any(has_nul) {
        return Err(Violation::NulCharacter);
    }
    Ok(())
}

/// MQTT strings must not contain U+0000 (§1.5.3); a receiver closes the
/// connection.
pub(crate) fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// Whether `topic` matches `filter` (§4.7), `$`-topics included: a filter
/// starting with a wildcard does not match a topic starting with `$`
/// (§4.7.2), one starting with `$` does. (rumqttc's `matches` matches no
/// `$`-topic at all.)
pub(crate) fn topic_matches(topic: &str, filter: &str) -> bool {
    match (topic.strip_prefix('$'), filter.strip_prefix('$')) {
        (Some(topic), Some(filter)) => rumqttc::v5::mqttbytes::matches(topic, filter),
        (Some(_), None) | (None, Some(_)) => false,
        (None, None) => rumqttc::v5::mqttbytes::matches(topic, filter),
    }
}

/// Whether every topic `filter` matches is matched by `pattern` too (an
/// ACL pattern covers a subscription): level by level, `#` in the pattern
/// covers the rest, `+` covers one level that is not `#`, a name covers
/// the same name.
pub(crate) fn filter_covered(filter: &str, pattern: &str) -> bool {
    let mut levels = filter.split('/');
    for allowed in pattern.split('/') {
        if allowed == "#" {
            return true;
        }
        match levels.next() {
            None | Some("#") => return false,
            Some("+") if allowed != "+" => return false,
            Some(level) if allowed != "+" && allowed != level => return false,
            Some(_) => {}
        }
    }
    levels.next().is_none()
}

/// Splits a length-prefixed MQTT string off `bytes`.
fn split_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT frame with the given name, level and flags, no payload.
    fn frame(first: u8, name: &[u8], level: u8, flags: u8) -> Vec<u8> {
        let mut variable = Vec::new();
        variable.extend_from_slice(&(name.len() as u16).to_be_bytes());
        variable.extend_from_slice(name);
        variable.extend_from_slice(&[level, flags, 0, 60, 0, 0]);
        let mut out = vec![first, variable.len() as u8];
        out.extend(variable);
        out
    }

    #[test]
    fn mqtt_3_1_1_and_5_pass() {
        assert_eq!(check_frame(&frame(0x10, b"MQTT", 5, 0b0000_0010)), Ok(()));
        assert_eq!(check_frame(&frame(0x10, b"MQTT", 4, 0b0000_0010)), Ok(()));
        assert_eq!(check_frame(&frame(0x10, b"MQTT", 4, 0b1100_0010)), Ok(()));
        assert_eq!(check_frame(&frame(0x10, b"MQTT", 4, 0b0011_0110)), Ok(()));
    }

    #[test]
    fn other_versions_get_unacceptable_protocol_version() {
        for (name, level) in [(&b"MQTT"[..], 6), (b"MQTT", 3), (b"MQIsdp", 3)] {
            assert_eq!(
                check_frame(&frame(0x10, name, level, 2)),
                Err(Violation::UnsupportedProtocol),
                "{level}"
            );
        }
        assert_eq!(
            check_frame(&frame(0x10, b"HTTP", 4, 2)),
            Err(Violation::ProtocolName)
        );
    }

    #[test]
    fn reserved_bits_and_bad_flag_combinations_are_violations() {
        assert_eq!(
            check_frame(&frame(0x12, b"MQTT", 4, 2)),
            Err(Violation::ReservedFlag)
        );
        assert_eq!(
            check_frame(&frame(0x10, b"MQTT", 4, 0b0000_0011)),
            Err(Violation::ReservedFlag)
        );
        assert_eq!(
            check_frame(&frame(0x10, b"MQTT", 4, 0b0100_0010)),
            Err(Violation::PasswordWithoutUsername)
        );
        assert_eq!(
            check_frame(&frame(0x10, b"MQTT", 4, 0b0000_1010)),
            Err(Violation::WillFlags)
        );
        assert_eq!(
            check_frame(&frame(0x10, b"MQTT", 4, 0b0001_1110)),
            Err(Violation::WillFlags)
        );
    }

    #[test]
    fn dollar_topics_match_only_filters_that_name_them() {
        assert!(topic_matches("$SYS/broker/uptime", "$SYS/#"));
        assert!(topic_matches("$SYS/broker/uptime", "$SYS/+/uptime"));
        assert!(!topic_matches("$SYS/broker/uptime", "#"));
        assert!(!topic_matches("$SYS/broker/uptime", "+/broker/uptime"));
        assert!(topic_matches("plant/a", "#"));
        assert!(!topic_matches("plant/a", "$plant/a"));
    }

    #[test]
    fn acl_patterns_cover_filters_within_them() {
        assert!(filter_covered("plant/a/cmd", "plant/#"));
        assert!(filter_covered("plant/+/cmd", "plant/#"));
        assert!(filter_covered("plant/#", "plant/#"));
        assert!(filter_covered("plant/a/cmd", "plant/+/cmd"));
        assert!(filter_covered("plant/+/cmd", "plant/+/cmd"));
        assert!(!filter_covered("plant/#", "plant/+/cmd"));
        assert!(!filter_covered("#", "plant/#"));
        assert!(!filter_covered("plant/+/cmd", "plant/a/cmd"));
        assert!(!filter_covered("plant/a", "plant/a/cmd"));
        assert!(!filter_covered("plant/a/cmd/x", "plant/+/cmd"));
        assert!(!filter_covered("other/a", "plant/#"));
    }

    #[test]
    fn short_frames_are_left_to_the_codec() {
        for len in 0..10 {
            let full = frame(0x10, b"MQTT", 4, 2);
            let _ = check_frame(&full[..len.min(full.len())]);
        }
        assert_eq!(check_frame(&[0x10, 0xff, 0xff, 0xff, 0xff]), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = check_frame(&bytes);
        }
    }
}
