//! The embedded broker as outside MQTT clients see it (issue 32), against
//! the real node: MQTT.js (npm `mqtt`, pinned in `tests/js/package-lock.json`)
//! and paho-mqtt (PyPI, pinned in `tests/py/requirements.txt`), both
//! installed by `tests/run.sh`, speaking MQTT 5 and 3.1.1; and raw MQTT 5
//! frames for the refusals a well-behaved client never provokes.
//!
//! A missing `node`, `npm ci` or paho-mqtt fails the test (tests/run.sh
//! installs them); it is never skipped.

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use common::hostile::{read_packet, socket};
use common::*;
use meshlet::record::{Timestamp, Value};
use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value as Json;

const READING: &str = r#"
product: sensor_reading
version: 1
domain: test
owner: test@example.com
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  site:      { type: string }
  temp:      { type: float, min: -40, max: 150 }
  seq:       { type: int }
  status:    { type: string, enum: [ok, warn, fault] }
sources:
  - mqtt: { topic: "site/{site}/sensor/{sensor_id}", format: json, event_time: /ts }
quality: { on_invalid: quarantine }
"#;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(extra_config: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
        std::fs::write(dir.path().join("products").join("reading.yaml"), READING)
            .expect("write product");
        std::fs::write(
            dir.path().join("meshlet.toml"),
            format!("data_dir = \"data\"\nproducts = [\"products\"]\n{extra_config}"),
        )
        .expect("write config");
        Setup { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn start(&self) -> NodeProcess {
        NodeBuilder::new(self.path())
            .arg("--config")
            .arg("meshlet.toml")
            .start()
            .expect("node starts")
    }
}

fn mqtt_addr(node: &NodeProcess) -> SocketAddr {
    node.mqtt.expect("embedded broker runs")
}

/// Runs `tests/js/mqtt_conformance.mjs` for `case` over MQTT `version`
/// ("5" or "4"); its JSON result.
fn mqtt_js(addr: SocketAddr, case: &str, version: &str) -> Json {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js");
    assert!(
        dir.join("node_modules").join("mqtt").is_dir(),
        "MQTT.js is not installed: run `npm ci` in {} (tests/run.sh does)",
        dir.display()
    );
    let out = Command::new("node")
        .arg("mqtt_conformance.mjs")
        .arg(format!("mqtt://{addr}"))
        .arg(case)
        .arg(version)
        .current_dir(&dir)
        .output()
        .expect("`node` must be installed: tests/run.sh installs it");
    parse_result("MQTT.js", case, &out)
}

