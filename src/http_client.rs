//! The node's one HTTP client: HTTP/1.1 on hyper's connection API, over
//! the node's TLS client setup ([`crate::tls::client_config`]) for
//! `https://`; `http://` is accepted for tests and trusted links. It is
//! what sync's HTTPS transport and `meshlet status` speak (hyper and
//! rustls are in the tree for the listener already, so no second HTTP
//! stack such as reqwest).
//!
//! One connection is kept and reused while the peer keeps it open; any
//! failure drops it and the next request connects again. Answers of any
//! status come back to the caller, which decides what they mean.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tls::TlsConfigError;

/// Why a request got no answer, or the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("url `{url}`: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsConfigError),
    #[error("cannot reach {authority}: {reason}")]
    Unreachable { authority: String, reason: String },
}

/// The TLS files of a client (all optional: no CA file means the system
/// roots; a client certificate needs both its files).
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a Path>,
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
}

/// An answer: status and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as text (lossy), for messages and JSON.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client for one base URL (`scheme://host[:port][/base/path]`).
pub struct HttpClient {
    host: String,
    port: u16,
    authority: String,
    base_path: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    token: Option<String>,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    /// Checks the URL and reads the TLS files; does not connect.
    pub fn new(
        url: &str,
        tls_files: TlsFiles<'_>,
        token: Option<String>,
    ) -> Result<HttpClient, HttpClientError> {
        let bad = |reason: &'static str| HttpClientError::Url {
            url: url.to_string(),
            reason,
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("expected https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let config = crate::tls::client_config(
                tls_files.ca_file,
                tls_files.client_cert_file,
                tls_files.client_key_file,
            )?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(HttpClient {
            host,
            port,
            authority: authority.to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            tls,
            token,
            connection: None,
        })
    }

    /// `host[:port]` of the base URL, for messages.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends one request to `base path + path` (POST when there is a
    /// body, else GET), with the bearer token when there is one, and reads
    /// the whole answer.
    pub async fn request(
        &mut self,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<Answer, HttpClientError> {
        let unreachable = |reason: String| HttpClientError::Unreachable {
            authority: self.authority.clone(),
            reason,
        };
        let mut connection = match self.connection.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        connection
            .ready()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let full = format!("{}{path}", self.base_path);
        let mut request = hyper::Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(full.as_str())
            .header(hyper::header::HOST, self.authority.as_str());
        if let Some((content_type, _)) = &body {
            request = request.header(hyper::header::CONTENT_TYPE, *content_type);
        }
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body.map(|(_, b)| b).unwrap_or_default()))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        // Read whole: the connection can carry the next request.
        self.connection = Some(connection);
        Ok(Answer { status, body })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpClientError> {
        let unreachable = |reason: String| HttpClientError::Unreachable {
            authority: self.authority.clone(),
            reason,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
        .map_err(unreachable)
    }
}

async fn handshake<S>(io: TokioIo<S>) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends when the sender is dropped or the peer
    // closes; it owns nothing else.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP client connection closed");
        }
    });
    Ok(sender)
}
