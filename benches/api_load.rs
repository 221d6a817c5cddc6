//! GraphQL API load: 64 concurrent keep-alive HTTP/1.1 connections from
//! this process (the load generator) against the release node (a separate
//! process), each figure next to a baseline from the same run.
//!
//! 1. The ingest ceiling: a QoS 1 publisher → Mosquitto → `mosquitto_sub`.
//! 2. A node with an external Mosquitto and 10,000 `meter` entities
//!    (pushed over HTTP); its sustainable ingest rate: 20,000 QoS 1
//!    messages through the broker until durable.
//! 3. Fixed-duration phases, 64 connections each: `GET /livez` (the HTTP
//!    stack's ceiling), a key lookup in two forms (the key written into
//!    the query text, a new document every request; and one document
//!    with the key in `variables`, as generated clients send it), a
//!    filtered 100-row page (`site == "berlin"`, the first page: the node
//!    scans about 300 instances for it), then both lookups again while a
//!    rate-limited publisher ingests through the broker at half the
//!    ingest rate (see [`ingest_rate`]): first closed loop (as fast as
//!    the node answers), then open loop at the budget's 15,000 lookups/s
//!    (latency at that load, see [`run_phase`]).
//!
//! Per phase: requests/s, p50, p99 (every latency kept and sorted), the
//! node's CPU (cores busy). Over the five phases under ingest, one window
//! with both ends read at the same instants: how many messages the broker
//! acknowledged to the publisher and how many the node stored, the
//! backlog between the two at each end, and after the publisher stops,
//! that the backlog drains (nothing acknowledged is lost; asserted).
//!
//! `cargo bench --bench api_load` runs the full size; under `cargo test`
//! (no `--bench` argument) a smoke size proves the harness works.

#[path = "../tests/common/mod.rs"]
mod common;
use common::bench;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{Latencies, Node};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PRODUCT: &str = r#"
product: meter
version: 1
domain: bench
owner: bench@example.com
key: device
fields:
  device: { type: string, required: true }
  site:   { type: string }
  seq:    { type: int }
  temp:   { type: float, min: -40, max: 150 }
sources:
  - mqtt: { topic: "meter/{device}", format: json, event_time: /ts }
  - http: { format: json }
"#;

const SITES: [&str; 3] = ["berlin", "lyon", "brno"];
const CONNECTIONS: usize = 64;
/// Devices the ingest publisher updates (a subset of the preloaded ones).
const DEVICES: usize = 1_000;

struct Size {
    entities: usize,
    /// The lookups/s the open-loop phases offer: the budget's rate.
    budget_lookups: f64,
    ingest_messages: usize,
    warm_up: Duration,
    phase: Duration,
}

const FULL: Size = Size {
    entities: 10_000,
    budget_lookups: BUDGET_LOOKUPS,
    ingest_messages: 20_000,
    warm_up: Duration::from_secs(1),
    phase: Duration::from_secs(10),
};

const SMOKE: Size = Size {
    entities: 500,
    budget_lookups: 2_000.0,
    ingest_messages: 500,
    warm_up: Duration::from_millis(100),
    phase: Duration::from_millis(700),
};

fn site(device: usize) -> &'static str {
    SITES[device % SITES.len()]
}

fn telemetry(i: usize) -> (String, Vec<u8>) {
    let device = i % DEVICES;
    (
        format!("meter/dev{device}"),
        format!(
            r#"{{"site": "{}", "seq": {i}, "temp": {:.2}, "ts": {}}}"#,
            site(device),
            20.0 + (i % 100) as f64 / 10.0,
            1_700_000_000_000i64 + i as i64
        )
        .into_bytes(),
    )
}

/// Pushes `entities` meters over HTTP in batches of 500.
fn preload(node: &Node, entities: usize) {
    for start in (0..entities).step_by(500) {
        let batch: Vec<serde_json::Value> = (start..(start + 500).min(entities))
            .map(|device| {
                serde_json::json!({
                    "device": format!("dev{device}"),
                    "site": site(device),
                    "seq": 0,
                    "temp": 21.5,
                })
            })
            .collect();
        let body = serde_json::to_vec(&batch).expect("json");
        let (status, text) = bench::http_request(&node.http, "POST", "/ingest/meter", &body);
        assert_eq!(status, 200, "preload push: {text}");
    }
}