/// Runs `tests/py/paho_conformance.py` for `case` over MQTT `version`.
fn paho(addr: SocketAddr, case: &str, version: &str) -> Json {
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
        .join("paho_conformance.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(case)
        .arg(version)
        .output()
        .expect("`python3` must be installed");
    parse_result("paho-mqtt", case, &out)
}

fn parse_result(client: &str, case: &str, out: &std::process::Output) -> Json {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{client} {case} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{client} {case} result ({e}): {stdout}"))
}

fn accepted(node: &NodeProcess) -> f64 {
    metric(
        node,
        "meshlet_ingest_records_total{product=\"sensor_reading\",source=\"mqtt:0\",outcome=\"accepted\"}",
    )
    .unwrap_or(0.0)
}

/// The issue's first point: MQTT 5 publishes were acknowledged and every
/// record quarantined (the property bytes read as payload). Now 500 QoS 1
/// publishes from MQTT.js over MQTT 5 (half through topic aliases) and
/// 500 over 3.1.1 are acknowledged and stored, none quarantined, and the
/// user properties and content type of a publish reach the pipeline.
#[test]
fn mqtt5_publishes_are_stored_with_their_properties() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);

    let v5 = mqtt_js(addr, "publish", "5");
    assert_eq!(v5["acked"], 501, "{v5}");
    let connack = &v5["connack"]["properties"];
    assert_eq!(connack["receiveMaximum"], 256, "{connack}");
    assert_eq!(connack["topicAliasMaximum"], 16, "{connack}");
    assert_eq!(connack["maximumPacketSize"], 1 << 20, "{connack}");
    assert_eq!(connack["sharedSubscriptionAvailable"], false, "{connack}");
    let v4 = mqtt_js(addr, "publish", "4");
    assert_eq!(v4["acked"], 500, "{v4}");
    // Acknowledged only once durable, so counted by now.
    assert_eq!(accepted(&node), 1_002.0);
    assert_eq!(
        metric(
            &node,
            "meshlet_ingest_records_total{product=\"sensor_reading\",source=\"mqtt:0\",outcome=\"quarantined\"}"
        )
        .unwrap_or(0.0),
        0.0
    );

    let (status, _) = node.stop();
    assert!(status.success());
    let store = open_store(&setup.path().join("data"));
    for sensor in 0..5 {
        let instance = store
            .get("sensor_reading", &format!("s{sensor}"))
            .expect("read")
            .expect("stored");
        assert_eq!(
            instance.fields.get("site"),
            Some(&Value::String("berlin".into()))
        );
    }
    let props = store
        .get("sensor_reading", "props")
        .expect("read")
        .expect("the NDJSON publish is stored");
    assert_eq!(
        props.fields.get("status"),
        Some(&Value::String("warn".into())),
        "a user property named like a field gives it"
    );
    assert_eq!(
        props.fields.get("seq"),
        Some(&Value::Int(1001)),
        "NDJSON: both lines"
    );
    assert_eq!(
        props.event_time,
        Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").expect("timestamp"),
        "the event time from the `ts` user property"
    );
}

/// Content type, user properties, response topic, correlation data and
/// the message expiry reach a subscriber; no-local holds back the
/// subscriber's own publish.
#[test]
fn mqtt5_properties_reach_subscribers() {
    let setup = Setup::new("");
    let node = setup.start();
    let result = mqtt_js(mqtt_addr(&node), "properties", "5");
    let got = &result["got"][0];
    assert_eq!(got["topic"], "req/ping", "{result}");
    let properties = &got["properties"];
    assert_eq!(properties["contentType"], "text/plain", "{result}");
    assert_eq!(properties["userProperties"]["trace"], "abc", "{result}");
    assert_eq!(properties["responseTopic"], "reply/props-pub", "{result}");
    assert_eq!(properties["correlationData"], "42", "{result}");
    assert!(
        properties["messageExpiryInterval"].as_u64().is_some(),
        "{result}"
    );
    assert_eq!(result["late"], serde_json::json!([]), "no-local: {result}");
    stop_cleanly(node);
}

/// Session expiry: a session asked for 300 s is present when its client
/// returns and holds its subscription; the default 0 s ends the session
/// with the connection.
#[test]
fn mqtt5_session_expiry_decides_the_session() {
    let setup = Setup::new("");
    let node = setup.start();
    let result = mqtt_js(mqtt_addr(&node), "session", "5");
    assert_eq!(result["first"], false, "{result}");
    assert_eq!(result["resumed"], true, "{result}");
    assert_eq!(
        result["delivered"],
        serde_json::json!(["reboot"]),
        "{result}"
    );
    assert_eq!(result["zeroFirst"], false, "{result}");
    assert_eq!(result["zeroAgain"], false, "{result}");
    stop_cleanly(node);
}

/// Will delay: the will of a client that vanished comes after its delay;
/// the will of one that came back within it never comes.
#[test]
fn mqtt5_will_waits_for_its_delay_and_a_return_cancels_it() {
    let setup = Setup::new("");
    let node = setup.start();
    let result = mqtt_js(mqtt_addr(&node), "will", "5");
    assert_eq!(
        result["wills"],
        serde_json::json!(["wills/will-gone"]),
        "{result}"
    );
    let after = result["arrivals"][0]["after"].as_u64().unwrap_or(0);
    assert!(after >= 1_900, "the will waited its 2 s delay: {result}");
    stop_cleanly(node);
}

