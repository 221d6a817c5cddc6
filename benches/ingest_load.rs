//! End-to-end ingest load harness: how fast the node takes MQTT telemetry
//! from many devices all the way to disk, at QoS 0 and at QoS 1, as a
//! ratio of raw broker delivery measured in the same run on the same
//! machine, with the node's RSS, CPU and disk footprint beside it.
//!
//! Rows, each at QoS 0 and at QoS 1:
//! - baseline: a rumqttc publisher → Mosquitto → `mosquitto_sub -q <qos>`
//!   (delivery only, nothing stored);
//! - external: the same publisher → Mosquitto → meshlet (persistent
//!   session; at QoS 1 manual acks after the durability barrier);
//! - embedded: the publisher → meshlet's own broker (at QoS 1 each PUBACK
//!   only once the record is on disk);
//! - embedded, MQTT 5: the same over MQTT 5 (rumqttc's v5 client, a
//!   content type and a user property on every publish), to compare with
//!   the 3.1.1 row of the same run.
//!
//! A meshlet row counts a message only once its record passed the
//! durability barrier (the node's `meshlet_ingest_records_written_total`);
//! at QoS 0 nothing is acknowledged, so what never arrived is reported as
//! loss (stored/sent), not hidden. Runs are interleaved (run 1 of every
//! row, then run 2 …) so a noisy neighbour on a shared machine spreads
//! over all rows, and every column is the median of the runs.
//!
//! `cargo bench --bench ingest_load` runs the full size; under `cargo test`
//! (no `--bench` argument) it runs a small smoke size once, so CI proves the
//! harness works and that every acknowledged message is stored, without
//! spending minutes. Sizes can be overridden with `INGEST_LOAD_MESSAGES`,
//! `INGEST_LOAD_DEVICES` and `INGEST_LOAD_RUNS` (not `MESHLET_*`: the node
//! refuses unknown variables of its own prefix). Figures go to stdout as a
//! markdown table (copied into benches/README.md).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

#[path = "../tests/common/mod.rs"]
mod common;
use bench::{
    cpu_seconds, machine_busy_seconds, machine_cores, median, metric, mosquitto, proc_status_kib,
    Killed,
};
use common::bench;

/// How long a QoS 0 run may see no progress before the rest counts as
/// lost.
const IDLE: Duration = Duration::from_secs(5);
/// How often the harness reads the node's counters while it catches up;
/// coarse enough that scraping `/metrics` costs the node next to nothing.
const POLL: Duration = Duration::from_millis(20);

/// Shaped like `schema/examples/machine_health.yaml`: the key from the
/// topic, a few floats, an int, a status string and an event time, with
/// payload keys mapped to field names.
fn product(qos: u8) -> String {
    format!(
        r#"
product: load
version: 1
domain: bench
owner: bench@example.com
key: machine_id
fields:
  machine_id:    {{ type: string, required: true }}
  temperature_c: {{ type: float, min: -40, max: 150 }}
  vibration_rms: {{ type: float, min: 0, max: 50 }}
  spindle_rpm:   {{ type: int, min: 0, max: 30000 }}
  status:        {{ type: string, enum: [ok, warn, fault, maintenance], required: true }}
sources:
  - mqtt:
      topic: "load/{{machine_id}}/telemetry"
      format: json
      qos: {qos}
      event_time: /ts
      map:
        temperature_c: /temp
        vibration_rms: /vib/rms
        spindle_rpm: /rpm
        status: /state
"#
    )
}

/// Message count, device count and runs per row.
#[derive(Clone, Copy)]
struct Settings {
    messages: usize,
    devices: usize,
    runs: usize,
    full: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let full = std::env::args().any(|a| a == "--bench");
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v} is not a count"))
                })
                .unwrap_or(default)
        };
        let settings = Settings {
            messages: var("INGEST_LOAD_MESSAGES", if full { 30_000 } else { 2_000 }),
            devices: var("INGEST_LOAD_DEVICES", 1_000),
            runs: var("INGEST_LOAD_RUNS", if full { 3 } else { 1 }),
            full,
        };
        assert!(
            settings.messages > 0 && settings.devices > 0 && settings.runs > 0,
            "INGEST_LOAD_MESSAGES, INGEST_LOAD_DEVICES and INGEST_LOAD_RUNS must be positive"
        );
        settings
    }
}

