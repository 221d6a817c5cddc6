//! `meshlet sync verify UPSTREAM`: compares this node's sync digests with
//! the aggregator's and enqueues again only what differs (`sync::digest`).
//! Works on the data directory with the node stopped (the running node
//! does the same every `sync.verify_interval`); what it enqueues is sent
//! at the next start.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;

use crate::config::HubConfig;
use crate::sync::digest::{Verifier, VerifyReport};

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Compare what UPSTREAM holds of this node with what it should hold
    /// (digests per product, narrowed to the differing keys) and enqueue
    /// those entities again (with the node stopped).
    Verify {
        /// The upstream, by its name in the hub config.
        upstream: String,
        /// Data directory (replaces `data_dir` from the config).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Only compare and report; enqueue nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(mut config: HubConfig, command: SyncCommand) -> anyhow::Result<()> {
    let SyncCommand::Verify {
        upstream,
        data_dir,
        dry_run,
        json,
    } = command;
    crate::telemetry::init_logging(&crate::config::LogConfig {
        level: "warn".to_string(),
        ..config.log.clone()
    });
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let runtime = super::runtime(false)?;
    let report: VerifyReport = runtime.block_on(async {
        let Some(settings) = config.upstreams.get(&upstream) else {
            bail!(
                "no upstream named `{upstream}` in the hub config (known: {})",
                config.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let node_id = crate::node::resolve_node_id(&config)?;
        let mut verifier =
            Verifier::new(&upstream, settings, &node_id)?;
        let products = Arc::new(
            crate::node::load_products(&config)
                .map_err(|e| anyhow!("product definitions are invalid:\n{e}"))?,
        );
        let store = crate::node::open_store(&config)
            .await
            .map_err(|e| anyhow!("{e}\n(is the node running? stop it, or set `sync.verify_interval` to have it verify itself)"))?;
        crate::sync::install_planner(&store, &products)
            .context("cannot plan the sync")?;
        crate::sync::prepare_sent_digests(&store, &products)
            .context("cannot build the sync digests")?;
        let report = verifier
            .run(&store, &products, !dry_run)
            .await?;
        store.durable().await?;
        Ok(report)
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot print the report")?
        );
        return Ok(());
    }
    {
        {
            for p in &report.products {
                println!(
                    "{}: {} buckets here, {} there, {} differ; {} entities differ ({} in flight), {} states and {} tombstones enqueued",
                    p.product,
                    p.buckets_here,
                    p.buckets_there,
                    p.mismatched_buckets,
                    p.differing,
                    p.in_flight,
                    p.resent,
                    p.tombstones
                );
            }
            for p in &report.skipped {
                println!("{p}: not verifiable (synced to `{upstream}` in mode history only)");
            }
            if report.differing == 0 {
                println!("`{upstream}` holds what it should of `{}`", report.origin);
            } else if dry_run {
                println!(
                    "{} entities differ; nothing enqueued (--dry-run)",
                    report.differing
                );
            } else {
                println!(
                    "{} entities differ; {} enqueued again, sent at the next start",
                    report.differing,
                    report.resent + report.tombstones
                );
            }
        }
    }
    Ok(())
}