/// QoS over MQTT 5 with MQTT.js: QoS 2 asked is granted, and QoS 1
/// publishes made while the persistent session's client was away reach it
/// when it returns, in order, at QoS 1.
#[test]
fn mqtt5_qos1_deliveries_wait_for_the_client_to_return() {
    let setup = Setup::new("");
    let node = setup.start();
    let result = mqtt_js(mqtt_addr(&node), "offline", "5");
    assert_eq!(result["granted"], serde_json::json!([2]), "{result}");
    assert_eq!(result["sessionPresent"], true, "{result}");
    let got: Vec<(String, u64)> = result["got"]
        .as_array()
        .map(|got| {
            got.iter()
                .map(|m| {
                    (
                        m["payload"].as_str().unwrap_or("").to_string(),
                        m["qos"].as_u64().unwrap_or(9),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        got,
        vec![("one".into(), 1), ("two".into(), 1), ("three".into(), 1)],
        "{result}"
    );
    stop_cleanly(node);
}

/// Message expiry: a retained message is delivered while its expiry
/// interval lasts, and not after.
#[test]
fn mqtt5_retained_messages_expire() {
    let setup = Setup::new("");
    let node = setup.start();
    let result = mqtt_js(mqtt_addr(&node), "expiry", "5");
    assert_eq!(
        result["fresh"],
        serde_json::json!(["exp/a", "exp/b"]),
        "{result}"
    );
    assert_eq!(result["later"], serde_json::json!(["exp/b"]), "{result}");
    stop_cleanly(node);
}

/// The client's receive maximum bounds the QoS 1 deliveries in flight to
/// it: with 2, the third waits for a PUBACK.
#[test]
fn mqtt5_deliveries_respect_the_clients_receive_maximum() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);
    let mut stream = socket(addr, Duration::from_secs(5));
    let mut properties = ConnectProperties::new();
    properties.receive_maximum = Some(2);
    let connect = Connect {
        keep_alive: 60,
        client_id: "small-window".into(),
        clean_start: true,
        properties: Some(properties),
    };
    stream
        .write_all(&encode(Packet::Connect(connect, None, None)))
        .expect("CONNECT");
    let (first, _) = read_packet(&mut stream).expect("CONNACK");
    assert_eq!(first, 0x20);
    let subscribe = rumqttc::v5::mqttbytes::v5::Subscribe::new(
        rumqttc::v5::mqttbytes::v5::Filter::new("win/#", QoS::AtLeastOnce),
        None,
    );
    let mut subscribe = subscribe;
    subscribe.pkid = 1;
    stream
        .write_all(&encode(Packet::Subscribe(subscribe)))
        .expect("SUBSCRIBE");
    let (first, _) = read_packet(&mut stream).expect("SUBACK");
    assert_eq!(first, 0x90);
    for i in 0..3 {
        publish_acked(addr, "win-pub", &format!("win/{i}"), b"x");
    }
    let mut pkids = Vec::new();
    for _ in 0..2 {
        let (first, body) = read_packet(&mut stream).expect("delivery");
        assert_eq!(first & 0xF6, 0x32, "QoS 1 PUBLISH: {first:#x}");
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        pkids.push(u16::from_be_bytes([body[2 + len], body[3 + len]]));
    }
    // The third is held back while two are unacknowledged.
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    assert!(read_packet(&mut stream).is_none(), "a third in flight");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut puback = BytesMut::new();
    Packet::PubAck(rumqttc::v5::mqttbytes::v5::PubAck {
        pkid: pkids[0],
        reason: rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        properties: None,
    })
    .write(&mut puback, None)
    .expect("encode");
    stream.write_all(&puback).expect("PUBACK");
    let (first, _) = read_packet(&mut stream).expect("the third, after a PUBACK");
    assert_eq!(first & 0xF6, 0x32);
    stop_cleanly(node);
}

/// A delivery larger than the subscriber's maximum packet size is not
/// sent to it (and counted), smaller ones are.
#[test]
fn mqtt5_deliveries_respect_the_clients_maximum_packet_size() {
    let setup = Setup::new("");
    let node = setup.start();
    let result = mqtt_js(mqtt_addr(&node), "maxpacket", "5");
    assert_eq!(result["got"], serde_json::json!(["big/two"]), "{result}");
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(&node, "meshlet_broker_deliveries_dropped_total").unwrap_or(0.0) >= 1.0
        }),
        "the oversized delivery is counted"
    );
    stop_cleanly(node);
}

