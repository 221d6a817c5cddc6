//! `http` sources: fed by the API's push endpoint (`POST /ingest/<product>`,
//! `Ingestor::submit_push`); nothing to start per source.

use serde_json::json;

mod spec;

pub(crate) use spec::parse;
pub use spec::HttpSource;

use super::SourceSpec;
use crate::product::{SourceSettings, SourceShape};

/// Nothing to start: the push endpoint feeds these sources.
impl SourceSpec for HttpSource {}

impl SourceSettings for HttpSource {
    fn shape(&self) -> SourceShape {
        SourceShape {
            format: self.format,
            map: self.map.clone(),
            event_time: self.event_time.clone(),
            columns: Vec::new(),
            field: None,
        }
        .with_format(self.format)
    }

    fn contract(&self) -> serde_json::Value {
        json!({ "http": "POST /ingest/<product>" })
    }

    fn takes_push(&self) -> bool {
        true
    }
}
