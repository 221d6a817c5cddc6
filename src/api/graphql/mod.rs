//! The GraphQL API: a schema generated from the product definitions
//! (async-graphql's dynamic schema), served at `POST /graphql`, with
//! subscriptions at `GET /graphql/ws` and GraphiQL at `GET /graphql`
//! (embedded, `graphiql.rs`).
//!
//! Per product `machine_health`: an object type `MachineHealth` (typed
//! fields with the definition's descriptions, `_meta`, `history`,
//! `audit`), a lookup `machineHealth(machine_id:)`, a Relay connection
//! `machineHealthConnection(first, after, last, before, filter, orderBy)`,
//! the subscriptions `machineHealthChanges(filter)` and
//! `machineHealthBuckets(machine_id:, every:)` (closed series buckets,
//! `bucket_feed`) and the mutations
//! `upsertMachineHealth(input)` / `eraseMachineHealth(machine_id:)`. The
//! catalog (`products`, `product`, `quarantine`, `schemaStatus`) is always
//! there. Field names are the definition's, unchanged.
//!
//! Layout: `schema` assembles the types that `instance`, `connection`,
//! `mutation`, `subscription` and `catalog` define, each resolver built
//! from `product_api` (one product as the schema sees it), `context` (the
//! request's runtime and caller), `policy` (the caller's view), `args` and
//! `resolve` (argument and resolver plumbing); `names` derives and
//! checks the generated names; `values` maps field types and values;
//! `filter`, `order` and `paging` are the pure core of connections;
//! `limits` and `cost` keep hostile requests out, `budget` keeps one
//! caller from taking the node; `field_errors` gives field errors their
//! path, code and `null` (the spec's, which the dynamic schema does not);
//! `enums` types `enum:` fields; `relay` is the `Node` interface;
//! `runtime` is what resolvers share across reloads; `reload` swaps the
//! schema; `http` is the axum surface, `graphiql` the embedded page.
//!
//! Policies: the HTTP layer puts the caller's [`crate::policy::access::Caller`]
//! into each request's data; every resolver asks it for the view of its
//! product (`policy::view`) and goes through that view — rights, row
//! filter, masks — before anything leaves.

mod aggregate;
mod args;
mod bucket_feed;
pub(crate) mod budget;
mod catalog;
mod connection;
mod context;
mod cost;
mod enums;
mod field_errors;
mod filter;
pub(crate) mod graphiql;
mod http;
mod instance;
mod limits;
mod metrics;
mod mutation;
mod names;
mod normalize;
mod order;
mod paging;
mod parse_cache;
mod persisted;
mod policy;
mod prepared;
mod product_api;
mod relay;
mod reload;
mod resolve;
mod runtime;
mod schema;
mod series;
mod subscription;
mod sync_status;
mod values;
mod ws;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};

pub use reload::{snapshot as snapshot_definitions, SchemaHandle, Snapshot, POLL_INTERVAL};
pub use schema::{sdl, BuildError};

use crate::api::Readiness;
use crate::ingest::Ingestor;
use crate::policy::access::Caller;
use crate::product::{LoadContext, ProductSet};
use prepared::Attempt;
use runtime::Runtime;

pub(crate) use graphiql::{is_open_request as is_graphiql_request, open_routes};
pub(crate) use http::routes;

/// The name of a product's `erase<Product>` mutation (the `meshlet erase`
/// command points at it when the node holds the store).
pub fn erase_mutation_name(product: &str) -> String {
    names::ProductNames::new(product).erase
}

/// How the GraphQL API is served: GraphiQL on or off, and the budgets of
/// its callers (`[api]`).
#[derive(Clone, Debug, Default)]
pub struct GraphqlSettings {
    pub graphiql: bool,
    pub limits: crate::config::ApiLimits,
}

/// The GraphQL side of the API state: the live schema and what its
/// resolvers share. Cheap to clone.
#[derive(Clone)]
pub struct GraphqlApi {
    pub(crate) handle: SchemaHandle,
    pub(crate) runtime: Runtime,
    pub(crate) graphiql: bool,
    /// Automatic persisted queries (`persisted.rs`).
    pub(crate) persisted: Arc<persisted::PersistedQueries>,
}

impl GraphqlApi {
    /// Builds the first schema from `products` and starts keeping product
    /// freshness current (on `tasks`, until `shutdown`). Fails when the
    /// definitions do not make a schema (a GraphQL name collision): the
    /// node then refuses to start, as for any definition error.
    pub fn start(
        products: Arc<ProductSet>,
        ingestor: Ingestor,
        secret: crate::policy::masking::MaskSecret,
        settings: GraphqlSettings,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
        sync: Option<std::sync::Arc<crate::sync::SyncHandle>>,
    ) -> Result<GraphqlApi, BuildError> {
        let persisted = Arc::new(persisted::PersistedQueries::new(
            settings.limits.max_persisted_query_bytes,
        ));
        let runtime = Runtime {
            sync,
            ingestor,
            secret,
            usage: Default::default(),
            freshness: Default::default(),
            status: Default::default(),
            metrics: Default::default(),
            budgets: Arc::new(budget::Budgets::new(settings.limits)),
            shutdown,
        };
        let generation = schema::build_generation(&products, runtime.clone())?;
        runtime.status.loaded(reload::names_of(&products));
        tasks.spawn(watch_freshness(runtime.clone()).instrument(info_span!("graphql_freshness")));
        Ok(GraphqlApi {
            handle: SchemaHandle::new(generation),
            runtime,
            graphiql: settings.graphiql,
            persisted,
        })
    }

