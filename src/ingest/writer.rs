//! The one writer between every source and the store.
//!
//! Sources hand it write jobs over a bounded queue and wait for the reply;
//! it takes whatever has queued up (up to `batch_max_records`), applies
//! each job as one store transaction, passes one durability barrier for
//! all of them, and only then replies. So an fsync is shared by everything
//! that arrived while the previous one ran — the cost of ack-after-durable
//! falls as load rises — and a full queue makes sources wait, which stops
//! them reading their sockets and files: backpressure instead of memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info_span, warn, Instrument};

use super::metrics::IngestMetrics;
use crate::record::Timestamp;
use crate::store::{Change, IngestBatch, IngestLimits, IngestOutcome, Store, StoreError};

/// One product's share of what one message, request or file batch
/// produced.
pub struct WriteJob {
    pub product: String,
    pub batch: IngestBatch,
    pub limits: IngestLimits,
    /// Records from a retained MQTT message: the broker's last-known state.
    /// They are written only for entities the node does not know yet.
    pub retained: bool,
    pub received_at: Timestamp,
}

/// What became of a job once durable.
#[derive(Debug)]
pub struct Written {
    pub outcome: IngestOutcome,
    /// Records dropped because they were retained state of a known entity
    /// (their indexes in the job's batch).
    pub retained_known: Vec<usize>,
}

/// Why a job was not written. Its sender must not be acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("store refused the write: {0}")]
    Store(Arc<StoreError>),
    #[error("durability barrier failed: {0}")]
    Durable(Arc<StoreError>),
    #[error("the node is shutting down")]
    ShuttingDown,
}

type Reply = oneshot::Sender<Result<Written, WriteError>>;

/// What one durable write changed, for live consumers (GraphQL
/// subscriptions, sync): published only after the durability barrier, so
/// nobody ever sees a change that a crash could take back.
#[derive(Debug)]
pub struct ChangeEvent {
    pub product: String,
    pub changes: Vec<Change>,
}

/// Change events buffered per slow consumer before it starts missing
/// them (it then gets `RecvError::Lagged` and can re-read the store).
const CHANGE_FEED_CAPACITY: usize = 4_096;

/// A cheap handle for submitting jobs.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<(WriteJob, Reply)>,
    changes: broadcast::Sender<Arc<ChangeEvent>>,
}

/// The reply to a submitted job, resolved once it is durable (or failed).
pub struct PendingWrite {
    reply: oneshot::Receiver<Result<Written, WriteError>>,
}

impl PendingWrite {
    pub async fn wait(self) -> Result<Written, WriteError> {
        self.reply.await.unwrap_or(Err(WriteError::ShuttingDown))
    }
}

impl Writer {
    /// Starts the writer task; it ends once every `Writer` clone is gone
    /// and the queue is drained.
    pub fn spawn(
        store: Store,
        metrics: Arc<IngestMetrics>,
        queue_depth: usize,
        batch_max_records: usize,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Writer {
        let (queue, jobs) = mpsc::channel(queue_depth.max(1));
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        tasks.spawn(
            run(
                store,
                metrics,
                jobs,
                batch_max_records.max(1),
                changes.clone(),
            )
            .instrument(info_span!("writer")),
        );
        Writer { queue, changes }
    }

    /// The feed of durable changes, from now on.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.changes.subscribe()
    }

    /// Queues a job; waits while the queue is full (backpressure).
    pub async fn submit(&self, job: WriteJob) -> PendingWrite {
        let (reply, pending) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, reply))) = self.queue.send((job, reply)).await {
            let _ = reply.send(Err(WriteError::ShuttingDown));
        }
        PendingWrite { reply: pending }
    }
}

async fn run(
    store: Store,
    metrics: Arc<IngestMetrics>,
    mut jobs: mpsc::Receiver<(WriteJob, Reply)>,
    batch_max_records: usize,
    feed: broadcast::Sender<Arc<ChangeEvent>>,
) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        let mut records = group[0].0.batch.records.len();
        while records < batch_max_records {
            match jobs.try_recv() {
                Ok(job) => {
                    records += job.0.batch.records.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        let span = info_span!("write_group", jobs = group.len(), records);
        let applied = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let results: Vec<Result<Written, WriteError>> = group
                .iter_mut()
                .map(|(job, _)| apply(&store, job))
                .collect();
            let durable = store.durable_blocking();
            (group, results, durable)
        })
        .await;
        let (group, results, durable) = match applied {
            Ok(applied) => applied,
            Err(join) => {
                // A panic in the store: the replies were dropped with the
                // group, so every sender sees ShuttingDown and redelivers.
                warn!(error = %join, "write group panicked");
                metrics.write_failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        metrics.durable_barriers.fetch_add(1, Ordering::Relaxed);
        let durable = durable.map_err(|e| WriteError::Durable(Arc::new(e)));
        if let Err(err) = &durable {
            warn!(error = %err, "durability barrier failed; no sender of this group is acknowledged");
            metrics.write_failures.fetch_add(1, Ordering::Relaxed);
        }
        for ((job, reply), result) in group.into_iter().zip(results) {
            let result = match (&durable, result) {
                (Err(err), _) => Err(err.clone()),
                (Ok(()), Ok(written)) => {
                    metrics.batches_written.fetch_add(1, Ordering::Relaxed);
                    let changes: Vec<Change> =
                        written.outcome.changes.iter().flatten().cloned().collect();
                    metrics
                        .records_written
                        .fetch_add(changes.len() as u64, Ordering::Relaxed);
                    if !changes.is_empty() && feed.receiver_count() > 0 {
                        // Nobody listening is not an error.
                        let _ = feed.send(Arc::new(ChangeEvent {
                            product: job.product.clone(),
                            changes,
                        }));
                    }
                    Ok(written)
                }
                (Ok(()), Err(err)) => {
                    metrics.write_failures.fetch_add(1, Ordering::Relaxed);
                    Err(err)
                }
            };
            // The sender may have gone (HTTP client hung up): nothing to do.
            let _ = reply.send(result);
        }
    }
    debug!("writer stopped: every source is gone");
}

/// Applies one job as one transaction.
fn apply(store: &Store, job: &mut WriteJob) -> Result<Written, WriteError> {
    let mut retained_known = Vec::new();
    if job.retained {
        // Only this task writes ingest data, so nothing can create the
        // entity between this read and the transaction below.
        let mut kept = Vec::with_capacity(job.batch.records.len());
        for (index, record) in std::mem::take(&mut job.batch.records)
            .into_iter()
            .enumerate()
        {
            let known = store
                .get(&job.product, &record.record.entity)
                .map_err(|e| WriteError::Store(Arc::new(e)))?
                .is_some();
            if known {
                retained_known.push(index);
            } else {
                kept.push(record);
            }
        }
        job.batch.records = kept;
    }
    let outcome = store
        .ingest(&job.product, &job.batch, &job.limits, job.received_at)
        .map_err(|e| {
            warn!(product = %job.product, error = %e, "write refused");
            WriteError::Store(Arc::new(e))
        })?;
    Ok(Written {
        outcome,
        retained_known,
    })
}
