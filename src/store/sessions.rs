//! Persistent MQTT sessions of the embedded broker: which client ids asked
//! for a session (`clean_session = false`) and what they subscribed to.
//!
//! Why the store keeps them: after the node restarts (a crash included), a
//! device reconnecting with a persistent session must hear
//! `session_present = 1`, or MQTT clients discard their unacknowledged QoS 1
//! messages instead of resending them, and the data is lost on the device
//! side. The set is small (one short record per device) and written
//! outside the ingest transactions; it becomes durable with the next
//! barrier or sled's periodic flush.
//!
//! One tree, [`SESSIONS_TREE`] (no `/`, so never a product's), key = client
//! id, value = the session's subscription filters.

use serde::{Deserialize, Serialize};

use super::codec;
use super::{Store, StoreError};

pub(crate) const SESSIONS_TREE: &str = "mqtt_sessions";

#[derive(Serialize, Deserialize)]
struct StoredSession {
    filters: Vec<String>,
}

impl Store {
    fn sessions(&self) -> Result<sled::Tree, StoreError> {
        self.inner
            .db
            .open_tree(SESSIONS_TREE)
            .map_err(|e| StoreError::sled(format!("opening tree `{SESSIONS_TREE}`"), e))
    }

    /// The subscription filters of `client_id`'s persistent session, `None`
    /// when it has none.
    pub fn mqtt_session(&self, client_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let bytes = self
            .sessions()?
            .get(client_id.as_bytes())
            .map_err(|e| StoreError::sled(format!("MQTT session `{client_id}`: reading"), e))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let stored: StoredSession = codec::decode(&bytes).map_err(|e| {
            StoreError::bookkeeping(format!("MQTT session `{client_id}`"), "session", e)
        })?;
        Ok(Some(stored.filters))
    }

    /// Creates or replaces `client_id`'s persistent session.
    pub fn set_mqtt_session(&self, client_id: &str, filters: &[String]) -> Result<(), StoreError> {
        let bytes = codec::encode(&StoredSession {
            filters: filters.to_vec(),
        })
        .map_err(|e| StoreError::encode("mqtt", client_id, "session", e))?;
        self.sessions()?
            .insert(client_id.as_bytes(), bytes)
            .map_err(|e| StoreError::sled(format!("MQTT session `{client_id}`: writing"), e))?;
        self.inner.group.wrote();
        Ok(())
    }

    /// Ends `client_id`'s persistent session (a clean-session connect).
    pub fn remove_mqtt_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions()?
            .remove(client_id.as_bytes())
            .map_err(|e| StoreError::sled(format!("MQTT session `{client_id}`: removing"), e))?;
        self.inner.group.wrote();
        Ok(())
    }
}
