//! Authentication: from what a request presents (a bearer token, a
//! verified client certificate, or nothing) to an [`Identity`] with a
//! role — or a refusal with a reason, counted in
//! `meshlet_auth_failures_total{reason}`.
//!
//! Order: a presented token decides alone (a bad token is refused even
//! when anonymous access is allowed, so a client with a revoked token
//! learns it at once); then a client certificate mapped by
//! `[security.certificates]`; then the anonymous role, if configured.
//! Pure apart from the token file the [`TokenVerifier`] re-reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::access::{Credential, Identity};
use super::identity::PeerCertificate;
use super::tokens::{TokenFileError, TokenRefusal, TokenVerifier};

/// Longest `Authorization` header value looked at; anything longer is
/// malformed without being parsed.
pub const MAX_HEADER_BYTES: usize = 1_024;
/// What `security.anonymous_role` says for "no anonymous access".
pub const NO_ANONYMOUS: &str = "none";

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    BadHeader,
    #[error("{0}")]
    Token(TokenRefusal),
    #[error("the client certificate is not mapped to a role")]
    UnmappedCertificate,
}

impl AuthFailure {
    /// The `reason` label of the failure counter.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::BadHeader => "bad_header",
            AuthFailure::Token(refusal) => refusal.reason(),
            AuthFailure::UnmappedCertificate => "unmapped_certificate",
        }
    }
}

const REASONS: [&str; 6] = [
    "missing",
    "bad_header",
    "malformed",
    "unknown",
    "revoked",
    "unmapped_certificate",
];

/// How certificates map to roles: by `sha256:<fingerprint>` (pins one
/// certificate) before the subject CN.
#[derive(Clone, Debug, Default)]
pub struct CertificateRoles {
    by_fingerprint: BTreeMap<String, String>,
    by_cn: BTreeMap<String, String>,
}

impl CertificateRoles {
    /// From the `[security.certificates]` table: key `sha256:<hex>` or a CN.
    pub fn new(table: &BTreeMap<String, String>) -> CertificateRoles {
        let mut roles = CertificateRoles::default();
        for (key, role) in table {
            match key.strip_prefix("sha256:") {
                Some(hex) => {
                    let hex = hex.replace(':', "").to_ascii_lowercase();
                    roles.by_fingerprint.insert(hex, role.clone());
                }
                None => {
                    roles.by_cn.insert(key.clone(), role.clone());
                }
            }
        }
        roles
    }

    /// The identity of a certificate holder, if the certificate is mapped.
    pub fn identity(&self, peer: &PeerCertificate) -> Option<Identity> {
        let fingerprint = peer.fingerprint_sha256.to_ascii_lowercase();
        let role = self
            .by_fingerprint
            .get(&fingerprint)
            .or_else(|| peer.subject_cn.as_ref().and_then(|cn| self.by_cn.get(cn)))?;
        Some(Identity {
            name: peer
                .subject_cn
                .clone()
                .unwrap_or_else(|| format!("sha256:{fingerprint}")),
            role: role.clone(),
            credential: Credential::Certificate {
                fingerprint_sha256: fingerprint,
            },
        })
    }
}

/// Authenticates requests for the HTTP layer.
pub struct Authenticator {
    tokens: TokenVerifier,
    anonymous_role: Option<String>,
    certificates: CertificateRoles,
    failures: [AtomicU64; REASONS.len()],
    denials: Arc<AtomicU64>,
}

/// What the authenticator is built from (the `security` config section).
pub struct AuthSettings {
    pub tokens_file: PathBuf,
    pub anonymous_role: Option<String>,
    pub certificates: BTreeMap<String, String>,
}

impl Authenticator {
    pub fn new(settings: AuthSettings) -> Result<Authenticator, TokenFileError> {
        Ok(Authenticator {
            tokens: TokenVerifier::open(settings.tokens_file)?,
            anonymous_role: settings
                .anonymous_role
                .filter(|r| !r.is_empty() && r != NO_ANONYMOUS),
            certificates: CertificateRoles::new(&settings.certificates),
            failures: Default::default(),
            denials: Arc::default(),
        })
    }

    /// The counter of actions refused for lack of a right, shared with
    /// every [`super::access::Caller`].
    pub fn denials(&self) -> Arc<AtomicU64> {
        self.denials.clone()
    }

    /// The token file's verifier (SIGHUP re-reads it).
    pub fn tokens(&self) -> &TokenVerifier {
        &self.tokens
    }

    pub fn anonymous_role(&self) -> Option<&str> {
        self.anonymous_role.as_deref()
    }

