//! Sparkplug B end to end: the real binary as a host application behind a
//! real Mosquitto, and a Sparkplug edge node simulated by this test (a
//! rumqttc client encoding payloads with the node's own prost messages):
//! births, data by exception by alias, a device death, a sequence gap →
//! the rebirth command on the broker, the edge's rebirth, an unknown alias
//! and a garbage payload; the data read back over GraphQL.

mod common;

use std::time::Duration;

use common::graphql::Gql;
use common::*;
use meshlet::ingest::sparkplug_proto::{datatype, Metric, MetricValue, Payload};
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

fn nbirth() -> Vec<u8> {
    payload(
        Some(0),
        vec![metric_by(
            Some("Node Control/Rebirth"),
            0,
            Some(datatype::BOOLEAN),
            MetricValue::BooleanValue(false),
        )],
    )
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
            "data_dir = \"data\"\nproducts = [\"products\"]\n[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"{}\"\nclient_id = \"meshlet-host\"\n",
            broker.url()
        ),
    )
    .expect("write config");
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
        edge.publish("spBv1.0/plant/NBIRTH/gw1", nbirth()).await;
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
    edge.publish("spBv1.0/plant/NBIRTH/gw1", nbirth()).await;
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

    // The gateway itself is an entity of the product too (node messages
    // feed it when no `device` is set); its NDEATH takes its devices down.
    edge.publish("spBv1.0/plant/NDEATH/gw1", payload(None, vec![]))
        .await;
    until("the NDEATH marks the press offline", || async {
        press(&gql, "press1").await["online"] == json!(false)
            && press(&gql, "gw1").await["online"] == json!(false)
    })
    .await;
    node.stop();
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
    let mut edge = Edge::connect(port).await;

    edge.publish("spBv1.0/plant/NBIRTH/gw1", nbirth()).await;
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
    node.stop();
}
