//! Access control through the real server: tokens made with the real CLI,
//! a node started on the shipped example products with no anonymous
//! access, and every API path checked for every role: what it may do, and
//! exactly what it sees (masks, row filters), including attempts to learn
//! a masked value by filtering or ordering on it.

use crate::common;

use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::graphql::{Gql, Protocol, Subscriber};
use common::{copy_examples, create_token, run, stderr, stdout, NodeBuilder, NodeProcess};

const CONFIG: &str = "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n";

/// Every role a test token is made for (token name = role name).
const ROLES: [&str; 9] = [
    "operator",
    "analyst",
    "admin",
    "technician",
    "support",
    "dpo",
    "facility",
    "billing",
    "poller",
];

fn secured_node(dir: &Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts")
}

fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::write(dir.path().join("meshlet.toml"), CONFIG).expect("config");
    dir
}

fn is_pseudonym(value: &Value, clear: &str) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s != clear)
}

fn code(errors: &[Value]) -> Option<&str> {
    errors.first()?["extensions"]["code"].as_str()
}

struct Fixture {
    product: &'static str,
    lookup: &'static str,
    list: &'static str,
    key: &'static str,
    selection: &'static str,
    keys: &'static [&'static str],
}

const MACHINE: Fixture = Fixture {
    product: "machine_health",
    lookup: "machineHealth",
    list: "machineHealthConnection",
    key: "machine_id",
    selection: "machine_id site temperature_c status operator_email",
    keys: &["PR-0001", "PR-0002"],
};
const ASSET: Fixture = Fixture {
    product: "customer_asset",
    lookup: "customerAsset",
    list: "customerAssetConnection",
    key: "asset_id",
    selection: "asset_id customer_name email phone contract contract_value notes site_postcode",
    keys: &["ABC00000001", "ABC00000002"],
};
const METER: Fixture = Fixture {
    product: "energy_meter",
    lookup: "energyMeter",
    list: "energyMeterConnection",
    key: "meter_id",
    selection: "meter_id energy_kwh voltage_v power_factor tariff",
    keys: &["M-0001"],
};

async fn seed(admin: &Gql) {
    for input in [
        r#"upsertMachineHealth(input: {machine_id: "PR-0001", site: berlin, temperature_c: 21.26, status: ok, operator_email: "alice@example.com"}) { machine_id }"#,
        r#"upsertMachineHealth(input: {machine_id: "PR-0002", site: lyon, temperature_c: 30.74, status: warn, operator_email: "bob@example.com"}) { machine_id }"#,
        r#"upsertCustomerAsset(input: {asset_id: "ABC00000001", model: "M1", customer_id: 1, customer_name: "Alice Smith", email: "alice@example.com", phone: "+49 30 1111111", contract: basic, contract_value: 1180.0, notes: "vip", site_postcode: "10115"}) { asset_id }"#,
        r#"upsertCustomerAsset(input: {asset_id: "ABC00000001", model: "M1", customer_id: 1, customer_name: "Alice Smith", email: "alice@example.com", phone: "+49 30 1234567", contract: basic, contract_value: 1180.0, notes: "vip", site_postcode: "10115"}) { asset_id }"#,
        r#"upsertCustomerAsset(input: {asset_id: "ABC00000002", model: "M2", customer_id: 2, customer_name: "Bob Jones", email: "bob@example.com", phone: "+33 1 7654321", contract: none, contract_value: 1234.0, notes: "late payer", site_postcode: "69001"}) { asset_id }"#,
        r#"upsertEnergyMeter(input: {meter_id: "M-0001", read_at: "2026-01-01T00:00:00Z", energy_kwh: 100.5, power_kw: 2.5, voltage_v: 230.1, power_factor: 0.95, tariff: peak}) { meter_id }"#,
    ] {
        admin
            .data(&format!("mutation {{ {input} }}"), json!({}))
            .await;
    }
}

