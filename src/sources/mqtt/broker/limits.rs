//! The embedded broker's byte budgets: what retained messages, one
//! client's subscriptions and one subscriber's delivery queue may hold.
//!
//! Why: the broker keeps these in memory on behalf of clients nobody
//! authenticated (by default), so each is bounded in bytes, not only in
//! count — 500 retained messages of 1 MB, or a subscriber that never reads
//! while 1 MB messages flow, must not grow the node by hundreds of MB. What
//! does not fit is refused in a way the client can see where MQTT 3.1.1
//! allows it (SUBACK 0x80), and is always counted and logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Retained messages by topic, with their bytes (topic + payload) kept
/// under a budget.
#[derive(Default)]
pub(crate) struct Retained {
    messages: HashMap<String, Kept>,
    bytes: usize,
}

/// A retained message and since when it is kept (its MQTT 5 message
/// expiry interval counts down from then).
pub(crate) struct Kept {
    pub publish: Publish,
    pub since: Instant,
}

/// A retained publish that would take the retained messages over
/// `mqtt.embedded.max_retained_bytes`.
#[derive(Debug, thiserror::Error)]
#[error(
    "retaining {size} bytes on `{topic}` would exceed max_retained_bytes ({held} of {limit} held)"
)]
pub(crate) struct RetainRefused {
    pub topic: String,
    pub size: usize,
    pub held: usize,
    pub limit: usize,
}

impl Retained {
    /// Retains `publish` on its topic (an empty payload clears it), unless
    /// the total would exceed `limit`; the previous message of the topic
    /// is then kept.
    pub(crate) fn set(&mut self, publish: &Publish, limit: usize) -> Result<(), RetainRefused> {
        self.set_since(publish, limit, Instant::now())
    }

    /// [`Retained::set`] for a message retained `since` (one loaded from
    /// the store keeps its age, for its message expiry).
    pub(crate) fn set_since(
        &mut self,
        publish: &Publish,
        limit: usize,
        since: Instant,
    ) -> Result<(), RetainRefused> {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let previous = self
            .messages
            .get(&topic)
            .map(|kept| cost(&kept.publish))
            .unwrap_or(0);
        if publish.payload.is_empty() {
            self.messages.remove(&topic);
            self.bytes -= previous;
            return Ok(());
        }
        let size = cost(publish);
        let held = self.bytes - previous;
        if held + size > limit {
            return Err(RetainRefused {
                topic,
                size,
                held: self.bytes,
                limit,
            });
        }
        self.messages.insert(
            topic,
            Kept {
                publish: publish.clone(),
                since,
            },
        );
        self.bytes = held + size;
        Ok(())
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Kept)> {
        self.messages.iter()
    }
}

/// Bytes a publish holds in memory, as the budgets count them.
pub(crate) fn cost(publish: &Publish) -> usize {
    publish.topic.len() + publish.payload.len()
}

/// Packets up to this size never wait for the [`PacketBudget`]: with
/// `max_connections` they are bounded already, and a device's ordinary
/// telemetry must not queue behind someone's half-sent megabyte.
pub(crate) const SMALL_PACKET: usize = 64 * 1024;

/// The bytes of large packets still arriving, over all connections of the
/// broker (`mqtt.embedded.max_pending_packet_bytes`). A connection whose
/// next large packet does not fit is not read until others completed
/// theirs: sockets each half-way through a 1 MB PUBLISH hold the budget,
/// not a megabyte of the node's memory each.
#[derive(Clone)]
pub(crate) struct PacketBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

/// A connection's share of the [`PacketBudget`] for the packet it reads.
#[derive(Default)]
pub(crate) struct Held {
    permits: Option<OwnedSemaphorePermit>,
}

