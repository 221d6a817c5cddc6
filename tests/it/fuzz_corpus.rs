//! The fuzz corpora, replayed in the normal test run on stable Rust.
//!
//! `tests/fuzz/` is a cargo-fuzz crate (nightly, libFuzzer) that CI does
//! not build; its minimised corpora are committed under
//! `tests/fuzz/corpus/<target>/`, together with the input of every crash
//! it found. This test feeds every one of those files to the same target
//! body the fuzzer runs (`tests/fuzz/targets.rs`, included below), so a
//! change that makes any of them panic, or breaks a target's invariant,
//! fails here without cargo-fuzz.
//!
//! `seeds` are the hand-made starting inputs of each target (valid
//! payloads, packets and definitions); `write_seeds` (ignored) writes them
//! into the corpus folders when a target is added.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use meshlet::sources::sparkplug::proto::{datatype, Metric, MetricValue, Payload};
use prost::Message;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, PubAck, Publish, Subscribe, Unsubscribe};
use rumqttc::mqttbytes::QoS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_replays_through_its_target() {
    let mut total = 0;
    for (target, body) in targets::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is unreadable: {e}", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{} is unreadable: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(
                outcome.is_ok(),
                "target {target} panics on {} (see the message above)",
                path.display()
            );
            files += 1;
        }
        assert!(files > 0, "corpus {} is empty", dir.display());
        total += files;
    }
    eprintln!("replayed {total} corpus files");
}

#[test]
fn every_seed_passes_its_target() {
    for (target, body) in targets::TARGETS {
        for seed in seeds(target) {
            body(&seed);
        }
    }
}

/// Writes the seeds into the corpus folders (`cargo test --test
/// fuzz_corpus -- --ignored write_seeds`), named by content like libFuzzer's.
#[test]
#[ignore = "writes into tests/fuzz/corpus; run by hand when adding a target"]
fn write_seeds() {
    for (target, _) in targets::TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (n, seed) in seeds(target).into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n:02}")), seed).expect("seed written");
        }
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    match target {
        "json" => text(&[
            r#"{"id":"m-1","t":{"c":21.5},"n":"hello","count":3,"on":true,"state":"ok","seen_at":"2024-05-01T12:00:00Z","ts":1714564800123}"#,
            r#"[{"id":"a","t":{"c":"19.0"},"count":"7","on":1},{"id":"b","state":"bad","extra":{"x":[1,2]}},{"t":{"c":200}}]"#,
            r#"{"id":"m-2","seen_at":1714564800,"extra":null,"note":null,"ts":"2024-05-01T14:00:00.5+02:00"}"#,
            "[1, \"x\", null, {\"id\": \"\"}]",
        ]),
        "csv" => text(&[
            "device,seen_at,count,temp,on,state,note\nm-1,2024-05-01T12:00:00Z,3,21.5,true,ok,\"a, quoted\nnote\"\n",
            "m-2,1714564800000,x,999,maybe,warn,\nm-3,,,,,,\n\"unterminated",
        ]),
        "telemetry" => text(&[
            r#"{"ts":1714564800000,"values":{"device":"m-1","temp":21.5,"count":2,"state":"fault"}}"#,
            r#"{"ts":"2024-05-01T12:00:00Z","values":[]}"#,
            r#"[{"values":{"device":"a"}},{"ts":-1,"values":{"device":"b","seen_at":"1e3"}}]"#,
        ]),
        "sparkplug" => vec![sparkplug_seed()],
        "row_filter" => text(&[
            "site == 'berlin'",
            "not (a > 3 or b <= -2.5e3) && c in ['x', \"y\", null] and d is not null",
            "tags contains 'red' || t >= '2024-05-01T00:00:00Z' and n not in [1, 2.0, true]",
            "x != null and (y == false or z < 9223372036854775807)",
            "t > now() - 7d and (_meta.lastSeen <= now()-1h30m or _meta.version >= 2)",
        ]),
        "mqtt_packet" => vec![mqtt_seed()],
        "mqtt5_packet" => vec![mqtt5_seed()],
        "product_definition" => {
            let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/examples");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
                .expect("schema/examples")
                .map(|e| e.expect("example").path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            files.sort();
            files
                .iter()
                .map(|p| std::fs::read(p).expect("example readable"))
                .collect()
        }
        other => panic!("no seeds for target {other}"),
    }
}

