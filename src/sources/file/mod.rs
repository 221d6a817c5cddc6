//! `file` sources: one tail task per source (`tail`), which
//! keeps its read position in the store under the source's id.

pub mod tail;

use futures_util::FutureExt;
use serde_json::json;
use tracing::info_span;

use super::{SourceSpec, StartContext, StartError};
use crate::pipeline::SourceShape;
use crate::product::FileSource;
use tail::FileTail;

impl SourceSpec for FileSource {
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
