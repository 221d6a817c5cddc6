//! Sync through NATS JetStream: envelopes/s and records/s from one edge
//! into the stream, and out of it through one aggregator and through two
//! sharing one durable (the ratio two/one is the scale-out the durable
//! gives on this machine). Baseline, in the same run on the same server:
//! a plain async-nats client publishing messages of the edges' mean
//! envelope size one ack at a time (what the sender does), and pulling
//! and double-acking them from a durable (what an aggregator does) —
//! JetStream's own ceiling for this message pattern here.
//!
//! Phases, each timed from the node's `/readyz` to the figure in
//! `/metrics`:
//! 1. the edge, its upstream parked (no `url`), takes `records` readings
//!    over HTTP into its outbox, and stops;
//! 2. started again with the upstream's `url`, it sends them all
//!    (`meshlet_sync_pending` 0) — edge → JetStream;
//! 3. one aggregator on durable `one` applies them all
//!    (`meshlet_sync_applied_records_total`) — JetStream → store;
//! 4. two aggregators on durable `two` do the same together (timed from
//!    the first one ready: it may start alone).
//!
//! `cargo bench --bench sync_nats` runs the full size (`SYNC_NATS_RECORDS`,
//! default 50,000, in envelopes of `SYNC_NATS_BATCH`, default 100); under
//! `cargo test` (no `--bench` argument) a small smoke size, so CI proves
//! the harness and that every record arrives. Figures go to stdout as a
//! markdown table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

#[path = "../tests/common/mod.rs"]
mod common;
use bench::{metric, start_node, Killed, Node};
use common::bench;
use common::{free_port, wait_port};

const READING: &str = r#"
product: reading
version: 1
domain: bench
owner: bench@example.com
key: meter
fields:
  meter:   { type: string, required: true }
  n:       { type: int }
  kwh:     { type: float }
  status:  { type: string }
sources:
  - http: {}
"#;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A single JetStream server on a free port, its store in `dir`.
fn nats_server(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n",
            dir.join("js").display()
        ),
    )
    .expect("nats conf");
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server installed (tests/run.sh installs it)");
    wait_port(port);
    (Killed(child), port)
}

fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < deadline,
            "{what}: not done in {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn edge_config(url: Option<&str>, batch: usize) -> (String, String) {
    let product = format!(
        "{READING}sync:\n  - to: central\n    mode: history\n    when: {{ batch_age: 10ms, batch_size: {batch} }}\n"
    );
    let url = url.map(|u| format!("url = \"{u}\"\n")).unwrap_or_default();
    let config = format!(
        "[mqtt.embedded]\nenabled = false\n[sync]\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n[upstreams.central]\n{url}"
    );
    (product, config)
}

fn aggregator(dir: &Path, url: &str, durable: &str) -> Node {
    std::fs::create_dir_all(dir).expect("dir");
    start_node(
        dir,
        Path::new("data"),
        &[("reading.yaml", READING)],
        &format!(
            "[mqtt.embedded]\nenabled = false\n[aggregator.nats]\nurl = \"{url}\"\ndurable = \"{durable}\"\nbatch = 64\nack_wait = \"30s\"\n"
        ),
    )
}