/// One request the load generator sends, rendered once per connection
/// per distinct key.
#[derive(Clone, Copy)]
enum Load {
    Livez,
    /// The key written into the query text: every request is a new
    /// document, so the node parses and validates each one.
    Lookup {
        entities: usize,
    },
    /// The same lookup as generated clients (Apollo, urql, Relay, codegen)
    /// send it: one document, the key in `variables`. The node parses and
    /// validates the document once and keeps it (`parse_cache.rs`).
    LookupVariables {
        entities: usize,
    },
    Page,
}

impl Load {
    fn request(self, host: &str, n: u64) -> Vec<u8> {
        let body = match self {
            Load::Livez => {
                return format!("GET /livez HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
            }
            Load::Lookup { entities } => format!(
                r#"{{"query":"{{ meter(device: \"dev{}\") {{ device site seq temp }} }}"}}"#,
                n % entities as u64
            ),
            Load::LookupVariables { entities } => format!(
                r#"{{"query":"query Meter($device: String!) {{ meter(device: $device) {{ device site seq temp }} }}","variables":{{"device":"dev{}"}}}}"#,
                n % entities as u64
            ),
            Load::Page => r#"{"query":"{ meterConnection(first: 100, filter: {site: {eq: \"berlin\"}}) { edges { node { device site seq temp } } pageInfo { hasNextPage } } }"}"#.to_string(),
        };
        format!(
            "POST /graphql HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Whether a 200 body is a success (a GraphQL error also answers 200).
    fn ok(self, body: &[u8]) -> bool {
        match self {
            Load::Livez => body == b"ok\n",
            Load::Lookup { .. } | Load::LookupVariables { .. } => {
                body.starts_with(b"{\"data\":{\"meter\":{") && !contains(body, b"\"errors\"")
            }
            Load::Page => {
                body.starts_with(b"{\"data\":{\"meterConnection\"")
                    && !contains(body, b"\"errors\"")
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One keep-alive HTTP/1.1 connection: writes a request, reads the status
/// line, headers and a `content-length` body. Enough for the node's
/// responses; anything else (chunked, close) is an error.
struct Connection {
    stream: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    async fn open(host: &str) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            line: String::new(),
            body: Vec::new(),
        })
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        self.stream.get_mut().write_all(request).await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(bad("closed in headers"));
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| bad("no content-length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

/// What one phase measured.
struct Phase {
    /// Requests/s offered in an open-loop phase.
    offered: Option<f64>,
    latencies: Latencies,
    errors: u64,
    seconds: f64,
    node_cores: f64,
    /// Every process on the machine: node, generator, broker, publisher.
    machine_cores: f64,
    /// This process: the load generator (and, under ingest, the
    /// publisher thread).
    generator_cores: f64,
    broker_cores: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.count() as f64 / self.seconds
    }
}

/// Runs `load` on 64 connections: a warm-up, then `duration` counted.
///
/// Closed loop (`pace` `None`): each connection sends its next request
/// as soon as the last is answered, so the phase finds the node's most
/// requests/s, and its latencies are those of a saturated node (64 in
/// flight: mean latency = 64 / rate).
///
/// Open loop (`pace` = requests/s offered over all connections): each
/// connection sends on a fixed schedule. A request whose connection was
/// still waiting for the previous answer when it fell due counts from
/// when it was due, not from when it went out, so a node that falls
/// behind is charged for the wait (no coordinated omission, as wrk2
/// measures). A request whose connection was idle counts from when the
/// generator's timer actually woke: tokio's timer has a 1 ms tick, and
/// charging its lateness to the node added ~1 ms to every latency (the
/// p50 of lookups at 15,000/s without ingest was 1.35 ms that way). This
/// is the latency at a given load, which is what a budget like "15,000
/// req/s with p99 ≤ 5 ms" asks.
fn run_phase(node: &Node, broker: u32, load: Load, size: &Size, pace: Option<f64>) -> Phase {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let host = node.http.clone();
    let errors = Arc::new(AtomicU64::new(0));
    let warm_end = Instant::now() + size.warm_up;
    let end = warm_end + size.phase;
    let (all, cpu_start, cpu_end) = runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let host = host.clone();
            let errors = errors.clone();
            tasks.push(tokio::spawn(async move {
                let mut connection = Connection::open(&host).await.expect("connect");
                let mut latencies = Vec::new();
                // A cheap per-connection key sequence (an LCG).
                let mut n = c as u64 * 7919 + 1;
                // Open loop: this connection's schedule, staggered.
                let interval = pace.map(|rate| Duration::from_secs_f64(CONNECTIONS as f64 / rate));
                let mut due =
                    interval.map(|i| Instant::now() + i.mul_f64(c as f64 / CONNECTIONS as f64));
                // When this connection's last answer arrived.
                let mut answered = Instant::now();
                loop {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let request = load.request(&host, n >> 33);
                    if let Some(at) = due {
                        tokio::time::sleep_until(at.into()).await;
                    }
                    let woke = Instant::now();
                    // When the clock starts (see the function's docs).
                    let sent = match due {
                        Some(at) if answered > at => at,
                        _ => woke,
                    };
                    if let (Some(at), Some(interval)) = (due, interval) {
                        due = Some(at + interval);
                    }
                    if sent >= end {
                        break;
                    }
                    let result = connection.exchange(&request).await;
                    answered = Instant::now();
                    let micros = answered
                        .duration_since(sent)
                        .as_micros()
                        .min(u32::MAX as u128) as u32;
                    match result {
                        Ok(200) if load.ok(&connection.body) => {
                            if sent >= warm_end {
                                latencies.push(micros);
                            }
                        }
                        Ok(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            match Connection::open(&host).await {
                                Ok(fresh) => connection = fresh,
                                Err(_) => break,
                            }
                        }
                    }
                }
                latencies
            }));
        }
        tokio::time::sleep_until(warm_end.into()).await;
        let cpu_start = Cpu::now(node.pid, broker);
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("connection task"));
        }
        let cpu_end = Cpu::now(node.pid, broker);
        (all, cpu_start, cpu_end)
    });
    let seconds = size.phase.as_secs_f64();
    Phase {
        offered: pace,
        latencies: Latencies::new(all),
        errors: errors.load(Ordering::Relaxed),
        seconds,
        node_cores: (cpu_end.node - cpu_start.node) / seconds,
        machine_cores: (cpu_end.machine - cpu_start.machine) / seconds,
        generator_cores: (cpu_end.generator - cpu_start.generator) / seconds,
        broker_cores: (cpu_end.broker - cpu_start.broker) / seconds,
    }
}

/// CPU seconds so far: the node, this process, the broker, the machine.
#[derive(Clone, Copy)]
struct Cpu {
    node: f64,
    generator: f64,
    broker: f64,
    machine: f64,
}

impl Cpu {
    fn now(node: u32, broker: u32) -> Cpu {
        Cpu {
            node: bench::cpu_seconds(node),
            generator: bench::cpu_seconds(std::process::id()),
            broker: bench::cpu_seconds(broker),
            machine: bench::machine_busy_seconds(),
        }
    }
}

/// A QoS 1 publisher at a fixed rate until stopped. `acked` counts the
/// messages the broker has acknowledged (PUBACK), as they come: the
/// phases read it at the same instants as the node's stored counter, so
/// "published" and "stored" cover the same window. Returns how many
/// messages it handed to its client.
fn paced_publisher(
    port: u16,
    rate: f64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut options = MqttOptions::new("paced-pub", "127.0.0.1", port);
        options.set_inflight(100);
        options.set_keep_alive(Duration::from_secs(60));
        let (client, mut connection) = Client::new(options, 1000);
        let acks = std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                    _ => {}
                }
            }
        });
        let start = Instant::now();
        let mut sent = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (topic, payload) = telemetry(1_000_000 + sent);
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let _ = client.disconnect();
        let _ = acks.join();
        sent
    })
}

