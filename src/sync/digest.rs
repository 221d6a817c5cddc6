//! Verifiable sync: compares what an upstream should hold of this node
//! (the store's *sent* digest per upstream and product) with what the
//! aggregator says it holds of this node (its *held* digest, read over
//! HTTP: `GET /sync/v1/digest/<origin>/<product>[?bucket=<n>]`), and sends
//! again only what differs — through the outbox, like any other change.
//!
//! 1. The 256 bucket digests of each side (one request per product).
//! 2. For each bucket whose XOR or count differ, both sides' leaves (one
//!    request per differing bucket): the keys whose leaves differ, or
//!    that one side lacks, are exactly the entities that differ.
//! 3. An entity with an entry still pending in the outbox is on its way
//!    (counted as in flight, left alone); the others get their current
//!    state enqueued again — or, when only the aggregator holds the key,
//!    a tombstone.
//!
//! Only sync rules in mode `latest` are verifiable (the aggregator's
//! instance is then the edge's projected state); a product synced only in
//! mode `history` is skipped and said so. The digests are read over HTTP
//! from an HTTPS upstream's own `url`, or from `upstreams.<name>.verify_url`
//! (the HTTP API of the aggregator behind a NATS or MQTT upstream). With
//! several aggregators consuming one JetStream durable, each holds a part
//! of an edge's records: verify against one that holds them all (or
//! expect mismatches).
//!
//! Used by `meshlet sync verify UPSTREAM` (the node stopped) and by the
//! node every `sync.verify_interval` (metrics `meshlet_sync_verify_*`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::http::HttpTransport;
use super::metrics::SyncMetrics;
use super::TransportError;
use crate::config::UpstreamConfig;
use crate::product::{ProductSet, SyncMode};
use crate::store::{BucketDigest, DigestScope, Leaf, Store, StoreError};

/// Why a verification could not run (nothing was enqueued).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("upstream `{upstream}`: {detail}")]
    Config { upstream: String, detail: String },
    #[error("upstream `{upstream}`: {source}")]
    Transport {
        upstream: String,
        source: TransportError,
    },
    #[error("upstream `{upstream}`, {what}: {detail}")]
    Answer {
        upstream: String,
        what: String,
        detail: String,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What one product's verification found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProductVerify {
    pub product: String,
    /// Non-empty buckets on this side and on the aggregator.
    pub buckets_here: usize,
    pub buckets_there: usize,
    pub mismatched_buckets: usize,
    /// Keys whose state differs (or that one side lacks), in flight or not.
    pub differing: usize,
    /// The first differing keys (as the upstream holds them), at most 20.
    pub sample: Vec<String>,
    /// Differing keys with an outbox entry still pending: left alone.
    pub in_flight: usize,
    /// States and tombstones enqueued again (0 without repair).
    pub resent: u64,
    pub tombstones: u64,
}

/// What one verification of an upstream found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    pub upstream: String,
    pub origin: String,
    pub products: Vec<ProductVerify>,
    /// Products with sync rules to this upstream but none in mode
    /// `latest`: not verifiable.
    pub skipped: Vec<String>,
    pub mismatched_buckets: usize,
    pub differing: usize,
    pub in_flight: usize,
    pub resent: u64,
    pub tombstones: u64,
}

const SAMPLE: usize = 20;

/// The buckets whose XOR or count differ, or that one side lacks.
pub fn differing_buckets(here: &[BucketDigest], there: &[BucketDigest]) -> Vec<u8> {
    let here: BTreeMap<u8, (u128, u64)> =
        here.iter().map(|b| (b.bucket, (b.xor, b.count))).collect();
    let there: BTreeMap<u8, (u128, u64)> =
        there.iter().map(|b| (b.bucket, (b.xor, b.count))).collect();
    let all: BTreeSet<u8> = here.keys().chain(there.keys()).copied().collect();
    all.into_iter()
        .filter(|b| here.get(b) != there.get(b))
        .collect()
}

