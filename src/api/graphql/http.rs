//! The GraphQL endpoints, GraphQL over HTTP: `POST /graphql` (queries
//! and mutations, `application/json` or a bare `application/graphql`
//! text), `GET /graphql` (queries in the URL parameters `query`,
//! `variables`, `operationName`, `extensions`; a mutation is refused with
//! 405; without a `query`, GraphiQL for `Accept: text/html` when
//! `http.graphiql` is on), and `GET /graphql/ws` (subscriptions over
//! graphql-transport-ws or the legacy graphql-ws, chosen by the client's
//! `Sec-WebSocket-Protocol`). Both GET and POST take automatic persisted
//! queries (`persisted.rs`) and go through the same limits and budgets.
//!
//! Answers are `application/json`, or `application/graphql-response+json`
//! when the client's `Accept` prefers it; in that media type a request
//! error (parse, validation, variable coercion) has status 400.
//!
//! A request that is not a GraphQL request (too large, not JSON, a batch)
//! is refused before execution with a status code and a GraphQL-shaped
//! body (`{"errors": [{"message", "extensions": {"code"}}]}`), so every
//! client error parser can read it. Execution errors follow GraphQL over
//! HTTP: status 200 and `errors` in the body (request errors without a
//! `data` entry).

use async_graphql::ErrorExtensions;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{info_span, Instrument};

use super::budget::{self, ConnectionSlots};
use super::limits::{self, MAX_BODY_BYTES};
use super::persisted::{Lookup, PersistedError};
use super::ws;
use super::Busy;
use crate::api::ApiState;
use crate::policy::access::{Caller, Identity};
use crate::policy::auth::{self, AuthFailure};
use futures_util::StreamExt;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/graphql",
            get(query_or_graphiql)
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

/// The media type of an answer, chosen by the request's `Accept`
/// (GraphQL over HTTP): `application/graphql-response+json` when the
/// client lists it before `application/json` (or `*/*`), else
/// `application/json` (also when `Accept` is missing).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Media {
    Json,
    GraphqlResponse,
}

impl Media {
    fn of(headers: &HeaderMap) -> Media {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for part in accept.split(',') {
            let kind = part.split(';').next().unwrap_or("").trim();
            if kind.eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON) {
                return Media::GraphqlResponse;
            }
            if ["application/json", "*/*", "application/*"]
                .iter()
                .any(|json| kind.eq_ignore_ascii_case(json))
            {
                return Media::Json;
            }
        }
        Media::Json
    }

    fn content_type(self) -> &'static str {
        match self {
            Media::Json => "application/json",
            Media::GraphqlResponse => GRAPHQL_RESPONSE_JSON,
        }
    }
}

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// The media type of a POST body, without parameters, lowercased.
fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

/// One GraphQL request as it came over HTTP, before persisted queries
/// are resolved: `query` is empty when only a persisted query's hash was
/// sent.
struct Incoming {
    query: String,
    variables: serde_json::Value,
    operation_name: Option<String>,
    extensions: serde_json::Value,
}

impl Incoming {
    /// From a POSTed JSON object (`query`, `variables`, `operationName`,
    /// `extensions`), each checked for its type.
    fn from_json(json: serde_json::Value) -> Result<Incoming, String> {
        let serde_json::Value::Object(mut fields) = json else {
            return Err("not a GraphQL request: expected a JSON object with a `query` string (and optionally `variables`, `operationName` and `extensions`)".into());
        };
        let extensions = object_or_null(fields.remove("extensions"), "extensions")?;
        let query = match fields.remove("query") {
            Some(serde_json::Value::String(query)) => query,
            None | Some(serde_json::Value::Null) if extensions.get("persistedQuery").is_some() => {
                String::new()
            }
            _ => return Err("not a GraphQL request: expected a JSON object with a `query` string (and optionally `variables`, `operationName` and `extensions`)".into()),
        };
        let variables = object_or_null(fields.remove("variables"), "variables")?;
        let operation_name = match fields.remove("operationName") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) => Some(name),
            Some(_) => return Err("`operationName` must be a string or null".into()),
        };
        Ok(Incoming {
            query,
            variables,
            operation_name,
            extensions,
        })
    }

    /// From GET parameters: `variables` and `extensions` are JSON texts.
    fn from_params(params: GetParams) -> Result<Incoming, String> {
        let json = |text: Option<String>, name: &str| match text {
            None => Ok(serde_json::Value::Null),
            Some(text) => {
                let value = serde_json::from_str(&text)
                    .map_err(|e| format!("the `{name}` parameter is not JSON: {e}"))?;
                object_or_null(Some(value), name)
            }
        };
        let extensions = json(params.extensions, "extensions")?;
        let variables = json(params.variables, "variables")?;
        let query = match params.query {
            Some(query) => query,
            None if extensions.get("persistedQuery").is_some() => String::new(),
            None => return Err("a GraphQL GET needs a `query` parameter (GraphiQL answers browsers: `Accept: text/html`)".into()),
        };
        Ok(Incoming {
            query,
            variables,
            operation_name: params.operation_name.filter(|name| !name.is_empty()),
            extensions,
        })
    }
}

