//! The GraphQL API end to end: the real binary, values published over MQTT
//! with the real `mosquitto_pub`, queries over HTTP, subscriptions over
//! both WebSocket protocols, mutations, history, audit and the catalog.

use crate::common;

use std::time::Duration;

use common::graphql::{start, workdir, Gql, Protocol, Subscriber, SENSOR};
use common::*;
use serde_json::json;

const SUBSCRIBE: &str = r#"subscription($filter: SensorFilter) {
  sensorChanges(filter: $filter) { entity version created changed instance { sensor_id site temp seq } }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_published_over_mqtt_is_queryable_and_reaches_subscribers_on_both_protocols() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let berlin = json!({ "filter": { "site": { "eq": "berlin" } } });
    let mut modern =
        Subscriber::start(&node, Protocol::TransportWs, SUBSCRIBE, berlin.clone()).await;
    let mut legacy = Subscriber::start(&node, Protocol::LegacyWs, SUBSCRIBE, berlin).await;
    gql.wait_subscriptions("sensor", 2).await;

    let port = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(port, "site/lyon/sensor/s0", br#"{"temp": 5}"#, 1, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mosquitto_pub(
        port,
        "site/berlin/sensor/s1",
        br#"{"temp": 21.5, "seq": 1, "status": "ok"}"#,
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // mosquitto_pub returned after the PUBACK, which is sent once durable.
    let data = gql
        .data(
            r#"{ sensor(sensor_id: "s1") { sensor_id site temp seq status _meta { version source stale } } }"#,
            json!({}),
        )
        .await;
    let s1 = &data["sensor"];
    assert_eq!(s1["temp"], 21.5);
    assert_eq!(s1["site"], "berlin");
    assert_eq!(s1["seq"], 1);
    assert_eq!(s1["_meta"]["version"], 1);
    assert_eq!(s1["_meta"]["source"], "mqtt:site/berlin/sensor/s1");
    assert_eq!(s1["_meta"]["stale"], false);

    // Both subscribers get s1 (and not s0, which the filter leaves out).
    for subscriber in [&mut modern, &mut legacy] {
        let payload = subscriber.next(Duration::from_secs(10)).await;
        let change = &payload["data"]["sensorChanges"];
        assert_eq!(change["entity"], "s1", "{payload}");
        assert_eq!(change["created"], true);
        assert_eq!(change["instance"]["temp"], 21.5);
        assert_eq!(
            change["changed"],
            json!(["sensor_id", "seq", "site", "status", "temp"])
        );
    }

    // An update reaches them too, with what changed.
    let out = mosquitto_pub(port, "site/berlin/sensor/s1", br#"{"temp": 22}"#, 1, false);
    assert!(out.status.success());
    for subscriber in [&mut modern, &mut legacy] {
        let payload = subscriber.next(Duration::from_secs(10)).await;
        let change = &payload["data"]["sensorChanges"];
        assert_eq!(change["version"], 2, "{payload}");
        assert_eq!(change["changed"], json!(["temp"]));
    }
    drop(modern);
    drop(legacy);
    gql.wait_subscriptions("sensor", 0).await;
    let (status, _) = node.stop();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_history_audit_quarantine_and_catalog() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let upsert = r#"mutation($input: SensorInput!) {
      upsertSensor(input: $input) { sensor_id temp seq at extra _meta { version source } }
    }"#;

    // Every type goes in and comes back typed; Long holds what Int cannot.
    let data = gql
        .data(
            upsert,
            json!({ "input": { "sensor_id": "m1", "temp": 1.5, "seq": 9_007_199_254_740_993i64,
                "at": "2024-05-01T14:00:00+02:00", "extra": { "a": [1, "x"] } } }),
        )
        .await;
    let m1 = &data["upsertSensor"];
    assert_eq!(m1["seq"], 9_007_199_254_740_993i64);
    assert_eq!(m1["at"], "2024-05-01T12:00:00Z");
    assert_eq!(m1["extra"], json!({ "a": [1, "x"] }));
    assert_eq!(m1["_meta"], json!({ "version": 1, "source": "graphql" }));
    let data = gql
        .data(
            upsert,
            json!({ "input": { "sensor_id": "m1", "temp": 2.5, "extra": null } }),
        )
        .await;
    assert_eq!(data["upsertSensor"]["temp"], 2.5);
    assert_eq!(
        data["upsertSensor"]["seq"], 9_007_199_254_740_993i64,
        "absent keeps"
    );
    assert_eq!(
        data["upsertSensor"]["extra"],
        serde_json::Value::Null,
        "null clears"
    );

    // The pipeline's rules apply: nothing is written, the reason is said.
    let errors = gql
        .errors(
            upsert,
            json!({ "input": { "sensor_id": "m1", "temp": 900, "status": "warn" } }),
        )
        .await;
    assert_eq!(
        errors[0]["extensions"]["code"], "INVALID_RECORD",
        "{errors:?}"
    );
    let message = errors[0]["message"].as_str().expect("message");
    assert!(message.contains("temp"), "{message}");
    // A value outside an `enum:` is refused by the schema (`SensorStatus`).
    let errors = gql
        .errors(
            upsert,
            json!({ "input": { "sensor_id": "m1", "status": "bogus" } }),
        )
        .await;
    let message = errors[0]["message"].as_str().expect("message");
    assert!(message.contains("SensorStatus"), "{message}");

    let data = gql
        .data(
            r#"{ sensor(sensor_id: "m1") {
                history { nodes { version source values { temp seq } } pageInfo { hasNextPage endCursor } }
                first: history(first: 1) { nodes { version } pageInfo { hasNextPage endCursor } }
                audit { action fields source fromVersion toVersion count }
                _meta { version }
            } }"#,
            json!({}),
        )
        .await;
    let s = &data["sensor"];
    assert_eq!(s["_meta"]["version"], 2);
    assert_eq!(s["history"]["nodes"][0]["values"]["temp"], 1.5);
    assert_eq!(
        s["history"]["nodes"][1]["values"],
        json!({ "temp": 2.5, "seq": null })
    );
    assert_eq!(s["history"]["nodes"][1]["source"], "graphql");
    assert_eq!(
        s["first"]["pageInfo"],
        json!({ "hasNextPage": true, "endCursor": "1" })
    );
    assert_eq!(s["audit"][0]["action"], "CREATED");
    assert_eq!(s["audit"][1]["action"], "UPDATED");
    assert_eq!(s["audit"][1]["fields"], json!(["extra", "temp"]));
    let data = gql
        .data(
            r#"{ sensor(sensor_id: "m1") { history(after: "1") { nodes { version } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["sensor"]["history"]["nodes"],
        json!([{ "version": 2 }])
    );

    // Erasure: gone, and an audit line says so.
    let erase = r#"mutation { eraseSensor(sensor_id: "m1") }"#;
    assert_eq!(gql.data(erase, json!({})).await["eraseSensor"], true);
    assert_eq!(gql.data(erase, json!({})).await["eraseSensor"], false);
    let data = gql
        .data(r#"{ sensor(sensor_id: "m1") { temp } }"#, json!({}))
        .await;
    assert_eq!(data["sensor"], serde_json::Value::Null);

    // An invalid MQTT payload lands in the quarantine, which the catalog lists.
    let port = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(port, "site/x/sensor/q1", br#"{"temp": "hot"}"#, 1, false);
    assert!(out.status.success());
    let data = gql
        .data(
            r#"{ quarantine(product: "sensor", first: 10) {
                totalCount nodes { id source topic reasons payload payloadBytes } pageInfo { hasNextPage }
            } }"#,
            json!({}),
        )
        .await;
    let q = &data["quarantine"];
    assert_eq!(q["totalCount"], 1, "{q}");
    assert_eq!(q["nodes"][0]["topic"], "site/x/sensor/q1");
    assert_eq!(q["nodes"][0]["payload"], r#"{"temp": "hot"}"#);
    assert!(q["nodes"][0]["reasons"][0]
        .as_str()
        .expect("reason")
        .contains("temp"));
    let errors = gql
        .errors(
            r#"{ quarantine(product: "nope") { totalCount } }"#,
            json!({}),
        )
        .await;
    assert!(errors[0]["message"]
        .as_str()
        .expect("message")
        .contains("no product named `nope`"));

    // A fresh accepted record, then the catalog.
    let out = mosquitto_pub(port, "site/x/sensor/c1", br#"{"temp": 3}"#, 1, false);
    assert!(out.status.success());
    let data = gql
        .data(
            r#"{ products { name version domain owner description key graphqlType
                 fields { name type graphqlType unit classification required description }
                 freshness { sla slaSeconds lastUpdate stale }
                 quality { accepted rejected quarantined }
                 usage { queries subscriptions } }
               schemaStatus { generation products problems } }"#,
            json!({}),
        )
        .await;
    let p = &data["products"][0];
    assert_eq!(p["name"], "sensor");
    assert_eq!(p["graphqlType"], "Sensor");
    assert_eq!(p["key"], "sensor_id");
    assert_eq!(p["description"], "A test sensor.");
    let temp = &p["fields"][2];
    assert_eq!(
        *temp,
        json!({ "name": "temp", "type": "float", "graphqlType": "Float", "unit": "°C",
                "classification": "internal", "required": false, "description": "Air temperature" })
    );
    assert_eq!(p["fields"][0]["required"], true);
    assert_eq!(p["fields"][7]["classification"], "pii");
    assert_eq!(p["freshness"]["sla"], "1m");
    assert_eq!(p["freshness"]["slaSeconds"], 60.0);
    assert_eq!(p["freshness"]["stale"], false);
    assert!(p["freshness"]["lastUpdate"].is_string());
    assert_eq!(
        p["quality"]["accepted"], 3,
        "two upserts and one MQTT record"
    );
    assert_eq!(p["quality"]["quarantined"], 1);
    assert_eq!(p["quality"]["rejected"], 1, "the invalid upsert");
    assert_eq!(p["usage"]["queries"], 3, "three lookups");
    assert_eq!(
        data["schemaStatus"],
        json!({ "generation": 1, "products": ["sensor"], "problems": [] })
    );

    // Descriptions from the definition reach the schema.
    let data = gql
        .data(
            r#"{ __type(name: "Sensor") { description fields { name description } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["__type"]["description"], "A test sensor.");
    assert_eq!(
        data["__type"]["fields"][2],
        json!({ "name": "temp", "description": "Air temperature (unit: °C; classification: internal)" })
    );

    // Operations: GraphQL figures in /metrics, GraphiQL on by default.
    let ok = gql
        .metric("meshlet_graphql_requests_total{outcome=\"ok\"}")
        .await;
    assert!(ok.unwrap_or(0.0) >= 5.0, "{ok:?}");
    let timed = gql
        .metric("meshlet_graphql_request_duration_seconds_count")
        .await;
    assert!(timed.unwrap_or(0.0) >= 5.0, "{timed:?}");
    let (status, page) = gql.graphiql().await;
    assert_eq!(status, 200);
    assert!(page.contains("GraphiQL") && page.contains("/graphql/ws"));
    let (status, _) = node.stop();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int_keys_and_an_empty_node() {
    const COUNTER: &str = r#"
product: counter
version: 1
domain: test
owner: test@example.com
key: id
fields:
  id: { type: int, required: true }
  n:  { type: int }
"#;
    let dir = workdir(&[("counter", COUNTER)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    for id in [2, 10, 9] {
        gql.data(
            "mutation($id: Long!) { upsertCounter(input: { id: $id, n: 1 }) { id } }",
            json!({ "id": id }),
        )
        .await;
    }
    let data = gql.data("{ counter(id: 10) { id n } }", json!({})).await;
    assert_eq!(data["counter"], json!({ "id": 10, "n": 1 }));
    // Ordered by the int key: numerically, not as text.
    let data = gql
        .data(
            "{ counterConnection(orderBy: [{field: id}]) { nodes { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["counterConnection"]["nodes"],
        json!([{ "id": 2 }, { "id": 9 }, { "id": 10 }])
    );
    let errors = gql
        .errors(r#"{ counter(id: "x") { id } }"#, json!({}))
        .await;
    assert!(!errors.is_empty());
    node.stop();

    // No products at all: the catalog still answers.
    let dir = workdir(&[], "");
    let node = start(dir.path());
    let data = Gql::new(&node)
        .data("{ products { name } }", json!({}))
        .await;
    assert_eq!(data["products"], json!([]));
    node.stop();
}
