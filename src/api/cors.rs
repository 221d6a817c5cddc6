//! Cross-origin access for browser apps (`[http.cors] allow_origins`,
//! default none): which pages on other origins may call the API and open
//! the subscription WebSocket.
//!
//! The layer sits outside authentication, since a browser's preflight
//! (`OPTIONS` with `Access-Control-Request-Method`) carries no
//! credentials. For an allowed origin it answers the preflight (204, the
//! methods and headers GraphQL clients send, cached 10 minutes) and adds
//! `Access-Control-Allow-Origin` to every answer; a preflight from any
//! other origin gets 403. A WebSocket upgrade whose `Origin` is neither
//! the node's own (same host) nor allowed is refused with 403 before the
//! upgrade: browsers do not apply CORS to WebSockets, so the node checks
//! the origin itself. Clients that send no `Origin` (not browsers) are
//! not affected. Refusals are counted in `meshlet_http_cors_refused_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiState;

/// The origins allowed, and the refusals counted.
#[derive(Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
    refused_preflights: AtomicU64,
    refused_websockets: AtomicU64,
}

impl Cors {
    /// From `http.cors.allow_origins` (`"*"`: any origin).
    pub fn new(allow_origins: &[String]) -> Cors {
        Cors {
            any: allow_origins.iter().any(|o| o == "*"),
            origins: allow_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            ..Cors::default()
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// `meshlet_http_cors_refused_total` for `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        let mut f = crate::telemetry::expose::counter_family(
            enc,
            "meshlet_http_cors_refused_total",
            "Browser requests refused for their Origin (not in http.cors.allow_origins): CORS preflights and WebSocket upgrades.",
        )?;
        for (kind, counter) in [
            ("preflight", &self.refused_preflights),
            ("websocket", &self.refused_websockets),
        ] {
            f.sample(&[("kind", kind)], counter.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// `Origin` names the host the request was sent to (the node's own page).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

fn refused(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "errors": [{ "message": message, "extensions": { "code": "ORIGIN_NOT_ALLOWED" } }] })),
    )
        .into_response()
}

/// The middleware (outermost, before authentication).
pub(crate) async fn layer(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let cors: &Arc<Cors> = &state.cors;
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return next.run(request).await;
    };
    let allowed = cors.allows(&origin);
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade && !allowed && !same_origin(&origin, request.headers()) {
        cors.refused_websockets.fetch_add(1, Ordering::Relaxed);
        return refused(format!(
            "WebSocket from origin {origin} refused: add it to http.cors.allow_origins"
        ));
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if !allowed {
            cors.refused_preflights.fetch_add(1, Ordering::Relaxed);
            return refused(format!(
                "cross-origin requests from {origin} are not allowed: add it to http.cors.allow_origins"
            ));
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow(headers, &origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, accept"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return response;
    }
    let mut response = next.run(request).await;
    if allowed {
        allow(response.headers_mut(), &origin);
    }
    response
}

fn allow(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_any() {
        let cors = Cors::new(&["https://app.example.com/".to_string()]);
        assert!(cors.allows("https://app.example.com"));
        assert!(cors.allows("HTTPS://APP.example.com"));
        assert!(!cors.allows("https://app.example.com.evil.net"));
        assert!(!cors.allows("http://app.example.com"));
        assert!(Cors::new(&["*".to_string()]).allows("https://x.y"));
        assert!(!Cors::new(&[]).allows("https://x.y"));
    }

    #[test]
    fn the_nodes_own_page_is_same_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("gw.local:8080"));
        assert!(same_origin("http://gw.local:8080", &headers));
        assert!(!same_origin("http://evil.net", &headers));
        assert!(!same_origin("http://gw.local:8080", &HeaderMap::new()));
    }
}
