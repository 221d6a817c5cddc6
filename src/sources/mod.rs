//! Sources: the one owner of "which kinds of source exist".
//!
//! A kind is its folder here plus ONE line in the [`kinds!`] list below,
//! `<kind> => <settings type>`. That line declares the folder as a module
//! and registers the kind under the module's name (the key definitions
//! write: `- modbus: {...}`) with
//!
//! - its settings parser, `<kind>::parse` (the definition's keys, with
//!   `check` diagnostics), which the product loader reaches through
//!   [`LoadContext`] (its `Default`, implemented here, carries the
//!   registry: the product module does not know the kinds);
//! - what its settings tell the rest of the node, [`SourceSettings`] (how
//!   payloads are read, hence replay of quarantined payloads; the data
//!   contract; whether the push endpoint feeds it);
//! - what the node does with it, [`SourceSpec`] (the task it runs, if it
//!   polls or tails by itself; why this build cannot run it).
//!
//! Each kind's protocol code lives in its folder: the embedded broker and
//! the external MQTT client (`mqtt/`) feed every `mqtt` and `sparkplug`
//! source through `mqtt::routes` and `sparkplug::route`; `http` sources are
//! fed by the API's push endpoint. What every kind shares (the
//! [`Ingestor`]: pipeline, queueing, durable acks; replay; counters) stays
//! in `crate::ingest`. Kinds that read by themselves (`file`, `modbus`,
//! `opcua`) start one task per source through [`SourceSpec::start`].

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingestor;
use crate::product::{LoadContext, Product, Source, SourceId, SourceParser, SourceSettings};

/// The registry: one line per kind, `<kind> => <settings type>`. Declares
/// `pub mod <kind>;` and registers the kind's name (the module's),
/// parser (`<kind>::parse`) and behaviour ([`SourceSpec`] on the settings
/// type). The order is the order diagnostics list the kinds in.
macro_rules! kinds {
    ($($kind:ident => $settings:ty,)*) => {
        $(pub mod $kind;)*

        /// Every kind as the product loader sees it.
        static PARSERS: &[SourceParser] = &[$(SourceParser::new(
            stringify!($kind),
            |entry, ctx, diags| settings($kind::parse(entry, ctx, diags)),
        ),)*];

        /// Every kind as the node sees it.
        static KINDS: &[Kind] = &[$(Kind {
            name: stringify!($kind),
            spec: spec_of::<$settings>,
        },)*];
    };
}

kinds! {
    mqtt => mqtt::MqttSource,
    http => http::HttpSource,
    file => file::FileSource,
    sparkplug => sparkplug::SparkplugSource,
    modbus => modbus::ModbusSource,
    opcua => opcua::OpcuaSource,
}

/// One registered kind: its name and the view of a source's settings as
/// this kind's [`SourceSpec`].
struct Kind {
    name: &'static str,
    spec: fn(&Source) -> Option<&dyn SourceSpec>,
}

fn settings<T: SourceSettings>(parsed: Option<T>) -> Option<Arc<dyn SourceSettings>> {
    parsed.map(|s| Arc::new(s) as Arc<dyn SourceSettings>)
}

fn spec_of<T: SourceSettings + SourceSpec>(source: &Source) -> Option<&dyn SourceSpec> {
    source.get::<T>().map(|s| s as &dyn SourceSpec)
}

/// The registered kinds' names, in the order diagnostics list them.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|k| k.name)
}

/// The node's behaviour for `source`, when its kind is registered in this
/// build (a loaded product's always is).
pub fn spec(source: &Source) -> Option<&dyn SourceSpec> {
    KINDS
        .iter()
        .find(|k| k.name == source.kind())
        .and_then(|k| (k.spec)(source))
}

impl Default for LoadContext {
    /// Every registered kind; no upstreams.
    fn default() -> LoadContext {
        LoadContext {
            upstreams: Default::default(),
            kinds: PARSERS,
        }
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

/// What the node does with one kind's sources.
pub trait SourceSpec {
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

/// Why this build cannot run `source`.
fn unavailable(source: &Source) -> Option<&'static str> {
    match spec(source) {
        Some(spec) => spec.unavailable(),
        None => Some("this meshlet has no such source kind"),
    }
}

/// The sources of `products` this build cannot run, one problem each.
pub fn preflight(products: &crate::product::ProductSet) -> Vec<String> {
    let mut problems = Vec::new();
    for product in products.iter() {
        for (index, source) in product.sources.iter().enumerate() {
            if let Some(why) = unavailable(source) {
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
            let Some(spec) = spec(source) else {
                return Err(StartError::Unsupported {
                    product: product.name.clone(),
                    id: ctx.id,
                    problem: "this meshlet has no such source kind".to_string(),
                });
            };
            if let Some((task, span)) = spec.start(ctx)? {
                spawn(task, span);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn the_registry_lists_every_kind_once() {
        let names: Vec<&str> = kinds().collect();
        assert_eq!(
            names,
            ["mqtt", "http", "file", "sparkplug", "modbus", "opcua"]
        );
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len());
        let parsers: Vec<&str> = LoadContext::default().source_kinds().collect();
        assert_eq!(parsers, names, "the loader and the node see the same kinds");
    }

    #[test]
    fn check_names_the_registered_kinds_for_an_unknown_kind() {
        let yaml = "product: p\nversion: 1\ndomain: d\nowner: o\nkey: id\nfields:\n  id: { type: string }\nsources:\n  - carrier_pigeon: { loft: x }\n";
        let errors =
            crate::product::parse_definition(Path::new("p.yaml"), yaml, &LoadContext::default())
                .expect_err("no such kind");
        let message = errors.to_string();
        let expected = kinds().collect::<Vec<_>>().join(", ");
        assert!(
            message.contains(&format!(
                "unknown key `carrier_pigeon`; expected one of: {expected}"
            )),
            "{message}"
        );
    }

    #[test]
    fn a_parsed_source_knows_its_kind_and_behaviour() {
        let yaml = "product: p\nversion: 1\ndomain: d\nowner: o\nkey: id\nfields:\n  id: { type: string }\nsources:\n  - http:\n  - file: { path: x.ndjson }\n";
        let product =
            crate::product::parse_definition(Path::new("/d/p.yaml"), yaml, &LoadContext::default())
                .expect("loads");
        let [http, file] = &product.sources[..] else {
            panic!("two sources")
        };
        assert_eq!((http.kind(), file.kind()), ("http", "file"));
        assert!(http.settings().takes_push() && !file.settings().takes_push());
        assert_eq!(
            file.get::<file::FileSource>().map(|f| f.path.clone()),
            Some(Path::new("/d/x.ndjson").to_path_buf())
        );
        assert!(http.get::<file::FileSource>().is_none());
        assert!(spec(http).is_some() && unavailable(http).is_none());
        assert_eq!(file.id(1).to_string(), "file:1");
        assert_eq!(
            product.source_by_id("file:1").map(Source::kind),
            Some("file")
        );
        // After an edit moved it, an entry's source is the first of its kind.
        assert_eq!(
            product.source_by_id("file:0").map(Source::kind),
            Some("file")
        );
        assert!(product.source_by_id("graphql").is_none());
        assert!(product.source_by_id("mqtt:0").is_none());
    }
}
