//! Who is calling: the identity facts the transport layer learns, which the
//! policy layer turns into a role.
//!
//! The HTTP listener (with TLS and a client CA configured) verifies a client
//! certificate during the handshake and attaches a [`PeerCertificate`] to
//! every request of that connection as an axum/http request extension; the
//! authentication layer maps it to a role by the hub config. Keeping the
//! type here, not in the listener, means policy never depends on how the
//! connection was made.

/// A client certificate the TLS handshake verified against the configured
/// client CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name, when the certificate has one.
    pub subject_cn: Option<String>,
    /// SHA-256 of the certificate's DER encoding, lowercase hex: pins one
    /// certificate, whatever its names say.
    pub fingerprint_sha256: String,
}