/// The rate the publisher runs at during the lookup: half the ingest
/// ceiling (raw `mosquitto_sub` delivery), or half the node's own
/// sustainable rate when that is lower; the budget's "half the ceiling"
/// would otherwise queue without end behind a node that cannot take it.
fn ingest_rate(ceiling: f64, node: f64) -> (f64, &'static str) {
    if node < ceiling {
        (node / 2.0, "half the node's sustainable rate")
    } else {
        (ceiling / 2.0, "half the mosquitto_sub ceiling")
    }
}

fn print_row(name: &str, phase: &Phase, baseline: Option<f64>) {
    println!(
        "| {name} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
        phase.rate(),
        baseline.map_or("1.00".to_string(), |b| format!("{:.2}", phase.rate() / b)),
        phase.latencies.quantile_ms(0.5),
        phase.latencies.quantile_ms(0.99),
        phase.node_cores,
        phase.errors,
        phase.machine_cores,
        phase.generator_cores,
        phase.broker_cores,
        phase.machine_cores * 1e6 / phase.rate().max(1.0),
    );
}

/// The ingest under the lookups, counted at one instant: the broker's
/// acknowledgements to the publisher and the node's stored records (both
/// since the publisher started). Rates over a window come from two such
/// readings, never from nominal phase times, so stored and published
/// cover exactly the same interval.
struct IngestCount<'a, W: Fn() -> f64> {
    written: &'a W,
    acked: &'a AtomicU64,
    /// `meshlet_ingest_records_written_total` before the publisher started.
    base: f64,
}

