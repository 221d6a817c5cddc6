//! Reload: a changed definition swaps the GraphQL schema (open
//! subscriptions keep running) and what ingestion runs on, a broken one
//! keeps both and is reported in `/readyz`, in the catalog and in the log;
//! SIGHUP reloads at once.

use crate::common;

use std::time::Duration;

use common::graphql::{start, workdir, Gql, Protocol, Subscriber, SENSOR};
use serde_json::{json, Value};

const COUNTER: &str = r#"
product: counter
version: 1
domain: test
owner: test@example.com
key: id
fields:
  id: { type: int, required: true }
"#;

const STATUS: &str = "{ schemaStatus { generation products problems } }";

fn with_humidity() -> String {
    SENSOR.replace(
        "  email:",
        "  humidity:  { type: float, description: Relative humidity }\n  email:",
    )
}

async fn fields_of(gql: &Gql, ty: &str) -> Vec<String> {
    let data = gql
        .data(
            &format!("{{ __type(name: \"{ty}\") {{ fields {{ name }} }} }}"),
            json!({}),
        )
        .await;
    data["__type"]["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| f["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn problems(status: &Value) -> String {
    status["schemaStatus"]["problems"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_schema_and_a_broken_definition_keeps_the_old_one() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let products = dir.path().join("products");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let wait = Duration::from_secs(15);
    let mut subscriber = Subscriber::start(
        &node,
        Protocol::TransportWs,
        "subscription { sensorChanges { entity instance { temp } } }",
        json!({}),
    )
    .await;
    gql.wait_subscriptions("sensor", 1).await;
    assert!(!fields_of(&gql, "Sensor")
        .await
        .contains(&"humidity".to_string()));

    // A changed definition and a new product: picked up by polling.
    std::fs::write(products.join("sensor.yaml"), with_humidity()).expect("write");
    std::fs::write(products.join("counter.yaml"), COUNTER).expect("write");
    let status = gql
        .until(wait, STATUS, |d| d["schemaStatus"]["generation"] == 2)
        .await;
    assert_eq!(
        status["schemaStatus"]["products"],
        json!(["counter", "sensor"])
    );
    assert!(fields_of(&gql, "Sensor")
        .await
        .contains(&"humidity".to_string()));
    let data = gql
        .data("{ counterConnection { totalCount } }", json!({}))
        .await;
    assert_eq!(data["counterConnection"]["totalCount"], 0);
    // Ingestion follows the reload: the new product takes writes at once.
    let data = gql
        .data(
            "mutation { upsertCounter(input: { id: 1 }) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(data["upsertCounter"]["id"], 1, "{data}");

    // The subscription opened before the reload still delivers.
    let response = reqwest::Client::new()
        .post(node.url("/ingest/sensor"))
        .header("content-type", "application/x-ndjson")
        .body("{\"sensor_id\": \"s1\", \"temp\": 20.5}\n")
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), 200);
    let payload = subscriber.next(wait).await;
    assert_eq!(
        payload["data"]["sensorChanges"]["entity"], "s1",
        "{payload}"
    );

    // A broken definition: the old schema stays, the problem is reported.
    std::fs::write(
        products.join("sensor.yaml"),
        with_humidity().replace("type: float, min: -40", "type: flaot, min: -40"),
    )
    .expect("write");
    let status = gql
        .until(wait, STATUS, |d| {
            !d["schemaStatus"]["problems"]
                .as_array()
                .is_none_or(Vec::is_empty)
        })
        .await;
    assert_eq!(status["schemaStatus"]["generation"], 2);
    let text = problems(&status);
    assert!(
        text.contains("sensor.yaml") && text.contains("flaot"),
        "{text}"
    );
    let (code, body) = gql.get("/readyz").await;
    assert_eq!(code, 200, "a refused reload does not make the node unready");
    let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
    let reported = ready["problems"].to_string();
    assert!(
        reported.contains("reload refused") && reported.contains("flaot"),
        "{reported}"
    );
    assert!(fields_of(&gql, "Sensor")
        .await
        .contains(&"humidity".to_string()));
    let data = gql
        .data(
            r#"{ sensor(sensor_id: "s1") { temp humidity } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["sensor"]["temp"], 20.5);

    // Valid YAML that cannot make a schema (a field named like an API field).
    std::fs::write(
        products.join("sensor.yaml"),
        with_humidity().replace("  email:", "  history: { type: string }\n  email:"),
    )
    .expect("write");
    let status = gql
        .until(wait, STATUS, |d| problems(d).contains("collides"))
        .await;
    assert_eq!(status["schemaStatus"]["generation"], 2);

    // Fixed: the reload goes through and the problems are gone.
    std::fs::write(products.join("sensor.yaml"), with_humidity()).expect("write");
    let status = gql
        .until(wait, STATUS, |d| d["schemaStatus"]["generation"] == 3)
        .await;
    assert_eq!(status["schemaStatus"]["problems"], json!([]));
    let (_, body) = gql.get("/readyz").await;
    let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["problems"], json!([]));

    // SIGHUP reloads at once, changed files or not.
    node.signal(libc::SIGHUP);
    gql.until(Duration::from_secs(5), STATUS, |d| {
        d["schemaStatus"]["generation"] == 4
    })
    .await;
    // Shutdown does not wait for open subscriptions: they are closed.
    let stopping = std::time::Instant::now();
    let (status, logs) = node.stop();
    assert!(status.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    drop(subscriber);
    let logs = logs.join("\n");
    assert!(logs.contains("GraphQL schema reload refused"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("GraphQL schema reloaded") && l.contains("SIGHUP")),
        "{logs}"
    );
}

/// A product named like one of the catalog's own root fields (`nodes`,
/// `sync_status`) dropped into a running node's folder: the reload is
/// refused and reported in `/readyz` and `schemaStatus`, the node keeps
/// serving, and later reloads still happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_that_collides_with_the_catalog_cannot_stop_reloading() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let products = dir.path().join("products");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let wait = Duration::from_secs(15);
    for name in ["nodes", "sync_status"] {
        std::fs::write(
            products.join(format!("{name}.yaml")),
            COUNTER.replace("product: counter", &format!("product: {name}")),
        )
        .expect("write");
        let status = gql
            .until(wait, STATUS, |d| {
                problems(d).contains(&format!("{name}.yaml"))
            })
            .await;
        assert_eq!(status["schemaStatus"]["generation"], 1, "{status}");
        assert!(
            problems(&status).contains(&format!("product `{name}`")),
            "{status}"
        );
        let (code, body) = gql.get("/readyz").await;
        assert_eq!(code, 200, "{body}");
        let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
        assert!(
            ready["problems"]
                .to_string()
                .contains(&format!("{name}.yaml")),
            "{body}"
        );
        std::fs::remove_file(products.join(format!("{name}.yaml"))).expect("remove");
    }
    // Reloading is alive: the next valid change goes through.
    std::fs::write(products.join("counter.yaml"), COUNTER).expect("write");
    let status = gql
        .until(wait, STATUS, |d| {
            d["schemaStatus"]["products"] == json!(["counter", "sensor"])
        })
        .await;
    assert_eq!(status["schemaStatus"]["problems"], json!([]), "{status}");
    let (_, body) = gql.get("/readyz").await;
    let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["problems"], json!([]), "{body}");
    let data = gql
        .data("{ syncNodes { id } syncStatus { name } }", json!({}))
        .await;
    assert_eq!(data["syncNodes"], json!([]), "{data}");
    let (status, _) = node.stop();
    assert!(status.success());
}

/// What a reload adds is ingested at once, from every kind of source: a
/// new field over HTTP push, MQTT and the upsert mutation, a new product
/// over MQTT (embedded broker) — never answered 200 and then dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_and_products_added_by_a_reload_are_ingested_at_once() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let products = dir.path().join("products");
    let node = start(dir.path());
    let port = node.mqtt.expect("embedded broker").port();
    let gql = Gql::new(&node);
    let wait = Duration::from_secs(15);

    std::fs::write(products.join("sensor.yaml"), with_humidity()).expect("write");
    std::fs::write(
        products.join("counter.yaml"),
        format!("{COUNTER}  n: {{ type: int }}\nsources:\n  - mqtt: {{ topic: \"count/{{id}}\", format: json }}\n"),
    )
    .expect("write");
    gql.until(wait, STATUS, |d| d["schemaStatus"]["generation"] == 2)
        .await;

    let response = reqwest::Client::new()
        .post(node.url("/ingest/sensor"))
        .header("content-type", "application/x-ndjson")
        .body("{\"sensor_id\": \"h1\", \"temp\": 20.5, \"humidity\": 41.5}\n")
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), 200);
    let out = common::mosquitto_pub(
        port,
        "site/x/sensor/h2",
        br#"{"temp": 21, "humidity": 42.5}"#,
        1,
        false,
    );
    assert!(out.status.success());
    let data = gql
        .data(
            "mutation { upsertSensor(input: { sensor_id: \"h3\", humidity: 43.5 }) { humidity } }",
            json!({}),
        )
        .await;
    assert_eq!(data["upsertSensor"]["humidity"], 43.5, "{data}");
    let out = common::mosquitto_pub(port, "count/7", br#"{"n": 3}"#, 1, false);
    assert!(out.status.success());

    let lookup = r#"{ h1: sensor(sensor_id: "h1") { humidity }
                      h2: sensor(sensor_id: "h2") { humidity }
                      h3: sensor(sensor_id: "h3") { humidity }
                      counter(id: 7) { n } }"#;
    let data = gql
        .until(wait, lookup, |d| {
            !d["counter"].is_null() && !d["h2"].is_null()
        })
        .await;
    assert_eq!(data["h1"]["humidity"], 41.5, "{data}");
    assert_eq!(data["h2"]["humidity"], 42.5, "{data}");
    assert_eq!(data["h3"]["humidity"], 43.5, "{data}");
    assert_eq!(data["counter"]["n"], 3, "{data}");
    let (status, _) = node.stop();
    assert!(status.success());
}

