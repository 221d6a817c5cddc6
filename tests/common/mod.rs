//! Shared harness for tests that run the real `meshlet` binary: a temp
//! working directory, a node started on a free port, readiness awaited by
//! polling (never by sleeping a fixed time), and a clean stop.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod bench;
pub mod graphql;
pub mod hostile;
pub mod nats;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this test run.
pub fn meshlet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshlet"))
}

/// The repository root (where `schema/examples` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `meshlet` command with a clean environment: no inherited `MESHLET_*`,
/// `MIMALLOC_*` or `RUST_LOG`, so the developer's shell cannot change a
/// test's outcome.
pub fn meshlet(cwd: &Path) -> Command {
    let mut cmd = Command::new(meshlet_bin());
    cmd.current_dir(cwd);
    for (name, _) in std::env::vars() {
        if is_node_setting(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Variables the node reads from its environment.
fn is_node_setting(name: &str) -> bool {
    name.starts_with("MESHLET_") || name.starts_with("MIMALLOC_") || name == "RUST_LOG"
}

/// Runs `meshlet ARGS` in `cwd` to completion.
pub fn run(cwd: &Path, args: &[&str]) -> Output {
    meshlet(cwd)
        .args(args)
        .output()
        .expect("the meshlet binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Copies the shipped example products into `dir/schema/examples`, the way
/// a newcomer's checkout has them.
pub fn copy_examples(dir: &Path) {
    let from = repo_root().join("schema/examples");
    let to = dir.join("schema/examples");
    std::fs::create_dir_all(&to).expect("create examples dir");
    for entry in std::fs::read_dir(&from).expect("examples exist") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy example");
    }
}

/// Creates an API token with the real CLI (`meshlet token create`, the
/// config `meshlet.toml` in `dir`) and returns it.
#[allow(dead_code)] // not every test binary makes tokens
pub fn create_token(dir: &Path, role: &str, name: &str) -> String {
    let out = run(
        dir,
        &[
            "--config",
            "meshlet.toml",
            "token",
            "create",
            "--role",
            role,
            "--name",
            name,
        ],
    );
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("mlt_"), "{token}");
    token
}

/// A node process started by the harness. Killed on drop if still running.
pub struct NodeProcess {
    child: Child,
    pub http: SocketAddr,
    /// The embedded MQTT broker's address, when it runs.
    pub mqtt: Option<SocketAddr>,
    /// Every log line the node wrote to stderr so far (JSON objects).
    logs: mpsc::Receiver<String>,
    pub seen_logs: Vec<String>,
}

/// How a node is started: working directory and extra arguments/env.
pub struct NodeBuilder {
    cwd: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Run another build of the binary through a launcher (qemu for ARM).
    launcher: Option<(PathBuf, PathBuf)>,
    /// Anonymous callers act as the built-in `admin` role (see
    /// [`NodeBuilder::secured`]).
    anonymous_admin: bool,
    /// HTTP listen address; a free port when unset.
    listen: Option<String>,
}

impl NodeBuilder {
    pub fn new(cwd: &Path) -> NodeBuilder {
        NodeBuilder {
            cwd: cwd.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            launcher: None,
            anonymous_admin: true,
            listen: None,
        }
    }

    /// Leaves access control as the node's config says. Without this the
    /// node lets anonymous callers act as `admin`, so tests of other
    /// features need no tokens.
    pub fn secured(mut self) -> Self {
        self.anonymous_admin = false;
        self
    }

    /// Listens on `addr` instead of a free port (a node restarted where
    /// its peers expect it).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs `binary` under `launcher` (e.g. `qemu-aarch64-static`) instead
    /// of the host build.
    pub fn under(mut self, launcher: impl Into<PathBuf>, binary: impl Into<PathBuf>) -> Self {
        self.launcher = Some((launcher.into(), binary.into()));
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// Starts `meshlet serve` on a free port and waits until the node logs
    /// that it is ready (at most `deadline`).
    pub fn start(self) -> Result<NodeProcess, String> {
        let mut cmd = meshlet(&self.cwd);
        if let Some((launcher, binary)) = &self.launcher {
            let mut wrapped = Command::new(launcher);
            wrapped.current_dir(&self.cwd).arg(binary);
            for (name, _) in std::env::vars() {
                if is_node_setting(&name) {
                    wrapped.env_remove(name);
                }
            }
            cmd = wrapped;
        }
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .args(&self.args)
            .env("MESHLET_LOG__FORMAT", "json")
            .env("RUST_LOG", "meshlet=info")
            // Parallel tests must not all take the default 1883.
            .env("MESHLET_MQTT__EMBEDDED__LISTEN", "127.0.0.1:0")
            .envs(
                self.anonymous_admin
                    .then_some(("MESHLET_SECURITY__ANONYMOUS_ROLE", "admin")),
            )
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn meshlet: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = NodeProcess {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt: None,
            logs: rx,
            seen_logs: Vec::new(),
        };
        let ready = node.wait_for_log(Duration::from_secs(30), |line| {
            line.contains("\"message\":\"ready\"")
        })?;
        let event: serde_json::Value =
            serde_json::from_str(&ready).map_err(|e| format!("ready line is not JSON: {e}"))?;
        node.http = event["http"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("ready line has no http address: {ready}"))?;
        node.mqtt = event["mqtt"].as_str().and_then(|a| a.parse().ok());
        Ok(node)
    }
}

impl NodeProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Waits until a log line matches, the process exits, or the deadline
    /// passes. Returns the matching line.
    pub fn wait_for_log(
        &mut self,
        deadline: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "timed out waiting for a log line; logs so far:\n{}",
                    self.seen_logs.join("\n")
                ));
            }
            match self.logs.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let hit = matches(&line);
                    self.seen_logs.push(line.clone());
                    if hit {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    return Err(format!(
                        "node exited ({status:?}) before the expected log line; logs:\n{}",
                        self.seen_logs.join("\n")
                    ));
                }
            }
        }
    }

    /// Sends a signal (SIGTERM, SIGINT, SIGKILL...).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) with a pid we spawned and still own; no memory involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the process to exit, at most `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        let end = Instant::now() + deadline;
        loop {
            // Keep draining logs so the pipe never fills.
            while let Ok(line) = self.logs.try_recv() {
                self.seen_logs.push(line);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    while let Ok(line) = self.logs.recv_timeout(Duration::from_millis(100)) {
                        self.seen_logs.push(line);
                    }
                    return Ok(status);
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => return Err("node did not exit in time".to_string()),
                Err(e) => return Err(format!("wait failed: {e}")),
            }
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(Duration::from_secs(20))
            .expect("node stops after SIGTERM");
        (status, std::mem::take(&mut self.seen_logs))
    }
}

