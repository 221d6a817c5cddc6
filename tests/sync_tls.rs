//! Upstream sync over TLS with a custom CA and a client certificate:
//! HTTPS to an aggregator (behind a rustls terminator that requires the
//! client certificate, until the node's own TLS listener lands) and MQTT
//! over TLS through a Mosquitto that requires client certificates.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

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

/// `ca`, an unrelated `other-ca`, and `server` (127.0.0.1) and `client`
/// certificates signed by `ca`.
fn make_pki(dir: &Path) {
    for (ca, cn) in [("ca", "sync test CA"), ("other-ca", "someone else")] {
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
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for name in ["server", "client"] {
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
                &format!("{name}.ext"),
            ],
        );
    }
}

/// A rustls TLS terminator on a free port that requires a client
/// certificate from `ca` and forwards the plain bytes to `target`.
fn tls_terminator(pki: &Path, target: std::net::SocketAddr) -> (u16, tokio::runtime::Runtime) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.pem")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("server.pem"))
        .expect("server cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.join("server.key")).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (port, runtime)
}

fn workdir(yaml: &str, config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/reading.yaml"), yaml).expect("write");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n{config}"),
    )
    .expect("write config");
    dir
}

fn start_node(dir: &Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .start()
        .expect("node starts")
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

#[test]
fn https_with_a_custom_ca_and_client_certificate_delivers_and_a_wrong_ca_does_not() {
    let pki = tempfile::tempdir().expect("pki");
    make_pki(pki.path());
    let hq_dir = workdir(
        aggregator_products(),
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_node(hq_dir.path());
    let (port, _terminator) = tls_terminator(pki.path(), hq.http);
    let upstream = |ca: &str| {
        format!(
            "[sync]\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n[upstreams.central]\nurl = \"https://127.0.0.1:{port}\"\nca_file = \"{dir}/{ca}\"\nclient_cert_file = \"{dir}/client.pem\"\nclient_key_file = \"{dir}/client.key\"\n",
            dir = pki.path().display()
        )
    };
    let good_dir = workdir(
        READING,
        &format!("node_id = \"edge-tls\"\n{}", upstream("ca.pem")),
    );
    let bad_dir = workdir(
        READING,
        &format!("node_id = \"edge-wrong-ca\"\n{}", upstream("other-ca.pem")),
    );
    let good = start_node(good_dir.path());
    let bad = start_node(bad_dir.path());
    push(&good, 25);
    push(&bad, 5);
    assert!(
        eventually(Duration::from_secs(20), || applied(&hq, "edge-tls") == 25.0),
        "25 events arrived over HTTPS"
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &bad,
            "meshlet_sync_errors_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 2.0),
        "a server certificate from another CA is refused, counted and retried"
    );
    assert_eq!(
        metric(&bad, "meshlet_sync_pending{upstream=\"central\"}"),
        Some(5.0),
        "and nothing is lost"
    );
    assert_eq!(applied(&hq, "edge-wrong-ca"), 0.0);
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
    // SAFETY: geteuid has no preconditions and touches no memory.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    };
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

#[test]
fn mqtts_with_client_certificates_on_both_sides_delivers() {
    let pki = tempfile::tempdir().expect("pki");
    make_pki(pki.path());
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
