//! Sync rules applied to state changes: which outbox items a change
//! produces. Pure (no I/O): runs inside the store's write transaction.
//!
//! Per rule: the `where` filter is evaluated on the instance *after* the
//! change (what the upstream would hold); mode `latest` sends the projected
//! state and coalesces per entity, mode `history` sends the record as
//! received (projected) and never coalesces at write time. Masks are
//! applied here, so the clear value of a masked field never enters the
//! outbox. A late record that changed nothing in the state produces
//! nothing in mode `latest`.

use std::sync::Arc;

use crate::policy::access::row_meta;
use crate::policy::masking::{MaskSecret, Masker};
use crate::product::{Priority, Product, ProductSet, SyncMode, SyncRule};
use crate::record::{Fields, Record, Timestamp};
use crate::store::{Change, OutboxItem, OutboxPlanner};

/// The [`OutboxPlanner`] built from the loaded products' sync rules.
pub struct RulePlanner {
    products: Arc<ProductSet>,
    secret: MaskSecret,
}

/// The outbox priority of a rule (higher is sent first, dropped last).
pub fn priority_rank(priority: Priority) -> u8 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

impl RulePlanner {
    pub fn new(products: Arc<ProductSet>, secret: MaskSecret) -> RulePlanner {
        RulePlanner { products, secret }
    }

    fn project(&self, product: &Product, rule: &SyncRule, fields: &Fields) -> Fields {
        let mut out: Fields = match &rule.fields {
            Some(names) => names
                .iter()
                .filter_map(|n| fields.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
            None => fields.clone(),
        };
        Masker::new(&rule.masks, &product.key, &self.secret).apply_fields(&mut out);
        out
    }

    fn sent_entity(&self, product: &Product, rule: &SyncRule, entity: &str) -> String {
        Masker::new(&rule.masks, &product.key, &self.secret).entity_key(entity)
    }
}

/// A `latest` item is the entity's whole state: every field the rule
/// sends that the state lacks goes as `null`, so the upstream's merge
/// (absent keeps, `null` clears) ends with exactly this state — a field
/// cleared here is cleared there, also when the clearing record was
/// coalesced into a later state, and when `sync verify` resends it. The
/// sent digest leaves the nulls out: it is the state the upstream holds.
fn cleared_as_null(product: &Product, rule: &SyncRule, state: &Fields, out: &mut Fields) {
    let names: Box<dyn Iterator<Item = &String>> = match &rule.fields {
        Some(names) => Box::new(names.iter()),
        None => Box::new(product.fields.keys()),
    };
    for name in names {
        if !state.contains_key(name) && !out.contains_key(name) {
            out.insert(name.clone(), crate::record::Value::Null);
        }
    }
}

impl OutboxPlanner for RulePlanner {
    fn on_change(&self, product: &str, record: &Record, change: &Change) -> Vec<OutboxItem> {
        let Some(product) = self.products.get(product) else {
            return Vec::new();
        };
        let mut items = Vec::new();
        for rule in &product.sync {
            if rule
                .row_filter
                .as_ref()
                .is_some_and(|f| !f.eval_row(&change.instance.fields, &row_meta(&change.instance)))
            {
                continue;
            }
            let (fields, event_time) = match rule.mode {
                SyncMode::Latest => {
                    if !change.applied_to_state {
                        continue;
                    }
                    (&change.instance.fields, change.instance.event_time)
                }
                SyncMode::History => (&record.fields, record.event_time),
            };
            let mut fields = self.project(product, rule, fields);
            if rule.mode == SyncMode::Latest {
                cleared_as_null(product, rule, &change.instance.fields, &mut fields);
            }
            let hold = rule.when.min_interval.map_or(Timestamp::MIN, |i| {
                change.instance.last_seen.saturating_add(i)
            });
            items.push(OutboxItem {
                upstream: rule.to.clone(),
                priority: priority_rank(rule.priority),
                product: product.name.clone(),
                definition_version: product.version,
                entity: change.entity.clone(),
                sent_entity: self.sent_entity(product, rule, &change.entity),
                event_time,
                fields,
                tombstone: false,
                coalesce: rule.mode == SyncMode::Latest,
                hold_until: hold,
            });
        }
        items
    }

