//! Filtered, ordered cursor pagination over 10,000 entities loaded through
//! HTTP push: every entity exactly once across pages, in every ordering,
//! forward and backward, while another client keeps writing (updating
//! entities and creating new ones between existing keys).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::graphql::{start, workdir, Gql};
use serde_json::{json, Value};

const ITEM: &str = r#"
product: item
version: 1
domain: test
owner: test@example.com
key: item_id
fields:
  item_id: { type: string, required: true }
  grp:     { type: int }
  value:   { type: float }
sources:
  - http: { format: ndjson }
quality: { on_invalid: reject }
"#;

const ENTITIES: usize = 10_000;

fn key(i: usize) -> String {
    format!("i{i:05}")
}

/// `grp` of the original entity `i`.
fn grp(i: usize) -> i64 {
    (i % 10) as i64
}

async fn push(client: &reqwest::Client, url: &str, lines: Vec<Value>) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let response = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("push");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
}

/// Writes until told to stop (at most 400 rounds): each round updates 20
/// existing entities' `value` and creates 2 new entities with keys between
/// existing ones (`i01234x7`) and `grp` 1. Returns the created keys.
fn writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut created = Vec::new();
        for round in 0..400usize {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let mut lines = Vec::new();
            for j in 0..20 {
                let i = (round * 7919 + j * 104_729) % ENTITIES;
                lines.push(json!({ "item_id": key(i), "value": round as f64 }));
            }
            for j in 0..2 {
                let new = format!("{}x{round}", key((round * 31 + j * 5003) % ENTITIES));
                lines.push(json!({ "item_id": new, "grp": 1, "value": 0.5 }));
                created.push(new);
            }
            push(&client, &url, lines).await;
        }
        created
    })
}

/// Pages through a connection with `first`, returning every node.
async fn forward(gql: &Gql, args: &str, first: usize) -> Vec<Value> {
    let query = format!(
        "query($after: String) {{ itemConnection(first: {first}, after: $after, {args}) {{
            edges {{ cursor node {{ item_id grp value }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
    );
    let mut nodes = Vec::new();
    let mut after = Value::Null;
    loop {
        let data = gql.data(&query, json!({ "after": after })).await;
        let connection = &data["itemConnection"];
        let edges = connection["edges"].as_array().expect("edges");
        assert!(edges.len() <= first);
        nodes.extend(edges.iter().map(|e| e["node"].clone()));
        if connection["pageInfo"]["hasNextPage"] != true {
            return nodes;
        }
        assert_eq!(
            connection["pageInfo"]["endCursor"],
            edges.last().expect("a full page")["cursor"]
        );
        after = connection["pageInfo"]["endCursor"].clone();
    }
}

/// Pages backwards with `last`/`before` from the end; nodes in order.
async fn backward(gql: &Gql, args: &str, last: usize) -> Vec<Value> {
    let query = format!(
        "query($before: String) {{ itemConnection(last: {last}, before: $before, {args}) {{
            nodes {{ item_id grp }} pageInfo {{ hasPreviousPage startCursor }} }} }}"
    );
    let mut pages = Vec::new();
    let mut before = Value::Null;
    loop {
        let data = gql.data(&query, json!({ "before": before })).await;
        let connection = &data["itemConnection"];
        let nodes = connection["nodes"].as_array().expect("nodes").clone();
        assert!(nodes.len() <= last);
        pages.push(nodes);
        if connection["pageInfo"]["hasPreviousPage"] != true {
            break;
        }
        before = connection["pageInfo"]["startCursor"].clone();
    }
    pages.into_iter().rev().flatten().collect()
}

fn ids(nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n["item_id"].as_str().expect("item_id").to_string())
        .collect()
}

