//! What the process-level benches (`api_load`, `ingest_load`, `startup`,
//! `sync_nats`) share on top of the test kit: the release node and
//! Mosquitto as child processes, a raw HTTP/1.0 client small enough not to
//! be the bottleneck, the raw broker ceiling, and readings from `/proc`
//! and `/metrics`.
//!
//! Part of the one kit in `tests/common/` (free ports, Mosquitto, node
//! process, PKI) that the integration tests and the benches both include:
//! a bench says `#[path = "../tests/common/mod.rs"] mod common;`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// A child process killed and reaped on drop unless it was stopped before.
pub struct Killed(pub Child);

impl Killed {
    /// Stops the process with SIGTERM (the node flushes and closes its
    /// store) and waits for it, so the data dir is measured at rest.
    pub fn terminate(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we own and have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process {pid} did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mosquitto on a free port with room for a long queue (a million
/// queued, a thousand in flight).
pub fn mosquitto(dir: &Path) -> (Killed, u16) {
    let (child, port) = super::spawn_mosquitto(dir, 1000, 1_000_000);
    (Killed(child), port)
}

/// A running release node.
pub struct Node {
    pub child: Killed,
    pub http: String,
    pub pid: u32,
    /// Spawn to the first `/readyz` 200.
    pub start_to_ready: Duration,
    pub log: PathBuf,
}

/// The node binary a bench starts: this build's release binary, or the
/// one `BENCH_NODE_BINARY` names (a build with symbols for `perf`, or
/// another commit's binary for an A/B run with the same bench), with the
/// environment of [`node_environment`].
pub fn node_command() -> Command {
    let binary = node_binary();
    if std::env::var_os("BENCH_NODE_BINARY").is_some() {
        eprintln!("node binary from BENCH_NODE_BINARY: {}", binary.display());
    }
    let mut command = Command::new(binary);
    node_environment(&mut command);
    command
}

/// The node binary a bench starts (see [`node_command`]).
pub fn node_binary() -> PathBuf {
    match std::env::var_os("BENCH_NODE_BINARY") {
        Some(binary) => binary.into(),
        None => env!("CARGO_BIN_EXE_meshlet").into(),
    }
}

/// Cleans the node's environment. The node refuses unknown MESHLET_*
/// variables: it starts without the shell's. A `BENCH_MESHLET_*` variable
/// reaches it without its `BENCH_` (A/B runs of a setting, e.g.
/// `BENCH_MESHLET_INGEST__NICE=0`), so a stray MESHLET_* in the shell
/// never changes what a bench measures.
pub fn node_environment(command: &mut Command) {
    for (name, value) in std::env::vars() {
        if name.starts_with("MESHLET_") {
            command.env_remove(&name);
        }
        if let Some(setting) = name.strip_prefix("BENCH_") {
            if setting.starts_with("MESHLET_") {
                eprintln!("node setting from the environment: {setting}={value}");
                command.env(setting, value);
            }
        }
    }
}

/// Starts the node in `dir` with `products` (file name, YAML) and extra
/// TOML `config`, on a free port, anonymous callers acting as `admin`,
/// data in `data_dir` (relative to `dir` or absolute). Returns once
/// `/readyz` answers 200, polled every millisecond.
pub fn start_node(dir: &Path, data_dir: &Path, products: &[(&str, &str)], config: &str) -> Node {
    let products_dir = dir.join("products");
    std::fs::create_dir_all(&products_dir).expect("products dir");
    for (name, yaml) in products {
        std::fs::write(products_dir.join(name), yaml).expect("product");
    }
    std::fs::write(
        dir.join("meshlet.toml"),
        format!(
            "data_dir = {:?}\nproducts = [\"products\"]\n[log]\nformat = \"json\"\nlevel = \"warn\"\n[security]\nanonymous_role = \"admin\"\n{config}",
            data_dir.display().to_string()
        ),
    )
    .expect("config");
    let port = super::free_port();
    let log = dir.join("node.log");
    let mut command = node_command();
    let started = Instant::now();
    let child = command
        .current_dir(dir)
        .args(["--config", "meshlet.toml", "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("meshlet runs");
    let mut child = Killed(child);
    let http = format!("127.0.0.1:{port}");
    let deadline = started + Duration::from_secs(120);
    loop {
        if http_get(&http, "/readyz").0 == 200 {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "node exited ({status}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "node not ready in 120 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let start_to_ready = started.elapsed();
    let pid = child.0.id();
    Node {
        child,
        http,
        pid,
        start_to_ready,
        log,
    }
}

/// A blocking HTTP/1.0 request (one connection): status and body; status
/// 0 when nothing answered.
pub fn http_request(host: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return (0, String::new());
    };
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn http_get(host: &str, path: &str) -> (u16, String) {
    http_request(host, "GET", path, b"")
}

/// A sample of the node's `/metrics` (0 when absent).
pub fn metric(host: &str, series: &str) -> f64 {
    super::metric_value(&http_get(host, "/metrics").1, series).unwrap_or(0.0)
}

/// VmRSS of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS") as f64 / 1024.0
}

/// One line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); 0 when
/// the process or the line is gone.
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds the whole machine spent busy (every process, every core:
/// user, nice, system, irq, softirq and steal from `/proc/stat`), so a
/// phase can say whether the cores were saturated and what a request cost
/// all processes together.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / hz.max(1.0)
}

/// Cores this machine has online.
pub fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// User + system CPU time of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Publishes `messages` with QoS 1 (100 in flight) and returns when every
/// PUBACK came.
pub fn publish(port: u16, client_id: &str, messages: &[(String, Vec<u8>)]) -> Duration {
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

/// The ingest ceiling: the same QoS 1 publisher → a fresh Mosquitto →
/// `mosquitto_sub -q 1` (delivery only, nothing stored), in messages/s.
///
/// The subscription is confirmed before the clock starts: probe messages
/// (on `filter`'s topic with `probe` for a trailing `#`) are published
/// until `mosquitto_sub` prints one, as `benches/ingest_load.rs` does; a
/// fixed sleep let a late subscription miss the first messages and hang
/// the count. Probe lines are not counted.
pub fn mosquitto_sub_ceiling(messages: &[(String, Vec<u8>)], filter: &str) -> f64 {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const PROBE: &str = "ceiling-probe";
    let probe_topic = match filter.strip_suffix('#') {
        Some(prefix) => format!("{prefix}probe"),
        None => filter.to_string(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, port) = mosquitto(dir.path());
    let mut sub = Killed(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", filter, "-i", "ceiling-sub"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub"),
    );
    let stdout = sub.0.stdout.take().expect("stdout");
    let received = Arc::new(AtomicUsize::new(0));
    let probed = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (received, probed) = (received.clone(), probed.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let counter = if line == PROBE { &probed } else { &received };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(10);
    while probed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < end, "mosquitto_sub never subscribed");
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-t", &probe_topic, "-m", PROBE])
            .status();
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    publish(port, "ceiling-pub", messages);
    let end = Instant::now() + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < messages.len() {
        assert!(
            Instant::now() < end,
            "mosquitto_sub received {} of {} messages",
            received.load(Ordering::Relaxed),
            messages.len()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let rate = messages.len() as f64 / start.elapsed().as_secs_f64();
    let _ = sub.0.kill();
    let _ = reader.join();
    rate
}

/// Latencies of one load phase, in microseconds.
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn new(mut all: Vec<u32>) -> Latencies {
        all.sort_unstable();
        Latencies(all)
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        f64::from(self.0[index]) / 1000.0
    }
}

/// The median of `values` (the mean of the middle two of an even count;
/// NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
