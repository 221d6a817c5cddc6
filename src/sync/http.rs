//! The HTTPS transport: `POST <url>/sync/v1` to an upstream meshlet in
//! aggregator mode. A 2xx answer is the acknowledgement (the aggregator
//! answers only once what it applied is durable).
//!
//! The node's one HTTP client ([`crate::http_client`]): TLS set up as for
//! every outgoing connection, `http://` for tests and trusted links, one
//! connection kept and reused.

use bytes::Bytes;

use super::envelope::CONTENT_TYPE;
use super::TransportError;
use crate::config::UpstreamConfig;
use crate::http_client::{HttpClient, HttpClientError, TlsFiles};

pub struct HttpTransport {
    client: HttpClient,
}

impl From<HttpClientError> for TransportError {
    fn from(err: HttpClientError) -> TransportError {
        match err {
            HttpClientError::Unreachable { .. } => TransportError::Unreachable(err.to_string()),
            HttpClientError::Url { .. } | HttpClientError::Tls(_) => {
                TransportError::Config(err.to_string())
            }
        }
    }
}

impl HttpTransport {
    pub fn new(url: &str, config: &UpstreamConfig) -> Result<HttpTransport, TransportError> {
        let base = format!("{}/sync/v1", url.trim_end_matches('/'));
        let client = HttpClient::new(
            &base,
            TlsFiles {
                ca_file: config.ca_file.as_deref(),
                client_cert_file: config.client_cert_file.as_deref(),
                client_key_file: config.client_key_file.as_deref(),
            },
            config.token.clone(),
        )?;
        Ok(HttpTransport { client })
    }

    /// `GET <url>/sync/v1<suffix>`: the body of a 2xx answer; any other
    /// status is [`TransportError::Refused`] with the answer's text.
    pub async fn get(&mut self, suffix: &str) -> Result<Vec<u8>, TransportError> {
        let answer = self.client.request(suffix, None).await?;
        if answer.status.is_success() {
            Ok(answer.body.to_vec())
        } else {
            Err(TransportError::Refused(format!(
                "{} answered {}: {}",
                self.client.authority(),
                answer.status,
                answer.text().chars().take(300).collect::<String>()
            )))
        }
    }

    /// Sends one encoded envelope; Ok once the upstream acknowledged it.
    pub async fn send(&mut self, body: Vec<u8>) -> Result<(), TransportError> {
        let answer = self
            .client
            .request("", Some((CONTENT_TYPE, Bytes::from(body))))
            .await?;
        let status = answer.status;
        let text = answer.text();
        if status.is_success() {
            Ok(())
        } else if status == hyper::StatusCode::CONFLICT {
            // The upstream is there but cannot take these records yet
            // (`unknown_product`): kept, counted apart, sent again.
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
                self.client.authority(),
                text.chars().take(300).collect::<String>()
            )))
        }
    }
}
