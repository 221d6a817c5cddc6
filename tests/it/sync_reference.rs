//! Reference data flowing down (`sync: - from: <upstream>`), with real
//! processes: a central meshlet publishes a product into a JetStream
//! key-value bucket (`publish = "reference"`) on a real `nats-server`;
//! edges replicate it into their stores — over NATS (a key-value watch) or
//! over HTTP (a long-poll on the central node) — with the rule's `where`
//! (on the edge's own `node_site`) and masks applied on the edge, resuming
//! from the revision their store holds after an outage.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::nats::NatsCluster;
use common::*;
use meshlet::record::Value;

const SITE_CONFIG: &str = r#"
product: site_config
version: 1
domain: ops
owner: ops@example.com
key: id
fields:
  id:        { type: string, required: true }
  site:      { type: string }
  threshold: { type: int }
  secret:    { type: string }
sources:
  - http: {}
"#;

/// The central side sends every change to the reference bucket.
const PUBLISH: &str = r#"
sync:
  - to: reference
    when: { batch_age: 20ms, batch_size: 500 }
"#;

/// An edge keeps its own site's rows, with `secret` redacted.
const RECEIVE: &str = r#"
sync:
  - from: central
    where: "site == ${node_site}"
    mask: { secret: redact }
"#;

const PRODUCT: &str = "site_config";
const INSTANCES: usize = 1_000;

fn central(nats: &NatsCluster) -> (tempfile::TempDir, NodeProcess) {
    let dir = node_workdir(
        &[(PRODUCT, format!("{SITE_CONFIG}{PUBLISH}"))],
        &format!(
            "node_id = \"hq\"\n[sync]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[upstreams.reference]\nurl = \"{}\"\npublish = \"reference\"\n",
            nats.url()
        ),
    );
    let node = start_configured(dir.path());
    (dir, node)
}

fn edge_dir(id: &str, site: &str, url: &str) -> tempfile::TempDir {
    node_workdir(
        &[(PRODUCT, format!("{SITE_CONFIG}{RECEIVE}"))],
        &format!(
            "node_id = \"{id}\"\nnode_site = \"{site}\"\n[upstreams.central]\nurl = \"{url}\"\n"
        ),
    )
}

/// `INSTANCES` rows, even ones at `north`, odd ones at `south`.
fn rows(threshold: usize) -> String {
    (0..INSTANCES)
        .map(|i| {
            let site = if i % 2 == 0 { "north" } else { "south" };
            format!(
                "{{\"id\":\"cfg-{i}\",\"site\":\"{site}\",\"threshold\":{threshold},\"secret\":\"s-{i}\"}}\n"
            )
        })
        .collect()
}

