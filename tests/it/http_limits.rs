//! The HTTP listener against clients that hold it: the real binary and
//! real loopback sockets. Slow headers and slow bodies are cut off (plain
//! and over TLS), connections beyond `http.max_connections` get 503 at
//! once, and a node whose descriptor limit is low keeps serving MQTT and
//! HTTP clients while hostile sockets pile up. Every load is bounded.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{closed_within, mqtt_connect, publish_frame, read_n, socket};
use common::{eventually, http_get, meshlet_bin, metric, run, stderr, NodeBuilder, NodeProcess};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn init() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    dir
}

fn counter(node: &NodeProcess, series: &str) -> f64 {
    metric(node, series).unwrap_or(0.0)
}

/// Sends a request head one header line every 200 ms; whether the server
/// closed the connection before `deadline`.
fn trickle_headers_closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .is_err()
    {
        return true;
    }
    let mut sink = [0u8; 1024];
    while Instant::now() < end {
        if stream.write_all(b"X-Slow: 1\r\n").is_err() {
            return true;
        }
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_headers_and_slow_bodies_are_timed_out() {
    let dir = init();
    let node = NodeBuilder::new(dir.path())
        .env("MESHLET_HTTP__HEADER_READ_TIMEOUT", "1s")
        .env("MESHLET_HTTP__BODY_READ_TIMEOUT", "2s")
        .start()
        .expect("node starts");
    // Headers trickling in, one line at a time, never finished.
    let mut trickling = socket(node.http, Duration::from_secs(1));
    assert!(
        trickle_headers_closed_within(&mut trickling, Duration::from_secs(8)),
        "a request head still arriving after 8 s is cut off"
    );
    // A socket that never sends anything.
    let mut idle = socket(node.http, Duration::from_secs(1));
    assert!(closed_within(&mut idle, Duration::from_secs(8)));
    // A body that trickles: 408, then closed.
    let mut slow_body = socket(node.http, Duration::from_millis(200));
    slow_body
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
        .expect("send head");
    let end = Instant::now() + Duration::from_secs(10);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while Instant::now() < end && !answer.ends_with(b"\n") {
        let _ = slow_body.write_all(b" ");
        match slow_body.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body still arriving after the timeout: {answer:?}"
    );
    assert!(answer.contains("http.body_read_timeout"), "{answer}");
    assert!(closed_within(&mut slow_body, Duration::from_secs(5)));
    // Normal requests are served all along.
    assert_eq!(http_get(&node.url("/livez")).0, 200);
    assert!(counter(&node, "meshlet_http_header_timeouts_total") >= 2.0);
    assert_eq!(counter(&node, "meshlet_http_body_timeouts_total"), 1.0);
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn connections_beyond_the_cap_get_503_at_once() {
    let dir = init();
    let node = NodeBuilder::new(dir.path())
        .env("MESHLET_HTTP__MAX_CONNECTIONS", "16")
        .start()
        .expect("node starts");
    let holders: Vec<_> = (0..16)
        .map(|_| socket(node.http, Duration::from_secs(3)))
        .collect();
    let mut late = socket(node.http, Duration::from_secs(3));
    let mut answer = String::new();
    let _ = late.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the 17th connection is refused at once: {answer:?}"
    );
    assert!(answer.contains("http.max_connections"), "{answer}");
    drop(holders);
    assert!(eventually(Duration::from_secs(10), || {
        http_get(&node.url("/livez")).0 == 200
    }));
    assert!(counter(&node, "meshlet_http_connections_refused_total") >= 1.0);
    let (status, _) = node.stop();
    assert!(status.success());
}

/// A launcher that runs the node with at most `limit` descriptors.
fn with_descriptor_limit(dir: &std::path::Path, limit: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("low-nofile.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec prlimit --nofile={limit}:{limit} -- \"$@\"\n"),
    )
    .expect("write launcher");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[test]
fn hostile_http_sockets_cannot_take_the_descriptors_mqtt_clients_need() {
    let dir = init();
    let launcher = with_descriptor_limit(dir.path(), 160);
    let node = NodeBuilder::new(dir.path())
        .under(launcher, meshlet_bin())
        .start()
        .expect("node starts");
    let mqtt = node.mqtt.expect("embedded broker");
    assert!(
        node.seen_logs.iter().any(|l| l.contains("lowered to fit")),
        "the caps were fitted to the descriptor limit"
    );
    // 300 sockets that never send a request: more than the process has
    // descriptors.
    let hostile: Vec<_> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&node.http, Duration::from_secs(2)).ok())
        .collect();
    // A device connecting now is served, and its QoS 1 publish acked.
    let (mut device, connack) = mqtt_connect(mqtt, "device-under-pressure", true);
    assert_eq!(
        connack,
        Some(vec![0x20, 2, 0, 0]),
        "an MQTT client is accepted while HTTP sockets pile up"
    );
    device
        .write_all(&publish_frame(
            "sensors/s-1/telemetry",
            br#"{"temperature_c": 21}"#.to_vec(),
            QoS::AtLeastOnce,
            1,
            false,
        ))
        .expect("publish");
    assert_eq!(read_n(&mut device, 4), Some(vec![0x40, 2, 0, 1]), "PUBACK");
    drop(hostile);
    assert!(eventually(Duration::from_secs(15), || {
        http_get(&node.url("/livez")).0 == 200
    }));
    assert!(counter(&node, "meshlet_http_connections_refused_total") > 0.0);
    let (status, _) = node.stop();
    assert!(status.success());
}

