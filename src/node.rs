//! A running node: loads the products, opens the store, serves HTTP, runs
//! the background work, and shuts all of it down in order.
//!
//! Start-up is all-or-nothing: a definition that does not load, a store
//! that does not open or an address that cannot be bound stops the node
//! before it reports ready, with an error that says which and where. A node
//! never runs half-configured.
//!
//! Shutdown runs the start-up in reverse: readiness turns false first (so
//! supervisors drain traffic), the listener stops accepting and finishes
//! in-flight requests, background tasks finish their step, and a final
//! durability barrier flushes the store before the process exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::api::{self, ApiShared, ApiState, HttpListener, Phase, Readiness};
use crate::config::HubConfig;
use crate::ingest::priority::{IngestRuntime, IngestRuntimeError};
use crate::ingest::Ingestor;
use crate::product::{self, LoadContext, LoadErrors, ProductSet};
use crate::retention::{RetentionMetrics, SweepSchedule};
use crate::sources::mqtt::broker::{BrokerBindError, EmbeddedBroker};
use crate::sources::mqtt::client;
use crate::sources::mqtt::dispatch::MqttIngest;
use crate::sources::sparkplug::SparkplugSource;
use crate::store::{Store, StoreError};
use crate::tls::mqtt::ClientConfigError;

