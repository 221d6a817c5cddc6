//! The HTTP surface: one axum router for the operations endpoints, HTTP
//! push, the quarantine, metrics and GraphQL (`graphql/`).
//!
//! The router only reads shared state; it never owns data. Handlers that
//! touch data go through `policy` (from the policy issue on).

pub mod graphql;
mod health;
mod ingest;
mod sync;

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
    /// Upstream sync: the aggregator's receiver and sync figures.
    pub sync: Option<std::sync::Arc<crate::sync::SyncHandle>>,
}

/// Builds the router for the given state.
pub fn router(state: ApiState) -> Router {
    health::routes()
        .merge(ingest::routes(state.max_http_body_bytes))
        .merge(graphql::routes())
        .merge(sync::routes())
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