/// Records the aggregator applied (from the one edge, whatever its
/// generated id).
fn applied(node: &Node) -> f64 {
    bench::http_get(&node.http, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with("meshlet_sync_applied_records_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The raw JetStream rates of `count` messages of `size` bytes: publish
/// with an ack each, then pull with a double ack each. (msgs/s, msgs/s)
fn baseline(port: u16, count: usize, size: usize) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        use async_nats::jetstream;
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .expect("connect");
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: "BASELINE".into(),
                subjects: vec!["baseline.>".into()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("stream");
        let payload = bytes::Bytes::from(vec![0x5au8; size]);
        let start = Instant::now();
        for i in 0..count {
            js.send_publish(
                "baseline.edge-1.reading",
                jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("b/{i}")),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
        }
        let publish = count as f64 / start.elapsed().as_secs_f64();
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                "baseline",
                jetstream::consumer::pull::Config {
                    durable_name: Some("baseline".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .expect("consumer");
        let start = Instant::now();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(64)
            .messages()
            .await
            .expect("pull");
        for _ in 0..count {
            let message = messages.next().await.expect("message").expect("delivered");
            message.double_ack().await.expect("ack");
        }
        let consume = count as f64 / start.elapsed().as_secs_f64();
        (publish, consume)
    })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let records = setting("SYNC_NATS_RECORDS", if full { 50_000 } else { 2_000 });
    let batch = setting("SYNC_NATS_BATCH", 100);
    let deadline = Duration::from_secs(if full { 900 } else { 120 });
    let dir = tempfile::tempdir().expect("tempdir");
    let (_nats, port) = nats_server(dir.path());
    let url = format!("nats://127.0.0.1:{port}");

    // 1. The edge fills its outbox with the upstream parked.
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir).expect("edge dir");
    let (product, config) = edge_config(None, batch);
    let edge = start_node(
        &edge_dir,
        Path::new("data"),
        &[("reading.yaml", &product)],
        &config,
    );
    for chunk in (0..records).collect::<Vec<_>>().chunks(1_000) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "{{\"meter\":\"m-{}\",\"n\":{i},\"kwh\":{}.25,\"status\":\"ok\"}}",
                    i % 1_000,
                    i % 97
                )
            })
            .collect();
        let body = format!("[{}]", rows.join(","));
        let (status, answer) =
            bench::http_request(&edge.http, "POST", "/ingest/reading", body.as_bytes());
        assert_eq!(status, 200, "{answer}");
    }
    let queued = metric(&edge.http, "meshlet_sync_pending{upstream=\"central\"}");
    assert_eq!(queued as usize, records, "every record waits in the outbox");
    drop(edge);

    // 2. Edge → JetStream.
    let (product, config) = edge_config(Some(&url), batch);
    let edge = start_node(
        &edge_dir,
        Path::new("data"),
        &[("reading.yaml", &product)],
        &config,
    );
    let send = wait_until("edge → JetStream", deadline, || {
        metric(&edge.http, "meshlet_sync_pending{upstream=\"central\"}") == 0.0
    });
    let envelopes = metric(
        &edge.http,
        "meshlet_sync_batches_total{upstream=\"central\"}",
    );
    let sent_bytes = metric(
        &edge.http,
        "meshlet_sync_sent_bytes_total{upstream=\"central\"}",
    );
    assert!(envelopes > 0.0);
    drop(edge);

    // 3. One aggregator.
    let one = aggregator(&dir.path().join("agg-one"), &url, "one");
    let one_time = wait_until("one aggregator", deadline, || {
        applied(&one) >= records as f64
    });
    drop(one);

    // 4. Two aggregators on one durable, timed from the first one ready.
    let ((a, a_ready), (b, b_ready)) = std::thread::scope(|s| {
        let start = |name: &'static str| {
            let path = dir.path().join(name);
            let url = url.clone();
            s.spawn(move || {
                let node = aggregator(&path, &url, "two");
                (node, Instant::now())
            })
        };
        let (a, b) = (start("agg-two-a"), start("agg-two-b"));
        (a.join().expect("a"), b.join().expect("b"))
    });
    let first_ready = a_ready.min(b_ready);
    wait_until("two aggregators", deadline, || {
        applied(&a) + applied(&b) >= records as f64
    });
    let two_time = first_ready.elapsed();
    let share = applied(&a) / (applied(&a) + applied(&b)).max(1.0);
    drop((a, b));

    let mean_size = (sent_bytes / envelopes) as usize;
    let (raw_publish, raw_consume) = baseline(port, envelopes as usize, mean_size);

    let rate = |n: f64, t: Duration| n / t.as_secs_f64();
    let per_envelope = records as f64 / envelopes;
    println!("| phase | envelopes/s | records/s | vs raw JetStream |");
    println!("|---|---|---|---|");
    println!(
        "| raw publish (ack each, {mean_size} B) | {:.0} | — | 1 |",
        raw_publish
    );
    println!(
        "| edge → JetStream | {:.0} | {:.0} | {:.3} |",
        rate(envelopes, send),
        rate(records as f64, send),
        rate(envelopes, send) / raw_publish
    );
    println!("| raw pull + double ack | {:.0} | — | 1 |", raw_consume);
    println!(
        "| one aggregator | {:.0} | {:.0} | {:.3} |",
        rate(records as f64 / per_envelope, one_time),
        rate(records as f64, one_time),
        rate(envelopes, one_time) / raw_consume
    );
    println!(
        "| two aggregators, one durable (a took {:.0}%) | {:.0} | {:.0} | {:.3} |",
        (share * 100.0).abs(),
        rate(envelopes, two_time),
        rate(records as f64, two_time),
        rate(envelopes, two_time) / raw_consume
    );
    println!(
        "\ntwo / one aggregators: {:.2}× ({records} records in {envelopes} envelopes of ~{per_envelope:.0})",
        one_time.as_secs_f64() / two_time.as_secs_f64()
    );
}
