//! Sources: the one owner of "which kinds of source exist".
//!
//! A product's `sources:` list names kinds (`mqtt`, `http`, `file`,
//! `sparkplug`, `modbus`, `opcua`). Everything the rest of the node asks of a kind
//! goes through this module, so a new kind is a folder here plus its line
//! in [`SourceKind`] and in [`Source::spec`]:
//!
//! - [`SourceKind`]: the kind's string form and its parse, in one place;
//! - [`SourceId`]: a source's typed id (`<kind>:<index in the product's
//!   sources>`), the name counters, quarantine entries and file-tail
//!   offsets use;
//! - [`SourceSpec`]: what each kind's definition tells the pipeline (how
//!   payloads are read), the data contract (where records come from) and
//!   the node (the task it runs, if it polls or tails by itself).
//!
//! Each kind's protocol code lives in its folder: the embedded broker and
//! the external MQTT client (`mqtt/`) feed every `mqtt` and `sparkplug`
//! source through `mqtt::routes` and `sparkplug::route`; `http` sources are
//! fed by the API's push endpoint. What every kind shares (the
//! [`Ingestor`]: pipeline, queueing, durable acks; replay; counters) stays
//! in `crate::ingest`. Kinds that read by themselves (`file`,
//! `modbus`, `opcua`) start one task per source through [`SourceSpec::start`].

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingestor;
use crate::pipeline::SourceShape;
use crate::product::{Product, Source};

pub mod file;
pub mod http;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod sparkplug;

/// The kinds of source a product may list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// MQTT messages whose topic matches a template (embedded broker or
    /// external broker).
    Mqtt,
    /// Records pushed to the node's HTTP ingest endpoint.
    Http,
    /// A local file, tailed.
    File,
    /// Sparkplug B edge nodes and devices, read as a host application.
    Sparkplug,
    /// Modbus TCP devices, polled.
    Modbus,
    /// OPC UA server nodes, monitored through a subscription.
    Opcua,
}

impl SourceKind {
    /// Every kind, in the order diagnostics list them.
    pub const ALL: [SourceKind; 6] = [
        SourceKind::Mqtt,
        SourceKind::Http,
        SourceKind::File,
        SourceKind::Sparkplug,
        SourceKind::Modbus,
        SourceKind::Opcua,
    ];

    /// The kind's name in definitions, ids and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Mqtt => "mqtt",
            SourceKind::Http => "http",
            SourceKind::File => "file",
            SourceKind::Sparkplug => "sparkplug",
            SourceKind::Modbus => "modbus",
            SourceKind::Opcua => "opcua",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kinds' names, for definition keys and "expected one of" lists.
    pub fn names() -> [&'static str; 6] {
        SourceKind::ALL.map(SourceKind::name)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A source of a product: its kind and its position in the product's
/// `sources:` list. Written `<kind>:<index>` (`mqtt:0`, `http:1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub kind: SourceKind,
    pub index: usize,
}

impl SourceId {
    /// Reads `<kind>:<index>`; `None` for anything else (API writes are
    /// counted under names such as `graphql`, which are not source ids).
    pub fn parse(text: &str) -> Option<SourceId> {
        let (kind, index) = text.split_once(':')?;
        Some(SourceId {
            kind: SourceKind::parse(kind)?,
            index: index.parse().ok()?,
        })
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.index)
    }
}

/// What a source task gets from the node when it starts.
pub struct StartContext<'a> {
    pub ingestor: &'a Ingestor,
    pub product: &'a Arc<Product>,
    pub id: SourceId,
    pub settings: &'a crate::config::IngestSettings,
    /// The node's data directory (a source's own state, e.g. OPC UA
    /// certificates, lives under it).
    pub data_dir: &'a std::path::Path,
    pub shutdown: CancellationToken,
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("product `{product}` source {id}: {problem}")]
    Unsupported {
        product: String,
        id: SourceId,
        problem: String,
    },
}

