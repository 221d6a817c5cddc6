//! The aggregator on JetStream (`[aggregator.nats]`): a durable pull
//! consumer on the sync stream, with a subject filter.
//!
//! Several aggregators with the same `durable` share its messages (each is
//! delivered to one of them); aggregators with different durables and
//! filters each take their own products. A message is acknowledged only
//! after what it applied is durable (the receiver returns after the store
//! barrier); a node that dies before acking leaves it to JetStream, which
//! redelivers it after `ack_wait` to whichever node pulls next. The
//! receiver's marks make that exactly-once in effect on each node's store
//! (redeliveries are held against the envelopes a node remembers applying,
//! see `apply`).
//!
//! An envelope that cannot be applied yet (a product this node does not
//! know, a store error) is **not** acknowledged: it is nak'ed with
//! `retry_delay`, counted (`meshlet_sync_jetstream_naks_total`, and the
//! receiver's `meshlet_sync_refused_total`), and JetStream offers it again
//! — to this node or another on the durable — until one applies it. Bytes
//! that are no envelope are terminated (retrying cannot fix them), and
//! counted as refused. Consumer lag (pending, ack pending, redelivered) is
//! read from JetStream every [`LAG_INTERVAL`] for `/metrics` and
//! `syncConsumers`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::apply::{ApplyError, Receiver};
use super::metrics::{ConsumerLag, SyncMetrics};
use super::nats::{Endpoint, EndpointSettings};
use super::TransportError;
use crate::config::AggregatorNatsConfig;

/// How often the consumer's lag is read from JetStream.
pub const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// Idle heartbeat of a pull: a dead connection is noticed within two.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Pull errors in a row after which the consumer is bound again.
const MAX_PULL_FAILURES: u32 = 3;

/// Checks the settings without connecting.
pub(crate) fn check(config: &AggregatorNatsConfig) -> Result<Endpoint, TransportError> {
    if config.durable.is_empty() || config.durable.contains(['.', '*', '>', ' ']) {
        return Err(TransportError::Config(format!(
            "durable `{}`: a consumer name has no `.`, `*`, `>` or spaces",
            config.durable
        )));
    }
    if config.batch == 0 {
        return Err(TransportError::Config("batch must be at least 1".into()));
    }
    Endpoint::new(&EndpointSettings::of_aggregator(config))
}

/// Applies envelopes from the durable consumer until `shutdown`,
/// reconnecting with back-off.
pub async fn consume(
    config: AggregatorNatsConfig,
    endpoint: Endpoint,
    node_id: String,
    receiver: Arc<Receiver>,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
) {
    metrics.register_consumer(&config.durable, &config.stream, &config.filter_subject);
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = run(&config, &endpoint, &node_id, &receiver, &metrics, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                warn!(durable = %config.durable, error = %e, retry_in = ?backoff, "JetStream consumer failed; retrying");
                metrics.consumer_error(&config.durable, &e);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection's life: binds the durable, then pulls and applies.
/// `Ok` when the message stream ended (it is made again).
async fn run(
    config: &AggregatorNatsConfig,
    endpoint: &Endpoint,
    node_id: &str,
    receiver: &Receiver,
    metrics: &SyncMetrics,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let client = endpoint
        .connect(format!("meshlet-aggregator-{node_id}"))
        .await
        .map_err(|e| e.to_string())?;
    let context = jetstream::new(client);
    let stream = context
        .get_stream(&config.stream)
        .await
        .map_err(|e| format!("stream `{}`: {e}", config.stream))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                filter_subject: config.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                // A refusal is retried until a node applies it.
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("durable consumer `{}`: {e}", config.durable))?;
    info!(durable = %config.durable, filter = %config.filter_subject, stream = %config.stream, "aggregator consuming from JetStream");
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch)
        .heartbeat(HEARTBEAT)
        .messages()
        .await
        .map_err(|e| format!("pulling from `{}`: {e}", config.durable))?;
    let mut failures = 0u32;
    let mut lag = tokio::time::interval(LAG_INTERVAL);
    lag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = lag.tick() => {
                match consumer.get_info().await {
                    Ok(info) => metrics.consumer_lag(&config.durable, ConsumerLag {
                        pending: info.num_pending,
                        ack_pending: info.num_ack_pending as u64,
                        redelivered: info.num_redelivered as u64,
                        waiting: info.num_waiting as u64,
                    }),
                    Err(e) => debug!(durable = %config.durable, error = %e, "consumer info not read"),
                }
                continue;
            }
            next = messages.next() => next,
        };
        let message = match next {
            None => return Ok(()),
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // A missed heartbeat or a reconnect: the stream goes on.
                // Several in a row (the consumer was deleted, the stream
                // is gone): bind again, with back-off.
                failures += 1;
                warn!(durable = %config.durable, error = %e, failures, "JetStream pull error");
                if failures >= MAX_PULL_FAILURES {
                    return Err(format!("pulling from `{}`: {e}", config.durable));
                }
                continue;
            }
        };
        failures = 0;
        let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
        match receiver.apply_delivery(&message.payload, redelivered).await {
            Ok(_) => {
                // A lost ack means a redelivery, which the marks skip.
                if let Err(e) = message.double_ack().await {
                    warn!(durable = %config.durable, error = %e, "ack not confirmed; JetStream may redeliver (skipped as applied)");
                }
            }
            Err(ApplyError::Envelope(e)) => {
                // Counted as refused by the receiver; retrying cannot fix it.
                warn!(durable = %config.durable, subject = %message.subject, error = %e, "not an envelope; terminated");
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                let reason = match &e {
                    ApplyError::UnknownProduct { .. } => super::UNKNOWN_PRODUCT,
                    ApplyError::ShuttingDown => "shutting_down",
                    _ => "store",
                };
                metrics.consumer_nak(&config.durable, reason, &e.to_string());
                if let Err(e) = message
                    .ack_with(AckKind::Nak(Some(config.retry_delay)))
                    .await
                {
                    debug!(error = %e, "nak not sent; JetStream redelivers after ack_wait");
                }
                if matches!(e, ApplyError::ShuttingDown) {
                    return Ok(());
                }
            }
        }
    }
}
