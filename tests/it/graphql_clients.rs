//! GraphQL as outside clients speak it (issue 26), against the real node:
//! the GraphQL-over-HTTP audit suite (npm `graphql-http`, pinned in
//! `tests/js/package-lock.json`, installed by `tests/run.sh`), queries
//! over GET, automatic persisted queries, and the
//! `application/graphql-response+json` media type.
//!
//! Outside clients (`tests/js/clients.mjs`: Apollo Client, urql,
//! graphql-ws, subscriptions-transport-ws, pinned in the same lockfile)
//! run against the node and report what they saw; the assertions are here.
//!
//! The node scripts need `node` and `npm ci` in `tests/js`: a missing one
//! fails the test (tests/run.sh installs both), it is never skipped.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::create_token;
use common::graphql::{start, workdir, Gql, SENSOR};
use serde_json::{json, Value};

const ANONYMOUS_READS: &str = "[security]\nanonymous_role = \"reader\"\n";

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Runs `tests/js/<script>` with `args`; its stdout.
async fn node_script(script: &str, args: Vec<String>) -> String {
    let dir = js_dir();
    assert!(
        ["graphql-http", "@apollo/client", "graphql-ws"]
            .iter()
            .all(|package| dir.join("node_modules").join(package).is_dir()),
        "the JS clients are not installed: run `npm ci` in {} (tests/run.sh does)",
        dir.display()
    );
    let name = script.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&name)
            .args(&args)
            .current_dir(&dir)
            .output()
    })
    .await
    .expect("node task")
    .expect("`node` (v20 or later) must be installed: tests/run.sh installs it");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "node {script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The audit's summary (its last line) for `url`, called with `token`.
