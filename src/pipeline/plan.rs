//! A source's compiled reading of its product's records: which fields, in
//! which order, read from where, worked out once per source instead of
//! once per field of every message.
//!
//! Per message the pipeline used to find each field's `map` pointer by
//! hashing its name, split and unescape the pointer, and order the key
//! first by comparing names; a [`Plan`] holds all of that resolved, so a
//! message's mapping is a walk over a vector. Sources that see many
//! messages keep one (the MQTT routes do); [`process`](super::process)
//! builds one per call for the occasional caller.

use crate::product::{PayloadFormat, Product};

use super::pointer::Pointer;
use super::SourceShape;

/// How one source reads records of one product. Built by [`Plan::new`];
/// used with the same product by [`run`](super::run), which rebuilds it if
/// handed another product (a plan holds field positions, not fields).
#[derive(Clone, Debug)]
pub struct Plan {
    pub(super) shape: SourceShape,
    /// The product's name and its field names in order (each ended by a
    /// NUL, which no name holds) when built: what `run` checks before
    /// trusting the positions below.
    product: String,
    field_names: String,
    /// The key field first (when declared), then the others in
    /// declaration order: the key's problems lead a violation list.
    pub(super) fields: Vec<Planned>,
    /// `false` only for a hand-built product whose key is not a field.
    pub(super) key_declared: bool,
    pub(super) event_time: Option<EventTime>,
}

/// One declared field of the product, and where this source reads it.
#[derive(Clone, Debug)]
pub(super) struct Planned {
    /// Position in `product.fields`.
    pub index: usize,
    pub is_key: bool,
    pub from: From,
}

/// Where a field's value is in a record's document (after a topic capture
/// of the same name, which always wins).
#[derive(Clone, Debug)]
pub(super) enum From {
    /// The source's `map` pointer.
    Pointer(Pointer),
    /// The same-named key of `values` (telemetry).
    Values,
    /// The same-named key of the document (json, ndjson, csv).
    Key,
    /// The document itself: a raw source's `field`.
    Document,
    /// Nowhere in the document: a raw source's other fields.
    Nowhere,
}

/// The event time's pointer, and the capture that stands in for it.
#[derive(Clone, Debug)]
pub(super) struct EventTime {
    /// As written, for messages.
    pub text: String,
    pub pointer: Pointer,
    /// When the pointer is one top-level key (`/ts`), a capture of that
    /// name gives the time of a document that has none.
    pub capture: Option<String>,
}

impl Plan {
    /// The plan for `product`'s records read as `shape` describes.
    pub fn new(product: &Product, shape: &SourceShape) -> Plan {
        let from = |name: &str| match shape.map.get(name) {
            Some(pointer) => From::Pointer(Pointer::compile(pointer)),
            None => match shape.format {
                PayloadFormat::Raw if shape.field.as_deref() == Some(name) => From::Document,
                PayloadFormat::Raw => From::Nowhere,
                PayloadFormat::Telemetry => From::Values,
                PayloadFormat::Json | PayloadFormat::Ndjson | PayloadFormat::Csv => From::Key,
            },
        };
        let key = product.fields.get_index_of(&product.key);
        let mut fields = Vec::with_capacity(product.fields.len());
        fields.extend(key.map(|index| Planned {
            index,
            is_key: true,
            from: from(&product.key),
        }));
        fields.extend(
            product
                .fields
                .values()
                .enumerate()
                .filter(|(_, field)| field.name != product.key)
                .map(|(index, field)| Planned {
                    index,
                    is_key: false,
                    from: from(&field.name),
                }),
        );
        let event_time = match shape.format {
            // Raw payloads have no event time.
            PayloadFormat::Raw => None,
            _ => shape.event_time_pointer().map(|text| EventTime {
                text: text.to_string(),
                pointer: Pointer::compile(text),
                capture: text
                    .strip_prefix('/')
                    .filter(|k| !k.contains('/'))
                    .map(str::to_string),
            }),
        };
        Plan {
            shape: shape.clone(),
            product: product.name.clone(),
            field_names: product
                .fields
                .keys()
                .fold(String::new(), |mut names, name| {
                    names.push_str(name);
                    names.push('\0');
                    names
                }),
            fields,
            key_declared: key.is_some(),
            event_time,
        }
    }

    /// The shape this plan reads.
    pub fn shape(&self) -> &SourceShape {
        &self.shape
    }

    /// Whether the field positions are `product`'s.
    pub(super) fn is_for(&self, product: &Product) -> bool {
        let mut names = self.field_names.split_terminator('\0');
        self.product == product.name
            && product
                .fields
                .keys()
                .all(|name| names.next() == Some(name.as_str()))
            && names.next().is_none()
    }
}