    /// The identity behind an `Authorization` header value (raw bytes: it
    /// may not be UTF-8) and a verified client certificate.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<&PeerCertificate>,
    ) -> Result<Identity, AuthFailure> {
        let result = self.resolve(authorization, peer);
        if let Err(failure) = result {
            self.count(failure);
        }
        result
    }

    /// Like [`Authenticator::authenticate`] with a bare token (the
    /// WebSocket `connection_init` payload).
    pub fn authenticate_token(&self, token: &str) -> Result<Identity, AuthFailure> {
        let result = self.token_identity(token);
        if let Err(failure) = result {
            self.count(failure);
        }
        result
    }

    fn count(&self, failure: AuthFailure) {
        let reason = failure.reason();
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(reason, "request not authenticated");
    }

    fn resolve(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<&PeerCertificate>,
    ) -> Result<Identity, AuthFailure> {
        if let Some(header) = authorization {
            return self.token_identity(bearer(header)?);
        }
        if let Some(peer) = peer {
            return self
                .certificates
                .identity(peer)
                .ok_or(AuthFailure::UnmappedCertificate);
        }
        self.anonymous().ok_or(AuthFailure::Missing)
    }

    /// Whether `token` is (still) valid: not revoked or removed since.
    /// Counts nothing; for re-checking an established caller.
    pub fn token_still_valid(&self, token: &str) -> bool {
        self.tokens.verify(token).is_ok()
    }

    /// The anonymous identity, when anonymous access is configured.
    pub fn anonymous(&self) -> Option<Identity> {
        self.anonymous_role.as_deref().map(Identity::anonymous)
    }

    fn token_identity(&self, token: &str) -> Result<Identity, AuthFailure> {
        let holder = self.tokens.verify(token).map_err(AuthFailure::Token)?;
        Ok(Identity {
            name: holder.name,
            role: holder.role,
            credential: Credential::Token { id: holder.id },
        })
    }

    /// `meshlet_auth_failures_total` and `meshlet_access_denied_total`
    /// for `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        use crate::telemetry::expose;
        let mut f = expose::counter_family(
            enc,
            "meshlet_auth_failures_total",
            "Requests refused by authentication, by reason.",
        )?;
        for (reason, count) in REASONS.iter().zip(&self.failures) {
            f.sample(&[("reason", *reason)], count.load(Ordering::Relaxed))?;
        }
        expose::counter(
            enc,
            "meshlet_access_denied_total",
            "API actions refused because the caller's role lacks the right (GraphQL FORBIDDEN, HTTP 403).",
            self.denials.load(Ordering::Relaxed),
        )
    }
}

/// The token of a `Bearer <token>` header value.
pub fn bearer(header: &[u8]) -> Result<&str, AuthFailure> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(AuthFailure::Token(TokenRefusal::Malformed));
    }
    let text = std::str::from_utf8(header).map_err(|_| AuthFailure::BadHeader)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthFailure::BadHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::BadHeader);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tokens::TokenFileStore;

    fn authenticator(dir: &std::path::Path, anonymous: Option<&str>) -> Authenticator {
        Authenticator::new(AuthSettings {
            tokens_file: dir.join("tokens.json"),
            anonymous_role: anonymous.map(str::to_string),
            certificates: BTreeMap::from([
                ("gateway-7".to_string(), "poller".to_string()),
                ("sha256:AB:CD".to_string(), "admin".to_string()),
            ]),
        })
        .unwrap()
    }

    #[test]
    fn token_then_certificate_then_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let created = TokenFileStore::new(dir.path().join("tokens.json"))
            .create("operator", Some("ops"))
            .unwrap();
        let auth = authenticator(dir.path(), Some("reader"));
        let header = format!("Bearer {}", created.token);
        let id = auth.authenticate(Some(header.as_bytes()), None).unwrap();
        assert_eq!((id.name.as_str(), id.role.as_str()), ("ops", "operator"));
        assert_eq!(
            auth.authenticate(Some(b"Bearer mlt_nope"), None),
            Err(AuthFailure::Token(TokenRefusal::Malformed))
        );
        assert_eq!(
            auth.authenticate(Some(b"Basic abc"), None),
            Err(AuthFailure::BadHeader)
        );
        assert_eq!(
            auth.authenticate(Some(&[0xff, 0xfe]), None),
            Err(AuthFailure::BadHeader)
        );
        assert_eq!(auth.authenticate(None, None).unwrap().role, "reader");
        let none = authenticator(dir.path(), Some(NO_ANONYMOUS));
        assert_eq!(none.authenticate(None, None), Err(AuthFailure::Missing));
        let auth = std::sync::Arc::new(auth);
        let text = crate::telemetry::expose::render_fn(move |enc| auth.encode_metrics(enc));
        assert!(text.contains("meshlet_auth_failures_total{reason=\"bad_header\"} 2"));
        assert!(text.contains("meshlet_auth_failures_total{reason=\"malformed\"} 1"));
    }

    #[test]
    fn certificates_map_by_fingerprint_before_cn() {
        let roles = CertificateRoles::new(&BTreeMap::from([
            ("gateway-7".to_string(), "poller".to_string()),
            ("sha256:AB:CD".to_string(), "admin".to_string()),
        ]));
        let peer = |cn: Option<&str>, fp: &str| PeerCertificate {
            subject_cn: cn.map(str::to_string),
            fingerprint_sha256: fp.to_string(),
        };
        let by_cn = roles.identity(&peer(Some("gateway-7"), "00")).unwrap();
        assert_eq!(
            (by_cn.name.as_str(), by_cn.role.as_str()),
            ("gateway-7", "poller")
        );
        let pinned = roles.identity(&peer(Some("gateway-7"), "abcd")).unwrap();
        assert_eq!(pinned.role, "admin");
        let no_cn = roles.identity(&peer(None, "ABCD")).unwrap();
        assert_eq!(no_cn.name, "sha256:abcd");
        assert!(roles.identity(&peer(Some("other"), "00")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(dir.path(), None);
        assert_eq!(
            auth.authenticate(None, Some(&peer(Some("other"), "00"))),
            Err(AuthFailure::UnmappedCertificate)
        );
    }
}
