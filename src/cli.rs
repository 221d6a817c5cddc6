//! The command line: `meshlet init`, `meshlet status`, `meshlet serve`, `meshlet check`, `meshlet quarantine`,
//! `meshlet erase`, `meshlet audit verify`, `meshlet sync verify`, `meshlet key generate|rotate`, `meshlet token create|revoke|list`,
//! `meshlet schema print`, `meshlet contract export|import`, `meshlet --version`.
//!
//! This is the binary's edge: errors become one readable report on stderr
//! and an exit code (0 success, 1 failure, 2 usage), never a panic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

mod audit;
mod contract;
mod init;
mod key;
mod progress;
mod status;
mod sync;

use crate::config::{self, HubConfig};
use crate::product::{self, LoadContext};

#[derive(Debug, Parser)]
#[command(
    name = "meshlet",
    version,
    about = "An edge gateway as a node of a data mesh: ingest, store, serve, sync.",
    propagate_version = true
)]
pub struct Cli {
    /// Hub config file (TOML). Without one, `./meshlet.toml` when it
    /// exists, else the embedded default; `MESHLET_*` environment
    /// variables override either.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "MESHLET_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log lines as `text` or `json` (one object per line, for log
    /// shippers); replaces `log.format` from the config and environment.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<config::LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter config (meshlet.toml) and product
    /// (products/sensor.yaml) into DIR; never overwrites.
    Init(init::InitArgs),
    /// One screen about a running node: products, ingest rates,
    /// quarantine, sync, uptime (from its /metrics and GraphQL catalog).
    Status(status::StatusArgs),
    /// Run the node until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Validate product definitions and the hub config; report every problem.
    Check(CheckArgs),
    /// Inspect and replay quarantined payloads (with the node stopped; a
    /// running node offers the same over HTTP under /quarantine).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// The GraphQL schema generated from the product definitions.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// ODCS (Open Data Contract Standard v3) contracts of products.
    #[command(subcommand)]
    Contract(contract::ContractCommand),
    /// Erase one entity for good: state, history, audit values and its
    /// quarantined payloads; an audit line and a tombstone (who and when,
    /// no values) remain. Works on the data directory with the node
    /// stopped; a running node offers the same as the `erase<Product>`
    /// GraphQL mutation.
    Erase(EraseArgs),
    /// Verify the audit hash chains (with the node stopped; a running
    /// node offers `auditVerified` per instance in GraphQL).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Store encryption keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sync checks: `verify UPSTREAM` compares digests with the
    /// aggregator and sends again only what differs.
    #[command(subcommand)]
    Sync(sync::SyncCommand),
    /// Create, revoke and list API tokens (also while the node runs: it
    /// notices the token file change within a second, or on SIGHUP).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new random 256-bit key (hex) for `store.encryption_key_file`.
    Generate {
        /// The file to create (readable by its owner only); never
        /// overwritten. Without it the key goes to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Seal the store's data key with a new store key, rewriting no data
    /// (also while the node runs; it uses the new key from its next start).
    Rotate(key::RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The product, as named in its definition.
    pub product: String,
    /// The entity key (int keys in decimal).
    pub key: String,
    /// Data directory (replaces `data_dir` from the config).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Who asks for the erasure, for the audit line; default `$USER`.
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a role and print it once; only its hash is kept.
    Create {
        /// The role the token acts as (a role of the products' `access:`
        /// rules, or the built-in `admin` / `reader`).
        #[arg(long)]
        role: String,
        /// Who holds it (unique among live tokens; shown in the audit).
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a token by id or name.
    Revoke { id_or_name: String },
    /// List tokens (id, name, role, created, revoked) — never secrets.
    List,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print the schema (SDL) that `serve` would expose for these products.
    Print {
        /// Definition files or folders; default: the configured product paths.
        #[arg(long = "products", short = 'p', value_name = "PATH")]
        products: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List a product's quarantined payloads with every reason.
    List {
        product: String,
        /// Entries after this id.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Run a product's quarantined payloads through its current definition;
    /// those that now pass are written and leave the quarantine.
    Replay { product: String },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Product definition files or folders (replaces `products` from the config).
    #[arg(long = "products", short = 'p', value_name = "PATH")]
    pub products: Vec<PathBuf>,
    /// Data directory (replaces `data_dir` from the config).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (replaces `http.listen` from the config).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Definition files or folders; default: the configured product paths.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Entry point of the binary: every failure comes back here as one
/// `anyhow::Error` and is reported once (exit code 1).
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// `error: <what> : <why> : ...` on stderr. A cause whose text the message
/// before it already carries (library errors that print their source) is
/// not repeated.
fn report(err: &anyhow::Error) {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    eprintln!("error: {text}");
}

/// A runtime for a command that needs one.
fn runtime(multi_thread: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.thread_name("meshlet");
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `Ok(())` as a successful exit.
fn done(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    result.map(|()| ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // init writes the config, so it must not need (or trip over) one.
    let command = match cli.command {
        Command::Init(args) => return done(init::run(args)),
        command => command,
    };
    // A newcomer runs `meshlet serve` where `meshlet init` wrote the config.
    let discovered = std::path::Path::new(init::CONFIG_FILE);
    let file = cli
        .config
        .as_deref()
        .or_else(|| discovered.is_file().then_some(discovered));
    let mut config = config::load(file).context("invalid hub config")?;
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
    match command {
        Command::Init(args) => done(init::run(args)),
        Command::Status(args) => done(status::run(&config, args)),
        Command::Serve(args) => done(serve(config, args)),
        Command::Check(args) => done(check(&config, args)),
        Command::Quarantine(command) => done(quarantine(config, command)),
        Command::Schema(SchemaCommand::Print { products }) => done(print_schema(&config, products)),
        Command::Contract(command) => done(contract::run(&config, command)),
        Command::Erase(args) => done(erase(config, args)),
        Command::Audit(command) => audit::run(config, command),
        Command::Key(KeyCommand::Generate { out }) => done(generate_key(out)),
        Command::Key(KeyCommand::Rotate(args)) => done(key::rotate(&config, args)),
        Command::Sync(command) => done(sync::run(config, command)),
        Command::Token(command) => done(token(&config, command)),
    }
}

/// `meshlet key generate`: a fresh key, to a new owner-only file or stdout.
fn generate_key(out: Option<PathBuf>) -> anyhow::Result<()> {
    let key = crate::store::EncryptionKey::generate()?;
    let text = format!("{}\n", key.to_hex());
    let Some(path) = out else {
        print!("{text}");
        return Ok(());
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&path).and_then(|mut file| {
        use std::io::Write;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        // A new name is durable only once its directory is.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        crate::atomic_file::fsync_directory(dir.unwrap_or(std::path::Path::new(".")))
    });
    written.with_context(|| format!("cannot create {}", path.display()))?;
    println!(
        "wrote a new store key to {}; keep a copy: without it the data cannot be read",
        path.display()
    );
    Ok(())
}

/// `meshlet erase`: offline, through [`crate::store::Store::erase`] like
/// the mutation. A running node holds the store's lock; the error then
/// points at the mutation instead.
fn erase(mut config: HubConfig, args: EraseArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&crate::config::LogConfig {
        level: "warn".to_string(),
        ..config.log.clone()
    });
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let runtime = runtime(false)?;
    let erased: bool = runtime.block_on(async {
        let products = crate::node::load_products(&config)
            .map_err(|e| anyhow!("product definitions are invalid:\n{e}"))?;
        let Some(definition) = products.get(&args.product) else {
            return Err(anyhow!("no product named `{}`", args.product));
        };
        let store = crate::node::open_store(&config).await.map_err(|e| {
            let mutation = crate::api::graphql::erase_mutation_name(&definition.name);
            anyhow!(
                "{e}\n(is the node running? stop it, or erase through its API: mutation {{ {mutation}({}: ...) }} on http://{}/graphql)",
                definition.key, config.http.listen
            )
        })?;
        // The tombstone owed to each upstream is enqueued with the erasure,
        // as on a running node: the next start sends it.
        crate::sync::install_planner(&store, &std::sync::Arc::new(products.clone()))
            .context("cannot plan the sync of the erasure")?;
        let actor = args
            .actor
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".to_string());
        let origin = crate::record::Origin::new("cli").with_actor(actor);
        let erased = store.erase(&args.product, &args.key, &origin)?;
        store.durable().await?;
        Ok::<_, anyhow::Error>(erased)
    })?;
    if erased {
        println!("erased {} `{}`", args.product, args.key);
    } else {
        println!(
            "{} has no entity `{}`; nothing erased",
            args.product, args.key
        );
    }
    Ok(())
}

fn token(config: &HubConfig, command: TokenCommand) -> anyhow::Result<()> {
    use crate::policy::tokens::TokenFileStore;
    let store = TokenFileStore::new(config.tokens_file());
    let result = match command {
        TokenCommand::Create { role, name } => {
            store.create(&role, name.as_deref()).map(|created| {
                eprintln!(
                    "created token {} (name `{}`, role `{}`); it is shown only now:",
                    created.entry.id, created.entry.name, created.entry.role
                );
                println!("{}", created.token);
            })
        }
        TokenCommand::Revoke { id_or_name } => store.revoke(&id_or_name).map(|entry| {
            println!("revoked token {} (name `{}`)", entry.id, entry.name);
        }),
        TokenCommand::List => store.list().map(|entries| {
            println!(
                "{:<12}  {:<24}  {:<16}  {:<25}  revoked",
                "id", "name", "role", "created"
            );
            for e in entries {
                println!(
                    "{:<12}  {:<24}  {:<16}  {:<25}  {}",
                    e.id,
                    e.name,
                    e.role,
                    e.created_at,
                    e.revoked_at.as_deref().unwrap_or("-")
                );
            }
        }),
    };
    Ok(result?)
}

fn print_schema(config: &HubConfig, products: Vec<PathBuf>) -> anyhow::Result<()> {
    let paths = if products.is_empty() {
        config.product_paths()
    } else {
        products
    };
    let ctx = LoadContext::with_upstreams(config.upstream_names());
    let set = match product::load_paths(&paths, &ctx) {
        Ok(set) => set,
        Err(errors) => {
            for diagnostic in &errors.0 {
                eprintln!("{diagnostic}");
            }
            return Err(anyhow!("product definitions are invalid"));
        }
    };
    let sdl = crate::api::graphql::sdl(&set)?;
    print!("{sdl}");
    Ok(())
}

fn serve(mut config: HubConfig, args: ServeArgs) -> anyhow::Result<()> {
    if !args.products.is_empty() {
        config.products = args.products;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.http.listen = listen;
    }
    crate::telemetry::init_logging(&config.log);

    let runtime = runtime(true)?;
    let outcome = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(watch_signals(shutdown.clone()));
        let node = crate::node::start(config, shutdown.clone()).await;
        let result = match node {
            Ok(node) => node.wait().await,
            Err(err) => Err(err),
        };
        signals.abort();
        result
    });
    if let Err(err) = &outcome {
        error!(error = %err, "node stopped with an error");
    }
    Ok(outcome?)
}

fn quarantine(config: HubConfig, command: QuarantineCommand) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&crate::config::LogConfig {
        level: "warn".to_string(),
        ..config.log.clone()
    });
    let runtime = runtime(false)?;
    runtime.block_on(async move {
        let products = crate::node::load_products(&config)
            .map_err(|e| anyhow!("product definitions are invalid:\n{e}"))?;
        let store = crate::node::open_store(&config).await.map_err(|e| {
            anyhow!(
                "{e}\n(is the node running? stop it, or use its HTTP API: POST http://{}/quarantine/<product>/replay)",
                config.http.listen
            )
        })?;
        let products = std::sync::Arc::new(products);
        match command {
            QuarantineCommand::List { product, after, limit } => {
                if products.get(&product).is_none() {
                    return Err(anyhow!("no product named `{product}`"));
                }
                let total = store.quarantine_count(&product)?;
                let entries = store.quarantine_list(&product, after, limit.max(1))?;
                println!("{total} quarantined in {product}");
                for entry in entries {
                    let item = &entry.item;
                    println!(
                        "#{} at {} from {}{}{}{}",
                        entry.id,
                        entry.quarantined_at,
                        item.source,
                        item.entity.as_deref().map(|e| format!(" entity {e}")).unwrap_or_default(),
                        item.topic.as_deref().map(|t| format!(" topic {t}")).unwrap_or_default(),
                        item.index.map(|i| format!(" record {i}")).unwrap_or_default(),
                    );
                    for reason in &item.reasons {
                        println!("  - {reason}");
                    }
                    let payload = String::from_utf8_lossy(&item.payload);
                    let shown: String = payload.chars().take(200).collect();
                    println!("  payload: {shown}{}", if payload.chars().count() > 200 { "…" } else { "" });
                }
                Ok(())
            }
            QuarantineCommand::Replay { product } => {
                // Replayed records owe the upstreams what the same records
                // written by a running node would: their outbox entries go
                // with them.
                crate::sync::install_planner(&store, &products)
                    .context("cannot plan the sync of replayed records")?;
                let tasks = tokio_util::task::TaskTracker::new();
                // A replay is the operator's own foreground work: it runs
                // at the command's priority, on the command's runtime.
                let shared_runtime = crate::ingest::priority::IngestRuntime::start(0)?;
                let ingestor = crate::ingest::Ingestor::new(
                    products.clone(),
                    store.clone(),
                    &config.ingest,
                    &tasks,
                    &shared_runtime,
                );
                // Entries that leave the quarantine are what a person can
                // watch from outside the replay: its stored count drops.
                let total = store.quarantine_count(&product).unwrap_or(0);
                let left = || match store.quarantine_count(&product) {
                    Ok(now) => format!("{} of {total} resolved", total.saturating_sub(now)),
                    Err(_) => format!("{total} to examine"),
                };
                let report = progress::while_running(
                    &format!("replaying the quarantine of {product}"),
                    crate::ingest::replay::replay(&ingestor, &product),
                    left,
                )
                .await?;
                drop(ingestor);
                tasks.close();
                tasks.wait().await;
                store.durable().await?;
                println!(
                    "replayed {} of {} quarantined payloads of {product} ({} records written); {} still invalid",
                    report.replayed, report.examined, report.records, report.still_invalid
                );
                Ok(())
            }
        }
    })
}

/// First SIGINT/SIGTERM: graceful shutdown. Second one: exit at once, for
/// the operator whose patience ran out (the store is crash-safe).
async fn watch_signals(shutdown: CancellationToken) {
    let mut first = true;
    loop {
        if let Err(err) = next_signal().await {
            error!(error = %err, "cannot listen for signals; stop the node with SIGKILL");
            return;
        }
        if first {
            info!("signal received; stopping (send it again to exit at once)");
            shutdown.cancel();
            first = false;
        } else {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
    }
}

#[cfg(unix)]
async fn next_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn next_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

fn check(config: &HubConfig, args: CheckArgs) -> anyhow::Result<()> {
    let paths = if args.paths.is_empty() {
        config.product_paths()
    } else {
        args.paths
    };
    if paths.is_empty() {
        return Err(anyhow!(
            "nothing to check: name a file or folder, or set `products` in the config"
        ));
    }
    let ctx = LoadContext::with_upstreams(config.upstream_names());
    match product::load_paths(&paths, &ctx) {
        Ok(set) => {
            // What `serve` checks beyond each file: the GraphQL names across
            // the set, and the hub config's upstreams, TLS files, keys and
            // tokens.
            let preflight = crate::node::preflight(config, &set);
            for warning in &preflight.warnings {
                eprintln!("warning: {warning}");
            }
            if !preflight.problems.is_empty() {
                for problem in &preflight.problems {
                    eprintln!("{problem}");
                }
                return Err(anyhow!(
                    "{} problem{}: `meshlet serve` would refuse to start",
                    preflight.problems.len(),
                    if preflight.problems.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                ));
            }
            let names: Vec<&str> = set.iter().map(|p| p.name.as_str()).collect();
            println!(
                "ok: {} product{} valid ({}); hub config valid",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
            Ok(())
        }
        Err(errors) => {
            for diagnostic in &errors.0 {
                eprintln!("{diagnostic}");
            }
            let files: std::collections::BTreeSet<_> = errors.0.iter().map(|d| &d.file).collect();
            Err(anyhow!(
                "{} problem{} in {} file{}",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" },
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            ))
        }
    }
}
