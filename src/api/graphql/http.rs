//! The GraphQL endpoints: `POST /graphql` (queries and mutations, JSON),
//! `GET /graphql/ws` (subscriptions over graphql-transport-ws or the
//! legacy graphql-ws, chosen by the client's `Sec-WebSocket-Protocol`),
//! and `GET /graphql` (GraphiQL, when `http.graphiql` is on).
//!
//! A request that is not a GraphQL request (too large, not JSON, a batch)
//! is refused before execution with a status code and a GraphQL-shaped
//! body (`{"errors": [{"message", "extensions": {"code"}}]}`), so every
//! client error parser can read it. Execution errors follow GraphQL over
//! HTTP: status 200 and `errors` in the body.

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::ErrorExtensions;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{info_span, Instrument};

use super::budget::{self, ConnectionSlots};
use super::limits::{self, MAX_BODY_BYTES};
use super::Busy;
use crate::api::ApiState;
use crate::policy::access::{Caller, Identity};
use crate::policy::auth::{self, AuthFailure};
use futures_util::StreamExt;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/graphql",
            get(graphiql)
                .post(execute)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/graphql/ws", get(websocket))
}

/// A refusal before execution.
fn refuse(
    state: &ApiState,
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> Response {
    state
        .graphql
        .runtime
        .metrics
        .refused
        .fetch_add(1, Ordering::Relaxed);
    (
        status,
        Json(json!({ "errors": [{ "message": message.into(), "extensions": { "code": code } }] })),
    )
        .into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v == "application/graphql-response+json")
}

async fn execute(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return crate::api::closing(refuse(
                &state,
                StatusCode::PAYLOAD_TOO_LARGE,
                "BODY_TOO_LARGE",
                format!(
                "the request body is over {MAX_BODY_BYTES} bytes; queries may be at most {} bytes",
                limits::MAX_QUERY_BYTES
            ),
            ))
        }
        Err(rejection) => {
            return refuse(
                &state,
                rejection.status(),
                "BAD_REQUEST",
                rejection.body_text(),
            )
        }
    };
    if !is_json(&headers) {
        return refuse(
            &state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_CONTENT_TYPE",
            "send GraphQL requests as `content-type: application/json` with a body like {\"query\": \"{ products { name } }\"}",
        );
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(err) => {
            return refuse(
                &state,
                StatusCode::BAD_REQUEST,
                "MALFORMED_JSON",
                format!("the body is not valid JSON: {err}"),
            )
        }
    };
    if json.is_array() {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "BATCHING_DISABLED",
            "batched requests (a JSON array) are not accepted: send one request per POST",
        );
    }
    if !json.get("query").is_some_and(serde_json::Value::is_string) {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "not a GraphQL request: expected a JSON object with a `query` string (and optionally `variables` and `operationName`)",
        );
    }
    let request: async_graphql::Request = match serde_json::from_value(json) {
        Ok(request) => request,
        Err(err) => {
            return refuse(
                &state,
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                format!("not a GraphQL request ({{\"query\": ..., \"variables\": ..., \"operationName\": ...}}): {err}"),
            )
        }
    };
    // The authentication layer always sets an identity on this route.
    let Some(Extension(identity)) = identity else {
        return crate::api::auth::unauthorized(AuthFailure::Missing);
    };
    let span = info_span!(
        "graphql",
        operation = request.operation_name.as_deref().unwrap_or(""),
        who = %identity.name,
        role = %identity.role,
        prepared = tracing::field::Empty,
    );
    let budgets = state.graphql.runtime.budgets.clone();
    let max_bytes = budgets.limits().max_response_bytes;
    let caller = Caller::new(
        identity,
        state.graphql.runtime.secret.clone(),
        state.auth.denials(),
    );
    let executed = state
        .graphql
        .execute_budgeted(request, caller)
        .instrument(span)
        .await;
    let (response, permit) = match executed {
        Ok(answered) => answered,
        Err(Busy) => {
            let limits = budgets.limits();
            let mut refused = refuse(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_CONCURRENT_QUERIES",
                format!(
                    "this caller already runs {} queries (api.max_concurrent_queries) and none ended within {:?} (api.queue_timeout); retry when one has ended",
                    limits.concurrent_queries(),
                    limits.queue_timeout
                ),
            );
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return refused;
        }
    };
    let body = match capped_json(&response, max_bytes) {
        Some(body) => body,
        None => {
            budgets.responses_too_large.fetch_add(1, Ordering::Relaxed);
            let err = budget::too_large(max_bytes).into_server_error(Default::default());
            let refused = async_graphql::Response::from_errors(vec![err]);
            serde_json::to_vec(&refused).unwrap_or_default()
        }
    };
    let content_type = [(header::CONTENT_TYPE, "application/json")];
    if body.len() <= STREAMED_FROM_BYTES {
        return (content_type, body).into_response();
    }
    // The query's slot is held until the body has been written (or the
    // client went away): see `budget.rs`.
    let body = Bytes::from(body);
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = (0..body.len())
        .step_by(STREAMED_FROM_BYTES)
        .map(|start| Ok(body.slice(start..body.len().min(start + STREAMED_FROM_BYTES))))
        .collect();
    let stream = futures_util::stream::iter(chunks).map(move |chunk| {
        let _held = &permit;
        chunk
    });
    (content_type, axum::body::Body::from_stream(stream)).into_response()
}