/// The keys of one bucket that differ: this side's leaves the other side
/// lacks or holds differently, and the keys only the other side holds.
pub fn differing_leaves<'a>(here: &'a [Leaf], there: &[Leaf]) -> (Vec<&'a Leaf>, Vec<String>) {
    let there_map: BTreeMap<&str, u128> =
        there.iter().map(|l| (l.entity.as_str(), l.hash)).collect();
    let here_keys: BTreeSet<&str> = here.iter().map(|l| l.entity.as_str()).collect();
    let changed = here
        .iter()
        .filter(|l| there_map.get(l.entity.as_str()) != Some(&l.hash))
        .collect();
    let only_there = there
        .iter()
        .filter(|l| !here_keys.contains(l.entity.as_str()))
        .map(|l| l.entity.clone())
        .collect();
    (changed, only_there)
}

/// Percent-encodes a path segment (node ids and product names are plain,
/// but nothing guarantees it of a node id).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One upstream's verifier: its HTTP client and this node's id.
pub struct Verifier {
    upstream: String,
    origin: String,
    client: HttpTransport,
}

impl Verifier {
    /// The verifier of `upstream`: its `verify_url`, else its own `url`
    /// when that is HTTP(S).
    pub fn new(
        upstream: &str,
        config: &UpstreamConfig,
        origin: &str,
    ) -> Result<Verifier, VerifyError> {
        let bad = |detail: String| VerifyError::Config {
            upstream: upstream.to_string(),
            detail,
        };
        let url = match (&config.verify_url, &config.url) {
            (Some(url), _) => url.clone(),
            (None, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
                url.clone()
            }
            (None, Some(url)) => {
                return Err(bad(format!(
                    "it sends over `{}`; set `upstreams.{upstream}.verify_url` to the https:// API of its aggregator to verify it",
                    url.split("://").next().unwrap_or("?")
                )))
            }
            (None, None) => return Err(bad("no url (the upstream is parked)".to_string())),
        };
        let client = HttpTransport::new(&url, config).map_err(|source| VerifyError::Transport {
            upstream: upstream.to_string(),
            source,
        })?;
        Ok(Verifier {
            upstream: upstream.to_string(),
            origin: origin.to_string(),
            client,
        })
    }

    async fn fetch<T: serde::de::DeserializeOwned>(
        &mut self,
        rest: String,
        what: &str,
    ) -> Result<T, VerifyError> {
        // A non-2xx answer is `Refused` with the upstream's text.
        let body = self
            .client
            .get(&format!("/{rest}"))
            .await
            .map_err(|source| VerifyError::Transport {
                upstream: self.upstream.clone(),
                source,
            })?;
        serde_json::from_slice(&body).map_err(|e| VerifyError::Answer {
            upstream: self.upstream.clone(),
            what: what.to_string(),
            detail: format!("not a digest: {e}"),
        })
    }