impl<W: Fn() -> f64> IngestCount<'_, W> {
    /// Reads the node's counter, then the acknowledgements. The broker
    /// acknowledges a message when it receives it, the node stores it
    /// after a write group and an fsync, so in practice a message is
    /// counted acknowledged before it is counted stored; reading in this
    /// order, the backlog is overstated at most by the messages
    /// acknowledged between the two readings (one `/metrics` scrape,
    /// about a millisecond).
    fn now(&self) -> IngestReading {
        let stored = (self.written)() - self.base;
        IngestReading {
            at: Instant::now(),
            stored,
            acked: self.acked.load(Ordering::Relaxed) as f64,
        }
    }
}

#[derive(Clone, Copy)]
struct IngestReading {
    at: Instant,
    stored: f64,
    acked: f64,
}

/// What happened between two readings.
struct IngestWindow {
    seconds: f64,
    stored: f64,
    acked: f64,
}

impl IngestReading {
    /// Acknowledged by the broker and not yet stored by the node.
    fn backlog(&self) -> f64 {
        self.acked - self.stored
    }

    fn since(&self, start: &IngestReading) -> IngestWindow {
        IngestWindow {
            seconds: self.at.duration_since(start.at).as_secs_f64(),
            stored: self.stored - start.stored,
            acked: self.acked - start.acked,
        }
    }
}

