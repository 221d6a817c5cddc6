//! TLS, both ways, in one place: rustls with the ring provider (the one
//! crypto library in the tree), PEM files read with errors that name the
//! file and the setting.
//!
//! - [`server`]: the HTTPS listener's acceptor (optional client
//!   certificates), its handshake counters, and the facts of a verified client
//!   certificate the policy layer maps to a role.
//! - [`client`]: the one client setup every outgoing connection uses (the
//!   external MQTT broker, sync upstreams over HTTPS, MQTT and NATS, the
//!   reference-data feeds, `meshlet status`): a CA file or the system
//!   roots, an optional client certificate.
//! - [`mqtt`]: the MQTT client options built on it (external broker
//!   source, MQTT sync transport, aggregator subscriber).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub mod client;
pub mod mqtt;
pub mod server;

pub(crate) use client::client_config;
pub use server::TlsMetrics;
pub(crate) use server::{acceptor, fingerprint_sha256, subject_common_name};

/// Why the TLS settings cannot be used. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is not valid PEM: {detail}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{what} {} holds no {expected}", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("http.tls.key_file {} does not belong to http.tls.cert_file {}: {detail}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("http.tls.client_ca_file {}: {detail}", path.display())]
    ClientCa { path: PathBuf, detail: String },
    #[error("CA file {}: {detail}", path.display())]
    Ca { path: PathBuf, detail: String },
    #[error("no system CA certificates found; set ca_file")]
    NoSystemRoots,
    #[error("client_cert_file and client_key_file go together")]
    CertWithoutKey,
    #[error("client certificate {}: {detail}", path.display())]
    ClientCert { path: PathBuf, detail: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The crypto provider of every TLS connection: ring.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = read_file(path, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

pub(crate) fn read_key(
    path: &Path,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let bytes = read_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsConfigError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "PEM private key",
        },
        other => TlsConfigError::Pem {
            what,
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}