/// paho-mqtt, MQTT 5 and 3.1.1: pub/sub at each QoS, retained set and
/// cleared, `$`-topics kept from `#`, unsubscribe, and (5) a zero-length
/// client id assigned by the server.
#[test]
fn paho_clients_over_mqtt5_and_3_1_1() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);
    for version in ["5", "4"] {
        let result = paho(addr, "basics", version);
        assert_eq!(
            result["received"],
            serde_json::json!(["q/0", "q/1", "q/2"]),
            "{version}: {result}"
        );
        assert_eq!(result["retained"], "kept", "{version}: {result}");
        assert_eq!(
            result["cleared"],
            serde_json::json!([]),
            "{version}: {result}"
        );
        assert_eq!(
            result["dollar_by_hash"],
            serde_json::json!([]),
            "{version}: {result}"
        );
        assert_eq!(
            result["dollar_by_name"],
            serde_json::json!(["$app/status"]),
            "{version}: {result}"
        );
        assert_eq!(
            result["after_unsubscribe"],
            serde_json::json!([]),
            "{version}: {result}"
        );
        assert_eq!(result["anonymous_accepted"], true, "{version}: {result}");
        if version == "5" {
            let assigned = result["assigned_id"].as_str().unwrap_or("");
            assert!(assigned.starts_with("meshlet-anon-"), "{result}");
        }
    }
    stop_cleanly(node);
}

/// Subscribe failure: a user under `subscribe_acl` subscribing beyond its
/// patterns is refused — 0x87 (not authorized) in MQTT 5, 0x80 in 3.1.1 —
/// and counted; within them it is granted.
#[test]
fn paho_subscriptions_beyond_the_users_acl_fail() {
    let setup = Setup::new(
        "[mqtt.embedded]\nusers = { sensor = \"s3cret\" }\nsubscribe_acl = { sensor = [\"cmd/sensor/#\"] }\n",
    );
    let node = setup.start();
    let addr = mqtt_addr(&node);
    for (version, refused) in [("5", 0x87), ("4", 0x80)] {
        let result = paho(addr, "acl", version);
        assert_eq!(
            result["within"],
            serde_json::json!([1]),
            "{version}: {result}"
        );
        assert_eq!(
            result["beyond"],
            serde_json::json!([refused]),
            "{version}: {result}"
        );
    }
    assert_eq!(
        metric(&node, "meshlet_broker_subscriptions_refused_total"),
        Some(2.0)
    );
    stop_cleanly(node);
}

fn encode(packet: Packet) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    packet.write(&mut buffer, None).expect("encode");
    buffer.to_vec()
}

/// A raw MQTT 5 connection: the socket after a successful CONNACK.
fn connect_v5(addr: SocketAddr, client_id: &str) -> std::net::TcpStream {
    let mut stream = socket(addr, Duration::from_secs(5));
    let connect = Connect {
        keep_alive: 60,
        client_id: client_id.into(),
        clean_start: true,
        properties: Some(ConnectProperties::new()),
    };
    stream
        .write_all(&encode(Packet::Connect(connect, None, None)))
        .expect("send CONNECT");
    let (first, body) = read_packet(&mut stream).expect("CONNACK");
    assert_eq!(first, 0x20, "CONNACK");
    assert_eq!(body.get(1), Some(&0), "accepted: {body:?}");
    stream
}

fn publish_v5(topic: &str, qos: QoS, pkid: u16, alias: Option<u16>) -> Vec<u8> {
    let mut publish = Publish::new(
        topic,
        qos,
        br#"{"temp": 1}"#.to_vec(),
        Some(PublishProperties {
            topic_alias: alias,
            ..Default::default()
        }),
    );
    publish.pkid = pkid;
    encode(Packet::Publish(publish))
}

