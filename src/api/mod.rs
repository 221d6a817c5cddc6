//! The HTTP surface: one axum router for the operations endpoints, HTTP
//! push, the quarantine, metrics, GraphQL (`graphql/`) and the web
//! console (`console/`).
//!
//! The router only reads shared state; it never owns data. Every route but
//! the health checks, `/metrics` and the console's static files is behind
//! the authentication layer (`auth`), and handlers that touch data go
//! through a `policy::access::View` of the caller's role.

mod auth;
#[cfg(feature = "console")]
mod console;
mod cors;
pub mod graphql;
mod health;
mod ingest;
pub mod serve;
pub mod status;
mod sync;
use crate::tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

pub use cors::Cors;
pub use health::{Phase, Readiness};

/// What the handlers share: one `Arc`, so the clone axum makes for every
/// extractor and middleware is one reference count, not one per service
/// (the per-field clones and drops were ~13% of the node's CPU on key
/// lookups, `benches/api_load.rs` under perf).
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

impl ApiState {
    pub fn new(shared: ApiShared) -> ApiState {
        ApiState(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// The handlers' shared services, behind [`ApiState`].
pub struct ApiShared {
    pub node_id: Arc<str>,
    pub readiness: Readiness,
    pub ingestor: crate::ingest::Ingestor,
    pub max_http_body_bytes: usize,
    /// The live GraphQL schema and what its resolvers share.
    pub graphql: graphql::GraphqlApi,
    /// Handshake figures of the HTTPS listener (zero without TLS).
    pub tls_metrics: tls::TlsMetrics,
    /// The listener's connection figures (open, refused, timed out).
    pub http_metrics: serve::HttpMetrics,
    /// What the retention sweeper removed, for `/metrics`.
    pub retention: crate::retention::RetentionMetrics,
    /// Who is calling: tokens, certificates, anonymous role.
    pub auth: Arc<crate::policy::auth::Authenticator>,
    /// Upstream sync: the aggregator's receiver and sync figures.
    pub sync: Option<std::sync::Arc<crate::sync::SyncHandle>>,
    /// Cross-origin access (`[http.cors]`).
    pub cors: Arc<cors::Cors>,
    /// Whether the web console is served (`[http] console`).
    pub console: bool,
}

/// When the process first built its router, as Unix seconds: the
/// `process_start_time_seconds` of `/metrics` (the Prometheus client
/// convention), from which `meshlet status` shows the uptime.
static STARTED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

fn started_at() -> f64 {
    *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

/// Marks a response as the last on its connection. For refusals sent
/// before the request body was read (413): the server will not read the
/// rest, so the connection cannot carry another request, and without this
/// header a pooling client may send its next request on it and see the
/// connection drop instead of an answer.
pub(crate) fn closing(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// `/` and `/console/*` in a build without the web console: 404 with why.
#[cfg(not(feature = "console"))]
fn no_console_routes() -> Router<ApiState> {
    async fn absent() -> axum::response::Response {
        use axum::response::IntoResponse;
        (
            axum::http::StatusCode::NOT_FOUND,
            "the web console is not in this build (built without the cargo feature `console`)\n",
        )
            .into_response()
    }
    Router::new()
        .route("/", axum::routing::get(absent))
        .route("/console", axum::routing::get(absent))
        .route("/console/{*rest}", axum::routing::get(absent))
}

/// Builds the router for the given state.
pub fn router(state: ApiState) -> Router {
    started_at();
    // With the console off (`[http] console = false`) none of its routes
    // exist: `/` and its files answer 404 like any unknown path.
    #[cfg(feature = "console")]
    let console_open = if state.console {
        console::open_routes()
    } else {
        Router::new()
    };
    // A build without the `console` feature says so where the console
    // would be, instead of a bare 404.
    #[cfg(not(feature = "console"))]
    let console_open = if state.console {
        no_console_routes()
    } else {
        Router::new()
    };
    let protected = ingest::routes(state.max_http_body_bytes)
        .merge(graphql::routes())
        .merge(sync::routes())
        .merge(status::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_identity,
        ));
    health::routes()
        .merge(ingest::open_routes())
        .merge(console_open)
        .merge(graphql::open_routes())
        .merge(protected)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::layer,
        ))
        .with_state(state)
}

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
}

/// A bound listener, so the caller learns the real port (`:0` in tests)
/// before serving starts. With TLS configured it serves HTTPS (see
/// [`tls`]).
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tls_metrics: tls::TlsMetrics,
    limits: serve::HttpLimits,
    metrics: serve::HttpMetrics,
}

impl HttpListener {
    /// Reads the TLS files (when configured) before binding, so a bad
    /// certificate is reported before anything listens.
    pub async fn bind(config: &crate::config::HttpConfig) -> Result<HttpListener, ServeError> {
        let addr = config.listen;
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(HttpListener {
            listener,
            addr,
            tls,
            tls_metrics: tls::TlsMetrics::default(),
            limits: serve::HttpLimits::from_config(config),
            metrics: serve::HttpMetrics::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` with TLS configured, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The handshake counters, for the router's `/metrics`.
    pub fn tls_metrics(&self) -> tls::TlsMetrics {
        self.tls_metrics.clone()
    }

    /// The connection counters, for the router's `/metrics`.
    pub fn http_metrics(&self) -> serve::HttpMetrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets
    /// in-flight requests finish (see [`serve`] for the limits).
    pub async fn serve(self, app: Router, shutdown: CancellationToken) -> Result<(), ServeError> {
        let tls = self.tls.map(|acceptor| (acceptor, self.tls_metrics));
        serve::serve(self.listener, tls, self.limits, self.metrics, app, shutdown).await;
        Ok(())
    }
}
