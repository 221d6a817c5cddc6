//! What one caller may take of the node through GraphQL (`[api]` in the
//! hub config): queries running at once and subscriptions open, per
//! identity, and the bytes one request may make the node read and write.
//!
//! Why per identity: the node has a couple of cores; without a budget a
//! handful of heavy but legal queries from one client (anonymous callers
//! are one client) take them all and every other caller waits, and one
//! WebSocket can hold thousands of subscriptions. An identity is a token,
//! a client certificate, or all anonymous callers together.
//!
//! - Queries: a semaphore of `max_concurrent_queries` permits (default
//!   half the cores) per
//!   identity. A query waits at most `queue_timeout` for a permit, then is
//!   refused (HTTP 429, `TOO_MANY_CONCURRENT_QUERIES`). The permit is held
//!   until the response has been written to the client, so a client that
//!   does not read its (large) answers cannot start more work meanwhile.
//!   Queries answered from a prepared plan (key lookups of a known shape,
//!   `prepared.rs`) take no slot: they are a bounded handful of reads.
//!   Queries and mutations sent over a WebSocket take one like any other.
//! - Subscriptions: counted per WebSocket ([`ConnectionSlots`]) and per
//!   identity; one over either cap is refused with a GraphQL error
//!   (`TOO_MANY_SUBSCRIPTIONS`) while the others go on.
//! - Response bytes: [`ResponseBudget`] is charged by resolvers that load
//!   bulk data (quarantined payloads, history events), before the
//!   response is built, and the
//!   serialised response is capped at `max_response_bytes` in the HTTP
//!   handler (`RESPONSE_TOO_LARGE`).
//!
//! Every refusal is counted (`meshlet_api_refused_total{reason}`).
//! The maps are bounded: idle identities are forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::ErrorExtensions;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ApiLimits;
use crate::policy::access::{Credential, Identity};

/// Identities whose idle semaphores are kept before they are swept.
const IDLE_IDENTITIES_KEPT: usize = 1_024;

/// The key of an identity's budget.
pub(crate) fn identity_key(identity: &Identity) -> String {
    match &identity.credential {
        Credential::Token { id } => format!("token:{id}"),
        Credential::Certificate { fingerprint_sha256 } => format!("cert:{fingerprint_sha256}"),
        Credential::Anonymous => "anonymous".to_string(),
    }
}

/// The node's budgets, shared by every request and connection.
pub(crate) struct Budgets {
    limits: ApiLimits,
    queries: Mutex<HashMap<String, Arc<Semaphore>>>,
    subscriptions: Mutex<HashMap<String, usize>>,
    /// Refusals, by reason (see [`Budgets::encode_metrics`]).
    pub(crate) refused_queries: AtomicU64,
    pub(crate) refused_subscriptions: AtomicU64,
    pub(crate) responses_too_large: AtomicU64,
}

impl Budgets {
    pub(crate) fn new(limits: ApiLimits) -> Budgets {
        Budgets {
            limits,
            queries: Mutex::default(),
            subscriptions: Mutex::default(),
            refused_queries: AtomicU64::new(0),
            refused_subscriptions: AtomicU64::new(0),
            responses_too_large: AtomicU64::new(0),
        }
    }

    pub(crate) fn limits(&self) -> &ApiLimits {
        &self.limits
    }

