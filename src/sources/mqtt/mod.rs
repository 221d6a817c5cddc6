//! `mqtt` sources: fed by the embedded broker (`broker/`) and the external
//! MQTT client (`client`) through the topic routes (`routes`); nothing to
//! start per source. Both MQTT ends also carry the `sparkplug` sources'
//! messages (see `sources::sparkplug`).

pub mod broker;
pub mod client;
mod client_outbox;
pub mod routes;

use serde_json::json;

use super::SourceSpec;
use crate::pipeline::SourceShape;
use crate::product::MqttSource;

impl SourceSpec for MqttSource {
    fn shape(&self) -> SourceShape {
        SourceShape {
            format: self.format,
            map: self.map.clone(),
            event_time: self.event_time.clone(),
            columns: self.columns.clone(),
            field: self.field.clone(),
        }
        .with_format(self.format)
    }

    fn contract(&self) -> serde_json::Value {
        json!({ "mqtt": self.topic.to_string() })
    }
}
