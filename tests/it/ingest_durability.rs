//! Nothing accepted is lost, nothing is written twice: the node is killed
//! with SIGKILL at random moments while MQTT (through a real Mosquitto with
//! a persistent session), HTTP push and a tailed file feed it, restarted,
//! and the store is read back from disk at the end.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshlet::record::Value;
use meshlet::store::HistoryQuery;
use rand::Rng;

const PRODUCT: &str = r#"
product: counter
version: 1
domain: test
owner: test@example.com
key: device
fields:
  device: { type: string, required: true }
  seq:    { type: int, required: true }
sources:
  - mqtt: { topic: "dev/{device}/count", format: json, event_time: /ts }
  - http: { format: ndjson, event_time: /ts }
  - file: { path: "../feed.ndjson", format: ndjson, event_time: /ts }
quality: { on_invalid: reject }
"#;

/// Records without an event time: only an `Idempotency-Key` tells a
/// resend from a new push.
const UNTIMED: &str = r#"
product: untimed
version: 1
domain: test
owner: test@example.com
key: device
fields:
  device: { type: string, required: true }
  seq:    { type: int, required: true }
sources:
  - http: { format: ndjson }
quality: { on_invalid: reject }
"#;

fn setup(extra_config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/counter.yaml"), PRODUCT).expect("product");
    std::fs::write(dir.path().join("products/untimed.yaml"), UNTIMED).expect("product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n{extra_config}"),
    )
    .expect("config");
    dir
}

fn start(dir: &Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .start()
        .expect("node starts")
}

/// Every device's sequence numbers as stored in history, in order.
fn stored_sequences(dir: &Path, devices: &[String]) -> BTreeMap<String, Vec<i64>> {
    stored_sequences_of(dir, "counter", devices)
}

fn stored_sequences_of(
    dir: &Path,
    product: &str,
    devices: &[String],
) -> BTreeMap<String, Vec<i64>> {
    let store = open_store(&dir.join("data"));
    devices
        .iter()
        .map(|device| {
            let seqs = store
                .history(product, device, &HistoryQuery::default())
                .expect("history")
                .iter()
                .filter_map(|e| match e.fields.get("seq") {
                    Some(Value::Int(n)) => Some(*n),
                    _ => None,
                })
                .collect();
            (device.clone(), seqs)
        })
        .collect()
}

fn assert_exactly_once(found: &BTreeMap<String, Vec<i64>>, per_device: i64) {
    for (device, seqs) in found {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        let expected: Vec<i64> = (0..per_device).collect();
        assert_eq!(
            sorted,
            expected,
            "{device}: every sequence number exactly once (got {} events)",
            seqs.len()
        );
    }
}

/// Kills the node at random moments while `busy` is set, restarting it
/// each time; returns the last, still running node and how many kills
/// landed while the feed was still busy.
fn kill_while(dir: &Path, busy: &AtomicBool, rounds: usize) -> (NodeProcess, usize) {
    let mut rng = rand::rng();
    let mut node = start(dir);
    let mut kills = 0;
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        if !busy.load(Ordering::SeqCst) {
            break;
        }
        node.signal(libc::SIGKILL);
        let _ = node.wait_exit(Duration::from_secs(10));
        kills += 1;
        node = start(dir);
    }
    (node, kills)
}

