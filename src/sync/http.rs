//! The HTTPS transport: `POST <url>/sync/v1` to an upstream meshlet in
//! aggregator mode. A 2xx answer is the acknowledgement (the aggregator
//! answers only once what it applied is durable).
//!
//! hyper's connection API over tokio-rustls (the rustls setup is the one
//! the MQTT client uses: ring, a CA file or the system roots, an optional
//! client certificate); `http://` is accepted for tests and trusted links.
//! One connection is kept and reused; any failure drops it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::envelope::CONTENT_TYPE;
use super::TransportError;
use crate::config::UpstreamConfig;

pub struct HttpTransport {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    token: Option<String>,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl HttpTransport {
    pub fn new(url: &str, config: &UpstreamConfig) -> Result<HttpTransport, TransportError> {
        let bad = |reason: &str| TransportError::Config(format!("url `{url}`: {reason}"));
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
        let path = format!("{}/sync/v1", uri.path().trim_end_matches('/'));
        let tls = if secure {
            let config = crate::ingest::client::rustls_client_config(
                config.ca_file.as_deref(),
                config.client_cert_file.as_deref(),
                config.client_key_file.as_deref(),
            )
            .map_err(|e| TransportError::Config(e.to_string()))?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| bad("the host is not a valid TLS server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(HttpTransport {
            host,
            port,
            authority: authority.to_string(),
            path,
            tls,
            token: config.token.clone(),
            connection: None,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| TransportError::Unreachable(format!("connect {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    TransportError::Unreachable(format!("TLS with {}: {e}", self.authority))
                })?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(tcp)).await,
        }
    }

    /// `GET <url>/sync/v1<suffix>`: the body of a 2xx answer; any other
    /// status is [`TransportError::Refused`] with the answer's text.
    pub async fn get(&mut self, suffix: &str) -> Result<Vec<u8>, TransportError> {
        let mut connection = match self.connection.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        connection
            .ready()
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let mut request = hyper::Request::get(format!("{}{suffix}", self.path))
            .header(hyper::header::HOST, self.authority.as_str());
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            self.connection = Some(connection);
            Ok(body.to_vec())
        } else {
            Err(TransportError::Refused(format!(
                "{} answered {status}: {}",
                self.authority,
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )))
        }
    }

    /// Sends one encoded envelope; Ok once the upstream acknowledged it.
    pub async fn send(&mut self, body: Vec<u8>) -> Result<(), TransportError> {
        let mut connection = match self.connection.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        connection
            .ready()
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let mut request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE);
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        if status.is_success() {
            self.connection = Some(connection);
            Ok(())
        } else if status == hyper::StatusCode::CONFLICT {
            // The upstream is there but cannot take these records yet
            // (`unknown_product`): kept, counted apart, sent again.
            self.connection = Some(connection);
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            Err(TransportError::Deferred {
                // A fixed label set, whatever the upstream sends.
                reason: match answer["code"].as_str() {
                    Some(super::UNKNOWN_PRODUCT) => super::UNKNOWN_PRODUCT,
                    _ => "conflict",
                },
                detail: answer["error"]
                    .as_str()
                    .unwrap_or(text.as_str())
                    .chars()
                    .take(300)
                    .collect(),
            })
        } else {
            Err(TransportError::Refused(format!(
                "{} answered {status}: {}",
                self.authority,
                text.chars().take(300).collect::<String>()
            )))
        }
    }
}

async fn handshake<S>(io: TokioIo<S>) -> Result<SendRequest<Full<Bytes>>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| TransportError::Unreachable(e.to_string()))?;
    // The connection task ends when the sender is dropped or the peer
    // closes; it owns nothing else.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "sync HTTP connection closed");
        }
    });
    Ok(sender)
}
