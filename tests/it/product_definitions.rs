//! Product definitions as a user writes them: the shipped examples load and
//! match the JSON Schema, and wrong definitions are refused with exact,
//! located messages.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use meshlet::product::{
    load_path, parse_definition, yaml_to_json, LoadContext, Mask, PayloadFormat, Priority, SyncMode,
};
use meshlet::sources::{
    http::HttpSource, modbus::ModbusSource, mqtt::MqttSource, opcua::OpcuaSource,
    sparkplug::SparkplugSource,
};

fn ctx() -> LoadContext {
    LoadContext::with_upstreams(BTreeSet::from(["central".to_string()]))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("schema/examples"))
        .expect("schema/examples exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schema/product.schema.json")).expect("schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema is a valid JSON Schema")
}

fn schema_errors(yaml: &str) -> Vec<String> {
    let instance = yaml_to_json(yaml).expect("valid YAML");
    validator()
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

/// Every diagnostic for `text`, as displayed, for the file `bad.yaml`.
fn errors(text: &str) -> Vec<String> {
    match parse_definition(Path::new("bad.yaml"), text, &ctx()) {
        Ok(product) => panic!("expected errors, got product {}", product.name),
        Err(errors) => errors.messages(),
    }
}

/// A valid definition of 8 lines; cases append from line 9 on.
const BASE: &str = "\
product: demo
version: 1
domain: test
owner: team@example.com
key: id
fields:
  id: { type: string }
  temp: { type: float }
";

fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replace(from, to)
}

// --- the examples ---------------------------------------------------------

#[test]
fn every_example_loads() {
    let files = examples();
    assert_eq!(files.len(), 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        if let Err(errors) = parse_definition(&file, &text, &ctx()) {
            panic!("{} does not load:\n{errors}", file.display());
        }
    }
}

#[test]
fn every_example_matches_the_json_schema() {
    let validator = validator();
    for file in examples() {
        let text = std::fs::read_to_string(&file).expect("readable");
        let instance = yaml_to_json(&text).expect("valid YAML");
        let problems: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| e.to_string())
            .collect();
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
    }
}

#[test]
fn the_examples_compile_to_what_they_say() {
    let set = load_path(&root().join("schema/examples"), &ctx()).expect("examples load");
    let names: Vec<&str> = set.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "customer_asset",
            "energy_meter",
            "machine_health",
            "press_line",
            "room_climate"
        ]
    );

    let press = set.get("press_line").expect("press_line");
    let Some(sp) = press.sources[0].get::<SparkplugSource>() else {
        panic!("sparkplug first")
    };
    assert_eq!(sp.group, "plant");
    assert_eq!(sp.edge_node.as_deref(), Some("line1-gw"));
    assert_eq!(sp.metrics["ram_temp_c"], "Hydraulics/Ram Temperature");
    assert_eq!(sp.online.as_deref(), Some("online"));

    let machine = set.get("machine_health").expect("machine_health");
    assert_eq!(machine.key, "machine_id");
    assert!(machine.key_field().required);
    let Some(mqtt) = machine.sources[0].get::<MqttSource>() else {
        panic!("mqtt first")
    };
    assert_eq!(mqtt.topic.filter(), "plant/+/machine/+/telemetry");
    assert_eq!(mqtt.map["temperature_c"], "/temp");
    assert_eq!(
        machine.access["operator"].masks["operator_email"],
        Mask::Hash
    );
    assert!(machine.access["analyst"].row_filter.is_some());
    assert_eq!(machine.sync[0].priority, Priority::High);

    let meter = set.get("energy_meter").expect("energy_meter");
    assert_eq!(meter.sync[0].mode, SyncMode::History);
    let Some(modbus) = meter.sources[1].get::<ModbusSource>() else {
        panic!("modbus second")
    };
    assert_eq!(modbus.time_field.as_deref(), Some("read_at"));
    assert_eq!(modbus.devices.len(), 2);
    assert_eq!(
        meter.sources[1].shape().event_time.as_deref(),
        Some("/read_at"),
        "the poll's time is the event time"
    );

    let asset = set.get("customer_asset").expect("customer_asset");
    assert_eq!(
        asset.access["technician"].masks["phone"],
        Mask::Partial { keep_last: 4 }
    );
    assert_eq!(
        asset.sync[0].fields.as_deref().map(|f| f.len()),
        Some(8),
        "the key is already listed"
    );
}

// --- the JSON Schema --------------------------------------------------------

#[test]
fn the_schema_refuses_unknown_keys_and_wrong_types() {
    assert!(schema_errors(BASE).is_empty(), "{:?}", schema_errors(BASE));
    assert!(
        !schema_errors(&format!("{BASE}sorces: []\n")).is_empty(),
        "unknown top-level key"
    );
    assert!(
        !schema_errors(&base_with("{ type: float }", "{ type: float, unti: C }")).is_empty(),
        "unknown field key"
    );
    assert!(
        !schema_errors(&base_with("{ type: float }", "{ type: flaot }")).is_empty(),
        "bad type"
    );
    assert!(
        !schema_errors(&base_with("version: 1", "version: one")).is_empty(),
        "version not a number"
    );
    assert!(
        !schema_errors(&base_with(
            "  id: { type: string }\n  temp: { type: float }\n",
            " [id, temp]\n"
        ))
        .is_empty(),
        "fields a list"
    );
    assert!(
        !schema_errors(&base_with("{ type: float }", "{ type: float, enum: [a] }")).is_empty(),
        "enum on a float"
    );
    assert!(
        !schema_errors(&format!(
            "{BASE}sources:\n  - mqtt: {{ topic: a }}\n    http: {{}}\n"
        ))
        .is_empty(),
        "two source kinds"
    );
    assert!(
        !schema_errors(&format!(
            "{BASE}access:\n  ops: {{ read: true, mask: {{ id: scramble }} }}\n"
        ))
        .is_empty(),
        "bad mask"
    );
}

