//! `meshlet contract export PRODUCT` and `meshlet contract import FILE`:
//! ODCS data contracts for the central catalog (see [`crate::contract`]).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::HubConfig;
use crate::contract;
use crate::product::{self, LoadContext};

#[derive(Debug, Subcommand)]
pub enum ContractCommand {
    /// Print a product's ODCS v3 data contract (YAML, or JSON with --json).
    Export {
        product: String,
        /// Definition files or folders; default: the configured product paths.
        #[arg(long = "products", short = 'p', value_name = "PATH")]
        products: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print a product-definition skeleton made from an ODCS contract
    /// (YAML or JSON); add sources, then `meshlet check` it.
    Import {
        file: PathBuf,
        /// The schema object to import, when the contract has several.
        #[arg(long, value_name = "NAME")]
        object: Option<String>,
    },
}

pub fn run(config: &HubConfig, command: ContractCommand) -> anyhow::Result<()> {
    match command {
        ContractCommand::Export {
            product: name,
            products,
            json,
        } => {
            let paths = if products.is_empty() {
                config.product_paths()
            } else {
                products
            };
            let ctx = LoadContext::with_upstreams(config.upstream_names());
            let set = match product::load_paths(&paths, &ctx) {
                Ok(set) => set,
                Err(errors) => {
                    for message in errors.messages() {
                        eprintln!("{message}");
                    }
                    anyhow::bail!("the product definitions are invalid; nothing exported");
                }
            };
            let Some(found) = set.get(&name) else {
                let known: Vec<&str> = set.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!(
                    "no product `{name}` (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            };
            let format = if json {
                contract::ContractFormat::Json
            } else {
                contract::ContractFormat::Yaml
            };
            print!("{}", contract::render(found, format));
            Ok(())
        }
        ContractCommand::Import { file, object } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let definition = contract::import(&text, object.as_deref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            print!("{definition}");
            Ok(())
        }
    }
}
