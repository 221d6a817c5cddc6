//! ODCS data contracts: every example product exports a contract that the
//! published ODCS JSON Schema accepts, and importing it back gives a
//! definition with the same fields, types, key and constraints.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use meshlet::contract;
use meshlet::product::{load_path, parse_definition, LoadContext, Product, ProductSet};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> ProductSet {
    let context = LoadContext::with_upstreams(["central".to_string()].into());
    load_path(&root().join("schema/examples"), &context).expect("examples load")
}

fn odcs_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("tests/data/odcs-json-schema-v3.2.0.json"))
        .expect("vendored ODCS schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("ODCS schema compiles")
}

#[test]
fn every_example_exports_a_contract_the_odcs_schema_accepts() {
    let validator = odcs_validator();
    let set = examples();
    assert!(set.iter().count() >= 3);
    for product in set.iter() {
        let value = contract::export(product);
        // Through the YAML text a user gets, not just the in-memory value.
        let yaml = contract::to_yaml(&value);
        let reread = meshlet::product::yaml_to_json(&yaml).unwrap_or_else(|e| {
            panic!(
                "{}: exported YAML reads back: {:?}",
                product.name,
                e.messages()
            )
        });
        assert_eq!(reread, value, "{}: YAML round trip", product.name);
        let errors: Vec<String> = validator
            .iter_errors(&reread)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}\n{yaml}", product.name);
        assert_eq!(reread["apiVersion"], "v3.1.0");
        assert_eq!(reread["kind"], "DataContract");
        let properties = reread["schema"][0]["properties"].as_array().unwrap();
        assert_eq!(properties.len(), product.fields.len());
        let key = properties
            .iter()
            .find(|p| p["primaryKey"] == true)
            .expect("a primary key");
        assert_eq!(key["name"], product.key.as_str());
    }
}

#[test]
fn a_broken_contract_is_caught_by_the_schema() {
    // The validator is not vacuous: a contract with a wrong type fails.
    let validator = odcs_validator();
    let set = examples();
    let product = set.get("machine_health").expect("machine_health");
    let mut value = contract::export(product);
    value["schema"][0]["properties"][0]["logicalType"] = "text".into();
    assert!(!validator.is_valid(&value));
    let mut value = contract::export(product);
    value.as_object_mut().unwrap().remove("apiVersion");
    assert!(!validator.is_valid(&value));
}

fn same_shape(original: &Product, imported: &Product) {
    assert_eq!(imported.name, original.name);
    assert_eq!(imported.version, original.version);
    assert_eq!(imported.domain, original.domain);
    assert_eq!(imported.owner, original.owner);
    assert_eq!(imported.key, original.key);
    assert_eq!(imported.freshness, original.freshness);
    assert_eq!(
        imported.retention.expire_after,
        original.retention.expire_after
    );
    assert_eq!(imported.history.max_age, original.history.max_age);
    let names: Vec<&String> = original.fields.keys().collect();
    assert_eq!(imported.fields.keys().collect::<Vec<_>>(), names);
    for (name, field) in &original.fields {
        let back = &imported.fields[name];
        assert_eq!(back.ty, field.ty, "{name}");
        assert_eq!(back.required, field.required, "{name}");
        assert_eq!(back.min, field.min, "{name}");
        assert_eq!(back.max, field.max, "{name}");
        assert_eq!(back.enum_values, field.enum_values, "{name}");
        assert_eq!(
            back.pattern.as_ref().map(|r| r.as_str().to_string()),
            field.pattern.as_ref().map(|r| r.as_str().to_string()),
            "{name}"
        );
        assert_eq!(back.unit, field.unit, "{name}");
        assert_eq!(back.classification, field.classification, "{name}");
    }
}

#[test]
fn import_turns_an_exported_contract_back_into_the_same_definition_shape() {
    for product in examples().iter() {
        let yaml = contract::to_yaml(&contract::export(product));
        let skeleton = contract::import(&yaml, None)
            .unwrap_or_else(|e| panic!("{}: import: {e}", product.name));
        let imported = parse_definition(
            Path::new("imported.yaml"),
            &skeleton,
            &LoadContext::default(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{}: skeleton loads: {:?}\n{skeleton}",
                product.name,
                e.messages()
            )
        });
        same_shape(product, &imported);
    }
}