fn post(node: &NodeProcess, lines: String) {
    let (status, body) = http_post(
        &node.url(&format!("/ingest/{PRODUCT}")),
        "application/x-ndjson",
        lines.into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

fn published(hq: &NodeProcess) -> bool {
    metric(hq, "meshlet_sync_pending{upstream=\"reference\"}") == Some(0.0)
}

fn reference_metric(node: &NodeProcess, name: &str) -> f64 {
    metric(
        node,
        &format!("{name}{{upstream=\"central\",product=\"{PRODUCT}\"}}"),
    )
    .unwrap_or(f64::NAN)
}

/// Every row of the edge's (stopped) store: `(site, threshold, secret)`.
fn stored(data: &Path) -> Vec<(String, String, i64, String)> {
    let store = open_store(data);
    let mut out = Vec::new();
    for i in 0..INSTANCES {
        let id = format!("cfg-{i}");
        if let Some(instance) = store.get(PRODUCT, &id).expect("read") {
            let text = |name: &str| match instance.fields.get(name) {
                Some(Value::String(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            let threshold = match instance.fields.get("threshold") {
                Some(Value::Int(n)) => *n,
                _ => -1,
            };
            out.push((id, text("site"), threshold, text("secret")));
        }
    }
    out
}

/// The central side publishes 1,000 instances; an edge started later
/// takes its site's 500, masked. It is stopped while every instance is
/// updated twice; started again, it resumes after the revision its store
/// holds and ends with the newest value of each — reading each key once
/// (the bucket keeps one value per key), not every update it missed —
/// and serves them with the NATS server gone.
#[test]
fn an_offline_edge_catches_up_with_the_newest_revision_of_each_instance() {
    let mut nats = NatsCluster::start(1);
    let (_hq_dir, hq) = central(&nats);
    post(&hq, rows(1));
    assert!(
        eventually(Duration::from_secs(60), || published(&hq)),
        "the central node published every instance"
    );

    let dir = edge_dir("edge-north", "north", &nats.url());
    let edge = start_configured(dir.path());
    assert!(
        eventually(Duration::from_secs(60), || reference_metric(
            &edge,
            "meshlet_sync_reference_stored_total"
        ) == 500.0),
        "the edge stored its site's instances"
    );
    assert_eq!(
        reference_metric(&edge, "meshlet_sync_reference_filtered_total"),
        500.0,
        "the other site's instances are filtered on the edge"
    );
    let first_revision = reference_metric(&edge, "meshlet_sync_reference_revision");
    assert!(first_revision >= INSTANCES as f64, "{first_revision}");
    stop_cleanly(edge);

    // Offline: two rounds of updates of every instance (the central
    // outbox may coalesce them: at least one new revision per key).
    post(&hq, rows(2));
    post(&hq, rows(3));
    assert!(
        eventually(Duration::from_secs(60), || published(&hq)),
        "the central node published the updates"
    );

    let mut edge = start_configured(dir.path());
    let resumed = |l: &str| l.contains("watching reference data");
    let line = match edge.seen_logs.iter().find(|l| resumed(l)) {
        Some(l) => l.clone(),
        None => edge
            .wait_for_log(Duration::from_secs(30), resumed)
            .expect("the edge watches again"),
    };
    assert!(
        line.contains(&format!("\"from\":{}", first_revision as u64 + 1)),
        "resumes after the stored revision: {line}"
    );
    assert!(
        eventually(Duration::from_secs(60), || reference_metric(
            &edge,
            "meshlet_sync_reference_stored_total"
        ) == 500.0
            && reference_metric(&edge, "meshlet_sync_reference_revision")
                >= first_revision + INSTANCES as f64),
        "the edge caught up: stored {}, revision {} (first {first_revision})",
        reference_metric(&edge, "meshlet_sync_reference_stored_total"),
        reference_metric(&edge, "meshlet_sync_reference_revision"),
    );
    // Only each key's newest value was read: 500 stored, 500 filtered.
    assert_eq!(
        reference_metric(&edge, "meshlet_sync_reference_filtered_total"),
        500.0
    );

    // Served from the store with the NATS server gone.
    nats.kill(0);
    let (status, body) = http_get(&edge.url(&format!(
        "/graphql?query={}",
        urlencode("{ siteConfig(id: \"cfg-0\") { threshold secret } }")
    )));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"threshold\":3"), "{body}");
    stop_cleanly(edge);

    let rows = stored(&dir.path().join("data"));
    assert_eq!(rows.len(), 500, "only the edge's site");
    for (id, site, threshold, secret) in &rows {
        assert_eq!(site, "north", "{id}");
        assert_eq!(*threshold, 3, "{id}: the newest revision");
        assert!(
            !secret.starts_with("s-"),
            "{id}: masked on the edge: {secret}"
        );
    }
    stop_cleanly(hq);
}

/// An HTTPS-only site: the edge long-polls the central node's
/// `GET /sync/v1/reference/site_config`, which reads the bucket; it gets
/// its site's rows, then a later update while it waits.
#[test]
fn an_edge_without_nats_long_polls_the_central_node() {
    let nats = NatsCluster::start(1);
    let (_hq_dir, hq) = central(&nats);
    post(&hq, rows(1));
    assert!(
        eventually(Duration::from_secs(60), || published(&hq)),
        "the central node published every instance"
    );
    let base = hq.url("");
    let dir = edge_dir("edge-south", "south", base.trim_end_matches('/'));
    let edge = start_configured(dir.path());
    assert!(
        eventually(Duration::from_secs(60), || reference_metric(
            &edge,
            "meshlet_sync_reference_stored_total"
        ) == 500.0),
        "the edge stored its site's instances over HTTP"
    );
    // A change while the edge's poll is held arrives without waiting for
    // the poll to time out.
    std::thread::sleep(Duration::from_millis(300));
    post(
        &hq,
        "{\"id\":\"cfg-1\",\"site\":\"south\",\"threshold\":42,\"secret\":\"x\"}\n".to_string(),
    );
    assert!(
        eventually(Duration::from_secs(10), || reference_metric(
            &edge,
            "meshlet_sync_reference_stored_total"
        ) == 501.0),
        "the update arrived through the held long-poll"
    );
    stop_cleanly(edge);
    let rows = stored(&dir.path().join("data"));
    assert_eq!(rows.len(), 500);
    assert!(rows.iter().all(|(_, site, _, _)| site == "south"));
    assert!(rows
        .iter()
        .any(|(id, _, threshold, _)| id == "cfg-1" && *threshold == 42));
    stop_cleanly(hq);
}

/// `meshlet check` names bad `from:` rules: an unknown upstream, an
/// unknown placeholder, `${node_site}` on a node without one, an MQTT
/// upstream.
#[test]
fn check_reports_bad_reference_rules() {
    let bad_upstream = format!("{SITE_CONFIG}sync:\n  - from: centrl\n");
    let dir = node_workdir(
        &[(PRODUCT, bad_upstream)],
        "[upstreams.central]\nurl = \"nats://127.0.0.1:4222\"\n",
    );
    let out = run(dir.path(), &["check"]);
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("unknown upstream `centrl`"), "{text}");

    let bad_placeholder =
        format!("{SITE_CONFIG}sync:\n  - from: central\n    where: \"site == ${{node_sight}}\"\n");
    let dir = node_workdir(
        &[(PRODUCT, bad_placeholder)],
        "[upstreams.central]\nurl = \"nats://127.0.0.1:4222\"\n",
    );
    let out = run(dir.path(), &["check"]);
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("unknown placeholder `${node_sight}`"),
        "{text}"
    );

    let no_site = format!("{SITE_CONFIG}{RECEIVE}");
    let dir = node_workdir(
        &[(PRODUCT, no_site.clone())],
        "[upstreams.central]\nurl = \"nats://127.0.0.1:4222\"\n",
    );
    let out = run(dir.path(), &["check"]);
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("no `node_site`"), "{text}");

    let dir = node_workdir(
        &[(PRODUCT, no_site)],
        "node_site = \"north\"\n[upstreams.central]\nurl = \"mqtt://127.0.0.1:1883\"\n",
    );
    let out = run(dir.path(), &["check"]);
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("does not flow over MQTT"), "{text}");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