/// A payload that only says `mosquitto_sub` is subscribed.
const PROBE: &str = "probe";

/// `n` telemetry messages round-robin over `devices` machines, so every
/// device gets its own entity key and its own rising event times.
fn messages(n: usize, devices: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let device = i % devices;
            // Event times one millisecond apart, as RFC 3339 like a
            // controller sends them.
            let ms = i as u64;
            let ts = format!(
                "2026-11-26T{:02}:{:02}:{:02}.{:03}Z",
                (ms / 3_600_000) % 24,
                (ms / 60_000) % 60,
                (ms / 1_000) % 60,
                ms % 1_000
            );
            let state = if i % 97 == 0 { "warn" } else { "ok" };
            (
                format!("load/M-{device:04}/telemetry"),
                format!(
                    r#"{{"temp": {:.2}, "vib": {{"rms": {:.2}}}, "rpm": {}, "state": "{state}", "ts": "{ts}"}}"#,
                    60.0 + ((i * 37) % 200) as f64 / 10.0,
                    ((i * 13) % 50) as f64 / 10.0,
                    1400 + (i * 7) % 200,
                )
                .into_bytes(),
            )
        })
        .collect()
}

/// Publishes everything from one connection (100 in flight at QoS 1) and
/// returns once every PUBACK came (QoS 1) or every PUBLISH was written to
/// the socket (QoS 0).
fn publish(port: u16, client_id: &str, messages: &[(String, Vec<u8>)], qos: QoS) -> Duration {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_inflight(100);
    options.set_keep_alive(Duration::from_secs(60));
    let (client, mut connection) = Client::new(options, 1000);
    let to_send = messages.to_vec();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        for (topic, payload) in to_send {
            if client.publish(topic, qos, false, payload).is_err() {
                break;
            }
        }
        client
    });
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < messages.len() && Instant::now() < deadline {
        match (qos, connection.recv_timeout(Duration::from_secs(5))) {
            (QoS::AtMostOnce, Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))))
            | (_, Ok(Ok(Event::Incoming(Packet::PubAck(_))))) => done += 1,
            (_, Ok(Err(err))) => panic!("publisher {client_id}: {err}"),
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        done,
        messages.len(),
        "every message sent (and acked at QoS 1)"
    );
    let client = sender.join().expect("sender");
    let _ = client.disconnect();
    // Drive the event loop until the DISCONNECT is out, so the last QoS 0
    // publishes are flushed before the socket closes.
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match connection.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    elapsed
}

/// [`publish`] over MQTT 5: every publish with a content type and a user
/// property, as an MQTT 5 device sends them.
fn publish5(port: u16, client_id: &str, messages: &[(String, Vec<u8>)], qos: u8) -> Duration {
    use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{Client as Client5, Event as Event5, MqttOptions as Options5};
    let qos = if qos == 0 {
        QoS5::AtMostOnce
    } else {
        QoS5::AtLeastOnce
    };
    let mut options = Options5::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_outgoing_inflight_upper_limit(100);
    let (client, mut connection) = Client5::new(options, 1000);
    let to_send = messages.to_vec();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        for (topic, payload) in to_send {
            let properties = PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: vec![("fw".into(), "1.4.2".into())],
                ..Default::default()
            };
            if client
                .publish_with_properties(topic, qos, false, payload, properties)
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < messages.len() && Instant::now() < deadline {
        match (qos, connection.recv_timeout(Duration::from_secs(5))) {
            (QoS5::AtMostOnce, Ok(Ok(Event5::Outgoing(Outgoing::Publish(_)))))
            | (_, Ok(Ok(Event5::Incoming(Packet5::PubAck(_))))) => done += 1,
            (_, Ok(Err(err))) => panic!("publisher {client_id}: {err}"),
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        done,
        messages.len(),
        "every message sent (and acked at QoS 1)"
    );
    let client = sender.join().expect("sender");
    let _ = client.disconnect();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match connection.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(Event5::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    elapsed
}

/// Bytes under `path`: allocated on disk (like `du`) and apparent (the
/// sum of file lengths, like `du --apparent-size`). Preallocated or sparse
/// store files make the two differ.
fn disk_bytes(path: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return (0, 0);
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&entry.path()),
            Ok(m) => (m.blocks() * 512, m.len()),
            Err(_) => (0, 0),
        })
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

