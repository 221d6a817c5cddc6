//! Reference data over HTTPS: an edge long-polls its aggregator's
//! `GET /sync/v1/reference/<product>?after=<revision>` (answered from the
//! aggregator's reference bucket, at once when something is newer, else
//! after up to [`POLL_WAIT`] with an empty page) and applies each page
//! with its revision, as the NATS watch does. Sites that reach the
//! central side only over HTTPS get the same replica.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::http::HttpTransport;
use super::metrics::SyncMetrics;
use super::reference::{Applier, ReferencePage};

/// How long the aggregator holds a poll with nothing new.
pub const POLL_WAIT: Duration = Duration::from_secs(20);
/// A poll unanswered this long is given up (and made again).
const POLL_TIMEOUT: Duration = Duration::from_secs(35);

/// Long-polls for `applier`'s product until `shutdown`, with back-off on
/// failures.
pub async fn poll(
    mut transport: HttpTransport,
    applier: Applier,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    info!(upstream = %applier.upstream, product = %applier.product, "long-polling reference data");
    loop {
        let outcome = poll_once(&mut transport, &applier, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(200);
                continue;
            }
            Err(e) => {
                warn!(upstream = %applier.upstream, product = %applier.product, error = %e, retry_in = ?backoff, "reference long-poll failed; retrying");
                metrics.reference_error(&applier.upstream, &applier.product, &e);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn poll_once(
    transport: &mut HttpTransport,
    applier: &Applier,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let after = applier.last_revision().map_err(|e| e.to_string())?;
    let suffix = format!(
        "/reference/{}?after={after}&wait={}s",
        applier.product,
        POLL_WAIT.as_secs()
    );
    let body = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        body = tokio::time::timeout(POLL_TIMEOUT, transport.get(&suffix)) => body
            .map_err(|_| format!("no answer within {POLL_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?,
    };
    let page: ReferencePage = rmp_serde::from_slice(&body)
        .map_err(|e| format!("the answer is no reference page: {e}"))?;
    if page.entries.is_empty() && page.revision <= after {
        return Ok(());
    }
    let count = page.entries.len();
    let outcome = applier
        .apply(page.entries, page.revision, 0)
        .await
        .map_err(|e| e.to_string())?;
    debug!(product = %applier.product, count, revision = page.revision, ?outcome, "reference page applied");
    Ok(())
}
