//! The `opcua` source end to end: the real binary subscribes to a real
//! OPC UA server (asyncua's, `tests/py/opcua_sim.py`) with the shipped
//! example product (`schema/opcua/opcua_line.yaml`), logging in as a user
//! whose password comes from the environment: the nodes' values become
//! one record per line, read back over GraphQL; a value the PLC writes
//! shows up; a node the server does not have is counted and logged while
//! the line's other nodes are read; the server killed is counted down,
//! and once it is back the session and subscription are made again and
//! the values it has then are read.

#![cfg(feature = "opcua")]

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::graphql::{workdir, Gql};
use common::{free_port, repo_root};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const USER: &str = "meshlet";
const PASSWORD: &str = "line-reader-secret";

/// asyncua serving `init` on `port` for `USER`, killed on drop.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(port: u16, init: &Value) -> Server {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/py/opcua_sim.py"))
            .arg(port.to_string())
            .arg(init.to_string())
            .arg(format!("{USER}:{PASSWORD}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the asyncua server (tests/run.sh installs asyncua)");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the server's first line");
        assert_eq!(line.trim(), "ready", "the OPC UA server did not start");
        Server {
            child,
            stdin,
            stdout,
        }
    }

    /// Writes `value` to `node` on the server, as the PLC would.
    fn set(&mut self, node: &str, value: Value) {
        writeln!(self.stdin, "set {node} {value}").expect("command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        assert_eq!(line.trim(), "ok", "set {node}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn values(count: i64) -> Value {
    json!({
        "ns=2;s=Line1.Speed": 1450.0, "ns=2;s=Line1.Running": true, "ns=2;s=Line1.Count": count,
        "ns=2;s=Line2.Speed": 0.0, "ns=2;s=Line2.Running": false,
    })
}

/// The example product against `port`, logging in as `USER`, with
/// line-2's count mapped to a node the server does not have.
fn product(port: u16) -> String {
    let text = std::fs::read_to_string(repo_root().join("schema/opcua/opcua_line.yaml"))
        .expect("the example exists");
    let endpoint = "      endpoint: opc.tcp://127.0.0.1:4840/meshlet/\n";
    assert!(text.contains(endpoint), "the example's endpoint line");
    let missing = "            count:     \"ns=2;s=Line2.Count\"\n";
    assert!(text.contains(missing), "the example's line-2 count");
    text.replace(
        endpoint,
        &format!(
            "      endpoint: opc.tcp://127.0.0.1:{port}/meshlet/\n      user: {{ name: {USER}, password_env: LINE_OPCUA_PASSWORD }}\n"
        ),
    )
    .replace(missing, "            count:     \"ns=2;s=Line2.Missing\"\n")
}

async fn line(gql: &Gql, id: &str) -> Value {
    gql.data(
        r#"query($id: String!) { opcuaLine(line_id: $id) { line_id speed_rpm running count } }"#,
        json!({ "id": id }),
    )
    .await["opcuaLine"]
        .clone()
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn series(name: &str, extra: &str) -> String {
    format!("{name}{{product=\"opcua_line\",source=\"opcua:0\"{extra}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_monitored_written_and_resubscribed_after_a_restart() {
    let port = free_port();
    let mut server = Server::start(port, &values(7));
    let dir = workdir(&[("opcua_line", &product(port))], "");
    let mut node = common::NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .env("LINE_OPCUA_PASSWORD", PASSWORD)
        .start()
        .expect("node starts");
    let gql = Gql::new(&node);

    until("line-1's first record", || async {
        line(&gql, "line-1").await["count"] == json!(7)
    })
    .await;
    let first = line(&gql, "line-1").await;
    assert_eq!(first["speed_rpm"], json!(1450.0));
    assert_eq!(first["running"], json!(true));

    // The node the server does not have: counted, the line's other nodes
    // read.
    let bad_node = series("meshlet_ingest_read_errors_total", ",reason=\"bad_node\"");
    assert_eq!(gql.metric(&bad_node).await, Some(1.0));
    until("line-2's record without its count", || async {
        !line(&gql, "line-2").await.is_null()
    })
    .await;
    let second = line(&gql, "line-2").await;
    assert_eq!(second["running"], json!(false));
    assert!(second["count"].is_null(), "no made-up count: {second}");
    node.wait_for_log(Duration::from_secs(5), |l| {
        l.contains("ns=2;s=Line2.Missing") && l.contains("refused to monitor")
    })
    .expect("the refused node is logged with its id");

    // The PLC writes: the change arrives within a publishing cycle or
    // two.
    server.set("ns=2;s=Line1.Speed", json!(1500.5));
    server.set("ns=2;s=Line1.Count", json!(8));
    until("line-1's new speed and count", || async {
        let l = line(&gql, "line-1").await;
        l["speed_rpm"] == json!(1500.5) && l["count"] == json!(8)
    })
    .await;

    // The server goes away: counted down and lost; the count moves on
    // while it is away; back, the node resubscribes and reads it.
    let down = series("meshlet_ingest_devices_down", "");
    assert_eq!(gql.metric(&down).await, Some(0.0));
    drop(server);
    until("the server is counted down", || async {
        gql.metric(&down).await == Some(1.0)
    })
    .await;
    let lost = series(
        "meshlet_ingest_read_errors_total",
        ",reason=\"connection_lost\"",
    );
    assert!(gql.metric(&lost).await.is_some_and(|n| n >= 1.0));
    let _server = Server::start(port, &values(42));
    until("line-1's count after the restart", || async {
        line(&gql, "line-1").await["count"] == json!(42)
    })
    .await;
    assert_eq!(gql.metric(&down).await, Some(0.0));
    let accepted = series("meshlet_ingest_records_total", ",outcome=\"accepted\"");
    assert!(gql.metric(&accepted).await.is_some_and(|n| n >= 4.0));
    common::stop_cleanly(node);
}

/// The password's environment variable unset: `serve` refuses to start
/// and says which variable, rather than logging in anonymously.
#[test]
fn a_missing_password_variable_refuses_to_start() {
    let dir = workdir(&[("opcua_line", &product(free_port()))], "");
    let out = common::meshlet(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "meshlet.toml",
        ])
        .env("MESHLET_MQTT__EMBEDDED__LISTEN", "127.0.0.1:0")
        .env_remove("LINE_OPCUA_PASSWORD")
        .output()
        .expect("run meshlet");
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("the environment variable `LINE_OPCUA_PASSWORD` (the OPC UA password of user `meshlet`) is not set"),
        "{err}"
    );
}
