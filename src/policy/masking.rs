//! Applying field masks to records: the one place a clear value becomes the
//! value a role (or an upstream) is allowed to see.
//!
//! The API and sync both call [`Masker::apply`] on every record they hand
//! out, so a mask means the same thing on every path data leaves by. The
//! mask kinds and where they apply are defined (and checked at load) in
//! [`crate::product::mask`]; this module only evaluates them.
//!
//! `hash` is a keyed pseudonym: HMAC-SHA-256 under a node secret, truncated
//! to 128 bits and written as 32 hex characters. Keyed, because a plain hash
//! of a low-entropy value (a phone number, an e-mail address) is reversed by
//! hashing every candidate; stable, because the same value under the same
//! secret always gives the same pseudonym, so joins, counts and group-bys on
//! a hashed field still work — across products, and across a fleet whose
//! nodes share the secret. The field name is deliberately *not* part of the
//! input, so a customer id hashed in two products still joins.

use std::fmt;

use indexmap::IndexMap;
use ring::hmac;

use crate::product::Mask;
use crate::record::{Fields, Record, Value};
use crate::store::{Store, StoreError};

/// What `redact` leaves in place of a string.
pub const REDACTED: &str = "[redacted]";
/// What `partial` writes for each hidden character.
pub const PARTIAL_FILL: char = '*';
/// Bytes of a mask secret.
pub const SECRET_LEN: usize = 32;

/// The node secret `hash` masks are keyed with.
#[derive(Clone)]
pub struct MaskSecret {
    key: hmac::Key,
}

impl fmt::Debug for MaskSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskSecret(..)")
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum MaskSecretError {
    #[error("a mask secret must be at least {SECRET_LEN} bytes, found {0}")]
    TooShort(usize),
    #[error("cannot draw random bytes for a mask secret")]
    Random,
}

impl MaskSecret {
    /// A secret from stored bytes (at least [`SECRET_LEN`] of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<MaskSecret, MaskSecretError> {
        if bytes.len() < SECRET_LEN {
            return Err(MaskSecretError::TooShort(bytes.len()));
        }
        Ok(MaskSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// The node's secret, kept with its data in `store` (created on first
    /// use): pseudonyms stay stable as long as the data does.
    pub fn of_store(store: &Store) -> Result<MaskSecret, StoreError> {
        let bytes = store.mask_secret_bytes(|| {
            MaskSecret::generate()
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        })?;
        MaskSecret::from_bytes(&bytes).map_err(|e| StoreError::Meta {
            path: store.config().path.clone(),
            detail: format!("mask secret: {e}"),
        })
    }

    /// Fresh random secret bytes, to be stored and passed to
    /// [`MaskSecret::from_bytes`].
    pub fn generate() -> Result<[u8; SECRET_LEN], MaskSecretError> {
        let mut bytes = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| MaskSecretError::Random)?;
        Ok(bytes)
    }

    /// The pseudonym of `text`: 32 lowercase hex characters.
    pub fn pseudonym(&self, text: &str) -> String {
        let tag = hmac::sign(&self.key, text.as_bytes());
        let mut out = String::with_capacity(32);
        for byte in &tag.as_ref()[..16] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

/// A set of masks bound to a secret, ready to apply to records.
#[derive(Clone, Debug)]
pub struct Masker<'a> {
    masks: &'a IndexMap<String, Mask>,
    key_field: &'a str,
    secret: &'a MaskSecret,
}

impl<'a> Masker<'a> {
    pub fn new(
        masks: &'a IndexMap<String, Mask>,
        key_field: &'a str,
        secret: &'a MaskSecret,
    ) -> Masker<'a> {
        Masker {
            masks,
            key_field,
            secret,
        }
    }

    /// Whether applying this masker changes anything at all.
    pub fn is_identity(&self) -> bool {
        self.masks.is_empty()
    }

    /// Whether `field` is masked (so filtering or ordering on it must see
    /// only the masked value).
    pub fn masks_field(&self, field: &str) -> bool {
        self.masks.contains_key(field)
    }

    /// The mask on `field`, if any.
    pub fn mask_of(&self, field: &str) -> Option<&Mask> {
        self.masks.get(field)
    }

