//! `file` sources: one tail task per source (`tail`), which
//! keeps its read position in the store under the source's id.

mod spec;
pub mod tail;

use futures_util::FutureExt;
use serde_json::json;
use tracing::info_span;

pub(crate) use spec::parse;
pub use spec::FileSource;

use super::{SourceSpec, StartContext, StartError};
use crate::product::{SourceSettings, SourceShape};
use tail::FileTail;

impl SourceSettings for FileSource {
    fn shape(&self) -> SourceShape {
        SourceShape {
            format: self.format,
            map: self.map.clone(),
            event_time: self.event_time.clone(),
            columns: self.columns.clone(),
            field: None,
        }
        .with_format(self.format)
    }

    fn contract(&self) -> serde_json::Value {
        json!({ "file": self.path.display().to_string() })
    }
}

impl SourceSpec for FileSource {
    fn start(
        &self,
        ctx: StartContext<'_>,
    ) -> Result<Option<(futures_util::future::BoxFuture<'static, ()>, tracing::Span)>, StartError>
    {
        let tail = FileTail::new(
            ctx.ingestor.clone(),
            ctx.product.clone(),
            ctx.id,
            self,
            ctx.settings.file_poll_interval,
        );
        let span =
            info_span!("file_tail", product = %ctx.product.name, path = %self.path.display());
        Ok(Some((tail.run(ctx.shutdown).boxed(), span)))
    }
}
