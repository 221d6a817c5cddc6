//! GraphQL clients for the tests: real HTTP (reqwest) and real WebSocket
//! (tokio-tungstenite) against the node's `/graphql` and `/graphql/ws`,
//! speaking both subscription protocols by hand so the tests check the
//! wire format, not a client library's idea of it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::NodeProcess;

/// A GraphQL-over-HTTP client bound to one node.
#[derive(Clone)]
pub struct Gql {
    client: reqwest::Client,
    url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<String>,
}

impl Gql {
    pub fn new(node: &NodeProcess) -> Gql {
        Gql {
            client: reqwest::Client::new(),
            url: node.url("/graphql"),
            token: None,
        }
    }

    /// The API token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client, calling with an API token.
    pub fn with_token(&self, token: &str) -> Gql {
        Gql {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// POSTs a query; returns the status and the JSON body.
    pub async fn post(&self, query: &str, variables: Value) -> (u16, Value) {
        let mut request = self.client.post(&self.url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("GraphQL request");
        let status = response.status().as_u16();
        let body = response.text().await.expect("GraphQL response body");
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {body}"));
        (status, json)
    }

    /// POSTs raw bytes with a content type; returns status and body text.
    pub async fn post_raw(&self, content_type: &str, body: Vec<u8>) -> (u16, String) {
        let response = self
            .client
            .post(&self.url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("GraphQL request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// The `data` of a query that must succeed.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self.post(query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "errors for {query}: {body:#}");
        body["data"].clone()
    }

    /// The errors of a query that must fail (status 200, GraphQL errors).
    pub async fn errors(&self, query: &str, variables: Value) -> Vec<Value> {
        let (status, body) = self.post(query, variables).await;
        assert_eq!(status, 200, "{body}");
        body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("expected errors for {query}: {body:#}"))
            .clone()
    }

    /// A GET on the node (the async twin of `http_get`, usable inside a
    /// test's runtime): status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let base = self.url.trim_end_matches("/graphql");
        let mut request = self.client.get(format!("{base}{path}"));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// `GET /graphql` as a browser asks for it (`Accept: text/html`, no
    /// `query`): GraphiQL, or its refusal. Status and body.
    pub async fn graphiql(&self) -> (u16, String) {
        let response = self
            .client
            .get(&self.url)
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// A sample of `/metrics` (see `common::metric`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// Polls `query` until `done` holds for its data, at most `deadline`.
    pub async fn until(
        &self,
        deadline: Duration,
        query: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let (_, body) = self.post(query, json!({})).await;
            if done(&body["data"]) {
                return body["data"].clone();
            }
            assert!(Instant::now() < end, "timed out; last answer: {body:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `product` has `n` open subscriptions (the server
    /// subscribes to the change feed only then: publishing earlier could
    /// race the subscription).
    pub async fn wait_subscriptions(&self, product: &str, n: i64) {
        let query = format!("{{ product(name: \"{product}\") {{ usage {{ subscriptions }} }} }}");
        self.until(Duration::from_secs(10), &query, |d| {
            d["product"]["usage"]["subscriptions"].as_i64() == Some(n)
        })
        .await;
    }
}

/// The two WebSocket subprotocols GraphQL subscriptions are spoken in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Protocol {
    /// graphql-transport-ws (the graphql-ws library, current).
    TransportWs,
    /// graphql-ws (subscriptions-transport-ws, legacy).
    LegacyWs,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::LegacyWs => "graphql-ws",
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One WebSocket connection with one subscription on it.
pub struct Subscriber {
    socket: Socket,
    protocol: Protocol,
}

impl Subscriber {
    /// Connects, initialises the connection and starts `query`.
    pub async fn start(
        node: &NodeProcess,
        protocol: Protocol,
        query: &str,
        variables: Value,
    ) -> Subscriber {
        Subscriber::start_with(node, protocol, query, variables, json!({})).await
    }

    /// [`Subscriber::start`] with a `connection_init` payload (e.g.
    /// `{"Authorization": "Bearer <token>"}`).
    pub async fn start_with(
        node: &NodeProcess,
        protocol: Protocol,
        query: &str,
        variables: Value,
        init: Value,
    ) -> Subscriber {
        let url = format!("ws://{}/graphql/ws", node.http);
        let mut request = url.into_client_request().expect("ws request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(protocol.name()),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket connects");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol.name())
        );
        let mut subscriber = Subscriber { socket, protocol };
        subscriber
            .send(json!({ "type": "connection_init", "payload": init }))
            .await;
        let ack = subscriber.next_message(Duration::from_secs(10)).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        let start = match protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        subscriber
            .send(json!({ "id": "1", "type": start, "payload": { "query": query, "variables": variables } }))
            .await;
        subscriber
    }

    /// Starts one more subscription on this connection under `id`
    /// (graphql-transport-ws `subscribe`, legacy `start`).
    pub async fn subscribe_more(&mut self, id: &str, query: &str) {
        let start = match self.protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        self.send(json!({ "id": id, "type": start, "payload": { "query": query } }))
            .await;
    }

    /// The next protocol message of any subscription on this connection
    /// (keep-alives answered and skipped).
    pub async fn message(&mut self, deadline: Duration) -> Value {
        self.next_message(deadline).await
    }

    async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("ws send");
    }

    /// The next protocol message that is not a keep-alive (answering
    /// pings as the protocol asks).
    async fn next_message(&mut self, deadline: Duration) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.socket.next())
                .await
                .expect("a WebSocket message in time")
                .expect("the WebSocket is open")
                .expect("a WebSocket frame");
            let text = match message {
                Message::Text(text) => text.to_string(),
                Message::Close(frame) => panic!("WebSocket closed: {frame:?}"),
                _ => continue,
            };
            let value: Value = serde_json::from_str(&text).expect("JSON message");
            match value["type"].as_str() {
                Some("ka") => continue,
                Some("ping") => {
                    self.send(json!({ "type": "pong" })).await;
                    continue;
                }
                Some("pong") => continue,
                _ => return value,
            }
        }
    }

    /// The next result payload (`{data, errors}`) of the subscription.
    pub async fn next(&mut self, deadline: Duration) -> Value {
        let message = self.next_message(deadline).await;
        let expected = match self.protocol {
            Protocol::TransportWs => "next",
            Protocol::LegacyWs => "data",
        };
        assert_eq!(message["type"], expected, "{message}");
        assert_eq!(message["id"], "1", "{message}");
        message["payload"].clone()
    }

    /// The next payload, or the errors of an `error` message (a
    /// subscription refused before it started).
    pub async fn next_or_error(&mut self, deadline: Duration) -> Value {
        let message = self.next_message(deadline).await;
        match message["type"].as_str() {
            Some("error") => message["payload"].clone(),
            Some("next" | "data") => message["payload"].clone(),
            _ => panic!("unexpected message {message}"),
        }
    }

    /// Waits up to `deadline` for a payload; `None` if none came.
    pub async fn maybe_next(&mut self, deadline: Duration) -> Option<Value> {
        match tokio::time::timeout(deadline, self.socket.next()).await {
            Err(_) => None,
            Ok(Some(Ok(Message::Text(text)))) => {
                let value: Value = serde_json::from_str(&text).expect("JSON message");
                if value["type"] == "ka" {
                    return None;
                }
                Some(value["payload"].clone())
            }
            Ok(other) => panic!("unexpected WebSocket event: {other:?}"),
        }
    }
}

/// A working directory with `products/<name>.yaml` and a `meshlet.toml`
/// that points at them (plus `extra_config`).
pub fn workdir(products: &[(&str, &str)], extra_config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    for (name, yaml) in products {
        std::fs::write(
            dir.path().join("products").join(format!("{name}.yaml")),
            yaml,
        )
        .expect("write product");
    }
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n{extra_config}"),
    )
    .expect("write config");
    dir
}

/// Starts a node in `dir` (see [`workdir`]).
pub fn start(dir: &std::path::Path) -> NodeProcess {
    super::NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts")
}

/// A sensor product fed over MQTT and HTTP, with every field type.
pub const SENSOR: &str = r#"
product: sensor
version: 1
domain: test
owner: test@example.com
description: A test sensor.
key: sensor_id
fields:
  sensor_id: { type: string, required: true }
  site:      { type: string }
  temp:      { type: float, min: -40, max: 150, unit: "°C", description: Air temperature }
  seq:       { type: int }
  status:    { type: string, enum: [ok, warn, fault] }
  at:        { type: timestamp }
  extra:     { type: json }
  email:     { type: string, classification: pii }
sources:
  - mqtt: { topic: "site/{site}/sensor/{sensor_id}", format: json }
  - http: { format: ndjson }
quality: { on_invalid: quarantine }
freshness: 60s
"#;