struct Node {
    child: Killed,
    http: String,
    mqtt: Option<u16>,
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// Starts the node in `dir` loading products from `products` (a directory
/// the caller filled), with `config` sections appended to a base config
/// that logs the ready line.
fn start_node(dir: &Path, products: &str, config: &str) -> Node {
    std::fs::write(
        dir.join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"{products}\"]\n[log]\nformat = \"json\"\nlevel = \"warn,meshlet::node=info\"\n{config}"),
    )
    .expect("config");
    let mut command = bench::node_command();
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
        child: Killed(child),
        http,
        mqtt,
    }
}

/// What one run of one row measured.
#[derive(Clone, Copy, Default)]
struct Run {
    sent: usize,
    /// Delivered to `mosquitto_sub` (baseline) or durable in the node.
    stored: usize,
    /// From the first publish to the last message delivered or durable.
    secs: f64,
    /// Node only: peak RSS (VmHWM) in KiB.
    rss_peak_kib: u64,
    /// Node only: RSS (VmRSS) in KiB [`SETTLE_AFTER_RUN`] after the last
    /// record: what the burst left behind once the allocator's purge
    /// delay passed.
    rss_settled_kib: u64,
    /// Node only: CPU seconds spent during the run.
    cpu_secs: f64,
    /// Node only: bytes allocated on disk in the data dir after a clean
    /// stop.
    disk: u64,
    /// Node only: the same files' apparent size.
    apparent: u64,
    /// Payload bytes sent.
    raw: u64,
    /// Node only: durability barriers (fsync rounds the writer waited
    /// for), so records per barrier is the writer's mean group size.
    barriers: f64,
    /// Node only: seconds the store writer was busy applying groups.
    writer_busy: f64,
    /// CPU seconds over the run: every process on the machine, this
    /// process (the publisher, and the reader of `mosquitto_sub`'s
    /// output), Mosquitto (none on the embedded path), `mosquitto_sub`
    /// (ceiling only).
    machine_cpu: f64,
    publisher_cpu: f64,
    broker_cpu: f64,
    sub_cpu: f64,
}

/// CPU readings at the start of a run, for [`Cpu::since`].
struct Cpu {
    machine: f64,
    own: f64,
    broker: f64,
    other: f64,
}

impl Cpu {
    fn now(broker: Option<u32>, other: Option<u32>) -> Cpu {
        Cpu {
            machine: machine_busy_seconds(),
            own: cpu_seconds(std::process::id()),
            broker: broker.map_or(0.0, cpu_seconds),
            other: other.map_or(0.0, cpu_seconds),
        }
    }

    /// (machine, this process, broker, other) seconds since `self`.
    fn since(&self, broker: Option<u32>, other: Option<u32>) -> (f64, f64, f64, f64) {
        let now = Cpu::now(broker, other);
        (
            now.machine - self.machine,
            now.own - self.own,
            now.broker - self.broker,
            now.other - self.other,
        )
    }
}

impl Run {
    fn rate(&self) -> f64 {
        self.stored as f64 / self.secs.max(1e-9)
    }
}

