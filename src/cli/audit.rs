//! `meshlet audit verify [PRODUCT [KEY]]`: checks the audit hash chains of
//! a stopped node's store (see `store/audit.rs`) and reports, per entity,
//! the first broken link.
//!
//! Offline like `meshlet erase`: a running node holds the store's lock
//! (the error says so), and offers the same per entity as the instance's
//! `auditVerified` in GraphQL. Exit 0 when every chain verifies, 1 when
//! one breaks or the store cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;

use crate::config::HubConfig;
use crate::store::{AuditVerdict, Store};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the audit hash chains: every entity of every product, of
    /// PRODUCT, or the one entity KEY of PRODUCT. Prints the first broken
    /// link of each entity and exits non-zero if there is one.
    Verify {
        /// The product, as named in its definition; default: all.
        product: Option<String>,
        /// The entity key (int keys in decimal); default: all of PRODUCT.
        key: Option<String>,
        /// Data directory (replaces `data_dir` from the config).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

pub fn run(mut config: HubConfig, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify {
        product,
        key,
        data_dir,
    } = command;
    crate::telemetry::init_logging(&crate::config::LogConfig {
        level: "warn".to_string(),
        ..config.log.clone()
    });
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let runtime = super::runtime(false)?;
    let verdicts = runtime.block_on(async {
        let products = crate::node::load_products(&config)
            .map_err(|e| anyhow!("product definitions are invalid:\n{e}"))?;
        let names: Vec<String> = match &product {
            Some(name) if products.get(name).is_none() => bail!("no product named `{name}`"),
            Some(name) => vec![name.clone()],
            None => products.iter().map(|p| p.name.clone()).collect(),
        };
        let store = crate::node::open_store(&config)
            .await
            .map_err(|e| anyhow!("{e}\n(is the node running? stop it, or ask its API for `auditVerified` of an instance)"))?;
        tokio::task::spawn_blocking(move || verify(&store, &names, key.as_deref()))
            .await
            .context("the verification task failed")?
    })?;
    Ok(report(&verdicts))
}

fn verify(
    store: &Store,
    products: &[String],
    key: Option<&str>,
) -> anyhow::Result<Vec<(String, AuditVerdict)>> {
    let mut out = Vec::new();
    for product in products {
        let verdicts = match key {
            Some(key) => vec![store.verify_audit(product, key)?],
            None => store.verify_audit_product(product)?,
        };
        out.extend(verdicts.into_iter().map(|v| (product.clone(), v)));
    }
    Ok(out)
}

/// One line per broken chain, then a summary; the exit code.
fn report(verdicts: &[(String, AuditVerdict)]) -> ExitCode {
    let mut broken = 0;
    for (product, verdict) in verdicts {
        if let Some(b) = &verdict.broken {
            broken += 1;
            println!(
                "BROKEN {product} `{}`: line {} (audit id {}, versions {}..={}) {}",
                verdict.entity, b.line, b.id, b.from_version, b.to_version, b.reason
            );
        }
    }
    let sum = |f: fn(&AuditVerdict) -> u64| verdicts.iter().map(|(_, v)| f(v)).sum::<u64>();
    println!(
        "{} entities, {} audit lines: {} linked, {} from before the chain, {} whose history retention dropped; {} broken",
        verdicts.len(),
        sum(|v| v.lines),
        sum(|v| v.linked),
        sum(|v| v.unlinked),
        sum(|v| v.events_pruned),
        broken
    );
    if let [(_, verdict)] = verdicts {
        if let Some(head) = &verdict.head {
            println!("head {head}");
        }
    }
    if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