    fn on_erase(&self, product: &str, entity: &str, at: Timestamp) -> Vec<OutboxItem> {
        let Some(product) = self.products.get(product) else {
            return Vec::new();
        };
        let mut items: Vec<OutboxItem> = Vec::new();
        for rule in &product.sync {
            if items.iter().any(|i| i.upstream == rule.to) {
                continue;
            }
            items.push(OutboxItem {
                upstream: rule.to.clone(),
                priority: priority_rank(rule.priority),
                product: product.name.clone(),
                definition_version: product.version,
                entity: entity.to_string(),
                sent_entity: self.sent_entity(product, rule, entity),
                event_time: at,
                fields: Fields::new(),
                tombstone: true,
                coalesce: false,
                hold_until: Timestamp::MIN,
            });
        }
        items
    }
}

#[cfg(test)]
mod tests {
    //! The planner and the store's outbox together, on a real sled store.
    use super::*;
    use crate::product::{load_path, LoadContext};
    use crate::record::{Origin, Value};
    use crate::store::{Store, StoreConfig};

    const PRODUCTS: &str = r#"
product: machine
version: 3
domain: test
owner: t@example.com
key: id
fields:
  id:       { type: string, required: true }
  site:     { type: string }
  temp:     { type: float }
  operator: { type: string }
sync:
  - to: central
    fields: [site, temp, operator]
    where: "site != 'hidden'"
    mask: { operator: redact }
  - to: archive
    mode: history
    priority: high
  - to: slow
    when: { min_interval: 1h }
"#;

    fn open(dir: &std::path::Path) -> (Store, Arc<ProductSet>) {
        std::fs::write(dir.join("machine.yaml"), PRODUCTS).expect("write");
        let ctx =
            LoadContext::with_upstreams(["central", "archive", "slow"].map(String::from).into());
        let products = Arc::new(load_path(&dir.join("machine.yaml"), &ctx).expect("loads"));
        let store = Store::open(StoreConfig::new(dir.join("store"))).expect("opens");
        let secret = crate::policy::masking::MaskSecret::of_store(&store).expect("secret");
        store.set_outbox_planner(Arc::new(RulePlanner::new(products.clone(), secret)));
        (store, products)
    }

    fn record(id: &str, fields: &[(&str, Value)]) -> Record {
        Record {
            entity: id.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .chain([("id".to_string(), Value::String(id.to_string()))])
                .collect(),
            event_time: Timestamp::now(),
            origin: Origin::new("test"),
        }
    }

    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }

    #[test]
    fn rules_filter_project_mask_and_coalesce_in_the_write_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        store
            .upsert(
                "machine",
                &[
                    record(
                        "m1",
                        &[
                            ("site", s("berlin")),
                            ("temp", Value::Float(1.0)),
                            ("operator", s("alice")),
                        ],
                    ),
                    record("m2", &[("site", s("hidden"))]),
                    record("m1", &[("temp", Value::Float(2.0))]),
                ],
            )
            .expect("upsert");
        let now = Timestamp::now();
        let central = store.outbox_read("central", 100, now).expect("read");
        assert_eq!(
            central.len(),
            1,
            "m2 filtered, m1 coalesced to its latest state"
        );
        let item = &central[0].entry.item;
        assert_eq!(item.entity, "m1");
        assert_eq!(item.definition_version, 3);
        assert_eq!(item.fields.get("temp"), Some(&Value::Float(2.0)));
        assert_eq!(
            item.fields.get("id"),
            Some(&s("m1")),
            "the key is always sent"
        );
        assert_ne!(
            item.fields.get("operator"),
            Some(&s("alice")),
            "masked before it is stored"
        );
        let archive = store.outbox_read("archive", 100, now).expect("read");
        assert_eq!(archive.len(), 3, "history mode keeps every event");
        assert!(archive.windows(2).all(|w| w[0].entry.seq < w[1].entry.seq));
        let stats = store.outbox_stats("archive").expect("stats");
        assert_eq!(stats.pending, 3);
        assert!(stats.oldest.is_some());

