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
//! id, value = the session's subscription filters and, once its client
//! disconnected, when: a session whose client stays away longer than the
//! broker's `session_expiry` is removed ([`Store::expire_mqtt_sessions`]),
//! so client ids that come once do not grow the store for ever.

use serde::{Deserialize, Serialize};

use super::codec;
use super::{Store, StoreError};

pub(crate) const SESSIONS_TREE: &str = "mqtt_sessions";

#[derive(Serialize, Deserialize)]
struct StoredSession {
    filters: Vec<String>,
    /// When the client disconnected, Unix microseconds; `None` while it is
    /// connected (and for sessions stored before this field existed).
    #[serde(default)]
    disconnected_at: Option<i64>,
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
        Ok(self.stored_session(client_id)?.map(|s| s.filters))
    }

    fn stored_session(&self, client_id: &str) -> Result<Option<StoredSession>, StoreError> {
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
        Ok(Some(stored))
    }

    /// Creates or replaces `client_id`'s persistent session, as connected.
    pub fn set_mqtt_session(&self, client_id: &str, filters: &[String]) -> Result<(), StoreError> {
        self.put_session(
            client_id,
            &StoredSession {
                filters: filters.to_vec(),
                disconnected_at: None,
            },
        )
    }

    /// Notes that `client_id` disconnected at `at_micros`: its session
    /// expires from then on. No effect without a session.
    pub fn disconnect_mqtt_session(
        &self,
        client_id: &str,
        at_micros: i64,
    ) -> Result<(), StoreError> {
        match self.stored_session(client_id)? {
            Some(mut stored) => {
                stored.disconnected_at = Some(at_micros);
                self.put_session(client_id, &stored)
            }
            None => Ok(()),
        }
    }

    /// Whether `client_id`'s session expired: its client disconnected
    /// before `cutoff_micros`.
    pub fn mqtt_session_expired(
        &self,
        client_id: &str,
        cutoff_micros: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .stored_session(client_id)?
            .and_then(|s| s.disconnected_at)
            .is_some_and(|at| at < cutoff_micros))
    }

    /// Removes the sessions whose client disconnected before
    /// `cutoff_micros` and is not in `live`; a session with no disconnect
    /// time whose client is not live (the node stopped while it was
    /// connected) is stamped `now_micros`, so it gets a whole expiry
    /// period. Returns how many were removed.
    pub fn expire_mqtt_sessions(
        &self,
        cutoff_micros: i64,
        now_micros: i64,
        live: &std::collections::HashSet<String>,
    ) -> Result<usize, StoreError> {
        let tree = self.sessions()?;
        let mut removed = 0;
        for entry in tree.iter() {
            let (key, bytes) =
                entry.map_err(|e| StoreError::sled("MQTT sessions: reading".to_string(), e))?;
            let client_id = String::from_utf8_lossy(&key).into_owned();
            if live.contains(&client_id) {
                continue;
            }
            let Ok(mut stored) = codec::decode::<StoredSession>(&bytes) else {
                continue;
            };
            match stored.disconnected_at {
                Some(at) if at < cutoff_micros => {
                    tree.remove(&key).map_err(|e| {
                        StoreError::sled(format!("MQTT session `{client_id}`: removing"), e)
                    })?;
                    removed += 1;
                }
                Some(_) => {}
                None => {
                    stored.disconnected_at = Some(now_micros);
                    self.put_session(&client_id, &stored)?;
                }
            }
        }
        if removed > 0 {
            self.inner.group.wrote();
        }
        Ok(removed)
    }

    fn put_session(&self, client_id: &str, stored: &StoredSession) -> Result<(), StoreError> {
        let bytes = codec::encode(stored)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::StoreConfig;
    use super::*;

    #[test]
    fn sessions_expire_after_their_client_left_and_live_ones_never() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(StoreConfig::new(dir.path().join("s"))).expect("open");
        let filters = vec!["a/#".to_string()];
        store.set_mqtt_session("gone", &filters).unwrap();
        store.set_mqtt_session("live", &filters).unwrap();
        store.set_mqtt_session("unstamped", &filters).unwrap();
        store.disconnect_mqtt_session("gone", 1_000).unwrap();
        store.disconnect_mqtt_session("live", 1_000).unwrap();
        store.disconnect_mqtt_session("nobody", 1_000).unwrap();
        assert_eq!(
            store.mqtt_session("nobody").unwrap(),
            None,
            "no session made"
        );
        assert!(store.mqtt_session_expired("gone", 2_000).unwrap());
        assert!(!store.mqtt_session_expired("gone", 500).unwrap());

        let live: HashSet<String> = ["live".to_string()].into();
        // Cutoff 2,000: `gone` left at 1,000; `live` is connected again;
        // `unstamped` (node stopped while it was connected) gets `now`.
        assert_eq!(store.expire_mqtt_sessions(2_000, 5_000, &live).unwrap(), 1);
        assert_eq!(store.mqtt_session("gone").unwrap(), None);
        assert_eq!(store.mqtt_session("live").unwrap(), Some(filters.clone()));
        assert_eq!(
            store.mqtt_session("unstamped").unwrap(),
            Some(filters.clone())
        );
        assert!(!store.mqtt_session_expired("unstamped", 5_000).unwrap());
        assert!(store.mqtt_session_expired("unstamped", 5_001).unwrap());
        // Connecting again clears the disconnect time.
        store.set_mqtt_session("unstamped", &filters).unwrap();
        assert!(!store.mqtt_session_expired("unstamped", i64::MAX).unwrap());
    }
}
