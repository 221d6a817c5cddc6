//! `GET /console/api/status`: the node's own figures the console's
//! overview shows and GraphQL does not carry — version, start time,
//! readiness and its problems, the store's size on disk, the process's
//! resident memory. Counts and names only, never values: any caller the
//! authentication layer lets through may read them (the same figures are
//! in the open `/metrics`, but not the store size and memory).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::api::{ApiState, Phase};

#[derive(Serialize)]
struct Status {
    node_id: String,
    version: &'static str,
    /// Unix seconds.
    started_at: f64,
    phase: Phase,
    problems: Vec<String>,
    /// Null when the store could not be measured.
    store_bytes: Option<u64>,
    /// Null where the platform does not say (not Linux).
    memory_rss_bytes: Option<u64>,
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/console/api/status", get(status))
}

async fn status(State(state): State<ApiState>) -> Response {
    let store = state.ingestor.store().clone();
    let measured = tokio::task::spawn_blocking(move || {
        let store_bytes = store.size_on_disk().ok();
        (store_bytes, resident_bytes())
    })
    .await;
    let (store_bytes, memory_rss_bytes) = measured.unwrap_or((None, None));
    Json(Status {
        node_id: state.node_id.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: super::super::started_at(),
        phase: state.readiness.phase(),
        problems: state.readiness.problems(),
        store_bytes,
        memory_rss_bytes,
    })
    .into_response()
}

/// The process's resident set (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_of(&status)
}

fn rss_of(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tmeshlet\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(super::rss_of(status), Some(12345 * 1024));
        assert_eq!(super::rss_of("Name:\tx\n"), None);
    }
}
