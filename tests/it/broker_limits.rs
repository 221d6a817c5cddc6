//! The embedded broker against hostile clients, with the real binary and
//! real loopback sockets: its connection limit counts sockets from accept,
//! what it holds for clients stays within byte budgets while the load runs
//! (the node's RSS is read from /proc), persistent sessions expire, and a
//! CONNECT or topic that breaks MQTT 3.1.1 is refused as the spec says.
//! Every load is bounded and stops by itself.

use crate::common;

use std::io::Write;
use std::time::Duration;

use common::hostile::{
    assert_rss_growth_below, closed_within, connect_frame, encode, mqtt_connect, publish_frame,
    read_n, read_packet, rss_bytes, socket, subscribe_frame,
};
use common::{eventually, metric, run, stderr, NodeBuilder, NodeProcess};
use rumqttc::mqttbytes::QoS;

fn start(settings: &[(&str, &str)]) -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let mut builder = NodeBuilder::new(dir.path());
    for (name, value) in settings {
        builder = builder.env(name, *value);
    }
    let node = builder.start().expect("node starts");
    (dir, node)
}

fn counter(node: &NodeProcess, series: &str) -> f64 {
    metric(node, series).unwrap_or(0.0)
}

#[test]
fn sockets_that_never_send_connect_count_against_the_connection_limit() {
    let (_dir, node) = start(&[
        ("MESHLET_MQTT__EMBEDDED__MAX_CONNECTIONS", "20"),
        ("MESHLET_MQTT__EMBEDDED__CONNECT_TIMEOUT", "3s"),
    ]);
    let addr = node.mqtt.expect("embedded broker");
    // 40 sockets opened and left silent, the way the limit was bypassed.
    let mut silent: Vec<_> = (0..40)
        .map(|_| socket(addr, Duration::from_secs(5)))
        .collect();
    // A device that connects now is told the broker is full.
    let (_late, connack) = mqtt_connect(addr, "late-device", true);
    assert_eq!(
        connack,
        Some(vec![0x20, 2, 0, 0x03]),
        "CONNACK 0x03 (server unavailable) while silent sockets hold every slot"
    );
    assert_eq!(
        counter(&node, "meshlet_broker_sockets"),
        20.0,
        "20 sockets hold the 20 slots"
    );
    assert!(counter(&node, "meshlet_broker_refused_total") >= 21.0);
    // The silent sockets are closed after the CONNECT deadline...
    let closed = silent
        .iter_mut()
        .take(20)
        .map(|s| closed_within(s, Duration::from_secs(10)))
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, 20, "every silent socket is closed");
    // ...and a real client gets in.
    assert!(eventually(Duration::from_secs(5), || {
        mqtt_connect(addr, "device-1", true).1 == Some(vec![0x20, 2, 0, 0])
    }));
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn connects_and_topics_that_break_mqtt_3_1_1_are_refused_and_counted() {
    let (_dir, node) = start(&[]);
    let addr = node.mqtt.expect("embedded broker");
    let raw = |frame: Vec<u8>| {
        let mut stream = socket(addr, Duration::from_secs(5));
        stream.write_all(&frame).expect("send");
        stream
    };
    // A CONNECT with everything but its variable header's start and flags
    // taken from a valid 3.1.1 one.
    let valid = connect_frame("strict-1", true);
    let with = |name: &[u8], level: u8, flags: u8| {
        let mut frame = vec![0x10, 0];
        frame.extend_from_slice(&(name.len() as u16).to_be_bytes());
        frame.extend_from_slice(name);
        frame.extend_from_slice(&[level, flags]);
        frame.extend_from_slice(&valid[10..]); // keep-alive, client id
        frame[1] = (frame.len() - 2) as u8;
        frame
    };
    assert_eq!(
        &valid[2..10],
        b"\0\x04MQTT\x04\x02",
        "the frame layout assumed"
    );

    // Level 6 and 3.1 `MQIsdp` (5 is spoken, tests/it/mqtt_conformance.rs):
    // CONNACK 0x01, then closed.
    for (name, level) in [(&b"MQTT"[..], 6u8), (b"MQIsdp", 3)] {
        let mut stream = raw(with(name, level, 0x02));
        assert_eq!(
            read_n(&mut stream, 4),
            Some(vec![0x20, 2, 0, 0x01]),
            "level {level}: unacceptable protocol version"
        );
        assert!(closed_within(&mut stream, Duration::from_secs(5)));
    }
    // Reserved bit, password without user name, reserved fixed-header
    // flags: closed without CONNACK.
    let mut password_only = with(b"MQTT", 4, 0b0100_0010);
    password_only.extend_from_slice(&[0, 3, b'p', b'w', b'd']);
    password_only[1] += 5;
    let mut fixed_flags = valid.clone();
    fixed_flags[0] = 0x11;
    for (what, frame) in [
        ("reserved connect flag", with(b"MQTT", 4, 0b0000_0011)),
        ("password without user name", password_only),
        ("reserved fixed-header flag", fixed_flags),
    ] {
        let mut stream = raw(frame);
        assert_eq!(read_n(&mut stream, 1), None, "{what}: no CONNACK");
        assert!(closed_within(&mut stream, Duration::from_secs(5)), "{what}");
    }
    // U+0000 in a topic after a good CONNECT: closed, never acknowledged.
    let (mut stream, connack) = mqtt_connect(addr, "nul-publisher", true);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]));
    stream
        .write_all(&publish_frame(
            "plant/a\0b",
            b"{}".to_vec(),
            QoS::AtLeastOnce,
            7,
            false,
        ))
        .expect("send");
    assert_eq!(read_n(&mut stream, 4), None, "no PUBACK for a NUL topic");
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    let (mut stream, _) = mqtt_connect(addr, "nul-subscriber", true);
    stream
        .write_all(&subscribe_frame(1, &["a/\0/#".to_string()]))
        .expect("send");
    assert_eq!(read_n(&mut stream, 5), None, "no SUBACK for a NUL filter");

    let violations = |name: &str| {
        counter(
            &node,
            &format!("meshlet_broker_violations_total{{violation=\"{name}\"}}"),
        )
    };
    assert!(eventually(Duration::from_secs(5), || {
        violations("unsupported_protocol") == 2.0
            && violations("reserved_flag") == 2.0
            && violations("password_without_username") == 1.0
            && violations("nul_character") == 2.0
    }));
    let (status, _) = node.stop();
    assert!(status.success());
}

