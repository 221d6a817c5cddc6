//! Sparkplug B end to end: the real binary as a host application behind a
//! real Mosquitto, and a Sparkplug edge node simulated by this test (a
//! rumqttc client encoding payloads with the node's own prost messages):
//! births, data by exception by alias, a device death, a sequence gap →
//! the rebirth command on the broker, the edge's rebirth, an unknown alias
//! and a garbage payload, a stale NDEATH of an earlier session (old
//! `bdSeq`) ignored and the current one obeyed; the data read back over
//! GraphQL. The node's own host STATE is watched by a second client:
//! retained online while it runs (and again after a stray offline),
//! offline after a clean stop, and offline through its MQTT will after a
//! SIGKILL.

use crate::common;

use std::time::Duration;

use common::graphql::Gql;
use common::*;
use meshlet::sources::sparkplug::proto::{datatype, Metric, MetricValue, Payload};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const PRESS: &str = r#"
product: press
version: 1
domain: test
owner: test@example.com
key: press_id
fields:
  press_id:     { type: string, required: true }
  pressure_bar: { type: float }
  strokes:      { type: int }
  mode:         { type: string }
  online:       { type: bool }
sources:
  - sparkplug:
      group: plant
      edge_node: gw1
      online: online
      metrics:
        pressure_bar: Hydraulics/Pressure
        strokes: Counters/Strokes
        mode: Status/Mode
quality: { on_invalid: reject }
"#;

const DEADLINE: Duration = Duration::from_secs(30);

fn metric_by(name: Option<&str>, alias: u64, dt: Option<u32>, value: MetricValue) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: dt,
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    Payload {
        timestamp: Some(timestamp),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn bd_seq(value: u64) -> Metric {
    Metric {
        name: Some("bdSeq".to_string()),
        datatype: Some(datatype::UINT64),
        value: Some(MetricValue::LongValue(value)),
        ..Metric::default()
    }
}

/// The NBIRTH of session `bd` (the `bdSeq` its NDEATH will carry).
fn nbirth(bd: u64) -> Vec<u8> {
    payload(
        Some(0),
        vec![
            bd_seq(bd),
            metric_by(
                Some("Node Control/Rebirth"),
                0,
                Some(datatype::BOOLEAN),
                MetricValue::BooleanValue(false),
            ),
        ],
    )
}

/// The NDEATH (the edge's MQTT will) of session `bd`.
fn ndeath(bd: u64) -> Vec<u8> {
    payload(None, vec![bd_seq(bd)])
}

/// A client that watches `spBv1.0/STATE/#`: (topic, JSON payload,
/// retained) of every STATE message, retained ones included.
struct StateWatcher {
    states: mpsc::UnboundedReceiver<(String, Value, bool)>,
    _client: AsyncClient,
}

impl StateWatcher {
    async fn connect(port: u16, client_id: &str) -> StateWatcher {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, states) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let forward = |p: &rumqttc::Publish| {
                let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                tx.send((p.topic.clone(), json, p.retain)).is_ok()
            };
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if !forward(&p) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // The embedded broker goes away with its node. A
                        // last PUBLISH read together with the end of the
                        // stream is left in rumqttc's event queue behind
                        // the error: hand it on too.
                        for event in eventloop.state.events.drain(..) {
                            if let Event::Incoming(Packet::Publish(p)) = event {
                                forward(&p);
                            }
                        }
                        return;
                    }
                }
            }
        });
        client
            .subscribe("spBv1.0/STATE/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        StateWatcher {
            states,
            _client: client,
        }
    }

    /// The next STATE message with `online` as given (earlier ones, e.g.
    /// a retained state of a previous run, are skipped).
    async fn next(&mut self, online: bool) -> (String, Value, bool) {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let state = self.states.recv().await.expect("watcher connected");
                if state.1["online"] == json!(online) {
                    return state;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no STATE with online = {online}"))
    }
}

fn dbirth(seq: u64, pressure: f32) -> Vec<u8> {
    payload(
        Some(seq),
        vec![
            metric_by(
                Some("Hydraulics/Pressure"),
                1,
                Some(datatype::FLOAT),
                MetricValue::FloatValue(pressure),
            ),
            metric_by(
                Some("Counters/Strokes"),
                2,
                Some(datatype::UINT32),
                MetricValue::IntValue(10),
            ),
            metric_by(
                Some("Status/Mode"),
                3,
                Some(datatype::STRING),
                MetricValue::StringValue("auto".into()),
            ),
        ],
    )
}

