//! A throwaway PKI made with the `openssl` CLI, and a Mosquitto that
//! requires client certificates from it, for the TLS tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port};

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
pub fn make_pki(dir: &Path) {
    make_pki_with_clients(dir, &["client"]);
}

/// [`make_pki`] with a client certificate (CN = name) for each of `clients`.
pub fn make_pki_with_clients(dir: &Path, clients: &[&str]) {
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
    let certs = std::iter::once(("server", "server.ext"))
        .chain(clients.iter().map(|name| (*name, "client.ext")));
    for (name, ext) in certs {
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

pub struct TlsBroker {
    child: Child,
    pub port: u16,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_tls_mosquitto(pki: &Path) -> TlsBroker {
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
