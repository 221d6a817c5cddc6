//! Retention by the running node: the background sweeper trims history to
//! `history.keep` and expires idle entities, a bounded number per wake, and
//! reports what it did in `/metrics`. Verified through the metrics and by
//! reading the store directly after the node stopped.

use crate::common;

use std::time::Duration;

use common::graphql::workdir;
use common::*;
use meshlet::store::HistoryQuery;

const TRIMMED: &str = r#"
product: trimmed
version: 1
domain: test
owner: test@example.com
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  temp:      { type: float }
sources:
  - http: { format: ndjson }
history:
  keep: 2
"#;

const EXPIRING: &str = r#"
product: expiring
version: 1
domain: test
owner: test@example.com
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  temp:      { type: float }
sources:
  - http: { format: ndjson }
retention:
  expire_after: 1s
"#;

/// Two entities per wake: five expiring entities need at least three.
const BUDGET: u64 = 2;

fn push(node: &NodeProcess, product: &str, lines: &[String]) {
    let (status, body) = http_post(
        &node.url(&format!("/ingest/{product}")),
        "application/x-ndjson",
        lines.join("\n").into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_running_node_trims_history_and_expires_entities_in_bounded_steps() {
    let dir = workdir(
        &[("trimmed", TRIMMED), ("expiring", EXPIRING)],
        &format!("[store]\nretention_interval = \"100ms\"\nretention_budget = {BUDGET}\n"),
    );
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");

    for temp in 0..6 {
        push(
            &node,
            "trimmed",
            &[format!(r#"{{"sensor_id":"t1","temp":{temp}.5}}"#)],
        );
    }
    let entities: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"sensor_id":"e{i}","temp":1.0}}"#))
        .collect();
    push(&node, "expiring", &entities);

    let expired = eventually(Duration::from_secs(30), || {
        metric(
            &node,
            "meshlet_retention_entities_expired_total{product=\"expiring\"}",
        ) == Some(5.0)
    });
    assert!(expired, "all five entities expire");
    let trimmed = eventually(Duration::from_secs(30), || {
        metric(
            &node,
            "meshlet_retention_history_events_removed_total{product=\"trimmed\"}",
        ) == Some(4.0)
    });
    assert!(
        trimmed,
        "history is trimmed to the newest two of six events"
    );

    // Bounded work: no step visited more than the budget.
    let sweeps = metric(
        &node,
        "meshlet_retention_sweeps_total{product=\"expiring\"}",
    )
    .expect("sweeps counted");
    let visited = metric(
        &node,
        "meshlet_retention_entities_visited_total{product=\"expiring\"}",
    )
    .expect("visits counted");
    assert!(
        visited >= 5.0 && visited <= sweeps * BUDGET as f64,
        "visited {visited} entities in {sweeps} steps of at most {BUDGET}"
    );
    assert!(
        sweeps >= 3.0,
        "five entities at two per step take three steps"
    );
    assert!(metric(&node, "meshlet_retention_last_run_timestamp_seconds").is_some());
    assert!(metric(&node, "meshlet_retention_sweep_duration_seconds").is_some());

    let (status, logs) = node.stop();
    assert!(status.success(), "{}", logs.join("\n"));

    let store = open_store(&dir.path().join("data"));
    assert_eq!(store.count("expiring").expect("count"), 0);
    for i in 0..5 {
        let entity = format!("e{i}");
        assert!(store.get("expiring", &entity).expect("get").is_none());
        let audit = store
            .audit("expiring", &entity, &Default::default())
            .expect("audit");
        assert_eq!(audit.len(), 1, "one Expired line stays: {audit:?}");
    }
    let history = store
        .history("trimmed", "t1", &HistoryQuery::default())
        .expect("history");
    let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![5, 6], "the newest two events stay");
}