/// Asserts that `seen` holds each of `expected` exactly once, and nothing
/// twice; returns the extra entities seen (created meanwhile).
fn exactly_once(seen: &[String], expected: &BTreeSet<String>) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in seen {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seen more than once: {twice:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !counts.contains_key(e.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "never seen: {} e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    seen.iter()
        .filter(|s| !expected.contains(*s))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entity_exactly_once_across_pages_while_others_write() {
    let dir = workdir(&[("item", ITEM)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let ingest = node.url("/ingest/item");
    let client = reqwest::Client::new();
    for chunk in 0..4 {
        let lines = (chunk * 2_500..(chunk + 1) * 2_500)
            .map(|i| json!({ "item_id": key(i), "grp": grp(i), "value": (i % 97) as f64 }))
            .collect();
        push(&client, &ingest, lines).await;
    }
    let all: BTreeSet<String> = (0..ENTITIES).map(key).collect();
    let data = gql
        .data("{ itemConnection { totalCount } }", json!({}))
        .await;
    assert_eq!(data["itemConnection"]["totalCount"], ENTITIES);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(ingest.clone(), stop.clone());

    // Key order, no filter, 1000 per page (the cap).
    let seen = ids(&forward(&gql, "", 1_000).await);
    let extra = exactly_once(&seen, &all);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "key order");
    assert!(extra.iter().all(|e| e.contains('x')), "{extra:?}");

    // Key order with a filter.
    let grp_1_or_3: BTreeSet<String> = (0..ENTITIES)
        .filter(|i| [1, 3].contains(&grp(*i)))
        .map(key)
        .collect();
    let nodes = forward(&gql, "filter: { grp: { in: [1, 3] } }", 300).await;
    assert!(nodes.iter().all(|n| n["grp"] == 1 || n["grp"] == 3));
    exactly_once(&ids(&nodes), &grp_1_or_3);

    // Ordered by a field (not one the writer changes), descending.
    let high: BTreeSet<String> = (0..ENTITIES).filter(|i| grp(*i) >= 5).map(key).collect();
    let nodes = forward(
        &gql,
        "filter: { grp: { gte: 5 } }, orderBy: [{ field: grp, direction: DESC }]",
        1_000,
    )
    .await;
    exactly_once(&ids(&nodes), &high);
    let order: Vec<(i64, String)> = nodes
        .iter()
        .map(|n| {
            (
                -n["grp"].as_i64().expect("grp"),
                n["item_id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "grp descending, then key"
    );

    // Backwards, filtered, in key order and in field order.
    let sevens: BTreeSet<String> = (0..ENTITIES).filter(|i| grp(*i) == 7).map(key).collect();
    let nodes = backward(&gql, "filter: { grp: { eq: 7 } }", 250).await;
    let seen = ids(&nodes);
    exactly_once(&seen, &sevens);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let nodes = backward(
        &gql,
        "filter: { grp: { gte: 8 } }, orderBy: [{ field: grp }]",
        700,
    )
    .await;
    let eights_nines: BTreeSet<String> = (0..ENTITIES).filter(|i| grp(*i) >= 8).map(key).collect();
    exactly_once(&ids(&nodes), &eights_nines);

    stop.store(true, Ordering::Relaxed);
    let created = writes.await.expect("writer");
    assert!(!created.is_empty(), "the writer ran while paging");

    // Once the writes stopped, counts are exact.
    let data = gql
        .data(
            "{ all: itemConnection { totalCount } ones: itemConnection(filter: { grp: { eq: 1 } }) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(data["all"]["totalCount"], ENTITIES + created.len());
    assert_eq!(data["ones"]["totalCount"], ENTITIES / 10 + created.len());
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_cursors_and_refusals() {
    let dir = workdir(&[("item", ITEM)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    let lines = (0..50)
        .map(|i| json!({ "item_id": key(i), "grp": grp(i), "value": i as f64 }))
        .collect();
    push(&reqwest::Client::new(), &node.url("/ingest/item"), lines).await;

    let page = |args: &str| {
        format!("{{ itemConnection({args}) {{ nodes {{ item_id }} pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }} }}")
    };
    // first + last: the last 2 of the first 5 after i00010.
    let data = gql.data(&page("first: 5"), json!({})).await;
    let after_4 = data["itemConnection"]["pageInfo"]["endCursor"].clone();
    let data = gql
        .data(
            "query($a: String) { itemConnection(first: 5, last: 2, after: $a) { nodes { item_id } pageInfo { hasNextPage hasPreviousPage } } }",
            json!({ "a": after_4 }),
        )
        .await;
    assert_eq!(
        data["itemConnection"]["nodes"],
        json!([{ "item_id": "i00008" }, { "item_id": "i00009" }])
    );
    assert_eq!(
        data["itemConnection"]["pageInfo"],
        json!({ "hasNextPage": true, "hasPreviousPage": true })
    );

    // Ordered by value descending, the top 3; then the 3 after them.
    let data = gql
        .data(
            &page("first: 3, orderBy: [{ field: value, direction: DESC }]"),
            json!({}),
        )
        .await;
    assert_eq!(
        ids(data["itemConnection"]["nodes"].as_array().expect("nodes")),
        ["i00049", "i00048", "i00047"]
    );
    let cursor = data["itemConnection"]["pageInfo"]["endCursor"].clone();
    let data = gql
        .data(
            "query($c: String) { itemConnection(first: 3, after: $c, orderBy: [{ field: value, direction: DESC }]) { nodes { item_id } } }",
            json!({ "c": cursor }),
        )
        .await;
    assert_eq!(
        ids(data["itemConnection"]["nodes"].as_array().expect("nodes")),
        ["i00046", "i00045", "i00044"]
    );

    // A cursor made for another ordering is refused, not misread.
    let errors = gql
        .errors(
            "query($c: String) { itemConnection(first: 3, after: $c) { nodes { item_id } } }",
            json!({ "c": cursor }),
        )
        .await;
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("message")
            .contains("another orderBy"),
        "{errors:?}"
    );
    let errors = gql.errors(&page(r#"after: "garbage!""#), json!({})).await;
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("message")
            .contains("not a cursor"),
        "{errors:?}"
    );
    // Page size caps.
    let errors = gql.errors(&page("first: 1001"), json!({})).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "PAGE_TOO_LARGE",
        "{errors:?}"
    );
    let errors = gql.errors(&page("last: -1"), json!({})).await;
    assert!(!errors.is_empty());
    // Filter operators compose.
    let data = gql
        .data(
            &page(r#"filter: { or: [{ grp: { eq: 0 } }, { item_id: { contains: "0004" } }], not: { value: { lt: 10 } } }"#),
            json!({}),
        )
        .await;
    assert_eq!(
        ids(data["itemConnection"]["nodes"].as_array().expect("nodes")),
        [
            "i00010", "i00020", "i00030", "i00040", "i00041", "i00042", "i00043", "i00044",
            "i00045", "i00046", "i00047", "i00048", "i00049"
        ]
    );
    let data = gql
        .data(
            "{ itemConnection(filter: { value: { isNull: true } }) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(data["itemConnection"]["totalCount"], 0);
    node.stop();
}
