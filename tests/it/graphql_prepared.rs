//! Prepared key lookups (`src/api/graphql/prepared.rs`) through the real
//! server: a query of a shape the executor answered before is answered
//! from a plan, and that answer must be the executor's, byte for byte.
//!
//! The oracle: the same query with `@include(if: true)` on each lookup.
//! It means the same, but a directive keeps it off the prepared path, so
//! the executor always answers it (the plain query has spaces where the
//! directive is, so error locations match too). Each request is compared with its
//! oracle as raw HTTP bodies, for every role of the example products (masks,
//! row filters, no right), keys present, absent and hidden, the key
//! written in the text and passed in `variables`, string and int keys.
//! `meshlet_graphql_prepared_total` shows which path answered.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use common::graphql::{start, workdir, Gql, SENSOR};
use common::{copy_examples, create_token, NodeBuilder, NodeProcess};

const CONFIG: &str = "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n";

/// A product with an int key, next to the examples.
const COUNTER: &str = r#"
product: plc_counter
version: 1
domain: test
owner: test@example.com
key: counter_id
fields:
  counter_id: { type: int, required: true }
  count:      { type: int }
  label:      { type: string, classification: pii }
  rate:       { type: float }
  ok:         { type: bool }
  at:         { type: timestamp }
  extra:      { type: json }
sources:
  - http: { format: json }
access:
  operator:
    read: true
    where: "count > 10"
    mask: { label: redact }
  analyst:
    read: true
    mask: { label: hash, rate: null }
"#;

/// Roles with tokens (token name = role name). `reader` is built in.
const ROLES: [&str; 10] = [
    "operator",
    "analyst",
    "admin",
    "technician",
    "support",
    "dpo",
    "facility",
    "billing",
    "poller",
    "reader",
];

struct Fixture {
    lookup: &'static str,
    key: &'static str,
    key_type: &'static str,
    selection: &'static str,
    /// Keys as JSON values: present, hidden by some row filter, absent.
    keys: &'static [&'static str],
}