fn object_or_null(
    value: Option<serde_json::Value>,
    name: &str,
) -> Result<serde_json::Value, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(serde_json::Value::Null),
        Some(value @ serde_json::Value::Object(_)) => Ok(value),
        Some(_) => Err(format!("`{name}` must be a JSON object or null")),
    }
}

/// The URL parameters of a GraphQL GET.
#[derive(serde::Deserialize)]
struct GetParams {
    query: Option<String>,
    variables: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    extensions: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Get,
    Post,
}

/// Resolves persisted queries and, for GET, refuses mutations (405: a GET
/// must not change anything); the executable request, or the refusal.
fn prepare(
    state: &ApiState,
    incoming: Incoming,
    method: Method,
) -> Result<async_graphql::Request, Box<Response>> {
    let query = match state
        .graphql
        .persisted
        .resolve(&incoming.query, &incoming.extensions)
    {
        Ok(Lookup::Absent) => incoming.query,
        Ok(Lookup::Found(text)) => text.to_string(),
        Ok(Lookup::NotFound) => {
            // Apollo's PersistedQueryLink reads this message or code and
            // resends the query with its hash.
            return Err(Box::new((
                StatusCode::OK,
                Json(json!({ "errors": [{ "message": "PersistedQueryNotFound", "extensions": { "code": "PERSISTED_QUERY_NOT_FOUND" } }] })),
            )
                .into_response()));
        }
        Err(err) => {
            let code = match err {
                PersistedError::HashMismatch { .. } => "PERSISTED_QUERY_HASH_MISMATCH",
                PersistedError::Malformed(_) => "BAD_REQUEST",
            };
            return Err(Box::new(refuse(
                state,
                StatusCode::BAD_REQUEST,
                code,
                err.to_string(),
            )));
        }
    };
    if method == Method::Get && is_mutation(&query, incoming.operation_name.as_deref()) {
        let mut refused = refuse(
            state,
            StatusCode::METHOD_NOT_ALLOWED,
            "MUTATION_OVER_GET",
            "mutations are only accepted over POST: a GET must not change anything",
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return Err(Box::new(refused));
    }
    let mut request = async_graphql::Request::new(query)
        .variables(async_graphql::Variables::from_json(incoming.variables));
    if let Some(name) = incoming.operation_name {
        request = request.operation_name(name);
    }
    Ok(request)
}

/// The operation `operation_name` selects (or the only one) is a
/// mutation. A text that does not parse is left to the executor, which
/// answers with the parse error.
fn is_mutation(query: &str, operation_name: Option<&str>) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    let ty = match &document.operations {
        DocumentOperations::Single(operation) => Some(operation.node.ty),
        DocumentOperations::Multiple(operations) => match operation_name {
            Some(name) => operations
                .iter()
                .find(|(key, _)| key.as_str() == name)
                .map(|(_, operation)| operation.node.ty),
            None if operations.len() == 1 => operations.values().next().map(|o| o.node.ty),
            None => None,
        },
    };
    ty == Some(OperationType::Mutation)
}

