//! Quarantine replay: after a definition was fixed, run the quarantined
//! payloads through the current pipeline again.
//!
//! An entry whose record now passes is written and removed in one store
//! step (a crash never both keeps the entry and writes its records, nor
//! loses both); one that still fails stays, untouched. Entries are taken in
//! pages, oldest first. Replayed records keep their original origin and
//! arrival, and are checked against the dedupe set, so replaying twice
//! writes nothing twice.

use crate::pipeline::{self, Input, SourceShape};
use crate::product::Product;
use crate::store::{IngestBatch, IngestRecord, QuarantineEntry, StoreError};

use super::{Ingestor, WriteError, WriteJob};

const PAGE: usize = 256;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Entries looked at.
    pub examined: usize,
    /// Entries that passed and were removed.
    pub replayed: usize,
    /// Records those entries produced (some may have been duplicates).
    pub records: usize,
    /// Entries that still fail, with their new reasons, left in place.
    pub still_invalid: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no product named `{0}`")]
    UnknownProduct(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("reading the quarantine failed: {0}")]
    Task(String),
}

/// Replays every quarantined entry of `product`.
pub async fn replay(ingestor: &Ingestor, product_name: &str) -> Result<ReplayReport, ReplayError> {
    let product = ingestor
        .products()
        .get(product_name)
        .cloned()
        .ok_or_else(|| ReplayError::UnknownProduct(product_name.to_string()))?;
    let mut report = ReplayReport::default();
    let mut after = None;
    loop {
        let store = ingestor.store().clone();
        let name = product.name.clone();
        let page = tokio::task::spawn_blocking(move || store.quarantine_list(&name, after, PAGE))
            .await
            .map_err(|e| ReplayError::Task(e.to_string()))??;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let mut batch = IngestBatch::default();
        for entry in &page {
            report.examined += 1;
            match rerun(ingestor, &product, entry) {
                Some(records) => {
                    report.replayed += 1;
                    report.records += records.len();
                    batch.records.extend(records);
                    batch.resolve_quarantine.push(entry.id);
                }
                None => report.still_invalid += 1,
            }
        }
        if batch.resolve_quarantine.is_empty() {
            continue;
        }
        let job = WriteJob {
            product: product.name.clone(),
            limits: ingestor.store_limits(&product),
            batch,
            retained: false,
            received_at: crate::record::Timestamp::now(),
        };
        ingestor.writer().submit(job).await.wait().await?;
        if page.len() < PAGE {
            break;
        }
    }
    tracing::info!(product = product_name, ?report, "quarantine replayed");
    Ok(report)
}

/// The entry's records under the current definition, or `None` while it
/// still fails.
fn rerun(
    ingestor: &Ingestor,
    product: &Product,
    entry: &QuarantineEntry,
) -> Option<Vec<IngestRecord>> {
    let item = &entry.item;
    let shape = shape_for(product, &item.source)?;
    let input = Input {
        payload: &item.payload,
        captures: &item.captures,
        arrival: item.arrival,
        origin: item.origin.clone(),
    };
    let processed = pipeline::process(product, &shape, &input, ingestor.limits());
    let wanted = |index: usize| item.index.is_none_or(|i| i as usize == index);
    if processed
        .invalid
        .iter()
        .any(|bad| bad.index.is_none() || bad.index.is_some_and(wanted))
    {
        return None;
    }
    Some(
        processed
            .accepted
            .into_iter()
            .filter(|a| wanted(a.index))
            .map(|a| IngestRecord {
                check_duplicate: true,
                fingerprint: Some(a.fingerprint.0),
                record: a.record,
            })
            .collect(),
    )
}

/// The shape of the source an entry came from: the same source when the
/// definition still has it, else the first source of the same kind.
fn shape_for(product: &Product, source_id: &str) -> Option<SourceShape> {
    Some(product.source_by_id(source_id)?.shape())
}
