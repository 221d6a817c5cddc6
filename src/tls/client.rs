//! The client side: one rustls setup for every outgoing TLS connection.

use std::path::Path;

use super::{provider, read_certs, read_key, TlsConfigError};

/// The rustls client setup shared by every outgoing TLS connection (the
/// external broker, sync upstreams, `meshlet status`): ring provider, the
/// CA file or else the system roots, and a client certificate when both
/// its files are given.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    client_cert_file: Option<&Path>,
    client_key_file: Option<&Path>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path, "CA file")? {
                roots.add(cert).map_err(|e| TlsConfigError::Ca {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // One unusable system certificate does not stop the rest.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsConfigError::NoSystemRoots);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    match (client_cert_file, client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs(cert_path, "client certificate")?;
            let key = read_key(key_path, "client key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsConfigError::ClientCert {
                    path: cert_path.to_path_buf(),
                    detail: e.to_string(),
                })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsConfigError::CertWithoutKey),
    }
}