/// The budget's lookup rate and latency.
const BUDGET_LOOKUPS: f64 = 15_000.0;
const BUDGET_P99_MS: f64 = 5.0;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full { FULL } else { SMOKE };
    let messages: Vec<_> = (0..size.ingest_messages).map(telemetry).collect();

    let ceiling = bench::mosquitto_sub_ceiling(&messages, "meter/#");

    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, port) = bench::mosquitto(dir.path());
    let broker_pid = broker.0.id();
    let node = bench::start_node(
        dir.path(),
        std::path::Path::new("data"),
        &[("meter.yaml", PRODUCT)],
        // All 64 connections are one identity (anonymous): without a slot
        // per connection, `api.max_concurrent_queries` (default half the
        // cores) would queue them and refuse some with 429 — the bench
        // measures the HTTP and query path, not that limit.
        // (`BENCH_MESHLET_API__MAX_CONCURRENT_QUERIES` overrides it.)
        &format!("[mqtt.embedded]\nenabled = false\n[mqtt.external]\nurl = \"mqtt://127.0.0.1:{port}\"\n[api]\nmax_concurrent_queries = {CONNECTIONS}\n"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while bench::metric(&node.http, "meshlet_mqtt_client_connects_total") < 1.0 {
        assert!(Instant::now() < end, "node connected to the broker");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Subscribed: a probe reading is stored (published again until one
    // is, instead of a fixed sleep a slow subscription could outlast).
    let probed = bench::metric(&node.http, "meshlet_ingest_records_written_total");
    let end = Instant::now() + Duration::from_secs(10);
    while bench::metric(&node.http, "meshlet_ingest_records_written_total") <= probed {
        assert!(
            Instant::now() < end,
            "the node's subscription stores a probe"
        );
        let _ = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args([
                "-t",
                "meter/probe",
                "-m",
                r#"{"site": "probe", "seq": 0, "temp": 20.0, "ts": 1700000000000}"#,
            ])
            .status();
        std::thread::sleep(Duration::from_millis(50));
    }
    preload(&node, size.entities);

    let written = || bench::metric(&node.http, "meshlet_ingest_records_written_total");
    let before = written();
    let start = Instant::now();
    let busy_before = bench::machine_busy_seconds();
    bench::publish(port, "sustain-pub", &messages);
    let end = Instant::now() + Duration::from_secs(600);
    while written() < before + messages.len() as f64 {
        assert!(Instant::now() < end, "node caught up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sustainable = messages.len() as f64 / start.elapsed().as_secs_f64();
    // Publisher, broker and node together, per message stored.
    let machine_us_per_message =
        (bench::machine_busy_seconds() - busy_before) * 1e6 / messages.len() as f64;

    let livez = run_phase(&node, broker_pid, Load::Livez, &size, None);
    let lookup_load = Load::Lookup {
        entities: size.entities,
    };
    let lookup = run_phase(&node, broker_pid, lookup_load, &size, None);
    let variables_load = Load::LookupVariables {
        entities: size.entities,
    };
    let lookup_variables = run_phase(&node, broker_pid, variables_load, &size, None);
    let page = run_phase(&node, broker_pid, Load::Page, &size, None);
    let budget_rate = size.budget_lookups;
    // The budget's load without the ingest: what the lookup path alone
    // does at 15,000/s.
    let paced_quiet = run_phase(&node, broker_pid, lookup_load, &size, Some(budget_rate));

    let (rate, chosen) = match std::env::var("API_LOAD_INGEST_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
    {
        // For A/B runs: the same ingest in every run, whatever this run's
        // sustainable rate came out at.
        Some(fixed) => (fixed, "fixed by API_LOAD_INGEST_RATE"),
        None => ingest_rate(ceiling, sustainable),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    // Nothing else writes from here on: records stored since this reading
    // are the publisher's.
    let stored_before_publisher = written();
    let ingest = IngestCount {
        written: &written,
        acked: &acked,
        base: stored_before_publisher,
    };
    let publisher = paced_publisher(port, rate, stop.clone(), acked.clone());
    std::thread::sleep(size.warm_up); // the publisher reaches its pace
    let window_start = ingest.now();
    let under_ingest = run_phase(&node, broker_pid, lookup_load, &size, None);
    let under_ingest_variables = run_phase(&node, broker_pid, variables_load, &size, None);
    // The floor of the budget's point: the same open-loop load and the
    // same ingest, but requests that do no work in the node (`/livez`).
    // Its p99 is what the machine's scheduling alone adds to any request.
    let paced_livez = run_phase(&node, broker_pid, Load::Livez, &size, Some(budget_rate));
    let paced = run_phase(&node, broker_pid, lookup_load, &size, Some(budget_rate));
    let paced_variables = run_phase(&node, broker_pid, variables_load, &size, Some(budget_rate));
    let window_end = ingest.now();
    stop.store(true, Ordering::Relaxed);
    let handed = publisher.join().expect("publisher");
    // Everything the broker acknowledged reaches the store: wait for the
    // backlog to drain (with a deadline) and say how long it took.
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(600);
    let mut drained = ingest.now();
    while drained.backlog() > 0.0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(5));
        drained = ingest.now();
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    println!(
        "api load: {CONNECTIONS} keep-alive connections, {} entities, {:.0} s per phase",
        size.entities,
        size.phase.as_secs_f64()
    );
    println!("ingest ceiling (publisher → mosquitto → mosquitto_sub, QoS 1): {ceiling:.0} msgs/s");
    println!("node sustainable ingest (→ mosquitto → meshlet, durable): {sustainable:.0} msgs/s");
    let window = window_end.since(&window_start);
    println!(
        "ingest under the lookups: {rate:.0} msgs/s offered ({chosen}); over the same {:.1} s window (the five phases under ingest, both counters read at its start and at its end): {:.0} published (acknowledged by the broker, {:.0}/s), {:.0} stored ({:.0}/s, {:.3} of published); backlog (acknowledged, not yet stored) {:.0} at the start, {:.0} at the end",
        window.seconds,
        window.acked,
        window.acked / window.seconds,
        window.stored,
        window.stored / window.seconds,
        window.stored / window.acked.max(1.0),
        window_start.backlog(),
        window_end.backlog(),
    );
    println!(
        "after the publisher stopped ({handed} messages handed to its client, {:.0} acknowledged): {}",
        drained.acked,
        if drained.backlog() <= 0.0 {
            format!("all stored, {drain_seconds:.1} s later")
        } else {
            format!(
                "{:.0} still not stored after {drain_seconds:.0} s",
                drained.backlog()
            )
        }
    );
    println!(
        "| phase | req/s | vs /livez | p50 ms | p99 ms | node CPU (cores) | errors | machine CPU (cores of {}) | generator | broker | machine µs per request |",
        bench::machine_cores()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    print_row("`GET /livez` (HTTP ceiling)", &livez, None);
    let rows = [
        ("key lookup, key in the query text".to_string(), &lookup),
        ("key lookup, key in `variables`".to_string(), &lookup_variables),
        ("filtered 100-row page".to_string(), &page),
        (format!("key lookup in the text, ingest at {rate:.0} msgs/s"), &under_ingest),
        (format!("key lookup in `variables`, ingest at {rate:.0} msgs/s"), &under_ingest_variables),
        (format!("key lookup in the text, {budget_rate:.0} req/s offered (open loop), no ingest"), &paced_quiet),
        (format!("`GET /livez`, {budget_rate:.0} req/s offered (open loop), ingest at {rate:.0} msgs/s (the floor)"), &paced_livez),
        (format!("key lookup in the text, **{budget_rate:.0} req/s offered** (open loop), ingest at {rate:.0} msgs/s"), &paced),
        (format!("key lookup in `variables`, **{budget_rate:.0} req/s offered** (open loop), ingest at {rate:.0} msgs/s"), &paced_variables),
    ];
    for (name, phase) in &rows {
        print_row(name, phase, Some(livez.rate()));
    }
    // The budget as CPU: what 15,000 lookups/s and this ingest would cost
    // all processes together at the per-unit costs just measured.
    for (form, phase) in [
        ("in the text", &lookup),
        ("in `variables`", &lookup_variables),
    ] {
        let lookup_us = phase.machine_cores * 1e6 / phase.rate();
        let needed = (BUDGET_LOOKUPS * lookup_us + rate * machine_us_per_message) / 1e6;
        println!(
            "CPU budget, key {form}: a lookup costs {lookup_us:.0} µs of machine CPU (node {:.0}, generator {:.0}); a stored message {machine_us_per_message:.0} µs (publisher, broker, node); {BUDGET_LOOKUPS:.0} lookups/s + {rate:.0} msgs/s need {needed:.2} cores of {}",
            phase.node_cores * 1e6 / phase.rate(),
            phase.generator_cores * 1e6 / phase.rate(),
            bench::machine_cores()
        );
    }
    // The budget itself: the offered rate served, with its p99.
    for (form, phase) in [
        ("in the text", &paced),
        ("in `variables`", &paced_variables),
    ] {
        let offered = phase.offered.unwrap_or(0.0);
        let p99 = phase.latencies.quantile_ms(0.99);
        let met = phase.rate() >= 0.99 * offered && p99 <= BUDGET_P99_MS;
        println!(
            "budget, key {form}: {:.0} of {offered:.0} lookups/s offered served, p99 {p99:.2} ms (open loop: a request sent on an idle connection counts from the generator's wake-up, so a late wake-up of the generator is not charged; see run_phase), under {rate:.0} msgs/s of ingest: {}",
            phase.rate(),
            if met { "met" } else { "not met" }
        );
    }
    for (what, phase) in [
        ("key lookups alone (no ingest)", &paced_quiet),
        ("`/livez` under the same ingest (the floor)", &paced_livez),
    ] {
        println!(
            "same open-loop load, {what}: {:.0} of {:.0} req/s served, p50 {:.2} ms, p99 {:.2} ms",
            phase.rate(),
            phase.offered.unwrap_or(0.0),
            phase.latencies.quantile_ms(0.5),
            phase.latencies.quantile_ms(0.99),
        );
    }
    for phase in std::iter::once(&livez).chain(rows.iter().map(|(_, phase)| *phase)) {
        assert!(phase.latencies.count() > 0, "every phase served requests");
    }
    // Nothing the broker acknowledged is lost, in either size.
    assert!(
        drained.backlog() <= 0.0,
        "{:.0} acknowledged messages never stored",
        drained.backlog()
    );
    // The smoke run (under `cargo test`) proves the harness: every request
    // of every phase answered as expected. (A full run prints its errors
    // in the table instead.)
    if !full {
        let phases = std::iter::once(("`GET /livez` (HTTP ceiling)", &livez))
            .chain(rows.iter().map(|(name, phase)| (name.as_str(), *phase)));
        for (name, phase) in phases {
            assert_eq!(phase.errors, 0, "{name}: requests failed");
        }
    }
}