/// What `role` must see of `product`: `None` = no read right; else the
/// visible instances, in key order, exactly. `"#hash:<clear>"` stands
/// for the pseudonym of `<clear>`.
fn expected(role: &str, product: &str) -> Option<Vec<Value>> {
    let machine = |email1: &str, email2: &str| {
        vec![
            json!({"machine_id": "PR-0001", "site": "berlin", "temperature_c": 21.26, "status": "ok", "operator_email": email1}),
            json!({"machine_id": "PR-0002", "site": "lyon", "temperature_c": 30.74, "status": "warn", "operator_email": email2}),
        ]
    };
    let asset_clear = vec![
        json!({"asset_id": "ABC00000001", "customer_name": "Alice Smith", "email": "alice@example.com", "phone": "+49 30 1234567", "contract": "basic", "contract_value": 1180.0, "notes": "vip", "site_postcode": "10115"}),
        json!({"asset_id": "ABC00000002", "customer_name": "Bob Jones", "email": "bob@example.com", "phone": "+33 1 7654321", "contract": "none", "contract_value": 1234.0, "notes": "late payer", "site_postcode": "69001"}),
    ];
    let meter = |voltage: Value, pf: Value| {
        vec![
            json!({"meter_id": "M-0001", "energy_kwh": 100.5, "voltage_v": voltage, "power_factor": pf, "tariff": "peak"}),
        ]
    };
    Some(match (product, role) {
        ("machine_health", "operator") => {
            machine("#hash:alice@example.com", "#hash:bob@example.com")
        }
        ("machine_health", "analyst") => vec![
            json!({"machine_id": "PR-0001", "site": "berlin", "temperature_c": 21.5, "status": "ok", "operator_email": "[redacted]"}),
        ],
        ("machine_health", "admin") => machine("alice@example.com", "bob@example.com"),
        ("customer_asset", "technician") => vec![
            json!({"asset_id": "ABC00000001", "customer_name": "***** Smith", "email": "[redacted]", "phone": "**********4567", "contract": "basic", "contract_value": null, "notes": null, "site_postcode": "10115"}),
        ],
        ("customer_asset", "support") => vec![
            json!({"asset_id": "ABC00000001", "customer_name": "Alice Smith", "email": "alice@example.com", "phone": "+49 30 1234567", "contract": "basic", "contract_value": 1200.0, "notes": "[redacted]", "site_postcode": "10115"}),
            json!({"asset_id": "ABC00000002", "customer_name": "Bob Jones", "email": "bob@example.com", "phone": "+33 1 7654321", "contract": "none", "contract_value": 1200.0, "notes": "[redacted]", "site_postcode": "69001"}),
        ],
        ("customer_asset", "analyst") => vec![
            json!({"asset_id": "ABC00000001", "customer_name": "[redacted]", "email": "#hash:alice@example.com", "phone": "[redacted]", "contract": "basic", "contract_value": 1180.0, "notes": null, "site_postcode": "***15"}),
            json!({"asset_id": "ABC00000002", "customer_name": "[redacted]", "email": "#hash:bob@example.com", "phone": "[redacted]", "contract": "none", "contract_value": 1234.0, "notes": null, "site_postcode": "***01"}),
        ],
        ("customer_asset", "dpo" | "admin") => asset_clear,
        ("energy_meter", "facility" | "admin") => meter(json!(230.1), json!(0.95)),
        ("energy_meter", "billing") => meter(Value::Null, Value::Null),
        _ => return None,
    })
}

/// What `role` must see of the fields that differ in the older history
/// event of `key` (`seed` upserts ABC00000001 twice, first with another
/// phone number), or `None` when `key` has one event.
fn older(role: &str, product: &str, key: &str) -> Option<Value> {
    if (product, key) != ("customer_asset", "ABC00000001") {
        return None;
    }
    Some(match role {
        "technician" => json!({"phone": "**********1111"}),
        "analyst" => json!({"phone": "[redacted]"}),
        _ => json!({"phone": "+49 30 1111111"}),
    })
}

