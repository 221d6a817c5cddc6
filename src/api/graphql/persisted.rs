//! Automatic persisted queries (Apollo APQ): a client sends only the
//! SHA-256 of a query it sent before (`extensions.persistedQuery.
//! sha256Hash`, version 1), so a GET stays short and a POST small.
//!
//! Protocol: a hash the node does not know is answered with the error
//! `PersistedQueryNotFound` (code `PERSISTED_QUERY_NOT_FOUND`); the client
//! then sends the query with its hash, which registers it — after the
//! node has checked that the hash is the query's SHA-256 (a mismatch is
//! refused with 400 and nothing is executed or kept). Either way the
//! request then runs as any other, under the same limits and budgets.
//!
//! Bounded: the query texts kept add up to at most
//! `api.max_persisted_query_bytes` (default 1 MiB); registering past it
//! forgets the oldest first. A forgotten hash costs the client one
//! round-trip (it sends the query again), never a wrong answer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a request's `extensions.persistedQuery` asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Lookup {
    /// No persisted query: the request's own text.
    Absent,
    /// The text registered under the hash.
    Found(Arc<str>),
    /// Neither the text nor a known hash: ask the client for the text.
    NotFound,
}

/// Why a persisted-query request is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum PersistedError {
    #[error("extensions.persistedQuery: {0}")]
    Malformed(&'static str),
    #[error("extensions.persistedQuery.sha256Hash {sent} is not the SHA-256 of the query sent with it ({actual}); nothing was executed")]
    HashMismatch { sent: String, actual: String },
}

/// The registered queries, by hex SHA-256.
pub(crate) struct PersistedQueries {
    max_bytes: usize,
    kept: Mutex<Kept>,
    hits: AtomicU64,
    misses: AtomicU64,
    registered: AtomicU64,
    mismatches: AtomicU64,
}

#[derive(Default)]
struct Kept {
    texts: HashMap<String, Arc<str>>,
    /// Hashes, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

impl PersistedQueries {
    pub(crate) fn new(max_bytes: usize) -> PersistedQueries {
        PersistedQueries {
            max_bytes,
            kept: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
        }
    }

    /// Resolves the request's `query` (empty when not sent) against its
    /// `extensions`: registers a verified text, finds a known hash.
    pub(crate) fn resolve(
        &self,
        query: &str,
        extensions: &serde_json::Value,
    ) -> Result<Lookup, PersistedError> {
        let Some(persisted) = extensions.get("persistedQuery").filter(|p| !p.is_null()) else {
            return Ok(Lookup::Absent);
        };
        if persisted.get("version").and_then(serde_json::Value::as_i64) != Some(1) {
            return Err(PersistedError::Malformed("only `version: 1` is supported"));
        }
        let hash = persisted
            .get("sha256Hash")
            .and_then(serde_json::Value::as_str)
            .ok_or(PersistedError::Malformed("`sha256Hash` must be a string"))?
            .to_ascii_lowercase();
        if query.is_empty() {
            let found = self.lock().texts.get(&hash).cloned();
            return Ok(match found {
                Some(text) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    Lookup::Found(text)
                }
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    Lookup::NotFound
                }
            });
        }
        let actual = sha256_hex(query);
        if actual != hash {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            return Err(PersistedError::HashMismatch { sent: hash, actual });
        }
        self.register(hash, query);
        Ok(Lookup::Absent)
    }

    fn register(&self, hash: String, query: &str) {
        if query.len() > self.max_bytes {
            return;
        }
        let mut kept = self.lock();
        if kept.texts.contains_key(&hash) {
            return;
        }
        while kept.bytes + query.len() > self.max_bytes {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(text) = kept.texts.remove(&oldest) {
                kept.bytes -= text.len();
            }
        }
        kept.bytes += query.len();
        kept.order.push_back(hash.clone());
        kept.texts.insert(hash, Arc::from(query));
        self.registered.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding the lock leaves consistent maps.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        use crate::telemetry::expose;
        let mut f = expose::counter_family(
            enc,
            "meshlet_graphql_persisted_queries_total",
            "Automatic persisted queries: hash found, hash unknown (client asked for the text), text registered, hash not the text's SHA-256 (refused).",
        )?;
        for (outcome, counter) in [
            ("hit", &self.hits),
            ("miss", &self.misses),
            ("registered", &self.registered),
            ("hash_mismatch", &self.mismatches),
        ] {
            f.sample(&[("outcome", outcome)], counter.load(Ordering::Relaxed))?;
        }
        expose::gauge(
            enc,
            "meshlet_graphql_persisted_query_bytes",
            "Bytes of query text kept for automatic persisted queries (at most api.max_persisted_query_bytes).",
            self.lock().bytes as u64,
        )
    }
}

/// Lowercase hex SHA-256 of `text`.
pub(crate) fn sha256_hex(text: &str) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ext(hash: &str) -> serde_json::Value {
        json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
    }

    #[test]
    fn unknown_then_registered_then_found() {
        let cache = PersistedQueries::new(1024);
        let query = "{ __typename }";
        let hash = sha256_hex(query);
        assert_eq!(cache.resolve("", &ext(&hash)), Ok(Lookup::NotFound));
        assert_eq!(cache.resolve(query, &ext(&hash)), Ok(Lookup::Absent));
        assert_eq!(
            cache.resolve("", &ext(&hash)),
            Ok(Lookup::Found(Arc::from(query)))
        );
    }

    #[test]
    fn a_wrong_hash_is_refused_and_not_kept() {
        let cache = PersistedQueries::new(1024);
        let wrong = sha256_hex("{ other }");
        assert!(matches!(
            cache.resolve("{ __typename }", &ext(&wrong)),
            Err(PersistedError::HashMismatch { .. })
        ));
        assert_eq!(cache.resolve("", &ext(&wrong)), Ok(Lookup::NotFound));
    }

    #[test]
    fn the_oldest_texts_go_first_when_full() {
        let cache = PersistedQueries::new(40);
        let queries = ["{ a { b c d } }", "{ e { f g h } }", "{ i { j k l } }"];
        for query in queries {
            cache.resolve(query, &ext(&sha256_hex(query))).unwrap();
        }
        assert!(cache.lock().bytes <= 40);
        assert_eq!(
            cache.resolve("", &ext(&sha256_hex(queries[0]))),
            Ok(Lookup::NotFound)
        );
        assert!(matches!(
            cache.resolve("", &ext(&sha256_hex(queries[2]))),
            Ok(Lookup::Found(_))
        ));
    }
}
