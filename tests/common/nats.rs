//! Real `nats-server` processes with JetStream on loopback ports: one
//! server, or a cluster whose servers route to each other. Each keeps its
//! store in a temp dir; every process is killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port};

struct Server {
    child: Option<Child>,
    port: u16,
    config: std::path::PathBuf,
}

/// A JetStream cluster (or one server: a cluster of one without routes).
pub struct NatsCluster {
    servers: Vec<Server>,
    /// `nats` or `tls`.
    scheme: &'static str,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers; with more than one they form a cluster with
    /// JetStream (streams may then have up to `size` replicas).
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "", "nats")
    }

    /// One server that requires TLS with client certificates from the
    /// [`super::pki::make_pki`] in `pki`, and the auth `token`.
    pub fn start_tls(pki: &Path, token: &str) -> NatsCluster {
        let tls = format!(
            "tls {{\n  cert_file: \"{0}/server.pem\"\n  key_file: \"{0}/server.key\"\n  ca_file: \"{0}/ca.pem\"\n  verify: true\n}}\nauthorization {{\n  token: \"{token}\"\n}}\n",
            pki.display()
        );
        NatsCluster::start_with(1, &tls, "tls")
    }

    /// `size` servers with `extra` appended to each one's config, reached
    /// over `scheme` (`nats` or `tls`).
    pub fn start_with(size: usize, extra: &str, scheme: &'static str) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let cluster = if size > 1 {
                format!(
                    "cluster {{\n  name: meshlet-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n{cluster}{extra}",
                store.display()
            );
            let file = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&file, config).expect("write nats config");
            servers.push(Server {
                child: Some(spawn(&file)),
                port: *port,
                config: file,
            });
        }
        for server in &servers {
            let port = server.port;
            assert!(
                eventually(Duration::from_secs(15), || std::net::TcpStream::connect((
                    "127.0.0.1",
                    port
                ))
                .is_ok()),
                "nats-server did not listen on {port}"
            );
        }
        NatsCluster {
            servers,
            scheme,
            _dir: dir,
        }
    }

    /// Every server, comma-separated (the node's `url`).
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("{}://127.0.0.1:{}", self.scheme, s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL one server (a crash: no goodbye to clients or routes).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.servers.get_mut(index).and_then(|s| s.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NatsCluster {
    /// Starts a killed server again, on its port and its JetStream store.
    pub fn restart(&mut self, index: usize) {
        let server = self
            .servers
            .get_mut(index)
            .expect("a server of the cluster");
        assert!(server.child.is_none(), "server {index} still runs");
        server.child = Some(spawn(&server.config));
        let port = server.port;
        assert!(
            eventually(Duration::from_secs(15), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nats-server did not listen on {port} again"
        );
    }
}

fn spawn(config: &Path) -> Child {
    Command::new("nats-server")
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is installed (tests/run.sh installs it)")
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
