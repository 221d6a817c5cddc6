//! `meshlet key rotate`: re-wraps the store's data key under a new store
//! key (`store/seal.rs`), rewriting no data. Safe while the node runs (it
//! read the data key at start); it needs the new key from its next start,
//! so the config's `store.encryption_key_file` must then name the new
//! file (or the new key must replace the old file's contents).

use std::path::PathBuf;

use crate::config::HubConfig;
use crate::store::EncryptionKey;

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The new store key (`meshlet key generate --out FILE` writes one).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: PathBuf,
    /// The current store key; default `store.encryption_key_file` of the
    /// config.
    #[arg(long, value_name = "FILE")]
    pub old_key_file: Option<PathBuf>,
    /// Data directory (replaces `data_dir` from the config).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn rotate(config: &HubConfig, args: RotateArgs) -> anyhow::Result<()> {
    let old_path = args
        .old_key_file
        .clone()
        .or_else(|| config.store.encryption_key_file.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("no current key: pass --old-key-file or set store.encryption_key_file")
        })?;
    let old = EncryptionKey::from_file(&old_path)?;
    let new = EncryptionKey::from_file(&args.new_key_file)?;
    if old == new {
        anyhow::bail!("the new key is the current key");
    }
    let store = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone())
        .join("store");
    crate::store::rotate_key(&store, &old, &new)?;
    println!(
        "the store in {} is now sealed by the key in {}; point store.encryption_key_file at it (the old key no longer opens the store); no data was rewritten",
        store.display(),
        args.new_key_file.display()
    );
    Ok(())
}
