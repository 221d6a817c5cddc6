//! `POST /sync/v1`: envelopes from edges, in aggregator mode. The answer
//! (200 with what was applied) comes only once it is durable; a malformed
//! envelope gets 400 (retrying cannot fix it), a store that cannot write
//! 503, records of a product this node does not know 409 with code
//! `unknown_product` (the edge keeps them and retries). A node not in
//! aggregator mode answers 404.
//!
//! Both sit behind the API's authentication: pushing needs the built-in
//! `edge` role (or `admin`) — give each edge a token made with
//! `meshlet token create --role edge --name <node>` and set it as
//! `upstreams.<name>.token` on the edge.
//!
//! `GET /sync/v1/nodes`: the edges this aggregator heard from since it
//! started (`id`, `last_seen`, `lag_seconds`, `pending`).
//!
//! `GET /sync/v1/digest/<origin>/<product>`: the digest of what this node
//! holds of edge `origin` in `product` (`{"buckets": [{bucket, xor,
//! count}]}`, non-empty buckets only); `?bucket=<0..255>` lists that
//! bucket's keys and leaf hashes (`{"leaves": [{entity, hash}]}`). The
//! edge compares them with its own (`meshlet sync verify`, `sync::digest`).
//! Same roles as pushing (`edge`, `admin`): the answer holds keys as the
//! edge sent them and hashes, never values.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;
use crate::policy::access::{may_push_sync, Identity};
use crate::sync::ApplyError;

/// Largest compressed envelope accepted.
const MAX_BODY: usize = 32 << 20;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/sync/v1",
            post(receive).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route("/sync/v1/nodes", get(nodes))
        .route("/sync/v1/reference/{product}", get(reference))
        .route("/sync/v1/digest/{origin}/{product}", get(digest))
}

#[derive(serde::Deserialize)]
struct DigestQuery {
    bucket: Option<u16>,
}

/// `GET /sync/v1/digest/<origin>/<product>[?bucket=n]` (see the module doc).
async fn digest(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    axum::extract::Path((origin, product)): axum::extract::Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<DigestQuery>,
) -> Response {
    let Some(sync) = state.sync.as_ref().filter(|s| s.receiver.is_some()) else {
        return not_aggregator();
    };
    if let Some(refused) = refuse_unless_sync_role(&state, &identity, "read sync digests") {
        return refused;
    }
    let bucket = match query.bucket.map(u8::try_from) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "bucket: expected 0 to 255" })),
            )
                .into_response()
        }
    };
    let store = sync.store.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let scope = crate::store::DigestScope::Held(&origin);
        match bucket {
            None => store
                .digest_buckets(scope, &product)
                .map(|buckets| json!({ "buckets": buckets })),
            Some(b) => store
                .digest_leaves(scope, &product, b)
                .map(|leaves| json!({ "leaves": leaves })),
        }
    })
    .await;
    match answer {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("digest task: {e}") })),
        )
            .into_response(),
    }
}

/// The longest a reference long-poll is held.
const MAX_REFERENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

#[derive(serde::Deserialize)]
struct ReferenceQuery {
    #[serde(default)]
    after: u64,
    /// e.g. `20s`; default and most [`MAX_REFERENCE_WAIT`].
    wait: Option<String>,
}

/// `GET /sync/v1/reference/<product>?after=<revision>&wait=20s`: the
/// reference entries of `product` after `after` (MessagePack
/// [`crate::sync::reference::ReferencePage`]), at once when there are
/// some, else after `wait` with none. Needs the `edge` (or `admin`) role;
/// 404 on a node that publishes no reference data.
async fn reference(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    axum::extract::Path(product): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<ReferenceQuery>,
) -> Response {
    let Some(sync) = state.sync.clone() else {
        return no_reference();
    };
    if let Some(refused) = refuse_unless_sync_role(&state, &identity, "read reference data") {
        return refused;
    }
    let valid = !product.is_empty()
        && product.len() <= 63
        && product
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("`{}` is not a product name", product.chars().take(80).collect::<String>()) })),
        )
            .into_response();
    }
    let wait = match query.wait.as_deref().map(humantime::parse_duration) {
        None => MAX_REFERENCE_WAIT,
        Some(Ok(w)) => w.min(MAX_REFERENCE_WAIT),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("wait: {e}") })),
            )
                .into_response()
        }
    };
    match sync.reference_page(&product, query.after, wait).await {
        None => no_reference(),
        Some(Ok(page)) => match rmp_serde::to_vec_named(&page) {
            Ok(body) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    crate::sync::reference::PAGE_CONTENT_TYPE,
                )],
                body,
            )
                .into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response(),
        },
        Some(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

fn no_reference() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "this node publishes no reference data (no upstream with publish = \"reference\" on NATS)" })),
    )
        .into_response()
}

/// The `edge`/`admin` gate of every sync endpoint: `None` when the role
/// may, else the 403 naming what it may not do (and one more denial).
fn refuse_unless_sync_role(state: &ApiState, identity: &Identity, what: &str) -> Option<Response> {
    if may_push_sync(&identity.role) {
        return None;
    }
    state
        .auth
        .denials()
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let error = format!(
        "role `{}` may not {what} (needs `edge` or `admin`)",
        identity.role
    );
    Some((StatusCode::FORBIDDEN, Json(json!({ "error": error }))).into_response())
}

fn not_aggregator() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "this node is not an aggregator (set aggregator.enabled)" })),
    )
        .into_response()
}

async fn nodes(State(state): State<ApiState>) -> Response {
    match state.sync.as_ref().and_then(|s| s.receiver.clone()) {
        Some(receiver) => Json(json!({ "nodes": receiver.nodes() })).into_response(),
        None => not_aggregator(),
    }
}

async fn receive(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    body: Bytes,
) -> Response {
    let Some(receiver) = state.sync.as_ref().and_then(|s| s.receiver.clone()) else {
        return not_aggregator();
    };
    if let Some(refused) = refuse_unless_sync_role(&state, &identity, "push sync envelopes") {
        return refused;
    }
    match receiver.apply_bytes(&body).await {
        Ok(applied) => Json(applied).into_response(),
        // Not applied and not acknowledged: the edge keeps the records and
        // resends them once a definition of the product is loaded here.
        Err(e @ ApplyError::UnknownProduct { .. }) => {
            let product = match &e {
                ApplyError::UnknownProduct { product, .. } => product.clone(),
                _ => String::new(),
            };
            (
                StatusCode::CONFLICT,
                Json(json!({
                    "error": e.to_string(),
                    "code": crate::sync::UNKNOWN_PRODUCT,
                    "product": product,
                })),
            )
                .into_response()
        }
        Err(ApplyError::Envelope(e)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
