//! HTTP push (`POST /ingest/{product}`), the quarantine (list, replay) and
//! the Prometheus `/metrics`.
//!
//! A push is answered only after its records are durable (200), or refused
//! whole with every bad record and reason (400), or refused for size (413)
//! before it is read further. A store that cannot write answers 503 with
//! `Retry-After`: nothing of the request was acknowledged.
//!
//! A push may carry an `Idempotency-Key` header (1 to
//! [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII characters, unique per
//! request and product): the key is remembered in the product's dedupe
//! window, in the same store transaction as the records, so a resend of
//! the request — after a timeout, or a crash before the answer — is
//! applied once and answered like the first time (200, the same counts,
//! `Idempotent-Replayed: true`). The same key with another body is a
//! client error (422), not a resend.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ApiState;
use crate::ingest::{replay, PushRefusal};
use crate::policy::access::{Identity, View};
use crate::product::PayloadFormat;
use crate::store::Resend;

pub(super) fn routes(max_body_bytes: usize) -> Router<ApiState> {
    Router::new()
        .route(
            "/ingest/{product}",
            post(push).layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .route("/quarantine/{product}", get(list_quarantine))
        .route("/quarantine/{product}/replay", post(replay_quarantine))
}

/// Routes outside the authentication layer (see `super::auth`).
pub(super) fn open_routes() -> Router<ApiState> {
    Router::new().route("/metrics", get(metrics))
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

/// The caller's view of `product`, or the response that ends the request:
/// 404 for an unknown product, 403 when `allowed` says no.
#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn authorize(
    state: &ApiState,
    identity: &Identity,
    product: &str,
    action: &str,
    allowed: impl Fn(&View) -> bool,
) -> Result<View, Response> {
    let products = state.ingestor.products();
    let Some(definition) = products.get(product) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no product named `{product}`"),
        ));
    };
    let view = View::of(&identity.role, definition, &state.graphql.runtime.secret);
    if !allowed(&view) {
        state
            .auth
            .denials()
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "role `{}` may not {action} product `{product}`",
                identity.role
            ),
        ));
    }
    Ok(view)
}

/// NDJSON when the content type says so, else JSON (an object or an array
/// of objects).
fn format_of(headers: &HeaderMap) -> PayloadFormat {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.contains("ndjson")
        || content_type.contains("jsonl")
        || content_type.contains("json-seq")
    {
        PayloadFormat::Ndjson
    } else {
        PayloadFormat::Json
    }
}

/// The longest `Idempotency-Key` accepted (a UUID is 36).
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's idempotency, from its `Idempotency-Key` header: the
/// key's fingerprint (the window holds fingerprints) and a hash of the
/// body and its format (to tell a resend from a reused key).
#[allow(clippy::result_large_err)] // the error is the response itself
fn idempotency_of(
    headers: &HeaderMap,
    format: PayloadFormat,
    body: &[u8],
) -> Result<Option<crate::store::Idempotency>, Response> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !key.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters (a UUID, say), one per request"),
        ));
    }
    let mut keyed = b"meshlet/http-push-idempotency-key\0".to_vec();
    keyed.extend_from_slice(key);
    let format_tag: &[u8] = match format {
        PayloadFormat::Ndjson => b"ndjson\0",
        _ => b"json\0",
    };
    let mut request = xxhash_rust::xxh3::Xxh3::new();
    request.update(format_tag);
    request.update(body);
    Ok(Some(crate::store::Idempotency {
        key: xxhash_rust::xxh3::xxh3_128(&keyed).to_be_bytes(),
        request: request.digest(),
    }))
}

#[derive(Serialize)]
struct RecordError {
    /// Position of the record in the request (array element, NDJSON line
    /// counted from 0); absent when the body as a whole is unreadable.
    index: Option<usize>,
    errors: Vec<String>,
}

