//! Parsed query documents, kept by query text.
//!
//! Clients send the same few queries over and over (a dashboard's lookup,
//! an app's page), and parsing is most of the executor's work on a key
//! lookup: `benches/graphql_micro.rs` under `perf` spent ~37% of its time
//! in the pest parser against ~8% in the store read. A document depends on
//! the text alone (not on the schema or the variables), so a hit is a
//! clone instead of a parse. Everything that depends on the request — the
//! size, alias and cost limits with this request's variables, validation
//! against the current schema — still runs on every request.
//!
//! Bounded: at most [`MAX_ENTRIES`] documents of texts up to
//! [`MAX_CACHED_QUERY_BYTES`]; when full, the cache starts over, so a
//! client sending endless distinct queries costs a parse each, never
//! memory. Texts that fail to parse are not kept.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;

/// Documents kept at most.
pub(crate) const MAX_ENTRIES: usize = 256;
/// Longer texts are parsed every time (they are rare and big to keep).
pub(crate) const MAX_CACHED_QUERY_BYTES: usize = 4 * 1024;

#[derive(Default)]
pub(crate) struct ParseCache {
    documents: Mutex<HashMap<String, ExecutableDocument>>,
}

impl ParseCache {
    /// The document parsed earlier from exactly `query`, if kept.
    pub(crate) fn get(&self, query: &str) -> Option<ExecutableDocument> {
        if query.len() > MAX_CACHED_QUERY_BYTES {
            return None;
        }
        self.lock().get(query).cloned()
    }

    /// Keeps `document`, parsed from `query`.
    pub(crate) fn insert(&self, query: &str, document: &ExecutableDocument) {
        if query.len() > MAX_CACHED_QUERY_BYTES {
            return;
        }
        let mut documents = self.lock();
        if documents.len() >= MAX_ENTRIES && !documents.contains_key(query) {
            documents.clear();
        }
        documents.insert(query.to_string(), document.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExecutableDocument>> {
        self.documents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(query).expect("parses")
    }

    #[test]
    fn a_kept_document_is_the_parsed_one() {
        let cache = ParseCache::default();
        let query = "query Q($n: Int) { a(first: $n) { b } }";
        assert!(cache.get(query).is_none());
        cache.insert(query, &parse(query));
        let kept = cache.get(query).expect("kept");
        assert_eq!(format!("{kept:?}"), format!("{:?}", parse(query)));
        assert!(
            cache.get("{ a { b } }").is_none(),
            "keyed by the exact text"
        );
    }

    #[test]
    fn bounded_in_entries_and_text_size() {
        let cache = ParseCache::default();
        for i in 0..MAX_ENTRIES * 3 {
            let query = format!("{{ f{i} }}");
            cache.insert(&query, &parse(&query));
            assert!(cache.len() <= MAX_ENTRIES);
        }
        let long = format!("{{ {} }}", "a ".repeat(MAX_CACHED_QUERY_BYTES));
        cache.insert(&long, &parse(&long));
        assert!(cache.get(&long).is_none());
    }
}
