//! Product definition → ODCS contract.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::product::{Field, FieldType, Mask, OnInvalid, Product, Source, SyncMode};

/// The ODCS version exported contracts declare.
pub const ODCS_API_VERSION: &str = "v3.1.0";
/// The vendor tag on meshlet's custom properties.
const VENDOR: &str = "meshlet";

/// The ODCS contract of `product`, as a JSON value (see
/// [`super::to_yaml`] for the YAML file).
pub fn export(product: &Product) -> Value {
    let mut contract = Map::new();
    contract.insert("apiVersion".into(), json!(ODCS_API_VERSION));
    contract.insert("kind".into(), json!("DataContract"));
    contract.insert("id".into(), json!(contract_id(product)));
    contract.insert("name".into(), json!(product.name));
    contract.insert("version".into(), json!(format!("{}.0.0", product.version)));
    contract.insert("status".into(), json!("active"));
    contract.insert("domain".into(), json!(product.domain));
    contract.insert("dataProduct".into(), json!(product.name));
    if let Some(description) = &product.description {
        contract.insert(
            "description".into(),
            json!({ "purpose": description.trim() }),
        );
    }
    contract.insert("schema".into(), json!([schema_object(product)]));
    let sla = sla_properties(product);
    if !sla.is_empty() {
        contract.insert("slaProperties".into(), Value::Array(sla));
    }
    contract.insert(
        "team".into(),
        json!({
            "name": product.domain,
            "members": [{ "username": product.owner, "role": "owner" }],
        }),
    );
    contract.insert(
        "support".into(),
        json!([{ "channel": "owner", "tool": "email", "url": format!("mailto:{}", product.owner) }]),
    );
    let roles = roles(product);
    if !roles.is_empty() {
        contract.insert("roles".into(), Value::Array(roles));
    }
    contract.insert("customProperties".into(), Value::Array(custom(product)));
    Value::Object(contract)
}

/// `urn:meshlet:<domain>:<product>:v<version>`: stable for one version of
/// one product, the same on every node that runs it.
fn contract_id(product: &Product) -> String {
    format!(
        "urn:meshlet:{}:{}:v{}",
        product.domain, product.name, product.version
    )
}

fn schema_object(product: &Product) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), json!(product.name));
    object.insert("physicalName".into(), json!(product.name));
    object.insert("physicalType".into(), json!("entity"));
    object.insert("logicalType".into(), json!("object"));
    if let Some(description) = &product.description {
        object.insert("description".into(), json!(description.trim()));
    }
    object.insert(
        "dataGranularityDescription".into(),
        json!(format!(
            "One instance per {} (latest state), with its history of events",
            product.key
        )),
    );
    let properties: Vec<Value> = product
        .fields
        .values()
        .map(|field| property(field, field.name == product.key))
        .collect();
    object.insert("properties".into(), Value::Array(properties));
    object.insert(
        "quality".into(),
        json!([{
            "type": "text",
            "name": "on_invalid",
            "dimension": "conformity",
            "description": on_invalid_text(product),
        }]),
    );
    Value::Object(object)
}

fn on_invalid_text(product: &Product) -> String {
    match product.quality.on_invalid {
        OnInvalid::Reject => "Records that break a rule are rejected at the edge and counted.".into(),
        OnInvalid::Quarantine => format!(
            "Records that break a rule are quarantined at the edge (raw payload and every reason kept, at most {} per node) and can be replayed.",
            product.quality.quarantine_max
        ),
        OnInvalid::DropField => {
            "Fields that break a rule are dropped from the record; the rest is kept.".into()
        }
    }
}

fn logical_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "string",
        FieldType::Int => "integer",
        FieldType::Float => "number",
        FieldType::Bool => "boolean",
        FieldType::Timestamp => "timestamp",
        FieldType::Json => "object",
    }
}

/// The pattern as written in the definition (it is compiled anchored).
pub(super) fn pattern_source(field: &Field) -> Option<String> {
    field.pattern.as_ref().map(|regex| {
        let anchored = regex.as_str();
        anchored
            .strip_prefix("^(?:")
            .and_then(|rest| rest.strip_suffix(")$"))
            .unwrap_or(anchored)
            .to_string()
    })
}

fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn property(field: &Field, is_key: bool) -> Value {
    let mut property = Map::new();
    property.insert("name".into(), json!(field.name));
    property.insert("physicalName".into(), json!(field.name));
    property.insert("logicalType".into(), json!(logical_type(field.ty)));
    property.insert("physicalType".into(), json!(field.ty.name()));
    if let Some(description) = &field.description {
        property.insert("description".into(), json!(description.trim()));
    }
    property.insert("required".into(), json!(field.required || is_key));
    if is_key {
        property.insert("primaryKey".into(), json!(true));
        property.insert("primaryKeyPosition".into(), json!(1));
        property.insert("unique".into(), json!(true));
    }
    property.insert("classification".into(), json!(field.classification.name()));
    let mut options = Map::new();
    match field.ty {
        FieldType::String => {
            if let Some(pattern) = pattern_source(field) {
                options.insert("pattern".into(), json!(pattern));
            }
        }
        FieldType::Int | FieldType::Float => {
            if let Some(min) = field.min {
                options.insert("minimum".into(), number(min));
            }
            if let Some(max) = field.max {
                options.insert("maximum".into(), number(max));
            }
        }
        _ => {}
    }
    if !options.is_empty() {
        property.insert("logicalTypeOptions".into(), Value::Object(options));
    }
    let quality = property_quality(field, is_key);
    if !quality.is_empty() {
        property.insert("quality".into(), Value::Array(quality));
    }
    if let Some(unit) = &field.unit {
        property.insert(
            "customProperties".into(),
            json!([{ "property": "unit", "value": unit, "vendor": VENDOR }]),
        );
    }
    Value::Object(property)
}