/// The server DISCONNECT an MQTT 5 client is closed with: (reason code).
fn disconnect_reason(stream: &mut std::net::TcpStream) -> Option<u8> {
    loop {
        let (first, body) = read_packet(stream)?;
        if first == 0xE0 {
            return body.first().copied();
        }
    }
}

/// What a conforming client never does, refused with the MQTT 5 reason:
/// a topic alias beyond the maximum (0x94), one used before it was set
/// (0x82), silence past the keep-alive (0x8D), a packet over the maximum
/// packet size (0x95). (More than the
/// receive maximum unacknowledged is met with backpressure, not a
/// DISCONNECT: see `sources::mqtt::broker::v5`.)
#[test]
fn mqtt5_violations_get_a_disconnect_with_their_reason() {
    let setup = Setup::new("[mqtt.embedded]\nmax_packet_bytes = 4096\n");
    let node = setup.start();
    let addr = mqtt_addr(&node);

    let mut stream = connect_v5(addr, "alias-too-high");
    stream
        .write_all(&publish_v5("site/a/sensor/b", QoS::AtMostOnce, 0, Some(17)))
        .expect("send");
    assert_eq!(disconnect_reason(&mut stream), Some(0x94));

    let mut stream = connect_v5(addr, "alias-unknown");
    stream
        .write_all(&publish_v5("", QoS::AtMostOnce, 0, Some(3)))
        .expect("send");
    assert_eq!(disconnect_reason(&mut stream), Some(0x82));

    // Keep-alive 1 s and silence: DISCONNECT 0x8D after one and a half.
    let mut stream = socket(addr, Duration::from_secs(5));
    let connect = Connect {
        keep_alive: 1,
        client_id: "silent".into(),
        clean_start: true,
        properties: Some(ConnectProperties::new()),
    };
    stream
        .write_all(&encode(Packet::Connect(connect, None, None)))
        .expect("send CONNECT");
    let (first, _) = read_packet(&mut stream).expect("CONNACK");
    assert_eq!(first, 0x20);
    assert_eq!(
        disconnect_reason(&mut stream),
        Some(0x8D),
        "keep-alive timeout"
    );

    let mut stream = connect_v5(addr, "too-large");
    let mut big = Publish::new("site/a/sensor/b", QoS::AtMostOnce, vec![b' '; 8000], None);
    big.pkid = 0;
    stream
        .write_all(&encode(Packet::Publish(big)))
        .expect("send");
    assert_eq!(disconnect_reason(&mut stream), Some(0x95));
    stop_cleanly(node);
}

mod raw311 {
    //! MQTT 3.1.1 frames for what a test must see byte by byte: QoS
    //! grants, DUP flags, packet ids.
    use super::*;
    use rumqttc::mqttbytes::v4::{
        Packet as P4, PubAck, PubComp, PubRec, Subscribe, SubscribeFilter,
    };
    use rumqttc::mqttbytes::QoS as Q4;

    pub fn encode(packet: P4) -> Vec<u8> {
        let mut buffer = BytesMut::new();
        packet.write(&mut buffer, usize::MAX).expect("encode");
        buffer.to_vec()
    }

    pub fn subscribe(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut subscribe = Subscribe::new_many(filters.iter().map(|(f, q)| {
            let qos = match q {
                0 => Q4::AtMostOnce,
                1 => Q4::AtLeastOnce,
                _ => Q4::ExactlyOnce,
            };
            SubscribeFilter::new(f.to_string(), qos)
        }));
        subscribe.pkid = pkid;
        encode(P4::Subscribe(subscribe))
    }

    pub fn puback(pkid: u16) -> Vec<u8> {
        encode(P4::PubAck(PubAck::new(pkid)))
    }

    pub fn pubrec(pkid: u16) -> Vec<u8> {
        encode(P4::PubRec(PubRec::new(pkid)))
    }

    pub fn pubcomp(pkid: u16) -> Vec<u8> {
        encode(P4::PubComp(PubComp::new(pkid)))
    }