/// NBIRTH with aliases, NDATA by alias, DBIRTH, DDATA, DDEATH, NDEATH, in
/// the framing of `targets::sparkplug`.
fn sparkplug_seed() -> Vec<u8> {
    let metric = |name: Option<&str>, alias, dt, value| Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: dt,
        value: Some(value),
        ..Metric::default()
    };
    let payload = |seq, metrics| Payload {
        timestamp: Some(1_714_564_800_000),
        metrics,
        seq: Some(seq),
        ..Payload::default()
    };
    let frames: Vec<(u8, Payload)> = vec![
        (
            0,
            payload(
                0,
                vec![
                    metric(
                        Some("bdSeq"),
                        0,
                        Some(datatype::UINT64),
                        MetricValue::LongValue(1),
                    ),
                    metric(
                        Some("temp"),
                        1,
                        Some(datatype::DOUBLE),
                        MetricValue::DoubleValue(21.5),
                    ),
                    metric(
                        Some("count"),
                        2,
                        Some(datatype::INT32),
                        MetricValue::IntValue(u32::MAX),
                    ),
                ],
            ),
        ),
        (
            1,
            payload(
                1,
                vec![metric(None, 1, None, MetricValue::DoubleValue(22.0))],
            ),
        ),
        (
            2,
            payload(
                2,
                vec![metric(
                    Some("state"),
                    3,
                    Some(datatype::STRING),
                    MetricValue::StringValue("ok".into()),
                )],
            ),
        ),
        (
            3,
            payload(
                3,
                vec![metric(
                    Some("state"),
                    3,
                    None,
                    MetricValue::StringValue("warn".into()),
                )],
            ),
        ),
        (
            1,
            payload(
                9,
                vec![metric(None, 7, None, MetricValue::BooleanValue(true))],
            ),
        ),
        (4, payload(10, Vec::new())),
        (
            5,
            payload(
                0,
                vec![metric(
                    Some("bdSeq"),
                    0,
                    Some(datatype::UINT64),
                    MetricValue::LongValue(1),
                )],
            ),
        ),
    ];
    let mut out = Vec::new();
    for (kind, payload) in frames {
        let bytes = payload.encode_to_vec();
        out.push(kind);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// A client's session: CONNECT with a login and a will, SUBSCRIBE,
/// PUBLISH at each QoS, PUBACK, UNSUBSCRIBE, PINGREQ, DISCONNECT.
/// An MQTT 5 session's packets with properties: CONNECT, SUBSCRIBE with
/// options, PUBLISH with a topic alias and user properties, a bare
/// DISCONNECT.
fn mqtt5_seed() -> Vec<u8> {
    use rumqttc::v5::mqttbytes::v5::{
        Connect as Connect5, ConnectProperties, Filter, Packet as Packet5, Publish as Publish5,
        PublishProperties, Subscribe as Subscribe5,
    };
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let mut properties = ConnectProperties::new();
    properties.session_expiry_interval = Some(300);
    properties.receive_maximum = Some(10);
    properties.topic_alias_max = Some(4);
    let connect = Connect5 {
        keep_alive: 30,
        client_id: "device-5".into(),
        clean_start: false,
        properties: Some(properties),
    };
    let mut publish = Publish5::new(
        "plant/berlin/m1",
        QoS5::AtLeastOnce,
        r#"{"t":1}"#,
        Some(PublishProperties {
            topic_alias: Some(1),
            content_type: Some("application/json".into()),
            user_properties: vec![("ts".into(), "2024-05-01T12:00:00Z".into())],
            ..Default::default()
        }),
    );
    publish.pkid = 7;
    let mut subscribe = Subscribe5::new(Filter::new("plant/+/m1/#", QoS5::ExactlyOnce), None);
    subscribe.pkid = 1;
    let mut buffer = BytesMut::new();
    for packet in [
        Packet5::Connect(connect, None, None),
        Packet5::Subscribe(subscribe),
        Packet5::Publish(publish),
    ] {
        packet
            .write(&mut buffer, None)
            .expect("a seed packet encodes");
    }
    buffer.extend_from_slice(&[0xE0, 0x00]);
    buffer.to_vec()
}

fn mqtt_seed() -> Vec<u8> {
    let mut connect = Connect::new("device-1");
    connect.keep_alive = 30;
    connect.clean_session = false;
    connect.login = Some(Login::new("user", "secret"));
    let mut publish = Publish::new("plant/berlin/m1", QoS::AtLeastOnce, r#"{"t":1}"#);
    publish.pkid = 7;
    let mut exactly = Publish::new("a/b", QoS::ExactlyOnce, vec![0u8, 1, 2]);
    exactly.pkid = 8;
    exactly.retain = true;
    let mut subscribe = Subscribe::new("plant/+/m1/#", QoS::AtLeastOnce);
    subscribe.pkid = 1;
    let mut unsubscribe = Unsubscribe::new("plant/+/m1/#");
    unsubscribe.pkid = 2;
    let packets = vec![
        Packet::Connect(connect),
        Packet::Subscribe(subscribe),
        Packet::Publish(publish),
        Packet::Publish(exactly),
        Packet::Publish(Publish::new("x", QoS::AtMostOnce, Vec::new())),
        Packet::PubAck(PubAck::new(3)),
        Packet::Unsubscribe(unsubscribe),
        Packet::PingReq,
        Packet::Disconnect,
    ];
    let mut buffer = BytesMut::new();
    for packet in packets {
        packet
            .write(&mut buffer, usize::MAX)
            .expect("a seed packet encodes");
    }
    buffer.to_vec()
}