/// SIGTERM, and the node must exit 0: a stop that crashed, timed out or
/// failed to flush fails the test, with the node's logs.
#[allow(dead_code)] // not every test binary stops nodes this way
pub fn stop_cleanly(node: NodeProcess) {
    let (status, logs) = node.stop();
    assert!(
        status.success(),
        "the node did not stop cleanly ({status}); its logs:\n{}",
        logs.join("\n")
    );
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `condition` until it is true or `deadline` passes.
pub fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    condition()
}

/// A blocking HTTP GET with a real client: status and body.
pub fn http_get(url: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = reqwest::get(url).await.expect("HTTP request");
        let status = response.status().as_u16();
        let body = response.text().await.expect("HTTP body");
        (status, body)
    })
}

/// A port that was free a moment ago on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits (at most 10 s) until something accepts connections on `port`.
pub fn wait_port(port: u16) {
    let up = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "nothing listens on {port}");
}

/// Starts `mosquitto` on a free loopback port with its config in `dir`:
/// anonymous access, no persistence, `max_inflight` (0: no limit) and
/// `max_queued` per client, only errors logged. Returns once it listens.
pub fn spawn_mosquitto(dir: &Path, max_inflight: u32, max_queued: u32) -> (Child, u16) {
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages {max_queued}\nmax_inflight_messages {max_inflight}\nlog_dest stderr\nlog_type error\n"
        ),
    )
    .expect("write mosquitto.conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed (tests/run.sh installs it)");
    wait_port(port);
    (child, port)
}