#[test]
fn every_schema_property_has_a_description() {
    let text = std::fs::read_to_string(root().join("schema/product.schema.json")).expect("schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(schema["$id"].is_string());
    let mut missing = Vec::new();
    let mut stack = vec![("".to_string(), &schema)];
    while let Some((path, node)) = stack.pop() {
        let Some(object) = node.as_object() else {
            continue;
        };
        // `if` subschemas are conditions, not the format's properties.
        let condition = path.ends_with("/if");
        if let Some(props) = object
            .get("properties")
            .and_then(|p| p.as_object())
            .filter(|_| !condition)
        {
            for (name, prop) in props {
                if prop.get("description").is_none() {
                    missing.push(format!("{path}/{name}"));
                }
            }
        }
        for (key, child) in object {
            match child {
                serde_json::Value::Array(items) => {
                    stack.extend(items.iter().map(|i| (format!("{path}/{key}"), i)))
                }
                other => stack.push((format!("{path}/{key}"), other)),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:#?}"
    );
}

// --- wrong definitions, exact diagnostics --------------------------------------

#[test]
fn bad_field_type_lists_the_valid_types() {
    assert_eq!(
        errors(&base_with("{ type: float }", "{ type: flaot }")),
        ["bad.yaml:8:17: fields.temp.type: unknown field type `flaot` (did you mean `float`?); expected one of: string, int, float, bool, timestamp, json"]
    );
}

#[test]
fn duplicate_field_names_both_lines() {
    assert_eq!(
        errors(&format!("{BASE}  temp: {{ type: int }}\n")),
        ["bad.yaml:9:3: fields.temp: duplicate key `temp`: first at line 8, again at line 9; each key may appear only once"]
    );
}

#[test]
fn key_must_be_a_declared_string_or_int_field() {
    assert_eq!(
        errors(&base_with("key: id", "key: ident")),
        ["bad.yaml:5:6: key: key `ident` is not a declared field; declared fields: id, temp"]
    );
    assert_eq!(
        errors(&base_with("key: id", "key: temp")),
        ["bad.yaml:5:6: key: key field `temp` is a float field: the key must be a string or int field"]
    );
}

#[test]
fn unknown_keys_are_named_with_the_expected_ones() {
    assert_eq!(
        errors(&format!("{BASE}sorces: []\n")),
        ["bad.yaml:9:1: sorces: unknown key `sorces` (did you mean `sources`?); expected one of: product, version, domain, owner, description, key, fields, sources, quality, history, retention, freshness, access, sync"]
    );
    assert_eq!(
        errors(&base_with("{ type: float }", "{ type: float, unti: C }")),
        ["bad.yaml:8:24: fields.temp.unti: unknown key `unti` (did you mean `unit`?); expected one of: type, required, min, max, enum, pattern, unit, description, classification"]
    );
    assert_eq!(
        errors(&format!("{BASE}sync:\n  - to: central\n    when: {{ every: 10s }}\n")),
        ["bad.yaml:11:13: sync[0].when.every: unknown key `every`; expected one of: on_change, min_interval, batch_size, batch_age"]
    );
}

#[test]
fn bad_duration_says_what_a_duration_looks_like() {
    assert_eq!(
        errors(&format!("{BASE}freshness: 7x\n")),
        ["bad.yaml:9:12: freshness: invalid duration `7x`: expected a number with a unit, e.g. 10s, 5m, 7d"]
    );
}

#[test]
fn bad_enum_settings_list_the_allowed_values() {
    let text = format!("{BASE}quality: {{ on_invalid: drop }}\nsync:\n  - to: central\n    priority: urgent\n    mode: all\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:9:24: quality.on_invalid: unknown on_invalid policy `drop`; expected one of: reject, quarantine, drop_field",
            "bad.yaml:12:15: sync[0].priority: unknown priority `urgent`; expected one of: low, normal, high",
            "bad.yaml:13:11: sync[0].mode: unknown sync mode `all`; expected one of: latest, history",
        ]
    );
    assert_eq!(
        errors(&base_with("id: { type: string }", "id: { type: string, classification: secret }")),
        ["bad.yaml:7:39: fields.id.classification: unknown classification `secret`; expected one of: public, internal, confidential, pii, restricted"]
    );
}

#[test]
fn min_above_max_is_refused() {
    assert_eq!(
        errors(&base_with(
            "{ type: float }",
            "{ type: float, min: 150, max: -40 }"
        )),
        ["bad.yaml:8:29: fields.temp.min: min 150 is greater than max -40: expected min ≤ max"]
    );
}

#[test]
fn enum_and_pattern_only_on_string_fields() {
    assert_eq!(
        errors(&base_with("{ type: float }", "{ type: float, enum: [a], pattern: x }")),
        [
            "bad.yaml:8:24: fields.temp.enum: `enum` applies only to string fields; `temp` is a float field",
            "bad.yaml:8:35: fields.temp.pattern: `pattern` applies only to string fields; `temp` is a float field",
        ]
    );
}

#[test]
fn invalid_regex_pattern_gives_the_reason() {
    assert_eq!(
        errors(&base_with("id: { type: string }", "id: { type: string, pattern: \"[a-\" }")),
        ["bad.yaml:7:32: fields.id.pattern: invalid regex pattern `[a-`: unclosed character class"]
    );
}

#[test]
fn bad_topic_templates_each_say_why() {
    let text = format!(
        "{BASE}sources:\n  - mqtt: {{ topic: \"machine/m{{id}}\" }}\n  - mqtt: {{ topic: \"a/#/b\" }}\n  - mqtt: {{ topic: \"plant/{{id/x\" }}\n  - mqtt: {{ topic: \"\" }}\n  - mqtt: {{ topic: \"a/b+c\" }}\n"
    );
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:10:20: sources[0].mqtt.topic: invalid topic template: capture inside level 2 `m{id}`: a capture must be a whole level, e.g. machine/{machine_id}",
            "bad.yaml:11:20: sources[1].mqtt.topic: invalid topic template: `#` at level 2 of 3: `#` matches the rest of the topic and must be the last level",
            "bad.yaml:12:20: sources[2].mqtt.topic: invalid topic template: unbalanced braces in level 2 `{id`: a capture is written `{field}`",
            "bad.yaml:13:20: sources[3].mqtt.topic: invalid topic template: empty topic template: expected levels separated by `/`, e.g. plant/{site}/telemetry",
            "bad.yaml:14:20: sources[4].mqtt.topic: invalid topic template: wildcard `+` inside level 2 `b+c`: `+` and `#` must be a whole level",
        ]
    );
}

