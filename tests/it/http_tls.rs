//! HTTPS on the HTTP listener, end to end: the real binary with `[http.tls]`,
//! certificates made in process with rcgen, a real HTTPS client (reqwest on
//! rustls) and a real `wss://` WebSocket client (tokio-tungstenite on
//! rustls).

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::graphql::{workdir, SENSOR};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// A CA that signs certificates for the tests.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    /// A leaf certificate for `names` with common name `cn`: `(cert, key)` PEM.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// Server certificate and key plus the CA files in `dir`, and the
/// `[http.tls]` section pointing at them (plus `extra` lines).
fn tls_section(dir: &Path, ca: &Ca, extra: &str) -> String {
    let (cert, key) = ca.issue("meshlet node", &["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("server.pem"), cert).expect("write cert");
    std::fs::write(dir.join("server.key"), key).expect("write key");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    format!("[http.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n{extra}")
}

fn node_in(dir: &Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .env("RUST_LOG", "meshlet=debug")
        .start()
        .expect("node starts")
}

fn https(node: &NodeProcess, path: &str) -> String {
    format!("https://localhost:{}{path}", node.http.port())
}

/// An HTTPS client that trusts `ca` and, optionally, presents `identity`.
/// How long a test request may take before it fails as timed out: a
/// request hung in the client once (no socket left open, the test parked
/// for minutes), and a hang must fail the test, not stall the suite.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

fn client(ca: Option<&Ca>, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if let Some(ca) = ca {
        let cert = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA PEM");
        builder = builder.add_root_certificate(cert);
    }
    if let Some((cert, key)) = identity {
        let identity = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes())
            .expect("client identity");
        builder = builder.identity(identity);
    }
    builder.build().expect("client")
}

/// A `{ __typename }` query; the error says whether it timed out.
async fn typename(client: &reqwest::Client, node: &NodeProcess) -> Result<(u16, Value), String> {
    let describe = |e: reqwest::Error| {
        if e.is_timeout() {
            format!("timed out: {e:?}")
        } else {
            format!("{e:?}")
        }
    };
    let response = client
        .post(https(node, "/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .map_err(describe)?;
    let status = response.status().as_u16();
    let body = response.json().await.map_err(describe)?;
    Ok((status, body))
}

/// A request the server must refuse at the handshake: an error, and not
/// a timeout (a server that never answers is not one that refuses).
fn assert_refused(outcome: &Result<(u16, Value), String>, what: &str) {
    match outcome {
        Err(e) => assert!(!e.starts_with("timed out"), "{what}: {e}"),
        Ok(answer) => panic!("{what} must fail: {answer:?}"),
    }
}

async fn tls_metric(client: &reqwest::Client, node: &NodeProcess, series: &str) -> f64 {
    let body = client
        .get(https(node, "/metrics"))
        .send()
        .await
        .expect("metrics over HTTPS")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_answers_clients_that_trust_the_ca_and_fails_the_others() {
    let ca = Ca::new("meshlet test CA");
    let dir = workdir(&[("sensor", SENSOR)], "");
    let section = tls_section(dir.path(), &ca, "");
    let config = dir.path().join("meshlet.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{base}{section}")).expect("config");
    let node = node_in(dir.path());

    let trusting = client(Some(&ca), None);
    let (status, body) = typename(&trusting, &node).await.expect("HTTPS query");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["__typename"], "Query", "{body}");

    let stranger = client(Some(&Ca::new("someone else")), None);
    let refused = typename(&stranger, &node).await;
    assert_refused(&refused, "a client that does not trust the CA");

    // Plain HTTP on the TLS port is a failed handshake, not a crash.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/livez", node.http.port()))
        .send()
        .await;
    assert!(plain.map(|r| r.status().is_success()).ok() != Some(true));

    // Both failures were counted, and the node still serves. The server
    // counts a failure when its handshake task ends, which may be a moment
    // after the client gave up: wait for it, within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let failures = loop {
        let failures = tls_metric(
            &trusting,
            &node,
            "meshlet_http_tls_handshake_failures_total",
        )
        .await;
        if failures >= 2.0 || std::time::Instant::now() > deadline {
            break failures;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(failures >= 2.0, "handshake failures counted: {failures}");
    let (status, _) = typename(&trusting, &node).await.expect("still serving");
    assert_eq!(status, 200);

    let (status, logs) = node.stop();
    assert!(
        status.success(),
        "SIGTERM drains and exits 0: {status:?}\n{}",
        logs.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_missing_and_foreign_client_certificates() {
    let ca = Ca::new("meshlet test CA");
    let clients_ca = Ca::new("device CA");
    let foreign_ca = Ca::new("foreign device CA");
    let dir = workdir(&[("sensor", SENSOR)], "");
    std::fs::write(dir.path().join("clients.pem"), clients_ca.pem()).expect("write client CA");
    let section = tls_section(
        dir.path(),
        &ca,
        "client_ca_file = \"clients.pem\"\nclient_auth = \"required\"\n",
    );
    let config = dir.path().join("meshlet.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    // A verified certificate that no mapping names is refused (401) even
    // where anonymous callers are allowed, so the device's CN is mapped.
    std::fs::write(
        &config,
        format!("{base}{section}[security.certificates]\n\"gateway-17\" = \"reader\"\n"),
    )
    .expect("config");
    let mut node = node_in(dir.path());

    let anonymous = typename(&client(Some(&ca), None), &node).await;
    assert_refused(&anonymous, "no client certificate");

    let (cert, key) = foreign_ca.issue("intruder", &["intruder"]);
    let foreign = typename(&client(Some(&ca), Some((&cert, &key))), &node).await;
    assert_refused(&foreign, "a certificate of another CA");

    let (cert, key) = clients_ca.issue("gateway-17", &["gateway-17"]);
    let device = client(Some(&ca), Some((&cert, &key)));
    let (status, body) = typename(&device, &node).await.expect("mTLS query");
    assert_eq!(status, 200, "{body}");

    // The listener read the verified certificate (the policy layer maps
    // the PeerCertificate it attaches to a role).
    let line = node
        .wait_for_log(Duration::from_secs(10), |l| {
            l.contains("client certificate verified") && l.contains("gateway-17")
        })
        .expect("the verified client certificate is logged");
    let event: Value = serde_json::from_str(&line).expect("JSON log line");
    let fingerprint = event["fingerprint"].as_str().unwrap_or_default();
    assert_eq!(fingerprint.len(), 64, "{line}");

    // The server counts a failure when its handshake task ends, which may
    // be a moment after the client gave up: wait for it, within a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let failures = loop {
        let failures =
            tls_metric(&device, &node, "meshlet_http_tls_handshake_failures_total").await;
        if failures >= 2.0 || std::time::Instant::now() > deadline {
            break failures;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(failures >= 2.0, "handshake failures counted: {failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_serves_clients_without_a_certificate() {
    let ca = Ca::new("meshlet test CA");
    let clients_ca = Ca::new("device CA");
    let dir = workdir(&[("sensor", SENSOR)], "");
    std::fs::write(dir.path().join("clients.pem"), clients_ca.pem()).expect("write client CA");
    let section = tls_section(
        dir.path(),
        &ca,
        "client_ca_file = \"clients.pem\"\nclient_auth = \"optional\"\n",
    );
    let config = dir.path().join("meshlet.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{base}{section}")).expect("config");
    let node = node_in(dir.path());

    let (status, _) = typename(&client(Some(&ca), None), &node)
        .await
        .expect("no certificate is fine when optional");
    assert_eq!(status, 200);
    let (cert, key) = Ca::new("foreign").issue("intruder", &["intruder"]);
    let foreign = typename(&client(Some(&ca), Some((&cert, &key))), &node).await;
    assert_refused(&foreign, "a presented certificate that does not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_work_over_wss() {
    let ca = Ca::new("meshlet test CA");
    let dir = workdir(&[("sensor", SENSOR)], "");
    let section = tls_section(dir.path(), &ca, "");
    let config = dir.path().join("meshlet.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{base}{section}")).expect("config");
    let node = node_in(dir.path());

    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls_pki_types::CertificateDer::from(ca.cert.der().to_vec());
    roots.add(ca_der).expect("CA root");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut request = format!("wss://localhost:{}/graphql/ws", node.http.port())
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
    )
    .await
    .expect("wss connects");
    let send = |v: Value| Message::text(v.to_string());
    socket
        .send(send(json!({ "type": "connection_init", "payload": {} })))
        .await
        .expect("init");
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription { sensorChanges { entity instance { temp } } }" } });
    let ack = next_json(&mut socket).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket.send(send(subscribe)).await.expect("subscribe");

    let https_client = client(Some(&ca), None);
    let pushed = eventually_push(&https_client, &node).await;
    assert!(pushed, "a push over HTTPS is accepted");
    let next = next_json(&mut socket).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["data"]["sensorChanges"]["entity"], "s-wss",
        "{next}"
    );
    assert_eq!(
        next["payload"]["data"]["sensorChanges"]["instance"]["temp"],
        21.5
    );
}

/// Pushes one record over HTTPS until the subscription is registered (the
/// first pushes may land before it is; later ones create new versions).
async fn eventually_push(client: &reqwest::Client, node: &NodeProcess) -> bool {
    // The subscription starts right after `subscribe`; wait until the
    // node counts it, so the push is not missed.
    for _ in 0..200 {
        let open = tls_metric(client, node, "meshlet_graphql_subscriptions_open").await;
        if open >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let response = client
        .post(https(node, "/ingest/sensor"))
        .header("content-type", "application/x-ndjson")
        .body(r#"{"sensor_id":"s-wss","site":"x","temp":21.5}"#)
        .send()
        .await
        .expect("push over HTTPS");
    response.status().is_success()
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(socket: &mut Wss) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("a frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == "ping" {
                socket
                    .send(Message::text(json!({ "type": "pong" }).to_string()))
                    .await
                    .expect("pong");
                continue;
            }
            return value;
        }
    }
}

/// Starts a node that must refuse to start; returns its logs.
fn refused_start(dir: &Path) -> String {
    match NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .start()
    {
        Ok(_) => panic!("the node started with a bad TLS config"),
        Err(logs) => logs,
    }
}

#[test]
fn bad_tls_files_stop_the_node_with_an_error_naming_the_file() {
    let ca = Ca::new("meshlet test CA");
    let dir = workdir(&[("sensor", SENSOR)], "");
    let section = tls_section(dir.path(), &ca, "");
    let config = dir.path().join("meshlet.toml");
    let base = std::fs::read_to_string(&config).expect("config");

    // Missing key file.
    std::fs::write(
        &config,
        format!("{base}{}", section.replace("server.key", "missing.key")),
    )
    .expect("config");
    let logs = refused_start(dir.path());
    assert!(logs.contains("missing.key"), "{logs}");

    // A certificate file that holds no certificate.
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").expect("junk");
    std::fs::write(
        &config,
        format!("{base}{}", section.replace("server.pem", "junk.pem")),
    )
    .expect("config");
    let logs = refused_start(dir.path());
    assert!(logs.contains("junk.pem"), "{logs}");

    // A key that belongs to another certificate.
    let (_, other_key) = ca.issue("other", &["other"]);
    std::fs::write(dir.path().join("other.key"), other_key).expect("other key");
    std::fs::write(
        &config,
        format!("{base}{}", section.replace("server.key", "other.key")),
    )
    .expect("config");
    let logs = refused_start(dir.path());
    assert!(
        logs.contains("other.key") && logs.contains("does not belong"),
        "{logs}"
    );
}

/// SHA-256 of a PEM certificate's DER, lowercase hex: what
/// `[security.certificates]` pins with `sha256:<hex>`.
fn fingerprint(cert_pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("PEM");
    ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn push_sensor(client: &reqwest::Client, node: &NodeProcess, line: &str) -> u16 {
    client
        .post(https(node, "/ingest/sensor"))
        .header("content-type", "application/x-ndjson")
        .body(line.to_string())
        .send()
        .await
        .expect("push over HTTPS")
        .status()
        .as_u16()
}

/// Client certificates are identities: a CN mapped to `admin` may write,
/// a certificate pinned by fingerprint to `reader` reads with personal
/// data masked and may not write, and a certificate of the right CA that
/// no mapping names is refused with 401 — on a node with no anonymous
/// access, so the certificate is the only credential in play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_map_to_roles_end_to_end() {
    let ca = Ca::new("meshlet test CA");
    let clients_ca = Ca::new("device CA");
    let dir = workdir(&[("sensor", SENSOR)], "");
    std::fs::write(dir.path().join("clients.pem"), clients_ca.pem()).expect("write client CA");
    let (admin_cert, admin_key) = clients_ca.issue("gateway-17", &["gateway-17"]);
    let (pinned_cert, pinned_key) = clients_ca.issue("dashboard", &["dashboard"]);
    let (stranger_cert, stranger_key) = clients_ca.issue("stranger", &["stranger"]);
    let section = tls_section(
        dir.path(),
        &ca,
        "client_ca_file = \"clients.pem\"\nclient_auth = \"required\"\n",
    );
    let config = dir.path().join("meshlet.toml");
    let base = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!(
            "{base}{section}[security.certificates]\n\"gateway-17\" = \"admin\"\n\"sha256:{}\" = \"reader\"\n",
            fingerprint(&pinned_cert)
        ),
    )
    .expect("config");
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");

    let admin = client(Some(&ca), Some((&admin_cert, &admin_key)));
    let reader = client(Some(&ca), Some((&pinned_cert, &pinned_key)));
    let stranger = client(Some(&ca), Some((&stranger_cert, &stranger_key)));

    let line = r#"{"sensor_id": "s1", "temp": 21.5, "email": "alice@example.com"}"#;
    assert_eq!(
        push_sensor(&admin, &node, line).await,
        200,
        "admin by CN writes"
    );
    assert_eq!(
        push_sensor(&reader, &node, line).await,
        403,
        "reader may not write"
    );
    assert_eq!(
        push_sensor(&stranger, &node, line).await,
        401,
        "unmapped is unauthenticated"
    );

    let query = json!({ "query": r#"{ sensor(sensor_id: "s1") { sensor_id temp email } }"# });
    let seen = |client: reqwest::Client| {
        let query = query.clone();
        let url = https(&node, "/graphql");
        async move {
            let response = client.post(url).json(&query).send().await.expect("query");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let (status, body) = seen(admin.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["sensor"]["email"], "alice@example.com",
        "{body}"
    );
    let (status, body) = seen(reader.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["sensor"]["temp"], 21.5, "{body}");
    assert_ne!(
        body["data"]["sensor"]["email"], "alice@example.com",
        "{body}"
    );
    let (status, _) = seen(stranger.clone()).await;
    assert_eq!(status, 401);
    assert!(
        tls_metric(
            &admin,
            &node,
            "meshlet_auth_failures_total{reason=\"unmapped_certificate\"}"
        )
        .await
            >= 2.0
    );
}
