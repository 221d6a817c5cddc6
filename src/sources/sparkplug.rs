//! `sparkplug` sources: MQTT messages in the `spBv1.0` namespace, decoded
//! by the host state machine (`ingest::sparkplug`) and routed per source by
//! `ingest::sparkplug_route`; nothing to start per source.

use serde_json::json;

use super::SourceSpec;
use crate::pipeline::SourceShape;
use crate::product::SparkplugSource;

impl SourceSpec for SparkplugSource {
    fn shape(&self) -> SourceShape {
        SourceShape::sparkplug(self)
    }

    fn contract(&self) -> serde_json::Value {
        json!({ "sparkplug": format!("spBv1.0/{}/#", self.group) })
    }
}