#[test]
fn topic_captures_and_map_targets_must_be_fields() {
    assert_eq!(
        errors(&format!("{BASE}sources:\n  - mqtt: {{ topic: \"plant/{{site}}/m/{{id}}\" }}\n")),
        ["bad.yaml:10:20: sources[0].mqtt.topic: topic capture `site` is not a declared field; declared fields: id, temp"]
    );
    assert_eq!(
        errors(&format!("{BASE}sources:\n  - mqtt: {{ topic: \"m/{{id}}\", map: {{ tmp: /t, temp: t }} }}\n")),
        [
            "bad.yaml:10:37: sources[0].mqtt.map.tmp: map target `tmp` is not a declared field (did you mean `temp`?); declared fields: id, temp",
            "bad.yaml:10:52: sources[0].mqtt.map.temp: invalid json pointer `t`: expected a path starting with `/`, e.g. /temp or /values/0",
        ]
    );
}

#[test]
fn csv_needs_columns_and_raw_needs_a_field() {
    let text = format!("{BASE}sources:\n  - mqtt: {{ topic: \"m/{{id}}\", format: csv }}\n  - file:\n      path: r.log\n      format: raw\n  - mqtt: {{ topic: \"m/{{id}}/t\", format: raw }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:10:11: sources[0].mqtt.columns: csv payloads need `columns`: the field of each column, in order",
            "bad.yaml:13:15: sources[1].file.format: payload format `raw` is not supported by file sources; expected one of: ndjson, csv",
            "bad.yaml:14:11: sources[2].mqtt.field: raw payloads need `field`: the field the payload value goes to",
        ]
    );
}

#[test]
fn masks_must_name_a_field_of_a_fitting_type() {
    assert_eq!(
        errors(&format!("{BASE}access:\n  operator: {{ read: true, mask: {{ tmp: hash }} }}\n")),
        ["bad.yaml:10:35: access.operator.mask.tmp: masked field `tmp` is not a declared field (did you mean `temp`?); declared fields: id, temp"]
    );
    assert_eq!(
        errors(&format!("{BASE}access:\n  operator: {{ read: true, mask: {{ temp: {{ partial: 2 }}, id: redact }} }}\n")),
        [
            "bad.yaml:10:41: access.operator.mask.temp: mask `partial` applies only to string fields; `temp` is a float field",
            "bad.yaml:10:61: access.operator.mask.id: the key field `id` can only be masked with `hash`: `redact` would make distinct entities indistinguishable",
        ]
    );
}

#[test]
fn sync_rules_name_declared_upstreams_and_fields() {
    assert_eq!(
        errors(&format!("{BASE}sync:\n  - to: centrl\n")),
        ["bad.yaml:10:9: sync[0].to: unknown upstream `centrl` (did you mean `central`?); declared upstreams: central"]
    );
    assert_eq!(
        errors(&format!("{BASE}sync:\n  - to: central\n    fields: [id, tmp]\n")),
        ["bad.yaml:11:18: sync[0].fields[1]: sync field `tmp` is not a declared field (did you mean `temp`?); declared fields: id, temp"]
    );
}

#[test]
fn bad_where_expressions_point_into_the_string() {
    let text = format!("{BASE}access:\n  analyst: {{ read: true, where: \"temp >\" }}\nsync:\n  - to: central\n    where: \"site == 'berlin'\"\n  - to: central\n    where: temp == 'hot'\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:10:40: access.analyst.where: invalid row filter: expected a value after `>`, found end of input (expression column 7)",
            "bad.yaml:13:13: sync[0].where: invalid row filter: unknown field `site` (expression column 1)",
            "bad.yaml:15:20: sync[1].where: invalid row filter: cannot compare float field `temp` with a string (expression column 9)",
        ]
    );
}

