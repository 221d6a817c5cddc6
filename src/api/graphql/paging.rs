//! The Relay connection algorithm over a product's instances: filter,
//! order, `first/after/last/before`, all on top of the store's key-ordered
//! scan. Blocking (it reads sled): callers run it on the blocking pool.
//!
//! # Cost
//!
//! - Key order, forward (`first`/`after`): a range scan from the cursor
//!   that stops as soon as `first + 1` matches are found, so a page costs
//!   what it skips over (everything, for a filter nothing matches).
//! - Key order, backward (`last`/`before`): a scan from `after` (or the
//!   start) up to `before`, keeping the last `last + 1` matches.
//! - Any other `orderBy`: a scan of the whole product, keeping only the
//!   best `first + 1` (or `last + 1`) matches in a heap: memory stays
//!   O(page), time O(instances · log page).
//! - `totalCount`: without a filter, the product's key count (no value is
//!   decoded); with one, a scan of the whole product.
//!
//! Every scan gives up after [`SCAN_BUDGET`] instances with an error that
//! says so, so no single request can keep a small gateway busy for long.
//!
//! `hasPreviousPage` is computed for backward paging (`last`) and
//! `hasNextPage` for forward paging (`first`); the other is `false`, as
//! the Relay specification allows when it cannot be known cheaply.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::filter::Filter;
use super::order::{Order, SortKey};
use crate::policy::access::View;
use crate::store::{Instance, Page, Store, StoreError};

/// Instances one request may visit, per connection or count.
pub(crate) const SCAN_BUDGET: usize = 1_000_000;

/// Instances read from the store per scan call.
const SCAN_PAGE: usize = 512;

/// The key-ordered scan paging reads (the store, or a fake in tests).
pub(crate) trait Scan {
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError>;
}

/// One product of a store, as a role sees it: instances its row filter
/// hides are skipped and the rest are masked *before* the request's
/// filter, order and paging see them — so `totalCount` counts only
/// visible instances, and filtering or ordering on a masked field works on
/// the masked value, never the clear one.
pub(crate) struct ProductScan<'a> {
    pub store: &'a Store,
    pub product: &'a str,
    pub view: &'a View,
}

impl Scan for ProductScan<'_> {
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let mut page = self.store.scan(self.product, after, limit)?;
        page.instances = page
            .instances
            .into_iter()
            .filter_map(|instance| see(self.view, instance))
            .collect();
        Ok(page)
    }
}

/// An instance as `view` lets it be seen, or `None` when its row filter
/// hides it. The entity key stays the store's (history and audit look it
/// up); a masked key field shows only the masked value.
pub(crate) fn see(view: &View, mut instance: Instance) -> Option<Instance> {
    if !view.shows_instance(&instance) {
        return None;
    }
    view.mask_fields(&mut instance.fields);
    Some(instance)
}

/// A page request with cursors already decoded.
#[derive(Debug, Default)]
pub(crate) struct PageArgs {
    pub first: Option<usize>,
    pub last: Option<usize>,
    pub after: Option<SortKey>,
    pub before: Option<SortKey>,
}

/// One page: instances with their sort keys, in order.
#[derive(Debug, Default)]
pub(crate) struct PageOut {
    pub items: Vec<(SortKey, Instance)>,
    pub has_next: bool,
    pub has_previous: bool,
}

/// Why a page could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PagingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this request would visit more than {0} instances; use a narrower filter, order by the key, or page with smaller steps")]
    Budget(usize),
}

