//! The server side, HTTPS for the HTTP listener: rustls (ring provider) over each accepted
//! TCP connection, optionally verifying client certificates (mTLS).
//!
//! This module reads the TLS files and builds the acceptor; the accept
//! loop (`serve`, shared with plain HTTP) does the handshake per
//! connection, bounded in time, and then serves the router with hyper's
//! HTTP/1 connection, upgrades included, so `/graphql/ws` works as
//! `wss://`. Of a verified client certificate it reads what the policy
//! layer maps to a role (the subject's common name and the fingerprint);
//! the accept loop puts them on every request of its connection.
//!
//! Invariants: a bad TLS file stops the node at start with an error naming
//! the file; a failed handshake is counted
//! (`meshlet_http_tls_handshake_failures_total`), logged at debug and only
//! closes that connection.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{provider, read_certs, read_key, TlsConfigError};
use crate::config::{ClientAuth, HttpTlsConfig};

/// Handshake figures for `/metrics`; cheap to clone, shared with the
/// connection tasks.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    handshake_failures: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
}

impl TlsMetrics {
    pub(crate) fn failed(&self, peer: SocketAddr, reason: &dyn std::fmt::Display) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, error = %reason, "TLS handshake failed");
    }

    pub(crate) fn handshake_done(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    /// The handshake counters of `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        crate::telemetry::expose::counter(
            enc,
            "meshlet_http_tls_handshakes_total",
            "TLS handshakes completed on the HTTP listener.",
            self.handshakes.load(Ordering::Relaxed),
        )?;
        crate::telemetry::expose::counter(
            enc,
            "meshlet_http_tls_handshake_failures_total",
            "TLS handshakes on the HTTP listener that failed or timed out (untrusted or missing client certificate, protocol errors).",
            self.handshake_failures.load(Ordering::Relaxed),
        )
    }
}

/// Reads the configured files and builds the acceptor.
pub(crate) fn acceptor(config: &HttpTlsConfig) -> Result<TlsAcceptor, TlsConfigError> {
    let provider = provider();
    let chain = read_certs(&config.cert_file, "http.tls.cert_file")?;
    let key = read_key(&config.key_file, "http.tls.key_file")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::KeyMismatch {
            cert: config.cert_file.clone(),
            key: config.key_file.clone(),
            detail: e.to_string(),
        })?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path, "http.tls.client_ca_file")? {
                roots.add(cert).map_err(|e| TlsConfigError::ClientCa {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = match config.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsConfigError::ClientCa {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // rustls checks here that the key is the certificate's.
    let mut server =
        builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError::KeyMismatch {
                cert: config.cert_file.clone(),
                key: config.key_file.clone(),
                detail: e.to_string(),
            })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// SHA-256 of a certificate's DER encoding, lowercase hex: pins one
/// certificate, whatever its names say.
pub(crate) fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut fingerprint = String::with_capacity(64);
    for byte in digest.as_ref() {
        let _ = write!(fingerprint, "{byte:02x}");
    }
    fingerprint
}

/// The subject's first common name (OID 2.5.4.3) of a DER certificate.
///
/// A few lines of DER walking instead of an X.509 crate: webpki already
/// verified the certificate during the handshake, and the CN is the only
/// field the policy layer maps. Anything unexpected gives `None`, never a
/// panic.
pub(crate) fn subject_common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = der_item(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_item(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // version? serial, signature algorithm, issuer, validity, subject.
    let (tag, _, rest) = der_item(tbs)?;
    if tag == VERSION {
        tbs = rest;
        tbs = der_item(tbs)?.2; // serial
    } else {
        tbs = rest; // that was the serial
    }
    for _ in 0..3 {
        tbs = der_item(tbs)?.2;
    }
    let (tag, mut names, _) = der_item(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    while !names.is_empty() {
        let (tag, set, rest) = der_item(names)?;
        names = rest;
        if tag != SET {
            return None;
        }
        let mut attributes = set;
        while !attributes.is_empty() {
            let (_, attribute, rest) = der_item(attributes)?;
            attributes = rest;
            let (tag, oid, value) = der_item(attribute)?;
            if tag == OID && oid == CN {
                let (_, text, _) = der_item(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// Splits one DER item off `bytes`: `(tag, contents, rest)`.
fn der_item(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, after) = rest.split_at(count);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_and_fingerprint_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["device-7".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "meshlet tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device-7.example");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("device-7.example")
        );
        let fingerprint = fingerprint_sha256(cert.der());
        assert_eq!(fingerprint.len(), 64);
        assert_eq!(fingerprint, fingerprint_sha256(cert.der()), "stable");
    }

    #[test]
    fn no_common_name_is_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = subject_common_name(&bytes);
        }
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = subject_common_name(&bytes);
        }
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
