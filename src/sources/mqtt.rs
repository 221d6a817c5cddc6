//! `mqtt` sources: fed by the embedded broker and the external MQTT
//! client through the topic routes (`ingest::routes`); nothing to start
//! per source.

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