    /// The record as this masker lets it be seen. The entity key is
    /// pseudonymised too when the key field is hashed.
    pub fn apply(&self, record: &Record) -> Record {
        let mut out = record.clone();
        if self.is_identity() {
            return out;
        }
        self.apply_fields(&mut out.fields);
        if let Some(mask) = self.masks.get(self.key_field) {
            out.entity = self.entity(&record.entity, mask);
        }
        out
    }

    /// Masks a field map in place.
    pub fn apply_fields(&self, fields: &mut Fields) {
        for (name, mask) in self.masks {
            let Some(value) = fields.get(name) else {
                continue;
            };
            match mask_value(mask, value, self.secret) {
                Some(masked) => {
                    fields.insert(name.clone(), masked);
                }
                None => {
                    fields.remove(name);
                }
            }
        }
    }

    /// The entity key as seen through the masks.
    pub fn entity_key(&self, entity: &str) -> String {
        match self.masks.get(self.key_field) {
            Some(mask) => self.entity(entity, mask),
            None => entity.to_string(),
        }
    }

    fn entity(&self, entity: &str, mask: &Mask) -> String {
        // Definitions only allow `hash` on the key; any other mask on it is
        // refused at load, so this is the only case that can arrive here.
        match mask {
            Mask::Hash => self.secret.pseudonym(entity),
            _ => entity.to_string(),
        }
    }
}

/// One value through one mask; `None` means the field is removed.
///
/// A mask that does not apply to the value's type (which a loaded definition
/// rules out) hides the value rather than letting it through.
pub fn mask_value(mask: &Mask, value: &Value, secret: &MaskSecret) -> Option<Value> {
    if matches!(value, Value::Null) {
        return Some(Value::Null);
    }
    match (mask, value) {
        // (patterns bind by reference: `value` is `&Value`)
        (Mask::Null, _) => None,
        (Mask::Redact, Value::String(_)) => Some(Value::String(REDACTED.to_string())),
        (Mask::Hash, Value::String(text)) => Some(Value::String(secret.pseudonym(text))),
        (Mask::Partial { keep_last }, Value::String(text)) => {
            Some(Value::String(partial(text, *keep_last)))
        }
        (Mask::Round { step }, Value::Float(x)) => Some(Value::Float(round_to(*x, *step))),
        (Mask::Round { step }, Value::Int(n)) => Some(Value::Int(round_int(*n, *step))),
        _ => None,
    }
}

/// Keeps the last `keep_last` characters, hiding the rest; a string no
/// longer than that is hidden whole (else `partial: 4` on a 4-digit PIN
/// would show it all).
fn partial(text: &str, keep_last: usize) -> String {
    let count = text.chars().count();
    if count <= keep_last {
        return std::iter::repeat_n(PARTIAL_FILL, count).collect();
    }
    let hidden = count - keep_last;
    text.chars()
        .enumerate()
        .map(|(i, c)| if i < hidden { PARTIAL_FILL } else { c })
        .collect()
}

fn round_to(x: f64, step: f64) -> f64 {
    if step.is_nan() || step <= 0.0 || !x.is_finite() {
        return x;
    }
    let rounded = (x / step).round() * step;
    // Trim float noise such as 20.500000000000004 from the multiplication.
    let decimals = decimals_of(step);
    let scale = 10f64.powi(decimals);
    (rounded * scale).round() / scale
}

fn decimals_of(step: f64) -> i32 {
    let mut decimals = 0;
    let mut s = step;
    while decimals < 12 && (s - s.round()).abs() > 1e-9 {
        s *= 10.0;
        decimals += 1;
    }
    decimals
}

