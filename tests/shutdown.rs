//! Graceful shutdown of the real binary, as the README promises it: a
//! request in flight when SIGTERM arrives is finished and what it was
//! acknowledged for is stored; `/readyz` answers 503 `stopping` while the
//! node drains; a second signal exits at once.
//!
//! The push is held in flight deterministically: the client sends the
//! head with `Expect: 100-continue`, waits for the node's `100 Continue`
//! (the handler has started reading the body) and sends only half of the
//! body before the signal.

mod common;

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
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
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
    let mut seen = Vec::new();
    let stopping = eventually(Duration::from_secs(10), || {
        let answer = readyz(node.http);
        seen.push(answer.clone());
        answer.is_some_and(|(code, body)| code == 503 && body.contains("\"stopping\""))
    });
    assert!(stopping, "readyz while draining: {seen:?}");
    assert!(
        seen.iter().flatten().all(|(code, _)| *code != 200),
        "never ready after the signal: {seen:?}"
    );

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
