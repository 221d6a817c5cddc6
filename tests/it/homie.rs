//! The Homie v5 example (`schema/examples/room_climate.yaml`) end to end:
//! the real node on the shipped examples, sensors publishing Homie topics
//! into its embedded broker (retained plain-text values with the real
//! `mosquitto_pub`, and a rumqttc device whose MQTT will says `lost`), the
//! merged device read back over GraphQL, and a malformed and an
//! out-of-range value kept in the quarantine with their reasons.

use crate::common;

use std::time::Duration;

use common::graphql::Gql;
use common::*;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);

const ROOM: &str = r#"query($id: String!) { roomClimate(device_id: $id) {
    device_id name state temperature_c humidity_pct co2_ppm window_open } }"#;

fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n",
    )
    .expect("config");
    dir
}

/// Publishes one Homie value as a device does: retained, QoS 1 (so it
/// returns once the node has it on disk).
fn publish(port: u16, topic: &str, value: &str) {
    let out = mosquitto_pub(port, topic, value.as_bytes(), 1, true);
    assert!(
        out.status.success(),
        "mosquitto_pub {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn room(gql: &Gql, id: &str) -> Value {
    gql.data(ROOM, json!({ "id": id })).await["roomClimate"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homie_sensors_become_room_climate_instances() {
    let dir = workdir();
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let gql = Gql::new(&node);
    let port = node.mqtt.expect("embedded broker").port();

    // A sensor comes up: init, its description, its values, ready.
    let base = "homie/5/office-2-12";
    publish(port, &format!("{base}/$state"), "init");
    publish(
        port,
        &format!("{base}/$description"),
        r#"{"homie":"5.0","version":7,"name":"Office 2.12","nodes":{"climate":{"name":"Climate","properties":{"temperature":{"datatype":"float","unit":"°C"}}}}}"#,
    );
    publish(port, &format!("{base}/climate/temperature"), "21.5");
    publish(port, &format!("{base}/climate/humidity"), "48.2");
    publish(port, &format!("{base}/climate/co2"), "612");
    publish(port, &format!("{base}/window/open"), "false");
    publish(port, &format!("{base}/$state"), "ready");
    // Topics no source reads: a property's target, a log line.
    publish(port, &format!("{base}/climate/temperature/$target"), "22");
    publish(port, &format!("{base}/$log"), "boot ok");
    assert_eq!(
        room(&gql, "office-2-12").await,
        json!({ "device_id": "office-2-12", "name": "Office 2.12", "state": "ready",
                "temperature_c": 21.5, "humidity_pct": 48.2, "co2_ppm": 612,
                "window_open": false })
    );

    // One value changes: only that field moves, and its history grows.
    publish(port, &format!("{base}/climate/temperature"), "22.25");
    publish(port, &format!("{base}/window/open"), "true");
    let now = room(&gql, "office-2-12").await;
    assert_eq!(now["temperature_c"], 22.25);
    assert_eq!(now["window_open"], true);
    assert_eq!(now["co2_ppm"], 612);
    let data = gql
        .data(
            r#"{ roomClimate(device_id: "office-2-12") {
                   history(first: 100) { nodes { source values { temperature_c } } } } }"#,
            json!({}),
        )
        .await;
    let temperatures: Vec<&Value> = data["roomClimate"]["history"]["nodes"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["source"] == "mqtt:homie/5/office-2-12/climate/temperature")
        .map(|e| &e["values"]["temperature_c"])
        .collect();
    assert_eq!(temperatures, [&json!(21.5), &json!(22.25)], "{data}");

    // A value that is not a number, and one out of range: quarantined
    // whole, with why; the instance keeps its last good values.
    publish(port, &format!("{base}/climate/temperature"), "warm");
    publish(port, &format!("{base}/climate/humidity"), "140");
    let data = gql
        .data(
            r#"{ quarantine(product: "room_climate") { totalCount nodes { topic payload reasons } }
                 product(name: "room_climate") { quality { accepted quarantined } } }"#,
            json!({}),
        )
        .await;
    let q = &data["quarantine"];
    assert_eq!(q["totalCount"], 2, "{q}");
    assert_eq!(
        q["nodes"][0]["topic"],
        format!("{base}/climate/temperature")
    );
    assert_eq!(q["nodes"][0]["payload"], "warm");
    let reason = q["nodes"][0]["reasons"][0].as_str().expect("a reason");
    assert!(reason.contains("temperature_c"), "{reason}");
    assert_eq!(q["nodes"][1]["topic"], format!("{base}/climate/humidity"));
    let reason = q["nodes"][1]["reasons"][0].as_str().expect("a reason");
    assert!(
        reason.contains("humidity_pct") && reason.contains("max"),
        "{reason}"
    );
    assert_eq!(data["product"]["quality"]["quarantined"], 2);
    let now = room(&gql, "office-2-12").await;
    assert_eq!(now["temperature_c"], 22.25);
    assert_eq!(now["humidity_pct"], 48.2);

    // A device id the definition refuses (Homie ids are lowercase).
    publish(port, "homie/5/Lab_1/climate/co2", "700");
    assert!(room(&gql, "Lab_1").await.is_null());

    // A sensor that drops off the network: its will says `lost`.
    let mut options = MqttOptions::new("lab-1", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_last_will(LastWill::new(
        "homie/5/lab-1/$state",
        "lost",
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (acked_tx, mut acked) = mpsc::unbounded_channel();
    let device = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = acked_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for (topic, value) in [
        ("homie/5/lab-1/$state", "ready"),
        ("homie/5/lab-1/climate/co2", "1450"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, true, value)
            .await
            .expect("publish");
        tokio::time::timeout(DEADLINE, acked.recv())
            .await
            .expect("acked in time")
            .expect("device running");
    }
    assert_eq!(room(&gql, "lab-1").await["state"], "ready");
    // Gone without DISCONNECT: the socket closes, the broker sends the will.
    device.abort();
    let _ = device.await;
    let data = gql
        .until(
            DEADLINE,
            r#"{ roomClimate(device_id: "lab-1") { state co2_ppm } }"#,
            |d| d["roomClimate"]["state"] == "lost",
        )
        .await;
    assert_eq!(data["roomClimate"]["co2_ppm"], 1450);

    let (status, _) = node.stop();
    assert!(status.success());
}
