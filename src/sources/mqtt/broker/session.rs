//! QoS 1 and 2 deliveries of one client session of the embedded broker:
//! packet ids, the in-flight window, what waits behind it, and what is
//! resent (DUP) when the client comes back. Pure state, no socket: the
//! connection's delivery task (`broker`) sends what [`Deliveries::next`]
//! hands it and reports the client's acks.
//!
//! Invariants:
//! - at most `window` deliveries are in flight (sent, not yet PUBACKed or
//!   PUBCOMPed): the client's receive maximum (MQTT 5) capped by
//!   `mqtt.embedded.max_inflight`;
//! - the bytes (topic + payload) held — in flight and queued — stay under
//!   `limit` (`mqtt.embedded.max_queued_bytes`), and those of all sessions
//!   together under a [`SessionBudget`] (`mqtt.embedded.max_session_bytes`:
//!   a thousand away devices must not hold a thousand queues' worth of the
//!   node's memory); a delivery beyond either is
//!   refused ([`Deliveries::push`] → `false`) and the caller counts it in
//!   `meshlet_broker_deliveries_dropped_total`: nothing queued is dropped
//!   later, so what a client was sent in order stays in order;
//! - on a new connection of the session everything in flight is sent again
//!   first, in packet id order of sending, with DUP set (a PUBREL for
//!   those the client already PUBRECed), MQTT 3.1.1 §4.4 / 5 §4.4;
//! - while no connection is attached, deliveries queue (persistent
//!   sessions), within the same byte limit; one whose MQTT 5 message
//!   expiry passed while it waited is not sent (it goes with what is left
//!   of its interval otherwise, §3.3.2.3.3). Kept in memory: a node restart
//!   loses them (the session's subscriptions survive, in the store).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{Packet, PubRel, PubRelReason, Publish};
use rumqttc::v5::mqttbytes::QoS;

/// The bytes all sessions' QoS 1/2 deliveries hold together, under one
/// limit.
#[derive(Clone, Debug)]
pub(crate) struct SessionBudget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl SessionBudget {
    pub(crate) fn new(limit: usize) -> SessionBudget {
        SessionBudget {
            held: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    fn reserve(&self, size: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + size <= self.limit).then_some(held + size)
            })
            .is_ok()
    }

    fn release(&self, size: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(size))
            });
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// The QoS 1/2 deliveries of one session.
#[derive(Debug)]
pub(crate) struct Deliveries {
    /// In flight, by packet id, with the order they were sent in.
    inflight: BTreeMap<u16, Inflight>,
    /// Waiting for room in the window (or for the client to come back),
    /// with when each was queued.
    queue: VecDeque<(Publish, Instant)>,
    /// Bytes of `inflight` and `queue`.
    bytes: usize,
    limit: usize,
    window: usize,
    next_pkid: u16,
    /// Sending order, so a resend keeps it across packet id wrap-around.
    sent_seq: u64,
    /// Whether the in-flight ones were sent on the current connection
    /// (`false` after [`Deliveries::reattach`]: resend them first).
    resent: bool,
    /// Queued deliveries dropped because their message expiry passed,
    /// not yet taken by [`Deliveries::expired`].
    expired: usize,
    /// All sessions' bytes; this session's `bytes` are part of it.
    budget: SessionBudget,
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[derive(Debug)]
struct Inflight {
    publish: Publish,
    seq: u64,
    /// QoS 2: the client sent PUBREC, the broker owes/sent PUBREL.
    released: bool,
}

impl Deliveries {
    #[cfg(test)]
    pub(crate) fn new(limit: usize, window: usize) -> Deliveries {
        Deliveries::with_budget(limit, window, SessionBudget::new(usize::MAX))
    }

    /// Deliveries of at most `limit` bytes, counted in `budget` too.
    pub(crate) fn with_budget(limit: usize, window: usize, budget: SessionBudget) -> Deliveries {
        Deliveries {
            budget,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            bytes: 0,
            limit,
            window: window.max(1),
            next_pkid: 1,
            sent_seq: 0,
            resent: true,
            expired: 0,
        }
    }

    /// Queues a QoS 1/2 delivery; `false` when it would take the session
    /// over its byte limit (one always fits an empty session).
    pub(crate) fn push(&mut self, publish: Publish) -> bool {
        self.push_at(publish, Instant::now())
    }

    /// [`Deliveries::push`] of a delivery queued at `at`.
    pub(crate) fn push_at(&mut self, publish: Publish, at: Instant) -> bool {
        let size = cost(&publish);
        if self.bytes > 0 && self.bytes + size > self.limit {
            return false;
        }
        if !self.budget.reserve(size) {
            return false;
        }
        self.bytes += size;
        self.queue.push_back((publish, at));
        true
    }

    /// A new connection of the session: everything in flight goes again
    /// (DUP), before anything queued; `window` is the new client's.
    pub(crate) fn reattach(&mut self, window: usize) {
        self.window = window.max(1);
        self.resent = self.inflight.is_empty();
    }