/// With an external broker, a product a reload adds is subscribed to at
/// once: its messages are ingested without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_broker_client_subscribes_to_topics_a_reload_adds() {
    let broker = common::Mosquitto::start();
    let dir = workdir(
        &[("sensor", SENSOR)],
        &format!(
            "[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"{}\"\nclient_id = \"gw-reload\"\n",
            broker.url()
        ),
    );
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let wait = Duration::from_secs(15);
    let deadline = std::time::Instant::now() + wait;
    while gql
        .metric("meshlet_mqtt_client_connects_total")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never connected to the external broker"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    std::fs::write(
        dir.path().join("products/counter.yaml"),
        format!("{COUNTER}  n: {{ type: int }}\nsources:\n  - mqtt: {{ topic: \"count/{{id}}\", format: json }}\n"),
    )
    .expect("write");
    gql.until(wait, STATUS, |d| d["schemaStatus"]["generation"] == 2)
        .await;
    // The subscription is made asynchronously: publish until it lands (a
    // QoS 1 message with no subscriber yet is not kept by the broker).
    let lookup = "{ counter(id: 7) { n } }";
    let client = gql.clone();
    let landed = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Handle::current();
        common::eventually(Duration::from_secs(15), || {
            let out = common::mosquitto_pub(broker.port, "count/7", br#"{"n": 3}"#, 1, false);
            assert!(out.status.success());
            let data = runtime.block_on(client.data(lookup, json!({})));
            data["counter"]["n"] == 3
        })
    })
    .await
    .expect("publisher");
    assert!(
        landed,
        "messages of the reloaded product were never ingested"
    );
    let (status, _) = node.stop();
    assert!(status.success());
}