/// Compares an answer with an expectation, resolving `#hash:` markers:
/// the pseudonym must look like one, differ from the clear value, and be
/// the same for the same clear value everywhere (`hashes` remembers).
fn assert_seen(
    seen: &Value,
    expected: &Value,
    hashes: &mut std::collections::HashMap<String, String>,
    what: &str,
) {
    let (Some(seen_map), Some(expected_map)) = (seen.as_object(), expected.as_object()) else {
        panic!("{what}: expected an object, got {seen}");
    };
    for (field, want) in expected_map {
        let got = &seen_map[field];
        match want.as_str().and_then(|w| w.strip_prefix("#hash:")) {
            Some(clear) => {
                assert!(
                    is_pseudonym(got, clear),
                    "{what}.{field}: {got} is no pseudonym"
                );
                let known = hashes
                    .entry(clear.to_string())
                    .or_insert_with(|| got.as_str().unwrap_or_default().to_string());
                assert_eq!(
                    got.as_str(),
                    Some(known.as_str()),
                    "{what}.{field}: unstable pseudonym"
                );
            }
            None => assert_eq!(got, want, "{what}.{field}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_of_roles_products_and_paths() {
    let dir = workdir();
    let tokens: Vec<(&str, String)> = ROLES
        .iter()
        .map(|role| (*role, create_token(dir.path(), role, role)))
        .collect();
    let node = secured_node(dir.path());
    let anonymous = Gql::new(&node);
    let client = |role: &str| {
        let token = &tokens.iter().find(|(r, _)| *r == role).expect("role").1;
        anonymous.with_token(token)
    };
    seed(&client("admin")).await;

    let mut hashes = std::collections::HashMap::new();
    for fixture in [&MACHINE, &ASSET, &METER] {
        for role in ROLES {
            let gql = client(role);
            let what = format!("{role} on {}", fixture.product);
            let list = format!(
                "{{ {}(first: 10) {{ totalCount nodes {{ {} }} }} }}",
                fixture.list, fixture.selection
            );
            let Some(expected) = expected(role, fixture.product) else {
                // No read right: every read path is FORBIDDEN, and nothing
                // of the data is in the answer.
                let (status, body) = gql.post(&list, json!({})).await;
                assert_eq!(status, 200, "{what}: {body}");
                assert!(body["data"].is_null(), "{what}: {body}");
                let errors = body["errors"].as_array().expect("errors").clone();
                assert_eq!(code(&errors), Some("FORBIDDEN"), "{what}: {body}");
                let lookup = format!(
                    "{{ {}({}: \"{}\") {{ {} }} }}",
                    fixture.lookup, fixture.key, fixture.keys[0], fixture.selection
                );
                let errors = gql.errors(&lookup, json!({})).await;
                assert_eq!(code(&errors), Some("FORBIDDEN"), "{what} lookup");
                continue;
            };
            // Connection: exactly the visible instances, masked; the total
            // counts only those.
            let data = gql.data(&list, json!({})).await;
            let page = &data[fixture.list];
            assert_eq!(
                page["totalCount"],
                json!(expected.len()),
                "{what} totalCount"
            );
            let nodes = page["nodes"].as_array().expect("nodes");
            assert_eq!(nodes.len(), expected.len(), "{what}: {page}");
            for (seen, want) in nodes.iter().zip(&expected) {
                assert_seen(seen, want, &mut hashes, &what);
            }
            // Lookup of every key: the visible ones as in the list, hidden
            // ones null (not an error: existence does not leak); history
            // masked the same way; the audit names the writer.
            for key in fixture.keys {
                let query = format!(
                    "{{ {}({}: \"{key}\") {{ {sel} history(first: 10) {{ nodes {{ values {{ {sel} }} }} }} audit {{ actor fields }} auditHead auditVerified {{ ok linked }} }} }}",
                    fixture.lookup,
                    fixture.key,
                    sel = fixture.selection
                );
                let data = gql.data(&query, json!({})).await;
                let found = &data[fixture.lookup];
                let want = expected.iter().find(|e| e[fixture.key] == json!(key));
                match want {
                    None => assert!(found.is_null(), "{what}: {key} must be hidden: {found}"),
                    Some(want) => {
                        assert_seen(found, want, &mut hashes, &format!("{what} {key}"));
                        // Every history event, oldest first, masked as the
                        // newest is: the older ones hold other values.
                        let history = found["history"]["nodes"].as_array().expect("history");
                        let mut versions: Vec<Value> = older(role, fixture.product, key)
                            .map(|changed| {
                                let mut version = want.clone();
                                for (field, value) in changed.as_object().expect("object") {
                                    version[field] = value.clone();
                                }
                                version
                            })
                            .into_iter()
                            .collect();
                        versions.push(want.clone());
                        assert_eq!(
                            history.len(),
                            versions.len(),
                            "{what} {key} history: {history:?}"
                        );
                        for (i, (event, version)) in history.iter().zip(&versions).enumerate() {
                            assert_seen(
                                &event["values"],
                                version,
                                &mut hashes,
                                &format!("{what} {key} history event {i}"),
                            );
                        }
                        let audit = found["audit"].as_array().expect("audit");
                        assert!(!audit.is_empty(), "{what} audit");
                        assert!(
                            audit.iter().all(|a| a["actor"] == "admin"),
                            "{what}: {audit:?}"
                        );
                        // The audit chain is there for every role that
                        // sees the instance, and verifies.
                        assert!(
                            found["auditHead"].as_str().is_some_and(|h| h.len() == 64),
                            "{what}: {found}"
                        );
                        assert_eq!(found["auditVerified"]["ok"], true, "{what}: {found}");
                    }
                }
            }
        }
    }
    // The same e-mail gets the same pseudonym in both products (operator
    // on machine_health, analyst on customer_asset): joins still work.
    assert_eq!(hashes.len(), 2, "{hashes:?}");

    // Catalog: only products the role has a right on.
    for (role, products) in [
        ("operator", vec!["machine_health"]),
        ("technician", vec!["customer_asset"]),
        ("poller", vec!["energy_meter"]),
        (
            "admin",
            vec![
                "customer_asset",
                "energy_meter",
                "machine_health",
                "press_line",
                "room_climate",
            ],
        ),
    ] {
        let data = client(role).data("{ products { name } }", json!({})).await;
        let names: Vec<&str> = data["products"]
            .as_array()
            .expect("products")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, products, "{role}");
    }

    // Quarantine holds clear payloads: only clear readers and admin.
    for (role, product, allowed) in [
        ("support", "customer_asset", false),
        ("technician", "customer_asset", false),
        ("dpo", "customer_asset", true),
        ("admin", "customer_asset", true),
        ("operator", "machine_health", false),
        ("admin", "machine_health", true),
        ("facility", "energy_meter", true),
        ("billing", "energy_meter", false),
    ] {
        let query = format!("{{ quarantine(product: \"{product}\") {{ totalCount }} }}");
        let (status, body) = client(role).post(&query, json!({})).await;
        assert_eq!(status, 200);
        match allowed {
            true => assert!(body.get("errors").is_none(), "{role} {product}: {body}"),
            false => {
                let errors = body["errors"].as_array().expect("errors");
                assert_eq!(code(errors), Some("FORBIDDEN"), "{role} {product}");
            }
        }
        let (status, body) = client(role).get(&format!("/quarantine/{product}")).await;
        assert_eq!(
            status,
            if allowed { 200 } else { 403 },
            "{role} {product}: {body}"
        );
    }

    leak_probes(
        &client("analyst"),
        &client("technician"),
        &client("support"),
    )
    .await;
    writes_and_erasures(&node, &client).await;
    subscriptions(&node, &tokens, &client("admin")).await;

    // The erasure's audit line names the DPO's token holder, and no token
    // text is anywhere in the audit.
    let (status, _) = node.stop();
    assert!(status.success());
    let store = common::open_store(&dir.path().join("data"));
    let lines = store
        .audit(
            "customer_asset",
            "ABC00000009",
            &meshlet::store::AuditQuery {
                since: None,
                until: None,
                limit: 100,
            },
        )
        .expect("audit");
    let erased = lines
        .iter()
        .find(|l| l.action == meshlet::store::AuditAction::Erased)
        .unwrap_or_else(|| panic!("no erasure line: {lines:?}"));
    assert_eq!(erased.origin.actor.as_deref(), Some("dpo"));
    let pushed = store
        .audit(
            "customer_asset",
            "ABC00000008",
            &meshlet::store::AuditQuery {
                since: None,
                until: None,
                limit: 100,
            },
        )
        .expect("audit");
    assert_eq!(
        pushed.first().and_then(|l| l.origin.actor.as_deref()),
        Some("support")
    );
    for (_, token) in &tokens {
        assert!(!format!("{lines:?}").contains(token.as_str()));
    }
}

/// The size of a filtered connection, checked against its nodes.
async fn count(gql: &Gql, product: &str, filter: Value) -> u64 {
    let (list, ty) = if product == "machine_health" {
        ("machineHealthConnection", "MachineHealthFilter")
    } else {
        ("customerAssetConnection", "CustomerAssetFilter")
    };
    let data = gql
        .data(
            &format!(
                "query($f: {ty}) {{ {list}(filter: $f) {{ totalCount nodes {{ __typename }} }} }}"
            ),
            json!({ "f": filter }),
        )
        .await;
    let page = &data[list];
    let total = page["totalCount"].as_u64().expect("totalCount");
    assert_eq!(
        page["nodes"].as_array().map(Vec::len),
        Some(total as usize),
        "{page}"
    );
    total
}

/// Filtering or ordering on a masked field sees only the masked value.
async fn leak_probes(analyst: &Gql, technician: &Gql, support: &Gql) {
    let probes: Vec<(&Gql, &'static str, Value, u64)> = vec![
        // analyst: email hashed, name and phone redacted.
        (
            analyst,
            "customer_asset",
            json!({"email": {"eq": "alice@example.com"}}),
            0,
        ),
        (
            analyst,
            "customer_asset",
            json!({"email": {"contains": "alice"}}),
            0,
        ),
        (
            analyst,
            "customer_asset",
            json!({"email": {"gte": "alice", "lt": "alicf"}}),
            0,
        ),
        (
            analyst,
            "customer_asset",
            json!({"customer_name": {"contains": "Ali"}}),
            0,
        ),
        (
            analyst,
            "customer_asset",
            json!({"phone": {"in": ["+49 30 1234567"]}}),
            0,
        ),
        (
            analyst,
            "customer_asset",
            json!({"customer_name": {"eq": "[redacted]"}}),
            2,
        ),
        (
            analyst,
            "customer_asset",
            json!({"site_postcode": {"eq": "10115"}}),
            0,
        ),
        (
            analyst,
            "customer_asset",
            json!({"site_postcode": {"eq": "***15"}}),
            1,
        ),
        // technician: email redacted, phone partial, value removed; row
        // filter hides ABC00000002 whatever the filter says.
        (
            technician,
            "customer_asset",
            json!({"email": {"eq": "[redacted]"}}),
            1,
        ),
        (
            technician,
            "customer_asset",
            json!({"phone": {"contains": "1234"}}),
            0,
        ),
        (
            technician,
            "customer_asset",
            json!({"phone": {"contains": "4567"}}),
            1,
        ),
        (
            technician,
            "customer_asset",
            json!({"contract_value": {"gt": 0}}),
            0,
        ),
        (
            technician,
            "customer_asset",
            json!({"contract_value": {"isNull": true}}),
            1,
        ),
        (
            technician,
            "customer_asset",
            json!({"contract": {"eq": "none"}}),
            0,
        ),
        // support: contract_value rounded to 100 (1180 and 1234 → 1200).
        (
            support,
            "customer_asset",
            json!({"contract_value": {"lt": 1200}}),
            0,
        ),
        (
            support,
            "customer_asset",
            json!({"contract_value": {"gt": 1200}}),
            0,
        ),
        (
            support,
            "customer_asset",
            json!({"contract_value": {"eq": 1200}}),
            2,
        ),
        (
            support,
            "customer_asset",
            json!({"notes": {"contains": "vip"}}),
            0,
        ),
        // analyst on machine_health: berlin only, temperature rounded.
        (
            analyst,
            "machine_health",
            json!({"temperature_c": {"eq": 21.26}}),
            0,
        ),
        (
            analyst,
            "machine_health",
            json!({"temperature_c": {"eq": 21.5}}),
            1,
        ),
        (
            analyst,
            "machine_health",
            json!({"temperature_c": {"gt": 25}}),
            0,
        ),
        (
            analyst,
            "machine_health",
            json!({"site": {"eq": "lyon"}}),
            0,
        ),
        (
            analyst,
            "machine_health",
            json!({"operator_email": {"contains": "@"}}),
            0,
        ),
    ];
    for (gql, product, filter, want) in probes {
        assert_eq!(
            count(gql, product, filter.clone()).await,
            want,
            "{product} {filter}"
        );
    }
    // Ordering by a rounded field orders by the rounded value: 1180 and
    // 1234 both show as 1200, so the tie falls back to the key order —
    // the clear order (ABC00000002 first, descending) must not show.
    for direction in ["DESC", "ASC"] {
        let data = support
            .data(
                &format!("{{ customerAssetConnection(orderBy: [{{field: contract_value, direction: {direction}}}]) {{ nodes {{ asset_id contract_value }} }} }}"),
                json!({}),
            )
            .await;
        let keys: Vec<&str> = data["customerAssetConnection"]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["asset_id"].as_str())
            .collect();
        assert_eq!(keys, ["ABC00000001", "ABC00000002"], "{direction}");
    }
}

/// Write and erase rights on every write path; the audit names the
/// token's holder, never the token.
async fn writes_and_erasures(node: &NodeProcess, client: &impl Fn(&str) -> Gql) {
    let upsert = r#"mutation { upsertCustomerAsset(input: {asset_id: "ABC00000009", model: "M9", customer_id: 9, contract: basic, email: "zed@example.com"}) { asset_id email } }"#;
    for role in ["technician", "analyst", "dpo", "operator"] {
        let errors = client(role).errors(upsert, json!({})).await;
        assert_eq!(code(&errors), Some("FORBIDDEN"), "{role}");
    }
    let data = client("support").data(upsert, json!({})).await;
    assert_eq!(data["upsertCustomerAsset"]["email"], "zed@example.com");
    // A mutation's answer is masked as a read is: `support` sees `notes`
    // redacted and `contract_value` rounded, even in what it just wrote.
    let data = client("support")
        .data(
            r#"mutation { upsertCustomerAsset(input: {asset_id: "ABC00000007", model: "M7", customer_id: 7, contract: basic, notes: "owes us", contract_value: 1180.0}) { asset_id notes contract_value } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["upsertCustomerAsset"],
        json!({"asset_id": "ABC00000007", "notes": "[redacted]", "contract_value": 1200.0})
    );
    // A write-only role gets back only what it sent.
    let data = client("poller")
        .data(
            r#"mutation { upsertEnergyMeter(input: {meter_id: "M-0001", read_at: "2026-01-01T00:15:00Z", energy_kwh: 100.5}) { meter_id energy_kwh voltage_v } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["upsertEnergyMeter"],
        json!({"meter_id": "M-0001", "energy_kwh": 100.5, "voltage_v": null})
    );
    // HTTP push needs `write` too.
    let push = |role: &str| {
        let header = token_header(&client(role));
        let url = node.url("/ingest/customer_asset");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-ndjson")
                .header("authorization", header)
                .body(r#"{"asset_id": "ABC00000008", "model": "M8", "customer_id": 8}"#)
                .send()
                .await
                .expect("push")
                .status()
                .as_u16()
        }
    };
    assert_eq!(push("technician").await, 403);
    assert_eq!(push("support").await, 200);
    let audit = client("admin")
        .data(
            r#"{ customerAsset(asset_id: "ABC00000008") { audit { actor source } _meta { actor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(audit["customerAsset"]["_meta"]["actor"], "support");
    let replay = reqwest::Client::new()
        .post(node.url("/quarantine/customer_asset/replay"))
        .header("authorization", token_header(&client("support")))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status().as_u16(), 403);
    // Erasure needs `erase`.
    let erase = r#"mutation { eraseCustomerAsset(asset_id: "ABC00000009") }"#;
    for role in ["support", "analyst", "technician"] {
        let errors = client(role).errors(erase, json!({})).await;
        assert_eq!(code(&errors), Some("FORBIDDEN"), "{role}");
    }
    let data = client("dpo").data(erase, json!({})).await;
    assert_eq!(data["eraseCustomerAsset"], true);
    let data = client("dpo")
        .data(
            r#"{ customerAsset(asset_id: "ABC00000009") { asset_id } }"#,
            json!({}),
        )
        .await;
    assert!(data["customerAsset"].is_null());
}

/// The bearer header a test client sends.
fn token_header(gql: &Gql) -> String {
    format!("Bearer {}", gql.token().expect("a token client"))
}

/// Subscriptions: the `subscribe` right, the row filter on each change,
/// masked payloads; the token comes in `connection_init`.
async fn subscriptions(node: &NodeProcess, tokens: &[(&str, String)], admin: &Gql) {
    let token = |role: &str| &tokens.iter().find(|(r, _)| *r == role).expect("role").1;
    let init = |role: &str| json!({ "Authorization": format!("Bearer {}", token(role)) });
    // No subscribe right: refused.
    for (role, subscription) in [
        (
            "analyst",
            "subscription { machineHealthChanges { entity } }",
        ),
        ("poller", "subscription { energyMeterChanges { entity } }"),
        (
            "technician",
            "subscription { machineHealthChanges { entity } }",
        ),
    ] {
        let mut refused = Subscriber::start_with(
            node,
            Protocol::TransportWs,
            subscription,
            json!({}),
            init(role),
        )
        .await;
        let payload = refused.next_or_error(Duration::from_secs(10)).await;
        let errors = payload
            .as_array()
            .cloned()
            .or_else(|| payload["errors"].as_array().cloned())
            .unwrap_or_else(|| panic!("{role}: expected errors, got {payload}"));
        assert_eq!(code(&errors), Some("FORBIDDEN"), "{role}: {payload}");
    }
    let mut operator = Subscriber::start_with(
        node,
        Protocol::TransportWs,
        "subscription { machineHealthChanges { entity instance { machine_id operator_email temperature_c } } }",
        json!({}),
        init("operator"),
    )
    .await;
    let mut technician = Subscriber::start_with(
        node,
        Protocol::LegacyWs,
        "subscription { customerAssetChanges { entity instance { asset_id email phone contract_value } } }",
        json!({}),
        init("technician"),
    )
    .await;
    let mut billing = Subscriber::start_with(
        node,
        Protocol::TransportWs,
        "subscription { energyMeterChanges { instance { meter_id voltage_v power_factor energy_kwh } } }",
        json!({}),
        // The other accepted payload form.
        json!({ "token": token("billing") }),
    )
    .await;
    admin.wait_subscriptions("machine_health", 1).await;
    admin.wait_subscriptions("customer_asset", 1).await;
    admin.wait_subscriptions("energy_meter", 1).await;
    // Hidden first, visible second: the first event a technician gets must
    // be the visible one.
    seed(admin).await;
    let event = operator.next(Duration::from_secs(10)).await;
    let instance = &event["data"]["machineHealthChanges"]["instance"];
    assert_eq!(instance["machine_id"], "PR-0001");
    assert!(
        is_pseudonym(&instance["operator_email"], "alice@example.com"),
        "{event}"
    );
    assert_eq!(instance["temperature_c"], 21.26);
    let event = technician.next(Duration::from_secs(10)).await;
    assert_eq!(
        event["data"]["customerAssetChanges"],
        json!({"entity": "ABC00000001", "instance": {"asset_id": "ABC00000001", "email": "[redacted]", "phone": "**********1111", "contract_value": null}})
    );
    let event = technician.next(Duration::from_secs(10)).await;
    assert_eq!(
        event["data"]["customerAssetChanges"]["instance"]["phone"],
        "**********4567"
    );
    // ABC00000002 (contract none) was written after both: the technician
    // must not get it. An admin write of a visible asset follows it, and
    // is the next thing the technician sees.
    admin
        .data(
            r#"mutation { upsertCustomerAsset(input: {asset_id: "ABC00000003", model: "M3", customer_id: 3, contract: premium, phone: "+49 40 5550000"}) { asset_id } }"#,
            json!({}),
        )
        .await;
    let event = technician.next(Duration::from_secs(10)).await;
    assert_eq!(
        event["data"]["customerAssetChanges"]["entity"], "ABC00000003",
        "{event}"
    );
    let event = billing.next(Duration::from_secs(10)).await;
    assert_eq!(
        event["data"]["energyMeterChanges"]["instance"],
        json!({"meter_id": "M-0001", "voltage_v": null, "power_factor": null, "energy_kwh": 100.5})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_malformed_and_revoked_tokens_get_401() {
    let dir = workdir();
    let first = create_token(dir.path(), "admin", "first");
    let node = secured_node(dir.path());
    let anonymous = Gql::new(&node);
    let http = reqwest::Client::new();

    // Health and metrics stay open.
    for path in ["/livez", "/readyz", "/metrics"] {
        assert_eq!(anonymous.get(path).await.0, 200, "{path}");
    }
    // No token: 401 with a Bearer challenge, on every protected route.
    for (method, path) in [
        ("POST", "/graphql"),
        ("GET", "/graphql"),
        ("POST", "/ingest/customer_asset"),
        ("GET", "/quarantine/customer_asset"),
        ("POST", "/quarantine/customer_asset/replay"),
    ] {
        let response = http
            .request(method.parse().expect("method"), node.url(path))
            .header("content-type", "application/json")
            .body(r#"{"query": "{ products { name } }"}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 401, "{method} {path}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{method} {path}"
        );
    }
    // A WebSocket without a token is refused at connection_init.
    let url = format!("ws://{}/graphql/ws", node.http);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("ws request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    use futures_util::{SinkExt, StreamExt};
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "connection_init", "payload": {}}).to_string(),
        ))
        .await
        .expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("an answer in time");
    match answer {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None | Some(Err(_)) => {}
        Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
    }

    let good = anonymous.with_token(&first);
    good.data("{ products { name } }", json!({})).await;
    // Unknown (well-formed, never issued) and a forged secret for a real id.
    let unknown = format!("mlt_{}_{}", "0".repeat(12), "0".repeat(64));
    let forged = format!("{}{}", &first[..first.len() - 8], "00000000");
    for token in [unknown.as_str(), forged.as_str()] {
        let (status, body) = anonymous
            .with_token(token)
            .post("{ products { name } }", json!({}))
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }
    assert!(
        anonymous
            .metric("meshlet_auth_failures_total{reason=\"unknown\"}")
            .await
            >= Some(2.0)
    );
    assert!(
        anonymous
            .metric("meshlet_auth_failures_total{reason=\"missing\"}")
            .await
            >= Some(5.0)
    );

    // A thousand malformed tokens: random bytes (not UTF-8 too), wrong
    // prefix, truncated, huge: each one 401, never a 500 or a crash.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut sent = 0;
    for i in 0..1_000 {
        let value: Vec<u8> = match i % 5 {
            0 => (0..rng.random_range(0..200))
                .map(|_| match rng.random_range(0..3) {
                    0 => rng.random_range(0x20..0x7f),
                    1 => rng.random_range(0x80..=0xff),
                    _ => b'\t',
                })
                .collect(),
            1 => format!("Bearer {}", &first[..rng.random_range(0..first.len())]).into_bytes(),
            2 => format!("Bearer mlx_{}", &first[4..]).into_bytes(),
            3 => {
                let mut v = b"Bearer mlt_".to_vec();
                v.extend((0..rng.random_range(1..20_000)).map(|_| rng.random_range(b'a'..=b'f')));
                v
            }
            _ => {
                let mut v = format!("Bearer {first}").into_bytes();
                let at = rng.random_range(7..v.len());
                v[at] = rng.random_range(0x80..=0xff);
                v
            }
        };
        let Ok(header) = reqwest::header::HeaderValue::from_bytes(&value) else {
            continue;
        };
        let response = http
            .post(node.url("/graphql"))
            .header("authorization", header)
            .header("content-type", "application/json")
            .body(r#"{"query": "{ products { name } }"}"#)
            .send()
            .await
            .expect("the node answers");
        assert_eq!(response.status().as_u16(), 401, "case {i}: {value:?}");
        sent += 1;
    }
    // (a few random byte strings are not valid header values at all)
    assert!(sent > 900, "only {sent} malformed tokens were sent");
    good.data("{ products { name } }", json!({})).await;

    // An open subscription made with the token that is about to be revoked.
    let mut subscriber = Subscriber::start_with(
        &node,
        Protocol::TransportWs,
        "subscription { machineHealthChanges { entity } }",
        json!({}),
        json!({ "Authorization": format!("Bearer {first}") }),
    )
    .await;
    good.wait_subscriptions("machine_health", 1).await;

    // Revoked with the CLI while the node runs: refused within a couple of
    // seconds; a token created meanwhile is accepted.
    let out = run(
        dir.path(),
        &["--config", "meshlet.toml", "token", "revoke", "first"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let second = create_token(dir.path(), "admin", "second");
    let fresh = anonymous.with_token(&second);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (old, _) = good.post("{ products { name } }", json!({})).await;
        let (new, _) = fresh.post("{ products { name } }", json!({})).await;
        if old == 401 && new == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revoked: {old}, new: {new}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        anonymous
            .metric("meshlet_auth_failures_total{reason=\"revoked\"}")
            .await
            >= Some(1.0)
    );
    // The subscription ends with UNAUTHENTICATED once it re-checks the
    // token (changes keep coming until then).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        fresh
            .data(
                r#"mutation { upsertMachineHealth(input: {machine_id: "PR-0001", status: ok}) { machine_id } }"#,
                json!({}),
            )
            .await;
        let payload = subscriber.next_or_error(Duration::from_secs(10)).await;
        if let Some(errors) = payload["errors"].as_array().or(payload.as_array()) {
            assert_eq!(code(errors), Some("UNAUTHENTICATED"), "{payload}");
            break;
        }
        assert_eq!(payload["data"]["machineHealthChanges"]["entity"], "PR-0001");
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription outlived its token"
        );
    }
    let list = run(dir.path(), &["--config", "meshlet.toml", "token", "list"]);
    let listed = stdout(&list);
    assert!(
        listed.contains("first") && listed.contains("second"),
        "{listed}"
    );
    assert!(
        !listed.contains(&first[17..]) && !listed.contains(&second[17..]),
        "{listed}"
    );

    // SIGHUP re-reads the file even when neither its size nor its mtime
    // changed (an edit the once-a-second check cannot see): the role of
    // `second` becomes one with no rights.
    let path = dir.path().join("data/tokens.json");
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let text = std::fs::read_to_string(&path).expect("token file");
    assert!(text.contains("\"role\": \"admin\""), "{text}");
    std::fs::write(
        &path,
        text.replace("\"role\": \"admin\"", "\"role\": \"xxxxx\""),
    )
    .expect("edit");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(modified))
        .expect("restore mtime");
    node.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = fresh
            .post("{ machineHealthConnection { totalCount } }", json!({}))
            .await;
        if body["errors"][0]["extensions"]["code"] == "FORBIDDEN" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP not honoured: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1,000 random filters: answered with data or errors, never a failure.
    let third = create_token(dir.path(), "admin", "third");
    let fresh = anonymous.with_token(&third);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf117);
    for i in 0..1_000 {
        let filter = random_filter(&mut rng, 0);
        let (status, body) = fresh
            .post(
                "query($f: CustomerAssetFilter) { customerAssetConnection(filter: $f) { totalCount } }",
                json!({ "f": filter }),
            )
            .await;
        assert_eq!(status, 200, "case {i}: {filter} -> {body}");
        assert!(
            body.get("data").is_some() || body.get("errors").is_some(),
            "{body}"
        );
    }
    // And 1,000 random row-filter expressions straight into the parser.
    for _ in 0..1_000 {
        let text: String = (0..rng.random_range(0..60))
            .map(|_| {
                const PIECES: [&str; 20] = [
                    "site", " == ", "'x'", " and ", " or ", "not ", "(", ")", " in ", "[", "]",
                    ",", "1.5", "null", " is ", " != ", "\"", "\\", "é", "<=",
                ];
                PIECES[rng.random_range(0..PIECES.len())]
            })
            .collect();
        let _ = meshlet::expr::parse(&text);
    }
    good.get("/livez").await;
    let (status, _) = fresh.post("{ products { name } }", json!({})).await;
    assert_eq!(status, 200, "the node still serves after the fuzzing");
}