#[test]
fn missing_top_level_keys_are_all_reported() {
    assert_eq!(
        errors("description: nothing else\n"),
        [
            "bad.yaml:1:1: product: missing required key `product`",
            "bad.yaml:1:1: version: missing required key `version`",
            "bad.yaml:1:1: domain: missing required key `domain`",
            "bad.yaml:1:1: owner: missing required key `owner`",
            "bad.yaml:1:1: fields: missing required key `fields`",
            "bad.yaml:1:1: key: missing required key `key`",
        ]
    );
}

#[test]
fn invalid_product_name() {
    assert_eq!(
        errors(&base_with("product: demo", "product: Demo-Product")),
        ["bad.yaml:1:10: product: invalid product name `Demo-Product`: expected lowercase letters, digits and `_`, starting with a letter, at most 63 characters, e.g. machine_health"]
    );
}

#[test]
fn fields_must_be_a_non_empty_mapping() {
    let fields = "fields:\n  id: { type: string }\n  temp: { type: float }\n";
    assert_eq!(
        errors(&base_with(fields, "fields: {}\n")),
        ["bad.yaml:6:9: fields: no fields declared: expected at least one field, e.g. `id: { type: string }`"]
    );
    assert_eq!(
        errors(&base_with(fields, "fields: [id, temp]\n")),
        ["bad.yaml:6:9: fields: expected a mapping of field name to field definition, found a list"]
    );
}

#[test]
fn yaml_problems_become_diagnostics() {
    assert_eq!(
        errors(&format!("{BASE}sources: [\n")),
        ["bad.yaml:10:1: (document): invalid yaml: while parsing a node, did not find expected node content"]
    );
    assert_eq!(
        errors(&format!("{BASE}freshness: &f 10s\n")),
        ["bad.yaml:9:15: (document): yaml anchors and aliases (`&name`, `*name`) are not supported: write the value out"]
    );
    assert_eq!(
        errors(&format!("{BASE}---\nproduct: other\n")),
        ["bad.yaml:9:1: (document): a second yaml document starts here: one file defines one product; move it to its own file"]
    );
    assert_eq!(
        errors("- product: demo\n"),
        ["bad.yaml:1:1: (document): expected a mapping at the top level (product: ..., version: ..., ...), found a list or a single value"]
    );
}

#[test]
fn three_problems_give_three_diagnostics() {
    let text = format!(
        "{}history: {{ keep: 10, max_age: 7x }}\n",
        base_with("version: 1", "version: one").replace("{ type: float }", "{ type: flaot }")
    );
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:2:10: version: expected a whole number from 1 to 4294967295, found `one`",
            "bad.yaml:8:17: fields.temp.type: unknown field type `flaot` (did you mean `float`?); expected one of: string, int, float, bool, timestamp, json",
            "bad.yaml:9:31: history.max_age: invalid duration `7x`: expected a number with a unit, e.g. 10s, 5m, 7d",
        ]
    );
}

#[test]
fn a_broken_field_is_reported_once_not_at_every_use() {
    let text = format!(
        "{}access:\n  ops: {{ read: true, mask: {{ temp: {{ round: 1 }} }}, where: \"temp > 3\" }}\nsync:\n  - to: central\n    fields: [temp]\n",
        base_with("{ type: float }", "{ type: flaot }")
    );
    assert_eq!(errors(&text).len(), 1, "{:#?}", errors(&text));
}

// --- folders ---------------------------------------------------------------

#[test]
fn a_product_defined_twice_names_both_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), BASE).expect("write");
    std::fs::write(
        dir.path().join("b.yml"),
        format!("# the same product again\n{BASE}"),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a definition").expect("write");
    let errors = load_path(dir.path(), &ctx())
        .expect_err("duplicate name")
        .messages();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yml");
    assert_eq!(
        errors,
        [format!(
            "{}:2:10: product: product `demo` is already defined in {} (line 1): product names must be unique",
            b.display(),
            a.display()
        )]
    );
}

#[test]
fn a_folder_reports_the_problems_of_every_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("one.yaml"),
        base_with("key: id", "key: nope"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("two.yaml"),
        base_with("product: demo", "product: other").replace("version: 1", "version: 0"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("three.yaml"),
        base_with("product: demo", "product: fine"),
    )
    .expect("write");
    let errors = load_path(dir.path(), &ctx())
        .expect_err("two bad files")
        .messages();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("one.yaml:5:6: key:"), "{}", errors[0]);
    assert!(
        errors[1].contains("two.yaml:2:10: version: expected a whole number from 1"),
        "{}",
        errors[1]
    );
}

#[test]
fn an_http_source_may_be_left_empty() {
    let text =
        format!("{BASE}sources:\n  - http:\n  - http: {{}}\n  - http: {{ format: ndjson }}\n");
    let product = parse_definition(Path::new("ok.yaml"), &text, &ctx()).expect("valid");
    let formats: Vec<PayloadFormat> = product
        .sources
        .iter()
        .map(|s| match s.get::<HttpSource>() {
            Some(http) => http.format,
            None => panic!("{s:?}"),
        })
        .collect();
    assert_eq!(
        formats,
        [
            PayloadFormat::Json,
            PayloadFormat::Json,
            PayloadFormat::Ndjson
        ]
    );
    assert!(
        schema_errors(&text).is_empty(),
        "{:?}",
        schema_errors(&text)
    );
}

