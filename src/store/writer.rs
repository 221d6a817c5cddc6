//! The one writer between every source and the store, owned by the store
//! with its group commit and change feed: sources submit jobs to it, the
//! API and sync subscribe to its feed, and none of them depends on the
//! other (see DESIGN.md).
//!
//! Sources hand it write jobs over a bounded queue and wait for the reply;
//! it takes whatever has queued up (up to `batch_max_records`), writes the
//! jobs of each product in one store transaction (`Store::ingest_group`:
//! sled's per-transaction cost is paid per group, not per message), and
//! hands the group to the acker, which replies once one durability barrier
//! for all of them passed; meanwhile the writer goes on with the next
//! group. So an fsync is shared by everything that arrived while the
//! previous one ran — the cost of ack-after-durable falls as load rises —
//! and a full queue makes sources wait, which stops them reading their
//! sockets and files: backpressure instead of memory. Each job still gets
//! its own result: a job the store refuses fails alone.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info_span, warn, Instrument};

use super::{Change, DurableBarrier, IngestBatch, IngestLimits, IngestOutcome, Store, StoreError};
use crate::record::Timestamp;

/// What the writer counts, kept by its owner (ingest exports them as
/// `meshlet_ingest_*`).
pub trait WriterCounters: Send + Sync {
    /// Time spent applying one group to the store.
    fn writer_busy(&self, micros: u64);
    /// A job (or a whole group, when its barrier failed) was not written.
    fn write_failed(&self);
    /// A durability barrier passed.
    fn durable_barrier(&self);
    /// A job passed its barrier with this many records applied.
    fn batch_written(&self, records: usize);
}

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
    /// The store's outcome, except that `changes` is empty: the applied
    /// changes went to the change feed (moved, not copied).
    pub outcome: IngestOutcome,
    /// Records applied (the changes the feed got).
    pub accepted: usize,
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
    /// The product's definition went away (a reload removed it): nothing
    /// was written, and the source keeps what it has until it returns.
    #[error("product `{0}` is no longer defined (removed by a reload): nothing written")]
    ProductRemoved(String),
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
pub(crate) const CHANGE_FEED_CAPACITY: usize = 4_096;

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
    /// Starts the writer task on `runtime` (its store transactions run on
    /// that runtime's blocking threads, so at the ingest runtime's
    /// priority); it ends once every `Writer` clone is gone and the queue
    /// is drained.
    pub fn spawn(
        store: Store,
        metrics: Arc<dyn WriterCounters>,
        queue_depth: usize,
        batch_max_records: usize,
        tasks: &tokio_util::task::TaskTracker,
        runtime: &tokio::runtime::Handle,
    ) -> Writer {
        let (queue, jobs) = mpsc::channel(queue_depth.max(1));
        let changes = store.inner.changes.clone();
        tasks.spawn_on(
            run(
                store,
                metrics,
                jobs,
                batch_max_records.max(1),
                changes.clone(),
            )
            .instrument(info_span!("writer")),
            runtime,
        );
        Writer { queue, changes }
    }

    /// The feed of durable changes, from now on (the store's, see
    /// [`Store::subscribe_changes`]).
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

/// Groups applied but not yet known durable, queued for the acker: the
/// writer commits the next groups while earlier ones are flushed (the
/// flusher thread does the fsync), and stops this far ahead of the disk.
/// 8 against 2 was 1-18% faster in `ingest_load` (one run each); what it
/// holds is bounded by the writer's job queue anyway, and a gateway's slow
/// SD card needs the depth more than this VM does.
const GROUPS_IN_FLUSH: usize = 8;

/// One applied group on its way to its senders.
struct Applied {
    group: Vec<(WriteJob, Reply)>,
    results: Vec<Result<Written, WriteError>>,
    durable: DurableBarrier,
}