    /// A PUBLISH as read by `read_packet`: (flags, topic, pkid, payload).
    pub fn parse_publish(first: u8, body: &[u8]) -> (u8, String, u16, Vec<u8>) {
        assert_eq!(first >> 4, 3, "a PUBLISH: {first:#x}");
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + len].to_vec()).expect("topic");
        let qos = (first >> 1) & 3;
        let (pkid, rest) = if qos > 0 {
            (
                u16::from_be_bytes([body[2 + len], body[3 + len]]),
                &body[4 + len..],
            )
        } else {
            (0, &body[2 + len..])
        };
        (first & 0x0f, topic, pkid, rest.to_vec())
    }
}

use common::hostile::{mqtt_connect, publish_frame};
use rumqttc::mqttbytes::QoS as Q4;

/// Publishes one QoS 1 message over a raw 3.1.1 connection and waits for
/// its PUBACK (so it was routed before this returns).
fn publish_acked(addr: SocketAddr, client: &str, topic: &str, payload: &[u8]) {
    let (mut stream, connack) = mqtt_connect(addr, client, true);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]));
    stream
        .write_all(&publish_frame(
            topic,
            payload.to_vec(),
            Q4::AtLeastOnce,
            1,
            false,
        ))
        .expect("publish");
    let (first, _) = read_packet(&mut stream).expect("PUBACK");
    assert_eq!(first, 0x40, "PUBACK");
}

/// The issue's third point: SUBACK granted QoS 0 whatever was asked, so a
/// command to a briefly offline device was lost. Now QoS 1 is granted, a
/// delivery the device did not acknowledge is resent with DUP and the same
/// packet id when it reconnects to its session, and what came while it was
/// away is queued for it, in order.
#[test]
fn qos1_deliveries_wait_for_an_away_device_and_are_resent_with_dup() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);

    let (mut device, connack) = mqtt_connect(addr, "dev-1", false);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]));
    device
        .write_all(&raw311::subscribe(1, &[("cmd/dev-1", 1)]))
        .expect("subscribe");
    assert_eq!(
        common::hostile::read_n(&mut device, 5),
        Some(vec![0x90, 3, 0, 1, 0x01]),
        "QoS 1 granted"
    );
    publish_acked(addr, "app-1", "cmd/dev-1", b"one");
    let (first, body) = read_packet(&mut device).expect("delivery");
    let (flags, topic, pkid, payload) = raw311::parse_publish(first, &body);
    assert_eq!(
        (flags, topic.as_str(), payload.as_slice()),
        (0x02, "cmd/dev-1", &b"one"[..])
    );
    // Gone without PUBACK; once the broker saw it go, what comes is
    // queued for the session.
    drop(device);
    assert!(eventually(Duration::from_secs(5), || {
        metric(&node, "meshlet_broker_connections").unwrap_or(1.0) == 0.0
    }));
    publish_acked(addr, "app-1", "cmd/dev-1", b"two");

    let (mut device, connack) = mqtt_connect(addr, "dev-1", false);
    assert_eq!(connack, Some(vec![0x20, 2, 1, 0]), "session present");
    let (first, body) = read_packet(&mut device).expect("resend");
    let (flags, _, again, payload) = raw311::parse_publish(first, &body);
    assert_eq!(
        (flags, again, payload.as_slice()),
        (0x0A, pkid, &b"one"[..]),
        "DUP, same id"
    );
    device.write_all(&raw311::puback(again)).expect("puback");
    let (first, body) = read_packet(&mut device).expect("queued while away");
    let (flags, _, next, payload) = raw311::parse_publish(first, &body);
    assert_eq!((flags, payload.as_slice()), (0x02, &b"two"[..]));
    device.write_all(&raw311::puback(next)).expect("puback");
    stop_cleanly(node);
}

