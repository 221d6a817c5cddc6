//! `/metrics` follows the Prometheus naming and exposition conventions on a
//! node with some traffic: every family has one HELP and one TYPE line,
//! counter samples (and only those) end in `_total` (OpenMetrics names the
//! family without it: `# TYPE meshlet_x counter`, sample `meshlet_x_total`),
//! point-in-time gauges end in `_timestamp_seconds`, every name has the
//! `meshlet_` prefix (or is a standard `process_` one), and the exposition
//! ends with `# EOF`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{http_get, mosquitto_pub, run, stderr, NodeBuilder};

/// Names that break a convention and are kept for now (renaming a series
/// breaks dashboards); each with the name it should have.
const KNOWN_OFFENDERS: &[(&str, &str)] = &[(
    "meshlet_ingest_last_event_time_seconds",
    "meshlet_ingest_last_event_timestamp_seconds",
)];

#[test]
fn metric_names_follow_prometheus_conventions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let node = NodeBuilder::new(dir.path()).start().expect("node starts");
    let port = node.mqtt.expect("embedded broker").port();
    for payload in [r#"{"temperature_c": 20}"#, r#"{"temperature_c": 999}"#] {
        let out = mosquitto_pub(port, "sensors/s-1/telemetry", payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (status, text) = http_get(&node.url("/metrics"));
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    // The writer applied both messages (acked only once durable), so its
    // busy time is on the clock: what tells an operator whether the single
    // writer is what limits ingest.
    let busy: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("meshlet_ingest_writer_busy_seconds_total "))
        .and_then(|v| v.parse().ok())
        .expect("the writer's busy time is exported");
    assert!(busy > 0.0, "writer busy {busy} s after two writes");

    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut sampled: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["#", "TYPE", name, kind] => {
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    problems.push(format!("{name}: TYPE given twice"));
                }
            }
            ["#", "HELP", name, ..] => {
                if !helps.insert(name.to_string()) {
                    problems.push(format!("{name}: HELP given twice"));
                }
            }
            _ if line.starts_with('#') || line.trim().is_empty() => {}
            _ => {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                sampled.insert(name.to_string());
            }
        }
    }
    for name in &sampled {
        let family = [
            ("_bucket", "histogram"),
            ("_sum", "histogram"),
            ("_count", "histogram"),
        ]
        .iter()
        .chain(&[("_total", "counter")])
        .filter_map(|(suffix, kind)| Some((name.strip_suffix(suffix)?, *kind)))
        .find(|(base, kind)| types.get(*base).is_some_and(|k| k == kind))
        .map(|(base, _)| base)
        .unwrap_or(name);
        if !types.contains_key(family) {
            problems.push(format!("{family}: samples without a TYPE line"));
        }
        let counter = types.get(family).is_some_and(|k| k == "counter");
        if counter != name.ends_with("_total") {
            problems.push(format!("{name}: only counter samples end in _total"));
        }
    }
    let offenders: BTreeMap<&str, &str> = KNOWN_OFFENDERS.iter().copied().collect();
    for (name, kind) in &types {
        if !helps.contains(name) {
            problems.push(format!("{name}: no HELP line"));
        }
        if !(name.starts_with("meshlet_") || name.starts_with("process_")) {
            problems.push(format!("{name}: not in the meshlet_ namespace"));
        }
        if name.ends_with("_total") {
            problems.push(format!(
                "{name}: a {kind} family; a family name never ends in _total"
            ));
        }
        if name.ends_with("_time_seconds") && name != "process_start_time_seconds" {
            match offenders.get(name.as_str()) {
                Some(_) => {}
                None => problems.push(format!("{name}: a timestamp ends in _timestamp_seconds")),
            }
        }
    }
    // A known offender that is gone (renamed, or not emitted) must leave
    // the list too, so the list stays true.
    for (old, new) in KNOWN_OFFENDERS {
        if !types.contains_key(*old) {
            problems.push(format!(
                "{old} is no longer served (renamed to {new}?): update KNOWN_OFFENDERS"
            ));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{text}", problems.join("\n"));
    let (status, _) = node.stop();
    assert!(status.success());
}
