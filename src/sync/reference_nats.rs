//! Reference data over NATS: an edge's watch of the reference bucket, and
//! an aggregator's read of it for `GET /sync/v1/reference/…`.
//!
//! The watch is a key-value watch of `<product>.>` from the revision after
//! the last one the store holds (an ordered consumer: async-nats recreates
//! it from the last sequence seen when the connection comes back). Entries
//! that are immediately there (JetStream's `pending` above 0) are gathered
//! into one page of up to [`MAX_PAGE`] — one store write for a catch-up of
//! a thousand keys, not a thousand.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::SyncMetrics;
use super::nats::{open_bucket, Endpoint};
use super::reference::{
    entity_of_key, Applier, ReferenceEntry, ReferencePage, ReferenceValue, MAX_PAGE,
};
use super::TransportError;

/// One watch entry as a [`ReferenceEntry`]; `Err` names why it is skipped
/// (a value that does not decode, a key of no entity).
fn entry_of(product: &str, entry: kv::Entry) -> Result<ReferenceEntry, String> {
    let entity = entity_of_key(product, &entry.key)
        .ok_or_else(|| format!("key `{}` names no entity", entry.key))?;
    let value = match entry.operation {
        kv::Operation::Put => Some(
            ReferenceValue::decode(&entry.value)
                .map_err(|e| format!("key `{}` revision {}: {e}", entry.key, entry.revision))?,
        ),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    Ok(ReferenceEntry {
        revision: entry.revision,
        entity,
        value,
    })
}

/// The next page of `watch`: waits for one entry (or `wait`), then takes
/// what is immediately there. `(entries, upto, malformed)`.
async fn next_page(
    product: &str,
    watch: &mut kv::Watch,
    wait: Option<Duration>,
    shutdown: &CancellationToken,
) -> Result<Option<(Vec<ReferenceEntry>, u64, usize)>, String> {
    let mut entries = Vec::new();
    let mut upto = 0;
    let mut malformed = 0;
    loop {
        let first = entries.is_empty() && malformed == 0;
        let next = if first {
            let next = watch.next();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                next = async {
                    match wait {
                        Some(wait) => tokio::time::timeout(wait, next).await.ok(),
                        None => Some(next.await),
                    }
                } => next,
            }
        } else {
            Some(watch.next().await)
        };
        let entry = match next {
            None => return Ok(Some((entries, upto, malformed))),
            Some(None) => return Err("the watch ended".into()),
            Some(Some(Err(e))) => return Err(format!("watch: {e}")),
            Some(Some(Ok(entry))) => entry,
        };
        upto = upto.max(entry.revision);
        let more = entry.delta > 0;
        match entry_of(product, entry) {
            Ok(e) => entries.push(e),
            Err(why) => {
                warn!(product, %why, "reference value skipped");
                malformed += 1;
            }
        }
        if !more || entries.len() >= MAX_PAGE {
            return Ok(Some((entries, upto, malformed)));
        }
    }
}

/// Watches the reference bucket for `applier`'s product until `shutdown`,
/// reconnecting with back-off.
pub async fn watch(
    endpoint: Endpoint,
    bucket: String,
    client_name: String,
    applier: Applier,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = watch_once(&endpoint, &bucket, &client_name, &applier, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                warn!(upstream = %applier.upstream, product = %applier.product, error = %e, retry_in = ?backoff, "reference watch failed; retrying");
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

async fn watch_once(
    endpoint: &Endpoint,
    bucket: &str,
    client_name: &str,
    applier: &Applier,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let client = endpoint
        .connect(client_name.to_string())
        .await
        .map_err(|e| e.to_string())?;
    let context = jetstream::new(client);
    let kv = open_bucket(&context, bucket, false, 1)
        .await
        .map_err(|e| e.to_string())?;
    let from = applier.last_revision().map_err(|e| e.to_string())? + 1;
    let mut watch = kv
        .watch_from_revision(format!("{}.>", applier.product), from)
        .await
        .map_err(|e| format!("watching `{bucket}`: {e}"))?;
    info!(upstream = %applier.upstream, product = %applier.product, bucket, from, "watching reference data");
    loop {
        let Some((entries, upto, malformed)) =
            next_page(&applier.product, &mut watch, None, shutdown).await?
        else {
            return Ok(());
        };
        let count = entries.len();
        let outcome = applier
            .apply(entries, upto, malformed)
            .await
            .map_err(|e| e.to_string())?;
        debug!(product = %applier.product, count, upto, ?outcome, "reference page applied");
    }
}

/// Reads the reference bucket for the HTTPS long-poll: the entries of
/// `product` after `after`, waiting up to `wait` for the first.
pub struct BucketReader {
    endpoint: Endpoint,
    bucket: String,
    client_name: String,
    kv: tokio::sync::Mutex<Option<kv::Store>>,
}

impl BucketReader {
    pub(crate) fn new(endpoint: Endpoint, bucket: String, client_name: String) -> BucketReader {
        BucketReader {
            endpoint,
            bucket,
            client_name,
            kv: tokio::sync::Mutex::new(None),
        }
    }

    async fn kv(&self) -> Result<kv::Store, TransportError> {
        let mut kv = self.kv.lock().await;
        if let Some(kv) = &*kv {
            return Ok(kv.clone());
        }
        let client = self.endpoint.connect(self.client_name.clone()).await?;
        let store = open_bucket(&jetstream::new(client), &self.bucket, false, 1).await?;
        *kv = Some(store.clone());
        Ok(store)
    }

    /// The page after `after` (empty, at `after`, when nothing came
    /// within `wait`).
    pub async fn page(
        &self,
        product: &str,
        after: u64,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<ReferencePage, TransportError> {
        let kv = self.kv().await?;
        let watch = kv
            .watch_from_revision(format!("{product}.>"), after + 1)
            .await;
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                // The connection or bucket may have gone: look again next time.
                *self.kv.lock().await = None;
                return Err(TransportError::Unreachable(format!(
                    "watching `{}`: {e}",
                    self.bucket
                )));
            }
        };
        match next_page(product, &mut watch, Some(wait), shutdown).await {
            Ok(Some((entries, upto, _malformed))) => Ok(ReferencePage {
                entries,
                revision: upto.max(after),
            }),
            Ok(None) => Ok(ReferencePage {
                entries: Vec::new(),
                revision: after,
            }),
            Err(e) => Err(TransportError::Unreachable(e)),
        }
    }
}
