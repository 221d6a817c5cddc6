//! The kill loop (issue 24): the real node is SIGKILLed `KILL_LOOP` times
//! (10 by default, as CI runs it; `KILL_LOOP=100` for the full run) while
//! a device publishes over QoS 1 to its embedded broker, restarted each
//! time. After the last restart every acknowledged record is in history
//! exactly once (a resend after a kill is not written twice), and no
//! start-up replayed for longer than one checkpoint interval.

use crate::common;

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
quality: { on_invalid: reject }
"#;

/// Devices publishing in turn.
const DEVICES: usize = 50;
/// The checkpoint interval the node runs with: kills land before, during
/// and after checkpoints, and it bounds every replay.
const CHECKPOINT_MS: u64 = 2000;

/// Message `index`: device `index % DEVICES`, its `index / DEVICES`th
/// reading.
fn message(index: usize) -> (String, Vec<u8>) {
    let seq = index / DEVICES;
    (
        format!("dev/d{:02}/count", index % DEVICES),
        format!(
            r#"{{"seq": {seq}, "ts": {}}}"#,
            1_700_000_000_000u64 + seq as u64
        )
        .into_bytes(),
    )
}

/// Publishes messages 0, 1, 2, … at QoS 1, up to 20 in flight, until
/// `stop` is set; then waits for the messages in flight to be
/// acknowledged and returns, per message sent, whether it was. On a lost
/// connection it reconnects with its persistent session and resends the
/// unacknowledged ones with DUP set, as a device does. Packet id =
/// index mod 60,000 + 1 (unique within the window).
fn publish_until(port: u16, stop: &AtomicBool) -> Vec<bool> {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{Packet, Publish};
    use rumqttc::mqttbytes::QoS;

    const WINDOW: usize = 20;
    let mut acked: Vec<bool> = Vec::new();
    let mut in_flight: VecDeque<usize> = VecDeque::new();
    let publish = |index: usize, dup: bool| {
        let (topic, payload) = message(index);
        let mut packet = Publish::new(topic, QoS::AtLeastOnce, payload);
        packet.pkid = (index % 60_000 + 1) as u16;
        packet.dup = dup;
        let mut buffer = BytesMut::new();
        Packet::Publish(packet)
            .write(&mut buffer, usize::MAX)
            .expect("encode");
        buffer
    };
    let mut drain_deadline: Option<Instant> = None;
    'connection: loop {
        if stop.load(Ordering::SeqCst) {
            let deadline = *drain_deadline.get_or_insert(Instant::now() + Duration::from_secs(60));
            if in_flight.is_empty() || Instant::now() > deadline {
                break;
            }
        }
        let Some(mut stream) =
            raw_mqtt_connect(port, "kill-loop-publisher", Duration::from_millis(20))
        else {
            continue;
        };
        let mut incoming = BytesMut::new();
        let mut connected = false;
        let mut resend: VecDeque<usize> = in_flight.clone();
        let mut sent_since_pause = 0;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if stopping {
                let deadline =
                    *drain_deadline.get_or_insert(Instant::now() + Duration::from_secs(60));
                if in_flight.is_empty() || Instant::now() > deadline {
                    break 'connection;
                }
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
                        if let Some(at) = in_flight
                            .iter()
                            .position(|&i| i % 60_000 + 1 == usize::from(ack.pkid))
                        {
                            acked[in_flight[at]] = true;
                            in_flight.remove(at);
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
            while !stopping && in_flight.len() < WINDOW {
                let index = acked.len();
                acked.push(false);
                // Sent or not, it counts as in flight: resent on the next
                // connection if the write fails.
                in_flight.push_back(index);
                if stream.write_all(&publish(index, false)).is_err() {
                    continue 'connection;
                }
                sent_since_pause += 1;
                if sent_since_pause == 5 {
                    sent_since_pause = 0;
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
        }
    }
    acked
}

fn start(dir: &Path, port: u16) -> NodeProcess {
    NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .env(
            "MESHLET_MQTT__EMBEDDED__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .start()
        .expect("node starts")
}

/// `millis` of every "journal replayed" line the node logged so far.
fn replays(node: &NodeProcess) -> Vec<u64> {
    node.seen_logs
        .iter()
        .filter(|l| l.contains("journal replayed"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["millis"]
                .as_u64()
                .or_else(|| v["fields"]["millis"].as_u64())
        })
        .collect()
}

#[test]
fn every_acknowledged_record_survives_a_loop_of_sigkills() {
    let kills_wanted: usize = std::env::var("KILL_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/counter.yaml"), PRODUCT).expect("product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!(
            "data_dir = \"data\"\nproducts = [\"products\"]\n[mqtt.embedded]\nlisten = \"127.0.0.1:{port}\"\n[store]\ncheckpoint_interval = \"{CHECKPOINT_MS}ms\"\n"
        ),
    )
    .expect("config");
    let stop = Arc::new(AtomicBool::new(false));
    let mut node = start(dir.path(), port);
    let publisher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || publish_until(port, &stop))
    };
    let mut rng = rand::rng();
    let mut replay_millis: Vec<u64> = Vec::new();
    let mut ready_millis: Vec<u128> = Vec::new();
    for _ in 0..kills_wanted {
        // Up to a little over one checkpoint interval: kills land before,
        // during and after the background checkpoint.
        std::thread::sleep(Duration::from_millis(
            rng.random_range(100..CHECKPOINT_MS + 500),
        ));
        node.signal(libc::SIGKILL);
        let _ = node.wait_exit(Duration::from_secs(10));
        let started = Instant::now();
        node = start(dir.path(), port);
        ready_millis.push(started.elapsed().as_millis());
        replay_millis.extend(replays(&node));
    }
    // Let the last node take some traffic, then drain the publisher.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let acked = publisher.join().expect("publisher");
    let stopped = node.stop();
    assert!(stopped.0.success(), "the last node stops cleanly");
    let sent = acked.len();
    let acknowledged = acked.iter().filter(|a| **a).count();

    let store = open_store(&dir.path().join("data"));
    let mut missing = Vec::new();
    let mut duplicates = 0usize;
    let mut stored = 0usize;
    let mut expected: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for (index, _) in acked.iter().enumerate().filter(|(_, a)| **a) {
        expected
            .entry(index % DEVICES)
            .or_default()
            .push((index / DEVICES) as i64);
    }
    for device in 0..DEVICES {
        let seqs: Vec<i64> = store
            .history(
                "counter",
                &format!("d{device:02}"),
                &HistoryQuery::default(),
            )
            .expect("history")
            .iter()
            .filter_map(|e| match e.fields.get("seq") {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            })
            .collect();
        stored += seqs.len();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        duplicates += seqs.len() - sorted.len();
        for seq in expected.get(&device).into_iter().flatten() {
            if sorted.binary_search(seq).is_err() {
                missing.push((device, *seq));
            }
        }
    }
    let max_replay = replay_millis.iter().copied().max().unwrap_or(0);
    let max_ready = ready_millis.iter().copied().max().unwrap_or(0);
    eprintln!(
        "kill loop: {kills_wanted} kills, {sent} sent, {acknowledged} acknowledged, {stored} stored; \
         {} replays at open, longest {max_replay} ms (mean {:.0} ms); start to ready: longest {max_ready} ms, mean {:.0} ms",
        replay_millis.len(),
        replay_millis.iter().sum::<u64>() as f64 / replay_millis.len().max(1) as f64,
        ready_millis.iter().sum::<u128>() as f64 / ready_millis.len().max(1) as f64,
    );
    assert_eq!(
        acknowledged, sent,
        "every message was acknowledged in the end"
    );
    assert!(
        acknowledged > kills_wanted * 20,
        "traffic ran through the loop"
    );
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    assert_eq!(duplicates, 0, "history events written twice");
    assert!(
        !replay_millis.is_empty(),
        "some kill left frames to replay (else the loop tested nothing of the journal)"
    );
    assert!(
        max_replay <= CHECKPOINT_MS,
        "a replay took {max_replay} ms, longer than one checkpoint interval ({CHECKPOINT_MS} ms)"
    );
}