impl PacketBudget {
    pub(crate) fn new(bytes: usize) -> PacketBudget {
        let total = bytes.clamp(1, Semaphore::MAX_PERMITS);
        PacketBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Makes `held` cover a packet of `frame_length` bytes (at most the
    /// whole budget), waiting for room; `waits` is called before a wait.
    /// `true` when it had to wait.
    pub(crate) async fn hold(
        &self,
        held: &mut Held,
        frame_length: usize,
        waits: impl FnOnce(),
    ) -> bool {
        let want = frame_length.min(self.total);
        let have = held.permits.as_ref().map_or(0, |p| p.num_permits());
        if frame_length <= SMALL_PACKET || want <= have {
            return false;
        }
        let more = u32::try_from(want - have).unwrap_or(u32::MAX);
        let waited = self.permits.available_permits() < more as usize;
        if waited {
            waits();
        }
        if let Ok(permit) = self.permits.clone().acquire_many_owned(more).await {
            match &mut held.permits {
                Some(existing) => existing.merge(permit),
                None => held.permits = Some(permit),
            }
        }
        waited
    }
}

impl Held {
    /// The packet was read whole: its share goes back to the budget.
    pub(crate) fn release(&mut self) {
        self.permits = None;
    }
}

/// The packets queued towards one client, with the bytes of the
/// deliveries among them bounded by `limit`. Acks go through
/// [`Outbox::send`] and are never dropped; deliveries through
/// [`Outbox::deliver`], which drops what does not fit (QoS 0).
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Packet>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Outbox {
    pub(crate) fn new(tx: mpsc::Sender<Packet>, limit: usize) -> (Outbox, QueuedBytes) {
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Outbox {
                tx,
                queued: queued.clone(),
                limit,
            },
            QueuedBytes(queued),
        )
    }

    /// Queues a delivery unless its bytes would take the queue over the
    /// limit (one delivery always fits an empty queue) or the queue is
    /// full; `false` means dropped.
    pub(crate) fn deliver(&self, publish: Publish) -> bool {
        let size = cost(&publish);
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held + size <= self.limit).then_some(held + size)
            });
        if reserved.is_err() {
            return false;
        }
        if self.tx.try_send(Packet::Publish(publish)).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Queues a packet that must not be lost (an ack), waiting for room.
    pub(crate) async fn send(&self, packet: Packet) -> Result<(), mpsc::error::SendError<Packet>> {
        self.tx.send(packet).await
    }

    /// Queues a delivery that must not be lost (QoS 1/2, a retained
    /// message for a new subscription), waiting for room: the subscriber's
    /// own pace holds it back, its bytes count as any delivery's.
    pub(crate) async fn deliver_wait(
        &self,
        packet: Packet,
    ) -> Result<(), mpsc::error::SendError<Packet>> {
        let size = QueuedBytes::cost(&packet);
        self.queued.fetch_add(size, Ordering::AcqRel);
        let sent = self.tx.send(packet).await;
        if sent.is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
        }
        sent
    }
}

/// The writer's side of an [`Outbox`]'s byte count: a delivery counts
/// until the socket took it.
pub(crate) struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    /// What `packet` counts against the queue's bytes.
    pub(crate) fn cost(packet: &Packet) -> usize {
        match packet {
            Packet::Publish(publish) => cost(publish),
            _ => 0,
        }
    }

    /// Deliveries of `bytes` were written to the socket (or discarded).
    pub(crate) fn sent(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::PingResp;
    use rumqttc::v5::mqttbytes::QoS;

    fn publish(topic: &str, len: usize) -> Publish {
        Publish::new(topic, QoS::AtMostOnce, vec![b'x'; len], None)
    }

    #[test]
    fn retained_bytes_stay_under_the_budget() {
        let mut retained = Retained::default();
        assert!(retained.set(&publish("a", 99), 200).is_ok());
        assert_eq!(retained.bytes(), 100);
        assert!(retained.set(&publish("b", 99), 200).is_ok());
        let refused = retained.set(&publish("c", 9), 200).unwrap_err();
        assert_eq!((refused.size, refused.held), (10, 200));
        // Replacing a topic counts only the difference.
        assert!(retained.set(&publish("a", 49), 200).is_ok());
        assert_eq!(retained.bytes(), 150);
        assert!(retained.set(&publish("c", 49), 200).is_ok());
        // Clearing frees the bytes.
        assert!(retained.set(&publish("a", 0), 200).is_ok());
        assert_eq!(retained.bytes(), 150);
        assert_eq!(retained.iter().count(), 2);
    }

    #[tokio::test]
    async fn large_packets_wait_for_the_budget_and_small_ones_never() {
        let budget = PacketBudget::new(1 << 20);
        let mut first = Held::default();
        assert!(
            !budget.hold(&mut first, 1_000, || {}).await,
            "small: no hold"
        );
        assert!(!budget.hold(&mut first, 600_000, || {}).await);
        assert!(
            !budget.hold(&mut first, 700_000, || {}).await,
            "grows in place"
        );
        let mut second = Held::default();
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.hold(&mut second, 500_000, || {}).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "does not fit beside the first");
        first.release();
        assert!(waiting.await.unwrap(), "it had to wait");
        let mut huge = Held::default();
        assert!(
            !budget.hold(&mut huge, 10 << 20, || {}).await,
            "a packet larger than the budget takes it whole"
        );
    }

    #[tokio::test]
    async fn deliveries_beyond_the_queue_bytes_are_dropped_and_acks_are_not() {
        let (tx, mut rx) = mpsc::channel(16);
        let (outbox, queued) = Outbox::new(tx, 100);
        assert!(
            outbox.deliver(publish("t", 200)),
            "one always fits an empty queue"
        );
        assert!(!outbox.deliver(publish("t", 9)));
        outbox.send(Packet::PingResp(PingResp)).await.unwrap();
        let first = rx.recv().await.unwrap();
        queued.sent(QueuedBytes::cost(&first));
        assert!(outbox.deliver(publish("t", 49)));
        assert!(outbox.deliver(publish("t", 49)));
        assert!(!outbox.deliver(publish("t", 9)));
    }
}