fn random_filter(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
    const FIELDS: [&str; 7] = [
        "email",
        "contract_value",
        "customer_id",
        "installed_on",
        "and",
        "or",
        "nope",
    ];
    const OPS: [&str; 11] = [
        "eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "isNull", "bogus", "",
    ];
    let mut object = serde_json::Map::new();
    for _ in 0..rng.random_range(0..4) {
        let field = FIELDS[rng.random_range(0..FIELDS.len())];
        let value = if (field == "and" || field == "or") && depth < 4 {
            Value::Array(
                (0..rng.random_range(0..3))
                    .map(|_| random_filter(rng, depth + 1))
                    .collect(),
            )
        } else {
            let op = OPS[rng.random_range(0..OPS.len())];
            json!({ op: random_scalar(rng) })
        };
        object.insert(field.to_string(), value);
    }
    Value::Object(object)
}

fn random_scalar(rng: &mut rand::rngs::StdRng) -> Value {
    match rng.random_range(0..7) {
        0 => Value::Null,
        1 => json!(rng.random::<i64>()),
        2 => json!(rng.random::<f64>() * 1e6),
        3 => json!(rng.random::<bool>()),
        4 => json!(["a", 1, null]),
        5 => json!("2026-13-45T99:99:99Z"),
        _ => json!((0..rng.random_range(0..30))
            .map(|_| char::from(rng.random_range(0x20u8..0x7f)))
            .collect::<String>()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_lets_anonymous_callers_read_without_personal_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    // No config file: the embedded default, data in ./meshlet-data.
    let out = run(
        dir.path(),
        &["token", "create", "--role", "admin", "--name", "ops"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let admin_token = stdout(&out).trim().to_string();
    let node = NodeBuilder::new(dir.path())
        .secured()
        .start()
        .expect("node starts");
    let anonymous = Gql::new(&node);
    let admin = anonymous.with_token(&admin_token);
    seed(&admin).await;
    let data = anonymous
        .data(
            r#"{ customerAsset(asset_id: "ABC00000001") { asset_id model customer_name email phone contract contract_value notes site_postcode } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["customerAsset"],
        json!({"asset_id": "ABC00000001", "model": "M1", "customer_name": "[redacted]", "email": "[redacted]", "phone": "[redacted]", "contract": "basic", "contract_value": null, "notes": "[redacted]", "site_postcode": "[redacted]"})
    );
    let data = anonymous
        .data(
            "{ machineHealthConnection { totalCount nodes { operator_email temperature_c } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["machineHealthConnection"]["totalCount"], 2);
    assert!(data["machineHealthConnection"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .all(|n| n["operator_email"] == "[redacted]" && n["temperature_c"].is_number()));
    // Read-only: no writes, no erasure, no raw quarantine.
    let errors = anonymous
        .errors(
            r#"mutation { eraseMachineHealth(machine_id: "PR-0001") }"#,
            json!({}),
        )
        .await;
    assert_eq!(code(&errors), Some("FORBIDDEN"));
    let errors = anonymous
        .errors(r#"mutation { upsertMachineHealth(input: {machine_id: "PR-0003", status: ok}) { machine_id } }"#, json!({}))
        .await;
    assert_eq!(code(&errors), Some("FORBIDDEN"));
    assert_eq!(anonymous.get("/quarantine/customer_asset").await.0, 403);
    // A bad token is refused even though anonymous access is allowed.
    let (status, _) = anonymous
        .with_token("mlt_nope")
        .post("{ products { name } }", json!({}))
        .await;
    assert_eq!(status, 401);
}