#[test]
fn a_single_file_and_an_empty_folder_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(load_path(dir.path(), &ctx())
        .expect("empty folder")
        .is_empty());
    let file = dir.path().join("demo.yaml");
    std::fs::write(&file, BASE).expect("write");
    let set = load_path(&file, &ctx()).expect("one file");
    assert_eq!(set.len(), 1);
    assert_eq!(set.get("demo").expect("demo").file, file);
    let missing = load_path(&dir.path().join("nope"), &ctx()).expect_err("missing");
    assert!(
        missing.messages()[0].ends_with(": (document): cannot read: no such file or directory"),
        "{missing}"
    );
}

// --- hostile input ------------------------------------------------------------

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let flow = format!("{BASE}x: {}1{}\n", "[".repeat(1000), "]".repeat(1000));
    let compact = format!("{BASE}x:\n{}1\n", "- ".repeat(1000));
    let block = |levels: usize| {
        let mut text = String::from(BASE);
        for level in 0..levels {
            text.push_str(&" ".repeat(level));
            text.push_str("a:\n");
        }
        text
    };
    let moderate = format!("{BASE}x: {}1{}\n", "[".repeat(100), "]".repeat(100));
    for text in [flow, compact, block(1000), block(300), block(40), moderate] {
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("(document): nesting deeper than 32 levels")
                || errors[0]
                    .contains("(document): line indented or nested by more than 256 columns")
                || errors[0].contains("(document): invalid yaml: recursion limit exceeded")
                || errors[0].contains("(document): file is "),
            "{}",
            errors[0]
        );
    }
}

#[test]
fn a_huge_file_is_refused_quickly() {
    let mut text = String::from(BASE);
    text.push_str("description: >\n");
    while text.len() < 1024 * 1024 {
        text.push_str("  padding padding padding padding padding padding padding padding\n");
    }
    let started = std::time::Instant::now();
    assert_eq!(
        errors(&text),
        [format!("bad.yaml:1:1: (document): file is {} bytes: a product definition may be at most 262144 bytes (256 KiB)", text.len())]
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("huge.yaml"), &text).expect("write");
    assert_eq!(
        load_path(dir.path(), &ctx()).expect_err("too big").0.len(),
        1
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Arbitrary text: any result, but never a panic.
        #[test]
        fn on_arbitrary_text(text in "[ -~\n\t]{0,400}") {
            let _ = parse_definition(Path::new("fuzz.yaml"), &text, &ctx());
        }

        /// An example with a slice cut out or replaced: close to valid,
        /// so it reaches deep into the checks.
        #[test]
        fn on_damaged_examples(which in 0usize..3, start in 0usize..4000, len in 0usize..40, insert in "[ -~\n]{0,8}") {
            let files = examples();
            let text = std::fs::read_to_string(&files[which]).expect("readable");
            let mut chars: Vec<char> = text.chars().collect();
            let start = start.min(chars.len());
            let end = (start + len).min(chars.len());
            chars.splice(start..end, insert.chars());
            let damaged: String = chars.into_iter().collect();
            if let Err(errors) = parse_definition(Path::new("fuzz.yaml"), &damaged, &ctx()) {
                prop_assert!(!errors.0.is_empty());
                for d in &errors.0 {
                    prop_assert!(d.line >= 1 && d.column >= 1, "{d}");
                    prop_assert!(!d.message.is_empty());
                }
            }
        }
    }
}

#[test]
fn field_names_and_enum_values_are_checked() {
    let text = format!("{BASE}  __x: {{ type: int }}\n  _meta: {{ type: int }}\n  9lives: {{ type: int }}\n  tags: {{ type: string, enum: [a, a, 3] }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:9:3: fields.__x: invalid field name `__x`: names starting with `__` are reserved by graphql",
            "bad.yaml:10:3: fields._meta: invalid field name `_meta`: reserved for instance metadata (version, first and last seen, source)",
            "bad.yaml:11:3: fields.9lives: invalid field name `9lives`: expected letters, digits and `_`, not starting with a digit, at most 64 characters",
            "bad.yaml:12:35: fields.tags.enum[1]: duplicate enum value `a`: each value may be listed once",
            "bad.yaml:12:38: fields.tags.enum[2]: expected a string, found the number `3` (quote it to use it as text)",
        ]
    );
}

#[test]
fn access_and_sync_settings_are_consistent() {
    let text = format!("{BASE}  n: {{ type: int }}\naccess:\n  'bad role': {{ read: true }}\n  viewer: {{ subscribe: true, mask: {{ n: {{ round: 0.5 }} }} }}\nsync:\n  - to: central\n    fields: [temp]\n    mask: {{ n: null }}\n    when: {{ on_change: false }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:11:3: access.bad role: invalid role name `bad role`: expected letters, digits, `_` and `-`, starting with a letter or `_`, at most 64 characters",
            "bad.yaml:12:24: access.viewer.subscribe: `subscribe: true` needs `read: true`: a role that cannot read cannot subscribe",
            "bad.yaml:12:41: access.viewer.mask.n: round step for an int field must be a whole number, found 0.5",
            "bad.yaml:16:11: sync[0].mask: mask on `n`, which this rule does not send: add it to `fields` or drop the mask",
            "bad.yaml:17:24: sync[0].when.on_change: `on_change: false` needs `min_interval`: without it this rule would never send",
        ]
    );
}