/// What one kind's definition tells the rest of the node.
pub trait SourceSpec {
    /// How the pipeline reads this source's payloads.
    fn shape(&self) -> SourceShape;

    /// Where records come from, as a data contract states it.
    fn contract(&self) -> serde_json::Value;

    /// Why this build cannot run this source, if it cannot (a kind left
    /// out by a cargo feature); `check` and start-up report it.
    fn unavailable(&self) -> Option<&'static str> {
        None
    }

    /// The task that reads this source by itself (a tail, a poller), with
    /// the tracing span it runs in; `None` for sources fed from outside
    /// (MQTT routes, HTTP push).
    fn start(
        &self,
        _ctx: StartContext<'_>,
    ) -> Result<Option<(BoxFuture<'static, ()>, tracing::Span)>, StartError> {
        Ok(None)
    }
}

impl Source {
    /// This source's kind.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Mqtt(_) => SourceKind::Mqtt,
            Source::Http(_) => SourceKind::Http,
            Source::File(_) => SourceKind::File,
            Source::Sparkplug(_) => SourceKind::Sparkplug,
            Source::Modbus(_) => SourceKind::Modbus,
            Source::Opcua(_) => SourceKind::Opcua,
        }
    }

    /// The kind's behaviour for this source: the one place the kinds are
    /// matched.
    pub fn spec(&self) -> &dyn SourceSpec {
        match self {
            Source::Mqtt(s) => s,
            Source::Http(s) => s,
            Source::File(s) => s,
            Source::Sparkplug(s) => s,
            Source::Modbus(s) => s,
            Source::Opcua(s) => s,
        }
    }

    /// The id of this source when it is the product's `index`-th.
    pub fn id(&self, index: usize) -> SourceId {
        SourceId {
            kind: self.kind(),
            index,
        }
    }
}

/// The first source of `product` with the id `id`'s kind, preferring the
/// one at `id`'s index (a quarantined entry names the source it came from;
/// after an edit of the definition that position may hold another kind).
pub fn same_kind(product: &Product, id: SourceId) -> Option<&Source> {
    product
        .sources
        .get(id.index)
        .filter(|s| s.kind() == id.kind)
        .or_else(|| product.sources.iter().find(|s| s.kind() == id.kind))
}

/// The sources of `products` this build cannot run, one problem each.
pub fn preflight(products: &crate::product::ProductSet) -> Vec<String> {
    let mut problems = Vec::new();
    for product in products.iter() {
        for (index, source) in product.sources.iter().enumerate() {
            if let Some(why) = source.spec().unavailable() {
                problems.push(format!(
                    "product `{}` source {}: {why}",
                    product.name,
                    source.id(index)
                ));
            }
        }
    }
    problems
}

/// Starts the task of every source that reads by itself, on `spawn`.
pub fn start_all(
    ingestor: &Ingestor,
    products: &crate::product::ProductSet,
    settings: &crate::config::IngestSettings,
    data_dir: &std::path::Path,
    shutdown: &CancellationToken,
    mut spawn: impl FnMut(BoxFuture<'static, ()>, tracing::Span),
) -> Result<(), StartError> {
    for product in products.iter() {
        for (index, source) in product.sources.iter().enumerate() {
            let ctx = StartContext {
                ingestor,
                product,
                id: source.id(index),
                settings,
                data_dir,
                shutdown: shutdown.clone(),
            };
            if let Some((task, span)) = source.spec().start(ctx)? {
                spawn(task, span);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_ids_round_trip() {
        for kind in SourceKind::ALL {
            assert_eq!(SourceKind::parse(kind.name()), Some(kind));
            let id = SourceId { kind, index: 7 };
            assert_eq!(SourceId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(SourceKind::parse("MQTT"), None);
        assert_eq!(SourceId::parse("graphql"), None);
        assert_eq!(SourceId::parse("mqtt:x"), None);
        assert_eq!(SourceId::parse("ftp:0"), None);
        assert_eq!(
            SourceId::parse("file:3").map(|i| i.to_string()),
            Some("file:3".to_string())
        );
    }
}
