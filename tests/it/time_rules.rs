//! Time-relative rules through the real binary: `now()` and durations in
//! the `where` of sync rules and access rules, read when the rule runs
//! (a change planned for sending, a row read), and `meshlet check`
//! pointing at each misuse.

use crate::common;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use common::graphql::Gql;
use common::*;
use meshlet::record::Timestamp;

/// `seconds` from now (negative: ago), as RFC 3339.
fn at(seconds: i64) -> String {
    Timestamp::from_micros(Timestamp::now().as_micros() + seconds * 1_000_000)
        .to_rfc3339()
        .expect("a time in range")
}

const READING_EDGE: &str = r#"
product: reading
version: 1
domain: test
owner: test@example.com
key: meter
fields:
  meter:       { type: string, required: true }
  reported_at: { type: timestamp }
  n:           { type: int }
sources:
  - http: {}
sync:
  - to: central
    where: "reported_at > now() - 1h"
    when: { batch_age: 20ms, batch_size: 16 }
"#;

fn workdir(product: &str, config: &str) -> tempfile::TempDir {
    common::node_workdir(&[("reading", product)], config)
}

fn start_node(dir: &Path) -> NodeProcess {
    common::start_configured(dir)
}

fn push(node: &NodeProcess, ndjson: &str) {
    common::push_ndjson(node, "reading", ndjson)
}

fn graphql(node: &NodeProcess, query: &str) -> Value {
    let body = serde_json::to_vec(&json!({ "query": query })).expect("JSON");
    let (status, text) = http_post(&node.url("/graphql"), "application/json", body);
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("JSON answer");
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"].clone()
}

fn held(node: &NodeProcess, meter: &str) -> Option<i64> {
    graphql(node, &format!("{{ reading(meter: \"{meter}\") {{ n }} }}"))["reading"]["n"].as_i64()
}

fn pending(node: &NodeProcess) -> f64 {
    metric(node, "meshlet_sync_pending{upstream=\"central\"}").unwrap_or(f64::NAN)
}