async fn push(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(product): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(refused) = authorize(&state, &identity, &product, "write", |v| v.write) {
        return refused;
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return super::closing(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body over the {}-byte limit (ingest.max_http_body_bytes); split it into smaller batches",
                    state.max_http_body_bytes
                ),
            ))
        }
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let format = format_of(&headers);
    let idempotency = match idempotency_of(&headers, format, &body) {
        Ok(idempotency) => idempotency,
        Err(refused) => return refused,
    };
    let pending = match state
        .ingestor
        .submit_push(
            &product,
            &body,
            format,
            Some(identity.name.clone()),
            idempotency,
        )
        .await
    {
        Ok(pending) => pending,
        Err(PushRefusal::UnknownProduct(name)) => {
            return error(StatusCode::NOT_FOUND, format!("no product named `{name}`"))
        }
        Err(PushRefusal::NotPushable(name)) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("product `{name}` takes no HTTP push: add `- http: {{}}` to its sources"),
            )
        }
        Err(PushRefusal::Invalid(invalid)) => {
            let records: Vec<RecordError> = invalid
                .iter()
                .map(|bad| RecordError {
                    index: bad.index,
                    errors: bad.reasons.iter().map(|r| r.to_string()).collect(),
                })
                .collect();
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": format!("{} invalid record(s); nothing of this request was written", records.len()),
                    "records": records,
                })),
            )
                .into_response();
        }
    };
    let metrics = state.ingestor.metrics();
    match pending.wait().await {
        Ok(summary) => match summary.resend {
            None => (
                StatusCode::OK,
                Json(json!({
                    "accepted": summary.accepted,
                    "duplicates": summary.duplicates,
                })),
            )
                .into_response(),
            Some(Resend::Replayed(first)) => {
                metrics.push_replayed.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::OK,
                    [("idempotent-replayed", "true")],
                    Json(json!({
                        "accepted": first.accepted,
                        "duplicates": first.duplicates,
                    })),
                )
                    .into_response()
            }
            Some(Resend::Conflict) => {
                metrics.push_key_conflicts.fetch_add(1, Ordering::Relaxed);
                error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this Idempotency-Key was already used with another request body for this product; nothing of this request was written (use a new key per request)",
                )
            }
        },
        Err(err) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not written, retry later: {err}"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            response
        }
    }
}

#[derive(Deserialize)]
struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct QuarantineView {
    id: u64,
    quarantined_at: String,
    source: String,
    topic: Option<String>,
    index: Option<u32>,
    reasons: Vec<String>,
    /// The raw payload as text (invalid UTF-8 replaced), for reading.
    payload: String,
    payload_bytes: usize,
}

async fn list_quarantine(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(product): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    if let Err(refused) = authorize(
        &state,
        &identity,
        &product,
        "see the raw quarantined payloads of",
        View::may_see_quarantine,
    ) {
        return refused;
    }
    let limit = page.limit.unwrap_or(100).clamp(1, 1_000);
    let max_bytes = state.graphql.runtime.budgets.limits().max_response_bytes;
    let store = state.ingestor.store().clone();
    let listed = tokio::task::spawn_blocking(move || {
        let total = store.quarantine_count(&product)?;
        let listed = list_within(&store, &product, page.after, limit, max_bytes)?;
        Ok::<_, crate::store::StoreError>((total, listed))
    })
    .await;
    let budgets = &state.graphql.runtime.budgets;
    match listed {
        Ok(Ok((_, listed))) if listed.entries.is_empty() && listed.byte_limited => {
            budgets.responses_too_large.fetch_add(1, Ordering::Relaxed);
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the next quarantine entry alone is over the response limit of {max_bytes} bytes (api.max_response_bytes)"),
            )
        }
        Ok(Ok((total, listed))) => {
            if listed.byte_limited {
                budgets.responses_too_large.fetch_add(1, Ordering::Relaxed);
            }
            Json(json!({
                "total": total,
                "entries": listed.entries,
                "next_after": listed.next_after,
                "byte_limited": listed.byte_limited,
            }))
            .into_response()
        }
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        Err(join) => error(StatusCode::INTERNAL_SERVER_ERROR, join.to_string()),
    }
}

/// Entries read per store call while a listing fills its byte budget.
const LISTING_STEP: usize = 16;

/// Room kept in a listing's byte budget for the envelope around the
/// entries (`total`, `next_after`, ...).
const LISTING_ENVELOPE_BYTES: usize = 1024;

/// A page of the quarantine listing.
struct Listing {
    entries: Vec<QuarantineView>,
    /// The id to pass as `after` for the next page; `None` at the end.
    next_after: Option<u64>,
    /// The page stopped early at `api.max_response_bytes`.
    byte_limited: bool,
}

