//! GraphiQL, served whole by the node: the page at `GET /graphql` (for a
//! browser: `Accept: text/html`, no `query` parameter) and its assets at
//! `GET /graphql/assets/<name>`, embedded in the binary, so it works on a
//! gateway with no route to the internet (it used to load React and
//! GraphiQL from a public CDN and showed only "Loading GraphiQL…").
//!
//! Assets: the UMD bundles of graphiql 3.8.3, react and react-dom 18.3.1
//! and graphql-ws 6.4.2 (subscriptions), minified and zstd-compressed by
//! `graphiql/vendor.sh` (committed .zst files): 672 KiB (688,020 bytes) in the binary. A browser that accepts `zstd` (Chromium
//! 123+, Firefox 126+) gets the bytes as embedded; any other client gets
//! them decompressed per request (at most 1.5 MiB, the largest asset).
//! The names carry the versions, so they are cached for a year.
//!
//! Token: a browser cannot put a bearer token on a page load, so the page
//! and its assets are served without credentials (they hold no data;
//! `api::auth` lets exactly these requests through, see
//! [`is_open_request`]). The page has a token field, kept in the tab's
//! `sessionStorage` (gone when the tab closes), sent as `Authorization:
//! Bearer` on every query and as the `connection_init` payload of
//! subscriptions; changing it reloads the schema. Every query still goes
//! through the authentication layer as before.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::api::ApiState;

/// One embedded asset: its name under `/graphql/assets/`, its media type,
/// and its bytes, zstd-compressed.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    zstd: &'static [u8],
}

#[cfg(feature = "graphiql")]
const ASSETS: [Asset; 5] = [
    Asset {
        name: "react-18.3.1.js",
        media_type: "text/javascript; charset=utf-8",
        zstd: include_bytes!("graphiql/react-18.3.1.js.zst"),
    },
    Asset {
        name: "react-dom-18.3.1.js",
        media_type: "text/javascript; charset=utf-8",
        zstd: include_bytes!("graphiql/react-dom-18.3.1.js.zst"),
    },
    Asset {
        name: "graphql-ws-6.4.2.js",
        media_type: "text/javascript; charset=utf-8",
        zstd: include_bytes!("graphiql/graphql-ws-6.4.2.js.zst"),
    },
    Asset {
        name: "graphiql-3.8.3.js",
        media_type: "text/javascript; charset=utf-8",
        zstd: include_bytes!("graphiql/graphiql-3.8.3.js.zst"),
    },
    Asset {
        name: "graphiql-3.8.3.css",
        media_type: "text/css; charset=utf-8",
        zstd: include_bytes!("graphiql/graphiql-3.8.3.css.zst"),
    },
];

/// A build without the `graphiql` feature has no page and no assets; it
/// says so instead (the setting `http.graphiql` stays valid, so one
/// configuration serves every build).
#[cfg(not(feature = "graphiql"))]
const ASSETS: [Asset; 0] = [];

/// Where the assets are served.
pub(crate) const ASSETS_PATH: &str = "/graphql/assets/";

/// The routes that need no credentials: the assets (the page itself is
/// `GET /graphql`, shared with queries; see [`is_open_request`]).
pub(crate) fn open_routes() -> Router<ApiState> {
    Router::new().route("/graphql/assets/{name}", get(asset))
}

/// Whether a request is for the page or an asset, which the
/// authentication layer lets through without credentials: a `GET` of
/// `/graphql` that a browser sends for the page (`Accept: text/html`, no
/// `query` or `extensions` parameter — exactly when `http.rs` answers
/// with the page), or of an asset.
pub(crate) fn is_open_request(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> bool {
    if method != Method::GET {
        return false;
    }
    if path.starts_with(ASSETS_PATH) {
        return true;
    }
    path == "/graphql" && !has_operation(query) && wants_html(headers)
}

/// A `query` or `extensions` URL parameter: a GraphQL request, not the page.
fn has_operation(query: Option<&str>) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .any(|name| name == "query" || name == "extensions")
}

/// The request is a browser's page load: `Accept` lists `text/html`.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|part| {
                part.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("text/html")
            })
        })
}

fn off() -> Response {
    let message = if cfg!(feature = "graphiql") {
        "GraphiQL is off (http.graphiql = false); POST queries to /graphql"
    } else {
        "GraphiQL is not in this build (built without the cargo feature `graphiql`); POST queries to /graphql"
    };
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({ "errors": [{ "message": message, "extensions": { "code": "GRAPHIQL_OFF" } }] }),
        ),
    )
        .into_response()
}