/// Responses up to this size are sent whole; larger ones in chunks of
/// it, holding the query's slot until sent.
const STREAMED_FROM_BYTES: usize = 64 * 1024;

/// `response` as JSON, or `None` when it would be over `max` bytes (the
/// serialisation stops there: nothing larger is ever built).
fn capped_json(response: &async_graphql::Response, max: usize) -> Option<Vec<u8>> {
    struct Capped {
        bytes: Vec<u8>,
        max: usize,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.bytes.len() + buf.len() > self.max {
                return Err(std::io::Error::other("over the response budget"));
            }
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped {
        bytes: Vec::new(),
        max,
    };
    serde_json::to_writer(&mut out, response).ok()?;
    Some(out.bytes)
}

async fn websocket(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    protocol: Result<GraphQLProtocol, StatusCode>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return refuse(
                &state,
                rejection.status(),
                "NOT_A_WEBSOCKET",
                format!(
                    "{}: subscribe over a WebSocket (graphql-transport-ws or graphql-ws)",
                    rejection.body_text()
                ),
            )
        }
    };
    let Ok(protocol) = protocol else {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "UNKNOWN_SUBPROTOCOL",
            "ask for the `graphql-transport-ws` or `graphql-ws` subprotocol (Sec-WebSocket-Protocol)",
        );
    };
    let schema = state.graphql.handle.current();
    let shutdown = state.graphql.runtime.shutdown.clone();
    let authenticator = state.auth.clone();
    let secret = state.graphql.runtime.secret.clone();
    let denials = state.auth.denials();
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| auth::bearer(v.as_bytes()).ok())
        .map(str::to_string);
    let header_identity = identity.map(|Extension(identity)| (identity, header_token));
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(MAX_BODY_BYTES)
        .on_upgrade(move |socket| {
            async move {
                tokio::select! {
                    _ = GraphQLWebSocket::new(socket, schema, protocol)
                        .on_connection_init(move |payload| async move {
                            let (identity, token) =
                                init_identity(&authenticator, header_identity, &payload)
                                    .map_err(|failure| {
                                        async_graphql::Error::new(failure.to_string()).extend_with(
                                            |_, e| e.set("code", "UNAUTHENTICATED"),
                                        )
                                    })?;
                            let mut caller = Caller::new(identity, secret, denials);
                            let slots = Arc::new(ConnectionSlots::default());
                            // Subscriptions outlive requests: they re-check
                            // the token, so revoking it ends them.
                            if let Some(token) = token {
                                caller = caller.revalidated_by(Arc::new(move || {
                                    authenticator.token_still_valid(&token)
                                }));
                            }
                            let mut data = async_graphql::Data::default();
                            data.insert(caller);
                            data.insert(slots);
                            Ok(data)
                        })
                        .serve() => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            .instrument(info_span!("graphql_ws"))
        })
}

/// The caller of a WebSocket: a token in the `connection_init` payload
/// (`{"Authorization": "Bearer <token>"}` or `{"token": "<token>"}`) wins,
/// then the identity the upgrade request authenticated, then the anonymous
/// role. A refusal closes the connection. Also returns the token, so the
/// connection's subscriptions can re-check it.
fn init_identity(
    authenticator: &auth::Authenticator,
    header_identity: Option<(Identity, Option<String>)>,
    payload: &serde_json::Value,
) -> Result<(Identity, Option<String>), AuthFailure> {
    let field = |name: &str| payload.get(name).and_then(serde_json::Value::as_str);
    let token = match field("Authorization").or_else(|| field("authorization")) {
        Some(header) => Some(auth::bearer(header.as_bytes())?),
        None => field("token"),
    };
    if let Some(token) = token {
        let identity = authenticator.authenticate_token(token)?;
        return Ok((identity, Some(token.to_string())));
    }
    if let Some(found) = header_identity {
        return Ok(found);
    }
    Ok((authenticator.authenticate(None, None)?, None))
}

async fn graphiql(State(state): State<ApiState>) -> Response {
    if !state.graphql.graphiql {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "errors": [{ "message": "GraphiQL is off (http.graphiql = false); POST queries to /graphql", "extensions": { "code": "GRAPHIQL_OFF" } }] })),
        )
            .into_response();
    }
    Html(GRAPHIQL_PAGE).into_response()
}

/// GraphiQL from a CDN, pointed at this node (queries over POST,
/// subscriptions over graphql-transport-ws). The browser needs the CDN;
/// the node serves nothing but this page.
const GRAPHIQL_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>meshlet GraphiQL</title>
  <style>body { margin: 0; height: 100vh; } #graphiql { height: 100vh; }</style>
  <link rel="stylesheet" href="https://unpkg.com/graphiql@3/graphiql.min.css">
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <script crossorigin src="https://unpkg.com/react@18/umd/react.production.min.js"></script>
  <script crossorigin src="https://unpkg.com/react-dom@18/umd/react-dom.production.min.js"></script>
  <script crossorigin src="https://unpkg.com/graphiql@3/graphiql.min.js"></script>
  <script>
    const ws = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql/ws';
    const fetcher = GraphiQL.createFetcher({ url: '/graphql', subscriptionUrl: ws });
    ReactDOM.createRoot(document.getElementById('graphiql'))
      .render(React.createElement(GraphiQL, { fetcher, defaultQuery: '{ products { name owner freshness { stale } } }' }));
  </script>
</body>
</html>
"#;