/// The simulated edge node: publishes, and collects the NCMDs it gets.
struct Edge {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Edge {
    async fn connect(port: u16) -> Edge {
        let mut options = MqttOptions::new("sparkplug-edge-gw1", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = commands_tx.send(p.payload.to_vec());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe("spBv1.0/plant/NCMD/gw1", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(DEADLINE, subscribed.recv())
            .await
            .expect("the edge is subscribed to its NCMD topic");
        Edge { client, commands }
    }

    async fn publish(&self, topic: &str, bytes: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await
            .expect("publish");
    }
}

async fn metric_of(node: &NodeProcess, series: &str) -> f64 {
    let url = node.url("/metrics");
    let series = series.to_string();
    tokio::task::spawn_blocking(move || {
        let (_, body) = http_get(&url);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.rsplit_once(' ')
                    .filter(|(name, _)| *name == series)
                    .and_then(|(_, v)| v.parse().ok())
            })
            .unwrap_or(-1.0)
    })
    .await
    .expect("metrics read")
}

async fn press(gql: &Gql, id: &str) -> Value {
    gql.data(
        r#"query($id: String!) { press(press_id: $id) { press_id pressure_bar strokes mode online } }"#,
        json!({ "id": id }),
    )
    .await["press"]
        .clone()
}

/// Polls `check` until it holds (a deadline, not a timing assertion: the
/// node has no other way to tell that an unacknowledged-by-design QoS
/// path has been processed).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_edge_is_hosted_births_data_death_gap_rebirth() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/press.yaml"), PRESS).expect("write product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!(
            "data_dir = \"data\"\nproducts = [\"products\"]\n[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"{}\"\nclient_id = \"meshlet-host\"\n[sparkplug]\nhost_id = \"scada-main\"\n",
            broker.url()
        ),
    )
    .expect("write config");
    let mut watcher = StateWatcher::connect(broker.port, "state-watcher").await;
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let gql = Gql::new(&node);
    let mut edge = Edge::connect(broker.port).await;

    // Births. The node subscribes some time after it is ready; until it
    // has, births are lost, so the edge announces itself again (as a
    // Sparkplug edge does when a host shows up) until the press appears.
    until("the births reach the node", || async {
        edge.publish("spBv1.0/plant/NBIRTH/gw1", nbirth(0)).await;
        edge.publish("spBv1.0/plant/DBIRTH/gw1/press1", dbirth(1, 120.5))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        !press(&gql, "press1").await.is_null()
    })
    .await;
    assert_eq!(
        press(&gql, "press1").await,
        json!({ "press_id": "press1", "pressure_bar": 120.5, "strokes": 10, "mode": "auto", "online": true })
    );

    // Data by exception, by alias only: one metric changes, the rest stay.
    edge.publish(
        "spBv1.0/plant/DDATA/gw1/press1",
        payload(
            Some(2),
            vec![metric_by(None, 1, None, MetricValue::FloatValue(130.0))],
        ),
    )
    .await;
    until("the DDATA is merged", || async {
        press(&gql, "press1").await["pressure_bar"] == json!(130.0)
    })
    .await;
    assert_eq!(
        press(&gql, "press1").await,
        json!({ "press_id": "press1", "pressure_bar": 130.0, "strokes": 10, "mode": "auto", "online": true })
    );

    // The device's death certificate marks it offline, keeping its data.
    edge.publish("spBv1.0/plant/DDEATH/gw1/press1", payload(Some(3), vec![]))
        .await;
    until("the DDEATH marks the press offline", || async {
        press(&gql, "press1").await["online"] == json!(false)
    })
    .await;
    assert_eq!(press(&gql, "press1").await["pressure_bar"], json!(130.0));

    // A sequence gap (4, 5, 6 lost): the host asks for a rebirth.
    assert!(
        edge.commands.try_recv().is_err(),
        "no command before a problem"
    );
    edge.publish("spBv1.0/plant/NDATA/gw1", payload(Some(7), vec![]))
        .await;
    let command = tokio::time::timeout(DEADLINE, edge.commands.recv())
        .await
        .expect("an NCMD arrives")
        .expect("edge still connected");
    let command = Payload::decode(command.as_slice()).expect("the NCMD is a Sparkplug payload");
    assert_eq!(command.metrics.len(), 1);
    assert_eq!(
        command.metrics[0].name.as_deref(),
        Some("Node Control/Rebirth")
    );
    assert_eq!(command.metrics[0].datatype, Some(datatype::BOOLEAN));
    assert_eq!(
        command.metrics[0].value,
        Some(MetricValue::BooleanValue(true))
    );
    assert!(
        metric_of(
            &node,
            "meshlet_sparkplug_problems_total{problem=\"seq_gap\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric_of(&node, "meshlet_sparkplug_rebirth_requests_total").await >= 1.0);

    // The edge answers with new births: the press is back online.
    edge.publish("spBv1.0/plant/NBIRTH/gw1", nbirth(1)).await;
    edge.publish("spBv1.0/plant/DBIRTH/gw1/press1", dbirth(1, 99.0))
        .await;
    until("the rebirth brings the press back", || async {
        press(&gql, "press1").await["online"] == json!(true)
    })
    .await;
    assert_eq!(press(&gql, "press1").await["pressure_bar"], json!(99.0));

    // An alias no birth announced, and a payload that is not protobuf:
    // counted, and the node keeps serving.
    edge.publish(
        "spBv1.0/plant/DDATA/gw1/press1",
        payload(
            Some(2),
            vec![metric_by(None, 42, None, MetricValue::IntValue(1))],
        ),
    )
    .await;
    edge.publish("spBv1.0/plant/NDATA/gw1", b"\xff\xff not protobuf".to_vec())
        .await;
    until("both problems are counted", || async {
        metric_of(
            &node,
            "meshlet_sparkplug_problems_total{problem=\"unknown_alias\"}",
        )
        .await
            >= 1.0
            && metric_of(
                &node,
                "meshlet_sparkplug_problems_total{problem=\"bad_payload\"}",
            )
            .await
                >= 1.0
    })
    .await;
    assert_eq!(press(&gql, "press1").await["pressure_bar"], json!(99.0));

    // The will of session 0 delivered late (its connection timed out at
    // the broker after session 1 was born): not a death of session 1.
    edge.publish("spBv1.0/plant/NDEATH/gw1", ndeath(0)).await;
    until("the stale NDEATH is counted", || async {
        metric_of(
            &node,
            "meshlet_sparkplug_problems_total{problem=\"stale_death\"}",
        )
        .await
            >= 1.0
    })
    .await;
    // Data after it lands behind it (one connection, in order) and still
    // finds the device born: nothing was marked dead.
    edge.publish(
        "spBv1.0/plant/DDATA/gw1/press1",
        payload(
            Some(3),
            vec![metric_by(None, 1, None, MetricValue::FloatValue(101.0))],
        ),
    )
    .await;
    until("the DDATA after the stale NDEATH is merged", || async {
        press(&gql, "press1").await["pressure_bar"] == json!(101.0)
    })
    .await;
    assert_eq!(press(&gql, "press1").await["online"], json!(true));
    assert_eq!(press(&gql, "gw1").await["online"], json!(true));

    // The gateway itself is an entity of the product too (node messages
    // feed it when no `device` is set); its NDEATH takes its devices down.
    edge.publish("spBv1.0/plant/NDEATH/gw1", ndeath(1)).await;
    until("the NDEATH marks the press offline", || async {
        press(&gql, "press1").await["online"] == json!(false)
            && press(&gql, "gw1").await["online"] == json!(false)
    })
    .await;

    // The host's STATE: online while it ran; a clean stop says offline
    // with the same session timestamp.
    // (Delivered live, so without the retain flag; the late watcher
    // below sees it retained.)
    let (topic, online, _) = watcher.next(true).await;
    assert_eq!(topic, "spBv1.0/STATE/scada-main");
    let timestamp = online["timestamp"].as_u64().expect("a timestamp");
    // An offline on its topic while it runs (here published by hand, as a
    // late will of an earlier session would arrive): it answers online.
    let out = mosquitto_pub(
        broker.port,
        "spBv1.0/STATE/scada-main",
        br#"{"online":false,"timestamp":1}"#,
        1,
        true,
    );
    assert!(out.status.success());
    let (_, stale, _) = watcher.next(false).await;
    assert_eq!(stale["timestamp"], 1);
    let (_, again, _) = watcher.next(true).await;
    assert_eq!(again, json!({ "online": true, "timestamp": timestamp }));

    let (status, _) = node.stop();
    assert!(status.success());
    let (_, offline, _) = watcher.next(false).await;
    assert_eq!(offline, json!({ "online": false, "timestamp": timestamp }));

    // Restarted, it is online again (a new session); killed, the broker
    // publishes its will: offline, with the new session's timestamp.
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node restarts");
    let (_, online, _) = watcher.next(true).await;
    let timestamp = online["timestamp"].as_u64().expect("a timestamp");
    node.signal(libc::SIGKILL);
    let (topic, offline, _) = watcher.next(false).await;
    assert_eq!(topic, "spBv1.0/STATE/scada-main");
    assert_eq!(offline, json!({ "online": false, "timestamp": timestamp }));
    // Retained: a client arriving now learns the host is away.
    let mut late = StateWatcher::connect(broker.port, "late-watcher").await;
    let (_, state, retained) = late.next(false).await;
    assert!(retained);
    assert_eq!(state["timestamp"], json!(timestamp));
    drop(node);
}

/// The same host behind the embedded broker: the node is the broker, so
/// its rebirth command goes straight to the edge's subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_delivers_rebirth_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/press.yaml"), PRESS).expect("write product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"products\"]\n",
    )
    .expect("write config");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let gql = Gql::new(&node);
    let port = node.mqtt.expect("embedded broker runs").port();
    // The node is the broker: its STATE is retained from the start, under
    // the default host id `meshlet-<node id>`.
    let mut watcher = StateWatcher::connect(port, "state-watcher").await;
    let (topic, online, retained) = watcher.next(true).await;
    assert!(topic.starts_with("spBv1.0/STATE/meshlet-"), "{topic}");
    assert!(retained);
    let timestamp = online["timestamp"].as_u64().expect("a timestamp");
    let mut edge = Edge::connect(port).await;

    edge.publish("spBv1.0/plant/NBIRTH/gw1", nbirth(0)).await;
    edge.publish("spBv1.0/plant/DBIRTH/gw1/press2", dbirth(1, 50.0))
        .await;
    until("the births are stored", || async {
        press(&gql, "press2").await["pressure_bar"] == json!(50.0)
    })
    .await;
    assert!(
        edge.commands.try_recv().is_err(),
        "no command before a problem"
    );

    // DDATA with seq 9 after 1: a gap.
    edge.publish(
        "spBv1.0/plant/DDATA/gw1/press2",
        payload(
            Some(9),
            vec![metric_by(None, 1, None, MetricValue::FloatValue(55.0))],
        ),
    )
    .await;
    let command = tokio::time::timeout(DEADLINE, edge.commands.recv())
        .await
        .expect("an NCMD arrives")
        .expect("edge still connected");
    let command = Payload::decode(command.as_slice()).expect("the NCMD is a Sparkplug payload");
    assert_eq!(
        command.metrics[0].name.as_deref(),
        Some("Node Control/Rebirth")
    );
    assert_eq!(
        command.metrics[0].value,
        Some(MetricValue::BooleanValue(true))
    );
    // The data that did arrive is kept.
    until("the DDATA after the gap is stored", || async {
        press(&gql, "press2").await["pressure_bar"] == json!(55.0)
    })
    .await;

    // A clean stop: connected clients hear offline before the broker
    // closes their connections.
    let (status, _) = node.stop();
    assert!(status.success());
    let (topic_after, offline, _) = watcher.next(false).await;
    assert_eq!(topic_after, topic);
    assert_eq!(offline, json!({ "online": false, "timestamp": timestamp }));
}