async fn run(
    store: Store,
    metrics: Arc<dyn WriterCounters>,
    mut jobs: mpsc::Receiver<(WriteJob, Reply)>,
    batch_max_records: usize,
    feed: broadcast::Sender<Arc<ChangeEvent>>,
) {
    // Why two stages: a writer that waited for each group's fsync before
    // taking the next left the store idle for the length of every flush
    // (`benches/ingest_load.rs` showed a quarter of the 2 cores idle). The
    // acker takes groups in commit order, so replies and the change feed
    // keep that order, and no sender is answered before its group is on
    // disk.
    let (applied_tx, applied_rx) = mpsc::channel(GROUPS_IN_FLUSH);
    let acker = tokio::spawn(
        acknowledge(applied_rx, metrics.clone(), feed).instrument(info_span!("acker")),
    );
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
        let busy = metrics.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let started = std::time::Instant::now();
            let results = apply_group(&store, &mut group);
            busy.writer_busy(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            // Taken right after the commit: covers this group, not the next.
            let durable = store.durable_barrier();
            Applied {
                group,
                results,
                durable,
            }
        })
        .await;
        match applied {
            Ok(applied) => {
                if applied_tx.send(applied).await.is_err() {
                    warn!("the acker stopped; the writer stops");
                    break;
                }
            }
            // The runtime shutting down cancelled the group before it
            // ran: its replies were dropped unanswered (senders see
            // ShuttingDown and redeliver), and no later group can run.
            Err(join) if join.is_cancelled() => {
                debug!("write group cancelled: the runtime is stopping");
                break;
            }
            Err(join) => {
                // A panic in the store: the replies were dropped with the
                // group, so every sender sees ShuttingDown and redelivers.
                warn!(error = %join, "write group panicked");
                metrics.write_failed();
            }
        }
    }
    drop(applied_tx);
    match acker.await {
        Ok(()) => {}
        // The runtime is going away (a start-up that failed after the
        // writer started): nothing was acknowledged that is not durable.
        Err(e) if e.is_cancelled() => debug!("the acker was cancelled: the runtime is stopping"),
        Err(e) => warn!(error = %e, "the acker panicked"),
    }
    debug!("writer stopped: every source is gone");
}

/// Answers each applied group's senders, in commit order, once the group
/// is durable, and publishes its changes.
async fn acknowledge(
    mut applied: mpsc::Receiver<Applied>,
    metrics: Arc<dyn WriterCounters>,
    feed: broadcast::Sender<Arc<ChangeEvent>>,
) {
    while let Some(Applied {
        group,
        results,
        durable,
    }) = applied.recv().await
    {
        let durable = durable.wait().await;
        metrics.durable_barrier();
        let durable = durable.map_err(|e| WriteError::Durable(Arc::new(e)));
        if let Err(err) = &durable {
            warn!(error = %err, "durability barrier failed; no sender of this group is acknowledged");
            metrics.write_failed();
        }
        for ((job, reply), result) in group.into_iter().zip(results) {
            let result = match (&durable, result) {
                (Err(err), _) => Err(err.clone()),
                (Ok(()), Ok(mut written)) => {
                    let changes: Vec<Change> = std::mem::take(&mut written.outcome.changes)
                        .into_iter()
                        .flatten()
                        .collect();
                    written.accepted = changes.len();
                    metrics.batch_written(changes.len());
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
                    metrics.write_failed();
                    Err(err)
                }
            };
            // The sender may have gone (HTTP client hung up): nothing to do.
            let _ = reply.send(result);
        }
    }
}

/// Applies a group's jobs: the jobs of one product share one store
/// transaction ([`Store::ingest_group`]), in arrival order. A job with
/// retained records is written on its own, after the product's earlier
/// jobs, because it decides what to keep by reading the store.
fn apply_group(store: &Store, group: &mut [(WriteJob, Reply)]) -> Vec<Result<Written, WriteError>> {
    let mut results: Vec<Option<Result<Written, WriteError>>> =
        group.iter().map(|_| None).collect();
    // Product → indexes of its jobs waiting for the shared transaction.
    let mut waiting: Vec<(String, Vec<usize>)> = Vec::new();
    for index in 0..group.len() {
        let product = group[index].0.product.clone();
        if group[index].0.retained {
            if let Some(pos) = waiting.iter().position(|(p, _)| *p == product) {
                let (_, jobs) = waiting.swap_remove(pos);
                write_together(store, group, &product, &jobs, &mut results);
            }
            results[index] = Some(apply(store, &mut group[index].0));
        } else {
            match waiting.iter_mut().find(|(p, _)| *p == product) {
                Some((_, jobs)) => jobs.push(index),
                None => waiting.push((product, vec![index])),
            }
        }
    }
    for (product, jobs) in waiting {
        write_together(store, group, &product, &jobs, &mut results);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(WriteError::ShuttingDown)))
        .collect()
}

/// Writes the jobs `indexes` of one product in one transaction.
fn write_together(
    store: &Store,
    group: &[(WriteJob, Reply)],
    product: &str,
    indexes: &[usize],
    results: &mut [Option<Result<Written, WriteError>>],
) {
    let batches: Vec<(&IngestBatch, Timestamp)> = indexes
        .iter()
        .map(|&i| (&group[i].0.batch, group[i].0.received_at))
        .collect();
    // Limits come from the product's definition, the same for every job.
    let limits = group[indexes[0]].0.limits;
    let outcomes = store.ingest_group(product, &batches, &limits);
    for (&i, outcome) in indexes.iter().zip(outcomes) {
        results[i] = Some(
            outcome
                .map(|outcome| Written {
                    outcome,
                    accepted: 0,
                    retained_known: Vec::new(),
                })
                .map_err(|e| {
                    warn!(product, error = %e, "write refused");
                    WriteError::Store(Arc::new(e))
                }),
        );
    }
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
        accepted: 0,
        retained_known,
    })
}