fn round_int(n: i64, step: f64) -> i64 {
    let step = step.round();
    if step.is_nan() || step < 1.0 || step > i64::MAX as f64 {
        return n;
    }
    let step = step as i64;
    let down = n.div_euclid(step) * step;
    let rest = n - down;
    if rest * 2 >= step {
        down.saturating_add(step)
    } else {
        down
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Origin, Timestamp};

    fn secret(byte: u8) -> MaskSecret {
        MaskSecret::from_bytes(&[byte; SECRET_LEN]).unwrap()
    }

    #[test]
    fn hash_is_stable_keyed_and_not_the_clear_value() {
        let a = secret(1);
        let b = secret(2);
        let h = a.pseudonym("alice@example.com");
        assert_eq!(h, a.pseudonym("alice@example.com"));
        assert_ne!(h, a.pseudonym("bob@example.com"));
        assert_ne!(h, b.pseudonym("alice@example.com"));
        assert_eq!(h.len(), 32);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!h.contains("alice"));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            MaskSecret::from_bytes(&[0; 8]),
            Err(MaskSecretError::TooShort(8))
        ));
        let bytes = MaskSecret::generate().unwrap();
        assert_ne!(bytes, MaskSecret::generate().unwrap());
        assert!(MaskSecret::from_bytes(&bytes).is_ok());
    }

    #[test]
    fn each_mask_on_its_types() {
        let s = secret(7);
        let text = |t: &str| Value::String(t.into());
        assert_eq!(
            mask_value(&Mask::Redact, &text("secret"), &s),
            Some(text(REDACTED))
        );
        assert_eq!(
            mask_value(&Mask::Partial { keep_last: 4 }, &text("+4915112345678"), &s),
            Some(text("**********5678"))
        );
        assert_eq!(
            mask_value(&Mask::Partial { keep_last: 4 }, &text("1234"), &s),
            Some(text("****"))
        );
        assert_eq!(
            mask_value(&Mask::Partial { keep_last: 2 }, &text("größe"), &s),
            Some(text("***ße"))
        );
        assert_eq!(
            mask_value(&Mask::Round { step: 0.5 }, &Value::Float(21.3), &s),
            Some(Value::Float(21.5))
        );
        assert_eq!(
            mask_value(&Mask::Round { step: 0.1 }, &Value::Float(20.4567), &s),
            Some(Value::Float(20.5))
        );
        assert_eq!(
            mask_value(&Mask::Round { step: 10.0 }, &Value::Int(1234), &s),
            Some(Value::Int(1230))
        );
        assert_eq!(
            mask_value(&Mask::Round { step: 10.0 }, &Value::Int(-15), &s),
            Some(Value::Int(-10))
        );
        assert_eq!(
            mask_value(&Mask::Round { step: 10.0 }, &Value::Int(i64::MAX), &s),
            Some(Value::Int(i64::MAX))
        );
        assert_eq!(mask_value(&Mask::Null, &Value::Int(3), &s), None);
        assert_eq!(mask_value(&Mask::Hash, &Value::Null, &s), Some(Value::Null));
        // A type the mask does not apply to is hidden, never passed through.
        assert_eq!(mask_value(&Mask::Redact, &Value::Int(3), &s), None);
    }

    #[test]
    fn a_record_with_a_hashed_key_gets_a_pseudonymous_entity() {
        let s = secret(3);
        let mut masks = IndexMap::new();
        masks.insert("customer_id".to_string(), Mask::Hash);
        masks.insert("email".to_string(), Mask::Redact);
        masks.insert("phone".to_string(), Mask::Null);
        let masker = Masker::new(&masks, "customer_id", &s);
        let mut fields = Fields::new();
        fields.insert("customer_id".into(), Value::String("c-1".into()));
        fields.insert("email".into(), Value::String("a@b.c".into()));
        fields.insert("phone".into(), Value::String("123".into()));
        fields.insert("city".into(), Value::String("Ulm".into()));
        let record = Record {
            entity: "c-1".into(),
            fields,
            event_time: Timestamp(1),
            origin: Origin::new("test"),
        };
        let seen = masker.apply(&record);
        assert_eq!(seen.entity, s.pseudonym("c-1"));
        assert_eq!(
            seen.fields.get("customer_id"),
            Some(&Value::String(s.pseudonym("c-1")))
        );
        assert_eq!(
            seen.fields.get("email"),
            Some(&Value::String(REDACTED.into()))
        );
        assert_eq!(seen.fields.get("phone"), None);
        assert_eq!(seen.fields.get("city"), Some(&Value::String("Ulm".into())));
        assert_eq!(masker.entity_key("c-1"), seen.entity);
    }
}
