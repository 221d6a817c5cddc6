//! The firmware examples publish what their products expect: every
//! example's sample payload passes its product's pipeline, and the C
//! example, compiled here against libmosquitto, lands its readings in a
//! real node.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use meshlet::pipeline::{self, Input, Limits, SourceShape};
use meshlet::product::{self, LoadContext};
use meshlet::record::{Origin, Timestamp, Value};
use meshlet::sources::mqtt::MqttSource;
use meshlet::store::HistoryQuery;

fn examples() -> Vec<std::path::PathBuf> {
    let dir = repo_root().join("firmware-examples");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .expect("firmware-examples exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found
}

#[test]
fn every_sample_payload_passes_its_product_definition() {
    let ctx = LoadContext::with_upstreams(["central".to_string()].into());
    let products =
        product::load_path(&repo_root().join("schema/examples"), &ctx).expect("examples load");
    let examples = examples();
    assert!(examples.len() >= 3, "c, esp32 and micropython examples");
    for example in examples {
        assert!(
            example.join("README.md").is_file(),
            "{} has a README",
            example.display()
        );
        let sample: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(example.join("sample.json")).expect("sample.json"),
        )
        .expect("sample.json is JSON");
        let name = sample["product"].as_str().expect("product");
        let topic = sample["topic"].as_str().expect("topic");
        let readme = std::fs::read_to_string(example.join("README.md")).expect("readme");
        assert!(
            readme.contains(name),
            "{}: the README names its product",
            example.display()
        );
        let product = products
            .get(name)
            .unwrap_or_else(|| panic!("no product {name}"));
        let (shape, captures) = product
            .sources
            .iter()
            .find_map(|s| {
                let m = s.get::<MqttSource>()?;
                m.topic.match_topic(topic).map(|c| {
                    let captures: Vec<(String, String)> = c
                        .into_iter()
                        .map(|(f, v)| (f.to_string(), v.to_string()))
                        .collect();
                    (SourceShape::from_source(s), captures)
                })
            })
            .unwrap_or_else(|| {
                panic!("{}: no source of {name} matches {topic}", example.display())
            });
        let payload = serde_json::to_vec(&sample["payload"]).expect("payload");
        let processed = pipeline::process(
            product,
            &shape,
            &Input {
                payload: &payload,
                captures: &captures,
                arrival: Timestamp::now(),
                origin: Origin::new("test"),
            },
            &Limits::default(),
        );
        assert!(
            processed.invalid.is_empty(),
            "{}: {:?}",
            example.display(),
            processed.invalid
        );
        assert_eq!(processed.accepted.len(), 1);
        assert!(processed.accepted[0].dropped.is_empty());
        assert!(
            processed.accepted[0].event_time_from_payload,
            "samples carry their time"
        );
    }
}

fn compile_c_example(out: &Path) {
    let source = repo_root().join("firmware-examples/c-libmosquitto/main.c");
    let result = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(&source)
        .arg("-lmosquitto")
        .output()
        .expect("a C compiler (cc) is installed");
    assert!(
        result.status.success(),
        "the C example compiles (tests/run.sh installs libmosquitto-dev): {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn the_c_example_publishes_readings_the_node_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join("machine-health");
    compile_c_example(&binary);
    copy_examples(dir.path());
    let node = NodeBuilder::new(dir.path()).start().expect("node starts");
    let port = node.mqtt.expect("embedded broker").port();

    let run = Command::new(&binary)
        .args(["127.0.0.1", &port.to_string(), "lyon", "PR-0042", "5"])
        .output()
        .expect("the example runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).lines().count(),
        5,
        "five acknowledged readings"
    );
    assert!(eventually(Duration::from_secs(5), || {
        metric(&node, "meshlet_ingest_records_total{product=\"machine_health\",source=\"mqtt:0\",outcome=\"accepted\"}")
            == Some(5.0)
    }));
    // Queried back over GraphQL, with its history.
    let (status, body) = http_post(
        &node.url("/graphql"),
        "application/json",
        br#"{"query": "{ machineHealth(machine_id: \"PR-0042\") { site status history(first: 10) { edges { node { version } } } } }"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let machine = &answer["data"]["machineHealth"];
    assert_eq!(machine["site"], "lyon", "{body}");
    assert_eq!(machine["status"], "ok", "{body}");
    let (status, _) = node.stop();
    assert!(status.success());

    let store = open_store(&dir.path().join("meshlet-data"));
    let machine = store
        .get("machine_health", "PR-0042")
        .expect("read")
        .expect("stored");
    assert_eq!(
        machine.fields.get("site"),
        Some(&Value::String("lyon".into()))
    );
    assert_eq!(
        machine.fields.get("status"),
        Some(&Value::String("ok".into()))
    );
    assert!(matches!(
        machine.fields.get("temperature_c"),
        Some(Value::Float(_))
    ));
    assert!(matches!(
        machine.fields.get("spindle_rpm"),
        Some(Value::Int(_))
    ));
    let history = store
        .history("machine_health", "PR-0042", &HistoryQuery::default())
        .expect("history");
    assert_eq!(history.len(), 5);
}
