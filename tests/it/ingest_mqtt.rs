//! MQTT ingestion end to end: the real binary, a real Mosquitto, real MQTT
//! clients (`mosquitto_pub` and rumqttc), and the store read back from disk
//! after the node stopped.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use meshlet::record::Value;
use meshlet::store::HistoryQuery;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

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
  - http: {}
quality: { on_invalid: quarantine }
"#;

/// A second product fed by the same topic: one message, two products.
const LATEST: &str = r#"
product: sensor_latest
version: 1
domain: test
owner: test@example.com
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  temp:      { type: float }
sources:
  - mqtt: { topic: "site/+/sensor/{sensor_id}", format: json }
quality: { on_invalid: reject }
"#;

/// The key comes from the payload here, so a payload can miss it.
const METER: &str = r#"
product: meter
version: 1
domain: test
owner: test@example.com
key: meter_id
fields:
  meter_id: { type: string, required: true }
  kwh:      { type: float }
sources:
  - mqtt: { topic: "meters/raw", format: json }
quality: { on_invalid: reject }
"#;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(products: &[(&str, &str)], extra_config: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
        for (name, yaml) in products {
            std::fs::write(
                dir.path().join("products").join(format!("{name}.yaml")),
                yaml,
            )
            .expect("write product");
        }
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

    fn node(&self) -> NodeBuilder {
        NodeBuilder::new(self.path())
            .arg("--config")
            .arg("meshlet.toml")
            .env("MESHLET_MQTT__EMBEDDED__LISTEN", "127.0.0.1:0")
    }

    fn start(&self) -> NodeProcess {
        self.node().start().expect("node starts")
    }
}

fn records(node: &NodeProcess, product: &str, source: &str, outcome: &str) -> f64 {
    metric(
        node,
        &format!(
            "meshlet_ingest_records_total{{product=\"{product}\",source=\"{source}\",outcome=\"{outcome}\"}}"
        ),
    )
    .unwrap_or(-1.0)
}

#[test]
fn embedded_broker_routes_one_message_to_every_matching_product() {
    let setup = Setup::new(&[("reading", READING), ("latest", LATEST)], "");
    let node = setup.start();
    let port = node.mqtt.expect("embedded broker runs").port();

    let out = mosquitto_pub(
        port,
        "site/berlin/sensor/s1",
        br#"{"temp": "21.5", "seq": 1, "ts": 1700000000, "status": "ok"}"#,
        1,
        false,
    );
    assert!(out.status.success(), "mosquitto_pub: {}", stderr(&out));
    let out = mosquitto_pub(port, "nobody/listens/here", b"{}", 1, false);
    assert!(out.status.success());

    // mosquitto_pub exits after the PUBACK, which comes only once durable.
    assert_eq!(records(&node, "sensor_reading", "mqtt:0", "accepted"), 1.0);
    assert_eq!(records(&node, "sensor_latest", "mqtt:0", "accepted"), 1.0);
    assert_eq!(
        metric(&node, "meshlet_ingest_unmatched_messages_total"),
        Some(1.0)
    );

    let (status, _) = node.stop();
    assert!(status.success());
    let store = open_store(&setup.path().join("data"));
    let s1 = store
        .get("sensor_reading", "s1")
        .expect("read")
        .expect("s1 stored");
    assert_eq!(
        s1.fields.get("temp"),
        Some(&Value::Float(21.5)),
        "\"21.5\" coerced to float"
    );
    assert_eq!(
        s1.fields.get("site"),
        Some(&Value::String("berlin".into())),
        "captured from the topic"
    );
    assert_eq!(s1.fields.get("seq"), Some(&Value::Int(1)));
    assert_eq!(
        s1.event_time.as_micros(),
        1_700_000_000_000_000,
        "event time from /ts (epoch seconds)"
    );
    assert!(store.get("sensor_latest", "s1").expect("read").is_some());
}

/// Publishes every message over one connection with QoS 1 and waits for
/// all PUBACKs; returns how many came.
fn publish_all(port: u16, client_id: &str, messages: &[(String, Vec<u8>)]) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(4 << 20, 4 << 20);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let to_send = messages.to_vec();
        let sender = tokio::spawn(async move {
            for (topic, payload) in to_send {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("queue publish");
            }
            client
        });
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked < messages.len() && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(err)) => panic!("MQTT connection failed: {err}"),
                Err(_) => break,
            }
        }
        let _ = sender.await;
        acked
    })
}

