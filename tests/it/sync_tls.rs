//! Upstream sync over TLS with a custom CA and a client certificate:
//! HTTPS straight to the aggregator's own TLS listener, which requires the
//! client certificate and maps it to the built-in `edge` role (the only
//! role besides `admin` that may push envelopes), and MQTT over TLS through
//! a Mosquitto that requires client certificates.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::pki::*;
use common::*;

const READING: &str = r#"
product: reading
version: 1
domain: test
owner: test@example.com
key: meter
fields:
  meter: { type: string, required: true }
  n:     { type: int }
sources:
  - http: {}
sync:
  - to: central
    mode: history
    when: { batch_age: 20ms }
"#;

fn workdir(yaml: &str, config: &str) -> tempfile::TempDir {
    node_workdir(&[("reading", yaml)], config)
}

fn start_node(dir: &Path) -> NodeProcess {
    start_configured(dir)
}

fn aggregator_products() -> &'static str {
    READING.split("\nsync:").next().unwrap_or(READING)
}

fn push(edge: &NodeProcess, n: usize) {
    let body: String = (0..n)
        .map(|i| format!("{{\"meter\":\"t\",\"n\":{i}}}\n"))
        .collect();
    let (status, text) = http_post(
        &edge.url("/ingest/reading"),
        "application/x-ndjson",
        body.into_bytes(),
    );
    assert_eq!(status, 200, "{text}");
}

fn applied(hq: &NodeProcess, origin: &str) -> f64 {
    metric(
        hq,
        &format!("meshlet_sync_applied_records_total{{origin=\"{origin}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A metric of a node that serves only HTTPS with required client
/// certificates, read with the `client` certificate.
fn https_metric(node: &NodeProcess, pki: &Path, series: &str) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ca = std::fs::read(pki.join("ca.pem")).expect("ca");
        let mut identity = std::fs::read(pki.join("client.pem")).expect("client cert");
        identity.extend(std::fs::read(pki.join("client.key")).expect("client key"));
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
            .build()
            .expect("client");
        let Ok(response) = client
            .get(format!("https://127.0.0.1:{}/metrics", node.http.port()))
            .send()
            .await
        else {
            return 0.0;
        };
        let body = response.text().await.unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    })
}

#[test]
fn https_to_the_aggregators_own_tls_listener_with_a_client_certificate_as_edge() {
    let pki = tempfile::tempdir().expect("pki");
    make_pki_with_clients(pki.path(), &["client", "stranger"]);
    let dir = pki.path().display().to_string();
    let hq_dir = workdir(
        aggregator_products(),
        &format!(
            "node_id = \"hq\"\n[aggregator]\nenabled = true\n[http.tls]\ncert_file = \"{dir}/server.pem\"\nkey_file = \"{dir}/server.key\"\nclient_ca_file = \"{dir}/ca.pem\"\nclient_auth = \"required\"\n[security.certificates]\nclient = \"edge\"\n"
        ),
    );
    // No anonymous access at the aggregator: the certificate is the only
    // credential an edge has.
    let hq = NodeBuilder::new(hq_dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .start()
        .expect("aggregator starts");
    let port = hq.http.port();
    let upstream = |ca: &str, cert: &str| {
        format!(
            "[sync]\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n[upstreams.central]\nurl = \"https://127.0.0.1:{port}\"\nca_file = \"{dir}/{ca}\"\nclient_cert_file = \"{dir}/{cert}.pem\"\nclient_key_file = \"{dir}/{cert}.key\"\n"
        )
    };
    let good_dir = workdir(
        READING,
        &format!("node_id = \"edge-tls\"\n{}", upstream("ca.pem", "client")),
    );
    let bad_dir = workdir(
        READING,
        &format!(
            "node_id = \"edge-wrong-ca\"\n{}",
            upstream("other-ca.pem", "client")
        ),
    );
    let stranger_dir = workdir(
        READING,
        &format!(
            "node_id = \"edge-stranger\"\n{}",
            upstream("ca.pem", "stranger")
        ),
    );
    let good = start_node(good_dir.path());
    let bad = start_node(bad_dir.path());
    let stranger = start_node(stranger_dir.path());
    push(&good, 25);
    push(&bad, 5);
    push(&stranger, 3);
    let applied = |origin: &str| {
        https_metric(
            &hq,
            pki.path(),
            &format!("meshlet_sync_applied_records_total{{origin=\"{origin}\"}}"),
        )
    };
    assert!(
        eventually(Duration::from_secs(30), || applied("edge-tls") == 25.0),
        "25 events arrived over HTTPS as role edge"
    );
    for (edge, why) in [
        (&bad, "a server certificate from another CA is refused"),
        (
            &stranger,
            "a client certificate no mapping names is refused (401)",
        ),
    ] {
        assert!(
            eventually(Duration::from_secs(15), || metric(
                edge,
                "meshlet_sync_errors_total{upstream=\"central\"}"
            )
            .unwrap_or(0.0)
                >= 2.0),
            "{why}, counted and retried"
        );
    }
    assert_eq!(
        metric(&bad, "meshlet_sync_pending{upstream=\"central\"}"),
        Some(5.0),
        "nothing is lost"
    );
    assert_eq!(
        metric(&stranger, "meshlet_sync_pending{upstream=\"central\"}"),
        Some(3.0),
        "nothing is lost"
    );
    assert_eq!(applied("edge-wrong-ca"), 0.0);
    assert_eq!(applied("edge-stranger"), 0.0);
    assert!(
        https_metric(
            &hq,
            pki.path(),
            "meshlet_auth_failures_total{reason=\"unmapped_certificate\"}"
        ) >= 1.0
    );
}

#[test]
fn mqtts_with_client_certificates_on_both_sides_delivers() {
    let pki = tempfile::tempdir().expect("pki");
    make_pki_with_clients(pki.path(), &["client", "stranger"]);
    let broker = start_tls_mosquitto(pki.path());
    let tls = format!(
        "ca_file = \"{dir}/ca.pem\"\nclient_cert_file = \"{dir}/client.pem\"\nclient_key_file = \"{dir}/client.key\"\n",
        dir = pki.path().display()
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let hq_dir = workdir(
        aggregator_products(),
        &format!("node_id = \"hq\"\n[aggregator.mqtt]\nurl = \"{url}\"\n{tls}"),
    );
    let mut hq = start_node(hq_dir.path());
    let subscribed = |l: &str| l.contains("aggregator subscribed to the sync topic");
    if !hq.seen_logs.iter().any(|l| subscribed(l)) {
        hq.wait_for_log(Duration::from_secs(20), subscribed)
            .expect("subscribed");
    }
    let edge_dir = workdir(
        READING,
        &format!("node_id = \"edge-mqtts\"\n[upstreams.central]\nurl = \"{url}\"\n{tls}"),
    );
    let edge = start_node(edge_dir.path());
    push(&edge, 12);
    assert!(
        eventually(Duration::from_secs(20), || applied(&hq, "edge-mqtts")
            == 12.0),
        "12 events arrived over MQTT with TLS"
    );
}
