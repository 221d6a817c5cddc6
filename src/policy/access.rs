//! What one role may do with one product, and how it sees it: the
//! [`View`] every API path goes through (lookups, connections, history,
//! audit, subscriptions, catalog, quarantine, mutations, HTTP push), so
//! there is no way to data that skips it.
//!
//! A role's rights on a product come from the product's `access:` rules.
//! Two roles are built in, for products that do not name them:
//!
//! - [`ADMIN`]: every right, nothing masked or filtered — the operator's
//!   role. A product that defines an `admin` rule gets that rule instead,
//!   so a domain owner can still narrow it.
//! - [`READER`]: read and subscribe, with every field classified
//!   `pii`, `confidential` or `restricted` masked (strings redacted, other
//!   types removed) — what anonymous callers get on the embedded default
//!   config, so a node started with no config shows its data without
//!   showing anyone's personal data. The entity key is never masked by it.
//!
//! Row filters are evaluated on the clear record (they are the domain
//! owner's rule); masks apply after, and everything a caller may filter or
//! order by is computed from the masked record only.
//!
//! Known limit: on a product whose *key* field is masked (`hash`), lookups
//! still take the clear key, and connection cursors carry the store's
//! entity key (base64, not encrypted). No shipped example masks its key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;

use super::masking::{MaskSecret, Masker};
use crate::expr::RowMeta;
use crate::product::{Classification, FieldType, Mask, Product, RowFilter};
use crate::record::{Fields, Value};
use crate::store::Instance;

/// The built-in operator role.
pub const ADMIN: &str = "admin";
/// The built-in read-only role with personal data masked.
pub const READER: &str = "reader";
/// The built-in role of edge nodes pushing sync envelopes to an
/// aggregator (`POST /sync/v1`): no right on any product's API, so a
/// gateway's upstream token cannot read what the aggregator holds.
pub const EDGE: &str = "edge";

/// Whether `role` may push sync envelopes: `edge`, or the operator's
/// `admin`. Anonymous callers never may unless the operator made the
/// anonymous role one of these.
pub fn may_push_sync(role: &str) -> bool {
    role == EDGE || role == ADMIN
}

/// One role's rights on one product, with its row filter and masks.
#[derive(Clone, Debug)]
pub struct View {
    pub role: String,
    pub product: String,
    pub read: bool,
    pub subscribe: bool,
    pub write: bool,
    pub erase: bool,
    row_filter: Option<RowFilter>,
    masks: IndexMap<String, Mask>,
    key_field: String,
    secret: MaskSecret,
}

/// An instance's bookkeeping as row filters read it (`_meta.lastSeen`…).
pub fn row_meta(instance: &Instance) -> RowMeta {
    RowMeta {
        version: instance.version,
        first_seen: instance.first_seen,
        last_seen: instance.last_seen,
        event_time: instance.event_time,
    }
}

impl View {
    /// The view of `role` on `product`.
    pub fn of(role: &str, product: &Product, secret: &MaskSecret) -> View {
        let mut view = View {
            role: role.to_string(),
            product: product.name.clone(),
            read: false,
            subscribe: false,
            write: false,
            erase: false,
            row_filter: None,
            masks: IndexMap::new(),
            key_field: product.key.clone(),
            secret: secret.clone(),
        };
        if let Some(rule) = product.access.get(role) {
            view.read = rule.read;
            view.subscribe = rule.read && rule.subscribe;
            view.write = rule.write;
            view.erase = rule.erase;
            view.row_filter = rule.row_filter.clone();
            view.masks = rule.masks.clone();
        } else if role == ADMIN {
            (view.read, view.subscribe, view.write, view.erase) = (true, true, true, true);
        } else if role == READER {
            (view.read, view.subscribe) = (true, true);
            view.masks = reader_masks(product);
        }
        view
    }

    /// Any right at all: the product is listed in the catalog.
    pub fn any_right(&self) -> bool {
        self.read || self.write || self.erase
    }