#[test]
fn a_sync_rule_with_now_sends_recent_records_and_keeps_old_ones_home() {
    let without_sync = READING_EDGE
        .split("\nsync:")
        .next()
        .unwrap_or("")
        .to_string()
        + "\n";
    let hq_dir = workdir(
        &without_sync,
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_node(hq_dir.path());
    let edge_dir = workdir(
        READING_EDGE,
        &format!(
            "node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n\
             [upstreams.central]\nurl = \"http://{}\"\n",
            hq.http
        ),
    );
    let edge = start_node(edge_dir.path());

    push(
        &edge,
        &format!(
            "{{\"meter\":\"recent\",\"reported_at\":\"{}\",\"n\":1}}\n\
             {{\"meter\":\"old\",\"reported_at\":\"{}\",\"n\":2}}\n\
             {{\"meter\":\"undated\",\"n\":3}}\n\
             {{\"meter\":\"edge_of_window\",\"reported_at\":\"{}\",\"n\":4}}\n",
            at(-60),
            at(-2 * 3600),
            at(-3600 + 600),
        ),
    );
    assert!(
        eventually(Duration::from_secs(30), || held(&hq, "recent") == Some(1)),
        "the recent record went up"
    );
    assert!(
        eventually(Duration::from_secs(30), || held(&hq, "edge_of_window")
            == Some(4)),
        "a record 50 minutes old is inside `now() - 1h`"
    );
    assert!(
        eventually(Duration::from_secs(30), || pending(&edge) == 0.0),
        "the edge's outbox drained"
    );
    assert_eq!(held(&hq, "old"), None, "a record two hours old stayed home");
    assert_eq!(held(&hq, "undated"), None, "a null time is not recent");
    assert_eq!(
        held(&edge, "old"),
        Some(2),
        "the edge holds it all the same"
    );

    // The rule is read for each change: the old meter reporting now goes up.
    push(
        &edge,
        &format!(
            "{{\"meter\":\"old\",\"reported_at\":\"{}\",\"n\":5}}\n",
            at(0)
        ),
    );
    assert!(
        eventually(Duration::from_secs(30), || held(&hq, "old") == Some(5)),
        "a fresh report of the old meter went up"
    );

    stop_cleanly(edge);
    stop_cleanly(hq);
}

const READING_ACCESS: &str = r#"
product: reading
version: 1
domain: test
owner: test@example.com
key: meter
fields:
  meter:       { type: string, required: true }
  reported_at: { type: timestamp }
  n:           { type: int }
sources:
  - http: {}
access:
  recent:
    read: true
    where: "reported_at > now() - 1h"
  past:
    read: true
    where: "reported_at <= now()"
  active:
    read: true
    where: "_meta.lastSeen > now() - 10s"
  quiet:
    read: true
    where: "_meta.lastSeen <= now() - 10s and _meta.version >= 1"
  admin: { read: true, write: true, erase: true }
"#;

async fn lookup(gql: &Gql, meter: &str) -> Value {
    gql.data(
        "query($m: String!) { reading(meter: $m) { meter n } }",
        json!({ "m": meter }),
    )
    .await["reading"]
        .clone()
}

async fn listed(gql: &Gql) -> Vec<String> {
    let data = gql
        .data(
            "{ readingConnection(orderBy: [{field: meter, direction: ASC}]) { totalCount nodes { meter } } }",
            json!({}),
        )
        .await;
    let page = &data["readingConnection"];
    let keys: Vec<String> = page["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["meter"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        page["totalCount"].as_u64(),
        Some(keys.len() as u64),
        "{page}"
    );
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_rule_with_now_hides_old_rows_at_read_time() {
    let dir = workdir(READING_ACCESS, "");
    let recent_token = create_token(dir.path(), "recent", "recent");
    let past_token = create_token(dir.path(), "past", "past");
    let active_token = create_token(dir.path(), "active", "active");
    let quiet_token = create_token(dir.path(), "quiet", "quiet");
    let admin_token = create_token(dir.path(), "admin", "admin");
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .start()
        .expect("node starts");
    let gql = Gql::new(&node);
    let admin = gql.with_token(&admin_token);
    let recent = gql.with_token(&recent_token);
    let past = gql.with_token(&past_token);
    let active = gql.with_token(&active_token);
    let quiet = gql.with_token(&quiet_token);

    // `future` is stamped a few seconds ahead: `past` sees it only once its
    // time has come, with no reload — the rule reads the clock per read.
    let future = at(4);
    for (meter, seconds, n) in [("fresh", -60, 1), ("stale", -3 * 3600, 2)] {
        admin
            .data(
                &format!(
                    "mutation {{ upsertReading(input: {{meter: \"{meter}\", reported_at: \"{}\", n: {n}}}) {{ meter }} }}",
                    at(seconds)
                ),
                json!({}),
            )
            .await;
    }
    admin
        .data(
            &format!(
                "mutation {{ upsertReading(input: {{meter: \"future\", reported_at: \"{future}\", n: 3}}) {{ meter }} }}"
            ),
            json!({}),
        )
        .await;

    // `_meta.lastSeen`: just written, so active and not quiet (yet).
    assert_eq!(listed(&active).await, ["fresh", "future", "stale"]);
    assert_eq!(listed(&quiet).await, Vec::<String>::new());
    assert_eq!(lookup(&quiet, "fresh").await, Value::Null);

    assert_eq!(lookup(&recent, "fresh").await["n"], 1);
    assert_eq!(
        lookup(&recent, "stale").await,
        Value::Null,
        "hidden by lookup"
    );
    assert_eq!(
        listed(&recent).await,
        ["fresh", "future"],
        "hidden from the connection"
    );
    assert_eq!(listed(&admin).await, ["fresh", "future", "stale"]);

    assert_eq!(lookup(&past, "future").await, Value::Null, "not yet");
    assert_eq!(listed(&past).await, ["fresh", "stale"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if lookup(&past, "future").await["n"] == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`reported_at <= now()` never let the row stamped {future} through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed(&past).await, ["fresh", "future", "stale"]);

    // Ten seconds after the last write, every row has gone quiet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !listed(&active).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "`_meta.lastSeen > now() - 10s` kept showing rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(listed(&quiet).await, ["fresh", "future", "stale"]);
    assert_eq!(lookup(&quiet, "stale").await["n"], 2);
    assert_eq!(lookup(&active, "stale").await, Value::Null);

    stop_cleanly(node);
}

#[test]
fn check_points_at_each_misuse_of_now() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("reading.yaml"),
        r#"product: reading
version: 1
domain: test
owner: test@example.com
key: meter
fields:
  meter:       { type: string, required: true }
  reported_at: { type: timestamp }
  n:           { type: int }
access:
  a: { read: true, where: "n > now() - 1h" }
  b: { read: true, where: "reported_at > 7d" }
  c: { read: true, where: "reported_at == now()" }
  d: { read: true, where: "reported_at > now() - 7" }
  e: { read: true, where: "now() > reported_at" }
  f: { read: true, where: "meter < now()" }
  g: { read: true, where: "_meta.lastSeen > 5" }
  h: { read: true, where: "_meta.lastSen < now() - 1h" }
  ok: { read: true, where: "reported_at > now() - 7d and _meta.lastSeen <= now() + 1h30m" }
"#,
    )
    .expect("write");
    let out = run(dir.path(), &["check", "."]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    for expected in [
        "./reading.yaml:11:32: access.a.where: invalid row filter: cannot compare int field `n` \
         with a time (now() - 1h): only timestamp fields compare with now()",
        "./reading.yaml:12:42: access.b.where: invalid row filter: a duration needs a time to \
         count from: write `now() - 7d`",
        "./reading.yaml:13:43: access.c.where: invalid row filter: `==` with a time relative to \
         now() holds for at most one microsecond",
        "./reading.yaml:14:50: access.d.where: invalid row filter: expected a duration after \
         `now() -`, like 7d, 1h, 30m or 10s; found number 7",
        "./reading.yaml:15:28: access.e.where: invalid row filter: now() goes on the right of a \
         comparison",
        "./reading.yaml:16:36: access.f.where: invalid row filter: cannot compare string field \
         `meter` with a time (now())",
        "./reading.yaml:17:45: access.g.where: invalid row filter: cannot compare timestamp field \
         `_meta.lastSeen` with an integer",
        "./reading.yaml:18:28: access.h.where: invalid row filter: unknown field `_meta.lastSen`; \
         the _meta fields are _meta.lastSeen, _meta.firstSeen, _meta.eventTime, _meta.version",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(expected)),
            "missing `{expected}` in:\n{err}"
        );
    }
    assert!(!err.contains("access.ok"), "{err}");
    assert!(err.contains("error: 8 problems in 1 file"), "{err}");
}
