//! The `modbus` source end to end: the real binary polls a real Modbus TCP
//! device (pymodbus's server, `tests/py/modbus_sim.py`) with the shipped
//! example product (`schema/modbus/modbus_meter.yaml`): f32, word-swapped
//! u32 with scaling, scaled i16 and a coil become one record per device,
//! read back over GraphQL; a value written to the device by a Modbus
//! master shows up on a later poll; a device that accepts connections but
//! never answers is counted as timeouts without holding up the other; a
//! device that goes away is counted and marked down, and is read again
//! once it is back.

#![cfg(feature = "modbus")]

use crate::common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::graphql::{start, workdir, Gql};
use common::{free_port, repo_root};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

/// The example's registers: 230.5 V (f32), 12345.67 kWh (u32, low word
/// first, 0.01 kWh), -1.5 kW (i16, 0.01 kW), breaker closed.
const REGISTERS: &str = r#"{"hr": [17254, 32768, 54919, 18], "ir": [65386], "co": [1]}"#;

/// pymodbus serving `init` on `port`, killed on drop.
struct Simulator {
    child: Child,
}

impl Simulator {
    fn start(port: u16, init: &str) -> Simulator {
        let child = Command::new("python3")
            .arg(repo_root().join("tests/py/modbus_sim.py"))
            .arg(port.to_string())
            .arg(init)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the pymodbus simulator (tests/run.sh installs pymodbus)");
        let end = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "the Modbus simulator never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Simulator { child }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example product, its meter on `port`, plus a second meter `M-0002`
/// at `silent`.
fn product(port: u16, silent: u16) -> String {
    let text = std::fs::read_to_string(repo_root().join("schema/modbus/modbus_meter.yaml"))
        .expect("the example exists");
    let device = "        - { address: 127.0.0.1:1502, unit: 1, key: M-0001 }\n";
    assert!(text.contains(device), "the example's device line");
    text.replace(
        device,
        &format!(
            "        - {{ address: 127.0.0.1:{port}, unit: 1, key: M-0001 }}\n        - {{ address: 127.0.0.1:{silent}, unit: 2, key: M-0002 }}\n"
        ),
    )
}

async fn meter(gql: &Gql, id: &str) -> Value {
    gql.data(
        r#"query($id: String!) { modbusMeter(meter_id: $id) { meter_id voltage_v energy_kwh power_kw breaker_closed } }"#,
        json!({ "id": id }),
    )
    .await["modbusMeter"]
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
    format!("{name}{{product=\"modbus_meter\",source=\"modbus:0\"{extra}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_are_polled_written_back_and_failures_counted() {
    let port = free_port();
    let sim = Simulator::start(port, REGISTERS);
    // A device that accepts the connection and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            keep.lock().expect("lock").push(stream);
        }
    });

    let dir = workdir(&[("modbus_meter", &product(port, silent_port))], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);

    until("M-0001's first reading", || async {
        !meter(&gql, "M-0001").await.is_null()
    })
    .await;
    let first = meter(&gql, "M-0001").await;
    assert_eq!(first["meter_id"], json!("M-0001"));
    assert_eq!(first["voltage_v"], json!(230.5));
    assert_eq!(first["power_kw"], json!(-1.5));
    assert_eq!(first["breaker_closed"], json!(true));
    let energy = first["energy_kwh"].as_f64().expect("energy");
    assert!((energy - 12345.67).abs() < 1e-6, "{energy}");

    // A master writes the energy register pair (low word first): the next
    // poll reads it.
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut master = tokio_modbus::client::tcp::connect(addr)
        .await
        .expect("connect to the simulator");
    use tokio_modbus::client::Writer;
    let raw: u32 = 1_300_000; // 13000.00 kWh
    master
        .write_multiple_registers(2, &[(raw & 0xFFFF) as u16, (raw >> 16) as u16])
        .await
        .expect("write")
        .expect("no exception");
    until("the written energy is read", || async {
        meter(&gql, "M-0001").await["energy_kwh"]
            .as_f64()
            .is_some_and(|e| (e - 13000.0).abs() < 1e-6)
    })
    .await;

