//! Retained messages of the embedded broker, kept across node restarts.
//!
//! Why the store keeps them: a retained message is a device's last-known
//! state (a Sparkplug STATE, a Homie `$state`, a configuration topic) that
//! a subscriber arriving later must get; held in memory only, a node
//! restart left every subscriber without it until each device published
//! again. The broker keeps them in memory within its own
//! `max_retained_bytes` budget and mirrors each change here, so this tree
//! holds at most what that budget allows; at start the broker loads them
//! back through the same budget.
//!
//! One tree, [`RETAINED_TREE`] (no `/`, so never a product's), key =
//! topic, value = [`RetainedMessage`]. Written outside the ingest
//! transactions, like the sessions (`sessions.rs`): a change becomes
//! durable with the next barrier or sled's periodic flush.

use serde::{Deserialize, Serialize};

use super::codec;
use super::{Store, StoreError};

pub(crate) const RETAINED_TREE: &str = "mqtt_retained";

/// One retained message with the MQTT 5 properties that travel with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// When it was retained, Unix microseconds (its message expiry counts
    /// from then).
    pub retained_at: i64,
    #[serde(default)]
    pub payload_format_indicator: Option<u8>,
    #[serde(default)]
    pub message_expiry_interval: Option<u32>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub response_topic: Option<String>,
    #[serde(default)]
    pub correlation_data: Option<Vec<u8>>,
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
}

impl Store {
    fn retained_tree(&self) -> Result<sled::Tree, StoreError> {
        self.inner
            .db
            .open_tree(RETAINED_TREE)
            .map_err(|e| StoreError::sled(format!("opening tree `{RETAINED_TREE}`"), e))
    }

    /// Keeps `message` as its topic's retained message (replacing one).
    pub fn set_mqtt_retained(&self, message: &RetainedMessage) -> Result<(), StoreError> {
        let bytes = codec::encode(message)
            .map_err(|e| StoreError::encode("mqtt", &message.topic, "retained message", e))?;
        self.retained_tree()?
            .insert(message.topic.as_bytes(), bytes)
            .map_err(|e| {
                StoreError::sled(format!("MQTT retained `{}`: writing", message.topic), e)
            })?;
        self.inner.group.wrote();
        Ok(())
    }

    /// Clears `topic`'s retained message (none: no effect).
    pub fn remove_mqtt_retained(&self, topic: &str) -> Result<(), StoreError> {
        self.retained_tree()?
            .remove(topic.as_bytes())
            .map_err(|e| StoreError::sled(format!("MQTT retained `{topic}`: removing"), e))?;
        self.inner.group.wrote();
        Ok(())
    }

    /// Every retained message, in topic order. One that does not decode
    /// is an error naming its topic: the caller decides to go on without
    /// it.
    pub fn mqtt_retained(&self) -> Result<Vec<Result<RetainedMessage, StoreError>>, StoreError> {
        let tree = self.retained_tree()?;
        let mut out = Vec::new();
        for entry in tree.iter() {
            let (key, bytes) =
                entry.map_err(|e| StoreError::sled("MQTT retained: reading".to_string(), e))?;
            let topic = String::from_utf8_lossy(&key).into_owned();
            out.push(codec::decode::<RetainedMessage>(&bytes).map_err(|e| {
                StoreError::bookkeeping(format!("MQTT retained `{topic}`"), "retained message", e)
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreConfig;
    use super::*;

    #[test]
    fn retained_messages_are_set_replaced_cleared_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s");
        let message = |topic: &str, payload: &[u8]| RetainedMessage {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos: 1,
            retained_at: 1_000,
            content_type: Some("application/json".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        {
            let store = Store::open(StoreConfig::new(&path)).expect("open");
            store.set_mqtt_retained(&message("a/1", b"one")).unwrap();
            store.set_mqtt_retained(&message("a/2", b"two")).unwrap();
            store.set_mqtt_retained(&message("a/1", b"uno")).unwrap();
            store.set_mqtt_retained(&message("a/3", b"three")).unwrap();
            store.remove_mqtt_retained("a/3").unwrap();
            store.remove_mqtt_retained("never").unwrap();
            store.durable_blocking().unwrap();
        }
        let store = Store::open(StoreConfig::new(&path)).expect("reopen");
        let kept: Vec<RetainedMessage> = store
            .mqtt_retained()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept, vec![message("a/1", b"uno"), message("a/2", b"two")]);
    }
}