    /// The packets to send now, in order: on a new connection the resends
    /// first, then queued deliveries while the window has room.
    pub(crate) fn next(&mut self) -> Vec<Packet> {
        self.next_at(Instant::now())
    }

    /// [`Deliveries::next`] as of `now`: queued deliveries whose message
    /// expiry passed are dropped (see [`Deliveries::expired`]).
    pub(crate) fn next_at(&mut self, now: Instant) -> Vec<Packet> {
        let mut out = Vec::new();
        if !self.resent {
            self.resent = true;
            let mut again: Vec<(&u16, &Inflight)> = self.inflight.iter().collect();
            again.sort_by_key(|(_, sent)| sent.seq);
            for (&pkid, sent) in again {
                if sent.released {
                    out.push(Packet::PubRel(PubRel {
                        pkid,
                        reason: PubRelReason::Success,
                        properties: None,
                    }));
                } else {
                    let mut publish = sent.publish.clone();
                    publish.dup = true;
                    out.push(Packet::Publish(publish));
                }
            }
        }
        while self.inflight.len() < self.window {
            let Some((mut publish, queued_at)) = self.queue.pop_front() else {
                break;
            };
            match super::v5::remaining_expiry(&publish, now.saturating_duration_since(queued_at)) {
                Some(Err(())) => {
                    self.bytes -= cost(&publish);
                    self.budget.release(cost(&publish));
                    self.expired += 1;
                    continue;
                }
                Some(Ok(left)) => {
                    if let Some(p) = publish.properties.as_mut() {
                        p.message_expiry_interval = Some(left);
                    }
                }
                None => {}
            }
            let Some(pkid) = self.free_pkid() else {
                self.queue.push_front((publish, queued_at));
                break;
            };
            publish.pkid = pkid;
            publish.dup = false;
            self.sent_seq += 1;
            self.inflight.insert(
                pkid,
                Inflight {
                    publish: publish.clone(),
                    seq: self.sent_seq,
                    released: false,
                },
            );
            out.push(Packet::Publish(publish));
        }
        out
    }

    /// The client's PUBACK (QoS 1) or PUBCOMP (QoS 2): the delivery is
    /// done. `false` for a packet id not in flight (ignored).
    pub(crate) fn complete(&mut self, pkid: u16) -> bool {
        match self.inflight.remove(&pkid) {
            Some(done) => {
                self.bytes -= cost(&done.publish);
                self.budget.release(cost(&done.publish));
                true
            }
            None => false,
        }
    }

    /// The client's PUBREC: the PUBREL to send, `None` for a packet id
    /// not in flight at QoS 2.
    pub(crate) fn received(&mut self, pkid: u16) -> Option<Packet> {
        let sent = self.inflight.get_mut(&pkid)?;
        if sent.publish.qos != QoS::ExactlyOnce {
            return None;
        }
        sent.released = true;
        Some(Packet::PubRel(PubRel {
            pkid,
            reason: PubRelReason::Success,
            properties: None,
        }))
    }

    /// How many queued deliveries expired since the last call (the caller
    /// counts them).
    pub(crate) fn expired(&mut self) -> usize {
        std::mem::take(&mut self.expired)
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.queue.is_empty()
    }

    /// A packet id not in flight, searching from the last one given.
    fn free_pkid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if pkid != 0 && !self.inflight.contains_key(&pkid) {
                return Some(pkid);
            }
        }
        None
    }
}

fn cost(publish: &Publish) -> usize {
    publish.topic.len() + publish.payload.len()
}

/// A subscription as the store keeps it in the session's filter list: the
/// filter, then U+0000 and the QoS granted (U+0000 cannot be in a filter,
/// so it cannot be misread). QoS 0 is stored as the bare filter, which is
/// also what sessions stored before QoS 1/2 deliveries read as.
pub(crate) fn stored_filter(filter: &str, qos: QoS) -> String {
    match qos {
        QoS::AtMostOnce => filter.to_string(),
        QoS::AtLeastOnce => format!("{filter}\01"),
        QoS::ExactlyOnce => format!("{filter}\02"),
    }
}