    /// Reads the product exactly as stored: no row filter, no mask. Only
    /// such a role may see raw quarantined payloads, which hold clear
    /// values of every field.
    pub fn reads_clear(&self) -> bool {
        self.read && self.row_filter.is_none() && self.masks.is_empty()
    }

    /// Raw quarantined payloads hold clear values of every field: only a
    /// role that reads the product unmasked and unfiltered, or `admin`,
    /// may see them (or replay them, which writes them).
    pub fn may_see_quarantine(&self) -> bool {
        self.reads_clear() || (self.role == ADMIN && self.read)
    }

    /// Whether clear fields with no instance at hand pass the row filter
    /// (`_meta.*` reads as null).
    pub fn shows(&self, fields: &Fields) -> bool {
        self.read && self.row_filter.as_ref().is_none_or(|f| f.eval(fields))
    }

    /// Whether an instance (its clear fields and its `_meta`) passes the
    /// row filter, `now()` being this moment.
    pub fn shows_instance(&self, instance: &Instance) -> bool {
        self.read
            && self
                .row_filter
                .as_ref()
                .is_none_or(|f| f.eval_row(&instance.fields, &row_meta(instance)))
    }

    /// The masks of this view, ready to apply.
    pub fn masker(&self) -> Masker<'_> {
        Masker::new(&self.masks, &self.key_field, &self.secret)
    }

    /// Masks a field map in place.
    pub fn mask_fields(&self, fields: &mut Fields) {
        self.masker().apply_fields(fields);
    }

    /// Whether any field is masked for this view (else fields are shown
    /// as stored and need no copy).
    pub fn masks_fields(&self) -> bool {
        !self.masks.is_empty()
    }

    /// Whether a row filter limits which instances this view shows.
    pub fn filters_rows(&self) -> bool {
        self.row_filter.is_some()
    }

    /// One field's value as this view shows it: `None` when the field is
    /// not masked (shown as stored), `Some(None)` when the mask removes
    /// it. The same as [`View::mask_fields`] on a map holding only it.
    pub fn mask_one(&self, name: &str, value: &Value) -> Option<Option<Value>> {
        self.masks
            .get(name)
            .map(|mask| super::masking::mask_value(mask, value, &self.secret))
    }

    /// The entity key as this view shows it.
    pub fn entity_key(&self, entity: &str) -> String {
        self.masker().entity_key(entity)
    }

    /// Whether the key field is masked (then keys given as arguments are
    /// pseudonyms, not store keys).
    pub fn masks_key(&self) -> bool {
        self.masks.contains_key(&self.key_field)
    }
}

/// Whether some role sees `field` of `product` through a mask that
/// replaces its value with another text (redact, hash, partial): the
/// GraphQL schema then cannot type it by its declared `enum:` values.
/// A `null` mask keeps every value that is shown one of them.
pub fn rewritten_by_a_mask(product: &Product, field: &str) -> bool {
    let rewrites = |mask: &Mask| !matches!(mask, Mask::Null);
    let by_rule = product
        .access
        .values()
        .any(|rule| rule.masks.get(field).is_some_and(rewrites));
    let by_reader = !product.access.contains_key(READER)
        && reader_masks(product).get(field).is_some_and(rewrites);
    by_rule || by_reader
}

fn reader_masks(product: &Product) -> IndexMap<String, Mask> {
    product
        .fields
        .values()
        .filter(|f| f.name != product.key)
        .filter(|f| {
            matches!(
                f.classification,
                Classification::Pii | Classification::Confidential | Classification::Restricted
            )
        })
        .map(|f| {
            let mask = match f.ty {
                FieldType::String => Mask::Redact,
                _ => Mask::Null,
            };
            (f.name.clone(), mask)
        })
        .collect()
}

/// How the caller proved who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An API token (its public id).
    Token { id: String },
    /// A verified client certificate.
    Certificate { fingerprint_sha256: String },
    /// Nothing: the configured anonymous role.
    Anonymous,
}

