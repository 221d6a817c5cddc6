//! Hostile GraphQL requests get a clear error, never a crash, and the
//! server keeps answering everyone else: depth bombs, alias and field
//! floods, huge pages, oversized queries and bodies, malformed JSON, the
//! wrong content type, batches, and the same over WebSocket.

use crate::common;

use std::time::Duration;

use common::graphql::{start, workdir, Gql, Protocol, Subscriber, SENSOR};
use serde_json::{json, Value};

/// The introspection query GraphiQL sends (graphql-js
/// `getIntrospectionQuery`): it must pass the limits.
const INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
}
"#;

/// The first error's code and message of a refused request body.
fn first_error(body: &Value) -> (String, String) {
    let error = &body["errors"][0];
    (
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        error["message"].as_str().unwrap_or_default().to_string(),
    )
}

async fn still_answers(gql: &Gql) {
    let data = gql.data("{ products { name } }", json!({})).await;
    assert_eq!(data["products"][0]["name"], "sensor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_get_clear_errors_and_the_server_keeps_answering() {
    let dir = workdir(&[("sensor", SENSOR)], "[http]\ngraphiql = false\n");
    let node = start(dir.path());
    let gql = Gql::new(&node);

    // GraphiQL's own introspection passes the limits.
    let data = gql.data(INTROSPECTION, json!({})).await;
    assert_eq!(data["__schema"]["queryType"]["name"], "Query");

    // Depth bomb, as text: refused before the parser recurses into it.
    let bomb = format!("{{{}}}", "products {".repeat(5_000) + &"}".repeat(5_000));
    let (status, body) = gql.post(&bomb, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(first_error(&body).0, "QUERY_TOO_DEEP", "{body}");
    still_answers(&gql).await;

    // Depth bomb through types that really nest (introspection).
    let deep = format!(
        "{{ __schema {{ types {{ {} name {} }} }} }}",
        "fields { type { ofType { ".repeat(7),
        "} } } ".repeat(7)
    );
    let errors = gql.errors(&deep, json!({})).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "QUERY_TOO_DEEP",
        "{errors:?}"
    );
    assert!(errors[0]["message"]
        .as_str()
        .expect("message")
        .contains("20 levels"));

    // Alias flood.
    let flood = format!(
        "{{ {} }}",
        (0..1_000)
            .map(|i| format!("a{i}: products {{ name }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let errors = gql.errors(&flood, json!({})).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "TOO_MANY_ALIASES",
        "{errors:?}"
    );
    assert!(errors[0]["message"]
        .as_str()
        .expect("message")
        .contains("1000 aliases"));

    // The same field over and over (what overlap validation is quadratic in).
    let fields = format!("{{ products {{ {} }} }}", "name ".repeat(5_000));
    let errors = gql.errors(&fields, json!({})).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "TOO_MANY_FIELDS",
        "{errors:?}"
    );

    // Many cheap fields through fragments: complexity.
    let fragments = format!(
        "{{ {} }} fragment G on SchemaStatus {{ {} }}",
        (0..45)
            .map(|i| format!("x{i}: schemaStatus {{ ...G }}"))
            .collect::<Vec<_>>()
            .join(" "),
        "generation problems products loadedAt ".repeat(10)
    );
    let errors = gql.errors(&fragments, json!({})).await;
    assert_eq!(
        errors[0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{errors:?}"
    );

    // Pages of pages: each page is allowed, their product is not.
    let errors = gql
        .errors(
            "{ sensorConnection(first: 1000) { nodes { history(first: 1000) { nodes { version } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        errors[0]["extensions"]["code"], "QUERY_TOO_COSTLY",
        "{errors:?}"
    );

    // The same text with variables: parsed documents are kept by text,
    // and the cost is still judged with each request's own variables.
    let paged = "query P($outer: Int, $inner: Int) { sensorConnection(first: $outer) { nodes { history(first: $inner) { nodes { version } } } } }";
    for _ in 0..2 {
        let errors = gql
            .errors(paged, json!({"outer": 1000, "inner": 1000}))
            .await;
        assert_eq!(
            errors[0]["extensions"]["code"], "QUERY_TOO_COSTLY",
            "{errors:?}"
        );
        gql.data(paged, json!({"outer": 2, "inner": 2})).await;
    }

    // A huge page.
    let errors = gql
        .errors(
            "{ sensorConnection(first: 100000) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        errors[0]["extensions"]["code"], "PAGE_TOO_LARGE",
        "{errors:?}"
    );
    assert!(errors[0]["message"]
        .as_str()
        .expect("message")
        .contains("at most 1000"));
    still_answers(&gql).await;

    // A filter nested deep through variables (the query text is flat).
    let mut filter = json!({ "temp": { "gt": 1 } });
    for _ in 0..100 {
        filter = json!({ "not": filter });
    }
    let errors = gql
        .errors(
            "query($f: SensorFilter) { sensorConnection(filter: $f) { totalCount } }",
            json!({ "f": filter }),
        )
        .await;
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("message")
            .contains("deeper than"),
        "{errors:?}"
    );
    let mut nested = String::from("1");
    for _ in 0..10_000 {
        nested = format!("[{nested}]");
    }
    let raw =
        format!(r#"{{"query": "{{ products {{ name }} }}", "variables": {{ "x": {nested} }}}}"#);
    let (status, body) = gql.post_raw("application/json", raw.into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("MALFORMED_JSON"), "{body}");

    // A 100 KB query (under the body limit): the query limit.
    let long = format!("{{ products {{ name }} }} #{}", "x".repeat(100_000));
    let (status, body) = gql.post(&long, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(first_error(&body).0, "QUERY_TOO_LARGE", "{body}");

    // A 1 MB query: refused by size before it is read whole.
    let huge = format!("{{ products {{ name }} }} #{}", "x".repeat(1 << 20));
    let (status, body) = gql
        .post_raw(
            "application/json",
            serde_json::to_vec(&json!({ "query": huge })).expect("json"),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a GraphQL-shaped error");
    assert_eq!(first_error(&body).0, "BODY_TOO_LARGE");

    // Malformed JSON, a non-request, a batch, the wrong content type.
    for (content_type, raw, status, code) in [
        (
            "application/json",
            &b"{\"query\": \"{ products { name } }\""[..],
            400,
            "MALFORMED_JSON",
        ),
        (
            "application/json",
            &b"{\"nope\": 1}"[..],
            400,
            "BAD_REQUEST",
        ),
        (
            "application/json",
            &b"[{\"query\": \"{ products { name } }\"}]"[..],
            400,
            "BATCHING_DISABLED",
        ),
        (
            "text/plain",
            &b"{\"query\": \"{ products { name } }\"}"[..],
            415,
            "UNSUPPORTED_CONTENT_TYPE",
        ),
        (
            "application/x-www-form-urlencoded",
            &b"query=%7Bproducts%7Bname%7D%7D"[..],
            415,
            "UNSUPPORTED_CONTENT_TYPE",
        ),
    ] {
        let (got, body) = gql.post_raw(content_type, raw.to_vec()).await;
        assert_eq!(got, status, "{content_type}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a GraphQL-shaped error");
        let (got_code, message) = first_error(&body);
        assert_eq!(got_code, code, "{body}");
        assert!(!message.is_empty());
    }
    // Syntax errors and unknown fields are ordinary GraphQL errors.
    let errors = gql.errors("{ products { name ", json!({})).await;
    assert!(!errors.is_empty());
    let errors = gql.errors("{ nope }", json!({})).await;
    assert!(errors[0]["message"]
        .as_str()
        .expect("message")
        .contains("nope"));

    // Over WebSocket: the same limits; no subprotocol: a clear refusal.
    let mut subscriber = Subscriber::start(&node, Protocol::TransportWs, &flood, json!({})).await;
    let payload = subscriber.next_or_error(Duration::from_secs(10)).await;
    let errors = if payload.is_array() {
        payload.clone()
    } else {
        payload["errors"].clone()
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "TOO_MANY_ALIASES",
        "{payload}"
    );
    let (status, body) = gql.get("/graphql/ws").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("WebSocket"), "{body}");

    // GraphiQL is off in this config.
    let (status, body) = gql.graphiql().await;
    assert_eq!(status, 404);
    assert!(body.contains("http.graphiql"), "{body}");

    // Refusals are counted, and the node is still fine.
    let refused = gql
        .metric("meshlet_graphql_requests_total{outcome=\"refused\"}")
        .await;
    assert!(refused.unwrap_or(0.0) >= 6.0, "{refused:?}");
    still_answers(&gql).await;
    let (status, _) = node.stop();
    assert!(status.success());
}