    /// A query slot of `identity`, waiting at most `queue_timeout`; `None`
    /// (counted) when none came free in time.
    pub(crate) async fn query_slot(&self, identity: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut queries = self.queries.lock().unwrap_or_else(|p| p.into_inner());
            if queries.len() >= IDLE_IDENTITIES_KEPT {
                let full = self.limits.concurrent_queries();
                queries.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < full);
            }
            queries
                .entry(identity.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.concurrent_queries())))
                .clone()
        };
        let slot = tokio::time::timeout(self.limits.queue_timeout, semaphore.acquire_owned()).await;
        match slot {
            Ok(Ok(permit)) => Some(permit),
            // Timed out (or the semaphore closed, which it never is).
            _ => {
                self.refused_queries.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A subscription slot of `identity` on `connection`, or the GraphQL
    /// error that refuses the subscription (counted).
    pub(crate) fn subscription_slot(
        self: &Arc<Self>,
        identity: &str,
        connection: &Arc<ConnectionSlots>,
    ) -> Result<SubscriptionSlot, async_graphql::Error> {
        let per_connection = self.limits.max_subscriptions_per_connection;
        let per_identity = self.limits.max_subscriptions_per_identity;
        let mut open = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        let on_connection = connection.open.load(Ordering::Relaxed);
        let of_identity = open.get(identity).copied().unwrap_or(0);
        let refusal = if on_connection >= per_connection {
            Some(format!(
                "this connection has {on_connection} subscriptions open; at most {per_connection} are allowed per connection (api.max_subscriptions_per_connection): end one first"
            ))
        } else if of_identity >= per_identity {
            Some(format!(
                "this caller has {of_identity} subscriptions open; at most {per_identity} are allowed per caller (api.max_subscriptions_per_identity): end one first"
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            self.refused_subscriptions.fetch_add(1, Ordering::Relaxed);
            return Err(async_graphql::Error::new(message)
                .extend_with(|_, e| e.set("code", "TOO_MANY_SUBSCRIPTIONS")));
        }
        *open.entry(identity.to_string()).or_insert(0) += 1;
        connection.open.fetch_add(1, Ordering::Relaxed);
        Ok(SubscriptionSlot {
            budgets: self.clone(),
            identity: identity.to_string(),
            connection: connection.clone(),
        })
    }

    fn release_subscription(&self, identity: &str) {
        let mut open = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(identity);
            }
        }
    }

    /// `meshlet_api_refused_total{reason}` for `/metrics`.
    pub(crate) fn encode_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        let mut f = crate::telemetry::expose::counter_family(
            enc,
            "meshlet_api_refused_total",
            "API requests refused by the [api] budgets: concurrent queries of one identity, subscriptions per connection or identity, responses over max_response_bytes.",
        )?;
        for (reason, counter) in [
            ("concurrent_queries", &self.refused_queries),
            ("subscriptions", &self.refused_subscriptions),
            ("response_too_large", &self.responses_too_large),
        ] {
            f.sample(&[("reason", reason)], counter.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// Subscriptions open on one WebSocket: in the connection's data, set
/// when it is initialised.
#[derive(Default)]
pub(crate) struct ConnectionSlots {
    open: AtomicUsize,
}

/// One open subscription, counted until dropped (with its stream).
pub(crate) struct SubscriptionSlot {
    budgets: Arc<Budgets>,
    identity: String,
    connection: Arc<ConnectionSlots>,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.connection.open.fetch_sub(1, Ordering::Relaxed);
        self.budgets.release_subscription(&self.identity);
    }
}

/// Bytes one request may still read (quarantined payloads, history
/// values), charged as resolvers read them: aliases share it (it is in
/// the request's data as an `Arc`), so asking for the same payloads
/// twice costs twice.
pub(crate) struct ResponseBudget {
    remaining: AtomicUsize,
    max: usize,
    /// Counts the request once when a charge is first refused.
    budgets: Option<Arc<Budgets>>,
    refused: std::sync::atomic::AtomicBool,
}

impl ResponseBudget {
    /// `max_response_bytes` of `budgets`, refusals counted there.
    pub(crate) fn of(budgets: &Arc<Budgets>) -> ResponseBudget {
        let mut budget = ResponseBudget::new(budgets.limits.max_response_bytes);
        budget.budgets = Some(budgets.clone());
        budget
    }

    pub(crate) fn new(max: usize) -> ResponseBudget {
        ResponseBudget {
            remaining: AtomicUsize::new(max),
            max,
            budgets: None,
            refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Takes `bytes` from the budget, or refuses with
    /// `RESPONSE_TOO_LARGE` (and takes nothing).
    pub(crate) fn charge(&self, bytes: usize) -> Result<(), async_graphql::Error> {
        let taken = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            });
        if taken.is_err() && !self.refused.swap(true, Ordering::Relaxed) {
            if let Some(budgets) = &self.budgets {
                budgets.responses_too_large.fetch_add(1, Ordering::Relaxed);
            }
        }
        taken.map(|_| ()).map_err(|_| too_large(self.max))
    }

    /// The error of a request whose reads went over this budget.
    pub(crate) fn refusal(&self) -> async_graphql::Error {
        too_large(self.max)
    }
}

/// About the bytes `fields` take in an answer: names and string values
/// by length, JSON values as written, other values a few bytes each.
pub(crate) fn fields_bytes(fields: &crate::record::Fields) -> usize {
    use crate::record::Value;
    fields
        .iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    Value::String(text) => text.len(),
                    Value::Json(json) => json_size(json),
                    _ => 8,
                }
        })
        .sum()
}