/// The definition's constraints as ODCS library checks, so contract
/// testers run the same rules the edge enforces.
fn property_quality(field: &Field, is_key: bool) -> Vec<Value> {
    let mut checks = Vec::new();
    if field.required || is_key {
        checks.push(json!({
            "type": "library",
            "metric": "nullValues",
            "mustBe": 0,
            "dimension": "completeness",
            "description": format!("`{}` is always present", field.name),
        }));
    }
    if is_key {
        checks.push(json!({
            "type": "library",
            "metric": "duplicateValues",
            "mustBe": 0,
            "dimension": "uniqueness",
            "description": "One instance per key",
        }));
    }
    if !field.enum_values.is_empty() {
        checks.push(json!({
            "type": "library",
            "metric": "invalidValues",
            "arguments": { "validValues": field.enum_values },
            "mustBe": 0,
            "dimension": "conformity",
            "description": format!("`{}` is one of the listed values", field.name),
        }));
    }
    if let Some(pattern) = pattern_source(field) {
        checks.push(json!({
            "type": "library",
            "metric": "invalidValues",
            "arguments": { "pattern": pattern },
            "mustBe": 0,
            "dimension": "conformity",
            "description": format!("`{}` matches the pattern as a whole", field.name),
        }));
    }
    checks
}

/// A duration as (value, ODCS unit), in the largest whole unit.
pub(super) fn duration_value(duration: Duration) -> (u64, &'static str) {
    let secs = duration.as_secs();
    if secs == 0 {
        return (duration.as_millis() as u64, "ms");
    }
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs % size == 0 {
            return (secs / size, unit);
        }
    }
    (secs, "s")
}

fn sla_properties(product: &Product) -> Vec<Value> {
    let mut sla = Vec::new();
    if let Some(freshness) = product.freshness {
        let (value, unit) = duration_value(freshness);
        sla.push(json!({
            "property": "latency",
            "value": value,
            "unit": unit,
            "driver": "operational",
            "description": "An instance not updated for this long is marked stale",
        }));
    }
    if let Some(expire) = product.retention.expire_after {
        let (value, unit) = duration_value(expire);
        sla.push(json!({
            "property": "retention",
            "value": value,
            "unit": unit,
            "description": "An instance not updated for this long is removed",
        }));
    }
    if let Some(max_age) = product.history.max_age {
        let (value, unit) = duration_value(max_age);
        sla.push(json!({
            "property": "retention",
            "value": value,
            "unit": unit,
            "element": "history",
            "description": "History events older than this are removed",
        }));
    }
    sla
}

fn roles(product: &Product) -> Vec<Value> {
    product
        .access
        .values()
        .map(|rule| {
            let mut rights = Vec::new();
            for (on, name) in [
                (rule.read, "read"),
                (rule.subscribe, "subscribe"),
                (rule.write, "write"),
                (rule.erase, "erase"),
            ] {
                if on {
                    rights.push(name);
                }
            }
            let mut description = Vec::new();
            if let Some(filter) = &rule.row_filter {
                description.push(format!("rows where {}", filter.source()));
            }
            if !rule.masks.is_empty() {
                let masks: Vec<String> = rule
                    .masks
                    .iter()
                    .map(|(field, mask)| format!("{field}: {}", mask_text(mask)))
                    .collect();
                description.push(format!("masked: {}", masks.join(", ")));
            }
            let mut role = Map::new();
            role.insert("role".into(), json!(rule.role));
            role.insert(
                "access".into(),
                json!(if rights.is_empty() {
                    "none".to_string()
                } else {
                    rights.join(",")
                }),
            );
            if !description.is_empty() {
                role.insert("description".into(), json!(description.join("; ")));
            }
            Value::Object(role)
        })
        .collect()
}

fn mask_text(mask: &Mask) -> String {
    mask.to_string()
}

/// The edge-only parts, for a reader who wants the whole picture.
fn custom(product: &Product) -> Vec<Value> {
    let mut properties = vec![json!({
        "property": "owner",
        "value": product.owner,
        "vendor": VENDOR,
    })];
    let sources: Vec<Value> = product.sources.iter().map(source_text).collect();
    if !sources.is_empty() {
        properties.push(json!({ "property": "sources", "value": sources, "vendor": VENDOR }));
    }
    let mut history = Map::new();
    if let Some(keep) = product.history.keep {
        history.insert("keep".into(), json!(keep));
    }
    if let Some(max_age) = product.history.max_age {
        history.insert(
            "maxAge".into(),
            json!(humantime::format_duration(max_age).to_string()),
        );
    }
    if !history.is_empty() {
        properties.push(json!({ "property": "history", "value": history, "vendor": VENDOR }));
    }
    let sync: Vec<Value> = product
        .sync
        .iter()
        .map(|rule| {
            json!({
                "to": rule.to,
                "mode": match rule.mode { SyncMode::History => "history", _ => "latest" },
                "priority": rule.priority.name(),
                "fields": rule.fields,
                "where": rule.row_filter.as_ref().map(|f| f.source().to_string()),
            })
        })
        .collect();
    if !sync.is_empty() {
        properties.push(json!({ "property": "sync", "value": sync, "vendor": VENDOR }));
    }
    properties
}

fn source_text(source: &Source) -> Value {
    source.settings().contract()
}