#[test]
fn source_settings_are_consistent() {
    let text = format!("{BASE}sources:\n  - mqtt: {{ topic: \"d/{{id}}\", map: {{ id: /id }}, qos: 2 }}\n  - http: {{ format: csv }}\n  - file: {{ path: x.csv, format: csv, columns: [id, temp, id], event_time: /ts }}\n  - {{}}\n  - mqtt: {{ topic: a }}\n    http: {{}}\n  - mqt: {{}}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:10:35: sources[0].mqtt.map: field `id` is both captured from the topic and mapped from the payload; keep one",
            "bad.yaml:10:53: sources[0].mqtt.qos: expected a whole number from 0 to 1, found the number `2`",
            "bad.yaml:11:21: sources[1].http.format: payload format `csv` is not supported by http sources; expected one of: json, ndjson",
            "bad.yaml:12:59: sources[2].file.columns[2]: column `id` is listed twice: each field may be one column",
            "bad.yaml:12:76: sources[2].file.event_time: event_time `/ts` does not name a csv column; expected `/` and one of: id, temp",
            "bad.yaml:13:5: sources[3]: expected one of mqtt, http, file, sparkplug, modbus, opcua, found an empty mapping",
            "bad.yaml:15:5: sources[4].http: expected one source kind per list item, found several: write each source as its own `- ` item",
            "bad.yaml:16:5: sources[5].mqt: unknown key `mqt` (did you mean `mqtt`?); expected one of: mqtt, http, file, sparkplug, modbus, opcua",
        ]
    );
}

#[test]
fn sparkplug_source_settings_are_checked() {
    let text = format!("{BASE}sources:\n  - sparkplug: {{ group: a/b, device: '+', metrics: {{ nope: X, temp: '' }}, online: temp, qos: 1 }}\n  - sparkplug: {{ edge_node: gw }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:10:25: sources[0].sparkplug.group: invalid sparkplug group `a/b`: one topic level, without `/`, `+` or `#`",
            "bad.yaml:10:38: sources[0].sparkplug.device: invalid sparkplug device id `+`: one topic level, without `/`, `+` or `#`",
            "bad.yaml:10:54: sources[0].sparkplug.metrics.nope: metrics target `nope` is not a declared field; declared fields: id, temp",
            "bad.yaml:10:69: sources[0].sparkplug.metrics.temp: expected a non-empty string, found an empty string",
            "bad.yaml:10:83: sources[0].sparkplug.online: online field `temp` must be a bool field: births set it true, deaths false",
            "bad.yaml:10:89: sources[0].sparkplug.qos: unknown key `qos`; expected one of: group, edge_node, device, metrics, online",
            "bad.yaml:11:16: sources[1].sparkplug.group: missing required key `group`",
            "bad.yaml:11:16: sources[1].sparkplug.metrics: missing required key `metrics`",
        ]
    );
}

#[test]
fn scalar_types_are_strict() {
    let text = format!("{BASE}freshness: 0s\nhistory: {{ keep: -1 }}\nquality: {{ quarantine_max: 0 }}\ndescription: 42\nretention: {{ expire_after: 10 }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:9:12: freshness: expected a duration greater than zero, found `0s`",
            "bad.yaml:10:18: history.keep: expected a whole number ≥ 0, found the number `-1`",
            "bad.yaml:11:28: quality.quarantine_max: expected a whole number ≥ 1, found the number `0`",
            "bad.yaml:12:14: description: expected a string, found the number `42` (quote it to use it as text)",
            "bad.yaml:13:28: retention.expire_after: invalid duration `10`: expected a number with a unit, e.g. 10s, 5m, 7d",
        ]
    );
}