/// Slow headers over HTTPS are cut off like plain ones.
#[test]
fn slow_headers_over_tls_are_timed_out() {
    let dir = init();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("key");
    let config = std::fs::read_to_string(dir.path().join("meshlet.toml")).expect("config");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!("{config}\n[http.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n"),
    )
    .expect("config");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_HTTP__HEADER_READ_TIMEOUT", "1s")
        .start()
        .expect("node starts");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let closed = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(node.http)
            .await
            .expect("tcp");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("head");
        let end = tokio::time::Instant::now() + Duration::from_secs(8);
        let mut sink = [0u8; 256];
        while tokio::time::Instant::now() < end {
            if tls.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    });
    assert!(
        closed,
        "a TLS request head still arriving after 8 s is cut off"
    );
    assert!(eventually(Duration::from_secs(5), || {
        let text = reqwest_https_metrics(&node, &cert);
        text.lines()
            .any(|l| l.starts_with("meshlet_http_header_timeouts_total ") && !l.ends_with(" 0"))
    }));
    let (status, _) = node.stop();
    assert!(status.success());
}

fn reqwest_https_metrics(node: &NodeProcess, cert: &rcgen::Certificate) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("pem"),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let url = format!("https://localhost:{}/metrics", node.http.port());
        match client.get(url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    })
}

/// Descriptors held by the node now.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

#[test]
fn when_descriptors_run_out_waiting_clients_are_closed_at_once_and_open_ones_served() {
    let dir = init();
    let node = NodeBuilder::new(dir.path()).start().expect("node starts");
    let mqtt = node.mqtt.expect("embedded broker");
    let (mut device, connack) = mqtt_connect(mqtt, "connected-before", true);
    assert_eq!(connack, Some(vec![0x20, 2, 0, 0]));
    // The limit drops under the running node (caps were fitted at start to
    // the limit it had then): 40 descriptors left.
    let limit = open_descriptors(node.pid()) + 40;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", node.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 200 sockets that never send a request: the node runs out.
    let hostile: Vec<_> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&node.http, Duration::from_secs(2)).ok())
        .collect();
    // A new HTTP client and a new MQTT client learn at once.
    let mut late_http = socket(node.http, Duration::from_secs(1));
    let _ = late_http.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_within(&mut late_http, Duration::from_secs(5)),
        "a client waiting for a descriptor is closed, not left hanging"
    );
    let (_late_mqtt, connack) = mqtt_connect(mqtt, "late-device", true);
    assert_eq!(connack, None, "no CONNACK without a descriptor");
    // The device connected before is served all along.
    for pkid in 1..=5u16 {
        device
            .write_all(&publish_frame(
                "sensors/s-1/telemetry",
                format!(r#"{{"temperature_c": {pkid}}}"#).into_bytes(),
                QoS::AtLeastOnce,
                pkid,
                false,
            ))
            .expect("publish");
        let [hi, lo] = pkid.to_be_bytes();
        assert_eq!(
            read_n(&mut device, 4),
            Some(vec![0x40, 2, hi, lo]),
            "PUBACK {pkid}"
        );
    }
    drop(hostile);
    assert!(eventually(Duration::from_secs(40), || {
        try_get(&node.url("/livez")) == Some(200)
    }));
    assert!(counter(&node, "meshlet_http_accept_errors_total") > 0.0);
    assert!(counter(&node, "meshlet_broker_accept_errors_total") > 0.0);
    let (status, _) = node.stop();
    assert!(status.success());
}

/// A GET's status, `None` when the request failed (a closed connection).
fn try_get(url: &str) -> Option<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        client
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    })
}

#[test]
fn websockets_hold_their_connection_slot_while_open() {
    let dir = init();
    let node = NodeBuilder::new(dir.path())
        .env("MESHLET_HTTP__MAX_CONNECTIONS", "4")
        .start()
        .expect("node starts");
    let upgrade = b"GET /graphql/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n";
    let mut sockets: Vec<_> = (0..4)
        .map(|_| {
            let mut ws = socket(node.http, Duration::from_secs(5));
            ws.write_all(upgrade).expect("upgrade request");
            let head = read_n(&mut ws, 12).expect("an answer");
            assert_eq!(&head, b"HTTP/1.1 101", "switched to a WebSocket");
            ws
        })
        .collect();
    // Four WebSockets open: a fifth connection is over the cap.
    let mut late = socket(node.http, Duration::from_secs(3));
    let mut answer = String::new();
    let _ = late.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "WebSockets count against http.max_connections: {answer:?}"
    );
    sockets.pop();
    assert!(eventually(Duration::from_secs(10), || {
        try_get(&node.url("/livez")) == Some(200)
    }));
    drop(sockets);
    let (status, _) = node.stop();
    assert!(status.success());
}
