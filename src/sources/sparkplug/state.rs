//! The node's own Sparkplug 3.0 host application `STATE`: the retained
//! message on `spBv1.0/STATE/<host_id>` that tells edge nodes whether
//! their primary host is there to read them.
//!
//! Payload (Sparkplug 3.0 §host application): UTF-8 JSON
//! `{"online":<bool>,"timestamp":<ms since the epoch>}`, published QoS 1
//! and retained. One timestamp per MQTT session: the will registered at
//! CONNECT (offline), the birth published after CONNACK (online) and an
//! intentional offline before DISCONNECT all carry it, so an edge can tell
//! a late will of an old session from the current state.
//!
//! Who publishes it:
//! - the external broker client (`client.rs`): online after each CONNACK,
//!   offline before a clean DISCONNECT, and the MQTT will (offline) for a
//!   crash or a lost connection, re-registered with a new timestamp before
//!   each reconnect;
//! - the embedded broker (`broker.rs`) *is* the broker: it retains online
//!   at start and routes offline at a clean stop, before closing client
//!   connections. A crash of the node takes the broker (and every edge's
//!   connection) down with it, so no will is needed: edges see their
//!   broker go and reconnect, and a restarted node retains online again.

use std::time::{SystemTime, UNIX_EPOCH};

use super::host::NAMESPACE;

/// Why a configured host id cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sparkplug.host_id `{0}`: must be one MQTT topic level (not empty, no `/`, `+` or `#`)")]
pub struct HostIdError(pub String);

/// The node as a primary host application: its id and topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryHost {
    host_id: String,
    topic: String,
}

/// The STATE messages of one MQTT session (one timestamp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSession {
    pub topic: String,
    pub timestamp: u64,
}

impl PrimaryHost {
    /// Checks `host_id` (a single topic level).
    pub fn new(host_id: &str) -> Result<PrimaryHost, HostIdError> {
        if host_id.is_empty() || host_id.contains(['/', '+', '#', '\0']) {
            return Err(HostIdError(host_id.to_string()));
        }
        Ok(PrimaryHost {
            host_id: host_id.to_string(),
            topic: format!("{NAMESPACE}/STATE/{host_id}"),
        })
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// `spBv1.0/STATE/<host_id>`.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A new session, stamped now.
    pub fn session(&self) -> HostSession {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.session_at(timestamp)
    }

    pub fn session_at(&self, timestamp: u64) -> HostSession {
        HostSession {
            topic: self.topic.clone(),
            timestamp,
        }
    }
}

impl HostSession {
    /// The STATE payload: `{"online":…,"timestamp":…}`.
    pub fn payload(&self, online: bool) -> Vec<u8> {
        serde_json::json!({ "online": online, "timestamp": self.timestamp })
            .to_string()
            .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_one_topic_level() {
        let host = PrimaryHost::new("scada-1").expect("valid");
        assert_eq!(host.topic(), "spBv1.0/STATE/scada-1");
        for bad in ["", "a/b", "a+", "#", "x\0"] {
            assert_eq!(PrimaryHost::new(bad), Err(HostIdError(bad.to_string())));
        }
    }

    #[test]
    fn payloads_are_the_sparkplug_json_with_one_timestamp() {
        let session = PrimaryHost::new("h")
            .expect("valid")
            .session_at(1_700_000_000_123);
        let online: serde_json::Value =
            serde_json::from_slice(&session.payload(true)).expect("JSON");
        assert_eq!(
            online,
            serde_json::json!({ "online": true, "timestamp": 1_700_000_000_123u64 })
        );
        let offline: serde_json::Value =
            serde_json::from_slice(&session.payload(false)).expect("JSON");
        assert_eq!(offline["online"], false);
        assert_eq!(offline["timestamp"], online["timestamp"]);
    }
}