/// A file tail takes the fields a reload adds to its product, from the
/// next line on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_tail_follows_its_products_reload() {
    const LINE: &str = "product: line\nversion: 1\ndomain: test\nowner: test@example.com\nkey: id\nfields:\n  id: { type: string, required: true }\nsources:\n  - file: { path: \"../feed.ndjson\", format: ndjson }\n";
    let dir = workdir(&[("line", LINE)], "");
    let feed = dir.path().join("feed.ndjson");
    std::fs::write(&feed, "{\"id\": \"a\"}\n").expect("write feed");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let wait = Duration::from_secs(15);
    gql.until(wait, "{ line(id: \"a\") { id } }", |d| !d["line"].is_null())
        .await;

    std::fs::write(
        dir.path().join("products/line.yaml"),
        LINE.replace("sources:", "  level: { type: int }\nsources:"),
    )
    .expect("write");
    gql.until(wait, STATUS, |d| d["schemaStatus"]["generation"] == 2)
        .await;
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&feed)
            .expect("open feed");
        file.write_all(b"{\"id\": \"b\", \"level\": 3}\n")
            .expect("append");
    }
    let data = gql
        .until(wait, "{ line(id: \"b\") { level } }", |d| {
            !d["line"].is_null()
        })
        .await;
    assert_eq!(data["line"]["level"], 3, "{data}");
    let (status, _) = node.stop();
    assert!(status.success());
}
