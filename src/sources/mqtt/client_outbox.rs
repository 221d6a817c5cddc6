//! What the external-broker client sends on its own initiative (STATE,
//! subscriptions, Sparkplug commands), and the watchdog that notices a
//! broker gone silent.
//!
//! rumqttc's event loop is the only thing that empties its request
//! channel, so the task that polls it must never wait for room in that
//! channel: once the channel is full (of the acker's PUBACKs, say), such a
//! wait is forever — pings included, the connection is never served
//! again. The client therefore never awaits a send from its event-loop
//! task: it queues the request here and [`Outbox::flush`] hands over what
//! fits with `try_*` calls, after every event, keeping the rest in order.
//!
//! The outbox is bounded: one STATE online at most (many offline STATEs
//! read in a row are answered once), subscriptions only as many as the
//! definitions name, and at most [`COMMANDS_QUEUED`] commands; a command
//! beyond that is dropped and counted (rebirth requests are repeated
//! while still needed).

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::time::Instant;

use crate::sources::sparkplug::route::Command;
use crate::sources::sparkplug::state::HostSession;

/// Commands waiting for room in the request channel, at most.
pub(crate) const COMMANDS_QUEUED: usize = 256;

/// Keep-alive intervals without a packet from the broker after which the
/// watchdog drops the connection (rumqttc sends a PINGREQ every interval,
/// so a live broker answers well within one).
pub(crate) const SILENT_KEEP_ALIVES: u32 = 3;

/// One request the client has yet to hand to rumqttc.
#[derive(Debug)]
enum Request {
    /// Our STATE online (retained, QoS 1) for the current session.
    StateOnline,
    Subscribe(Vec<(String, u8)>),
    Unsubscribe(String),
    Command(Command),
}

/// The client's queue of outgoing requests, in the order they were made.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Request>,
    commands: usize,
}

/// What [`Outbox::command`] did with a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    Yes,
    /// [`COMMANDS_QUEUED`] commands are already waiting.
    Dropped,
}

impl Outbox {
    /// Asks for our STATE online; a request still queued covers it.
    pub fn state_online(&mut self) {
        if !self.queue.iter().any(|r| matches!(r, Request::StateOnline)) {
            self.queue.push_back(Request::StateOnline);
        }
    }

    pub fn subscribe(&mut self, filters: Vec<(String, u8)>) {
        if !filters.is_empty() {
            self.queue.push_back(Request::Subscribe(filters));
        }
    }

    pub fn unsubscribe(&mut self, filter: String) {
        self.queue.push_back(Request::Unsubscribe(filter));
    }

    pub fn command(&mut self, command: Command) -> Queued {
        if self.commands >= COMMANDS_QUEUED {
            return Queued::Dropped;
        }
        self.commands += 1;
        self.queue.push_back(Request::Command(command));
        Queued::Yes
    }

    /// The connection is gone: subscriptions and STATE belong to a
    /// session and are asked for again at the next CONNACK; commands stay.
    pub fn disconnected(&mut self) {
        self.queue.retain(|r| matches!(r, Request::Command(_)));
    }

    /// How many requests wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Hands rumqttc what its request channel has room for, in order;
    /// never waits.
    pub fn flush(&mut self, client: &AsyncClient, session: Option<&HostSession>) {
        while let Some(request) = self.queue.front() {
            let sent = match request {
                Request::StateOnline => match session {
                    Some(session) => client
                        .try_publish(
                            session.topic.clone(),
                            QoS::AtLeastOnce,
                            true,
                            session.payload(true),
                        )
                        .is_ok(),
                    None => true,
                },
                Request::Subscribe(filters) => client
                    .try_subscribe_many(filters.iter().map(|(filter, qos)| {
                        rumqttc::SubscribeFilter::new(filter.clone(), qos_of(*qos))
                    }))
                    .is_ok(),
                Request::Unsubscribe(filter) => client.try_unsubscribe(filter.clone()).is_ok(),
                Request::Command(command) => client
                    .try_publish(
                        command.topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        command.payload.clone(),
                    )
                    .is_ok(),
            };
            if !sent {
                // The channel is full: the event loop empties it as it is
                // polled; the next flush goes on from here.
                return;
            }
            if let Some(Request::Command(_)) = self.queue.pop_front() {
                self.commands -= 1;
            }
        }
    }
}

pub(crate) fn qos_of(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// When the broker last said something, and when silence means the
/// connection is dead although the socket is open (a paused or wedged
/// broker, a NAT that dropped the flow).
#[derive(Debug)]
pub(crate) struct Watchdog {
    last: Instant,
    limit: Duration,
}

impl Watchdog {
    pub fn new(keep_alive: Duration) -> Watchdog {
        Watchdog {
            last: Instant::now(),
            limit: keep_alive * SILENT_KEEP_ALIVES,
        }
    }

    /// A packet came from the broker (or a connection was just made).
    pub fn heard(&mut self) {
        self.last = Instant::now();
    }

    /// The moment the connection counts as dead if nothing is heard.
    pub fn deadline(&self) -> Instant {
        self.last + self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(n: u8) -> Command {
        Command {
            topic: format!("spBv1.0/plant/NCMD/gw{n}"),
            payload: vec![n],
        }
    }

    #[test]
    fn many_offline_states_are_answered_by_one_online() {
        let mut outbox = Outbox::default();
        for _ in 0..1_000 {
            outbox.state_online();
        }
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn commands_are_bounded_and_a_disconnect_keeps_only_them() {
        let mut outbox = Outbox::default();
        outbox.subscribe(vec![("a/#".to_string(), 1)]);
        outbox.state_online();
        for n in 0..COMMANDS_QUEUED {
            assert_eq!(outbox.command(command(n as u8)), Queued::Yes);
        }
        assert_eq!(outbox.command(command(0)), Queued::Dropped);
        outbox.unsubscribe("b/#".to_string());
        outbox.disconnected();
        assert_eq!(outbox.len(), COMMANDS_QUEUED);
        outbox.subscribe(Vec::new());
        assert_eq!(outbox.len(), COMMANDS_QUEUED, "nothing to subscribe to");
    }

    #[test]
    fn the_watchdog_allows_three_keep_alives_of_silence_from_the_last_packet() {
        let mut watchdog = Watchdog::new(Duration::from_secs(5));
        let before = Instant::now();
        watchdog.heard();
        let after = Instant::now();
        let deadline = watchdog.deadline();
        assert!(deadline >= before + Duration::from_secs(15));
        assert!(deadline <= after + Duration::from_secs(15));
    }
}