async fn audit(url: &str, token: Option<&str>) -> Value {
    let mut args = vec![url.to_string()];
    args.extend(token.map(str::to_string));
    let out = node_script("audit.mjs", args).await;
    let last = out.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("audit summary ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphql_over_http_audit_passes_anonymous_and_with_a_token() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let token = create_token(dir.path(), "admin", "ops");
    let node = start(dir.path());
    let url = node.url("/graphql");
    for token in [None, Some(token.as_str())] {
        let summary = audit(&url, token).await;
        let who = if token.is_some() {
            "with a token"
        } else {
            "anonymous"
        };
        assert_eq!(summary["error"], 0, "{who}: {summary:#}");
        assert_eq!(summary["warn"], 0, "{who}: {summary:#}");
        assert!(
            summary["ok"].as_u64().unwrap_or(0) > 50,
            "{who}: {summary:#}"
        );
        // The MAYs about GET are taken too: mutations refused over GET,
        // variables as a URL-encoded JSON text.
        let failed = summary["failed"].as_array().cloned().unwrap_or_default();
        assert!(
            failed
                .iter()
                .all(|f| !f["name"].as_str().unwrap_or("").contains("GET")),
            "{who}: {summary:#}"
        );
    }
}

/// A GET on `/graphql` with URL parameters and an `Accept`.
async fn get(
    url: &str,
    token: Option<&str>,
    accept: &str,
    params: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new()
        .get(url)
        .query(params)
        .header("accept", accept);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /graphql");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_get_and_mutations_refused() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let token = create_token(dir.path(), "admin", "ops");
    let node = start(dir.path());
    let url = node.url("/graphql");
    let admin = Gql::new(&node).with_token(&token);
    admin
        .data(
            r#"mutation { upsertSensor(input: { sensor_id: "s1", temp: 20.5 }) { sensor_id } }"#,
            json!({}),
        )
        .await;

    // A query with variables and a chosen operation, as urql and Apollo
    // send it.
    let (status, headers, body) = get(
        &url,
        None,
        "application/json",
        &[
            ("query", "query Other { __typename } query One($id: String!) { sensor(sensor_id: $id) { temp } }"),
            ("variables", r#"{"id":"s1"}"#),
            ("operationName", "One"),
            ("extensions", "{}"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        json_of(&body),
        json!({ "data": { "sensor": { "temp": 20.5 } } })
    );

    // A mutation over GET is refused, and nothing is executed.
    let (status, headers, body) = get(
        &url,
        Some(&token),
        "application/json",
        &[(
            "query",
            r#"mutation { upsertSensor(input: { sensor_id: "s2", temp: 1 }) { sensor_id } }"#,
        )],
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["allow"], "POST");
    assert_eq!(
        json_of(&body)["errors"][0]["extensions"]["code"],
        "MUTATION_OVER_GET"
    );
    let data = admin
        .data(r#"{ sensor(sensor_id: "s2") { temp } }"#, json!({}))
        .await;
    assert_eq!(data["sensor"], Value::Null);

    // Without `query`: GraphiQL for a browser only.
    let (status, headers, body) = get(&url, None, "text/html,*/*;q=0.8", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(body.contains("GraphiQL"), "{body}");
    let (status, _, body) = get(&url, None, "application/json", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`query` parameter"), "{body}");
    // A text/html GET with a query is a query.
    let (status, _, body) = get(&url, None, "text/html", &[("query", "{ __typename }")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), json!({ "data": { "__typename": "Query" } }));
    // Variables that are not a JSON object are refused before execution.
    let (status, _, body) = get(
        &url,
        None,
        "application/json",
        &[("query", "{ __typename }"), ("variables", "[1]")],
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn post_json(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /graphql");
    let status = response.status().as_u16();
    (status, json_of(&response.text().await.expect("body")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_persisted_queries_register_verified_texts() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let token = create_token(dir.path(), "admin", "ops");
    let node = start(dir.path());
    let url = node.url("/graphql");
    let gql = Gql::new(&node);
    let query = r#"{ sensor(sensor_id: "p1") { temp } }"#;
    let hash = sha256_hex(query);
    let persisted = |hash: &str| json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });

    // Hash only, unknown: the client is asked for the text.
    let (status, body) = post_json(&url, None, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );

    // A mutation sent with a hash that is not its own is refused and not
    // executed.
    let mutation =
        r#"mutation { upsertSensor(input: { sensor_id: "p1", temp: 7 }) { sensor_id } }"#;
    let (status, body) = post_json(
        &url,
        Some(&token),
        json!({ "query": mutation, "extensions": persisted(&hash) }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_HASH_MISMATCH"
    );
    let data = gql.data(query, json!({})).await;
    assert_eq!(data["sensor"], Value::Null);
    // ... nor registered under that hash.
    let (_, body) = post_json(&url, None, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );

    // Text and hash register; then the hash alone runs it, over GET too.
    Gql::new(&node)
        .with_token(&token)
        .data(mutation, json!({}))
        .await;
    let (status, body) = post_json(
        &url,
        None,
        json!({ "query": query, "extensions": persisted(&hash) }),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!({ "data": { "sensor": { "temp": 7.0 } } }))
    );
    let (status, body) = post_json(&url, None, json!({ "extensions": persisted(&hash) })).await;
    assert_eq!(
        (status, &body),
        (200, &json!({ "data": { "sensor": { "temp": 7.0 } } }))
    );
    let extensions = persisted(&hash).to_string();
    let (status, _, body) = get(
        &url,
        None,
        "application/json",
        &[("extensions", &extensions)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!({ "data": { "sensor": { "temp": 7.0 } } })
    );

    // A persisted mutation still cannot run over GET.
    let mutation_hash = sha256_hex(mutation);
    let (status, _) = post_json(
        &url,
        Some(&token),
        json!({ "query": mutation, "extensions": persisted(&mutation_hash) }),
    )
    .await;
    assert_eq!(status, 200);
    let extensions = persisted(&mutation_hash).to_string();
    let (status, _, body) = get(
        &url,
        Some(&token),
        "application/json",
        &[("extensions", &extensions)],
    )
    .await;
    assert_eq!(status, 405, "{body}");

    let count = |outcome: &str| {
        let gql = gql.clone();
        let series = format!("meshlet_graphql_persisted_queries_total{{outcome=\"{outcome}\"}}");
        async move { gql.metric(&series).await.unwrap_or(0.0) }
    };
    assert_eq!(count("miss").await, 2.0);
    assert_eq!(count("hash_mismatch").await, 1.0);
    assert_eq!(count("registered").await, 2.0);
    assert_eq!(count("hit").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_response_json_and_application_graphql() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let node = start(dir.path());
    let url = node.url("/graphql");
    let client = reqwest::Client::new();
    let post = |accept: &'static str, body: Value| {
        let request = client.post(&url).header("accept", accept).json(&body);
        async move {
            let response = request.send().await.expect("POST");
            let status = response.status().as_u16();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .to_string();
            (
                status,
                content_type,
                json_of(&response.text().await.expect("body")),
            )
        }
    };
    const GRJ: &str = "application/graphql-response+json";
    let ok = json!({ "query": "{ __typename }" });
    let (status, content_type, body) = post(GRJ, ok.clone()).await;
    assert_eq!((status, content_type.as_str()), (200, GRJ), "{body}");
    assert_eq!(body, json!({ "data": { "__typename": "Query" } }));
    let (status, content_type, _) =
        post("application/json, application/graphql-response+json", ok).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));

    // Request errors: 400 in the new media type, 200 in application/json;
    // no `data` entry either way.
    for request in [
        json!({ "query": "{" }),
        json!({ "query": "{ noSuchField }" }),
        json!({ "query": "query ($id: String!) { sensor(sensor_id: $id) { temp } }", "variables": { "id": 5 } }),
    ] {
        let (status, content_type, body) = post(GRJ, request.clone()).await;
        assert_eq!(
            (status, content_type.as_str()),
            (400, GRJ),
            "{request}: {body}"
        );
        assert!(
            body.get("data").is_none() && body["errors"][0]["message"].is_string(),
            "{body}"
        );
        let (status, _, body) = post("application/json", request.clone()).await;
        assert_eq!(status, 200, "{request}: {body}");
        assert!(body.get("data").is_none(), "{body}");
    }

    // A bare query text.
    let response = client
        .post(&url)
        .header("content-type", "application/graphql")
        .body("{ __typename }")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        json_of(&response.text().await.expect("body")),
        json!({ "data": { "__typename": "Query" } })
    );
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What came over a subscription WebSocket.
#[derive(Debug)]
enum Frame {
    Json(Value),
    Close(Option<u16>),
}

/// Opens `/graphql/ws` offering `offer` (a `Sec-WebSocket-Protocol`
/// value); the socket and the protocol the handshake named.
async fn ws_connect(node: &common::NodeProcess, offer: &str) -> (Socket, Option<String>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/graphql/ws", node.http)
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        offer.parse().expect("header value"),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket connects");
    let named = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (socket, named)
}

async fn ws_send(socket: &mut Socket, message: Value) {
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            message.to_string(),
        ))
        .await
        .expect("ws send");
}

/// The next message that is not a keep-alive, or the close frame.
async fn ws_next(socket: &mut Socket) -> Frame {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a WebSocket message in time");
        match message {
            None | Some(Err(_)) => return Frame::Close(None),
            Some(Ok(Message::Close(frame))) => return Frame::Close(frame.map(|f| f.code.into())),
            Some(Ok(Message::Text(text))) => {
                let value: Value = json_of(&text);
                match value["type"].as_str() {
                    Some("ka" | "pong") => continue,
                    Some("ping") => ws_send(socket, json!({ "type": "pong" })).await,
                    _ => return Frame::Json(value),
                }
            }
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_speaks_the_protocol_it_negotiated() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let token = create_token(dir.path(), "admin", "ops");
    let node = start(dir.path());
    let admin = Gql::new(&node).with_token(&token);
    let offers = [
        ("graphql-ws, graphql-transport-ws", "graphql-transport-ws"),
        ("graphql-transport-ws, graphql-ws", "graphql-transport-ws"),
        ("graphql-transport-ws", "graphql-transport-ws"),
        ("graphql-ws", "graphql-ws"),
    ];
    for (n, (offer, expected)) in offers.into_iter().enumerate() {
        let (mut socket, named) = ws_connect(&node, offer).await;
        assert_eq!(named.as_deref(), Some(expected), "offered {offer}");
        let transport = expected == "graphql-transport-ws";
        ws_send(
            &mut socket,
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }),
        )
        .await;
        let ack = ws_next(&mut socket).await;
        assert!(
            matches!(&ack, Frame::Json(v) if v["type"] == "connection_ack"),
            "{offer}: {ack:?}"
        );
        let start = if transport { "subscribe" } else { "start" };
        ws_send(
            &mut socket,
            json!({ "id": "1", "type": start, "payload": { "query": "subscription { sensorChanges { entity } }" } }),
        )
        .await;
        admin.wait_subscriptions("sensor", 1).await;
        let entity = format!("w{n}");
        admin
            .data(
                "mutation ($id: String!) { upsertSensor(input: { sensor_id: $id, temp: 1 }) { sensor_id } }",
                json!({ "id": entity }),
            )
            .await;
        let Frame::Json(message) = ws_next(&mut socket).await else {
            panic!("{offer}: closed before the change");
        };
        let next = if transport { "next" } else { "data" };
        assert_eq!(message["type"], next, "{offer}: {message}");
        assert_eq!(
            message["payload"]["data"]["sensorChanges"]["entity"],
            entity.as_str()
        );
        socket.close(None).await.expect("close");
        admin.wait_subscriptions("sensor", 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_in_connection_init_ends_the_connection_as_each_protocol_says() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let node = start(dir.path());
    let bad = json!({ "type": "connection_init", "payload": { "Authorization": "Bearer mlt_not_a_token" } });

    // graphql-transport-ws: close code 4403 Forbidden, nothing before it.
    let (mut socket, _) = ws_connect(&node, "graphql-transport-ws").await;
    ws_send(&mut socket, bad.clone()).await;
    let frame = ws_next(&mut socket).await;
    assert!(matches!(frame, Frame::Close(Some(4403))), "{frame:?}");

    // graphql-ws: `connection_error`, then a close frame.
    let (mut socket, _) = ws_connect(&node, "graphql-ws").await;
    ws_send(&mut socket, bad).await;
    let frame = ws_next(&mut socket).await;
    assert!(
        matches!(&frame, Frame::Json(v) if v["type"] == "connection_error" && v["payload"]["message"].is_string()),
        "{frame:?}"
    );
    let frame = ws_next(&mut socket).await;
    assert!(matches!(frame, Frame::Close(Some(4403))), "{frame:?}");
}

/// Opens `/graphql/ws` with an `Origin`; the handshake's status.
async fn ws_status_with_origin(node: &common::NodeProcess, origin: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut request = format!("ws://{}/graphql/ws", node.http)
        .into_client_request()
        .expect("ws request");
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("value"),
    );
    headers.insert("Origin", origin.parse().expect("value"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("WebSocket handshake: {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_origins_in_and_keeps_others_out() {
    const APP: &str = "https://app.example.com";
    const EVIL: &str = "https://evil.example.net";
    let dir = workdir(
        &[("sensor", SENSOR)],
        &format!("{ANONYMOUS_READS}[http.cors]\nallow_origins = [\"{APP}\"]\n"),
    );
    let node = start(dir.path());
    let url = node.url("/graphql");
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let response = preflight(APP).await.expect("preflight");
    assert_eq!(response.status().as_u16(), 204);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], APP);
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap_or("")
        .contains("authorization"));
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap_or("")
        .contains("POST"));
    let response = preflight(EVIL).await.expect("preflight");
    assert_eq!(response.status().as_u16(), 403);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    // The actual request: the allowed origin may read the answer.
    for (origin, allowed) in [(APP, true), (EVIL, false)] {
        let response = client
            .post(&url)
            .header("origin", origin)
            .json(&json!({ "query": "{ __typename }" }))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_some(),
            allowed,
            "{origin}"
        );
    }

    // WebSockets: the allowed origin and the node's own pages, no other.
    assert_eq!(ws_status_with_origin(&node, APP).await, 101);
    assert_eq!(
        ws_status_with_origin(&node, &format!("http://{}", node.http)).await,
        101
    );
    assert_eq!(ws_status_with_origin(&node, EVIL).await, 403);

    let gql = Gql::new(&node);
    let refused = |kind: &str| {
        let gql = gql.clone();
        let series = format!("meshlet_http_cors_refused_total{{kind=\"{kind}\"}}");
        async move { gql.metric(&series).await }
    };
    assert_eq!(refused("preflight").await, Some(1.0));
    assert_eq!(refused("websocket").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_config_no_other_origin_is_allowed() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let node = start(dir.path());
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, node.url("/graphql"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        ws_status_with_origin(&node, "https://app.example.com").await,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_values_are_accepted_as_strings_and_answered_as_exact_numbers() {
    let dir = workdir(&[("sensor", SENSOR)], ANONYMOUS_READS);
    let token = create_token(dir.path(), "admin", "ops");
    let node = start(dir.path());
    let admin = Gql::new(&node).with_token(&token);
    // 2^53 + 1: a JavaScript number cannot hold it, a string can.
    let big = "9007199254740993";
    let data = admin
        .data(
            "mutation ($seq: Long) { upsertSensor(input: { sensor_id: \"l1\", seq: $seq }) { seq } }",
            json!({ "seq": big }),
        )
        .await;
    assert_eq!(data["upsertSensor"]["seq"], 9_007_199_254_740_993i64);
    // In a literal, in a filter operand, and in a variable of a filter.
    let data = admin
        .data(
            "query ($seq: Long) { a: sensorConnection(filter: { seq: { eq: \"9007199254740993\" } }) { totalCount }
              b: sensorConnection(filter: { seq: { gte: $seq } }) { totalCount } }",
            json!({ "seq": big }),
        )
        .await;
    assert_eq!(
        data,
        json!({ "a": { "totalCount": 1 }, "b": { "totalCount": 1 } })
    );
    // The answer's JSON text holds the exact digits.
    let response = reqwest::Client::new()
        .post(node.url("/graphql"))
        .json(&json!({ "query": "{ sensor(sensor_id: \"l1\") { seq } }" }))
        .send()
        .await
        .expect("POST");
    let text = response.text().await.expect("body");
    assert!(text.contains(&format!("\"seq\":{big}")), "{text}");
    // Not a number, not an i64: refused.
    for bad in ["1.5", "12abc", "99999999999999999999"] {
        let errors = admin
            .errors(
                "mutation ($seq: Long) { upsertSensor(input: { sensor_id: \"l2\", seq: $seq }) { seq } }",
                json!({ "seq": bad }),
            )
            .await;
        assert!(
            errors[0]["message"].as_str().unwrap_or("").contains("Long"),
            "{bad}: {errors:?}"
        );
    }
}

/// A product only `admin` reads: the (anonymous) `reader` gets `FORBIDDEN`.
const VAULT: &str = r#"
product: vault
version: 1
domain: test
owner: test@example.com
description: Only admins read it.
key: vault_id
fields:
  vault_id: { type: string, required: true }
  note:     { type: string }
sources:
  - http: {}
access:
  admin:  { read: true, write: true }
  reader: { read: false }
"#;

/// `(path, extensions.code)` of each error, in order.
fn paths_and_codes(body: &Value) -> Vec<(Value, Value)> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {body}"))
        .iter()
        .map(|e| (e["path"].clone(), e["extensions"]["code"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_errors_carry_path_and_code_and_null_their_field() {
    let dir = workdir(&[("sensor", SENSOR), ("vault", VAULT)], ANONYMOUS_READS);
    let token = create_token(dir.path(), "admin", "ops");
    let node = common::NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .secured()
        .start()
        .expect("node starts");
    let anonymous = Gql::new(&node);
    let admin = anonymous.with_token(&token);
    for id in ["s1", "s2"] {
        admin
            .data(
                &format!(r#"mutation {{ upsertSensor(input: {{ sensor_id: "{id}", temp: 20.5 }}) {{ sensor_id }} }}"#),
                json!({}),
            )
            .await;
    }

    // A nullable field that fails is null, beside its siblings; a non-null
    // field that fails nulls its nearest nullable parent.
    let (status, body) = anonymous
        .post(
            r#"{
                a: sensor(sensor_id: "s1") { temp history(first: -1) { nodes { version } } }
                b: sensor(sensor_id: "s1") { temp }
                v: vault(vault_id: "x") { note }
            }"#,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({ "a": null, "b": { "temp": 20.5 }, "v": null }),
        "{body}"
    );
    assert_eq!(
        paths_and_codes(&body),
        vec![
            (json!(["a", "history"]), json!("BAD_ARGUMENT")),
            (json!(["v"]), json!("FORBIDDEN")),
        ],
        "{body}"
    );
    assert!(body["errors"][0]["locations"].is_array(), "{body}");
    // Counted by code.
    for code in ["BAD_ARGUMENT", "FORBIDDEN"] {
        let series = format!("meshlet_graphql_field_errors_total{{code=\"{code}\"}}");
        assert_eq!(anonymous.metric(&series).await, Some(1.0), "{series}");
    }

    // A non-null field in non-null list items under a non-null root field:
    // the null reaches `data`; each item's error has its own path. Over
    // the GraphQL-over-HTTP media type that is an execution result (200),
    // not a request error.
    let query =
        r#"{ sensorConnection { nodes { sensor_id history(first: -1) { nodes { version } } } } }"#;
    let (status, body) = anonymous.post(query, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(
        paths_and_codes(&body),
        vec![
            (
                json!(["sensorConnection", "nodes", 0, "history"]),
                json!("BAD_ARGUMENT")
            ),
            (
                json!(["sensorConnection", "nodes", 1, "history"]),
                json!("BAD_ARGUMENT")
            ),
        ],
        "{body}"
    );
    let response = reqwest::Client::new()
        .post(node.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("POST /graphql");
    assert_eq!(response.status().as_u16(), 200);

    // Over the WebSocket too (a query on graphql-transport-ws).
    let (mut socket, _) = ws_connect(&node, "graphql-transport-ws").await;
    ws_send(&mut socket, json!({ "type": "connection_init" })).await;
    assert!(matches!(ws_next(&mut socket).await, Frame::Json(m) if m["type"] == "connection_ack"));
    ws_send(
        &mut socket,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": r#"{ v: vault(vault_id: "x") { note } b: sensor(sensor_id: "s2") { temp } }"# } }),
    )
    .await;
    match ws_next(&mut socket).await {
        Frame::Json(m) => {
            assert_eq!(m["type"], "next", "{m}");
            assert_eq!(
                m["payload"]["data"],
                json!({ "v": null, "b": { "temp": 20.5 } }),
                "{m}"
            );
            assert_eq!(
                paths_and_codes(&m["payload"]),
                vec![(json!(["v"]), json!("FORBIDDEN"))],
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A product whose `enum:` fields need every naming rule.
const GADGET: &str = r#"
product: gadget
version: 1
domain: test
owner: test@example.com
description: Enum fields.
key: gadget_id
fields:
  gadget_id: { type: string, required: true }
  status:    { type: string, enum: [ok, warn, fault] }
  phase:     { type: string, enum: [in-service, 24h, "true"] }
  tier:      { type: string, enum: [gold, silver], classification: pii }
sources:
  - http: { format: json }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_fields_are_graphql_enums_in_outputs_inputs_filters_and_order() {
    let dir = workdir(&[("gadget", GADGET)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);

    // The types: values that are GraphQL names keep their spelling; the
    // others are mapped, and say what they are stored as.
    let data = gql
        .data(
            r#"{ status: __type(name: "GadgetStatus") { kind enumValues { name description } }
                 phase: __type(name: "GadgetPhase") { kind enumValues { name description } }
                 gadget: __type(name: "Gadget") { fields { name type { kind name } } }
                 filter: __type(name: "GadgetFilter") { inputFields { name type { name } } }
                 input: __type(name: "GadgetInput") { inputFields { name type { name } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["status"]["kind"], "ENUM");
    assert_eq!(
        data["status"]["enumValues"],
        json!([
            { "name": "ok", "description": null },
            { "name": "warn", "description": null },
            { "name": "fault", "description": null },
        ])
    );
    assert_eq!(
        data["phase"]["enumValues"],
        json!([
            { "name": "in_service", "description": "Stored as `in-service`." },
            { "name": "_24h", "description": "Stored as `24h`." },
            { "name": "_true", "description": "Stored as `true`." },
        ])
    );
    let type_of = |list: &Value, field: &str, key: &str| -> Value {
        list.as_array()
            .and_then(|l| l.iter().find(|f| f["name"] == field))
            .map(|f| f["type"][key].clone())
            .unwrap_or(Value::Null)
    };
    let fields = &data["gadget"]["fields"];
    assert_eq!(type_of(fields, "status", "name"), "GadgetStatus");
    assert_eq!(type_of(fields, "phase", "name"), "GadgetPhase");
    // `reader` sees `tier` (pii) redacted: not a value, so it stays text.
    assert_eq!(type_of(fields, "tier", "name"), "String");
    let filter = &data["filter"]["inputFields"];
    assert_eq!(type_of(filter, "status", "name"), "GadgetStatusFilter");
    assert_eq!(type_of(filter, "tier", "name"), "StringFilter");
    assert_eq!(
        type_of(&data["input"]["inputFields"], "phase", "name"),
        "GadgetPhase"
    );
    // The catalog says so too.
    let data = gql
        .data(
            r#"{ product(name: "gadget") { fields { name graphqlType } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["product"]["fields"],
        json!([
            { "name": "gadget_id", "graphqlType": "String" },
            { "name": "status", "graphqlType": "GadgetStatus" },
            { "name": "phase", "graphqlType": "GadgetPhase" },
            { "name": "tier", "graphqlType": "String" },
        ])
    );

    // In: an enum literal, or the name as a JSON string in variables; the
    // stored text is the definition's.
    gql.data(
        r#"mutation { upsertGadget(input: { gadget_id: "g1", status: warn, phase: in_service }) { gadget_id } }"#,
        json!({}),
    )
    .await;
    gql.data(
        r#"mutation($s: GadgetStatus, $p: GadgetPhase) { upsertGadget(input: { gadget_id: "g2", status: $s, phase: $p }) { gadget_id } }"#,
        json!({ "s": "ok", "p": "_24h" }),
    )
    .await;
    let response = reqwest::Client::new()
        .post(node.url("/ingest/gadget"))
        .header("content-type", "application/json")
        .body(r#"{"gadget_id": "g3", "status": "fault", "phase": "true"}"#)
        .send()
        .await
        .expect("POST /ingest/gadget");
    assert_eq!(response.status().as_u16(), 200);
    let data = gql
        .data(
            r#"{ gadgetConnection(orderBy: [{ field: status, direction: DESC }]) { nodes { gadget_id status phase } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["gadgetConnection"]["nodes"],
        json!([
            { "gadget_id": "g1", "status": "warn", "phase": "in_service" },
            { "gadget_id": "g2", "status": "ok", "phase": "_24h" },
            { "gadget_id": "g3", "status": "fault", "phase": "_true" },
        ])
    );
    // The pipeline got the stored text: a history record as received.
    let data = gql
        .data(
            r#"{ gadget(gadget_id: "g1") { history { nodes { values { phase } } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["gadget"]["history"]["nodes"][0]["values"]["phase"],
        "in_service"
    );

    // Filters take enum values, inline and as variables.
    let ids = |data: &Value| -> Vec<String> {
        data["gadgetConnection"]["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .map(|x| x["gadget_id"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let data = gql
        .data(
            r#"{ gadgetConnection(filter: { phase: { in: [in_service, _true] } }) { nodes { gadget_id } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(ids(&data), ["g1", "g3"]);
    let data = gql
        .data(
            r#"query($f: GadgetFilter) { gadgetConnection(filter: $f) { nodes { gadget_id } } }"#,
            json!({ "f": { "or": [{ "status": { "eq": "ok" } }, { "phase": { "ne": "in_service" } }] } }),
        )
        .await;
    assert_eq!(ids(&data), ["g2", "g3"]);
    let data = gql
        .data(
            r#"{ gadgetAggregate(groupBy: [phase]) { groups { key { phase } count } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["gadgetAggregate"]["groups"],
        json!([
            { "key": { "phase": "_24h" }, "count": 1 },
            { "key": { "phase": "in_service" }, "count": 1 },
            { "key": { "phase": "_true" }, "count": 1 },
        ])
    );

    // Subscriptions filter by enum values too: the change to g4 (not
    // in_service) is not sent, the one to g5 is.
    let mut subscriber = common::graphql::Subscriber::start(
        &node,
        common::graphql::Protocol::TransportWs,
        r#"subscription { gadgetChanges(filter: { phase: { eq: in_service } }) { entity instance { phase } } }"#,
        json!({}),
    )
    .await;
    gql.wait_subscriptions("gadget", 1).await;
    gql.data(
        r#"mutation { a: upsertGadget(input: { gadget_id: "g4", phase: _24h }) { gadget_id }
                      b: upsertGadget(input: { gadget_id: "g5", phase: in_service }) { gadget_id } }"#,
        json!({}),
    )
    .await;
    let event = subscriber.next(std::time::Duration::from_secs(10)).await;
    assert_eq!(
        event["data"]["gadgetChanges"],
        json!({ "entity": "g5", "instance": { "phase": "in_service" } }),
        "{event}"
    );

    // A string literal, as clients sent while the field was a `String`,
    // is still taken (async-graphql's dynamic schema coerces it).
    let data = gql
        .data(
            r#"{ gadgetConnection(filter: { status: { eq: "ok" } }) { nodes { gadget_id } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(ids(&data), ["g2"]);
}

#[test]
fn enum_values_that_would_share_a_graphql_name_are_refused() {
    let clash = GADGET.replace("[in-service, 24h, \"true\"]", "[in-service, in_service]");
    let dir = workdir(&[("gadget", &clash)], "");
    let out = common::meshlet(dir.path())
        .args(["--config", "meshlet.toml", "schema", "print"])
        .output()
        .expect("meshlet schema print");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "`in-service` and `in_service` would both be the GraphQL enum value `in_service`"
        ),
        "{stderr}"
    );
}

/// A product with an `id` field of its own: not a Relay `Node`.
const THING: &str = r#"
product: thing
version: 1
domain: test
owner: test@example.com
description: Has its own id.
key: id
fields:
  id:   { type: string, required: true }
  name: { type: string }
sources:
  - http: {}
"#;

fn global_id(object: &str, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{object}:{key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_nodes_refetch_instances_by_global_id_under_the_same_policy() {
    let dir = workdir(
        &[("sensor", SENSOR), ("vault", VAULT), ("thing", THING)],
        ANONYMOUS_READS,
    );
    let token = create_token(dir.path(), "admin", "ops");
    let node = common::NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .secured()
        .start()
        .expect("node starts");
    let reader = Gql::new(&node);
    let admin = reader.with_token(&token);
    admin
        .data(
            r#"mutation { a: upsertSensor(input: { sensor_id: "s1", temp: 1.5 }) { sensor_id }
                          b: upsertSensor(input: { sensor_id: "s2", temp: 2.5 }) { sensor_id }
                          v: upsertVault(input: { vault_id: "v1", note: "x" }) { vault_id } }"#,
            json!({}),
        )
        .await;

    // Every instance type with no `id` of its own is a Node, with a
    // global id.
    let data = reader
        .data(
            r#"{ sensorConnection { nodes { id sensor_id } }
                 sensor: __type(name: "Sensor") { interfaces { name } }
                 thing: __type(name: "Thing") { interfaces { name } } }"#,
            json!({}),
        )
        .await;
    let s1 = global_id("Sensor", "s1");
    let s2 = global_id("Sensor", "s2");
    assert_eq!(
        data["sensorConnection"]["nodes"],
        json!([{ "id": s1, "sensor_id": "s1" }, { "id": s2, "sensor_id": "s2" }])
    );
    assert_eq!(data["sensor"]["interfaces"], json!([{ "name": "Node" }]));
    assert_eq!(data["thing"]["interfaces"], json!([]));

    // node(id:) and nodes(ids:): as the lookup answers, in order, null
    // where there is none.
    let data = reader
        .data(
            r#"query($id: ID!, $ids: [ID!]!) {
                node(id: $id) { __typename id ... on Sensor { temp } }
                nodes(ids: $ids) { id ... on Sensor { sensor_id } } }"#,
            json!({ "id": s1, "ids": [s2, global_id("Sensor", "nope"), s1] }),
        )
        .await;
    assert_eq!(
        data["node"],
        json!({ "__typename": "Sensor", "id": s1, "temp": 1.5 })
    );
    assert_eq!(
        data["nodes"],
        json!([{ "id": s2, "sensor_id": "s2" }, null, { "id": s1, "sensor_id": "s1" }])
    );

    // Same policy as the lookup: `reader` may not read `vault`.
    let (_, body) = reader
        .post(
            r#"query($id: ID!) { node(id: $id) { id } }"#,
            json!({ "id": global_id("Vault", "v1") }),
        )
        .await;
    assert_eq!(body["data"], json!({ "node": null }), "{body}");
    assert_eq!(
        paths_and_codes(&body),
        vec![(json!(["node"]), json!("FORBIDDEN"))]
    );
    let data = admin
        .data(
            r#"query($id: ID!) { node(id: $id) { ... on Vault { note } } }"#,
            json!({ "id": global_id("Vault", "v1") }),
        )
        .await;
    assert_eq!(data["node"], json!({ "note": "x" }));

    // Ids that are not ours, and too many of them.
    for bad in [
        "not-an-id",
        &global_id("Thing", "t1"),
        &global_id("Nope", "x"),
    ] {
        let (_, body) = reader
            .post(
                r#"query($id: ID!) { node(id: $id) { id } }"#,
                json!({ "id": bad }),
            )
            .await;
        assert_eq!(body["data"], json!({ "node": null }), "{body}");
        assert_eq!(
            paths_and_codes(&body),
            vec![(json!(["node"]), json!("BAD_ARGUMENT"))],
            "{bad}"
        );
    }
    let many: Vec<String> = (0..101)
        .map(|i| global_id("Sensor", &i.to_string()))
        .collect();
    let (_, body) = reader
        .post(
            r#"query($ids: [ID!]!) { nodes(ids: $ids) { id } }"#,
            json!({ "ids": many }),
        )
        .await;
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(
        paths_and_codes(&body),
        vec![(json!(["nodes"]), json!("BAD_ARGUMENT"))]
    );
}

/// The answer every client gets to `clients.mjs`'s `Mixed` query: the good
/// field's data beside the failed one's `null`, and the error with its
/// path and code. `typename`: the client adds `__typename` (Apollo's cache).
fn assert_mixed(what: &str, answer: &Value, typename: bool) {
    let mut ok = json!({ "sensor_id": "s1", "temp": 20.5, "status": "warn" });
    if typename {
        ok["__typename"] = json!("Sensor");
    }
    assert_eq!(
        answer["data"],
        json!({ "ok": ok, "bad": null }),
        "{what}: {answer:#}"
    );
    assert_eq!(
        answer["errors"],
        json!([{ "message": "`first` must not be negative", "path": ["bad", "history"], "code": "BAD_ARGUMENT" }]),
        "{what}: {answer:#}"
    );
}

/// A subscription event of `clients.mjs`: a change of the sensor it writes.
fn assert_event(what: &str, event: &Value) {
    let change = &event["data"]["sensorChanges"];
    assert_eq!(change["entity"], "s9", "{what}: {event:#}");
    assert!(change["instance"]["temp"].is_number(), "{what}: {event:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_js_clients_get_data_and_error_shapes_right() {
    // No anonymous role: every client must send its token (header, or
    // `connection_init` payload) or get nothing.
    let dir = workdir(&[("sensor", SENSOR)], "");
    let token = create_token(dir.path(), "admin", "ops");
    let node = common::NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .secured()
        .start()
        .expect("node starts");
    Gql::new(&node)
        .with_token(&token)
        .data(
            r#"mutation { upsertSensor(input: { sensor_id: "s1", temp: 20.5, status: warn }) { sensor_id } }"#,
            json!({}),
        )
        .await;
    let out = node_script("clients.mjs", vec![node.url("/graphql"), token]).await;
    let report: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("clients report ({e}): {out}"));
    for (name, scenario) in report.as_object().expect("report object") {
        assert!(
            scenario.get("failed").is_none() || name == "legacyBothOffered",
            "{name}: {scenario:#}"
        );
    }

    // Apollo Client: HttpLink over POST and (useGETForQueries) GET.
    let post = &report["apolloHttpPost"];
    assert_mixed("HttpLink POST", post, true);
    assert_eq!(post["methods"], json!(["POST"]));
    let get = &report["apolloHttpGet"];
    assert_mixed("HttpLink GET", get, true);
    assert_eq!(get["methods"], json!(["GET"]));

    // PersistedQueryLink: hash only, asked for the text, then hash only.
    let persisted = &report["apolloPersisted"];
    assert_mixed("PersistedQueryLink first", &persisted["first"], true);
    assert_mixed("PersistedQueryLink second", &persisted["second"], true);
    let sent = persisted["sent"].as_array().expect("sent");
    let shape: Vec<(bool, bool)> = sent
        .iter()
        .map(|r| (r["query"] == true, r["hash"].is_string()))
        .collect();
    assert_eq!(
        shape,
        [(false, true), (true, true), (false, true)],
        "{persisted:#}"
    );

    // BatchHttpLink: refused as a whole, clearly, nothing answered.
    for result in report["apolloBatch"].as_array().expect("batch results") {
        assert_eq!(result["error"]["statusCode"], 400, "{result:#}");
        assert_eq!(
            result["error"]["body"]["errors"][0]["extensions"]["code"], "BATCHING_DISABLED",
            "{result:#}"
        );
    }

    // GraphQLWsLink (graphql-ws underneath): a query and a subscription.
    let ws = &report["apolloWs"];
    assert_mixed("GraphQLWsLink query", &ws["query"], true);
    assert_event("GraphQLWsLink", &ws["event"]);

    // urql's default: GET within the URL limit.
    let urql = &report["urqlDefaultGet"];
    assert_mixed("urql", urql, false);
    assert_eq!(urql["methods"], json!(["GET"]));

    // graphql-ws with its own protocol, and offering both: the current
    // protocol is chosen and spoken.
    for name in ["graphqlWsOneProtocol", "graphqlWsBothOffered"] {
        let scenario = &report[name];
        assert_eq!(scenario["protocol"], "graphql-transport-ws", "{name}");
        assert_mixed(name, &scenario["query"], false);
        assert_event(name, &scenario["event"]);
    }
    // subscriptions-transport-ws with its own (legacy) protocol.
    let legacy = &report["legacyOneProtocol"];
    assert_eq!(legacy["protocol"], "graphql-ws");
    assert_mixed("subscriptions-transport-ws", &legacy["query"], false);
    assert_event("subscriptions-transport-ws", &legacy["event"]);
    // Offering both, it is told `graphql-transport-ws` in the handshake
    // and spoken to in it, as negotiated: a client that offers a protocol
    // it cannot speak fails at once rather than being answered in another.
    let both = &report["legacyBothOffered"];
    assert_eq!(both["protocol"], "graphql-transport-ws", "{both:#}");
    assert!(both["failed"].is_string(), "{both:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_page_and_assets_are_embedded_and_open_and_queries_are_not() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let node = common::NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .secured()
        .start()
        .expect("node starts");
    let client = reqwest::Client::new();
    let send = |path: &str, headers: &[(&str, &str)]| {
        let mut request = client.get(node.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    // The page, without credentials: every asset it names is the node's.
    let page = send("/graphql", &[("accept", "text/html")])
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("page body");
    assert!(!html.contains("https://"), "{html}");
    let assets: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/graphql/assets/"))
        .collect();
    assert_eq!(assets.len(), 5, "{html}");
    for asset in assets {
        // As embedded for a browser that takes zstd; decompressed for one
        // that does not.
        let zstd = send(asset, &[("accept-encoding", "gzip, br, zstd")])
            .await
            .expect("asset");
        assert_eq!(zstd.status().as_u16(), 200, "{asset}");
        assert_eq!(zstd.headers()["content-encoding"], "zstd", "{asset}");
        let compressed = zstd.bytes().await.expect("bytes");
        let plain = send(asset, &[("accept-encoding", "gzip")])
            .await
            .expect("asset");
        assert!(plain.headers().get("content-encoding").is_none(), "{asset}");
        assert!(
            plain.headers()["cache-control"]
                .to_str()
                .unwrap_or("")
                .contains("immutable"),
            "{asset}"
        );
        let plain = plain.bytes().await.expect("bytes");
        assert_eq!(
            zstd::stream::decode_all(&compressed[..]).expect("zstd"),
            plain.to_vec(),
            "{asset}"
        );
    }
    let missing = send("/graphql/assets/nope.js", &[]).await.expect("404");
    assert_eq!(missing.status().as_u16(), 404);
    // Queries still need a token, over GET too, also when a browser asks.
    for (path, accept) in [
        ("/graphql?query=%7B__typename%7D", "text/html"),
        ("/graphql", "application/json"),
    ] {
        let refused = send(path, &[("accept", accept)]).await.expect("401");
        assert_eq!(refused.status().as_u16(), 401, "{path} {accept}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_offline_in_headless_chromium_with_a_token() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let token = create_token(dir.path(), "admin", "ops");
    let node = common::NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .secured()
        .start()
        .expect("node starts");
    Gql::new(&node)
        .with_token(&token)
        .data(
            r#"mutation { upsertSensor(input: { sensor_id: "s1", temp: 20.5, status: warn }) { sensor_id } }"#,
            json!({}),
        )
        .await;
    assert!(
        Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
            .exists(),
        "Debian `chromium` must be installed (tests/run.sh installs it), or CHROMIUM set"
    );
    // The screenshot stays under the test's output directory.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graphql_clients");
    std::fs::create_dir_all(&out).expect("output dir");
    let screenshot = out.join("graphiql.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = tempfile::tempdir().expect("browser profile");
    let base = node.url("");
    let base = base.trim_end_matches('/').to_string();
    let stdout = node_script(
        "graphiql.mjs",
        vec![
            base,
            token.clone(),
            screenshot.display().to_string(),
            profile.path().display().to_string(),
        ],
    )
    .await;
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("browser report ({e}): {stdout}"));
    assert!(report.get("failed").is_none(), "{report:#}");
    assert_eq!(report["pageStatus"], 200, "{report:#}");
    // Nothing but the node was even asked for.
    assert_eq!(report["blocked"], json!([]), "{report:#}");
    assert_eq!(
        report["query"],
        json!({ "data": { "products": [{ "name": "sensor" }], "sensor": { "temp": 20.5, "status": "warn" } } }),
        "{report:#}"
    );
    assert_eq!(report["event"]["data"]["sensorChanges"]["entity"], "s2");
    // The token: kept in the tab's session, sent as a header and in
    // connection_init.
    assert_eq!(report["sessionToken"], json!(token));
    let bearer = format!("Bearer {token}");
    assert!(
        report["graphqlRequests"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["authorization"] == json!(bearer))),
        "{report:#}"
    );
    assert_eq!(
        report["connectionInit"],
        json!([{ "Authorization": bearer }]),
        "{report:#}"
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "{}", screenshot.display());
    println!("GraphiQL screenshot: {}", screenshot.display());
}