/// A real Mosquitto broker on a free loopback port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` with anonymous access and room for a long
    /// offline queue (the durability tests park thousands of messages).
    pub fn start() -> Mosquitto {
        Mosquitto::start_with_inflight(100)
    }

    /// Like [`Mosquitto::start`], with `max_inflight_messages` set (0: no
    /// limit, the broker sends a whole offline queue at once).
    pub fn start_with_inflight(max_inflight: u32) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, port) = spawn_mosquitto(dir.path(), max_inflight, 100_000);
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` to the broker (SIGSTOP pauses it: its connections
    /// stay open and say nothing, as when a site broker hangs).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) with a pid we spawned and still own; no memory involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes one message with the real `mosquitto_pub` client and waits
/// for it to finish (for QoS 1, that is until the PUBACK came).
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Output {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-q",
        &qos.to_string(),
        "-s",
    ]);
    if retain {
        cmd.arg("-r");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("mosquitto_pub is installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(payload).expect("write payload");
    }
    child.wait_with_output().expect("mosquitto_pub finishes")
}

/// Reads a counter or gauge from the node's `/metrics` (Prometheus text):
/// the sample named exactly `series` (name and labels).
/// A raw MQTT 3.1.1 connection to `port` with a persistent session
/// (`clean_session = false`), CONNECT written, CONNACK not yet read: the
/// durability tests drive PUBLISH/PUBACK themselves, byte for byte, so a
/// client library cannot hide a lost acknowledgement. `None` while the
/// node is down (the caller retries).
pub fn raw_mqtt_connect(
    port: u16,
    client_id: &str,
    read_timeout: Duration,
) -> Option<std::net::TcpStream> {
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        std::thread::sleep(Duration::from_millis(50));
        return None;
    };
    let _ = stream.set_read_timeout(Some(read_timeout));
    let mut connect = Connect::new(client_id);
    connect.clean_session = false;
    connect.keep_alive = 30;
    let mut buffer = bytes::BytesMut::new();
    Packet::Connect(connect)
        .write(&mut buffer, usize::MAX)
        .expect("encode");
    stream.write_all(&buffer).ok()?;
    Some(stream)
}

pub fn metric(node: &NodeProcess, series: &str) -> Option<f64> {
    let (status, body) = http_get(&node.url("/metrics"));
    assert_eq!(status, 200, "{body}");
    metric_value(&body, series)
}

/// The value of the sample named exactly `series` (name and labels) in
/// Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Opens the store of a stopped node's data directory.
pub fn open_store(data_dir: &Path) -> meshlet::store::Store {
    meshlet::store::Store::open(meshlet::store::StoreConfig::new(data_dir.join("store")))
        .expect("the store opens")
}

/// A blocking HTTP POST with a real client: status and body.
pub fn http_post(url: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        let body = response.text().await.expect("HTTP body");
        (status, body)
    })
}

/// An envelope as an edge `origin` sends it: `reading` events of meter
/// `meter`, one per sequence number, with `n` = the sequence number (the
/// `reading` product of tests/it/sync_http.rs and tests/it/sync_mqtt.rs).
#[allow(dead_code)] // only the sync tests send envelopes
pub fn sync_envelope(origin: &str, meter: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    use meshlet::sync::envelope::{Envelope, EnvelopeRecord, ENVELOPE_FORMAT};
    let records: Vec<EnvelopeRecord> = seqs
        .map(|seq| EnvelopeRecord {
            seq,
            product: "reading".into(),
            definition_version: 1,
            entity: meter.into(),
            event_time: meshlet::record::Timestamp::from_secs(1_714_564_800 + seq as i64),
            fields: [
                (
                    "meter".to_string(),
                    meshlet::record::Value::String(meter.into()),
                ),
                ("n".to_string(), meshlet::record::Value::Int(seq as i64)),
            ]
            .into_iter()
            .collect(),
            tombstone: false,
        })
        .collect();
    Envelope {
        format: ENVELOPE_FORMAT,
        origin: origin.into(),
        link: "central".into(),
        lane: 1,
        pending: 0,
        first_seq: records.first().map_or(0, |r| r.seq),
        last_seq: records.last().map_or(0, |r| r.seq),
        records,
    }
    .encode(3)
    .expect("the envelope encodes")
}

/// Every file under `dir` (relative path) whose bytes hold `needle`: in the
/// clear (`plain`), or inside a zstd frame that starts anywhere in the file
/// and opens without or with one of `dictionaries` (`zstd`). This reads the
/// files themselves, not the store's live trees: stale page versions and
/// freed segments that the database still keeps count too.
#[allow(dead_code)] // only the erasure and encryption tests scan files
pub fn files_containing(dir: &Path, needle: &str, dictionaries: &[Vec<u8>]) -> Vec<String> {
    use std::io::Read;
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let contains = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).expect("read file");
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            if contains(&bytes) {
                found.push(format!("{name}: plain"));
            }
            let in_frame = (0..bytes.len().saturating_sub(3))
                .filter(|&at| bytes[at..at + 4] == MAGIC)
                .any(|at| {
                    let plain = zstd::stream::decode_all(&bytes[at..]).ok();
                    plain.is_some_and(|p| contains(&p))
                        || dictionaries.iter().any(|dictionary| {
                            let mut plain = Vec::new();
                            zstd::stream::read::Decoder::with_dictionary(
                                std::io::BufReader::new(&bytes[at..]),
                                dictionary,
                            )
                            .and_then(|mut d| d.read_to_end(&mut plain))
                            .is_ok()
                                && contains(&plain)
                        })
                });
            if in_frame {
                found.push(format!("{name}: zstd"));
            }
        }
    }
    found.sort();
    found
}

/// A node's working folder as the two-node tests write it: each
/// `(name, yaml)` as `products/<name>.yaml`, and a `meshlet.toml` with
/// `data_dir = "data"`, `products = ["products"]` and then `config`.
pub fn node_workdir<S: AsRef<str>>(products: &[(&str, S)], config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    for (name, yaml) in products {
        std::fs::write(
            dir.path().join(format!("products/{name}.yaml")),
            yaml.as_ref(),
        )
        .expect("write");
    }
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n{config}"),
    )
    .expect("write config");
    dir
}

/// Starts the node of a [`node_workdir`] on its `meshlet.toml`, with the
/// embedded broker off.
pub fn start_configured(dir: &Path) -> NodeProcess {
    start_configured_on(dir, None)
}

/// [`start_configured`] on a chosen HTTP address (a restart that keeps
/// its port, an upstream URL written before the node starts); a free port
/// when `None`.
pub fn start_configured_on(dir: &Path, listen: Option<&str>) -> NodeProcess {
    let mut builder = NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false");
    if let Some(addr) = listen {
        builder = builder.listen(addr);
    }
    builder.start().expect("node starts")
}

/// A product definition without its `sync:` rules (the aggregator's copy
/// of an edge's product); `sync:` must be the YAML's last section.
pub fn without_sync(yaml: &str) -> String {
    yaml.split("\nsync:").next().unwrap_or(yaml).to_string() + "\n"
}

/// Posts NDJSON to `/ingest/<product>`; the node must accept it (200).
pub fn push_ndjson(node: &NodeProcess, product: &str, ndjson: &str) {
    let (status, body) = http_post(
        &node.url(&format!("/ingest/{product}")),
        "application/x-ndjson",
        ndjson.as_bytes().to_vec(),
    );
    assert_eq!(status, 200, "{body}");
}

/// Copies the directory tree `from` into `to` (created when missing):
/// fixtures into a temp dir, a stopped node's store into a backup.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Every file under `dir` (path relative to `dir`) with its bytes, to
/// show that a refused command changed no byte or which files one
/// rewrote.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                files.insert(name, std::fs::read(&path).expect("read file"));
            }
        }
    }
    files
}