    /// The reload loop (SIGHUP, definition file changes) over `paths`; run
    /// it as a task. It ends at shutdown.
    /// `seen` is what the definition files looked like when the running
    /// set was loaded ([`snapshot_definitions`], taken before loading).
    pub fn watch_definitions(
        &self,
        paths: Vec<PathBuf>,
        context: LoadContext,
        readiness: Readiness,
        seen: Snapshot,
    ) -> impl Future<Output = ()> + Send + 'static {
        let reloader = reload::Reloader {
            handle: self.handle.clone(),
            runtime: self.runtime.clone(),
            readiness,
            paths,
            context,
            seen,
        };
        let shutdown = self.runtime.shutdown.clone();
        reloader.run(shutdown)
    }

    /// Executes one query or mutation for `caller`: from a prepared plan
    /// when the query's shape has one (`prepared.rs`), else by the
    /// executor, which then teaches the current schema generation the
    /// shape. The HTTP handler and the benches call this.
    pub async fn execute(
        &self,
        request: async_graphql::Request,
        caller: Caller,
    ) -> async_graphql::Response {
        match self.run(request, caller, false).await {
            Ok((response, _)) => response,
            Err(Busy) => async_graphql::Response::from_errors(vec![limits::error(
                "TOO_MANY_CONCURRENT_QUERIES",
                "no query slot",
            )]),
        }
    }

    /// [`GraphqlApi::execute`] within the caller's budget (`budget.rs`):
    /// a query the executor runs first takes one of the caller's query
    /// slots, handed back with the answer so the caller holds it until
    /// the answer is written; a prepared plan (key lookups, a bounded
    /// handful of reads) needs none. [`Busy`] when no slot came
    /// free within `api.queue_timeout` (nothing was executed).
    pub(crate) async fn execute_budgeted(
        &self,
        request: async_graphql::Request,
        caller: Caller,
    ) -> Executed {
        self.run(request, caller, true).await
    }

    async fn run(
        &self,
        mut request: async_graphql::Request,
        caller: Caller,
        budgeted: bool,
    ) -> Executed {
        let started = Instant::now();
        let generation = self.handle.generation();
        let query = std::mem::take(&mut request.query);
        let learn = match generation.prepared.attempt(&query) {
            Attempt::Planned(plan, normalized) => {
                let answer = plan
                    .answer(
                        request.operation_name.as_deref(),
                        &request.variables,
                        &normalized.literals,
                        &self.runtime,
                        &caller,
                    )
                    .await;
                if let Some(response) = answer {
                    tracing::Span::current().record("prepared", true);
                    self.runtime.metrics.prepared(started.elapsed());
                    return Ok((response, None));
                }
                false
            }
            Attempt::Learn => true,
            Attempt::Execute => false,
        };
        let slot = if budgeted {
            let identity = budget::identity_key(&caller.identity);
            match self.runtime.budgets.query_slot(&identity).await {
                Some(slot) => Some(slot),
                None => return Err(Busy),
            }
        } else {
            None
        };
        let learned_text = learn.then(|| query.clone());
        request.query = query;
        if budgeted {
            request = request.data(Arc::new(budget::ResponseBudget::of(&self.runtime.budgets)));
        }
        // Boxed: the executor's future is large, and inline it would make
        // every request's future (prepared ones too) that large to move.
        let response = Box::pin(generation.schema.execute(request.data(caller))).await;
        if let Some(text) = learned_text {
            if response.errors.is_empty() {
                if let Some(normalized) = normalize::normalize(&text) {
                    generation.prepared.learn(&text, &normalized);
                }
            }
        }
        Ok((response, slot))
    }

    /// The live schema handle.
    pub fn schema(&self) -> &SchemaHandle {
        &self.handle
    }

    /// The GraphQL families of `/metrics`.
    pub fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        self.runtime
            .metrics
            .encode_metrics(self.runtime.usage.open_subscriptions(), enc)?;
        self.runtime.budgets.encode_metrics(enc)?;
        self.persisted.encode_metrics(enc)?;
        crate::timeseries::read::encode_metrics(enc)
    }
}

/// What became of a budgeted request: the answer, and the caller's query
/// slot when it took one (hold it until the answer is written); or
/// [`Busy`] when no slot came free in time (nothing was executed).
pub(crate) type Executed = Result<
    (
        async_graphql::Response,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
    Busy,
>;

/// No query slot of the caller came free within `api.queue_timeout`.
#[derive(Debug)]
pub(crate) struct Busy;

/// Keeps each product's last update current from the change feed.
async fn watch_freshness(runtime: Runtime) {
    let mut feed = runtime.store().subscribe_changes();
    loop {
        let received = tokio::select! {
            _ = runtime.shutdown.cancelled() => return,
            received = feed.recv() => received,
        };
        match received {
            Ok(event) => {
                if let Some(newest) = event.changes.iter().map(|c| c.instance.last_seen).max() {
                    runtime.freshness.saw(&event.product, newest);
                }
            }
            Err(RecvError::Lagged(_)) => runtime.freshness.rescan_all(),
            Err(RecvError::Closed) => return,
        }
    }
}