/// Who is calling, as authentication established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The audit's "who": a token's name, a certificate's CN, or
    /// `anonymous` — never the token itself.
    pub name: String,
    pub role: String,
    pub credential: Credential,
}

impl Identity {
    pub fn anonymous(role: &str) -> Identity {
        Identity {
            name: "anonymous".to_string(),
            role: role.to_string(),
            credential: Credential::Anonymous,
        }
    }
}

/// One request's caller, with the views it built so far: each (role,
/// product) view is built once per request and shared by every resolver
/// of that request.
pub struct Caller {
    pub identity: Identity,
    secret: MaskSecret,
    views: Mutex<HashMap<String, Arc<View>>>,
    denials: Arc<AtomicU64>,
    still_valid: Option<StillValid>,
}

/// Whether the credential a caller authenticated with still holds (a
/// token not revoked since): long-lived subscriptions ask it again.
pub type StillValid = Arc<dyn Fn() -> bool + Send + Sync>;

impl Caller {
    /// `denials` counts refused actions (`meshlet_access_denied_total`).
    pub fn new(identity: Identity, secret: MaskSecret, denials: Arc<AtomicU64>) -> Caller {
        Caller {
            identity,
            secret,
            views: Mutex::new(HashMap::new()),
            denials,
            still_valid: None,
        }
    }

    /// The same caller, with a way to re-check its credential.
    pub fn revalidated_by(mut self, still_valid: StillValid) -> Caller {
        self.still_valid = Some(still_valid);
        self
    }

    /// How to re-check the caller's credential, if it can be revoked.
    pub fn still_valid(&self) -> Option<StillValid> {
        self.still_valid.clone()
    }

    /// Counts one action refused for lack of a right.
    pub fn denied(&self) {
        self.denials.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(role = %self.identity.role, who = %self.identity.name, "access denied");
    }

    /// The caller's view of `product`.
    pub fn view(&self, product: &Product) -> Arc<View> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .entry(product.name.clone())
            .or_insert_with(|| Arc::new(View::of(&self.identity.role, product, &self.secret)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::{load_path, LoadContext};
    use crate::record::Value;

    fn products() -> crate::product::ProductSet {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/examples");
        load_path(
            &root,
            &LoadContext::with_upstreams(["central".to_string()].into()),
        )
        .expect("examples load")
    }

    fn secret() -> MaskSecret {
        MaskSecret::from_bytes(&[7; 32]).unwrap()
    }

    #[test]
    fn rules_builtins_and_strangers() {
        let set = products();
        let machine = set.get("machine_health").unwrap();
        let asset = set.get("customer_asset").unwrap();
        let analyst = View::of("analyst", machine, &secret());
        assert!(analyst.read && !analyst.subscribe && !analyst.write && !analyst.reads_clear());
        let admin = View::of(ADMIN, asset, &secret());
        assert!(admin.read && admin.write && admin.erase && admin.reads_clear());
        let stranger = View::of("nobody", asset, &secret());
        assert!(!stranger.any_right() && !stranger.shows(&Fields::new()));
        let reader = View::of(READER, asset, &secret());
        assert!(reader.read && reader.subscribe && !reader.write && !reader.reads_clear());
        let mut fields = Fields::new();
        fields.insert("email".into(), Value::String("alice@example.com".into()));
        fields.insert("asset_id".into(), Value::String("A-1".into()));
        reader.mask_fields(&mut fields);
        assert_eq!(
            fields.get("email"),
            Some(&Value::String(super::super::masking::REDACTED.into()))
        );
        assert_eq!(fields.get("asset_id"), Some(&Value::String("A-1".into())));
    }

    #[test]
    fn row_filters_see_clear_values() {
        let set = products();
        let machine = set.get("machine_health").unwrap();
        let analyst = View::of("analyst", machine, &secret());
        let mut fields = Fields::new();
        fields.insert("site".into(), Value::String("berlin".into()));
        assert!(analyst.shows(&fields));
        fields.insert("site".into(), Value::String("paris".into()));
        assert!(!analyst.shows(&fields));
    }
}