fn qos_of(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn raw_bytes(messages: &[(String, Vec<u8>)]) -> u64 {
    messages.iter().map(|(_, p)| p.len() as u64).sum()
}

/// The ceiling: raw delivery by Mosquitto to `mosquitto_sub` at `qos`.
fn baseline(s: Settings, qos: u8) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, port) = mosquitto(dir.path());
    let mut sub = Killed(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", &qos.to_string(), "-t", "load/#"])
            .args(["-i", "baseline-sub"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub"),
    );
    // Count deliveries as they come (one payload per line) and note when
    // the last one came, so a QoS 0 loss shows instead of hanging. Probe
    // lines only say the subscription is in place.
    let stdout = sub.0.stdout.take().expect("stdout");
    let received = Arc::new(AtomicUsize::new(0));
    let probed = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let reader = {
        let (received, probed, last) = (received.clone(), probed.clone(), last.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line == PROBE {
                    probed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = last.lock() {
                    *last = Instant::now();
                }
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(10);
    while probed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < end, "mosquitto_sub never subscribed");
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-t", "load/probe", "-m", PROBE])
            .status();
        std::thread::sleep(Duration::from_millis(50));
    }
    let messages = messages(s.messages, s.devices);
    let (broker_pid, sub_pid) = (Some(broker.0.id()), Some(sub.0.id()));
    let cpu = Cpu::now(broker_pid, sub_pid);
    let start = Instant::now();
    publish(port, "baseline-pub", &messages, qos_of(qos));
    let (got, _) = wait_for(|| received.load(Ordering::Relaxed), s.messages);
    // Read before the kill; the idle polling after the last delivery
    // costs next to nothing.
    let (machine_cpu, publisher_cpu, broker_cpu, sub_cpu) = cpu.since(broker_pid, sub_pid);
    let _ = sub.0.kill();
    let _ = reader.join();
    let secs = last
        .lock()
        .map(|l| l.duration_since(start))
        .unwrap_or_default()
        .as_secs_f64();
    Run {
        sent: s.messages,
        stored: got,
        secs,
        raw: raw_bytes(&messages),
        machine_cpu,
        publisher_cpu,
        broker_cpu,
        sub_cpu,
        ..Run::default()
    }
}

/// Polls `count` until it reaches `target` or stops moving for [`IDLE`];
/// returns the last count and when it was first seen.
fn wait_for(count: impl Fn() -> usize, target: usize) -> (usize, Instant) {
    let mut seen = count();
    let mut moved = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < target && moved.elapsed() < IDLE && Instant::now() < deadline {
        std::thread::sleep(POLL);
        let now = count();
        if now != seen {
            seen = now;
            moved = Instant::now();
        }
    }
    (seen, moved)
}

/// Which way the telemetry reaches the node.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    External,
    Embedded,
    /// The embedded broker over MQTT 5.
    Embedded5,
}

/// Figures from the node's own counters, for the smoke assertions.
#[derive(Default)]
struct Counters {
    messages: f64,
    accepted: f64,
    invalid: f64,
}

/// How long a node idles after its last record before its settled RSS is
/// read: the allocator's purge delay (100 ms, `src/memory.rs`) plus the
/// memory keeper's tick (1 s) plus margin.
const SETTLE_AFTER_RUN: Duration = Duration::from_secs(3);

/// meshlet behind Mosquitto (external) or as the broker (embedded).
fn meshlet(s: Settings, via: Via, qos: u8) -> (Run, Counters) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("dir");
    std::fs::write(dir.path().join("products/load.yaml"), product(qos)).expect("product");
    let (broker, mut node, port) = match via {
        Via::External => {
            let (broker, port) = mosquitto(dir.path());
            let node = start_node(
                dir.path(),
                "products",
                &format!(
                    "[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"mqtt://127.0.0.1:{port}\"\n"
                ),
            );
            let end = Instant::now() + Duration::from_secs(10);
            while metric(&node.http, "meshlet_mqtt_client_connects_total") < 1.0 {
                assert!(Instant::now() < end, "node connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300)); // subscribed
            (Some(broker), node, port)
        }
        Via::Embedded | Via::Embedded5 => {
            let node = start_node(
                dir.path(),
                "products",
                "[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n",
            );
            let port = node.mqtt.expect("embedded broker");
            (None, node, port)
        }
    };
    let messages = messages(s.messages, s.devices);
    let pid = node.pid();
    let broker_pid = broker.as_ref().map(|b: &Killed| b.0.id());
    let cpu = Cpu::now(broker_pid, Some(pid));
    let written = || metric(&node.http, "meshlet_ingest_records_written_total") as usize;
    let writer_busy = || metric(&node.http, "meshlet_ingest_writer_busy_seconds_total");
    let busy_before = writer_busy();
    let start = Instant::now();
    let acked = match via {
        Via::External => publish(port, "external-pub", &messages, qos_of(qos)),
        Via::Embedded => publish(port, "embedded-pub", &messages, qos_of(qos)),
        Via::Embedded5 => publish5(port, "embedded5-pub", &messages, qos),
    };
    let (stored, last) = wait_for(written, s.messages);
    // At QoS 1 on the embedded path the PUBACK is the durable signal and
    // needs no polling granularity; elsewhere the counter is.
    let secs = if via != Via::External && qos == 1 {
        acked.as_secs_f64()
    } else {
        last.duration_since(start).as_secs_f64()
    };
    let (machine_cpu, publisher_cpu, broker_cpu, cpu_secs) = cpu.since(broker_pid, Some(pid));
    let rss_peak_kib = proc_status_kib(pid, "VmHWM");
    let series = |outcome: &str| {
        format!(
            "meshlet_ingest_records_total{{product=\"load\",source=\"mqtt:0\",outcome=\"{outcome}\"}}"
        )
    };
    // The outcome counters are updated when the pending write is awaited,
    // a moment after the durable counter: let them catch up.
    let accepted = || metric(&node.http, &series("accepted")) as usize;
    wait_for(accepted, stored);
    let barriers = metric(&node.http, "meshlet_ingest_durable_barriers_total");
    let writer_busy = writer_busy() - busy_before;
    let counters = Counters {
        messages: metric(
            &node.http,
            "meshlet_ingest_messages_total{product=\"load\",source=\"mqtt:0\"}",
        ),
        accepted: metric(&node.http, &series("accepted")),
        invalid: metric(&node.http, &series("rejected"))
            + metric(&node.http, &series("quarantined")),
    };
    std::thread::sleep(if s.full {
        SETTLE_AFTER_RUN
    } else {
        Duration::from_millis(100)
    });
    let rss_settled_kib = proc_status_kib(pid, "VmRSS");
    node.child.terminate();
    let (disk, apparent) = disk_bytes(&dir.path().join("data"));
    let run = Run {
        sent: s.messages,
        stored,
        secs,
        rss_peak_kib,
        rss_settled_kib,
        cpu_secs,
        disk,
        apparent,
        raw: raw_bytes(&messages),
        machine_cpu,
        publisher_cpu,
        broker_cpu,
        sub_cpu: 0.0,
        barriers,
        writer_busy,
    };
    drop(broker);
    (run, counters)
}

/// VmRSS of a node started with the shipped example products, after it
/// settled.
fn idle_rss(settle: Duration) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/examples");
    let to = dir.path().join("schema/examples");
    std::fs::create_dir_all(&to).expect("examples dir");
    for entry in std::fs::read_dir(&from).expect("schema/examples") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy example");
    }
    let node = start_node(
        dir.path(),
        "schema/examples",
        "[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n",
    );
    std::thread::sleep(settle);
    proc_status_kib(node.pid(), "VmRSS")
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({model}), {}", std::env::consts::ARCH)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

const ROWS: [(&str, Option<Via>); 4] = [
    ("mosquitto → mosquitto_sub (ceiling, nothing stored)", None),
    ("mosquitto → meshlet (external client)", Some(Via::External)),
    ("device → meshlet embedded broker", Some(Via::Embedded)),
    (
        "device → meshlet embedded broker, MQTT 5",
        Some(Via::Embedded5),
    ),
];

fn main() {
    let s = Settings::from_env();
    let load_before = loadavg();
    // results[qos][row] = runs
    let mut results = vec![vec![Vec::<Run>::new(); ROWS.len()]; 2];
    for run in 0..s.runs {
        for qos in [0u8, 1] {
            for (row, (name, path)) in ROWS.iter().enumerate() {
                let figures = match path {
                    None => baseline(s, qos),
                    Some(path) => {
                        let (figures, counters) = meshlet(s, *path, qos);
                        check(&figures, &counters, qos);
                        figures
                    }
                };
                if qos == 1 {
                    assert_eq!(
                        figures.stored, figures.sent,
                        "{name}, QoS 1: every acknowledged message delivered or stored"
                    );
                }
                eprintln!(
                    "run {}/{} QoS {qos} {name}: {}/{} in {:.2} s",
                    run + 1,
                    s.runs,
                    figures.stored,
                    figures.sent,
                    figures.secs
                );
                results[qos as usize][row].push(figures);
            }
        }
    }
    let idle = idle_rss(Duration::from_secs(if s.full { 5 } else { 1 }));
    assert!(idle > 0, "idle RSS read from /proc");

    println!(
        "ingest load: {} messages per run, {} devices, JSON telemetry with event time; median of {} run(s) per row",
        s.messages, s.devices, s.runs
    );
    println!(
        "machine: {}; load average {load_before} before, {} after",
        machine(),
        loadavg()
    );
    println!(
        "reproduce: cargo bench --bench ingest_load   (INGEST_LOAD_MESSAGES={} INGEST_LOAD_DEVICES={} INGEST_LOAD_RUNS={})",
        s.messages, s.devices, s.runs
    );
    println!();
    println!(
        "| path | QoS | msgs/s | vs ceiling, same QoS | stored/sent | node peak RSS | node RSS 3 s after | node CPU s / 1k msgs | disk B/msg | disk / raw JSON | apparent / raw JSON |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for qos in [0usize, 1] {
        let ceiling = &results[qos][0];
        for (row, (name, path)) in ROWS.iter().enumerate() {
            let runs = &results[qos][row];
            let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
            // Each run against the ceiling of its own round, then the median.
            let ratio = median(
                runs.iter()
                    .zip(ceiling)
                    .map(|(r, c)| r.rate() / c.rate())
                    .collect(),
            );
            let stored = format!("{:.0}/{}", med(&|r| r.stored as f64), s.messages);
            if path.is_none() {
                println!(
                    "| {name} | {qos} | {:.0} | 1.00 | {stored} | — | — | — | — | — | — |",
                    med(&|r| r.rate())
                );
            } else {
                println!(
                    "| {name} | {qos} | {:.0} | {ratio:.2} | {stored} | {:.1} MiB | {:.1} MiB | {:.3} | {:.0} | {:.2} | {:.2} |",
                    med(&|r| r.rate()),
                    med(&|r| r.rss_peak_kib as f64) / 1024.0,
                    med(&|r| r.rss_settled_kib as f64) / 1024.0,
                    med(&|r| r.cpu_secs * 1000.0 / r.sent as f64),
                    med(&|r| r.disk as f64 / r.stored.max(1) as f64),
                    med(&|r| r.disk as f64 / r.raw.max(1) as f64),
                    med(&|r| r.apparent as f64 / r.raw.max(1) as f64),
                );
            }
        }
    }
    print_cpu(&results);
    let raw = results[0][0].first().map_or(0, |r| r.raw);
    println!();
    println!(
        "raw JSON sent per run: {raw} bytes ({:.0} B/msg); idle RSS with the example products (VmRSS after {} s): {:.1} MiB",
        raw as f64 / s.messages as f64,
        if s.full { 5 } else { 1 },
        idle as f64 / 1024.0
    );
}

/// Where the CPU went, per row, and the budget as CPU: at 0.8× the
/// ceiling, what the machine's cores leave for the node once the
/// publisher and the broker have taken what they cost per message, against
/// what the node spent per message. Publisher and broker do the same work
/// in the ceiling run and on the external path; each is charged the lower
/// of its two per-message costs, which favours the node (the ceiling's
/// "publisher" also reads `mosquitto_sub`'s output).
fn print_cpu(results: &[Vec<Vec<Run>>]) {
    let cores = machine_cores() as f64;
    println!();
    println!(
        "| path | QoS | machine busy (cores of {cores:.0}) | machine µs / msg | publisher µs / msg | broker µs / msg | mosquitto_sub µs / msg | node µs / msg | records per durability barrier | writer busy (share of the run) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let per_msg = |runs: &[Run], f: &dyn Fn(&Run) -> f64| {
        median(
            runs.iter()
                .map(|r| f(r) * 1e6 / r.sent.max(1) as f64)
                .collect(),
        )
    };
    for (qos, rows) in results.iter().enumerate() {
        for (row, (name, path)) in ROWS.iter().enumerate() {
            let runs = &rows[row];
            let busy = median(
                runs.iter()
                    .map(|r| r.machine_cpu / r.secs.max(1e-9))
                    .collect(),
            );
            let dash_or = |v: f64, shown: bool| {
                if shown {
                    format!("{v:.1}")
                } else {
                    "—".to_string()
                }
            };
            let group = median(
                runs.iter()
                    .map(|r| r.stored as f64 / r.barriers.max(1.0))
                    .collect(),
            );
            println!(
                "| {name} | {qos} | {busy:.2} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                per_msg(runs, &|r| r.machine_cpu),
                per_msg(runs, &|r| r.publisher_cpu),
                dash_or(
                    per_msg(runs, &|r| r.broker_cpu),
                    *path != Some(Via::Embedded)
                ),
                dash_or(per_msg(runs, &|r| r.sub_cpu), path.is_none()),
                dash_or(per_msg(runs, &|r| r.cpu_secs), path.is_some()),
                dash_or(group, path.is_some()),
                if path.is_some() {
                    format!(
                        "{:.2}",
                        median(
                            runs.iter()
                                .map(|r| r.writer_busy / r.secs.max(1e-9))
                                .collect()
                        )
                    )
                } else {
                    "—".to_string()
                },
            );
        }
    }
    println!();
    for (qos, rows) in results.iter().enumerate() {
        let ceiling = &rows[0];
        let target = 0.8 * median(ceiling.iter().map(Run::rate).collect());
        let external = &rows[1];
        let publisher =
            per_msg(ceiling, &|r| r.publisher_cpu).min(per_msg(external, &|r| r.publisher_cpu));
        let broker = per_msg(ceiling, &|r| r.broker_cpu).min(per_msg(external, &|r| r.broker_cpu));
        let available = cores * 1e6 / target.max(1e-9);
        let node = |row: usize| per_msg(&rows[row], &|r| r.cpu_secs);
        println!(
            "CPU budget, QoS {qos}: 0.8× the ceiling is {target:.0} msgs/s, {available:.1} µs of the {cores:.0} cores per message. \
             External: publisher {publisher:.1} + broker {broker:.1} leave the node {:.1} µs; it spends {:.1} µs, needing {:.2} cores in all. \
             Embedded: the publisher leaves the node {:.1} µs; it spends {:.1} µs, needing {:.2} cores.",
            available - publisher - broker,
            node(1),
            target * (publisher + broker + node(1)) / 1e6,
            available - publisher,
            node(2),
            target * (publisher + node(2)) / 1e6,
        );
    }
}

/// What must hold whatever the speed: every payload the node received was
/// valid and became a durable record (nothing lost between decoder and
/// disk), and it never stored more than was sent.
fn check(run: &Run, counters: &Counters, qos: u8) {
    assert!(run.stored <= run.sent, "QoS {qos}: more stored than sent");
    assert!(run.stored > 0, "QoS {qos}: nothing stored");
    assert_eq!(
        counters.messages as usize, run.stored,
        "QoS {qos}: every payload the node received passed the durability barrier"
    );
    assert_eq!(counters.invalid, 0.0, "QoS {qos}: valid telemetry refused");
    assert_eq!(
        counters.accepted as usize, run.stored,
        "QoS {qos}: every durable record counted as accepted"
    );
}