/// QoS 1/2 deliveries held for an away session are bounded in bytes; the
/// ones beyond are dropped and counted, the first ones kept in order.
#[test]
fn an_away_sessions_queue_is_bounded_and_its_drops_counted() {
    let setup = Setup::new("[mqtt.embedded]\nmax_queued_bytes = 1000\n");
    let node = setup.start();
    let addr = mqtt_addr(&node);
    let (mut device, _) = mqtt_connect(addr, "dev-2", false);
    device
        .write_all(&raw311::subscribe(1, &[("cmd/dev-2", 1)]))
        .expect("subscribe");
    assert_eq!(
        common::hostile::read_n(&mut device, 5),
        Some(vec![0x90, 3, 0, 1, 0x01])
    );
    drop(device);
    // The session is away once the broker saw the socket close: a
    // publish to it from then on is queued (or dropped), never sent.
    assert!(eventually(Duration::from_secs(5), || {
        metric(&node, "meshlet_broker_connections").unwrap_or(1.0) == 0.0
    }));
    for i in 0..20 {
        publish_acked(addr, "app-2", "cmd/dev-2", format!("{i:0>100}").as_bytes());
    }
    let dropped = metric(&node, "meshlet_broker_deliveries_dropped_total").unwrap_or(0.0);
    assert!(
        dropped >= 10.0,
        "about half of 20 x 109 bytes fit in 1000: {dropped}"
    );
    let (mut device, connack) = mqtt_connect(addr, "dev-2", false);
    assert_eq!(connack, Some(vec![0x20, 2, 1, 0]));
    let mut got = Vec::new();
    while got.len() < 20 - dropped as usize {
        let (first, body) = read_packet(&mut device).expect("queued delivery");
        let (_, _, pkid, payload) = raw311::parse_publish(first, &body);
        device.write_all(&raw311::puback(pkid)).expect("puback");
        got.push(String::from_utf8(payload).expect("text"));
    }
    let expected: Vec<String> = (0..got.len()).map(|i| format!("{i:0>100}")).collect();
    assert_eq!(got, expected, "the oldest kept, in order");
    stop_cleanly(node);
}

/// The issue's sixth point, MQTT 3.1.1 §3.3.5: a client whose
/// subscriptions overlap gets one message, at the highest QoS granted
/// among the matching ones (here 2, with its PUBREC/PUBREL/PUBCOMP).
#[test]
fn overlapping_subscriptions_get_one_message_at_the_highest_qos() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);
    let (mut client, _) = mqtt_connect(addr, "overlap", true);
    client
        .write_all(&raw311::subscribe(7, &[("ov/#", 0), ("ov/a", 2)]))
        .expect("subscribe");
    assert_eq!(
        common::hostile::read_n(&mut client, 6),
        Some(vec![0x90, 4, 0, 7, 0x00, 0x02])
    );
    let (mut publisher, _) = mqtt_connect(addr, "overlap-pub", true);
    publisher
        .write_all(&publish_frame(
            "ov/a",
            b"both".to_vec(),
            Q4::ExactlyOnce,
            1,
            false,
        ))
        .expect("publish");
    let (first, _) = read_packet(&mut publisher).expect("PUBREC");
    assert_eq!(first, 0x50);
    let (first, body) = read_packet(&mut client).expect("delivery");
    let (flags, topic, pkid, _) = raw311::parse_publish(first, &body);
    assert_eq!((flags, topic.as_str()), (0x04, "ov/a"), "QoS 2");
    client.write_all(&raw311::pubrec(pkid)).expect("pubrec");
    let (first, body) = read_packet(&mut client).expect("PUBREL");
    assert_eq!((first, body), (0x62, pkid.to_be_bytes().to_vec()));
    client.write_all(&raw311::pubcomp(pkid)).expect("pubcomp");
    // Only `ov/#` matches this one: QoS 0. Had `ov/a` come twice, the
    // second copy would be before it.
    publisher
        .write_all(&publish_frame(
            "ov/b",
            b"one".to_vec(),
            Q4::AtLeastOnce,
            2,
            false,
        ))
        .expect("publish");
    let (first, body) = read_packet(&mut client).expect("next delivery");
    let (flags, topic, _, _) = raw311::parse_publish(first, &body);
    assert_eq!(
        (flags, topic.as_str()),
        (0x00, "ov/b"),
        "the next is ov/b, at QoS 0"
    );
    stop_cleanly(node);
}