#[test]
fn mqtt_qos1_through_kills_arrives_exactly_once() {
    let broker = Mosquitto::start();
    let dir = setup(&format!(
        "[mqtt.external]\nurl = \"{}\"\nclient_id = \"gw-durability\"\n",
        broker.url()
    ));
    let devices: Vec<String> = (0..3).map(|d| format!("d{d}")).collect();
    let per_device = 300i64;
    let busy = Arc::new(AtomicBool::new(true));

    // The node's persistent session must exist (subscribed) before the
    // devices publish: a broker queues only for known subscriptions.
    let first = start(dir.path());
    let subscribed = eventually(Duration::from_secs(15), || {
        let out = mosquitto_pub(
            broker.port,
            "dev/probe/count",
            br#"{"seq": 0, "ts": 1}"#,
            1,
            false,
        );
        assert!(out.status.success());
        metric(&first, "meshlet_ingest_records_written_total").unwrap_or(0.0) >= 1.0
    });
    assert!(subscribed, "the node subscribed to the external broker");
    drop(first);

    // The publisher: its own rumqttc client to Mosquitto, QoS 1.
    let publisher = {
        let devices = devices.clone();
        let busy = busy.clone();
        let port = broker.port;
        std::thread::spawn(move || {
            let messages: Vec<(String, Vec<u8>)> = (0..per_device)
                .flat_map(|seq| {
                    devices.iter().map(move |d| {
                        (
                            format!("dev/{d}/count"),
                            format!(r#"{{"seq": {seq}, "ts": {}}}"#, 1_700_000_000_000i64 + seq)
                                .into_bytes(),
                        )
                    })
                })
                .collect();
            let acked = publish_slowly(port, &messages);
            busy.store(false, Ordering::SeqCst);
            acked
        })
    };
    let (node, kills) = kill_while(dir.path(), &busy, 4);
    let acked = publisher.join().expect("publisher");
    assert!(kills >= 2, "the node was killed mid-stream ({kills} times)");
    assert_eq!(
        acked,
        devices.len() * per_device as usize,
        "the broker took every message"
    );

    // Wait until the node has caught up with the broker's queue.
    let caught_up = eventually(Duration::from_secs(30), || {
        metric(&node, "meshlet_mqtt_client_connects_total").unwrap_or(0.0) >= 1.0
            && quiet(&node, "mqtt:0")
    });
    assert!(
        caught_up,
        "the node drained the broker's queue; metrics:\n{}\nlogs:\n{}",
        http_get(&node.url("/metrics")).1,
        node.seen_logs.join("\n")
    );
    let (status, _) = node.stop();
    assert!(status.success());
    let found = stored_sequences(dir.path(), &devices);
    assert_exactly_once(&found, per_device);
}

/// True when a source received nothing for a while (the store cannot be
/// opened while the node runs, so progress is read from its counters).
fn quiet(node: &NodeProcess, source: &str) -> bool {
    let series =
        format!("meshlet_ingest_messages_total{{product=\"counter\",source=\"{source}\"}}");
    let before = metric(node, &series).unwrap_or(0.0);
    std::thread::sleep(Duration::from_millis(1500));
    let after = metric(node, &series).unwrap_or(0.0);
    before == after
}

/// Publishes with QoS 1, a few in flight at a time, reconnecting on
/// errors; returns how many PUBACKs came.
/// Publishes `messages` at QoS 1 with up to 20 in flight and returns how
/// many were acknowledged, knowing exactly which PUBACK acknowledges which
/// message: packet id = message index + 1 (unique within the window). On
/// any connection loss it reconnects with its persistent session and
/// resends every unacknowledged message of the window with DUP set, as a
/// device should. A small client of our own on the crate's MQTT codec,
/// because rumqttc now and then stalls after reconnects (resent publishes
/// keep their packet ids, new ones collide with them, and a collided
/// publish is neither resent nor dropped), which made this test blame the
/// node for the client.
fn publish_slowly(port: u16, messages: &[(String, Vec<u8>)]) -> usize {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{Packet, Publish};
    use rumqttc::mqttbytes::QoS;
    use std::collections::VecDeque;
    use std::io::{ErrorKind, Read};

    const WINDOW: usize = 20;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut acked = vec![false; messages.len()];
    let mut in_flight: VecDeque<usize> = VecDeque::new();
    let mut next = 0usize;
    let publish = |index: usize, dup: bool| {
        let (topic, payload) = &messages[index];
        let mut packet = Publish::new(topic.clone(), QoS::AtLeastOnce, payload.clone());
        packet.pkid = u16::try_from(index + 1).expect("fewer than 65535 messages");
        packet.dup = dup;
        let mut buffer = BytesMut::new();
        Packet::Publish(packet)
            .write(&mut buffer, usize::MAX)
            .expect("encode");
        buffer
    };
    'connection: while acked.iter().any(|a| !a) && std::time::Instant::now() < deadline {
        let Some(mut stream) =
            raw_mqtt_connect(port, "durability-publisher", Duration::from_millis(50))
        else {
            continue;
        };
        let mut incoming = BytesMut::new();
        let mut connected = false;
        // Resend what the last connection left unacknowledged, then keep
        // the window full.
        let mut resend: VecDeque<usize> = in_flight.clone();
        let mut sent_since_pause = 0;
        loop {
            if std::time::Instant::now() >= deadline {
                break 'connection;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => continue 'connection,
                Ok(n) => incoming.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => continue 'connection,
            }
            loop {
                match Packet::read(&mut incoming, usize::MAX) {
                    Ok(Packet::ConnAck(_)) => connected = true,
                    Ok(Packet::PubAck(ack)) => {
                        let index = usize::from(ack.pkid) - 1;
                        if let Some(at) = in_flight.iter().position(|&i| i == index) {
                            in_flight.remove(at);
                            acked[index] = true;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if !connected {
                continue;
            }
            while let Some(index) = resend.pop_front() {
                if stream.write_all(&publish(index, true)).is_err() {
                    continue 'connection;
                }
            }
            while in_flight.len() < WINDOW && next < messages.len() {
                if stream.write_all(&publish(next, false)).is_err() {
                    // Sent or not, it counts as in flight: resent on the
                    // next connection.
                    in_flight.push_back(next);
                    next += 1;
                    continue 'connection;
                }
                in_flight.push_back(next);
                next += 1;
                sent_since_pause += 1;
                if sent_since_pause == 5 {
                    sent_since_pause = 0;
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
            if acked.iter().all(|a| *a) {
                break 'connection;
            }
        }
    }
    let count = acked.iter().filter(|a| **a).count();
    if count < messages.len() {
        eprintln!(
            "publisher: {count} of {} acknowledged; {} in flight, {} never sent",
            messages.len(),
            in_flight.len(),
            messages.len() - next
        );
    }
    count
}

/// POST that reports failure instead of panicking (the node may be dead).
fn try_post(url: &str, body: String) -> Result<(u16, String), String> {
    try_post_keyed(url, body, None)
}

fn try_post_keyed(url: &str, body: String, key: Option<&str>) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(url)
            .timeout(Duration::from_secs(10))
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    })
}

#[test]
fn http_push_through_kills_loses_no_acknowledged_batch_and_retries_are_not_doubled() {
    let dir = setup("");
    let devices = vec!["h0".to_string(), "h1".to_string()];
    let batches = 120i64;
    let per_batch = 5i64;
    let http = Arc::new(std::sync::Mutex::new(None::<String>));
    let busy = Arc::new(AtomicBool::new(true));

    let pusher = {
        let http = http.clone();
        let busy = busy.clone();
        let devices = devices.clone();
        std::thread::spawn(move || {
            let mut acknowledged = 0;
            for batch in 0..batches {
                let body: String = devices
                    .iter()
                    .flat_map(|d| {
                        (0..per_batch).map(move |i| {
                            let seq = batch * per_batch + i;
                            format!(
                                "{{\"device\": \"{d}\", \"seq\": {seq}, \"ts\": {}}}\n",
                                1_700_000_000_000i64 + seq
                            )
                        })
                    })
                    .collect();
                // Retry the same batch until it is acknowledged: a client
                // never knows whether an unanswered request was written.
                loop {
                    let url = http.lock().expect("lock").clone();
                    if let Some(url) = url {
                        if let Ok((200, _)) = try_post(&url, body.clone()) {
                            acknowledged += 1;
                            std::thread::sleep(Duration::from_millis(10));
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            busy.store(false, Ordering::SeqCst);
            acknowledged
        })
    };

    let mut rng = rand::rng();
    let mut node = start(dir.path());
    *http.lock().expect("lock") = Some(node.url("/ingest/counter"));
    let mut kills = 0;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..400)));
        if !busy.load(Ordering::SeqCst) {
            break;
        }
        kills += 1;
        node.signal(libc::SIGKILL);
        let _ = node.wait_exit(Duration::from_secs(10));
        node = start(dir.path());
        *http.lock().expect("lock") = Some(node.url("/ingest/counter"));
    }
    let acknowledged = pusher.join().expect("pusher");
    assert_eq!(acknowledged, batches);
    assert!(kills >= 2, "the node was killed mid-push ({kills} times)");
    let (status, _) = node.stop();
    assert!(status.success());
    assert_exactly_once(&stored_sequences(dir.path(), &devices), batches * per_batch);
}

/// Records without event times, pushed in batches of 200 with one
/// `Idempotency-Key` per batch, resent under the same key until answered,
/// while the node is killed (SIGKILL) at random moments and restarted:
/// each batch's records are in history exactly once. Without the key, a
/// kill between a batch's durable write and its answer writes the resend
/// a second time.
#[test]
fn http_push_with_idempotency_keys_through_kills_is_applied_exactly_once() {
    let dir = setup("");
    let devices = vec!["u0".to_string(), "u1".to_string()];
    let batches = 300i64;
    let per_batch = 100i64;
    let http = Arc::new(std::sync::Mutex::new(None::<String>));
    let busy = Arc::new(AtomicBool::new(true));
    let resent = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let pusher = {
        let (http, busy, devices, resent) =
            (http.clone(), busy.clone(), devices.clone(), resent.clone());
        std::thread::spawn(move || {
            let mut acknowledged = 0;
            for batch in 0..batches {
                let body: String = devices
                    .iter()
                    .flat_map(|d| {
                        (0..per_batch).map(move |i| {
                            let seq = batch * per_batch + i;
                            format!("{{\"device\": \"{d}\", \"seq\": {seq}}}\n")
                        })
                    })
                    .collect();
                let key = format!("batch-{batch}");
                let mut tries = 0;
                loop {
                    let url = http.lock().expect("lock").clone();
                    if let Some(url) = url {
                        tries += 1;
                        if let Ok((200, _)) = try_post_keyed(&url, body.clone(), Some(&key)) {
                            acknowledged += 1;
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if tries > 1 {
                    resent.fetch_add(1, Ordering::SeqCst);
                }
            }
            busy.store(false, Ordering::SeqCst);
            acknowledged
        })
    };

    let mut rng = rand::rng();
    let mut node = start(dir.path());
    *http.lock().expect("lock") = Some(node.url("/ingest/untimed"));
    let mut kills = 0;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..500)));
        if !busy.load(Ordering::SeqCst) {
            break;
        }
        kills += 1;
        node.signal(libc::SIGKILL);
        let _ = node.wait_exit(Duration::from_secs(10));
        node = start(dir.path());
        *http.lock().expect("lock") = Some(node.url("/ingest/untimed"));
    }
    let acknowledged = pusher.join().expect("pusher");
    assert_eq!(acknowledged, batches);
    assert!(kills >= 2, "the node was killed mid-push ({kills} times)");
    let replayed = metric(
        &node,
        "meshlet_ingest_idempotent_resends_total{outcome=\"replayed\"}",
    );
    eprintln!(
        "{kills} kills, {} batches resent, {replayed:?} replayed by the last node",
        resent.load(Ordering::SeqCst)
    );
    let (status, _) = node.stop();
    assert!(status.success());
    for (device, seqs) in stored_sequences_of(dir.path(), "untimed", &devices) {
        let mut counts = BTreeMap::new();
        for seq in &seqs {
            *counts.entry(*seq).or_insert(0usize) += 1;
        }
        let doubled: Vec<i64> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(seq, _)| *seq)
            .collect();
        let missing = (0..batches * per_batch)
            .filter(|seq| !counts.contains_key(seq))
            .count();
        assert!(
            doubled.is_empty() && missing == 0 && seqs.len() as i64 == batches * per_batch,
            "{device}: {} events for {} records, {} written more than once (first: {:?}), {missing} missing",
            seqs.len(),
            batches * per_batch,
            doubled.len(),
            doubled.first()
        );
    }
}

#[test]
fn file_tail_through_kills_and_rotation_reads_every_line_once() {
    let dir = setup("[ingest]\nfile_poll_interval = \"50ms\"\n");
    // The product's file path is relative to its folder: dir/feed.ndjson.
    let feed = dir.path().join("feed.ndjson");
    let devices = vec!["f0".to_string()];
    let lines = 3000i64;
    let busy = Arc::new(AtomicBool::new(true));

    let writer = {
        let feed = feed.clone();
        let busy = busy.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&feed).expect("create feed");
            for seq in 0..lines {
                if seq == lines / 2 {
                    // logrotate's default: rename, then a new file.
                    drop(file);
                    std::fs::rename(&feed, feed.with_extension("ndjson.1")).expect("rotate");
                    file = std::fs::File::create(&feed).expect("new feed");
                }
                // Half a line first, then the rest: a reader must never
                // take a partial line.
                let line = format!(
                    "{{\"device\": \"f0\", \"seq\": {seq}, \"ts\": {}}}\n",
                    1_700_000_000_000i64 + seq
                );
                let (a, b) = line.split_at(line.len() / 2);
                file.write_all(a.as_bytes()).expect("write");
                file.flush().expect("flush");
                file.write_all(b.as_bytes()).expect("write");
                if seq % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            file.sync_all().expect("sync");
            busy.store(false, Ordering::SeqCst);
        })
    };
    let (node, kills) = kill_while(dir.path(), &busy, 4);
    writer.join().expect("writer");
    assert!(kills >= 2, "the node was killed mid-file ({kills} times)");
    // Until the node has read everything in the current file.
    assert!(eventually(Duration::from_secs(30), || quiet(
        &node, "file:2"
    )));
    let (status, _) = node.stop();
    assert!(status.success());
    // Including lines of the rotated file that the node had not reached
    // when it was killed: it finishes that file first after a restart.
    assert_exactly_once(&stored_sequences(dir.path(), &devices), lines);
}

