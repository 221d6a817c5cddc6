//! Graceful shutdown of the real binary, as the README promises it: a
//! request in flight when SIGTERM arrives is finished and what it was
//! acknowledged for is stored; `/readyz` answers 503 `stopping` while the
//! node drains; a second signal exits at once.
//!
//! The push is held in flight deterministically: the client sends the
//! head with `Expect: 100-continue`, waits for the node's `100 Continue`
//! (the handler has started reading the body) and sends only half of the
//! body before the signal.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

const PRODUCT: &str = r#"
product: asset
version: 1
domain: test
owner: test@example.com
key: asset_id
fields:
  asset_id: { type: string, required: true }
  name:     { type: string, required: true }
sources:
  - http: {}
  - mqtt: { topic: "dev/{asset_id}", format: json }
"#;

const RECORDS: usize = 200;

fn start(grace: &str) -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("dir");
    std::fs::write(dir.path().join("products/asset.yaml"), PRODUCT).expect("write");
    let node = NodeBuilder::new(dir.path())
        .arg("--products")
        .arg("products")
        .arg("--data-dir")
        .arg("data")
        .env("MESHLET_SHUTDOWN_GRACE", grace)
        .start()
        .expect("node starts");
    (dir, node)
}

fn body() -> Vec<u8> {
    (0..RECORDS)
        .map(|i| format!("{{\"asset_id\": \"A-{i}\", \"name\": \"n{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A push whose head the handler has taken and whose body is half sent.
fn push_in_flight(http: SocketAddr, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "POST /ingest/asset HTTP/1.1\r\nhost: node\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    )
    .expect("send head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream
        .write_all(&body[..body.len() / 2])
        .expect("first half");
    stream
}

/// `/readyz` by hand: the status code, or `None` when the connection is
/// refused or cut (reqwest would panic in the harness's `http_get`).
fn readyz(http: SocketAddr) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(http).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let code = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

#[test]
fn sigterm_during_a_push_finishes_it_stores_it_and_readyz_says_stopping() {
    let (dir, mut node) = start("30s");
    assert_eq!(readyz(node.http).map(|(c, _)| c), Some(200));
    let body = body();
    let mut push = push_in_flight(node.http, &body);

    node.signal(libc::SIGTERM);
    node.wait_for_log(Duration::from_secs(10), |l| l.contains("shutting down"))
        .expect("the node starts stopping");
    // Polled through the stop: the push is still open, so the node is
    // draining, and says so instead of refusing the connection.
    let (mut polls, mut last, mut ready_after_signal) = (0, None, false);
    let stopping = eventually(Duration::from_secs(10), || {
        let answer = readyz(node.http);
        polls += 1;
        ready_after_signal |= answer.as_ref().is_some_and(|(code, _)| *code == 200);
        let hit = answer
            .as_ref()
            .is_some_and(|(code, body)| *code == 503 && body.contains("\"stopping\""));
        last = answer;
        hit
    });
    assert!(
        stopping,
        "readyz while draining, {polls} polls, the last: {last:?}"
    );
    assert!(!ready_after_signal, "never ready after the signal");

    push.write_all(&body[body.len() / 2..])
        .expect("second half");
    let mut answer = String::new();
    push.read_to_string(&mut answer).expect("the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"accepted\":{RECORDS}")),
        "{answer}"
    );

    let status = node.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "clean stop: {status}");
    assert_eq!(readyz(node.http), None, "closed once stopped");
    let store = open_store(&dir.path().join("data"));
    assert_eq!(
        store.count("asset").expect("count"),
        RECORDS as u64,
        "everything acknowledged is stored"
    );
    for i in [0, RECORDS / 2, RECORDS - 1] {
        assert!(store
            .get("asset", &format!("A-{i}"))
            .expect("read")
            .is_some());
    }
}

#[test]
fn a_second_signal_exits_at_once_while_the_first_still_drains() {
    use std::os::unix::process::ExitStatusExt as _;
    // A grace far beyond the deadline below: only the second signal can
    // make the node exit in time.
    let (_dir, mut node) = start("120s");
    let body = body();
    let _push = push_in_flight(node.http, &body);

    node.signal(libc::SIGTERM);
    node.wait_for_log(Duration::from_secs(10), |l| l.contains("shutting down"))
        .expect("the node starts stopping");
    assert!(
        node.wait_exit(Duration::from_millis(500)).is_err(),
        "the first signal drains: the held push keeps the node up"
    );
    node.signal(libc::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(5))
        .expect("the second signal exits at once");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(status.signal(), None, "exited, not killed");
}

/// A QoS 1 stream into the embedded broker, SIGTERM in the middle of it:
/// every message the node sent a PUBACK for is in the store after the
/// stop; the client (raw frames, its own packet ids) knows exactly which.
#[test]
fn sigterm_during_a_qos1_stream_stores_every_acknowledged_message() {
    use common::hostile::{mqtt_connect, publish_frame, read_packet};
    use rumqttc::QoS;
    use std::sync::{Arc, Mutex};

    const MESSAGES: u16 = 30_000;
    let (dir, mut node) = start("30s");
    let broker = node.mqtt.expect("the embedded broker runs");
    let (stream, connack) = mqtt_connect(broker, "stream", true);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]), "accepted");
    let mut reader = stream.try_clone().expect("clone");
    let acked = Arc::new(Mutex::new(Vec::<u16>::new()));
    let acks = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            while let Some((first, body)) = read_packet(&mut reader) {
                if first == 0x40 && body.len() == 2 {
                    let id = u16::from_be_bytes([body[0], body[1]]);
                    acked.lock().expect("lock").push(id);
                }
            }
        })
    };
    let publisher = std::thread::spawn(move || {
        let mut stream = stream;
        let mut sent = 0u16;
        for id in 1..=MESSAGES {
            let payload = format!("{{\"name\": \"m{id}\"}}").into_bytes();
            let frame = publish_frame(&format!("dev/Q-{id}"), payload, QoS::AtLeastOnce, id, false);
            if stream.write_all(&frame).is_err() {
                break;
            }
            sent = id;
        }
        sent
    });

    assert!(
        eventually(Duration::from_secs(20), || acked
            .lock()
            .expect("lock")
            .len()
            >= 500),
        "the stream flows"
    );
    node.signal(libc::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "clean stop: {status}");
    let sent = publisher.join().expect("publisher");
    acks.join().expect("reader");

    let acked = acked.lock().expect("lock").clone();
    assert!(
        (acked.len() as u64) < u64::from(MESSAGES),
        "the signal came mid-stream ({} of {MESSAGES} acknowledged, {sent} sent)",
        acked.len()
    );
    let store = open_store(&dir.path().join("data"));
    let missing: Vec<u16> = acked
        .iter()
        .copied()
        .filter(|id| {
            store
                .get("asset", &format!("Q-{id}"))
                .expect("read")
                .is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are not stored, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}
