//! `ingest.nice`: the ingest sources and the writer run on threads of their
//! own at a lower CPU priority, the rest of the node (HTTP, GraphQL, sync)
//! at the process's. Checked on the real binary through Linux's own view
//! of its threads (`/proc/PID/task/*/stat`), with a real MQTT publish
//! going through the lowered threads to the store.

use crate::common;

use std::time::Duration;

use common::{eventually, metric, mosquitto_pub, run, stderr, NodeBuilder, NodeProcess};

/// Name and nice value of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended while we looked
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        // Field 19 (nice) is the 17th after the command name.
        let nice = stat[close + 2..]
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("a nice field");
        found.push((name, nice));
    }
    found
}

/// This test process's own nice value: the node starts from it.
fn own_nice() -> i64 {
    threads(std::process::id())
        .first()
        .map(|(_, nice)| *nice)
        .expect("this process has threads")
}

fn node_with_nice(dir: &std::path::Path, nice: &str) -> NodeProcess {
    let out = run(dir, &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    NodeBuilder::new(dir)
        .env("MESHLET_INGEST__NICE", nice)
        .start()
        .expect("node starts")
}

/// Publishes one reading at QoS 1 (acked once durable) and waits until the
/// node counts it written.
fn ingest_one(node: &NodeProcess) {
    let port = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(
        port,
        "sensors/s-1/telemetry",
        br#"{"temperature_c": 21.5}"#,
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(node, "meshlet_ingest_records_written_total").unwrap_or(0.0) >= 1.0
        }),
        "the reading was written"
    );
}

#[test]
fn ingest_threads_run_at_the_configured_lower_priority_and_the_api_does_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = own_nice();
    let node = node_with_nice(dir.path(), "6");
    ingest_one(&node);

    let threads = threads(node.pid());
    let ingest: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name == "meshlet-ingest")
        .collect();
    let api: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name == "meshlet")
        .collect();
    assert!(
        ingest.len() >= 2,
        "ingest workers and the writer's blocking thread: {threads:?}"
    );
    assert!(!api.is_empty(), "the node's own runtime: {threads:?}");
    let lowered = (base + 6).min(19);
    assert!(
        ingest.iter().all(|(_, nice)| *nice == lowered),
        "every ingest thread at nice {lowered}: {threads:?}"
    );
    assert!(
        api.iter().all(|(_, nice)| *nice == base),
        "the API's threads keep nice {base}: {threads:?}"
    );
    assert_eq!(metric(&node, "meshlet_ingest_cpu_nice"), Some(6.0));
    assert_eq!(
        metric(&node, "meshlet_ingest_priority_failures_total"),
        Some(0.0)
    );

    // The ingest runtime stops with the node: a clean exit, no panic from
    // dropping a runtime inside async code.
    let (status, logs) = node.stop();
    assert!(status.success(), "exit {status:?}: {logs:#?}");
    assert!(logs.iter().all(|l| !l.contains("panicked")), "{logs:#?}");
}

#[test]
fn nice_zero_keeps_ingest_on_the_node_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = own_nice();
    let node = node_with_nice(dir.path(), "0");
    ingest_one(&node);
    let threads = threads(node.pid());
    assert!(
        threads.iter().all(|(name, _)| name != "meshlet-ingest"),
        "no ingest runtime: {threads:?}"
    );
    assert!(
        threads.iter().all(|(_, nice)| *nice == base),
        "every thread at the process's priority: {threads:?}"
    );
    assert_eq!(metric(&node, "meshlet_ingest_cpu_nice"), Some(0.0));
    let (status, logs) = node.stop();
    assert!(status.success(), "exit {status:?}: {logs:#?}");
}

#[test]
fn an_impossible_nice_value_stops_the_node_before_it_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let result = NodeBuilder::new(dir.path())
        .env("MESHLET_INGEST__NICE", "20")
        .start();
    let err = match result {
        Ok(_) => panic!("a node with ingest.nice = 20 started"),
        Err(err) => err,
    };
    assert!(
        err.contains("ingest.nice must be 0 to 19"),
        "the refusal names the setting and its range: {err}"
    );
}
