//! The authentication layer: every route but `/livez`, `/readyz`,
//! `/metrics` and the console's static files (`/`, `/console/*`: the same
//! for every caller, no data; see `console`) passes through
//! [`require_identity`], which turns the request's credentials into an
//! [`Identity`] request extension or answers 401 with
//! `WWW-Authenticate: Bearer`.
//!
//! `/metrics` stays open on purpose: Prometheus scrapers rarely carry
//! tokens, and it holds counts, never values. Bind the listener to a
//! trusted interface if even counts are sensitive.
//!
//! GraphiQL's page (`GET /graphql` for a browser) is let through without
//! credentials too: it holds no data, and its token field sends the token
//! with every query (`graphql::graphiql`).
//!
//! The GraphQL WebSocket (`/graphql/ws`) is let through without
//! credentials, because browsers cannot set headers on a WebSocket: its
//! token then comes in the `connection_init` payload (see
//! `graphql::http`), and without one the anonymous role applies or the
//! connection is refused there.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiState;
use crate::policy::access::Identity;
use crate::policy::auth::AuthFailure;
use crate::policy::identity::PeerCertificate;

/// The path whose credentials may arrive after the upgrade.
pub(crate) const WEBSOCKET_PATH: &str = "/graphql/ws";

pub(crate) async fn require_identity(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let peer = request.extensions().get::<PeerCertificate>().cloned();
    if authorization.is_none() && peer.is_none() && request.uri().path() == WEBSOCKET_PATH {
        return next.run(request).await;
    }
    // GraphiQL's page: a browser cannot send a token with a page load;
    // the page holds no data and sends the token with every query.
    if authorization.is_none()
        && peer.is_none()
        && crate::api::graphql::is_graphiql_request(
            request.method(),
            request.uri().path(),
            request.uri().query(),
            request.headers(),
        )
    {
        return next.run(request).await;
    }
    match state.auth.authenticate(
        authorization.as_ref().map(HeaderValue::as_bytes),
        peer.as_ref(),
    ) {
        Ok(identity) => {
            request.extensions_mut().insert::<Identity>(identity);
            next.run(request).await
        }
        Err(failure) => unauthorized(failure),
    }
}

/// 401 with a GraphQL-shaped body (readable by GraphQL and REST clients
/// alike) that says what was wrong, never which tokens exist.
pub(crate) fn unauthorized(failure: AuthFailure) -> Response {
    let challenge = match failure {
        AuthFailure::Missing => "Bearer",
        _ => "Bearer error=\"invalid_token\"",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        Json(json!({ "errors": [{
            "message": failure.to_string(),
            "extensions": { "code": "UNAUTHENTICATED", "reason": failure.reason() }
        }] })),
    )
        .into_response()
}
