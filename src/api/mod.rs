//! The HTTP surface: one axum router for the operations endpoints, HTTP
//! push, the quarantine, metrics and GraphQL (`graphql/`).
//!
//! The router only reads shared state; it never owns data. Every route but
//! the health checks and `/metrics` is behind the authentication layer
//! (`auth`), and handlers that touch data go through a
//! `policy::access::View` of the caller's role.

mod auth;
pub mod graphql;
mod health;
mod ingest;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

pub use health::{Phase, Readiness};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub node_id: Arc<str>,
    pub readiness: Readiness,
    pub ingestor: crate::ingest::Ingestor,
    pub max_http_body_bytes: usize,
    /// The live GraphQL schema and what its resolvers share.
    pub graphql: graphql::GraphqlApi,
    /// Who is calling: tokens, certificates, anonymous role.
    pub auth: Arc<crate::policy::auth::Authenticator>,
}

/// Builds the router for the given state.
pub fn router(state: ApiState) -> Router {
    let protected = ingest::routes(state.max_http_body_bytes)
        .merge(graphql::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_identity,
        ));
    health::routes()
        .merge(ingest::open_routes())
        .merge(protected)
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
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound listener, so the caller learns the real port (`:0` in tests)
/// before serving starts.
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    pub async fn bind(addr: SocketAddr) -> Result<HttpListener, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(HttpListener { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets
    /// in-flight requests finish.
    pub async fn serve(self, app: Router, shutdown: CancellationToken) -> Result<(), ServeError> {
        let addr = self.addr;
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|source| ServeError::Serve { addr, source })
    }
}