/// The issue's fifth point: retained fan-out was cut at 1,023 messages per
/// subscription. A wildcard subscription now gets all 5,000.
#[test]
fn a_wildcard_subscription_gets_all_5000_retained_messages() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);
    let (mut publisher, _) = mqtt_connect(addr, "retainer", true);
    let mut frames = Vec::new();
    for i in 0..5_000 {
        frames.extend(publish_frame(
            &format!("fan/{i}"),
            format!("{i}").into_bytes(),
            Q4::AtMostOnce,
            0,
            true,
        ));
    }
    // A QoS 1 fence: its PUBACK comes after everything before it was read.
    frames.extend(publish_frame(
        "fan/fence",
        b"f".to_vec(),
        Q4::AtLeastOnce,
        1,
        false,
    ));
    publisher.write_all(&frames).expect("publish");
    let (first, _) = read_packet(&mut publisher).expect("PUBACK");
    assert_eq!(first, 0x40);

    let (mut subscriber, _) = mqtt_connect(addr, "fan-sub", true);
    subscriber
        .write_all(&raw311::subscribe(1, &[("fan/#", 0)]))
        .expect("subscribe");
    let (first, _) = read_packet(&mut subscriber).expect("SUBACK");
    assert_eq!(first, 0x90);
    let mut topics = std::collections::HashSet::new();
    while topics.len() < 5_000 {
        match read_packet(&mut subscriber) {
            Some((first, body)) => {
                let (flags, topic, _, _) = raw311::parse_publish(first, &body);
                assert_eq!(flags & 1, 1, "sent as retained");
                topics.insert(topic);
            }
            None => break,
        }
    }
    assert_eq!(topics.len(), 5_000, "every retained message, none cut");
    stop_cleanly(node);
}

/// The issue's fourth point: retained messages lived in memory only and
/// were gone after a restart. Now they are kept in the store: a set one
/// comes back after the node restarted, a cleared one does not.
#[test]
fn retained_messages_survive_a_restart() {
    let setup = Setup::new("");
    let node = setup.start();
    let addr = mqtt_addr(&node);
    let (mut publisher, _) = mqtt_connect(addr, "retainer", true);
    let mut frames = Vec::new();
    frames.extend(publish_frame(
        "keep/a",
        b"stays".to_vec(),
        Q4::AtLeastOnce,
        1,
        true,
    ));
    frames.extend(publish_frame(
        "keep/b",
        b"goes".to_vec(),
        Q4::AtLeastOnce,
        2,
        true,
    ));
    frames.extend(publish_frame(
        "keep/b",
        Vec::new(),
        Q4::AtLeastOnce,
        3,
        true,
    ));
    publisher.write_all(&frames).expect("publish");
    for _ in 0..3 {
        let (first, _) = read_packet(&mut publisher).expect("PUBACK");
        assert_eq!(first, 0x40);
    }
    drop(publisher);
    stop_cleanly(node);

    let node = setup.start();
    let (mut subscriber, _) = mqtt_connect(mqtt_addr(&node), "reader", true);
    subscriber
        .write_all(&raw311::subscribe(1, &[("keep/#", 1)]))
        .expect("subscribe");
    let (first, _) = read_packet(&mut subscriber).expect("SUBACK");
    assert_eq!(first, 0x90);
    let (first, body) = read_packet(&mut subscriber).expect("the retained message");
    let (flags, topic, pkid, payload) = raw311::parse_publish(first, &body);
    assert_eq!(
        (flags, topic.as_str(), payload.as_slice()),
        (0x03, "keep/a", &b"stays"[..]),
        "retained, at QoS 1"
    );
    subscriber.write_all(&raw311::puback(pkid)).expect("puback");
    // Nothing for keep/b: a fence publish on the same subscription comes
    // next.
    publish_acked(mqtt_addr(&node), "fence", "keep/fence", b"f");
    let (first, body) = read_packet(&mut subscriber).expect("fence");
    let (_, topic, _, _) = raw311::parse_publish(first, &body);
    assert_eq!(topic, "keep/fence", "the cleared keep/b did not come back");
    stop_cleanly(node);
}
