//! `mqtt` sources: fed by the embedded broker (`broker/`) and the external
//! MQTT client (`client`) through the topic routes (`routes`); nothing to
//! start per source. Both MQTT ends also carry the `sparkplug` sources'
//! messages (see `sources::sparkplug`).

pub mod broker;
pub mod client;
mod client_outbox;
pub mod dispatch;
pub mod routes;
mod spec;

use serde_json::json;

pub(crate) use spec::parse;
pub use spec::MqttSource;

use super::SourceSpec;
use crate::product::{SourceSettings, SourceShape};

/// Nothing to start: the MQTT ends feed these sources.
impl SourceSpec for MqttSource {}

impl SourceSettings for MqttSource {
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
