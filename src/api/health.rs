//! `/livez` and `/readyz`: what a supervisor (systemd, Kubernetes, a load
//! balancer) polls.
//!
//! Liveness says the process answers; readiness says the node has loaded
//! its products, opened its store and is accepting work, and turns false
//! again as soon as shutdown begins so traffic drains away first.

use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiState;

/// The node's lifecycle as readiness reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Ready,
    Stopping,
}

#[derive(Debug)]
struct ReadinessState {
    phase: Phase,
    products: Vec<String>,
    problems: Vec<String>,
}

/// Shared, cheaply cloned readiness: written by the node, read by `/readyz`.
#[derive(Clone, Debug)]
pub struct Readiness {
    inner: Arc<RwLock<ReadinessState>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            inner: Arc::new(RwLock::new(ReadinessState {
                phase: Phase::Starting,
                products: Vec::new(),
                problems: Vec::new(),
            })),
        }
    }
}

impl Readiness {
    pub fn set_phase(&self, phase: Phase) {
        self.write(|state| state.phase = phase);
    }

    pub fn phase(&self) -> Phase {
        self.read(|state| state.phase)
    }

    pub fn set_products(&self, products: Vec<String>) {
        self.write(|state| state.products = products);
    }

    /// Problems that do not stop the node but an operator must see (a
    /// rejected reload, an upstream that is down).
    pub fn set_problems(&self, problems: Vec<String>) {
        self.write(|state| state.problems = problems);
    }

    /// The problems last set (see [`Readiness::set_problems`]).
    pub fn problems(&self) -> Vec<String> {
        self.read(|state| state.problems.clone())
    }

    fn write(&self, change: impl FnOnce(&mut ReadinessState)) {
        // A poisoned lock only means a writer panicked mid-update of plain
        // data; the data is still usable.
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        change(&mut guard);
    }

    fn read<T>(&self, look: impl FnOnce(&ReadinessState) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        look(&guard)
    }
}

#[derive(Serialize)]
struct ReadyBody {
    status: Phase,
    node_id: String,
    products: Vec<String>,
    problems: Vec<String>,
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let body = state.readiness.read(|r| ReadyBody {
        status: r.phase,
        node_id: state.node_id.to_string(),
        products: r.products.clone(),
        problems: r.problems.clone(),
    });
    let code = if body.status == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