#[test]
fn bad_input_gets_its_policy_outcome_is_counted_and_loses_nothing_valid() {
    let setup = Setup::new(&[("reading", READING), ("meter", METER)], "");
    let mut node = setup.start();
    let port = node.mqtt.expect("embedded broker").port();
    let topic = "site/lyon/sensor/s2".to_string();
    let nested = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let oversized = format!(r#"{{"temp": 1, "pad": "{}"}}"#, "x".repeat(300 * 1024));
    let messages: Vec<(String, Vec<u8>)> = vec![
        (
            topic.clone(),
            br#"{"temp": 20, "seq": 1, "ts": 1700000001}"#.to_vec(),
        ),
        (topic.clone(), br#"{"temp": "#.to_vec()),
        (topic.clone(), vec![0xff, 0xfe, b'{', b'}']),
        (topic.clone(), oversized.into_bytes()),
        (topic.clone(), nested.into_bytes()),
        (
            topic.clone(),
            br#"{"temp": "hot", "seq": 9, "ts": 1700000002}"#.to_vec(),
        ),
        (
            topic.clone(),
            br#"{"temp": 500, "status": "melting", "ts": 1700000003}"#.to_vec(),
        ),
        ("meters/raw".to_string(), br#"{"kwh": 1.5}"#.to_vec()),
        ("nobody/listens".to_string(), b"hello".to_vec()),
        (
            topic.clone(),
            br#"{"temp": 22, "seq": 2, "ts": 1700000004}"#.to_vec(),
        ),
    ];
    let acked = publish_all(port, "bad-input-publisher", &messages);
    assert_eq!(
        acked,
        messages.len(),
        "every message is consumed and acknowledged"
    );

    assert_eq!(records(&node, "sensor_reading", "mqtt:0", "accepted"), 2.0);
    assert_eq!(
        records(&node, "sensor_reading", "mqtt:0", "quarantined"),
        6.0
    );
    assert_eq!(records(&node, "meter", "mqtt:0", "rejected"), 1.0);
    assert_eq!(
        metric(&node, "meshlet_ingest_unmatched_messages_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&node, "meshlet_ingest_invalid_total{product=\"meter\",source=\"mqtt:0\",rule=\"missing_key\"}"),
        Some(1.0)
    );

    // The quarantine keeps the raw payload and every reason.
    let (status, body) = http_get(&node.url("/quarantine/sensor_reading?limit=100"));
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["total"], 6);
    let reasons: Vec<String> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["reasons"]
                .as_array()
                .expect("reasons")
                .iter()
                .map(|r| r.as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    let joined = reasons.join("\n");
    for expected in ["JSON", "UTF-8", "limit", "deep", "temp", "status"] {
        assert!(
            joined.to_lowercase().contains(&expected.to_lowercase()),
            "no reason mentions {expected}:\n{joined}"
        );
    }
    let both = reasons
        .iter()
        .find(|r| r.contains("status"))
        .expect("the temp 500 entry");
    assert!(
        both.contains("temp"),
        "every reason of a record is kept, not just the first: {both}"
    );

    // A packet over the transport limit closes that connection only.
    let huge = vec![(topic.clone(), vec![b'x'; 2 << 20])];
    assert_eq!(publish_all_tolerant(port, "huge-publisher", &huge), 0);
    assert!(eventually(Duration::from_secs(5), || {
        metric(&node, "meshlet_broker_protocol_errors_total").unwrap_or(0.0) >= 1.0
    }));
    let after = vec![(
        topic.clone(),
        br#"{"temp": 23, "seq": 3, "ts": 1700000005}"#.to_vec(),
    )];
    assert_eq!(
        publish_all(port, "after-publisher", &after),
        1,
        "the node keeps serving"
    );
    let (status, _) = http_get(&node.url("/livez"));
    assert_eq!(status, 200);

    node.signal(libc::SIGTERM);
    assert!(node
        .wait_exit(Duration::from_secs(20))
        .expect("stops")
        .success());
    let store = open_store(&setup.path().join("data"));
    let history = store
        .history("sensor_reading", "s2", &HistoryQuery::default())
        .expect("history");
    let seqs: Vec<Option<&Value>> = history.iter().map(|e| e.fields.get("seq")).collect();
    assert_eq!(
        seqs,
        vec![
            Some(&Value::Int(1)),
            Some(&Value::Int(2)),
            Some(&Value::Int(3))
        ],
        "exactly the valid messages, in order"
    );
}

/// Like `publish_all`, but a dropped connection ends it quietly.
fn publish_all_tolerant(port: u16, client_id: &str, messages: &[(String, Vec<u8>)]) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        for (topic, payload) in messages {
            let _ = client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await;
        }
        let mut acked = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        acked
    })
}

#[test]
fn quarantined_payloads_replay_after_the_definition_is_fixed() {
    let setup = Setup::new(&[("reading", READING)], "");
    let node = setup.start();
    let port = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(
        port,
        "site/brno/sensor/hot1",
        br#"{"temp": 200, "ts": 1700000100}"#,
        1,
        false,
    );
    assert!(out.status.success());
    assert_eq!(
        records(&node, "sensor_reading", "mqtt:0", "quarantined"),
        1.0
    );
    let (status, _) = node.stop();
    assert!(status.success());

    let out = run(
        setup.path(),
        &["-c", "meshlet.toml", "quarantine", "list", "sensor_reading"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.starts_with("1 quarantined in sensor_reading"),
        "{listing}"
    );
    assert!(listing.contains("temp: 200 is above max 150"), "{listing}");
    assert!(listing.contains("topic site/brno/sensor/hot1"), "{listing}");

    // Still invalid under the old definition: nothing moves.
    let out = run(
        setup.path(),
        &[
            "-c",
            "meshlet.toml",
            "quarantine",
            "replay",
            "sensor_reading",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("replayed 0 of 1"), "{}", stdout(&out));

    // Fix the definition (the sensor range was wrong) and replay.
    let fixed = READING.replace("max: 150", "max: 250");
    std::fs::write(setup.path().join("products/reading.yaml"), fixed).expect("fix definition");
    let out = run(
        setup.path(),
        &[
            "-c",
            "meshlet.toml",
            "quarantine",
            "replay",
            "sensor_reading",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("replayed 1 of 1 quarantined payloads of sensor_reading (1 records written); 0 still invalid"),
        "{}",
        stdout(&out)
    );

    let store = open_store(&setup.path().join("data"));
    let hot = store
        .get("sensor_reading", "hot1")
        .expect("read")
        .expect("replayed record");
    assert_eq!(hot.fields.get("temp"), Some(&Value::Float(200.0)));
    assert_eq!(
        hot.fields.get("site"),
        Some(&Value::String("brno".into())),
        "captures were kept"
    );
    assert_eq!(store.quarantine_count("sensor_reading").expect("count"), 0);
}

#[test]
fn external_mosquitto_keeps_messages_for_the_node_while_it_is_down() {
    let broker = Mosquitto::start();
    let setup = Setup::new(
        &[("reading", READING)],
        &format!("[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"{}\"\nclient_id = \"gw-test\"\n", broker.url()),
    );
    // A retained last-known state, published before the node ever ran.
    let out = mosquitto_pub(
        broker.port,
        "site/berlin/sensor/r1",
        br#"{"temp": 5, "ts": 1700000200}"#,
        1,
        true,
    );
    assert!(out.status.success());

    let node = setup.start();
    assert!(node.mqtt.is_none(), "embedded broker disabled");
    assert!(
        eventually(Duration::from_secs(10), || {
            records(&node, "sensor_reading", "mqtt:0", "accepted") == 1.0
        }),
        "the retained state of an unknown entity is taken"
    );
    let out = mosquitto_pub(
        broker.port,
        "site/berlin/sensor/e1",
        br#"{"temp": 1, "seq": 1, "ts": 1700000300}"#,
        1,
        false,
    );
    assert!(out.status.success());
    assert!(eventually(Duration::from_secs(10), || {
        records(&node, "sensor_reading", "mqtt:0", "accepted") == 2.0
    }));
    let (status, _) = node.stop();
    assert!(status.success());

    // Published while the node is down: the broker queues them for the
    // node's persistent session.
    for seq in 2..=6 {
        let payload = format!(
            r#"{{"temp": {seq}, "seq": {seq}, "ts": {}}}"#,
            1_700_000_300 + seq
        );
        let out = mosquitto_pub(
            broker.port,
            "site/berlin/sensor/e1",
            payload.as_bytes(),
            1,
            false,
        );
        assert!(out.status.success());
    }
    let node = setup.start();
    assert!(
        eventually(Duration::from_secs(15), || {
            records(&node, "sensor_reading", "mqtt:0", "accepted") == 5.0
        }),
        "the five queued messages arrive after the restart"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            records(&node, "sensor_reading", "mqtt:0", "retained_known") == 1.0
        }),
        "the retained message comes again on resubscribe but is known state, not an event"
    );
    let (status, _) = node.stop();
    assert!(status.success());

    let store = open_store(&setup.path().join("data"));
    let history = store
        .history("sensor_reading", "e1", &HistoryQuery::default())
        .expect("history");
    let seqs: Vec<i64> = history
        .iter()
        .filter_map(|e| match e.fields.get("seq") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let r1 = store
        .history("sensor_reading", "r1", &HistoryQuery::default())
        .expect("history");
    assert_eq!(
        r1.len(),
        1,
        "retained state written once, not on every resubscribe"
    );
}

/// A minimal MQTT client over a raw socket, so a test can set what real
/// clients set only on their own (the DUP flag of a redelivery).
struct RawClient {
    stream: std::net::TcpStream,
    buffer: bytes::BytesMut,
}

impl RawClient {
    fn connect(port: u16, client_id: &str) -> RawClient {
        use rumqttc::mqttbytes::v4::{Connect, Packet as Raw};
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut client = RawClient {
            stream,
            buffer: bytes::BytesMut::new(),
        };
        client.send(&Raw::Connect(Connect::new(client_id)));
        match client.receive() {
            Raw::ConnAck(ack) => {
                assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    fn send(&mut self, packet: &rumqttc::mqttbytes::v4::Packet) {
        use std::io::Write;
        let mut out = bytes::BytesMut::new();
        packet.write(&mut out, usize::MAX).expect("encode");
        self.stream.write_all(&out).expect("send");
    }

    fn receive(&mut self) -> rumqttc::mqttbytes::v4::Packet {
        use std::io::Read;
        loop {
            match rumqttc::mqttbytes::v4::Packet::read(&mut self.buffer, 1 << 20) {
                Ok(packet) => return packet,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    let mut chunk = [0u8; 4096];
                    let n = self.stream.read(&mut chunk).expect("read");
                    assert!(n > 0, "connection closed");
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                Err(err) => panic!("bad packet: {err}"),
            }
        }
    }

    /// Publishes QoS 1 and waits for the PUBACK.
    fn publish(&mut self, topic: &str, payload: &[u8], pkid: u16, dup: bool) {
        use rumqttc::mqttbytes::v4::{Packet as Raw, Publish};
        let mut publish = Publish::new(
            topic,
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            payload.to_vec(),
        );
        publish.pkid = pkid;
        publish.dup = dup;
        self.send(&Raw::Publish(publish));
        match self.receive() {
            Raw::PubAck(ack) => assert_eq!(ack.pkid, pkid),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[test]
fn redeliveries_are_recognised_and_repeated_readings_are_not() {
    let setup = Setup::new(&[("latest", LATEST)], "");
    let node = setup.start();
    let port = node.mqtt.expect("embedded broker").port();
    let mut client = RawClient::connect(port, "raw-redelivery");
    // `sensor_latest` records have no event time: the same reading twice is
    // two observations...
    client.publish("site/a/sensor/x1", br#"{"temp": 20.5}"#, 1, false);
    client.publish("site/a/sensor/x1", br#"{"temp": 20.5}"#, 2, false);
    // ...but a redelivery (DUP set, as after a lost PUBACK) is not.
    client.publish("site/a/sensor/x1", br#"{"temp": 20.5}"#, 2, true);
    // A DUP-flagged message the node never saw is still taken.
    client.publish("site/a/sensor/x1", br#"{"temp": 21.0}"#, 3, true);
    assert_eq!(records(&node, "sensor_latest", "mqtt:0", "accepted"), 3.0);
    assert_eq!(records(&node, "sensor_latest", "mqtt:0", "duplicate"), 1.0);
    drop(client);
    let (status, _) = node.stop();
    assert!(status.success());
    let store = open_store(&setup.path().join("data"));
    let history = store
        .history("sensor_latest", "x1", &HistoryQuery::default())
        .expect("history");
    assert_eq!(history.len(), 3);
}

#[test]
fn a_repeated_message_with_its_event_time_is_written_once() {
    let setup = Setup::new(&[("reading", READING)], "");
    let node = setup.start();
    let port = node.mqtt.expect("embedded broker").port();
    let payload = br#"{"temp": 7, "seq": 1, "ts": "2024-05-01T12:00:00Z"}"#;
    for _ in 0..3 {
        let out = mosquitto_pub(port, "site/x/sensor/y1", payload, 1, false);
        assert!(out.status.success());
    }
    assert_eq!(records(&node, "sensor_reading", "mqtt:0", "accepted"), 1.0);
    assert_eq!(records(&node, "sensor_reading", "mqtt:0", "duplicate"), 2.0);
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn the_embedded_broker_enforces_credentials_and_the_connection_limit() {
    let setup = Setup::new(
        &[("reading", READING)],
        "[mqtt.embedded]\nmax_connections = 1\nusers = { sensor = \"s3cret\" }\n",
    );
    let node = setup.start();
    let port = node.mqtt.expect("embedded broker").port();
    let publish = |user: &str, password: &str| {
        std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                "site/a/sensor/c1",
            ])
            .args(["-m", r#"{"temp": 1}"#, "-u", user, "-P", password])
            .output()
            .expect("mosquitto_pub runs")
    };
    let out = publish("sensor", "wrong");
    assert!(!out.status.success(), "a wrong password is refused");
    let out = publish("sensor", "s3cret");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&node, "sensor_reading", "mqtt:0", "accepted"), 1.0);

    // One connection held open; the second is refused as unavailable.
    // (The publisher's connection must have ended first: until it has, it
    // holds the one slot, and the holder would be the one refused.)
    assert!(eventually(Duration::from_secs(5), || {
        metric(&node, "meshlet_broker_sockets") == Some(0.0)
    }));
    let mut holder = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "x",
            "-u",
            "sensor",
            "-P",
            "s3cret",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_sub runs");
    assert!(eventually(Duration::from_secs(5), || {
        metric(&node, "meshlet_broker_connections") == Some(1.0)
    }));
    let out = publish("sensor", "s3cret");
    assert!(!out.status.success(), "over the connection limit");
    assert!(metric(&node, "meshlet_broker_refused_total").unwrap_or(0.0) >= 2.0);
    let _ = holder.kill();
    let _ = holder.wait();
    let (status, _) = node.stop();
    assert!(status.success());
}

const FORMATS: &str = r#"
product: climate
version: 1
domain: test
owner: test@example.com
key: device
fields:
  device: { type: string, required: true }
  temp:   { type: float, min: -50, max: 80 }
  hum:    { type: int, min: 0, max: 100 }
  at:     { type: timestamp }
sources:
  - mqtt: { topic: "tele/{device}", format: telemetry }
  - mqtt: { topic: "csv/{device}", format: csv, columns: [temp, hum, at], event_time: /at }
  - mqtt: { topic: "raw/{device}/temp", format: raw, field: temp }
quality: { on_invalid: drop_field }
"#;

#[test]
fn telemetry_csv_and_raw_payloads_are_mapped_and_bad_fields_dropped() {
    let setup = Setup::new(&[("climate", FORMATS)], "");
    let node = setup.start();
    let port = node.mqtt.expect("embedded broker").port();
    let publish = |topic: &str, payload: &str| {
        let out = mosquitto_pub(port, topic, payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    publish(
        "tele/t1",
        r#"{"ts": 1700000000000, "values": {"temp": 21.5, "hum": "40"}}"#,
    );
    publish(
        "csv/c1",
        "19.25,55,2024-05-01T12:00:00Z\n18.5,56,2024-05-01T12:01:00Z",
    );
    publish("raw/r1/temp", "17.75");
    // drop_field: the out-of-range humidity goes, the rest stays.
    publish(
        "tele/t2",
        r#"{"ts": 1700000000000, "values": {"temp": 20, "hum": 140}}"#,
    );
    assert_eq!(records(&node, "climate", "mqtt:0", "accepted"), 2.0);
    assert_eq!(records(&node, "climate", "mqtt:1", "accepted"), 2.0);
    assert_eq!(records(&node, "climate", "mqtt:2", "accepted"), 1.0);
    let (status, _) = node.stop();
    assert!(status.success());

    let store = open_store(&setup.path().join("data"));
    let t1 = store.get("climate", "t1").expect("read").expect("t1");
    assert_eq!(t1.fields.get("temp"), Some(&Value::Float(21.5)));
    assert_eq!(
        t1.fields.get("hum"),
        Some(&Value::Int(40)),
        "\"40\" coerced to int"
    );
    assert_eq!(
        t1.event_time.as_millis(),
        1_700_000_000_000,
        "telemetry ts in epoch ms"
    );
    let c1 = store.get("climate", "c1").expect("read").expect("c1");
    assert_eq!(
        c1.fields.get("temp"),
        Some(&Value::Float(18.5)),
        "the later csv row wins"
    );
    assert_eq!(
        store
            .history("climate", "c1", &HistoryQuery::default())
            .expect("history")
            .len(),
        2,
        "one record per csv line"
    );
    let r1 = store.get("climate", "r1").expect("read").expect("r1");
    assert_eq!(r1.fields.get("temp"), Some(&Value::Float(17.75)));
    let t2 = store.get("climate", "t2").expect("read").expect("t2");
    assert_eq!(t2.fields.get("temp"), Some(&Value::Float(20.0)));
    assert!(!t2.fields.contains_key("hum"), "the bad field was dropped");
}