#[test]
fn the_cli_exports_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let exported = Command::new(common::meshlet_bin())
        .args(["contract", "export", "customer_asset", "--products"])
        .arg(root().join("schema/examples"))
        .output()
        .expect("meshlet runs");
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = String::from_utf8(exported.stdout).unwrap();
    assert!(text.contains("apiVersion: v3.1.0"), "{text}");
    assert!(text.contains("classification: pii"), "{text}");
    let file = dir.path().join("customer_asset.odcs.yaml");
    std::fs::write(&file, &text).unwrap();
    let imported = Command::new(common::meshlet_bin())
        .args(["contract", "import"])
        .arg(&file)
        .output()
        .expect("meshlet runs");
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let definition = dir.path().join("customer_asset.yaml");
    std::fs::write(&definition, &imported.stdout).unwrap();
    let checked = Command::new(common::meshlet_bin())
        .arg("check")
        .arg(&definition)
        .output()
        .expect("meshlet runs");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let unknown = Command::new(common::meshlet_bin())
        .args(["contract", "export", "nope", "--products"])
        .arg(root().join("schema/examples"))
        .output()
        .expect("meshlet runs");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no product `nope`"));
    std::fs::write(dir.path().join("bad.yaml"), "kind: Something\n").unwrap();
    let bad = Command::new(common::meshlet_bin())
        .args(["contract", "import"])
        .arg(dir.path().join("bad.yaml"))
        .output()
        .expect("meshlet runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an ODCS data contract"));
}

fn cli_export(dir: &Path, product: &str, json: bool) -> String {
    let mut args = vec!["--config", "meshlet.toml", "contract", "export", product];
    if json {
        args.push("--json");
    }
    let out = common::run(dir, &args);
    assert!(out.status.success(), "{}", common::stderr(&out));
    common::stdout(&out)
}

/// The GraphQL catalog serves each product's contract byte for byte as
/// the CLI exports it, in both formats, valid against the ODCS schema; a
/// role sees the contracts of the products it has a right on and no
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphql_catalog_serves_the_exported_contract() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_examples(dir.path());
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n",
    )
    .unwrap();
    let token = |role: &str| common::create_token(dir.path(), role, role);
    let admin = token("admin");
    let operator = token("operator");
    let node = common::NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let gql = common::graphql::Gql::new(&node);
    let validator = odcs_validator();

    let data = gql
        .with_token(&admin)
        .data(
            "{ products { name contract yaml: contract(format: YAML) json: contract(format: JSON) } }",
            serde_json::json!({}),
        )
        .await;
    let products = data["products"].as_array().expect("products");
    assert_eq!(products.len(), 5, "{data}");
    for p in products {
        let name = p["name"].as_str().unwrap();
        let yaml = p["contract"].as_str().unwrap();
        assert_eq!(yaml, cli_export(dir.path(), name, false), "{name}: YAML");
        assert_eq!(p["yaml"], p["contract"], "{name}: YAML is the default");
        let json = p["json"].as_str().unwrap();
        assert_eq!(json, cli_export(dir.path(), name, true), "{name}: JSON");
        let from_yaml = meshlet::product::yaml_to_json(yaml).expect("YAML reads");
        let from_json: serde_json::Value = serde_json::from_str(json).expect("JSON reads");
        assert_eq!(from_yaml, from_json, "{name}: one contract in two forms");
        let errors: Vec<String> = validator
            .iter_errors(&from_json)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        assert_eq!(from_json["name"], name);
    }

    // The operator has a right on machine_health only: its contract, and
    // no sight of the others.
    let as_operator = gql.with_token(&operator);
    let data = as_operator
        .data(
            r#"{ products { name }
                 machine: product(name: "machine_health") { contract(format: JSON) }
                 customer: product(name: "customer_asset") { contract } }"#,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        data["products"],
        serde_json::json!([{ "name": "machine_health" }])
    );
    assert_eq!(
        data["machine"]["contract"].as_str().unwrap(),
        cli_export(dir.path(), "machine_health", true)
    );
    assert!(data["customer"].is_null(), "{data}");
    let (status, _) = node.stop();
    assert!(status.success());
}
