//! The pipeline: one raw payload (an MQTT message, an HTTP push body, a
//! line of a tailed file) to typed product records, by the product
//! definition — decoding, field mapping, type coercion, quality rules.
//!
//! Pure: bytes and a [`Product`] in, [`Processed`] out; no I/O, no clock
//! (the caller passes the arrival time), nothing stored. The caller decides
//! what happens to [`Invalid`] records (reject or quarantine, by
//! `product.quality.on_invalid`) and counts them by [`Rule::name`].
//!
//! Invariants:
//! - **Never panics, never recurses on input**: sizes, nesting and record
//!   counts are checked against [`Limits`] before anything is built, and a
//!   1000-level nested array is a [`Rule::TooDeep`] violation, not a stack
//!   overflow.
//! - **Nothing is dropped silently**: every record of a payload ends up in
//!   exactly one of `accepted` or `invalid`, a payload that cannot be
//!   decoded at all is one [`Invalid`] with `index: None`, and a field
//!   removed under `on_invalid: drop_field` is listed in
//!   [`Accepted::dropped`].
//! - **Every reason**: an invalid record carries every violation found,
//!   not just the first.
//!
//! Layout: `plan` (a source's reading of its product, compiled once),
//! `decode` (payload checks, formats → JSON documents borrowing from the
//! payload, `node`), `validate` (mapping, coercion, quality rules),
//! `coerce` (type coercion), `fingerprint` (dedupe digests), `violation`
//! (what went wrong).

mod coerce;
mod decode;
mod fingerprint;
mod node;
mod plan;
mod pointer;
mod validate;
mod violation;

#[cfg(test)]
mod tests;

use crate::product::Product;
/// How one source's payloads are read: defined with the sources in
/// `product::source`, read here.
pub use crate::product::SourceShape;
use crate::record::{Origin, Record, Timestamp};

pub use fingerprint::{fingerprint, Fingerprint};
pub use plan::Plan;
pub use violation::{Rule, Violation};

/// Limits applied before and while decoding, so a hostile or broken sender
/// costs bounded memory and time.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Larger payloads are refused unread. Default 256 KiB.
    pub max_payload_bytes: usize,
    /// Deepest nesting of JSON arrays and objects. Default 64; serde_json
    /// refuses more than 128 regardless.
    pub max_depth: usize,
    /// Most records in one payload (array elements, ndjson lines, csv
    /// rows). Default 10,000.
    pub max_records: usize,
    /// Longest entity key, in bytes: the store's limit (default 512), so a
    /// record the store would refuse is refused here, on its own, instead
    /// of failing the whole batch it travels in.
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // The node's settings, defined once in the config.
            max_payload_bytes: crate::config::IngestSettings::DEFAULT_MAX_PAYLOAD_BYTES,
            max_depth: 64,
            max_records: 10_000,
            max_key_bytes: crate::config::StoreConfig::DEFAULT_MAX_ENTITY_KEY_BYTES,
        }
    }
}

/// One payload and what the transport knows about it.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub payload: &'a [u8],
    /// Fields captured from the MQTT topic: field name → level text. They
    /// win over the payload.
    pub captures: &'a [(String, String)],
    /// When the payload arrived: the event time of records whose payload
    /// carries none.
    pub arrival: Timestamp,
    /// Copied unchanged into every record.
    pub origin: Origin,
}

/// A record that passed the product's rules.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// Where the record was in the payload, counted as [`Invalid::index`]
    /// counts, so a quarantined record's replay can pick it out again.
    pub index: usize,
    /// Entity, coerced fields (the key included), event time, origin.
    pub record: Record,
    /// `false` when the payload had no event time and the arrival time was
    /// used; see [`fingerprint`](fingerprint()) for why that matters to
    /// deduplication.
    pub event_time_from_payload: bool,
    pub fingerprint: Fingerprint,
    /// Fields removed under `on_invalid: drop_field`, with why; empty
    /// otherwise. Worth counting: a device sending out-of-range values
    /// still looks healthy.
    pub dropped: Vec<Violation>,
}

/// A record, or a whole payload, that did not pass.
#[derive(Clone, Debug)]
pub struct Invalid {
    /// The record inside the payload: array element index, 0-based line of
    /// an ndjson line or csv row (blank lines counted, so it points at the
    /// line), 0 for a single-record payload. `None`: the payload as a whole
    /// could not be decoded (too large, not UTF-8, bad JSON, too deep, too
    /// many records).
    pub index: Option<usize>,
    /// Every reason found, never empty.
    pub reasons: Vec<Violation>,
    /// The entity the record is about, when its key could be read (from a
    /// topic capture or the payload) even though the record is invalid: a
    /// quarantined payload is personal data of that entity, and erasing the
    /// entity must find it.
    pub entity: Option<String>,
}

/// The outcome for one payload: each record is in exactly one list, in
/// payload order.
#[derive(Clone, Debug, Default)]
pub struct Processed {
    pub accepted: Vec<Accepted>,
    pub invalid: Vec<Invalid>,
}

/// Turns one payload into records of `product`, read as `shape` describes.
/// Builds the source's [`Plan`] for this one call: a source that sees
/// many payloads keeps its plan and calls [`run`].
pub fn process(
    product: &Product,
    shape: &SourceShape,
    input: &Input<'_>,
    limits: &Limits,
) -> Processed {
    run(product, &Plan::new(product, shape), input, limits)
}

/// Turns one payload into records of `product` by its source's `plan`
/// (rebuilt for this call if it was made for another product).
pub fn run(product: &Product, plan: &Plan, input: &Input<'_>, limits: &Limits) -> Processed {
    if !plan.is_for(product) {
        return run(product, &Plan::new(product, plan.shape()), input, limits);
    }
    let mut processed = Processed::default();
    let items = match decode::decode(input.payload, plan.shape(), limits) {
        Ok(items) => items,
        Err(problem) => {
            processed.invalid.push(Invalid {
                index: None,
                reasons: vec![problem],
                entity: validate::entity_of(product, plan, None, input),
            });
            return processed;
        }
    };
    processed.accepted.reserve(items.len());
    for item in items {
        let outcome = match &item.document {
            Ok(document) => validate::build(product, plan, document, input),
            Err(problem) => Err(vec![problem.clone()]),
        };
        match outcome {
            Ok(accepted) if accepted.record.entity.len() > limits.max_key_bytes => {
                processed.invalid.push(Invalid {
                    index: Some(item.index),
                    reasons: vec![Violation::field(
                        &product.key,
                        Rule::KeyTooLong,
                        format!(
                            "key is {} bytes, over the limit of {}",
                            accepted.record.entity.len(),
                            limits.max_key_bytes
                        ),
                    )],
                    entity: Some(accepted.record.entity),
                })
            }
            Ok(accepted) => processed.accepted.push(Accepted {
                index: item.index,
                ..accepted
            }),
            // The entity is read again only for a refused record: the
            // quarantine keys it by entity so erasure finds it.
            Err(reasons) => processed.invalid.push(Invalid {
                index: Some(item.index),
                reasons,
                entity: validate::entity_of(product, plan, item.document.as_ref().ok(), input),
            }),
        }
    }
    processed
}