/// A host id that is not one topic level is refused at start, by name.
#[test]
fn a_bad_host_id_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/press.yaml"), PRESS).expect("write product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"products\"]\n[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n[sparkplug]\nhost_id = \"plant/host\"\n",
    )
    .expect("write config");
    let out = run(
        dir.path(),
        &[
            "--config",
            "meshlet.toml",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("sparkplug.host_id `plant/host`"), "{err}");
}

/// A payload in a read group that is not Sparkplug protobuf is, under
/// `on_invalid: quarantine`, a quarantined payload like any other: kept
/// whole with its reason and its entity before the PUBACK, listed at
/// `/quarantine/press`, and counted. A payload for an edge node no source
/// reads is not this product's.
#[test]
fn an_undecodable_payload_is_quarantined_when_the_product_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(
        dir.path().join("products/press.yaml"),
        PRESS.replace(
            "quality: { on_invalid: reject }",
            "quality: { on_invalid: quarantine }",
        ),
    )
    .expect("write product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"products\"]\n",
    )
    .expect("write config");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let port = node.mqtt.expect("embedded broker runs").port();
    let garbage = b"\xff\xff not protobuf".to_vec();
    // QoS 1: mosquitto_pub returns after the PUBACK, which the node sends
    // only once the quarantine entry is durable.
    let out = mosquitto_pub(port, "spBv1.0/plant/DDATA/gw1/press7", &garbage, 1, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mosquitto_pub(port, "spBv1.0/plant/NDATA/other-gw", &garbage, 1, false);
    assert!(out.status.success(), "{}", stderr(&out));

    let (status, body) = http_get(&node.url("/quarantine/press"));
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["total"], json!(1), "{listed}");
    let entry = &listed["entries"][0];
    assert_eq!(entry["source"], json!("sparkplug:0"));
    assert_eq!(entry["topic"], json!("spBv1.0/plant/DDATA/gw1/press7"));
    assert_eq!(entry["payload_bytes"], json!(garbage.len()));
    assert!(
        entry["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("not a Sparkplug B protobuf payload")),
        "{entry}"
    );
    assert_eq!(
        metric(
            &node,
            "meshlet_ingest_records_total{product=\"press\",source=\"sparkplug:0\",outcome=\"quarantined\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &node,
            "meshlet_sparkplug_problems_total{problem=\"bad_payload\"}"
        ),
        Some(2.0)
    );
    drop(node);
}
