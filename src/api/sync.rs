//! `POST /sync/v1`: envelopes from edges, in aggregator mode. The answer
//! (200 with what was applied) comes only once it is durable; a malformed
//! envelope gets 400 (retrying cannot fix it), a store that cannot write
//! 503. A node not in aggregator mode answers 404.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;
use crate::sync::ApplyError;

/// Largest compressed envelope accepted.
const MAX_BODY: usize = 32 << 20;

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route(
        "/sync/v1",
        post(receive).layer(DefaultBodyLimit::max(MAX_BODY)),
    )
}

async fn receive(State(state): State<ApiState>, body: Bytes) -> Response {
    let Some(receiver) = state.sync.as_ref().and_then(|s| s.receiver.clone()) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "this node is not an aggregator (set aggregator.enabled)" })),
        )
            .into_response();
    };
    match receiver.apply_bytes(&body).await {
        Ok(applied) => Json(applied).into_response(),
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