/// The sketch in DESIGN.md is a valid definition.
#[test]
fn the_design_sketch_loads() {
    let text = "\
product: machine_health
version: 1
domain: plant-maintenance
owner: maintenance@example.com
description: Live health of every machine on the shop floor.
key: machine_id
fields:
  machine_id:     { type: string, required: true }
  site:           { type: string }
  temperature_c:  { type: float, min: -40, max: 150, unit: \"°C\" }
  status:         { type: string, enum: [ok, warn, fault] }
  operator_email: { type: string, classification: pii }
sources:
  - mqtt: { topic: \"plant/{site}/machine/{machine_id}/telemetry\", format: json,
            map: { temperature_c: /temp } }
  - http: {}
quality:   { on_invalid: quarantine }          # reject | quarantine | drop_field
history:   { keep: 10000, max_age: 7d }
retention: { expire_after: 30d }
freshness: 60s
access:
  operator: { read: true, mask: { operator_email: hash } }
  analyst:  { read: true, where: \"site == 'berlin'\" }
  admin:    { read: true, write: true, erase: true }
sync:
  - to: central
    fields: [machine_id, site, temperature_c, status]
    when: { on_change: true, min_interval: 10s }
    where: \"status != 'ok'\"
    priority: high
";
    let product =
        parse_definition(Path::new("sketch.yaml"), text, &ctx()).expect("the sketch is valid");
    assert_eq!(product.fields.len(), 5);
    assert!(schema_errors(text).is_empty(), "{:?}", schema_errors(text));
}

#[test]
fn windows_line_endings_and_a_bom_are_fine() {
    let crlf = BASE.replace('\n', "\r\n");
    parse_definition(Path::new("crlf.yaml"), &crlf, &ctx()).expect("CRLF");
    let bom = format!("\u{feff}{BASE}");
    parse_definition(Path::new("bom.yaml"), &bom, &ctx()).expect("BOM");
    let bad = format!("{}freshness: 7x\r\n", crlf);
    assert_eq!(
        errors(&bad),
        ["bad.yaml:9:12: freshness: invalid duration `7x`: expected a number with a unit, e.g. 10s, 5m, 7d"]
    );
}

#[test]
fn odd_yaml_is_an_error_not_a_crash() {
    let odd = [
        "",
        "# only a comment\n",
        "a: *x\n",
        "a: &x 1\nb: *x\n",
        "? [a, b]\n: c\n",
        "? a\n: b\n",
        "...\n",
        "--- \n...\n---\na: 1\n",
        "%YAML 1.2\n---\nproduct: x\n",
        "product: !!binary aGk=\n",
        "'unterminated\n",
        "a: 'x'\n  b: c\n",
        "\t- tab\n",
        "{a: 1, a: 2}\n",
        "- [a]\n- [b]\n",
        "a:\n  - b\n  c: d\n",
        "\u{0}\u{1}",
    ];
    for text in odd {
        let result = parse_definition(Path::new("odd.yaml"), text, &ctx());
        let errors = result.expect_err(text);
        assert!(!errors.0.is_empty(), "{text:?}");
        let _ = yaml_to_json(text);
    }
}

#[test]
fn modbus_source_settings_are_checked() {
    let text = format!("{BASE}  closed: {{ type: bool }}\nsources:\n  - modbus: {{ devices: [{{ address: '10.0.0.7:x', key: m1 }}, {{ address: 10.0.0.8, unit: 300, key: m1 }}], registers: {{ temp: {{ table: coil, address: 0, type: f32 }}, id: {{ address: 1 }}, nope: {{ address: 2 }}, closed: {{ address: 65535, type: u32, word_order: little }} }}, poll_interval: 0s }}\n  - modbus: {{ devices: [], registers: {{}} }}\n  - modbus: {{ devices: [{{ address: meter, key: a }}, {{ address: meter, key: a }}], registers: {{ temp: {{ address: 0, scale: x, byte_order: middle }}, closed: {{ table: coil, address: 0, scale: 2 }} }}, timeout: soon }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:11:36: sources[0].modbus.devices[0].address: invalid device address `10.0.0.7:x`: expected host or host:port, e.g. 10.0.0.7:502",
            "bad.yaml:11:88: sources[0].modbus.devices[1].unit: expected a whole number from 0 to 255, found the number `300`",
            "bad.yaml:11:157: sources[0].modbus.registers.temp.type: a coil table holds bits: its type is bool",
            "bad.yaml:11:164: sources[0].modbus.registers.id: field `id` is a string field but a modbus u16 value needs a numeric field (int or float)",
            "bad.yaml:11:184: sources[0].modbus.registers.nope: register target `nope` is not a declared field; declared fields: id, temp, closed",
            "bad.yaml:11:206: sources[0].modbus.registers.closed: field `closed` is a bool field but a modbus u32 value needs a numeric field (int or float)",
            "bad.yaml:11:282: sources[0].modbus.poll_interval: expected a duration greater than zero, found `0s`",
            "bad.yaml:12:24: sources[1].modbus.devices: expected at least one device",
            "bad.yaml:12:39: sources[1].modbus.registers: expected at least one register",
            "bad.yaml:13:53: sources[2].modbus.devices[1]: device key `a` is used twice: each device is its own entity",
            "bad.yaml:13:122: sources[2].modbus.registers.temp.scale: expected a finite number, found `x`",
            "bad.yaml:13:137: sources[2].modbus.registers.temp.byte_order: unknown byte_order `middle`; expected one of: big, little",
            "bad.yaml:13:182: sources[2].modbus.registers.closed.scale: `scale` does not apply to a bool value",
            "bad.yaml:13:205: sources[2].modbus.timeout: invalid duration `soon`: expected a number with a unit, e.g. 10s, 5m, 7d",
        ]
    );
}

#[test]
fn opcua_source_settings_are_checked() {
    let text = format!("{BASE}sources:\n  - opcua: {{ endpoint: 'http://plc:4840/', security: sign, publishing_interval: 10ms, user: {{ name: u, password_env: 'my password' }}, entities: [{{ key: l1, nodes: {{ temp: 'Line1.Temp', nope: 'ns=2;s=X' }} }}, {{ key: l1, nodes: {{ temp: 'ns=2;i=x' }} }}] }}\n  - opcua: {{ endpoint: 'opc.tcp://plc:99999/', entities: [] }}\n  - opcua: {{ endpoint: 'opc.tcp://plc/', securty: none, entities: [{{ key: a, nodes: {{ temp: 'ns=2;s=T' }} }}, {{ key: b, nodes: {{ id: 'ns=2;s=T' }} }}, {{ key: c, nodes: {{}} }}] }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:10:24: sources[0].opcua.endpoint: invalid OPC UA endpoint `http://plc:4840/`: it must start with opc.tcp://; expected opc.tcp://host:port/path, e.g. opc.tcp://10.0.0.9:4840/",
            "bad.yaml:10:54: sources[0].opcua.security: security `sign` is not supported yet: this meshlet's OPC UA client opens channels with security mode none only (run it on a trusted network or a VPN)",
            "bad.yaml:10:81: sources[0].opcua.publishing_interval: publishing_interval 10ms is below the least this source asks for, 50ms",
            "bad.yaml:10:118: sources[0].opcua.user.password_env: `my password` is not an environment variable name (letters, digits and _, not starting with a digit); the password itself never goes in a definition",
            "bad.yaml:10:172: sources[0].opcua.entities[0].nodes.temp: invalid node id `Line1.Temp`: no identifier type: write s=<name> for a string id, i=<number> for a numeric one; expected e.g. \"ns=2;s=Line1.Speed\" or \"ns=3;i=1001\"",
            "bad.yaml:10:186: sources[0].opcua.entities[0].nodes.nope: node target `nope` is not a declared field; declared fields: id, temp",
            "bad.yaml:10:234: sources[0].opcua.entities[1].nodes.temp: invalid node id `ns=2;i=x`: a numeric identifier (i=) is a number from 0 to 4294967295; expected e.g. \"ns=2;s=Line1.Speed\" or \"ns=3;i=1001\"",
            "bad.yaml:11:24: sources[1].opcua.endpoint: invalid OPC UA endpoint `opc.tcp://plc:99999/`: its port is not a number from 1 to 65535; expected opc.tcp://host:port/path, e.g. opc.tcp://10.0.0.9:4840/",
            "bad.yaml:11:58: sources[1].opcua.entities: expected at least one entity",
            "bad.yaml:12:42: sources[2].opcua.securty: unknown key `securty` (did you mean `security`?); expected one of: endpoint, publishing_interval, security, user, entities, time_field",
            "bad.yaml:12:109: sources[2].opcua.entities[1]: node `ns=2;s=T` is mapped twice (entity `a` field `temp`, entity `b` field `id`): one node feeds one field",
            "bad.yaml:12:165: sources[2].opcua.entities[2].nodes: expected at least one node",
        ]
    );
}