/// Why the node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("product definitions are invalid:\n{0}")]
    Products(#[from] LoadErrors),
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read or write the node id file {}: {source}", path.display())]
    NodeId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in {}: {source}", path.display())]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    EncryptionKey(#[from] crate::store::KeyFileError),
    #[error("final flush of the store failed: {0}")]
    FinalFlush(StoreError),
    #[error(transparent)]
    Http(#[from] api::ServeError),
    #[error(transparent)]
    Broker(#[from] BrokerBindError),
    #[error(transparent)]
    IngestRuntime(#[from] IngestRuntimeError),
    #[error(transparent)]
    MqttClient(#[from] ClientConfigError),
    #[error(transparent)]
    Source(#[from] crate::sources::StartError),
    #[error(transparent)]
    Graphql(#[from] api::graphql::BuildError),
    #[error("cannot load API tokens: {0}")]
    Tokens(#[from] crate::policy::tokens::TokenFileError),
    #[error("cannot read or create the mask secret: {0}")]
    MaskSecret(StoreError),
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error(transparent)]
    SparkplugHost(#[from] crate::sources::sparkplug::state::HostIdError),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigProblems),
}

/// Loads every configured product path into one set, checking names across
/// all of them. All diagnostics of all files come back together.
pub fn load_products(config: &HubConfig) -> Result<ProductSet, LoadErrors> {
    let ctx = LoadContext::with_upstreams(config.upstream_names());
    product::load_paths(&config.product_paths(), &ctx)
}

/// What `meshlet check` found beyond the definitions themselves.
#[derive(Debug, Default)]
pub struct Preflight {
    /// Each stops `serve`: the same checks, with the same messages.
    pub problems: Vec<String>,
    /// Worth a look, but `serve` starts anyway.
    pub warnings: Vec<String>,
}

/// Every check [`start`] makes before it binds a socket or opens the
/// store, run without doing either: the GraphQL schema of `products`, the
/// external broker settings, each upstream (URL, TLS files), the HTTP
/// listener's TLS files, the store encryption key file, the token file
/// and the Sparkplug host id. `meshlet check` runs it, so "check passes"
/// means "serve starts" (unless a port is taken or the store is locked).
pub fn preflight(config: &HubConfig, products: &ProductSet) -> Preflight {
    let mut out = Preflight::default();
    if let Err(err) = api::graphql::sdl(products) {
        out.problems.extend(err.0);
    }
    // The node id upstream clients are named after is only generated at
    // the first start; any generated one is valid.
    let node_id = config.node_id.as_deref().unwrap_or("node-00000000");
    if let Some(external) = &config.mqtt.external {
        if let Err(err) = crate::tls::mqtt::options(external, node_id) {
            out.problems.push(format!("mqtt.external: {err}"));
        }
    }
    if let Some(broker) = &config.aggregator.mqtt {
        if let Err(err) = crate::tls::mqtt::options(broker, node_id) {
            out.warnings.push(format!(
                "aggregator.mqtt: {err} (the node starts, but does not subscribe to sync envelopes)"
            ));
        }
    }
    if let Some(nats) = &config.aggregator.nats {
        if let Err(err) = crate::sync::check_aggregator_nats(nats) {
            out.problems.push(err);
        }
    }
    for (name, upstream) in &config.upstreams {
        if let Err(err) = crate::sync::check_upstream(name, upstream, node_id) {
            out.problems.push(err.to_string());
        }
    }
    out.problems
        .extend(crate::sync::check_references(config, products, node_id));
    if let Some(tls) = &config.http.tls {
        if let Err(err) = crate::tls::acceptor(tls) {
            out.problems.push(format!("http.tls: {err}"));
        }
    }
    // The settings' own checks, as start-up makes them.
    if let Err(problems) = config.validate() {
        out.problems.extend(problems.0);
    }
    if let Some(path) = &config.store.encryption_key_file {
        if let Err(err) = crate::store::EncryptionKey::from_file(path) {
            out.problems
                .push(format!("store.encryption_key_file: {err}"));
        }
    }
    match crate::policy::tokens::TokenFileStore::new(config.tokens_file()).list() {
        Err(err) => out.problems.push(format!("cannot load API tokens: {err}")),
        Ok(tokens) => out
            .warnings
            .extend(unknown_roles(config, products, &tokens)),
    }
    out.problems.extend(crate::sources::preflight(products));
    let reads_sparkplug = products.iter().any(|p| {
        p.sources
            .iter()
            .any(|s| s.get::<SparkplugSource>().is_some())
    });
    if config.sparkplug.state && reads_sparkplug {
        let id = config
            .sparkplug
            .host_id
            .clone()
            .unwrap_or_else(|| format!("meshlet-{node_id}"));
        if let Err(err) = crate::sources::sparkplug::state::PrimaryHost::new(&id) {
            out.problems.push(format!("sparkplug.host_id: {err}"));
        }
    }
    out
}

/// Roles that tokens, certificates or anonymous callers act as but that
/// no product's `access` names (nor a built-in role): such callers see
/// nothing, which is allowed but rarely meant.
fn unknown_roles(
    config: &HubConfig,
    products: &ProductSet,
    tokens: &[crate::policy::tokens::TokenEntry],
) -> Vec<String> {
    use crate::policy::access::{ADMIN, EDGE, READER};
    let known = |role: &str| {
        [ADMIN, READER, EDGE].contains(&role)
            || products.iter().any(|p| p.access.contains_key(role))
    };
    let mut warnings = Vec::new();
    for token in tokens.iter().filter(|t| t.revoked_at.is_none()) {
        if !known(&token.role) {
            warnings.push(format!(
                "token `{}` acts as role `{}`, which no product's `access` names: it can read nothing",
                token.name, token.role
            ));
        }
    }
    if let Some(role) = config.security.anonymous_role.as_deref() {
        if role != crate::policy::auth::NO_ANONYMOUS && !known(role) {
            warnings.push(format!(
                "security.anonymous_role `{role}` is named by no product's `access`"
            ));
        }
    }
    for (who, role) in &config.security.certificates {
        if !known(role) {
            warnings.push(format!(
                "security.certificates: `{who}` acts as role `{role}`, which no product's `access` names"
            ));
        }
    }
    warnings
}

/// A started node. Dropping it does not stop it: cancel the token given to
/// [`start`] and call [`RunningNode::wait`].
pub struct RunningNode {
    http_addr: SocketAddr,
    mqtt_addr: Option<SocketAddr>,
    node_id: Arc<str>,
    store: Store,
    products: Arc<ProductSet>,
    readiness: Readiness,
    tasks: TaskTracker,
    /// Runs the ingest sources and the writer; stopped once `tasks`
    /// drained.
    ingest_runtime: IngestRuntime,
    shutdown: CancellationToken,
    grace: Duration,
    server: tokio::task::JoinHandle<Result<(), api::ServeError>>,
}

impl RunningNode {
    /// The address the HTTP listener is bound to (the real port when the
    /// config asked for port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The embedded broker's address, when it runs.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn products(&self) -> &Arc<ProductSet> {
        &self.products
    }

    /// Waits until shutdown is requested, then stops everything in order
    /// and flushes the store. Tasks that overrun the grace period are
    /// abandoned (and logged); the final flush still runs.
    pub async fn wait(self) -> Result<(), NodeError> {
        self.shutdown.cancelled().await;
        info!("shutting down");
        self.readiness.set_phase(Phase::Stopping);
        crate::sd_notify::notify("STOPPING=1");
        self.tasks.close();

        let server = self.server;
        let drained = tokio::time::timeout(self.grace, async {
            let served = server.await;
            self.tasks.wait().await;
            served
        })
        .await;
        let outcome = match drained {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(NodeError::Http(err)),
            Ok(Err(join)) => Err(NodeError::Task(join.to_string())),
            Err(_) => {
                warn!(grace = ?self.grace, "tasks still running after the grace period; stopping anyway");
                Ok(())
            }
        };
        // Nothing is left on it but what the grace period gave up on.
        self.ingest_runtime.stop();
        self.store.durable().await.map_err(NodeError::FinalFlush)?;
        info!("store flushed; stopped");
        outcome
    }
}

/// Starts the node and returns once it is ready.
pub async fn start(
    config: HubConfig,
    shutdown: CancellationToken,
) -> Result<RunningNode, NodeError> {
    let readiness = Readiness::default();
    // Every problem of the settings at once, before anything is opened
    // (the same check `meshlet check` makes).
    config.validate()?;
    let config = crate::listen::fit_to_descriptors(config);

    // Seen before loading: a definition changed while the node starts is
    // one the reload loop picks up.
    let definitions_seen = api::graphql::snapshot_definitions(&config.product_paths());
    let products = Arc::new(load_products(&config)?);
    if products.is_empty() {
        warn!("no product definitions loaded: pass --products or set `products` in the config");
    }

    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let node_id: Arc<str> = resolve_node_id(&config)?.into();
    let span = info_span!("node", node_id = %node_id);
    let _entered = span.enter();

    let store = open_store(&config).await?;
    let external_mqtt = match &config.mqtt.external {
        Some(external) => Some(crate::tls::mqtt::options(external, &node_id)?),
        None => None,
    };
    let listener = HttpListener::bind(&config.http).await?;
    let http_addr = listener.local_addr();
    let http_scheme = listener.scheme();
    let broker = if config.mqtt.embedded.enabled {
        Some(EmbeddedBroker::bind(&config.mqtt.embedded).await?)
    } else {
        None
    };
    let mqtt_addr = broker.as_ref().map(EmbeddedBroker::local_addr);

    let tasks = TaskTracker::new();
    let ingest_runtime = IngestRuntime::start(config.ingest.nice.get())?;
    let on_ingest = ingest_runtime.handle();
    let ingestor = Ingestor::new(
        products.clone(),
        store.clone(),
        &config.ingest,
        &tasks,
        &ingest_runtime,
    );
    // Upstream sync (outbox planner, senders, aggregator) before any source
    // starts, so every accepted record gets its outbox entries.
    let sync = crate::sync::start(
        &config, &node_id, &store, &products, &ingestor, &shutdown, &tasks,
    )?;
    // One MQTT dispatch for both MQTT ends: they share the Sparkplug host
    // state and its command channel.
    let mqtt = MqttIngest::new(ingestor.clone());
    let sparkplug_host = sparkplug_host(&config, &node_id, &mqtt)?;
    if let Some(broker) = broker {
        tasks.spawn_on(
            broker
                .serve(
                    mqtt.clone(),
                    sparkplug_host.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                )
                .instrument(info_span!("broker")),
            on_ingest,
        );
    }
    if let Some(options) = external_mqtt {
        if mqtt.filters().is_empty() {
            warn!("an external broker is configured but no product has an mqtt source");
        }
        tasks.spawn_on(
            client::run(options, mqtt.clone(), sparkplug_host, shutdown.clone())
                .instrument(info_span!("mqtt_client")),
            on_ingest,
        );
    }
    // Sources that read by themselves (file tails, pollers): one task each.
    crate::sources::start_all(
        &ingestor,
        &products,
        &config.ingest,
        &config.data_dir,
        &shutdown,
        |task, span| {
            tasks.spawn_on(task.instrument(span), on_ingest);
        },
    )?;
    // GraphQL: the schema of the loaded products, rebuilt on SIGHUP and
    // when a definition file changes; ingestion and sync rules follow each
    // reload that builds (see `api::graphql::reload`).
    let mask_secret =
        crate::policy::masking::MaskSecret::of_store(&store).map_err(NodeError::MaskSecret)?;
    let auth = Arc::new(crate::policy::auth::Authenticator::new(
        crate::policy::auth::AuthSettings {
            tokens_file: config.tokens_file(),
            anonymous_role: config.security.anonymous_role.clone(),
            certificates: config.security.certificates.clone(),
        },
    )?);
    if let Some(role) = auth.anonymous_role() {
        info!(role, "anonymous API callers are allowed");
    }
    tasks.spawn(reload_tokens_on_hangup(auth.clone(), shutdown.clone()));
    let graphql = api::graphql::GraphqlApi::start(
        products.clone(),
        ingestor.clone(),
        mask_secret,
        api::graphql::GraphqlSettings {
            graphiql: config.http.graphiql,
            limits: config.api.clone(),
        },
        shutdown.clone(),
        &tasks,
        Some(sync.clone()),
    )?;
    let reload_context = LoadContext::with_upstreams(config.upstream_names());
    tasks.spawn(
        graphql
            .watch_definitions(
                config.product_paths(),
                reload_context,
                readiness.clone(),
                definitions_seen,
            )
            .instrument(info_span!("graphql_reload")),
    );
    let retention_metrics = RetentionMetrics::default();
    let app = api::router(ApiState::new(ApiShared {
        node_id: node_id.clone(),
        readiness: readiness.clone(),
        ingestor: ingestor.clone(),
        max_http_body_bytes: config.ingest.max_http_body_bytes,
        graphql,
        tls_metrics: listener.tls_metrics(),
        http_metrics: listener.http_metrics(),
        retention: retention_metrics.clone(),
        auth,
        sync: Some(sync),
        cors: Arc::new(api::Cors::new(&config.http.cors.allow_origins)),
        console: config.http.console,
    }));
    let server = tokio::spawn(
        listener
            .serve(app, shutdown.clone())
            .instrument(info_span!("http", addr = %http_addr)),
    );
    let schedule = SweepSchedule {
        interval: config.store.retention_interval,
        budget: config.store.retention_budget,
    };
    tasks.spawn(
        crate::retention::sweeper(
            store.clone(),
            {
                let ingestor = ingestor.clone();
                move || ingestor.products()
            },
            schedule,
            retention_metrics,
            shutdown.clone(),
        )
        .instrument(info_span!("retention")),
    );

    tasks.spawn(crate::memory::keeper(store.clone(), shutdown.clone()));

    readiness.set_products(products.iter().map(|p| p.name.clone()).collect());
    readiness.set_phase(Phase::Ready);
    info!(
        http = %http_addr,
        scheme = http_scheme,
        mqtt = %mqtt_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        products = products.len(),
        "ready"
    );
    crate::sd_notify::notify("READY=1");
    if let Some(interval) = crate::sd_notify::watchdog_interval() {
        tasks.spawn(crate::sd_notify::watchdog(interval, shutdown.clone()));
    }

    Ok(RunningNode {
        http_addr,
        mqtt_addr,
        node_id,
        store,
        products,
        readiness,
        tasks,
        ingest_runtime,
        shutdown,
        grace: config.shutdown_grace,
        server,
    })
}

pub(crate) async fn open_store(config: &HubConfig) -> Result<Store, NodeError> {
    let path = config.data_dir.join("store");
    let store_config = config.store.at(path.clone());
    let key = config
        .store
        .encryption_key_file
        .as_deref()
        .map(crate::store::EncryptionKey::from_file)
        .transpose()?;
    // sled's open replays its log: blocking disk work, off the runtime.
    tokio::task::spawn_blocking(move || Store::open_with_key(store_config, key))
        .await
        .map_err(|join| NodeError::Task(join.to_string()))?
        .map_err(|source| NodeError::Store { path, source })
}

/// The configured node id, or the one generated on first start and kept in
/// The node as Sparkplug primary host: only when a product reads
/// Sparkplug sources and `sparkplug.state` is on.
fn sparkplug_host(
    config: &HubConfig,
    node_id: &str,
    mqtt: &MqttIngest,
) -> Result<Option<crate::sources::sparkplug::state::PrimaryHost>, NodeError> {
    if !config.sparkplug.state || mqtt.sparkplug().filters().is_empty() {
        return Ok(None);
    }
    let id = config
        .sparkplug
        .host_id
        .clone()
        .unwrap_or_else(|| format!("meshlet-{node_id}"));
    Ok(Some(crate::sources::sparkplug::state::PrimaryHost::new(
        &id,
    )?))
}

/// `<data_dir>/node_id` so it survives restarts (upstreams key their
/// de-duplication on it).
pub(crate) fn resolve_node_id(config: &HubConfig) -> Result<String, NodeError> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(NodeError::NodeId { path, source }),
    }
    let id = format!("node-{:08x}", rand::random::<u32>());
    crate::atomic_file::replace(&path, id.as_bytes(), None).map_err(|source| {
        NodeError::NodeId {
            path: path.clone(),
            source,
        }
    })?;
    info!(node_id = %id, "generated a node id");
    Ok(id)
}

/// Re-reads the token file on SIGHUP (it is also re-read when it changes,
/// checked at most once a second on authentication).
async fn reload_tokens_on_hangup(
    auth: Arc<crate::policy::auth::Authenticator>,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            warn!("cannot listen for SIGHUP: the token file is re-read only when it changes");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    match auth.tokens().reload() {
                        Ok(()) => info!("token file re-read (SIGHUP)"),
                        Err(err) => tracing::error!(error = %err, "token file unreadable after SIGHUP: every token is refused until it is fixed"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = auth;
        shutdown.cancelled().await;
    }
}
