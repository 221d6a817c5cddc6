//! Time-series reads through the real binary: newest-first history paging
//! (`last`/`before`) over sealed chunks and the open tail, with cursors
//! that round-trip between directions, under a role's row filter and mask.

mod common;

use common::graphql::Gql;
use common::{create_token, NodeBuilder, NodeProcess};
use serde_json::{json, Value};

/// A probe pushed over HTTP with its event time in the payload; small
/// chunks so history spans many sealed chunks and an open tail.
const PROBE: &str = r#"
product: probe
version: 1
domain: test
owner: test@example.com
key: probe_id
fields:
  probe_id: { type: string, required: true }
  site:     { type: string }
  temp:     { type: float }
  state:    { type: string, enum: [ok, warn, fault] }
  secret:   { type: string, classification: pii }
sources:
  - http: { format: ndjson, event_time: /ts }
quality: { on_invalid: reject }
access:
  viewer:
    read: true
    where: "site == 'berlin'"
    mask: { temp: { round: 10 }, secret: redact }
  admin: { read: true, write: true, erase: true }
"#;

const CONFIG: &str = "data_dir = \"data\"\nproducts = [\"products\"]\n[store]\nhistory_chunk_events = 8\nhistory_block_events = 4\n";

fn node() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/probe.yaml"), PROBE).expect("product");
    std::fs::write(dir.path().join("meshlet.toml"), CONFIG).expect("config");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    (dir, node)
}

/// Pushes `lines` (NDJSON) to the probe product; must be accepted whole.
async fn push(node: &NodeProcess, lines: &[Value]) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let response = reqwest::Client::new()
        .post(node.url("/ingest/probe"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("push");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
}

/// `n` readings of probe `id` at `site`, one a second from t0, temp = i.
fn readings(id: &str, site: &str, n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            json!({ "probe_id": id, "site": site, "temp": i as f64 + 0.4,
                    "state": "ok", "secret": format!("s{i}"),
                    "ts": 1_700_000_000_000i64 + 1000 * i as i64 })
        })
        .collect()
}

/// Versions and page info of one history page of probe `id`.
async fn history_page(gql: &Gql, id: &str, args: &str) -> (Vec<u64>, Value, Value) {
    let query = format!(
        "{{ probe(probe_id: \"{id}\") {{ history({args}) {{ edges {{ cursor node {{ version values {{ temp secret }} }} }} pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }} }} }}"
    );
    let data = gql.data(&query, json!({})).await;
    let history = &data["probe"]["history"];
    let edges = history["edges"].as_array().expect("edges").clone();
    let versions = edges
        .iter()
        .map(|e| {
            let v = e["node"]["version"].as_u64().expect("version");
            assert_eq!(e["cursor"], v.to_string(), "a cursor is the version");
            v
        })
        .collect();
    (versions, Value::Array(edges), history["pageInfo"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_newest_first_with_cursors_both_ways_under_policies() {
    let (dir, node) = node();
    let admin = Gql::new(&node);
    // 37 events: four sealed chunks of 8 and a tail of blocks/events.
    push(&node, &readings("p1", "berlin", 37)).await;
    push(&node, &readings("p2", "lyon", 3)).await;

    // The latest 5, oldest first within the page, with older ones before.
    let (versions, _, info) = history_page(&admin, "p1", "last: 5").await;
    assert_eq!(versions, [33, 34, 35, 36, 37]);
    assert_eq!(info["hasPreviousPage"], true);
    assert_eq!(info["hasNextPage"], false);
    assert_eq!(info["startCursor"], "33");

    // Backwards to the start, 7 at a time: every event once, in order.
    let mut before: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let args = match &before {
            Some(c) => format!("last: 7, before: \"{c}\""),
            None => "last: 7".to_string(),
        };
        let (versions, _, info) = history_page(&admin, "p1", &args).await;
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        seen.splice(0..0, versions);
        if info["hasPreviousPage"] != true {
            break;
        }
        before = info["startCursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen, (1..=37).collect::<Vec<u64>>());

    // Cursors round-trip: a backward page's cursor pages forward and back.
    let (versions, _, info) = history_page(&admin, "p1", "last: 4, before: \"20\"").await;
    assert_eq!(versions, [16, 17, 18, 19]);
    let end = info["endCursor"].as_str().expect("endCursor").to_string();
    let (forward, _, info) =
        history_page(&admin, "p1", &format!("first: 3, after: \"{end}\"")).await;
    assert_eq!(forward, [20, 21, 22]);
    assert_eq!(info["hasNextPage"], true);
    let start = info["startCursor"]
        .as_str()
        .expect("startCursor")
        .to_string();
    let (back, _, _) = history_page(&admin, "p1", &format!("last: 2, before: \"{start}\"")).await;
    assert_eq!(back, [18, 19]);
    // Both bounds: what lies strictly between two cursors, newest end.
    let (between, _, info) =
        history_page(&admin, "p1", "last: 3, after: \"10\", before: \"12\"").await;
    assert_eq!(between, [11]);
    assert_eq!(info["hasPreviousPage"], false);
    // With a time window: event time in [since, until).
    let (windowed, _, _) = history_page(
        &admin,
        "p1",
        "last: 3, since: \"2023-11-14T22:13:25Z\", until: \"2023-11-14T22:13:30Z\"",
    )
    .await;
    assert_eq!(windowed, [7, 8, 9]);

    // `first` and `last` together are refused, saying why.
    let errors = admin
        .errors(
            r#"{ probe(probe_id: "p1") { history(first: 2, last: 2) { nodes { version } } } }"#,
            json!({}),
        )
        .await;
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not both")),
        "{errors:?}"
    );

    // A viewer sees rounded temps and no secret, newest first as well, and
    // nothing of an entity its row filter hides.
    let viewer = admin.with_token(&create_token(dir.path(), "viewer", "viewer"));
    let (versions, edges, _) = history_page(&viewer, "p1", "last: 2").await;
    assert_eq!(versions, [36, 37]);
    assert_eq!(
        edges[0]["node"]["values"]["temp"], 40.0,
        "36.4 rounded to 10"
    );
    assert_eq!(edges[1]["node"]["values"]["secret"], "[redacted]");
    let (clear, edges, _) = history_page(&admin, "p1", "last: 1").await;
    assert_eq!(clear, [37]);
    assert_eq!(edges[0]["node"]["values"]["temp"], 37.4);
    let data = viewer
        .data(
            r#"{ probe(probe_id: "p2") { history(last: 5) { nodes { version } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["probe"], Value::Null, "p2 is in lyon: {data}");

    let (status, _) = node.stop();
    assert!(status.success());
}
