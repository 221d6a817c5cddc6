//! The external-broker client under stress, against a real Mosquitto and
//! the real binary: it must never stop polling its own connection (a
//! backlog full of Sparkplug STATE messages once stalled it for good), and
//! it must notice a broker that went silent and come back to it without
//! losing or doubling a message.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use meshlet::record::Value;
use meshlet::store::HistoryQuery;

const READING: &str = r#"
product: sensor_reading
version: 1
domain: test
owner: test@example.com
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  site:      { type: string }
  seq:       { type: int }
sources:
  - mqtt: { topic: "site/{site}/sensor/{sensor_id}", format: json, event_time: /ts }
quality: { on_invalid: quarantine }
"#;

/// A Sparkplug source, so that the node is a primary host with a STATE.
const PRESS: &str = r#"
product: press
version: 1
domain: test
owner: test@example.com
key: press_id
fields:
  press_id: { type: string, required: true }
  online:   { type: bool }
sources:
  - sparkplug: { group: plant, edge_node: gw1, online: online, metrics: {} }
quality: { on_invalid: reject }
"#;

const STATE_TOPIC: &str = "spBv1.0/STATE/scada-main";
const DEADLINE: Duration = Duration::from_secs(60);

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(broker: &Mosquitto, keep_alive: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
        std::fs::write(dir.path().join("products/reading.yaml"), READING).expect("write product");
        std::fs::write(dir.path().join("products/press.yaml"), PRESS).expect("write product");
        std::fs::write(
            dir.path().join("meshlet.toml"),
            format!(
                "data_dir = \"data\"\nproducts = [\"products\"]\n[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"{}\"\nclient_id = \"gw-stall\"\nkeep_alive = \"{keep_alive}\"\n[sparkplug]\nhost_id = \"scada-main\"\n",
                broker.url()
            ),
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

fn accepted(node: &NodeProcess) -> f64 {
    metric(
        node,
        "meshlet_ingest_records_total{product=\"sensor_reading\",source=\"mqtt:0\",outcome=\"accepted\"}",
    )
    .unwrap_or(-1.0)
}

/// Publishes one QoS 1 message per line with the real `mosquitto_pub -l`
/// (one connection for the lot) and waits until every one was acked.
fn publish_lines(port: u16, topic: &str, lines: impl Iterator<Item = String>) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-q", "1", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("write a line");
        }
    }
    let out = child.wait_with_output().expect("mosquitto_pub finishes");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn readings(seqs: std::ops::RangeInclusive<i64>) -> impl Iterator<Item = String> {
    seqs.map(|seq| format!(r#"{{"seq": {seq}, "ts": {}}}"#, 1_700_000_000 + seq))
}

/// The sequence numbers stored for sensor e1, in order.
fn stored_seqs(data_dir: &Path) -> Vec<i64> {
    let store = open_store(data_dir);
    store
        .history("sensor_reading", "e1", &HistoryQuery::default())
        .expect("history")
        .iter()
        .filter_map(|e| match e.fields.get("seq") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Starts the node and waits until its subscriptions are in place (a
/// reading gets through).
fn start_subscribed(setup: &Setup, broker: &Mosquitto, seq: i64) -> NodeProcess {
    let node = setup.start();
    let before = accepted(&node).max(0.0);
    assert!(
        eventually(DEADLINE, || {
            publish_lines(broker.port, "site/berlin/sensor/e1", readings(seq..=seq));
            eventually(Duration::from_secs(1), || accepted(&node) > before)
        }),
        "the node never subscribed to the external broker"
    );
    node
}

/// A persistent session whose backlog holds thousands of offline STATE
/// messages between the readings (what a host that restarts during a
/// stream meets, when its will and other hosts' offline messages queue
/// up): every offline is answered with online, and none of that may keep
/// the client from reading on. The broker sends the whole queue at once.
#[test]
fn a_backlog_full_of_offline_state_messages_does_not_stall_the_client() {
    let broker = Mosquitto::start_with_inflight(0);
    let setup = Setup::new(&broker, "5s");
    let node = start_subscribed(&setup, &broker, 1);
    let (status, _) = node.stop();
    assert!(status.success());

    // While the node is down: readings, thousands of offline STATEs, more
    // readings, all queued by the broker for the node's session.
    publish_lines(broker.port, "site/berlin/sensor/e1", readings(2..=1_000));
    let offline = r#"{"online": false, "timestamp": 1}"#;
    publish_lines(
        broker.port,
        STATE_TOPIC,
        std::iter::repeat_n(offline.to_string(), 5_000),
    );
    publish_lines(
        broker.port,
        "site/berlin/sensor/e1",
        readings(1_001..=2_000),
    );

    let node = setup.start();
    let stored = eventually(DEADLINE, || accepted(&node) >= 1_999.0);
    let seen = accepted(&node);
    let (status, _) = node.stop();
    assert!(
        stored,
        "the client stalled: {seen} of 1999 queued readings stored"
    );
    assert!(status.success(), "the node stops cleanly: {status:?}");
    assert_eq!(
        stored_seqs(&setup.path().join("data")),
        (1..=2_000).collect::<Vec<_>>()
    );
}

fn client_metric(node: &NodeProcess, name: &str) -> f64 {
    metric(node, name).unwrap_or(-1.0)
}

/// The site broker hangs (SIGSTOP: its sockets stay open and say nothing)
/// in the middle of a QoS 1 stream, with messages read but not yet
/// acknowledged; when it comes back, the node reconnects by itself and
/// every message is stored exactly once.
#[test]
fn a_silent_broker_is_noticed_and_the_node_reconnects_storing_everything_once() {
    let broker = Mosquitto::start();
    let setup = Setup::new(&broker, "1s");
    let node = start_subscribed(&setup, &broker, 1);
    let connects = client_metric(&node, "meshlet_mqtt_client_connects_total");
    let errors = client_metric(&node, "meshlet_mqtt_client_errors_total");

    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish_lines(port, "site/berlin/sensor/e1", readings(2..=3_000));
    });
    assert!(
        eventually(DEADLINE, || accepted(&node) >= 300.0),
        "the stream reaches the node"
    );
    broker.signal(libc::SIGSTOP);
    let noticed = eventually(DEADLINE, || {
        client_metric(&node, "meshlet_mqtt_client_errors_total") > errors
    });
    broker.signal(libc::SIGCONT);
    assert!(noticed, "the node never noticed the silent broker");
    assert!(
        eventually(DEADLINE, || {
            client_metric(&node, "meshlet_mqtt_client_connects_total") > connects
        }),
        "the node never reconnected"
    );
    publisher.join().expect("the publisher finished");
    let stored = eventually(DEADLINE, || accepted(&node) >= 2_999.0);
    let seen = accepted(&node);
    let (status, _) = node.stop();
    assert!(
        stored,
        "{seen} of 2999 readings stored after the broker came back"
    );
    assert!(status.success(), "the node stops cleanly: {status:?}");
    assert_eq!(
        stored_seqs(&setup.path().join("data")),
        (1..=3_000).collect::<Vec<_>>()
    );
}

/// SIGTERM while the node works through a large backlog (the broker sent
/// it all at once, so thousands of messages are read and waiting for their
/// acks): the node stops well within its shutdown grace period, and after
/// a restart every message is stored exactly once.
#[test]
fn stopping_in_a_large_backlog_is_prompt_and_loses_nothing() {
    let broker = Mosquitto::start_with_inflight(0);
    let setup = Setup::new(&broker, "5s");
    let node = start_subscribed(&setup, &broker, 1);
    let (status, _) = node.stop();
    assert!(status.success());
    publish_lines(broker.port, "site/berlin/sensor/e1", readings(2..=20_000));

    let node = setup.start();
    assert!(
        eventually(DEADLINE, || accepted(&node) >= 1.0),
        "the backlog reaches the node"
    );
    let asked = std::time::Instant::now();
    let (status, _) = node.stop();
    let took = asked.elapsed();
    assert!(status.success(), "the node stops cleanly: {status:?}");
    // The default shutdown grace is 10 s; waiting it out means a stall.
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");

    let node = setup.start();
    assert!(
        eventually(DEADLINE, || {
            metric(&node, "meshlet_mqtt_client_connects_total").unwrap_or(0.0) >= 1.0
        }),
        "the node reconnects"
    );
    let gql = common::graphql::Gql::new(&node);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Delivered in order: the last reading in the state means all arrived.
    let done = eventually(DEADLINE, || {
        let data = runtime.block_on(gql.data(
            r#"{ sensorReading(sensor_id: "e1") { seq } }"#,
            serde_json::json!({}),
        ));
        data["sensorReading"]["seq"] == serde_json::json!(20_000)
    });
    let (status, _) = node.stop();
    assert!(
        done,
        "the rest of the backlog never arrived after the restart"
    );
    assert!(status.success());
    assert_eq!(
        stored_seqs(&setup.path().join("data")),
        (1..=20_000).collect::<Vec<_>>()
    );
}