/// Up to `limit` entries after `after`, read a few at a time and stopping
/// before the answer would be over `max_bytes`: a page of large payloads
/// is cut short (with a cursor), never built whole.
fn list_within(
    store: &crate::store::Store,
    product: &str,
    mut after: Option<u64>,
    limit: usize,
    max_bytes: usize,
) -> Result<Listing, crate::store::StoreError> {
    let budget = max_bytes.saturating_sub(LISTING_ENVELOPE_BYTES);
    let mut listing = Listing {
        entries: Vec::new(),
        next_after: None,
        byte_limited: false,
    };
    let mut used = 0usize;
    while listing.entries.len() < limit {
        let step = LISTING_STEP.min(limit - listing.entries.len());
        let page = store.quarantine_list(product, after, step)?;
        let exhausted = page.len() < step;
        for e in page {
            let view = QuarantineView {
                id: e.id,
                quarantined_at: e.quarantined_at.to_string(),
                source: e.item.source,
                topic: e.item.topic,
                index: e.item.index,
                reasons: e.item.reasons,
                payload_bytes: e.item.payload.len(),
                payload: String::from_utf8_lossy(&e.item.payload).into_owned(),
            };
            let size = crate::api::graphql::budget::json_size(&view);
            if used + size + 1 > budget {
                listing.byte_limited = true;
                listing.next_after = after;
                return Ok(listing);
            }
            used += size + 1;
            after = Some(view.id);
            listing.entries.push(view);
        }
        if exhausted {
            return Ok(listing);
        }
    }
    // A full page: more may follow.
    listing.next_after = after;
    Ok(listing)
}

async fn replay_quarantine(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(product): Path<String>,
) -> Response {
    if let Err(refused) = authorize(
        &state,
        &identity,
        &product,
        "replay the quarantine of",
        |v| v.write && v.may_see_quarantine(),
    ) {
        return refused;
    }
    match replay::replay(&state.ingestor, &product).await {
        Ok(report) => Json(report).into_response(),
        Err(replay::ReplayError::UnknownProduct(name)) => {
            error(StatusCode::NOT_FOUND, format!("no product named `{name}`"))
        }
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::telemetry::expose::CONTENT_TYPE)],
        crate::telemetry::expose::render(NodeMetrics(state)),
    )
        .into_response()
}

/// One scrape of the node: every module's families, read when scraped.
struct NodeMetrics(ApiState);

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeMetrics")
    }
}

impl prometheus_client::collector::Collector for NodeMetrics {
    fn encode(
        &self,
        mut enc: crate::telemetry::expose::Encoder,
    ) -> crate::telemetry::expose::Encoded {
        let state = &self.0;
        encode_process(&mut enc)?;
        state.ingestor.metrics().encode_metrics(&mut enc)?;
        state.graphql.encode_metrics(&mut enc)?;
        state.tls_metrics.encode_metrics(&mut enc)?;
        state.http_metrics.encode_metrics(&mut enc)?;
        state.cors.encode_metrics(&mut enc)?;
        state.retention.encode_metrics(&mut enc)?;
        let store = state.ingestor.store();
        store.encode_dictionary_metrics(&mut enc)?;
        store.encode_journal_metrics(&mut enc)?;
        state.auth.encode_metrics(&mut enc)?;
        if let Some(sync) = &state.sync {
            sync.encode_metrics(&mut enc)?;
        }
        Ok(())
    }
}

/// Which build runs and since when: `meshlet_build_info` (value 1, the
/// facts in labels), `process_start_time_seconds`, and the allocator's
/// purge delay where the binary set it.
fn encode_process(
    enc: &mut crate::telemetry::expose::Encoder<'_>,
) -> crate::telemetry::expose::Encoded {
    crate::telemetry::expose::gauge_family(
        enc,
        "meshlet_build_info",
        "The running build (value 1).",
    )?
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1)?;
    crate::telemetry::expose::gauge(
        enc,
        "process_start_time_seconds",
        "When the node started (Unix seconds).",
        super::started_at(),
    )?;
    if let Some(delay_ms) = crate::memory::allocator_purge_delay_ms() {
        crate::telemetry::expose::gauge(
            enc,
            "meshlet_allocator_purge_delay_seconds",
            "How long freed heap pages wait before they go back to the kernel (MIMALLOC_PURGE_DELAY, in ms).",
            delay_ms as f64 / 1000.0,
        )?;
    }
    Ok(())
}
