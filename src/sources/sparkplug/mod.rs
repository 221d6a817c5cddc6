//! `sparkplug` sources: MQTT messages in the `spBv1.0` namespace, decoded
//! by the host state machine (`host`, on the wire format of `proto`) and
//! routed per source by `route`; `state` is the node's own host STATE.
//! The messages arrive through the MQTT ends of `sources::mqtt`; nothing to
//! start per source.

pub mod host;
pub mod proto;
pub mod route;
pub mod state;

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
