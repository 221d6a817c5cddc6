//! External broker over TLS: a real Mosquitto with its own CA that
//! requires client certificates, certificates made with the openssl CLI.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::*;
use common::*;

const PRODUCT: &str = r#"
product: secure_reading
version: 1
domain: test
owner: test@example.com
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  temp:      { type: float }
sources:
  - mqtt: { topic: "secure/{sensor_id}", format: json }
"#;

fn tls_pub(pki: &Path, port: u16, topic: &str, payload: &str) -> bool {
    Command::new("mosquitto_pub")
        .current_dir(pki)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .args([
            "--cafile",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
        ])
        .status()
        .expect("mosquitto_pub runs")
        .success()
}

fn node_with(dir: &Path, external: &str) -> NodeBuilder {
    std::fs::create_dir_all(dir.join("products")).expect("dir");
    std::fs::write(dir.join("products/secure.yaml"), PRODUCT).expect("product");
    std::fs::write(
        dir.join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n[mqtt.embedded]\nenabled = false\n[mqtt.external]\n{external}"),
    )
    .expect("config");
    NodeBuilder::new(dir).arg("--config").arg("meshlet.toml")
}

#[test]
fn mqtts_with_a_custom_ca_and_a_client_certificate_delivers() {
    let pki = tempfile::tempdir().expect("tempdir");
    make_pki(pki.path());
    let broker = start_tls_mosquitto(pki.path());
    let p = pki.path().display().to_string();

    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with(
        dir.path(),
        &format!(
            "url = \"mqtts://127.0.0.1:{}\"\nca_file = \"{p}/ca.pem\"\nclient_cert_file = \"{p}/client.pem\"\nclient_key_file = \"{p}/client.key\"\n",
            broker.port
        ),
    )
    .start()
    .expect("node starts");
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(&node, "meshlet_mqtt_client_connects_total") == Some(1.0)
        }),
        "connected over TLS with a client certificate"
    );
    // The subscription follows the CONNACK; publish until it has landed.
    assert!(eventually(Duration::from_secs(10), || {
        assert!(tls_pub(
            pki.path(),
            broker.port,
            "secure/s1",
            r#"{"temp": 3.5}"#
        ));
        metric(&node, "meshlet_ingest_records_total{product=\"secure_reading\",source=\"mqtt:0\",outcome=\"accepted\"}")
            .unwrap_or(0.0)
            >= 1.0
    }));
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn a_broker_certificate_from_another_ca_or_a_missing_client_certificate_is_refused() {
    let pki = tempfile::tempdir().expect("tempdir");
    make_pki(pki.path());
    let broker = start_tls_mosquitto(pki.path());
    let p = pki.path().display().to_string();
    for (case, settings) in [
        ("wrong CA", format!("ca_file = \"{p}/other-ca.pem\"\nclient_cert_file = \"{p}/client.pem\"\nclient_key_file = \"{p}/client.key\"\n")),
        ("no client certificate", format!("ca_file = \"{p}/ca.pem\"\n")),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with(
            dir.path(),
            &format!("url = \"mqtts://127.0.0.1:{}\"\n{settings}", broker.port),
        )
        .start()
        .expect("the node starts and keeps trying");
        assert!(eventually(Duration::from_secs(10), || {
            metric(&node, "meshlet_mqtt_client_errors_total").unwrap_or(0.0) >= 1.0
        }), "{case}: the failure is counted");
        assert_eq!(metric(&node, "meshlet_mqtt_client_connects_total"), Some(0.0), "{case}");
        let (status, _) = http_get(&node.url("/readyz"));
        assert_eq!(status, 200, "{case}: the node keeps serving");
        let (status, _) = node.stop();
        assert!(status.success(), "{case}: stops cleanly while reconnecting");
    }
}

#[test]
fn bad_external_broker_settings_stop_the_node_at_start_with_the_reason() {
    for (settings, expected) in [
        (
            "url = \"http://broker:1883\"\n",
            "expected mqtt://host:port or mqtts://host:port",
        ),
        (
            "url = \"mqtt://broker:99999\"\n",
            "the port is not a number",
        ),
        (
            "url = \"mqtts://broker:8883\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "cannot read CA file /nonexistent/ca.pem",
        ),
        (
            "url = \"mqtts://broker:8883\"\nclient_cert_file = \"/x.pem\"\n",
            "client_cert_file and client_key_file go together",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = node_with(dir.path(), settings)
            .start()
            .err()
            .unwrap_or_else(|| panic!("{settings}: the node must refuse to start"));
        assert!(err.contains(expected), "{settings}: {err}");
    }
}
