//! External broker over TLS: a real Mosquitto with its own CA that
//! requires client certificates, certificates made with the openssl CLI.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// signed by the CA, plus a second, unrelated CA.
fn make_pki(dir: &Path) {
    for (ca, cn) in [("ca", "meshlet test CA"), ("other-ca", "someone else")] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                ext,
            ],
        );
    }
}

struct TlsBroker {
    child: Child,
    port: u16,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_mosquitto(pki: &Path) -> TlsBroker {
    let port = free_port();
    let conf = pki.join("mosquitto.conf");
    // Started as root, mosquitto drops to user `mosquitto`, which cannot
    // read keys in a private temp dir; stay the user we are.
    // SAFETY: geteuid has no preconditions and touches no memory.
    let as_root = unsafe { libc::geteuid() } == 0;
    let user = if as_root { "user root\n" } else { "" };
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {dir}/ca.pem\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\nrequire_certificate true\nlog_dest stderr\n{user}",
            dir = pki.display()
        ),
    )
    .expect("conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto runs");
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    TlsBroker { child, port }
}

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