    async fn remote_buckets(&mut self, product: &str) -> Result<Vec<BucketDigest>, VerifyError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            buckets: Vec<BucketDigest>,
        }
        let rest = format!("digest/{}/{}", segment(&self.origin), segment(product));
        let answer: Answer = self
            .fetch(rest, &format!("the digest of `{product}`"))
            .await?;
        Ok(answer.buckets)
    }

    async fn remote_leaves(&mut self, product: &str, bucket: u8) -> Result<Vec<Leaf>, VerifyError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            leaves: Vec<Leaf>,
        }
        let rest = format!(
            "digest/{}/{}?bucket={bucket}",
            segment(&self.origin),
            segment(product)
        );
        let answer: Answer = self
            .fetch(rest, &format!("bucket {bucket} of `{product}`"))
            .await?;
        Ok(answer.leaves)
    }

    /// Compares every verifiable product and, with `repair`, enqueues
    /// what differs again.
    pub async fn run(
        &mut self,
        store: &Store,
        products: &ProductSet,
        repair: bool,
    ) -> Result<VerifyReport, VerifyError> {
        let mut report = VerifyReport {
            upstream: self.upstream.clone(),
            origin: self.origin.clone(),
            ..VerifyReport::default()
        };
        for product in products.iter() {
            let rules: Vec<_> = product
                .sync
                .iter()
                .filter(|r| r.to == self.upstream)
                .collect();
            if rules.is_empty() {
                continue;
            }
            if !rules.iter().any(|r| r.mode == SyncMode::Latest) {
                report.skipped.push(product.name.clone());
                continue;
            }
            let one = self.product(store, &product.name, repair).await?;
            report.mismatched_buckets += one.mismatched_buckets;
            report.differing += one.differing;
            report.in_flight += one.in_flight;
            report.resent += one.resent;
            report.tombstones += one.tombstones;
            report.products.push(one);
        }
        Ok(report)
    }

    async fn product(
        &mut self,
        store: &Store,
        product: &str,
        repair: bool,
    ) -> Result<ProductVerify, VerifyError> {
        let upstream = self.upstream.clone();
        let scope = DigestScope::Sent(&upstream);
        let here = store.digest_buckets(scope, product)?;
        let there = self.remote_buckets(product).await?;
        let mismatched = differing_buckets(&here, &there);
        let mut out = ProductVerify {
            product: product.to_string(),
            buckets_here: here.len(),
            buckets_there: there.len(),
            mismatched_buckets: mismatched.len(),
            ..ProductVerify::default()
        };
        let mut resend = Vec::new();
        let mut gone = Vec::new();
        for bucket in mismatched {
            let here = store.digest_leaves(scope, product, bucket)?;
            let there = self.remote_leaves(product, bucket).await?;
            let (changed, only_there) = differing_leaves(&here, &there);
            for leaf in changed {
                let local = leaf.local.clone().unwrap_or_else(|| leaf.entity.clone());
                note(&mut out, &leaf.entity);
                if store.outbox_has_pending(product, &local)? {
                    out.in_flight += 1;
                } else {
                    resend.push(local);
                }
            }
            for key in only_there {
                note(&mut out, &key);
                if store.outbox_has_pending(product, &key)? {
                    out.in_flight += 1;
                } else {
                    gone.push(key);
                }
            }
        }
        if repair && (!resend.is_empty() || !gone.is_empty()) {
            let store = store.clone();
            let (upstream, name) = (self.upstream.clone(), product.to_string());
            let repaired = tokio::task::spawn_blocking(move || {
                store.digest_repair(&upstream, &name, &resend, &gone)
            })
            .await
            .map_err(|e| VerifyError::Config {
                upstream: self.upstream.clone(),
                detail: format!("repair task: {e}"),
            })??;
            out.resent = repaired.states;
            out.tombstones = repaired.tombstones;
        }
        tracing::info!(
            upstream = %self.upstream,
            product,
            mismatched_buckets = out.mismatched_buckets,
            differing = out.differing,
            in_flight = out.in_flight,
            resent = out.resent,
            tombstones = out.tombstones,
            "sync digest compared"
        );
        Ok(out)
    }
}

fn note(out: &mut ProductVerify, key: &str) {
    out.differing += 1;
    if out.sample.len() < SAMPLE {
        out.sample.push(key.to_string());
    }
}

/// The periodic check of one upstream: every `interval`, verify and
/// repair; each run's outcome goes to the metrics.
pub async fn periodic(
    mut verifier: Verifier,
    interval: std::time::Duration,
    store: Store,
    products: Arc<ProductSet>,
    metrics: Arc<SyncMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let upstream = verifier.upstream.clone();
        match verifier.run(&store, &products, true).await {
            Ok(report) => metrics.verified(&report),
            Err(e) => metrics.verify_failed(&upstream, &e.to_string()),
        }
    }
}