        // Acknowledged entries go; the tally follows.
        let keys: Vec<Vec<u8>> = archive.iter().take(2).map(|e| e.key.clone()).collect();
        store.outbox_ack(&keys).expect("ack");
        assert_eq!(store.outbox_stats("archive").expect("stats").pending, 1);
    }

    #[test]
    fn min_interval_holds_an_entity_and_sends_only_its_latest_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        for t in 0..5 {
            store
                .upsert(
                    "machine",
                    &[record("m1", &[("temp", Value::Float(f64::from(t)))])],
                )
                .expect("upsert");
        }
        let now = Timestamp::now();
        assert!(
            store
                .outbox_read("slow", 100, now)
                .expect("read")
                .is_empty(),
            "held for min_interval"
        );
        let later = now.saturating_add(std::time::Duration::from_secs(2 * 3600));
        let due = store.outbox_read("slow", 100, later).expect("read");
        assert_eq!(due.len(), 1, "coalesced to one entry");
        assert_eq!(
            due[0].entry.item.fields.get("temp"),
            Some(&Value::Float(4.0))
        );
    }

    #[test]
    fn sequence_numbers_ascend_across_a_reopen_and_the_tally_is_recounted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = {
            let (store, _) = open(dir.path());
            store
                .upsert("machine", &[record("a", &[("site", s("x"))])])
                .expect("upsert");
            let read = store
                .outbox_read("archive", 10, Timestamp::now())
                .expect("read");
            read.last().map(|e| e.entry.seq).expect("one entry")
        };
        let (store, _) = open(dir.path());
        assert_eq!(store.outbox_stats("archive").expect("stats").pending, 1);
        store
            .upsert("machine", &[record("b", &[("site", s("x"))])])
            .expect("upsert");
        let read = store
            .outbox_read("archive", 10, Timestamp::now())
            .expect("read");
        assert!(read.last().map(|e| e.entry.seq).expect("entries") > last);
    }

    #[test]
    fn erasure_removes_pending_entries_and_queues_one_tombstone_per_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        store
            .upsert(
                "machine",
                &[
                    record("m1", &[("site", s("a"))]),
                    record("m1", &[("site", s("b"))]),
                    record("m9", &[("site", s("c"))]),
                ],
            )
            .expect("upsert");
        assert!(store
            .erase("machine", "m1", &Origin::new("test"))
            .expect("erase"));
        let now = Timestamp::now();
        for upstream in ["central", "archive"] {
            let left = store.outbox_read(upstream, 100, now).expect("read");
            let m1: Vec<_> = left
                .iter()
                .filter(|e| e.entry.item.entity == "m1")
                .collect();
            assert_eq!(m1.len(), 1, "{upstream}: only the tombstone of m1 is left");
            assert!(m1[0].entry.item.tombstone);
            assert!(
                m1[0].entry.item.fields.is_empty(),
                "a tombstone carries no values"
            );
            assert!(
                left.iter().any(|e| e.entry.item.entity == "m9"),
                "{upstream}: others stay"
            );
        }
    }

    #[test]
    fn budget_coalesces_history_first_and_never_drops_tombstones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        for i in 0..20 {
            store
                .upsert(
                    "machine",
                    &[record(
                        &format!("e{}", i % 4),
                        &[("temp", Value::Float(f64::from(i)))],
                    )],
                )
                .expect("upsert");
        }
        store
            .erase("machine", "e0", &Origin::new("test"))
            .expect("erase");
        let report = store.outbox_enforce_budget("archive", 1).expect("enforce");
        assert_eq!(
            report.coalesced, 12,
            "e1..e3 keep their newest; e0's went with its erasure"
        );
        assert_eq!(
            report.dropped.values().sum::<u64>(),
            3,
            "then the rest but the tombstone"
        );
        let left = store
            .outbox_read("archive", 100, Timestamp::now())
            .expect("read");
        assert_eq!(left.len(), 1);
        assert!(left[0].entry.item.tombstone);
    }
}