/// `POST /graphql`: JSON (`application/json`) or a bare query text
/// (`application/graphql`).
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
    let incoming = match content_type(&headers).as_deref() {
        Some("application/json") | Some(GRAPHQL_RESPONSE_JSON) => {
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
            match Incoming::from_json(json) {
                Ok(incoming) => incoming,
                Err(message) => {
                    return refuse(&state, StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
                }
            }
        }
        Some("application/graphql") => match String::from_utf8(body.to_vec()) {
            Ok(query) => Incoming {
                query,
                variables: serde_json::Value::Null,
                operation_name: None,
                extensions: serde_json::Value::Null,
            },
            Err(_) => {
                return refuse(
                    &state,
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "an `application/graphql` body must be UTF-8 query text",
                )
            }
        },
        _ => {
            return refuse(
                &state,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_CONTENT_TYPE",
                "send GraphQL requests as `content-type: application/json` with a body like {\"query\": \"{ products { name } }\"} (or the bare query as `application/graphql`)",
            )
        }
    };
    let request = match prepare(&state, incoming, Method::Post) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    answer(state, identity, request, Media::of(&headers)).await
}

/// `GET /graphql`: a query (never a mutation) in the URL parameters; with
/// no `query` parameter, GraphiQL for a browser (`Accept: text/html`).
async fn query_or_graphiql(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    params: Result<Query<GetParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => {
            return refuse(
                &state,
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                rejection.body_text(),
            )
        }
    };
    if params.query.is_none()
        && params.extensions.is_none()
        && super::graphiql::wants_html(&headers)
    {
        return super::graphiql::page(&state);
    }
    let incoming = match Incoming::from_params(params) {
        Ok(incoming) => incoming,
        Err(message) => return refuse(&state, StatusCode::BAD_REQUEST, "BAD_REQUEST", message),
    };
    let request = match prepare(&state, incoming, Method::Get) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    answer(state, identity, request, Media::of(&headers)).await
}

/// Runs `request` for the caller within its budget and writes the answer
/// in `media`. A request error (the document does not parse or validate,
/// the variables do not coerce: no data, no error with a path) has no
/// `data` entry, and in `application/graphql-response+json` status 400.
async fn answer(
    state: ApiState,
    identity: Option<Extension<Identity>>,
    request: async_graphql::Request,
    media: Media,
) -> Response {
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
    let content_type = [(header::CONTENT_TYPE, media.content_type())];
    if is_request_error(&response) {
        let status = match media {
            Media::Json => StatusCode::OK,
            Media::GraphqlResponse => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::to_vec(&json!({ "errors": response.errors })).unwrap_or_default();
        return (status, content_type, body).into_response();
    }
    let body = match capped_json(&response, max_bytes) {
        Some(body) => body,
        None => {
            budgets.responses_too_large.fetch_add(1, Ordering::Relaxed);
            let err = budget::too_large(max_bytes).into_server_error(Default::default());
            let refused = async_graphql::Response::from_errors(vec![err]);
            serde_json::to_vec(&refused).unwrap_or_default()
        }
    };
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

/// The request failed before execution: errors, no data, and no error
/// from a field (those carry a `path`). A field error that nulls the
/// whole `data` is an execution result, not a request error.
fn is_request_error(response: &async_graphql::Response) -> bool {
    !response.errors.is_empty()
        && response.data == async_graphql::Value::Null
        && response.errors.iter().all(|e| e.path.is_empty())
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
    let Some(protocol) = ws::negotiate(&headers) else {
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
    // The handshake names exactly the protocol that will be spoken.
    upgrade
        .protocols([protocol.sec_websocket_protocol()])
        .max_message_size(MAX_BODY_BYTES)
        .on_upgrade(move |socket| {
            async move {
                let on_init = move |payload: serde_json::Value| async move {
                    let (identity, token) =
                        init_identity(&authenticator, header_identity, &payload).map_err(
                            |failure| {
                                async_graphql::Error::new(failure.to_string())
                                    .extend_with(|_, e| e.set("code", "UNAUTHENTICATED"))
                            },
                        )?;
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
                };
                tokio::select! {
                    _ = ws::serve(socket, schema, protocol, on_init) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            .instrument(info_span!(
                "graphql_ws",
                protocol = protocol.sec_websocket_protocol()
            ))
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
