//! End-to-end ingest load harness: how fast the node takes QoS 1 MQTT
//! messages all the way to disk, as a ratio of raw broker delivery
//! measured in the same run on the same machine.
//!
//! - baseline: a rumqttc publisher → Mosquitto → `mosquitto_sub -q 1`
//!   (delivery only, nothing stored);
//! - external: the same publisher → Mosquitto → meshlet (persistent
//!   session, manual acks after the durability barrier);
//! - embedded: the publisher → meshlet's own broker, each PUBACK only once
//!   the record is on disk.
//!
//! `cargo bench --bench ingest_load` runs the full size; under `cargo test`
//! (no `--bench` argument) it runs a small smoke size so CI proves the
//! harness works without spending minutes. Figures go to stdout as a
//! markdown table (copied into benches/README.md).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const PRODUCT: &str = r#"
product: load
version: 1
domain: bench
owner: bench@example.com
key: device
fields:
  device: { type: string, required: true }
  seq:    { type: int }
  temp:   { type: float, min: -40, max: 150 }
sources:
  - mqtt: { topic: "load/{device}", format: json, event_time: /ts }
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n"),
    )
    .expect("conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto installed (tests/run.sh installs it)");
    wait_port(port);
    (Killed(child), port)
}

fn messages(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let device = i % 50;
            (
                format!("load/dev{device}"),
                format!(
                    r#"{{"seq": {i}, "temp": {:.2}, "ts": {}}}"#,
                    20.0 + (i % 100) as f64 / 10.0,
                    1_700_000_000_000i64 + i as i64
                )
                .into_bytes(),
            )
        })
        .collect()
}

/// Publishes everything with QoS 1 (100 in flight) and returns when every
/// PUBACK came.
fn publish(port: u16, client_id: &str, messages: &[(String, Vec<u8>)]) -> Duration {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(100);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut connection) = Client::new(options, 1000);
    let to_send = messages.to_vec();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        for (topic, payload) in to_send {
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acked < messages.len() && Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            connection.recv_timeout(Duration::from_secs(5))
        {
            acked += 1;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(acked, messages.len(), "every message acknowledged");
    let client = sender.join().expect("sender");
    let _ = client.disconnect();
    elapsed
}

fn metric(http: &str, series: &str) -> f64 {
    let url = format!("http://{http}/metrics");
    let body = http_get(&url);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A tiny HTTP/1.0 GET, to keep the harness free of an HTTP client crate.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return String::new();
    };
    let _ = write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

struct Node {
    _child: Killed,
    http: String,
    mqtt: Option<u16>,
}

fn start_node(dir: &Path, config: &str) -> Node {
    std::fs::create_dir_all(dir.join("products")).expect("dir");
    std::fs::write(dir.join("products/load.yaml"), PRODUCT).expect("product");
    std::fs::write(
        dir.join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n[log]\nformat = \"json\"\nlevel = \"warn,meshlet::node=info\"\n{config}"),
    )
    .expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshlet"));
    // The node refuses unknown MESHLET_* variables: start it clean.
    for (name, _) in std::env::vars() {
        if name.starts_with("MESHLET_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .current_dir(dir)
        .args([
            "--config",
            "meshlet.toml",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshlet runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("\"message\":\"ready\"") => break line,
            Ok(line) => seen.push(line),
            Err(err) => {
                let status = child.try_wait();
                panic!(
                    "node not ready ({err}, exit {status:?}); its log:\n{}",
                    seen.join("\n")
                )
            }
        }
    };
    let event: serde_json::Value = serde_json::from_str(&ready).expect("json");
    let http = event["http"].as_str().expect("http").to_string();
    let mqtt = event["mqtt"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok());
    // Keep draining logs so the pipe never blocks the node.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Node {
        _child: Killed(child),
        http,
        mqtt,
    }
}

fn baseline(n: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, port) = mosquitto(dir.path());
    let mut sub = Killed(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                "load/#",
            ])
            .args(["-C", &n.to_string(), "-i", "baseline-sub"])
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto_sub"),
    );
    std::thread::sleep(Duration::from_millis(300)); // subscribed
    let start = Instant::now();
    publish(port, "baseline-pub", &messages(n));
    let _ = sub.0.wait();
    start.elapsed()
}

fn external(n: usize) -> (Duration, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, port) = mosquitto(dir.path());
    let node = start_node(
        dir.path(),
        &format!("[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"mqtt://127.0.0.1:{port}\"\n"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&node.http, "meshlet_mqtt_client_connects_total") < 1.0 {
        assert!(Instant::now() < end, "node connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // subscribed
    let start = Instant::now();
    publish(port, "external-pub", &messages(n));
    let end = Instant::now() + Duration::from_secs(600);
    while metric(&node.http, "meshlet_ingest_records_written_total") < n as f64 {
        assert!(Instant::now() < end, "node caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let barriers = metric(&node.http, "meshlet_ingest_durable_barriers_total");
    (elapsed, n as f64 / barriers.max(1.0))
}

fn embedded(n: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path(), "[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n");
    let port = node.mqtt.expect("embedded broker");
    publish(port, "embedded-pub", &messages(n))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20_000 } else { 2_000 };
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let base = baseline(n);
    let (ext, per_write) = external(n);
    let emb = embedded(n);
    println!("ingest load: {n} QoS 1 messages, 50 devices, JSON with event time");
    println!("| path | msgs/s | vs raw mosquitto_sub delivery |");
    println!("|---|---:|---:|");
    println!(
        "| mosquitto → mosquitto_sub (baseline, nothing stored) | {:.0} | 1.00 |",
        rate(base)
    );
    println!(
        "| mosquitto → meshlet, acked after durable | {:.0} | {:.2} |",
        rate(ext),
        rate(ext) / rate(base)
    );
    println!(
        "| device → meshlet embedded broker, PUBACK after durable | {:.0} | {:.2} |",
        rate(emb),
        rate(emb) / rate(base)
    );
    println!("external path: {per_write:.1} records share one fsync on average");
}