/// [`stored_filter`] read back.
pub(crate) fn parse_stored_filter(stored: &str) -> (&str, QoS) {
    match stored.rsplit_once('\0') {
        Some((filter, "1")) => (filter, QoS::AtLeastOnce),
        Some((filter, "2")) => (filter, QoS::ExactlyOnce),
        Some((filter, _)) => (filter, QoS::AtMostOnce),
        None => (stored, QoS::AtMostOnce),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: QoS, len: usize) -> Publish {
        Publish::new(topic, qos, vec![b'x'; len], None)
    }

    fn pkids(packets: &[Packet]) -> Vec<(u16, bool)> {
        packets
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.pkid, p.dup),
                Packet::PubRel(r) => (r.pkid, true),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_window_holds_back_what_does_not_fit() {
        let mut d = Deliveries::new(1 << 20, 2);
        for _ in 0..3 {
            assert!(d.push(publish("t", QoS::AtLeastOnce, 10)));
        }
        assert_eq!(pkids(&d.next()), vec![(1, false), (2, false)]);
        assert!(d.next().is_empty(), "window full");
        assert!(d.complete(1));
        assert!(!d.complete(1), "already done");
        assert_eq!(pkids(&d.next()), vec![(3, false)]);
        assert!(d.complete(2) && d.complete(3));
        assert!(d.is_empty());
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn a_reconnect_resends_in_flight_with_dup_then_the_queue() {
        let mut d = Deliveries::new(1 << 20, 2);
        d.push(publish("a", QoS::AtLeastOnce, 1));
        d.push(publish("b", QoS::ExactlyOnce, 1));
        d.push(publish("c", QoS::AtLeastOnce, 1));
        assert_eq!(pkids(&d.next()), vec![(1, false), (2, false)]);
        // PUBREC for 2: PUBREL owed; then the client goes away.
        assert!(matches!(d.received(2), Some(Packet::PubRel(_))));
        assert_eq!(d.received(1), None, "QoS 1 has no PUBREC");
        d.reattach(5);
        let again = d.next();
        assert_eq!(pkids(&again), vec![(1, true), (2, true), (3, false)]);
        assert!(matches!(again[1], Packet::PubRel(_)), "PUBREL, not PUBLISH");
        assert!(d.next().is_empty());
    }

    #[test]
    fn bytes_are_bounded_and_refusals_are_the_newest() {
        let mut d = Deliveries::new(100, 10);
        assert!(d.push(publish("t", QoS::AtLeastOnce, 59)));
        assert!(!d.push(publish("t", QoS::AtLeastOnce, 59)), "over 100");
        assert!(d.push(publish("t", QoS::AtLeastOnce, 39)));
        assert_eq!(d.bytes(), 100);
        let mut big = Deliveries::new(100, 10);
        assert!(
            big.push(publish("t", QoS::AtLeastOnce, 500)),
            "one always fits"
        );
    }

    #[test]
    fn queued_deliveries_expire_and_the_rest_carry_what_is_left() {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        use std::time::Duration;
        let expiring = |secs| {
            Publish::new(
                "t",
                QoS::AtLeastOnce,
                vec![b'x'; 4],
                Some(PublishProperties {
                    message_expiry_interval: Some(secs),
                    ..Default::default()
                }),
            )
        };
        let mut d = Deliveries::new(1 << 20, 10);
        let start = Instant::now();
        assert!(d.push_at(expiring(5), start));
        assert!(d.push_at(expiring(60), start));
        assert!(d.push_at(publish("t", QoS::AtLeastOnce, 4), start));
        let sent = d.next_at(start + Duration::from_secs(10));
        assert_eq!(sent.len(), 2, "the 5 s one expired while queued");
        assert_eq!(d.expired(), 1);
        assert_eq!(d.expired(), 0, "taken once");
        match &sent[0] {
            Packet::Publish(p) => assert_eq!(
                p.properties
                    .as_ref()
                    .and_then(|p| p.message_expiry_interval),
                Some(50)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.bytes(), 2 * (1 + 4), "the expired one's bytes are freed");
    }

    #[test]
    fn all_sessions_together_stay_under_their_budget() {
        let budget = SessionBudget::new(100);
        let mut a = Deliveries::with_budget(1 << 20, 10, budget.clone());
        let mut b = Deliveries::with_budget(1 << 20, 10, budget.clone());
        assert!(a.push(publish("t", QoS::AtLeastOnce, 59)));
        assert!(
            !b.push(publish("t", QoS::AtLeastOnce, 59)),
            "over 100 together"
        );
        assert!(b.push(publish("t", QoS::AtLeastOnce, 39)));
        assert_eq!(budget.held(), 100);
        let sent = a.next();
        assert_eq!(sent.len(), 1);
        assert!(a.complete(1));
        assert_eq!(
            budget.held(),
            40,
            "an acknowledged delivery frees its bytes"
        );
        drop(b);
        assert_eq!(budget.held(), 0, "an ended session frees its bytes");
    }

    #[test]
    fn stored_filters_keep_their_qos() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let stored = stored_filter("plant/+/cmd/#", qos);
            assert_eq!(parse_stored_filter(&stored), ("plant/+/cmd/#", qos));
        }
        assert_eq!(
            parse_stored_filter("old/filter"),
            ("old/filter", QoS::AtMostOnce)
        );
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut d = Deliveries::new(usize::MAX, 3);
        d.next_pkid = u16::MAX;
        for _ in 0..3 {
            d.push(publish("t", QoS::AtLeastOnce, 1));
        }
        assert_eq!(
            pkids(&d.next()),
            vec![(u16::MAX, false), (1, false), (2, false)]
        );
        d.complete(1);
        d.next_pkid = u16::MAX;
        d.push(publish("t", QoS::AtLeastOnce, 1));
        assert_eq!(pkids(&d.next()), vec![(1, false)], "65535 and 0 skipped");
    }
}