/// Walks every instance in key order from `after`, calling `visit` until it
/// returns false. Counts against `budget`.
fn walk(
    source: &impl Scan,
    after: Option<&str>,
    budget: usize,
    mut visit: impl FnMut(Instance) -> bool,
) -> Result<(), PagingError> {
    let mut cursor = after.map(str::to_string);
    let mut visited = 0usize;
    loop {
        let page = source.scan(cursor.as_deref(), SCAN_PAGE)?;
        visited += page.instances.len() + page.errors.len();
        if visited > budget {
            return Err(PagingError::Budget(budget));
        }
        for instance in page.instances {
            if !visit(instance) {
                return Ok(());
            }
        }
        match page.next_after {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Keeps the items a `first`/`last` window needs while they stream by in
/// order.
struct Window {
    first: Option<usize>,
    last: Option<usize>,
    items: VecDeque<(SortKey, Instance)>,
    dropped_front: bool,
}

impl Window {
    fn new(args: &PageArgs) -> Window {
        Window {
            first: args.first,
            last: args.last,
            items: VecDeque::new(),
            dropped_front: false,
        }
    }

    /// Adds the next item in order; false once nothing more is needed.
    fn push(&mut self, item: (SortKey, Instance)) -> bool {
        self.items.push_back(item);
        match (self.first, self.last) {
            (Some(first), _) => self.items.len() <= first,
            (None, Some(last)) => {
                if self.items.len() > last + 1 {
                    self.items.pop_front();
                    self.dropped_front = true;
                }
                true
            }
            (None, None) => true,
        }
    }

    fn finish(self) -> PageOut {
        let Window {
            first,
            last,
            mut items,
            mut dropped_front,
        } = self;
        let mut has_next = false;
        if let Some(first) = first {
            if items.len() > first {
                has_next = true;
                items.truncate(first);
            }
        }
        let mut has_previous = false;
        if let Some(last) = last {
            while items.len() > last {
                items.pop_front();
                dropped_front = true;
            }
            has_previous = dropped_front;
        }
        PageOut {
            items: items.into(),
            has_next: first.is_some() && has_next,
            has_previous: last.is_some() && has_previous,
        }
    }
}

/// One page of `source` under `filter` and `order`. `key_order` says the
/// order is the store's key order (see [`Order::is_key_order`]).
pub(crate) fn page(
    source: &impl Scan,
    filter: Option<&Filter>,
    order: &Order,
    key_order: bool,
    args: &PageArgs,
    budget: usize,
) -> Result<PageOut, PagingError> {
    let matches = |instance: &Instance| filter.is_none_or(|f| f.matches(&instance.fields));
    if key_order {
        let mut window = Window::new(args);
        let before = args.before.as_ref().map(|b| b.entity.as_bytes());
        walk(
            source,
            args.after.as_ref().map(|a| a.entity.as_str()),
            budget,
            |instance| {
                if before.is_some_and(|b| instance.entity.as_bytes() >= b) {
                    return false;
                }
                if !matches(&instance) {
                    return true;
                }
                let key = order.sort_key(&instance);
                window.push((key, instance))
            },
        )?;
        return Ok(window.finish());
    }

    // Any other order: the whole product, keeping only what the window can
    // use. With `first`, the smallest first+1; with only `last`, the
    // largest last+1.
    let keep = match (args.first, args.last) {
        (Some(first), _) => first + 1,
        (None, Some(last)) => last + 1,
        (None, None) => usize::MAX,
    };
    let smallest = args.first.is_some() || args.last.is_none();
    let mut heap: BinaryHeap<Ranked<'_>> = BinaryHeap::new();
    walk(source, None, budget, |instance| {
        if !matches(&instance) {
            return true;
        }
        let key = order.sort_key(&instance);
        if args
            .after
            .as_ref()
            .is_some_and(|after| order.compare(&key, after) != Ordering::Greater)
            || args
                .before
                .as_ref()
                .is_some_and(|before| order.compare(&key, before) != Ordering::Less)
        {
            return true;
        }
        heap.push(Ranked {
            order,
            smallest,
            key,
            instance,
        });
        if heap.len() > keep {
            heap.pop();
        }
        true
    })?;
    let mut sorted: Vec<Ranked<'_>> = heap.into_vec();
    sorted.sort_by(|a, b| order.compare(&a.key, &b.key));
    // The heap kept one more than the window shows, so the window itself
    // sees whether there is more on the side it was cut.
    let mut window = Window::new(args);
    for ranked in sorted {
        window.push((ranked.key, ranked.instance));
    }
    Ok(window.finish())
}

/// Calls `visit` with every instance matching `filter` (all without
/// one) in key order, until it returns false. Counts against `budget`.
pub(crate) fn for_each_match(
    source: &impl Scan,
    filter: Option<&Filter>,
    budget: usize,
    mut visit: impl FnMut(Instance) -> bool,
) -> Result<(), PagingError> {
    walk(source, None, budget, |instance| {
        if filter.is_none_or(|f| f.matches(&instance.fields)) {
            visit(instance)
        } else {
            true
        }
    })
}

/// How many instances match `filter` (all of them without one).
pub(crate) fn count(
    source: &impl Scan,
    filter: &Filter,
    budget: usize,
) -> Result<u64, PagingError> {
    let mut n = 0u64;
    walk(source, None, budget, |instance| {
        if filter.matches(&instance.fields) {
            n += 1;
        }
        true
    })?;
    Ok(n)
}

/// A heap entry ordered by the request's order. `smallest`: the heap
/// keeps the smallest items, so its top (the one popped) is the largest.
struct Ranked<'o> {
    order: &'o Order,
    smallest: bool,
    key: SortKey,
    instance: Instance,
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let ordering = self.order.compare(&self.key, &other.key);
        if self.smallest {
            ordering
        } else {
            ordering.reverse()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::graphql::order::OrderTerm;
    use crate::record::{Origin, Timestamp, Value};

    /// A product of `n` instances `e0000`.. with `n` = index.
    struct Fake(Vec<Instance>);

    impl Fake {
        fn new(n: usize) -> Fake {
            Fake(
                (0..n)
                    .map(|i| Instance {
                        entity: format!("e{i:04}"),
                        fields: [("n".to_string(), Value::Int((i % 7) as i64))].into(),
                        version: 1,
                        first_seen: Timestamp::from_secs(0),
                        last_seen: Timestamp::from_secs(0),
                        event_time: Timestamp::from_secs(0),
                        last_origin: Origin::new("test"),
                    })
                    .collect(),
            )
        }
    }

    impl Scan for Fake {
        fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
            let start = match after {
                Some(a) => self.0.partition_point(|i| i.entity.as_str() <= a),
                None => 0,
            };
            let end = (start + limit).min(self.0.len());
            Ok(Page {
                instances: self.0[start..end].to_vec(),
                errors: Vec::new(),
                next_after: (end < self.0.len()).then(|| self.0[end - 1].entity.clone()),
            })
        }
    }

    fn by_n(descending: bool) -> Order {
        Order {
            terms: vec![OrderTerm {
                field: "n".into(),
                descending,
            }],
        }
    }

    /// Pages forward through everything; returns the entities in order.
    fn all_forward(fake: &Fake, order: &Order, key_order: bool, step: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let args = PageArgs {
                first: Some(step),
                after: after.take(),
                ..PageArgs::default()
            };
            let out = page(fake, None, order, key_order, &args, SCAN_BUDGET).expect("page");
            seen.extend(out.items.iter().map(|(_, i)| i.entity.clone()));
            match out.items.last() {
                Some((key, _)) if out.has_next => after = Some(key.clone()),
                _ => return seen,
            }
        }
    }

    #[test]
    fn forward_paging_sees_everything_once() {
        let fake = Fake::new(1_234);
        let keyed = all_forward(&fake, &Order::default(), true, 100);
        assert_eq!(keyed.len(), 1_234);
        assert!(keyed.windows(2).all(|w| w[0] < w[1]));
        for descending in [false, true] {
            let ordered = all_forward(&fake, &by_n(descending), false, 97);
            let mut sorted = ordered.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 1_234, "descending: {descending}");
        }
    }

    #[test]
    fn backward_paging_and_windows() {
        let fake = Fake::new(50);
        let key = |e: &str| SortKey {
            values: Vec::new(),
            entity: e.to_string(),
        };
        let args = PageArgs {
            last: Some(3),
            before: Some(key("e0010")),
            ..PageArgs::default()
        };
        let out = page(&fake, None, &Order::default(), true, &args, SCAN_BUDGET).expect("page");
        let got: Vec<&str> = out.items.iter().map(|(_, i)| i.entity.as_str()).collect();
        assert_eq!(got, ["e0007", "e0008", "e0009"]);
        assert!(out.has_previous && !out.has_next);

        let args = PageArgs {
            first: Some(5),
            last: Some(2),
            after: Some(key("e0045")),
            ..PageArgs::default()
        };
        let out = page(&fake, None, &Order::default(), true, &args, SCAN_BUDGET).expect("page");
        let got: Vec<&str> = out.items.iter().map(|(_, i)| i.entity.as_str()).collect();
        assert_eq!(got, ["e0048", "e0049"]);
        assert!(!out.has_next, "only 4 after e0045");

        let order = by_n(false);
        let args = PageArgs {
            last: Some(2),
            ..PageArgs::default()
        };
        let out = page(&fake, None, &order, false, &args, SCAN_BUDGET).expect("page");
        let got: Vec<(i64, &str)> = out
            .items
            .iter()
            .map(|(_, i)| match i.fields.get("n") {
                Some(Value::Int(n)) => (*n, i.entity.as_str()),
                _ => panic!("n"),
            })
            .collect();
        assert_eq!(got, [(6, "e0041"), (6, "e0048")]);
        assert!(out.has_previous);
    }

    #[test]
    fn filters_counts_and_budget() {
        let fake = Fake::new(100);
        let filter = Filter::Field {
            field: "n".into(),
            op: crate::api::graphql::filter::Op::Eq(Value::Int(3)),
        };
        assert_eq!(count(&fake, &filter, SCAN_BUDGET).expect("count"), 14);
        let args = PageArgs {
            first: Some(100),
            ..PageArgs::default()
        };
        let out = page(
            &fake,
            Some(&filter),
            &Order::default(),
            true,
            &args,
            SCAN_BUDGET,
        )
        .expect("page");
        assert_eq!(out.items.len(), 14);
        let err = page(&fake, None, &by_n(false), false, &args, 10).expect_err("budget");
        assert!(matches!(err, PagingError::Budget(10)));
    }
}