/// The length of `value` as JSON, without building it (the response
/// budget here and the quarantine listing's byte pages both count it).
pub(crate) fn json_size(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The GraphQL error of a response over `max` bytes.
pub(crate) fn too_large(max: usize) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "the response would be over {max} bytes (api.max_response_bytes): ask for fewer fields, smaller pages (`first`) or fewer aliases, and page with `after`"
    ))
    .extend_with(|_, e| e.set("code", "RESPONSE_TOO_LARGE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_connection: usize, per_identity: usize) -> ApiLimits {
        ApiLimits {
            max_subscriptions_per_connection: per_connection,
            max_subscriptions_per_identity: per_identity,
            ..ApiLimits::default()
        }
    }

    #[test]
    fn subscriptions_are_capped_per_connection_and_per_identity() {
        let budgets = Arc::new(Budgets::new(limits(2, 3)));
        let (a, b) = (Arc::default(), Arc::default());
        let first = budgets.subscription_slot("anonymous", &a).expect("1st");
        let _second = budgets.subscription_slot("anonymous", &a).expect("2nd");
        assert!(budgets.subscription_slot("anonymous", &a).is_err());
        let _third = budgets.subscription_slot("anonymous", &b).expect("3rd");
        let Err(err) = budgets.subscription_slot("anonymous", &b) else {
            panic!("the identity cap refuses a 4th");
        };
        assert!(err.message.contains("per caller"), "{}", err.message);
        assert!(budgets.subscription_slot("token:x", &b).is_ok());
        drop(first);
        assert!(budgets.subscription_slot("anonymous", &b).is_ok());
        assert_eq!(budgets.refused_subscriptions.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_response_budget_is_shared_and_never_overdrawn() {
        let budget = ResponseBudget::new(100);
        budget.charge(60).expect("fits");
        assert!(budget.charge(60).is_err());
        budget.charge(40).expect("the rest fits");
        assert!(budget.charge(1).is_err());
    }

    #[tokio::test]
    async fn a_query_waits_for_a_slot_then_is_refused() {
        let budgets = Budgets::new(ApiLimits {
            max_concurrent_queries: 2,
            queue_timeout: std::time::Duration::from_millis(20),
            ..ApiLimits::default()
        });
        let one = budgets.query_slot("anonymous").await.expect("1st");
        let _two = budgets.query_slot("anonymous").await.expect("2nd");
        assert!(budgets.query_slot("anonymous").await.is_none());
        assert!(
            budgets.query_slot("token:t").await.is_some(),
            "another identity"
        );
        drop(one);
        assert!(budgets.query_slot("anonymous").await.is_some());
        assert_eq!(budgets.refused_queries.load(Ordering::Relaxed), 1);
    }
}