    // The silent meter: timeouts counted, no record, the other meter still
    // read.
    let timeouts = series("meshlet_ingest_read_errors_total", ",reason=\"timeout\"");
    until("timeouts of the silent meter are counted", || async {
        gql.metric(&timeouts).await.is_some_and(|n| n >= 2.0)
    })
    .await;
    assert!(meter(&gql, "M-0002").await.is_null(), "no made-up reading");
    let down = series("meshlet_ingest_devices_down", "");
    assert_eq!(
        gql.metric(&down).await,
        Some(1.0),
        "the silent meter is down"
    );

    // The simulator goes away: M-0001 is counted down too; back, it is
    // read again (the simulator restarts with the example's registers).
    drop(sim);
    until("both meters are down", || async {
        gql.metric(&down).await == Some(2.0)
    })
    .await;
    let refused = series("meshlet_ingest_read_errors_total", ",reason=\"connect\"");
    until("a refused connection is counted", || async {
        gql.metric(&refused).await.is_some_and(|n| n >= 1.0)
    })
    .await;
    let _sim = Simulator::start(port, REGISTERS);
    until("M-0001 is read again after a restart", || async {
        meter(&gql, "M-0001").await["energy_kwh"]
            .as_f64()
            .is_some_and(|e| (e - 12345.67).abs() < 1e-6)
    })
    .await;
    until("only the silent meter is down", || async {
        gql.metric(&down).await == Some(1.0)
    })
    .await;
    let accepted = series("meshlet_ingest_records_total", ",outcome=\"accepted\"");
    assert!(gql.metric(&accepted).await.is_some_and(|n| n >= 3.0));
    common::stop_cleanly(node);
}

/// A device that refuses one read with a Modbus exception (ILLEGAL DATA
/// ADDRESS: this meter maps no input register, so it has no power
/// reading) is up: the refusal is counted as `reason="exception"`, the
/// fields it could read are written, and the other meter keeps being
/// polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_reply_is_counted_and_polling_goes_on() {
    let port = free_port();
    let _full = Simulator::start(port, REGISTERS);
    let partial_port = free_port();
    let _partial = Simulator::start(
        partial_port,
        r#"{"hr": [17254, 32768, 54919, 18], "ir": [], "co": [0]}"#,
    );
    let dir = workdir(&[("modbus_meter", &product(port, partial_port))], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);

    let exceptions = series("meshlet_ingest_read_errors_total", ",reason=\"exception\"");
    until("the refused input-register reads are counted", || async {
        gql.metric(&exceptions).await.is_some_and(|n| n >= 2.0)
    })
    .await;
    until("M-0002's reading without its power", || async {
        !meter(&gql, "M-0002").await.is_null()
    })
    .await;
    let partial = meter(&gql, "M-0002").await;
    assert_eq!(partial["voltage_v"], json!(230.5));
    assert_eq!(partial["breaker_closed"], json!(false));
    assert!(partial["power_kw"].is_null(), "no made-up power: {partial}");
    let energy = partial["energy_kwh"].as_f64().expect("energy");
    assert!((energy - 12345.67).abs() < 1e-6, "{energy}");

    // The full meter is read as before, and keeps being read: a value a
    // master writes shows up while the other meter's exceptions go on.
    assert_eq!(meter(&gql, "M-0001").await["power_kw"], json!(-1.5));
    let before = gql.metric(&exceptions).await.unwrap_or(0.0);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut master = tokio_modbus::client::tcp::connect(addr)
        .await
        .expect("connect to the simulator");
    use tokio_modbus::client::Writer;
    let raw: u32 = 1_400_000; // 14000.00 kWh
    master
        .write_multiple_registers(2, &[(raw & 0xFFFF) as u16, (raw >> 16) as u16])
        .await
        .expect("write")
        .expect("no exception");
    until("M-0001's written energy is read", || async {
        meter(&gql, "M-0001").await["energy_kwh"]
            .as_f64()
            .is_some_and(|e| (e - 14000.0).abs() < 1e-6)
    })
    .await;
    until("exceptions go on being counted", || async {
        gql.metric(&exceptions).await.is_some_and(|n| n > before)
    })
    .await;
    let down = series("meshlet_ingest_devices_down", "");
    assert_eq!(
        gql.metric(&down).await,
        Some(0.0),
        "a device that answers with an exception is up"
    );
    let timeouts = series("meshlet_ingest_read_errors_total", ",reason=\"timeout\"");
    assert_eq!(gql.metric(&timeouts).await.unwrap_or(0.0), 0.0);
    common::stop_cleanly(node);
}