/// The page, or 404 when GraphiQL is off.
pub(crate) fn page(state: &ApiState) -> Response {
    if !state.graphql.graphiql || !cfg!(feature = "graphiql") {
        return off();
    }
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn asset(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.graphql.graphiql || !cfg!(feature = "graphiql") {
        return off();
    }
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "errors": [{ "message": format!("no GraphiQL asset `{name}`"), "extensions": { "code": "NOT_FOUND" } }] })),
        )
            .into_response();
    };
    let common = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.media_type),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ),
        (header::VARY, HeaderValue::from_static("accept-encoding")),
    ];
    if accepts_zstd(&headers) {
        return (
            common,
            [(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"))],
            asset.zstd,
        )
            .into_response();
    }
    match zstd::stream::decode_all(asset.zstd) {
        Ok(bytes) => (common, bytes).into_response(),
        Err(err) => {
            tracing::error!(asset = asset.name, %err, "embedded GraphiQL asset does not decompress");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("zstd") && !refused
        })
}

/// GraphiQL pointed at this node (queries over POST, subscriptions over
/// graphql-transport-ws), with the token field.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>meshlet GraphiQL</title>
  <style>
    body { margin: 0; height: 100vh; display: flex; flex-direction: column; font-family: system-ui, sans-serif; }
    #bar { display: flex; gap: .5em; align-items: center; padding: .3em .6em; border-bottom: 1px solid #ddd; font-size: 14px; }
    #bar input { flex: 1; max-width: 40em; font-family: monospace; }
    #graphiql { flex: 1; min-height: 0; }
  </style>
  <link rel="stylesheet" href="/graphql/assets/graphiql-3.8.3.css">
</head>
<body>
  <form id="bar" autocomplete="off">
    <label for="token">API token</label>
    <input id="token" name="token" type="password" placeholder="mlt_… (kept in this tab only; sent as Authorization: Bearer)">
    <button type="submit">Use</button>
  </form>
  <div id="graphiql">Loading GraphiQL…</div>
  <script src="/graphql/assets/react-18.3.1.js"></script>
  <script src="/graphql/assets/react-dom-18.3.1.js"></script>
  <script src="/graphql/assets/graphql-ws-6.4.2.js"></script>
  <script src="/graphql/assets/graphiql-3.8.3.js"></script>
  <script>
    (function () {
      const KEY = 'meshlet.token';
      const input = document.getElementById('token');
      input.value = sessionStorage.getItem(KEY) || '';
      const ws = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql/ws';
      const root = ReactDOM.createRoot(document.getElementById('graphiql'));
      let wsClient = null;
      function render() {
        const token = input.value.trim();
        if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
        const auth = token ? { Authorization: 'Bearer ' + token } : {};
        if (wsClient) wsClient.dispose();
        wsClient = graphqlWs.createClient({ url: ws, connectionParams: auth, lazy: true });
        const fetcher = GraphiQL.createFetcher({ url: '/graphql', headers: auth, wsClient });
        // A new key: GraphiQL starts over, and loads the schema with the token.
        root.render(React.createElement(GraphiQL, {
          key: token, fetcher, defaultQuery: '{ products { name owner freshness { stale } } }',
        }));
      }
      document.getElementById('bar').addEventListener('submit', function (e) { e.preventDefault(); render(); });
      render();
    })();
  </script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "graphiql")]
    #[test]
    fn every_asset_decompresses_and_the_page_names_them_all() {
        for asset in &ASSETS {
            let bytes = zstd::stream::decode_all(asset.zstd).expect("decompresses");
            assert!(bytes.len() > 1000, "{}", asset.name);
            assert!(
                PAGE.contains(&format!("{ASSETS_PATH}{}", asset.name)),
                "{}",
                asset.name
            );
        }
        assert!(
            !PAGE.contains("https://"),
            "the page loads nothing from elsewhere"
        );
    }

    #[test]
    fn only_the_page_and_the_assets_are_open() {
        let html = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT,
                HeaderValue::from_str(accept).expect("value"),
            );
            h
        };
        let page = html("text/html,application/xhtml+xml,*/*;q=0.8");
        assert!(is_open_request(&Method::GET, "/graphql", None, &page));
        assert!(is_open_request(
            &Method::GET,
            "/graphql/assets/x.js",
            None,
            &HeaderMap::new()
        ));
        assert!(!is_open_request(
            &Method::GET,
            "/graphql",
            Some("query=%7B__typename%7D"),
            &page
        ));
        assert!(!is_open_request(
            &Method::GET,
            "/graphql",
            Some("extensions=%7B%7D"),
            &page
        ));
        assert!(!is_open_request(
            &Method::GET,
            "/graphql",
            None,
            &html("application/json")
        ));
        assert!(!is_open_request(&Method::POST, "/graphql", None, &page));
    }

    #[test]
    fn zstd_is_sent_only_when_accepted() {
        let enc = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("value"),
            );
            h
        };
        assert!(accepts_zstd(&enc("gzip, deflate, br, zstd")));
        assert!(!accepts_zstd(&enc("gzip, br")));
        assert!(!accepts_zstd(&enc("zstd;q=0")));
    }
}
