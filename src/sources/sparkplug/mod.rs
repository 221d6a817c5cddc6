//! `sparkplug` sources: MQTT messages in the `spBv1.0` namespace, decoded
//! by the host state machine (`host`, on the wire format of `proto`) and
//! routed per source by `route`; `state` is the node's own host STATE.
//! The messages arrive through the MQTT ends of `sources::mqtt`; nothing to
//! start per source.

pub mod host;
pub mod metrics;
pub mod proto;
pub mod route;
mod spec;
pub mod state;

use serde_json::json;

use indexmap::IndexMap;

pub(crate) use spec::parse;
pub use spec::SparkplugSource;

use super::SourceSpec;
use crate::product::{PayloadFormat, SourceSettings, SourceShape};

/// Nothing to start: the MQTT ends feed these sources.
impl SourceSpec for SparkplugSource {}

impl SourceSettings for SparkplugSource {
    /// The shape of the JSON document the host builds per update (see
    /// [`host`]): the key field holds the device or edge node id,
    /// `__metrics` the metrics by name, `__ts` the payload timestamp,
    /// `__online` the birth/death state. The `__` prefix cannot clash
    /// with a field name.
    fn shape(&self) -> SourceShape {
        let mut map: IndexMap<String, String> = self
            .metrics
            .iter()
            .map(|(field, metric)| {
                let escaped = metric.replace('~', "~0").replace('/', "~1");
                (field.clone(), format!("/__metrics/{escaped}"))
            })
            .collect();
        if let Some(online) = &self.online {
            map.insert(online.clone(), "/__online".to_string());
        }
        SourceShape {
            format: PayloadFormat::Json,
            map,
            event_time: Some("/__ts".to_string()),
            columns: Vec::new(),
            field: None,
        }
    }

    fn contract(&self) -> serde_json::Value {
        json!({ "sparkplug": format!("spBv1.0/{}/#", self.group) })
    }
}
