//! The live schema and its reload.
//!
//! [`SchemaHandle`] holds the current schema behind a lock that is only
//! taken to clone or replace an `Arc`: a request takes the schema once and
//! runs on it to the end, and a WebSocket connection keeps the schema it
//! connected with, so in-flight requests and open subscriptions finish on
//! the old schema while new ones get the new one.
//!
//! A reload happens on SIGHUP and when a definition file changes (file
//! list, size or modification time of the configured product paths,
//! polled every [`POLL_INTERVAL`]: no watcher dependency, and it works on
//! every filesystem, network mounts included). A set of definitions that
//! does not load or does not make a schema leaves the current schema in
//! place and is reported in the log, in `/readyz` (`problems`) and in the
//! catalog (`schemaStatus.problems`).
//!
//! A reload that builds is applied whole, in this order: the sync rules
//! (outbox planner), ingestion ([`crate::ingest::Ingestor::follow`]: MQTT
//! and Sparkplug routes, HTTP push, API writes, file tails, aggregator
//! apply — the external broker client subscribes to new topics), then the
//! schema. So a field or product the API shows is one ingestion takes:
//! nothing is accepted and then dropped. What a reload does not change
//! until the node restarts: which files are tailed (a new `file` source,
//! or a changed path, starts with the next start; the tail of a product a
//! reload removed stops taking lines, which stay in the file), and the
//! batch timing of sync senders. The retention sweeper asks for the
//! current products at each wake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_graphql::dynamic::Schema;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::prepared::PreparedLookups;
use super::runtime::Runtime;
use super::schema::build_generation;
use crate::api::Readiness;
use crate::product::{self, LoadContext, ProductSet};

/// How often definition files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// One schema and what belongs to it alone: the query plans learned on
/// it (`prepared.rs`), which a reload must not carry over.
pub(crate) struct Generation {
    pub schema: Schema,
    pub prepared: PreparedLookups,
}

/// The schema requests run on; swapped whole on reload.
#[derive(Clone)]
pub struct SchemaHandle {
    current: Arc<RwLock<Arc<Generation>>>,
}

impl SchemaHandle {
    pub(crate) fn new(generation: Generation) -> SchemaHandle {
        SchemaHandle {
            current: Arc::new(RwLock::new(Arc::new(generation))),
        }
    }

    /// The current schema (a cheap clone of an `Arc` inside).
    pub fn current(&self) -> Schema {
        self.generation().schema.clone()
    }

    /// The current generation: its schema and its plans.
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, generation: Generation) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(generation);
    }
}

/// Where definitions come from and what to tell when they change.
pub(crate) struct Reloader {
    pub handle: SchemaHandle,
    pub runtime: Runtime,
    pub readiness: Readiness,
    pub paths: Vec<PathBuf>,
    pub context: LoadContext,
    /// The files as they were when the running definitions were loaded.
    pub seen: Snapshot,
}

/// What was seen of the definition files: path, size and mtime of each.
pub type Snapshot = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Sees the definition files under `paths`. The node takes it *before* it
/// loads the definitions it starts with, so a change made while it starts
/// is a change the reload loop notices.
pub fn snapshot(paths: &[PathBuf]) -> Snapshot {
    let mut seen = Vec::new();
    for path in paths {
        let files: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_definition(p))
                .collect(),
            Err(_) => vec![path.clone()],
        };
        for file in files {
            let meta = std::fs::metadata(&file).ok();
            seen.push((
                file,
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            ));
        }
    }
    seen.sort();
    seen
}

impl Reloader {
    /// Watches for SIGHUP and file changes until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut hangup = hangup_signal();
        let mut seen = self.seen.clone();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = recv_hangup(&mut hangup) => "SIGHUP",
                _ = tick.tick() => "",
            };
            let paths = self.paths.clone();
            let now = tokio::task::spawn_blocking(move || snapshot(&paths))
                .await
                .unwrap_or_default();
            let changed = now != seen;
            seen = now;
            if why.is_empty() && !changed {
                continue;
            }
            let why = if why.is_empty() {
                "definition files changed"
            } else {
                why
            };
            self.reload(why).await;
        }
    }

    /// Loads the definitions, builds a schema and swaps it in, or keeps the
    /// current one and reports why not.
    pub(crate) async fn reload(&self, why: &str) {
        let paths = self.paths.clone();
        let context = self.context.clone();
        let loaded = tokio::task::spawn_blocking(move || product::load_paths(&paths, &context))
            .await
            .map_err(|join| vec![format!("loading definitions failed: {join}")])
            .and_then(|loaded| {
                loaded.map_err(|errors| errors.0.iter().map(|d| d.to_string()).collect())
            });
        // Built off the runtime, as its own task: whatever a definition
        // does to the build (a panic included), this loop lives on to
        // report it and to pick up the next change.
        let built = match loaded {
            Err(problems) => Err(problems),
            Ok(set) => {
                let set = Arc::new(set);
                let runtime = self.runtime.clone();
                let for_build = set.clone();
                tokio::task::spawn_blocking(move || build_generation(&for_build, runtime))
                    .await
                    .map_err(|join| vec![format!("building the GraphQL schema failed: {join}")])
                    .and_then(|built| built.map_err(|e| e.0))
                    .map(|generation| (generation, set))
            }
        };
        // Sync rules, then ingestion, then the schema: a record accepted
        // under the new definitions is planned by their rules, and no
        // client sees a field or product before ingestion takes it.
        let built = match built {
            Ok((generation, set)) => match &self.runtime.sync {
                Some(sync) => crate::sync::install_planner(&sync.store, &set)
                    .map(|()| (generation, set))
                    .map_err(|e| vec![format!("installing the new sync rules failed: {e}")]),
                None => Ok((generation, set)),
            },
            Err(problems) => Err(problems),
        };
        match built {
            Ok((generation, set)) => {
                self.runtime.ingestor.follow(set.clone());
                self.handle.replace(generation);
                let names = names_of(&set);
                self.runtime.status.loaded(names.clone());
                self.readiness.set_problems(Vec::new());
                info!(reason = why, products = ?names, generation = self.runtime.status.get().generation, "GraphQL schema reloaded");
            }
            Err(problems) => {
                let report: Vec<String> = std::iter::once(
                    "GraphQL schema reload refused; the previous schema stays in use:".to_string(),
                )
                .chain(problems.iter().cloned())
                .collect();
                warn!(reason = why, problems = %problems.join("\n"), "GraphQL schema reload refused; keeping the previous schema");
                self.readiness.set_problems(report);
                self.runtime.status.refused(problems);
            }
        }
    }
}

pub(crate) fn names_of(set: &ProductSet) -> Vec<String> {
    set.names().map(str::to_string).collect()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            warn!(error = %err, "cannot listen for SIGHUP; definition changes are still picked up by polling");
            None
        }
    }
}

#[cfg(unix)]
async fn recv_hangup(signal: &mut Hangup) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) {
    std::future::pending().await
}

/// The files a folder of definitions contributes (as `product::load_path`
/// reads them).
fn is_definition(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}
