//! `orderBy` and the connection cursors that go with it.
//!
//! Without `orderBy` (or ordered by a string key ascending) instances come
//! in entity key byte order, the store's own order, and a cursor is just
//! the entity key: paging is a keyset range scan, and since keys never
//! change, every entity is seen exactly once across pages even while
//! others are written (entities created meanwhile may or may not be seen).
//!
//! With `orderBy` on other fields, the sort key is the values of the
//! ordered fields followed by the entity key (the tie-breaker, always
//! ascending), and the cursor carries that whole sort key. Paging stays
//! exactly-once as long as the ordered fields of the entities being paged
//! do not change meanwhile: an entity whose ordered value moves across the
//! cursor can be seen twice or not at all (no snapshot is kept between
//! requests). Absent values sort last ascending, first descending.
//!
//! A cursor names the ordering it was made for, and is refused with
//! another one instead of silently skipping entities.

use std::cmp::Ordering;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::filter::compare;
use crate::product::{FieldType, Product};
use crate::record::Value;
use crate::store::Instance;

/// At most this many `orderBy` terms.
pub(crate) const MAX_TERMS: usize = 3;

/// One `orderBy` term.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OrderTerm {
    pub field: String,
    pub descending: bool,
}

/// An ordering of instances; empty = entity key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Order {
    pub terms: Vec<OrderTerm>,
}

/// Where an instance sits in an [`Order`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SortKey {
    #[serde(rename = "v", default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Option<Value>>,
    #[serde(rename = "k")]
    pub entity: String,
}

/// What a cursor holds: the ordering it belongs to and a sort key.
#[derive(Serialize, Deserialize)]
struct CursorData {
    #[serde(rename = "o", default, skip_serializing_if = "String::is_empty")]
    order: String,
    #[serde(flatten)]
    key: SortKey,
}

/// Why a cursor was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum CursorError {
    #[error("`{0}` is not a cursor of this connection")]
    Malformed(String),
    #[error("this cursor belongs to another orderBy ({made_for}); pass the orderBy it was made with, or start again without a cursor")]
    OtherOrder { made_for: String },
}

impl Order {
    /// Whether this ordering is the store's key order, so paging can be a
    /// keyset range scan.
    pub(crate) fn is_key_order(&self, product: &Product) -> bool {
        match self.terms.as_slice() {
            [] => true,
            [term] => {
                term.field == product.key
                    && !term.descending
                    && product.key_field().ty == FieldType::String
            }
            _ => false,
        }
    }

    /// A stable name of the ordering, kept in cursors.
    pub(crate) fn signature(&self) -> String {
        self.terms
            .iter()
            .map(|t| format!("{}:{}", t.field, if t.descending { "desc" } else { "asc" }))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn sort_key(&self, instance: &Instance) -> SortKey {
        SortKey {
            values: self
                .terms
                .iter()
                .map(|t| {
                    instance
                        .fields
                        .get(&t.field)
                        .filter(|v| !v.is_null())
                        .cloned()
                })
                .collect(),
            entity: instance.entity.clone(),
        }
    }

    pub(crate) fn compare(&self, a: &SortKey, b: &SortKey) -> Ordering {
        for (index, term) in self.terms.iter().enumerate() {
            let x = a.values.get(index).and_then(Option::as_ref);
            let y = b.values.get(index).and_then(Option::as_ref);
            let ordering = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(x), Some(y)) => total(x, y),
            };
            let ordering = if term.descending {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        a.entity.as_bytes().cmp(b.entity.as_bytes())
    }

    pub(crate) fn encode(&self, key: &SortKey) -> String {
        let data = CursorData {
            order: if self.terms.is_empty() {
                String::new()
            } else {
                self.signature()
            },
            key: if self.terms.is_empty() {
                SortKey {
                    values: Vec::new(),
                    entity: key.entity.clone(),
                }
            } else {
                key.clone()
            },
        };
        // Serializing plain data to JSON cannot fail.
        let json = serde_json::to_vec(&data).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub(crate) fn decode(&self, cursor: &str) -> Result<SortKey, CursorError> {
        let malformed = || CursorError::Malformed(shorten(cursor));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| malformed())?;
        let data: CursorData = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        let expected = if self.terms.is_empty() {
            String::new()
        } else {
            self.signature()
        };
        if data.order != expected {
            return Err(CursorError::OtherOrder {
                made_for: if data.order.is_empty() {
                    "entity key order".to_string()
                } else {
                    data.order
                },
            });
        }
        if data.key.values.len() != self.terms.len() {
            return Err(malformed());
        }
        Ok(data.key)
    }
}

/// A total order on values: typed comparison, then by type.
fn total(a: &Value, b: &Value) -> Ordering {
    if let Some(ordering) = compare(a, b) {
        return ordering;
    }
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Json(x), Value::Json(y)) => x.to_string().cmp(&y.to_string()),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::Float(_) => 2,
        Value::Timestamp(_) => 3,
        Value::String(_) => 4,
        Value::Json(_) => 5,
    }
}

fn shorten(text: &str) -> String {
    if text.len() <= 40 {
        return text.to_string();
    }
    let mut cut = 40;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: Vec<Option<Value>>, entity: &str) -> SortKey {
        SortKey {
            values,
            entity: entity.to_string(),
        }
    }

    #[test]
    fn values_then_key_with_absent_last() {
        let order = Order {
            terms: vec![OrderTerm {
                field: "t".into(),
                descending: false,
            }],
        };
        let a = key(vec![Some(Value::Float(1.0))], "b");
        let b = key(vec![Some(Value::Float(1.0))], "c");
        let c = key(vec![Some(Value::Float(2.0))], "a");
        let d = key(vec![None], "a");
        assert_eq!(order.compare(&a, &b), Ordering::Less);
        assert_eq!(order.compare(&b, &c), Ordering::Less);
        assert_eq!(order.compare(&c, &d), Ordering::Less);
        let desc = Order {
            terms: vec![OrderTerm {
                field: "t".into(),
                descending: true,
            }],
        };
        assert_eq!(desc.compare(&c, &a), Ordering::Less);
        assert_eq!(desc.compare(&d, &c), Ordering::Less);
        assert_eq!(
            desc.compare(&a, &b),
            Ordering::Less,
            "ties stay key-ascending"
        );
    }

    #[test]
    fn cursors_round_trip_and_name_their_order() {
        let order = Order {
            terms: vec![OrderTerm {
                field: "t".into(),
                descending: true,
            }],
        };
        let k = key(vec![Some(Value::Int(5))], "m-1");
        let cursor = order.encode(&k);
        assert_eq!(order.decode(&cursor), Ok(k.clone()));
        let err = Order::default().decode(&cursor).expect_err("other order");
        assert!(matches!(err, CursorError::OtherOrder { .. }), "{err}");
        let plain = Order::default().encode(&k);
        assert_eq!(
            Order::default().decode(&plain).map(|k| k.entity),
            Ok("m-1".into())
        );
        assert!(matches!(
            Order::default().decode("%%%"),
            Err(CursorError::Malformed(_))
        ));
    }
}