/// U+0000 is not allowed in any MQTT string (§1.5.3): a CONNECT with one
/// in its client id, will topic or user name is closed without a CONNACK,
/// an UNSUBSCRIBE with one closes the connection, each counted; a good
/// client is served meanwhile.
#[test]
fn nul_characters_in_connect_strings_and_unsubscribes_close_the_connection() {
    use rumqttc::mqttbytes::v4::{Connect, LastWill, Packet, Unsubscribe};
    let (_dir, node) = start(&[]);
    let addr = node.mqtt.expect("embedded broker");
    let connect = |edit: &dyn Fn(&mut Connect)| {
        let mut connect = Connect::new("nul-connect");
        connect.keep_alive = 60;
        edit(&mut connect);
        encode(Packet::Connect(connect))
    };
    for (what, frame) in [
        (
            "client id",
            connect(&|c| c.client_id = "nul\0id".to_string()),
        ),
        (
            "will topic",
            connect(&|c| {
                c.last_will = Some(LastWill::new(
                    "plant/\0/will",
                    b"bye".to_vec(),
                    QoS::AtLeastOnce,
                    false,
                ))
            }),
        ),
        (
            "user name",
            connect(&|c| {
                c.set_login("us\0er", "pwd");
            }),
        ),
    ] {
        let mut stream = socket(addr, Duration::from_secs(5));
        stream.write_all(&frame).expect("send");
        assert_eq!(
            read_n(&mut stream, 1),
            None,
            "NUL in the {what}: no CONNACK"
        );
        assert!(closed_within(&mut stream, Duration::from_secs(5)), "{what}");
    }
    let (mut stream, connack) = mqtt_connect(addr, "nul-unsubscriber", true);
    assert_eq!(
        connack,
        Some(vec![0x20, 2, 0, 0]),
        "a good client is served"
    );
    let mut unsubscribe = Unsubscribe::new("a/\0/#");
    unsubscribe.pkid = 3;
    stream
        .write_all(&encode(Packet::Unsubscribe(unsubscribe)))
        .expect("send");
    assert_eq!(read_n(&mut stream, 4), None, "no UNSUBACK for a NUL filter");
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    assert!(eventually(Duration::from_secs(5), || {
        counter(
            &node,
            "meshlet_broker_violations_total{violation=\"nul_character\"}",
        ) == 4.0
    }));
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn retained_messages_stay_within_their_byte_budget() {
    let (_dir, node) = start(&[("MESHLET_MQTT__EMBEDDED__MAX_RETAINED_BYTES", "4194304")]);
    let addr = node.mqtt.expect("embedded broker");
    let before = rss_bytes(node.pid());
    // 150 retained messages of ~1 MB on topics no product reads.
    let (mut publisher, connack) = mqtt_connect(addr, "retainer", true);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]));
    for i in 0..150u16 {
        let frame = publish_frame(
            &format!("junk/{i}"),
            vec![b'r'; 1_000_000],
            QoS::AtLeastOnce,
            i + 1,
            true,
        );
        publisher.write_all(&frame).expect("publish");
        assert!(read_n(&mut publisher, 4).is_some(), "PUBACK {i}");
    }
    assert_rss_growth_below(node.pid(), before, 48, "150 MB of retained publishes");
    let held = counter(&node, "meshlet_broker_retained_bytes");
    assert!(held > 0.0 && held <= 4_194_304.0, "retained bytes {held}");
    assert!(counter(&node, "meshlet_broker_retained_refused_total") >= 140.0);
    // What was retained is still delivered to a new subscriber.
    let (mut subscriber, _) = mqtt_connect(addr, "late-reader", true);
    subscriber
        .write_all(&subscribe_frame(1, &["junk/0".to_string()]))
        .expect("subscribe");
    // SUBACK and the retained message, in either order (MQTT 3.1.1
    // lets the server send matching messages before the SUBACK).
    let mut kinds: Vec<u8> = (0..2)
        .map(|_| read_packet(&mut subscriber).expect("a packet").0)
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec![0x31, 0x90], "a retained PUBLISH and the SUBACK");
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn a_subscriber_that_never_reads_costs_at_most_its_queue() {
    let (_dir, node) = start(&[]);
    let addr = node.mqtt.expect("embedded broker");
    let (mut stalled, _) = mqtt_connect(addr, "never-reads", true);
    stalled
        .write_all(&subscribe_frame(1, &["junk/#".to_string()]))
        .expect("subscribe");
    assert_eq!(read_n(&mut stalled, 5), Some(vec![0x90, 3, 0, 1, 0]));
    let before = rss_bytes(node.pid());
    let (mut publisher, _) = mqtt_connect(addr, "firehose", true);
    for i in 0..300u16 {
        let frame = publish_frame(
            "junk/x",
            vec![b'q'; 1_000_000],
            QoS::AtLeastOnce,
            i + 1,
            false,
        );
        publisher.write_all(&frame).expect("publish");
        assert!(read_n(&mut publisher, 4).is_some(), "PUBACK {i}");
    }
    // The subscriber is still connected and has read nothing.
    assert_rss_growth_below(node.pid(), before, 48, "a subscriber that never reads");
    assert!(counter(&node, "meshlet_broker_deliveries_dropped_total") >= 250.0);
    drop(stalled);
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn subscriptions_are_bounded_per_client() {
    let (_dir, node) = start(&[]);
    let addr = node.mqtt.expect("embedded broker");
    let before = rss_bytes(node.pid());
    let (mut client, _) = mqtt_connect(addr, "greedy", true);
    let mut granted = 0;
    let mut refused = 0;
    // 40 SUBSCRIBEs of 250 distinct 4 KB filters: 40 MB of filters.
    for packet in 0..40u16 {
        let filters: Vec<String> = (0..250)
            .map(|i| format!("f/{packet}/{i}/{}", "x".repeat(4_000)))
            .collect();
        client
            .write_all(&subscribe_frame(packet + 1, &filters))
            .expect("subscribe");
        // Fixed header of 3 bytes (remaining length 252), packet id, codes.
        let suback = read_n(&mut client, 3 + 2 + 250).expect("SUBACK");
        assert_eq!(suback[..3], [0x90, 252, 1]);
        for code in &suback[5..] {
            match code {
                0 => granted += 1,
                0x80 => refused += 1,
                other => panic!("SUBACK code {other}"),
            }
        }
    }
    assert_eq!(granted, 4, "16 KiB of filters per client: four of 4 KB");
    assert_eq!(refused, 40 * 250 - 4);
    assert_rss_growth_below(node.pid(), before, 24, "40 MB of refused filters");
    assert!(counter(&node, "meshlet_broker_subscriptions_refused_total") >= 9_996.0);
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn half_sent_large_connects_are_cut_off() {
    let (_dir, node) = start(&[("MESHLET_MQTT__EMBEDDED__MAX_CONNECTIONS", "1000")]);
    let addr = node.mqtt.expect("embedded broker");
    let before = rss_bytes(node.pid());
    // 200 sockets each announcing a 1 MB CONNECT and sending 256 KiB of it.
    let mut sockets = Vec::new();
    for _ in 0..200 {
        let mut stream = socket(addr, Duration::from_secs(5));
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .expect("write timeout");
        let mut frame = vec![0x10, 0xc0, 0x84, 0x3d]; // remaining length 1,000,000
        frame.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60]);
        frame.resize(256 * 1024, b'c');
        let _ = stream.write_all(&frame);
        sockets.push(stream);
    }
    assert_rss_growth_below(node.pid(), before, 24, "200 half-sent CONNECTs");
    assert!(eventually(Duration::from_secs(10), || {
        counter(
            &node,
            "meshlet_broker_violations_total{violation=\"connect_too_large\"}",
        ) == 200.0
    }));
    let open = sockets
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_secs(2)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 0, "every oversized CONNECT is closed");
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn persistent_sessions_expire_after_their_client_stays_away() {
    let (_dir, node) = start(&[("MESHLET_MQTT__EMBEDDED__SESSION_EXPIRY", "1s")]);
    let addr = node.mqtt.expect("embedded broker");
    let disconnect = |mut stream: std::net::TcpStream| {
        stream.write_all(&[0xe0, 0]).expect("DISCONNECT");
        assert!(closed_within(&mut stream, Duration::from_secs(5)));
    };
    let (stream, connack) = mqtt_connect(addr, "sleepy-device", false);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]), "a new session");
    disconnect(stream);
    // Back at once: the session is there.
    let (stream, connack) = mqtt_connect(addr, "sleepy-device", false);
    assert_eq!(connack, Some(vec![0x20, 2, 1, 0]), "session present");
    // Connected for longer than the expiry: a live session never expires.
    assert!(!eventually(Duration::from_secs(2), || {
        counter(&node, "meshlet_broker_sessions_expired_total") > 0.0
    }));
    disconnect(stream);
    assert!(
        eventually(Duration::from_secs(10), || {
            counter(&node, "meshlet_broker_sessions_expired_total") == 1.0
        }),
        "the session expires a second after its client left"
    );
    let (_stream, connack) = mqtt_connect(addr, "sleepy-device", false);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]), "a new session again");
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn half_sent_large_publishes_hold_the_packet_budget_not_memory() {
    let (_dir, node) = start(&[(
        "MESHLET_MQTT__EMBEDDED__MAX_PENDING_PACKET_BYTES",
        "4194304",
    )]);
    let addr = node.mqtt.expect("embedded broker");
    let before = rss_bytes(node.pid());
    // 150 connected clients, each half-way through a 1 MB PUBLISH.
    let mut clients = Vec::new();
    for i in 0..150 {
        let (mut stream, connack) = mqtt_connect(addr, &format!("half-{i}"), true);
        assert_eq!(connack, Some(vec![0x20, 2, 0, 0]));
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .expect("write timeout");
        let mut frame = publish_frame(
            "junk/half",
            vec![b'h'; 1_000_000],
            QoS::AtMostOnce,
            0,
            false,
        );
        frame.truncate(512 * 1024);
        let _ = stream.write_all(&frame);
        clients.push(stream);
    }
    assert!(eventually(Duration::from_secs(10), || {
        counter(&node, "meshlet_broker_packet_budget_waits_total") > 0.0
    }));
    assert_rss_growth_below(node.pid(), before, 32, "150 half-sent 1 MB publishes");
    // A device's ordinary publish does not wait behind them.
    let (mut device, _) = mqtt_connect(addr, "small-device", true);
    device
        .write_all(&publish_frame(
            "sensors/s-1/telemetry",
            br#"{"temperature_c": 20}"#.to_vec(),
            QoS::AtLeastOnce,
            1,
            false,
        ))
        .expect("publish");
    assert_eq!(read_n(&mut device, 4), Some(vec![0x40, 2, 0, 1]), "PUBACK");
    drop(clients);
    let (status, _) = node.stop();
    assert!(status.success());
}
