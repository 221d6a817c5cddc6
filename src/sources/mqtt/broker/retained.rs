//! The embedded broker's retained messages across restarts: each change
//! to the in-memory set (`limits::Retained`) is mirrored into the
//! store (`store::retained`) by one task, in order; at start they are
//! loaded back through the same `max_retained_bytes` budget.
//!
//! Why a task and a bounded channel: a retained publish must not wait for
//! a disk write on the broker's routing path, yet the changes of one topic
//! must reach the store in the order they were made (the last one wins).
//! The channel holds [`PERSIST_QUEUE`] changes; a publisher whose retained
//! change does not fit waits (its connection is not read meanwhile), so
//! nothing retained is silently left out of the store.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;
use tracing::warn;

use crate::record::Timestamp;
use crate::store::retained::RetainedMessage;
use crate::store::Store;

/// Retained changes waiting to be written.
pub(crate) const PERSIST_QUEUE: usize = 256;

/// One change to the retained messages.
#[derive(Debug)]
pub(crate) enum RetainedChange {
    Set(RetainedMessage),
    Clear(String),
}

/// A retained publish as the store keeps it.
pub(crate) fn to_stored(publish: &Publish) -> RetainedMessage {
    let properties = publish.properties.clone().unwrap_or_default();
    RetainedMessage {
        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
        payload: publish.payload.to_vec(),
        qos: publish.qos as u8,
        retained_at: Timestamp::now().as_micros(),
        payload_format_indicator: properties.payload_format_indicator,
        message_expiry_interval: properties.message_expiry_interval,
        content_type: properties.content_type,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation_data.map(|d| d.to_vec()),
        user_properties: properties.user_properties,
    }
}

/// A stored retained message as the broker holds it, and since when (its
/// message expiry counts from when it was first retained, not from the
/// restart).
pub(crate) fn from_stored(stored: RetainedMessage) -> (Publish, Instant) {
    let has_properties = stored.payload_format_indicator.is_some()
        || stored.message_expiry_interval.is_some()
        || stored.content_type.is_some()
        || stored.response_topic.is_some()
        || stored.correlation_data.is_some()
        || !stored.user_properties.is_empty();
    let properties = has_properties.then(|| PublishProperties {
        payload_format_indicator: stored.payload_format_indicator,
        message_expiry_interval: stored.message_expiry_interval,
        topic_alias: None,
        response_topic: stored.response_topic,
        correlation_data: stored.correlation_data.map(Bytes::from),
        user_properties: stored.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: stored.content_type,
    });
    let qos = match stored.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let mut publish = Publish::new(stored.topic, qos, stored.payload, properties);
    publish.retain = true;
    let age = Timestamp::now()
        .as_micros()
        .saturating_sub(stored.retained_at)
        .max(0);
    let age = Duration::from_micros(u64::try_from(age).unwrap_or(0));
    let now = Instant::now();
    (publish, now.checked_sub(age).unwrap_or(now))
}

/// Writes retained changes into the store in the order they come, a batch
/// per blocking call, until every sender is gone.
pub(crate) async fn persist(store: Store, mut changes: mpsc::Receiver<RetainedChange>) {
    let mut batch = Vec::with_capacity(PERSIST_QUEUE);
    while changes.recv_many(&mut batch, PERSIST_QUEUE).await > 0 {
        let store = store.clone();
        let work = std::mem::take(&mut batch);
        let written = tokio::task::spawn_blocking(move || {
            for change in work {
                match change {
                    RetainedChange::Set(message) => store.set_mqtt_retained(&message)?,
                    RetainedChange::Clear(topic) => store.remove_mqtt_retained(&topic)?,
                }
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(error = %err, "retained messages could not be written to the store; they stay retained in memory")
            }
            Err(err) => warn!(error = %err, "retained message writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retained_publish_round_trips_through_the_store_form() {
        let properties = PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("site".into(), "berlin".into())],
            message_expiry_interval: Some(600),
            response_topic: Some("reply".into()),
            correlation_data: Some(Bytes::from_static(b"7")),
            ..Default::default()
        };
        let mut publish = Publish::new("a/b", QoS::AtLeastOnce, b"{}".to_vec(), Some(properties));
        publish.retain = true;
        let mut stored = to_stored(&publish);
        stored.retained_at -= 5_000_000;
        let (back, since) = from_stored(stored);
        assert_eq!(back, publish);
        assert!(since.elapsed() >= Duration::from_secs(4), "age kept");
        let bare = Publish::new("c", QoS::AtMostOnce, b"x".to_vec(), None);
        assert_eq!(from_stored(to_stored(&bare)).0.properties, None);
    }
}