#[test]
fn embedded_broker_acks_only_durable_messages_through_kills() {
    // The node's own broker on a fixed port, so the publisher reconnects to
    // the restarted node and resends what was not acknowledged.
    let port = free_port();
    let dir = setup(&format!("[mqtt.embedded]\nlisten = \"127.0.0.1:{port}\"\n"));
    let devices: Vec<String> = (0..2).map(|d| format!("e{d}")).collect();
    let per_device = 500i64;
    let busy = Arc::new(AtomicBool::new(true));
    let start_embedded = |dir: &Path| {
        NodeBuilder::new(dir)
            .arg("--config")
            .arg("meshlet.toml")
            .env(
                "MESHLET_MQTT__EMBEDDED__LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .start()
            .expect("node starts")
    };
    let mut node = start_embedded(dir.path());
    let publisher = {
        let devices = devices.clone();
        let busy = busy.clone();
        std::thread::spawn(move || {
            let messages: Vec<(String, Vec<u8>)> = (0..per_device)
                .flat_map(|seq| {
                    devices.iter().map(move |d| {
                        (
                            format!("dev/{d}/count"),
                            format!(r#"{{"seq": {seq}, "ts": {}}}"#, 1_700_000_000_000i64 + seq)
                                .into_bytes(),
                        )
                    })
                })
                .collect();
            let acked = publish_slowly(port, &messages);
            busy.store(false, Ordering::SeqCst);
            acked
        })
    };
    let mut rng = rand::rng();
    let mut kills = 0;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..350)));
        if !busy.load(Ordering::SeqCst) {
            break;
        }
        node.signal(libc::SIGKILL);
        let _ = node.wait_exit(Duration::from_secs(10));
        kills += 1;
        node = start_embedded(dir.path());
    }
    let acked = publisher.join().expect("publisher");
    assert_eq!(
        acked,
        devices.len() * per_device as usize,
        "every message was acknowledged in the end"
    );
    assert!(kills >= 4, "the node was killed mid-stream ({kills} times)");
    let (status, _) = node.stop();
    assert!(status.success());
    // Every PUBACK the publisher got was for a durable message: nothing is
    // missing although the broker died with the node, and resends after
    // the restarts were not written twice.
    assert_exactly_once(&stored_sequences(dir.path(), &devices), per_device);
}