/// `time_field` of a polled source: a declared timestamp field, not also
/// read from the device.
#[test]
fn polled_time_fields_are_checked() {
    let text = format!("{BASE}  at: {{ type: timestamp }}\nsources:\n  - modbus: {{ devices: [{{ address: m, key: a }}], registers: {{ temp: {{ address: 0 }} }}, time_field: when }}\n  - opcua: {{ endpoint: 'opc.tcp://plc/', entities: [{{ key: a, nodes: {{ at: 'ns=2;s=A' }} }}], time_field: at }}\n  - opcua: {{ endpoint: 'opc.tcp://plc/', entities: [{{ key: a, nodes: {{ temp: 'ns=2;s=T' }} }}], time_field: id }}\n  - modbus: {{ devices: [{{ address: m, key: a }}], registers: {{ temp: {{ address: 0 }} }}, time_field: at }}\n");
    assert_eq!(
        errors(&text),
        [
            "bad.yaml:11:99: sources[0].modbus.time_field: time field `when` is not a declared field; declared fields: id, temp, at",
            "bad.yaml:12:105: sources[1].opcua.time_field: field `at` is both read from a node and filled with the arrival time; keep one",
            "bad.yaml:13:107: sources[2].opcua.time_field: time field `id` must be a timestamp field: it takes the time each record is read",
        ]
    );
}

#[test]
fn the_modbus_example_loads_and_matches_the_json_schema() {
    let file = root().join("schema/modbus/modbus_meter.yaml");
    let text = std::fs::read_to_string(&file).expect("readable");
    let product = match parse_definition(&file, &text, &ctx()) {
        Ok(p) => p,
        Err(errors) => panic!("the modbus example does not load:\n{errors}"),
    };
    let Some(modbus) = product.sources[0].get::<ModbusSource>() else {
        panic!("modbus first")
    };
    assert_eq!(modbus.devices[0].address, "127.0.0.1:1502");
    assert_eq!(modbus.registers.len(), 4);
    assert_eq!(schema_errors(&text), Vec::<String>::new());
    let bad = text.replace("type: u32", "type: u64");
    assert_eq!(schema_errors(&bad).len(), 1, "{:?}", schema_errors(&bad));
}

#[test]
fn the_opcua_example_loads_and_matches_the_json_schema() {
    let file = root().join("schema/opcua/opcua_line.yaml");
    let text = std::fs::read_to_string(&file).expect("readable");
    let product = match parse_definition(&file, &text, &ctx()) {
        Ok(p) => p,
        Err(errors) => panic!("the opcua example does not load:\n{errors}"),
    };
    let Some(opcua) = product.sources[0].get::<OpcuaSource>() else {
        panic!("opcua first")
    };
    assert_eq!(opcua.endpoint, "opc.tcp://127.0.0.1:4840/meshlet/");
    assert_eq!(opcua.entities.len(), 2);
    assert_eq!(opcua.entities[1].nodes["count"], "ns=2;s=Line2.Count");
    assert_eq!(schema_errors(&text), Vec::<String>::new());
    let bad = text.replace("\"ns=2;s=Line1.Speed\"", "\"Line1.Speed\"");
    assert_eq!(schema_errors(&bad).len(), 1, "{:?}", schema_errors(&bad));
}
