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
                .is_some_and(|f| !f.eval(&change.instance.fields))
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
                fields: self.project(product, rule, fields),
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