/// The shipped `energy_meter` example polls its older meters itself: the
/// real binary reads a pymodbus meter with the example's register map, and
/// the reading comes back over GraphQL with `read_at` (which the product
/// requires) filled with the poll's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_energy_meter_example_polls_its_meters_and_stamps_read_at() {
    // holding: energy 10234.5 kWh (u32, 0.1 kWh: 102345), power 3.2 kW
    // (i16, 0.01 kW); input: 231.5 V (f32), power factor 0.97 (i16, 0.001).
    let registers = r#"{"hr": [1, 36809, 320], "ir": [17255, 32768, 970]}"#;
    let port = free_port();
    let _sim = Simulator::start(port, registers);
    let text = std::fs::read_to_string(repo_root().join("schema/examples/energy_meter.yaml"))
        .expect("the example exists");
    let devices = "        - { address: 10.20.0.7:502, unit: 7, key: M-0007 }\n        - { address: 10.20.0.7:502, unit: 8, key: M-0008 }\n";
    assert!(text.contains(devices), "the example's device lines");
    let text = text
        .replace(
            devices,
            &format!("        - {{ address: 127.0.0.1:{port}, unit: 7, key: M-0007 }}\n"),
        )
        .replace("poll_interval: 15m", "poll_interval: 1s");
    let dir = workdir(
        &[("energy_meter", &text)],
        "[upstreams.central]\nurl = \"http://127.0.0.1:9\"\n",
    );
    let before = meshlet::record::Timestamp::now();
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let query = r#"query($id: String!) { energyMeter(meter_id: $id) { meter_id read_at energy_kwh power_kw voltage_v power_factor } }"#;
    let reading =
        || async { gql.data(query, json!({ "id": "M-0007" })).await["energyMeter"].clone() };
    until("M-0007's first reading", || async {
        !reading().await.is_null()
    })
    .await;
    let got = reading().await;
    assert_eq!(got["meter_id"], json!("M-0007"));
    let close = |v: &Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6);
    assert!(close(&got["energy_kwh"], 10234.5), "{got}");
    assert!(close(&got["power_kw"], 3.2), "{got}");
    assert!(close(&got["voltage_v"], 231.5), "{got}");
    assert!(close(&got["power_factor"], 0.97), "{got}");
    let read_at = got["read_at"].as_str().expect("read_at is filled");
    let read_at = meshlet::record::Timestamp::parse_rfc3339(read_at).expect("an RFC 3339 time");
    assert!(
        read_at.as_millis() >= before.as_millis()
            && read_at.as_millis() <= meshlet::record::Timestamp::now().as_millis(),
        "read_at is the poll's time: {got}"
    );
    // A later poll stamps a later time.
    until("a later poll", || async {
        reading().await["read_at"]
            .as_str()
            .and_then(|t| meshlet::record::Timestamp::parse_rfc3339(t).ok())
            .is_some_and(|t| t.as_millis() > read_at.as_millis())
    })
    .await;
    common::stop_cleanly(node);
}