const FIXTURES: [Fixture; 4] = [
    Fixture {
        lookup: "machineHealth",
        key: "machine_id",
        key_type: "String",
        selection: "machine_id site temperature_c status operator_email",
        keys: &[r#""PR-0001""#, r#""PR-0002""#, r#""PR-9999""#],
    },
    Fixture {
        lookup: "customerAsset",
        key: "asset_id",
        key_type: "String",
        selection: "asset_id customer_name email phone contract contract_value notes site_postcode",
        keys: &[r#""ABC00000001""#, r#""ABC00000002""#, r#""ZZZ""#],
    },
    Fixture {
        lookup: "energyMeter",
        key: "meter_id",
        key_type: "String",
        selection: "meter_id energy_kwh voltage_v power_factor tariff __typename",
        keys: &[r#""M-0001""#, r#""M-9""#],
    },
    Fixture {
        lookup: "plcCounter",
        key: "counter_id",
        key_type: "Long",
        selection: "counter_id count label rate ok at extra",
        keys: &["1", "42", "-7"],
    },
];

/// A raw GraphQL POST: status and body text, unparsed.
async fn send(
    client: &reqwest::Client,
    node: &NodeProcess,
    token: &str,
    body: &Value,
) -> (u16, String) {
    let response = client
        .post(node.url("/graphql"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("GraphQL request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// What sets the oracle apart: a directive, or as many spaces, so that
/// error locations are the same in both texts.
fn directive(oracle: bool) -> &'static str {
    if oracle {
        " @include(if: true)"
    } else {
        "                   "
    }
}

/// The query of `fixture` for `key`: the key in the text, or in
/// `variables`; with `@include(if: true)` for the oracle.
fn request(fixture: &Fixture, key: &str, in_variables: bool, oracle: bool) -> Value {
    let directive = directive(oracle);
    if in_variables {
        json!({
            "query": format!(
                "query Lookup($k: {}!) {{ {}({}: $k){directive} {{ {} }} }}",
                fixture.key_type, fixture.lookup, fixture.key, fixture.selection
            ),
            "variables": { "k": serde_json::from_str::<Value>(key).expect("key is JSON") },
        })
    } else {
        json!({
            "query": format!(
                "{{ {}({}: {key}){directive} {{ {} }} }}",
                fixture.lookup, fixture.key, fixture.selection
            ),
        })
    }
}

async fn seed(gql: &Gql) {
    for input in [
        r#"upsertMachineHealth(input: {machine_id: "PR-0001", site: berlin, temperature_c: 21.26, status: ok, operator_email: "alice@example.com"}) { machine_id }"#,
        r#"upsertMachineHealth(input: {machine_id: "PR-0002", site: lyon, temperature_c: 30.74, status: warn, operator_email: "bob@example.com"}) { machine_id }"#,
        r#"upsertCustomerAsset(input: {asset_id: "ABC00000001", model: "M1", customer_id: 1, customer_name: "Alice Smith", email: "alice@example.com", phone: "+49 30 1234567", contract: basic, contract_value: 1180.0, notes: "vip", site_postcode: "10115"}) { asset_id }"#,
        r#"upsertCustomerAsset(input: {asset_id: "ABC00000002", model: "M2", customer_id: 2, customer_name: "Bob Jones", email: "bob@example.com", phone: "+33 1 7654321", contract: none, contract_value: 1234.0, notes: "late payer", site_postcode: "69001"}) { asset_id }"#,
        r#"upsertEnergyMeter(input: {meter_id: "M-0001", read_at: "2026-01-01T00:00:00Z", energy_kwh: 100.5, power_kw: 2.5, voltage_v: 230.1, power_factor: 0.95, tariff: peak}) { meter_id }"#,
        r#"upsertPlcCounter(input: {counter_id: 1, count: 50, label: "line 1", rate: 0.5, ok: true, at: "2026-01-01T00:00:00Z", extra: {a: [1, "x"]}}) { counter_id }"#,
        r#"upsertPlcCounter(input: {counter_id: 42, count: 3, label: "line 42"}) { counter_id }"#,
    ] {
        gql.data(&format!("mutation {{ {input} }}"), json!({}))
            .await;
    }
}

/// A secured node on the examples and the counter, seeded, with a token
/// per role.
struct Secured {
    node: NodeProcess,
    tokens: Vec<(&'static str, String)>,
    /// GraphQL as `admin` (for seeding and metrics).
    admin: Gql,
    /// Dropped last: the node stops before its directory goes.
    _dir: tempfile::TempDir,
}

impl Secured {
    fn token(&self, role: &str) -> String {
        let found = self.tokens.iter().find(|(r, _)| *r == role);
        found.expect("a token per role").1.clone()
    }
}

async fn secured_examples() -> Secured {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::write(dir.path().join("schema/examples/plc_counter.yaml"), COUNTER).expect("counter");
    std::fs::write(dir.path().join("meshlet.toml"), CONFIG).expect("config");
    let tokens = ROLES
        .iter()
        .map(|role| (*role, create_token(dir.path(), role, role)))
        .collect();
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let mut secured = Secured {
        _dir: dir,
        admin: Gql::new(&node),
        node,
        tokens,
    };
    secured.admin = secured.admin.with_token(&secured.token("admin"));
    seed(&secured.admin).await;
    secured
}

fn has_errors(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .map(|v| v.get("errors").is_some())
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_answer_is_the_executors_for_every_role_and_key() {
    let secured = secured_examples().await;
    let (node, admin) = (&secured.node, &secured.admin);
    let token = |role: &str| secured.token(role);
    let client = reqwest::Client::new();
    let prepared = || admin.metric("meshlet_graphql_prepared_total");
    let denied = || admin.metric("meshlet_access_denied_total");

    let mut learned = HashSet::new();
    let (mut answered, mut refused) = (0, 0);
    for (f, fixture) in FIXTURES.iter().enumerate() {
        for role in ROLES {
            let token = token(role);
            for key in fixture.keys {
                for in_variables in [false, true] {
                    let what = format!(
                        "{role}: {}({key}), variables: {in_variables}",
                        fixture.lookup
                    );
                    let oracle = send(
                        &client,
                        node,
                        &token,
                        &request(fixture, key, in_variables, true),
                    )
                    .await;
                    let plain = request(fixture, key, in_variables, false);
                    let (before, denied_before) = (prepared().await, denied().await);
                    let first = send(&client, node, &token, &plain).await;
                    let second = send(&client, node, &token, &plain).await;
                    let (after, denied_after) = (prepared().await, denied().await);
                    assert_eq!(first, oracle, "{what}: first answer");
                    assert_eq!(second, oracle, "{what}: second answer");
                    let by_plan = after.unwrap_or(0.0) - before.unwrap_or(0.0);
                    if has_errors(&oracle.1) {
                        assert_eq!(by_plan, 0.0, "{what}: an error is the executor's");
                        if oracle.1.contains("FORBIDDEN") {
                            refused += 1;
                            assert_eq!(
                                denied_after.unwrap_or(0.0) - denied_before.unwrap_or(0.0),
                                2.0,
                                "{what}: each refusal counted once"
                            );
                        }
                    } else {
                        // The first request of a shape teaches it; every
                        // later one of any key and role is prepared.
                        let shape = (f, in_variables);
                        let expected = if learned.insert(shape) { 1.0 } else { 2.0 };
                        assert_eq!(by_plan, expected, "{what}: answered from the plan");
                        answered += 1;
                    }
                }
            }
        }
    }
    assert!(
        answered >= 100 && refused >= 100,
        "{answered} answered, {refused} refused"
    );

    // Several lookups in one document: aliases, `__typename`, the same
    // product twice, a key in the text next to one in variables.
    let many = |oracle: bool| {
        let d = directive(oracle);
        json!({
            "query": format!(
                "query Many($m: String!) {{ first: machineHealth(machine_id: \"PR-0001\"){d} {{ __typename id: machine_id temperature_c }} \
                 second: machineHealth(machine_id: $m){d} {{ status operator_email }} \
                 plcCounter(counter_id: 1){d} {{ kind: __typename count label extra }} }}"
            ),
            "variables": { "m": "PR-0002" },
            "operationName": "Many",
        })
    };
    for role in ["admin", "operator", "analyst", "reader", "billing"] {
        let token = token(role);
        let oracle = send(&client, node, &token, &many(true)).await;
        for _ in 0..2 {
            assert_eq!(
                send(&client, node, &token, &many(false)).await,
                oracle,
                "{role}: many"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plan_cannot_answer_gets_the_executors_error() {
    let secured = secured_examples().await;
    let (node, admin) = (&secured.node, &secured.admin);
    let token = |role: &str| secured.token(role);
    let client = reqwest::Client::new();
    let admin_token = token("admin");

    let machine = "query Lookup($k: String!) { machineHealth(machine_id: $k)DIRECTIVE { machine_id status } }";
    let counter =
        "query Lookup($k: Long!) { plcCounter(counter_id: $k)DIRECTIVE { counter_id count } }";
    let counter_text = "{ plcCounter(counter_id: KEY)DIRECTIVE { counter_id count } }";
    let machine_text = "{ machineHealth(machine_id: KEY)DIRECTIVE { machine_id status } }";
    let body = |query: &str, oracle: bool, variables: Value, operation: Value| {
        let query = query.replace("DIRECTIVE", directive(oracle));
        json!({ "query": query, "variables": variables, "operationName": operation })
    };
    // Teach each shape with a good request first.
    for (query, good) in [
        (machine.to_string(), json!({"k": "PR-0001"})),
        (counter.to_string(), json!({"k": 1})),
        (counter_text.replace("KEY", "1"), json!({})),
        (machine_text.replace("KEY", "\"PR-0001\""), json!({})),
    ] {
        for _ in 0..2 {
            let (status, text) = send(
                &client,
                node,
                &admin_token,
                &body(&query, false, good.clone(), Value::Null),
            )
            .await;
            assert_eq!(status, 200);
            assert!(!has_errors(&text), "{query}: {text}");
        }
    }
    let prepared = || admin.metric("meshlet_graphql_prepared_total");
    let long_key = format!("\"{}\"", "k".repeat(5_000));
    let cases: Vec<(String, Value, Value, &str)> = vec![
        (
            machine.into(),
            json!({"k": 5}),
            Value::Null,
            "a number for a String! key",
        ),
        (
            machine.into(),
            json!({}),
            Value::Null,
            "the variable missing",
        ),
        (
            machine.into(),
            json!({"k": null}),
            Value::Null,
            "the variable null",
        ),
        (
            machine.into(),
            json!({"k": "PR-0001"}),
            json!("Other"),
            "another operation name",
        ),
        (
            machine.into(),
            json!({"k": ""}),
            Value::Null,
            "an empty key",
        ),
        (
            counter.into(),
            json!({"k": "one"}),
            Value::Null,
            "a non-decimal string for a Long! key",
        ),
        (
            counter.into(),
            json!({"k": 1.5}),
            Value::Null,
            "a float for a Long! key",
        ),
        (
            counter.into(),
            json!({"k": 18446744073709551615u64}),
            Value::Null,
            "beyond i64",
        ),
        (
            counter_text.replace("KEY", "99999999999999999999"),
            json!({}),
            Value::Null,
            "a literal beyond i64",
        ),
        (
            machine_text.replace("KEY", &long_key),
            json!({}),
            Value::Null,
            "a long key, a long text",
        ),
    ];
    for (query, variables, operation, what) in cases {
        let oracle = send(
            &client,
            node,
            &admin_token,
            &body(&query, true, variables.clone(), operation.clone()),
        )
        .await;
        let before = prepared().await;
        let answer = send(
            &client,
            node,
            &admin_token,
            &body(&query, false, variables, operation),
        )
        .await;
        assert_eq!(prepared().await, before, "{what}: not from the plan");
        assert_eq!(answer, oracle, "{what}");
        assert!(
            has_errors(&answer.1) || what.starts_with("a long key"),
            "{what}: {}",
            answer.1
        );
    }
    // The matching operation name is prepared.
    let before = prepared().await.unwrap_or(0.0);
    let oracle = send(
        &client,
        node,
        &admin_token,
        &body(machine, true, json!({"k": "PR-0002"}), json!("Lookup")),
    )
    .await;
    let answer = send(
        &client,
        node,
        &admin_token,
        &body(machine, false, json!({"k": "PR-0002"}), json!("Lookup")),
    )
    .await;
    assert_eq!(answer, oracle);
    assert_eq!(prepared().await.unwrap_or(0.0), before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_forgets_the_plans_of_the_old_schema() {
    let dir = workdir(&[("sensor", SENSOR)], "");
    let node = start(dir.path());
    let gql = Gql::new(&node);
    gql.data(
        r#"mutation { upsertSensor(input: {sensor_id: "s1", temp: 21.5, email: "a@example.com"}) { sensor_id } }"#,
        json!({}),
    )
    .await;
    let query = r#"{ sensor(sensor_id: "s1") { sensor_id temp email } }"#;
    let prepared = || gql.metric("meshlet_graphql_prepared_total");
    for _ in 0..2 {
        let data = gql.data(query, json!({})).await;
        assert_eq!(data["sensor"]["email"], "a@example.com");
    }
    let learned = prepared().await.unwrap_or(0.0);
    assert_eq!(learned, 1.0, "the second lookup came from the plan");

    // The new definition drops `email`: the old plan must not answer.
    let without_email: String = SENSOR
        .lines()
        .filter(|l| !l.trim_start().starts_with("email:"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("products/sensor.yaml"), without_email).expect("write");
    gql.until(
        Duration::from_secs(15),
        "{ schemaStatus { generation } }",
        |d| d["schemaStatus"]["generation"] == 2,
    )
    .await;
    let errors = gql.errors(query, json!({})).await;
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("email"),
        "{errors:?}"
    );
    assert_eq!(prepared().await.unwrap_or(0.0), learned);
    let fresh = r#"{ sensor(sensor_id: "s1") { sensor_id temp } }"#;
    for _ in 0..2 {
        assert_eq!(gql.data(fresh, json!({})).await["sensor"]["temp"], 21.5);
    }
    assert_eq!(prepared().await.unwrap_or(0.0), learned + 1.0);
}
