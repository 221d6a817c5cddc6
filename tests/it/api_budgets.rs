//! The `[api]` budgets against the real binary: response bytes (the
//! quarantine listing pages by bytes, GraphQL refuses with
//! `RESPONSE_TOO_LARGE`, raw payloads count in the query cost),
//! concurrent queries per identity (held by clients that do not read
//! their answers; the next one of that identity is refused with 429,
//! another identity is not), and subscriptions per connection and per
//! identity. Every cap is checked by its effect, never by timing.

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::graphql::{workdir, Gql, Protocol, Subscriber};
use common::*;
use serde_json::{json, Value};

const NOTE: &str = r#"
product: note
version: 1
domain: test
owner: test@example.com
key: id
fields:
  id:    { type: string, required: true }
  text:  { type: string }
  level: { type: int }
sources:
  - mqtt: { topic: "notes/{id}", format: json }
  - http: { format: ndjson }
quality: { on_invalid: quarantine }
"#;

const DEADLINE: Duration = Duration::from_secs(30);

fn start_node(dir: &std::path::Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts")
}

/// `n` payloads of about 60 KB that fail validation (`level` is not an
/// int), published with QoS 1: each is quarantined before its PUBACK.
fn quarantine_payloads(node: &NodeProcess, n: usize) {
    let port = node.mqtt.expect("embedded broker").port();
    for i in 0..n {
        let payload = format!("{{\"level\": \"{}\"}}", "x".repeat(60_000));
        let out = mosquitto_pub(port, &format!("notes/n{i}"), payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// Reads the refusal of one subscription on `subscriber` (the errors of
/// its first result, or of an `error` message) and returns its id.
async fn refusal(subscriber: &mut Subscriber, cap: &str) -> String {
    let message = subscriber.message(DEADLINE).await;
    let errors = match message["type"].as_str() {
        Some("error") => &message["payload"],
        Some("next") => &message["payload"]["errors"],
        _ => panic!("expected a refusal, got {message}"),
    };
    assert_eq!(code(errors), "TOO_MANY_SUBSCRIPTIONS", "{message}");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(cap)),
        "{message}"
    );
    message["id"].as_str().unwrap_or("").to_string()
}

/// The start of a (possibly huge) answer, for assertion messages.
fn short(body: &Value) -> String {
    body.to_string().chars().take(300).collect()
}

fn code(errors: &Value) -> &str {
    errors[0]["extensions"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stop_at_the_byte_budget_and_payloads_count_in_the_cost() {
    let dir = workdir(
        &[("note", NOTE)],
        "[api]\nmax_response_bytes = 1048576\n[ingest]\nmax_payload_bytes = 8388608\n",
    );
    let node = start_node(dir.path());
    tokio::task::block_in_place(|| quarantine_payloads(&node, 40));
    let gql = Gql::new(&node);

    // REST: a page of 1000 stops under 1 MiB with a cursor; following the
    // cursor lists every entry exactly once.
    let mut seen = Vec::new();
    let mut after: Option<u64> = None;
    let mut pages = 0;
    loop {
        let path = match after {
            Some(id) => format!("/quarantine/note?limit=1000&after={id}"),
            None => "/quarantine/note?limit=1000".to_string(),
        };
        let (status, body) = gql.get(&path).await;
        assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
        assert!(
            body.len() <= 1_048_576,
            "a quarantine page of {} bytes",
            body.len()
        );
        let page: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(page["total"], 40);
        let entries = page["entries"].as_array().expect("entries");
        seen.extend(entries.iter().map(|e| e["id"].as_u64().expect("id")));
        pages += 1;
        if page["byte_limited"] == json!(true) {
            after = page["next_after"].as_u64();
            assert!(after.is_some(), "a cut page has a cursor");
        } else {
            break;
        }
    }
    assert!(
        pages >= 3,
        "40 payloads of 60 KB take several pages of 1 MiB"
    );
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (40, 40), "each entry once");

    // GraphQL: two aliases of 40 payloads are charged before they are
    // built; a page of 1000 payloads is refused by its cost; the output of
    // payloads in two encodings is capped after execution.
    let page = |alias: &str, first: usize, fields: &str| {
        format!("{alias}: quarantine(product: \"note\", first: {first}) {{ edges {{ node {{ {fields} }} }} }}")
    };
    let (status, body) = gql
        .post(
            &format!(
                "{{ {} {} }}",
                page("a", 40, "payload"),
                page("b", 40, "payload")
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(&body["errors"]),
        "RESPONSE_TOO_LARGE",
        "{}",
        short(&body)
    );
    let errors = gql
        .errors(
            &format!("{{ {} }}", page("q", 1000, "payloadBase64")),
            json!({}),
        )
        .await;
    assert_eq!(code(&Value::from(errors)), "QUERY_TOO_COSTLY");
    let (status, body) = gql
        .post(
            &format!("{{ {} }}", page("q", 12, "payload payloadBase64")),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(&body["errors"]),
        "RESPONSE_TOO_LARGE",
        "{}",
        short(&body)
    );
    assert!(
        body["data"].is_null(),
        "nothing of a refused answer is sent"
    );
    // Payloads are charged as they are read, selected or not: a page
    // that fits the budget is answered.
    let data = gql
        .data(&format!("{{ {} }}", page("q", 10, "reasons")), json!({}))
        .await;
    assert_eq!(data["q"]["edges"].as_array().map(Vec::len), Some(10));
    // History: 30 past records of 60 KB are over the budget, 5 are not.
    let body: String = (0..30)
        .map(|i| {
            format!(
                "{{\"id\": \"h\", \"level\": {i}, \"text\": \"{}\"}}\n",
                "h".repeat(60_000)
            )
        })
        .collect();
    let url = node.url("/ingest/note");
    let (status, answer) = tokio::task::spawn_blocking(move || {
        http_post(&url, "application/x-ndjson", body.into_bytes())
    })
    .await
    .expect("push");
    assert_eq!(status, 200, "{answer}");
    let history = |first: usize| {
        format!("{{ note(id: \"h\") {{ history(first: {first}) {{ nodes {{ values {{ level text }} }} }} }} }}")
    };
    let (_, body) = gql.post(&history(30), json!({})).await;
    assert_eq!(
        code(&body["errors"]),
        "RESPONSE_TOO_LARGE",
        "{}",
        short(&body)
    );
    let data = gql.data(&history(5), json!({})).await;
    assert_eq!(
        data["note"]["history"]["nodes"].as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(
        gql.metric("meshlet_api_refused_total{reason=\"response_too_large\"}")
            .await
            .map(|n| n >= 4.0),
        Some(true)
    );
}

/// POSTs `query` on a raw connection and never reads the answer: the
/// node cannot finish writing a large one, so the query's slot stays
/// taken while the connection is open.
fn post_and_never_read(node: &NodeProcess, query: &str) -> std::net::TcpStream {
    let body = json!({ "query": query }).to_string();
    let mut socket = std::net::TcpStream::connect(node.http).expect("connect");
    write!(
        socket,
        "POST /graphql HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        node.http,
        body.len()
    )
    .expect("send the request");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_are_budgeted_per_identity() {
    let dir = workdir(
        &[("note", NOTE)],
        "[api]\nmax_concurrent_queries = 2\nqueue_timeout = \"200ms\"\nmax_response_bytes = 134217728\n[ingest]\nmax_payload_bytes = 8388608\n",
    );
    let token = create_token(dir.path(), "admin", "ops");
    let node = start_node(dir.path());
    // 400 notes of 60 KB: a page of all of them is a 24 MB answer.
    for batch in 0..4 {
        let body: String = (0..100)
            .map(|i| {
                format!(
                    "{{\"id\": \"n{}\", \"text\": \"{}\"}}\n",
                    batch * 100 + i,
                    "t".repeat(60_000)
                )
            })
            .collect();
        let url = node.url("/ingest/note");
        let (status, answer) = tokio::task::spawn_blocking(move || {
            http_post(&url, "application/x-ndjson", body.into_bytes())
        })
        .await
        .expect("push");
        assert_eq!(status, 200, "{answer}");
    }
    let big = "{ noteConnection(first: 400) { nodes { id text } } }";
    let held = [
        post_and_never_read(&node, big),
        post_and_never_read(&node, big),
    ];
    let anonymous = Gql::new(&node);
    let small = "{ products { name } }";
    // Both slots of the anonymous identity are taken by answers nobody
    // reads: a third anonymous query is refused once they hold them.
    let end = Instant::now() + DEADLINE;
    let refused = loop {
        let (status, body) = anonymous.post(small, json!({})).await;
        if status == 429 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < end,
            "a third query of the same identity was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code(&refused["errors"]), "TOO_MANY_CONCURRENT_QUERIES");
    // The WebSocket is no way around the budget: a query sent there by
    // the same identity is refused too.
    let mut socket = Subscriber::start(&node, Protocol::TransportWs, small, json!({})).await;
    let answer = socket.next_or_error(DEADLINE).await;
    let errors = if answer.is_array() {
        &answer
    } else {
        &answer["errors"]
    };
    assert_eq!(code(errors), "TOO_MANY_CONCURRENT_QUERIES", "{answer}");
    // Another identity has its own budget.
    let (status, body) = anonymous.with_token(&token).post(small, json!({})).await;
    assert_eq!(status, 200, "{body}");
    // The clients go away: their slots come free.
    drop(held);
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, _) = anonymous.post(small, json!({})).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < end, "the slots never came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(anonymous
        .metric("meshlet_api_refused_total{reason=\"concurrent_queries\"}")
        .await
        .is_some_and(|n| n >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_per_connection_and_per_identity() {
    let dir = workdir(
        &[("note", NOTE)],
        "[api]\nmax_subscriptions_per_connection = 3\nmax_subscriptions_per_identity = 4\n",
    );
    let node = start_node(dir.path());
    let gql = Gql::new(&node);
    let changes = "subscription { noteChanges { entity } }";
    let mut first = Subscriber::start(&node, Protocol::TransportWs, changes, json!({})).await;
    first.subscribe_more("2", changes).await;
    first.subscribe_more("3", changes).await;
    first.subscribe_more("4", changes).await;
    // The four start concurrently: which one is over the cap is not fixed,
    // that one of them is, is.
    let refused = refusal(&mut first, "per connection").await;
    let mut admitted: Vec<String> = ["1", "2", "3", "4"]
        .into_iter()
        .filter(|id| *id != refused)
        .map(str::to_string)
        .collect();

    // A second connection of the same (anonymous) caller: one more fits
    // the caller's cap of 4, the other does not.
    let mut second = Subscriber::start(&node, Protocol::TransportWs, changes, json!({})).await;
    second.subscribe_more("2", changes).await;
    let refused_second = refusal(&mut second, "per caller").await;
    let admitted_second = if refused_second == "1" { "2" } else { "1" };

    // The four admitted subscriptions work.
    gql.wait_subscriptions("note", 4).await;
    let url = node.url("/ingest/note");
    let (status, _) = tokio::task::spawn_blocking(move || {
        http_post(
            &url,
            "application/x-ndjson",
            b"{\"id\": \"n1\", \"level\": 1}\n".to_vec(),
        )
    })
    .await
    .expect("push");
    assert_eq!(status, 200);
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let next = first.message(DEADLINE).await;
        if next["type"] == "complete" {
            continue;
        }
        assert_eq!(next["type"], "next", "{next}");
        assert!(next["payload"]["errors"].is_null(), "{next}");
        ids.push(next["id"].as_str().unwrap_or("").to_string());
    }
    ids.sort();
    admitted.sort();
    assert_eq!(ids, admitted);
    loop {
        let next = second.message(DEADLINE).await;
        if next["type"] == "complete" {
            continue;
        }
        assert_eq!(
            (next["type"].as_str(), next["id"].as_str()),
            (Some("next"), Some(admitted_second)),
            "{next}"
        );
        break;
    }
    assert_eq!(
        gql.metric("meshlet_api_refused_total{reason=\"subscriptions\"}")
            .await,
        Some(2.0)
    );
}
