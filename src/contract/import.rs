//! ODCS contract → product-definition skeleton.
//!
//! What maps cleanly is carried over: name, version, domain, owner,
//! description, key (the primary key property), fields with their types,
//! required, classification, pattern, bounds, enum values (from 3.2 `enum`
//! or a library `invalidValues` check with `validValues`) and units, the
//! latency SLA as freshness and the retention SLA as expiry. Sources are
//! left to the operator — a contract does not say which topic a device
//! publishes on — and so are access roles (ODCS roles name IAM roles, not
//! field masks). The caller writes the text out and runs `meshlet check`.

use serde_json::{json, Map, Value};

use super::to_yaml;

/// Why a contract could not become a skeleton.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a readable YAML or JSON document: {0}")]
    Unreadable(String),
    #[error("not an ODCS data contract: {0}")]
    NotAContract(String),
    #[error("the contract's schema has {0} objects; a product is one object — pass --object NAME")]
    WhichObject(usize),
    #[error("the contract has no schema object named `{0}`")]
    NoSuchObject(String),
    #[error("schema object `{object}` has no properties to make fields of")]
    NoProperties { object: String },
}

/// The product-definition YAML for `contract` (YAML or JSON text); `object`
/// picks one schema object when the contract has several.
pub fn import(contract: &str, object: Option<&str>) -> Result<String, ImportError> {
    let contract = crate::product::yaml_to_json(contract).map_err(|e| {
        ImportError::Unreadable(
            e.messages()
                .into_iter()
                .next()
                .unwrap_or_else(|| "empty".into()),
        )
    })?;
    let top = contract
        .as_object()
        .ok_or_else(|| ImportError::NotAContract("the document is not a mapping".into()))?;
    match top.get("kind").and_then(Value::as_str) {
        Some("DataContract") => {}
        Some(other) => {
            return Err(ImportError::NotAContract(format!(
                "kind is `{other}`, expected `DataContract`"
            )))
        }
        None => return Err(ImportError::NotAContract("no `kind: DataContract`".into())),
    }
    let objects: Vec<&Map<String, Value>> = top
        .get("schema")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    let chosen = match object {
        Some(name) => objects
            .iter()
            .find(|o| o.get("name").and_then(Value::as_str) == Some(name))
            .copied()
            .ok_or_else(|| ImportError::NoSuchObject(name.to_string()))?,
        None if objects.len() == 1 => objects[0],
        None => return Err(ImportError::WhichObject(objects.len())),
    };
    let object_name = text(chosen, "name").unwrap_or("product");
    let properties: Vec<&Map<String, Value>> = chosen
        .get("properties")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default();
    if properties.is_empty() {
        return Err(ImportError::NoProperties {
            object: object_name.to_string(),
        });
    }

    let mut definition = Map::new();
    let product_name = snake(text(top, "name").unwrap_or(object_name));
    definition.insert("product".into(), json!(product_name));
    definition.insert("version".into(), json!(major_version(top)));
    definition.insert(
        "domain".into(),
        json!(text(top, "domain")
            .map(snake_dashes)
            .unwrap_or_else(|| "unassigned".into())),
    );
    definition.insert("owner".into(), json!(owner(top)));
    let description = top
        .get("description")
        .and_then(|d| d.get("purpose"))
        .and_then(Value::as_str)
        .or_else(|| text(chosen, "description"));
    if let Some(description) = description {
        definition.insert("description".into(), json!(description));
    }
    let key = properties
        .iter()
        .find(|p| p.get("primaryKey").and_then(Value::as_bool) == Some(true))
        .or_else(|| properties.first())
        .and_then(|p| text(p, "name"))
        .map(snake)
        .unwrap_or_else(|| "id".into());
    definition.insert("key".into(), json!(key));
    let mut fields = Map::new();
    for property in &properties {
        let Some(name) = text(property, "name") else {
            continue;
        };
        fields.insert(snake(name), field(property));
    }
    definition.insert("fields".into(), Value::Object(fields));
    for sla in top
        .get("slaProperties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let property = sla.get("property").and_then(Value::as_str);
        let element = sla.get("element").and_then(Value::as_str);
        let Some(duration) = sla_duration(sla) else {
            continue;
        };
        match (property, element) {
            (Some("latency") | Some("freshness"), _) => {
                definition.insert("freshness".into(), json!(duration));
            }
            (Some("retention"), Some("history")) => {
                let history = definition.entry("history").or_insert_with(|| json!({}));
                history["max_age"] = json!(duration);
            }
            (Some("retention"), _) => {
                definition.insert("retention".into(), json!({ "expire_after": duration }));
            }
            _ => {}
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "# Imported from ODCS contract `{}`.\n# Add `sources:` (where devices publish), `access:` roles and `sync:` rules,\n# then validate with `meshlet check`.\n",
        top.get("id").and_then(Value::as_str).unwrap_or("?")
    ));
    out.push_str(&to_yaml(&Value::Object(definition)));
    Ok(out)
}

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// `3.1.0` → 3; anything unreadable → 1.
fn major_version(top: &Map<String, Value>) -> u64 {
    match top.get("version") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(1).max(1),
        Some(Value::String(s)) => s
            .trim_start_matches(['v', 'V'])
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(1u64)
            .max(1),
        _ => 1,
    }
}

fn owner(top: &Map<String, Value>) -> String {
    let members = match top.get("team") {
        Some(Value::Object(team)) => team.get("members").and_then(Value::as_array),
        Some(Value::Array(members)) => Some(members),
        _ => None,
    };
    let members: Vec<&Map<String, Value>> = members
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect();
    members
        .iter()
        .find(|m| text(m, "role").is_some_and(|r| r.eq_ignore_ascii_case("owner")))
        .or_else(|| members.first())
        .and_then(|m| text(m, "username"))
        .map(str::to_string)
        .or_else(|| {
            top.get("customProperties")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("property").and_then(Value::as_str) == Some("owner"))
                .and_then(|p| p.get("value"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "owner@example.com".into())
}

fn field(property: &Map<String, Value>) -> Value {
    let physical = text(property, "physicalType");
    let ty = match (text(property, "logicalType"), physical) {
        // A meshlet export names the exact type physically.
        (_, Some(t @ ("string" | "int" | "float" | "bool" | "timestamp" | "json"))) => t,
        (Some("integer"), _) => "int",
        (Some("number"), _) => "float",
        (Some("boolean"), _) => "bool",
        (Some("timestamp" | "date" | "time"), _) => "timestamp",
        (Some("object" | "array" | "map" | "vector"), _) => "json",
        _ => "string",
    };
    let mut field = Map::new();
    field.insert("type".into(), json!(ty));
    if property.get("required").and_then(Value::as_bool) == Some(true) {
        field.insert("required".into(), json!(true));
    }
    let options = property
        .get("logicalTypeOptions")
        .and_then(Value::as_object);
    if matches!(ty, "int" | "float") {
        for (from, to) in [("minimum", "min"), ("maximum", "max")] {
            if let Some(bound) = options.and_then(|o| o.get(from)).filter(|v| v.is_number()) {
                field.insert(to.into(), bound.clone());
            }
        }
    }
    let checks: Vec<&Map<String, Value>> = property
        .get("quality")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect();
    if ty == "string" {
        let mut values: Vec<Value> = property
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("value").or(Some(v)).cloned())
            .filter(Value::is_string)
            .collect();
        if values.is_empty() {
            values = checks
                .iter()
                .filter_map(|c| c.get("arguments")?.get("validValues")?.as_array())
                .flatten()
                .filter(|v| v.is_string())
                .cloned()
                .collect();
        }
        if !values.is_empty() {
            field.insert("enum".into(), Value::Array(values));
        }
        if let Some(pattern) = options
            .and_then(|o| o.get("pattern"))
            .filter(|v| v.is_string())
        {
            field.insert("pattern".into(), pattern.clone());
        }
    }
    let unit = property
        .get("customProperties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("property").and_then(Value::as_str) == Some("unit"))
        .and_then(|p| p.get("value"))
        .and_then(Value::as_str);
    if let Some(unit) = unit {
        field.insert("unit".into(), json!(unit));
    }
    if let Some(description) = text(property, "description") {
        field.insert("description".into(), json!(description));
    }
    if let Some(class) = text(property, "classification")
        .map(str::to_ascii_lowercase)
        .filter(|c| crate::product::Classification::NAMES.contains(&c.as_str()))
    {
        field.insert("classification".into(), json!(class));
    }
    Value::Object(field)
}

/// An SLA value with its unit as a definition duration (`60s`, `90d`).
fn sla_duration(sla: &Value) -> Option<String> {
    let value = sla.get("value")?;
    let amount = value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))?;
    let unit = match sla.get("unit").and_then(Value::as_str).unwrap_or("d") {
        "ms" => "ms",
        "s" | "sec" | "second" | "seconds" => "s",
        "m" | "min" | "minute" | "minutes" => "m",
        "h" | "hr" | "hour" | "hours" => "h",
        "d" | "day" | "days" => "d",
        "w" | "week" | "weeks" => "w",
        "y" | "yr" | "year" | "years" => "y",
        _ => return None,
    };
    Some(match unit {
        "w" => format!("{}d", amount * 7),
        "y" => format!("{}d", amount * 365),
        _ => format!("{amount}{unit}"),
    })
}

/// A name as a definition accepts it: lowercase, `_` for anything else,
/// starting with a letter.
fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed = out.trim_matches('_').to_string();
    let named = if trimmed.starts_with(|c: char| c.is_ascii_alphabetic()) {
        trimmed
    } else {
        format!("p_{trimmed}")
    };
    named.chars().take(63).collect()
}

/// Domains allow `-` too.
fn snake_dashes(name: &str) -> String {
    name.split('-').map(snake).collect::<Vec<_>>().join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_definition_names() {
        assert_eq!(snake("MachineHealth"), "machine_health");
        assert_eq!(snake("tbl-orders v2"), "tbl_orders_v2");
        assert_eq!(snake("42things"), "p_42things");
        assert_eq!(snake_dashes("plant-Maintenance"), "plant-maintenance");
    }

    #[test]
    fn non_contracts_are_refused() {
        assert!(matches!(
            import("[1, 2]", None),
            Err(ImportError::NotAContract(_) | ImportError::Unreadable(_))
        ));
        assert!(matches!(
            import("kind: Other\n", None),
            Err(ImportError::NotAContract(_))
        ));
        assert!(matches!(
            import("a: [", None),
            Err(ImportError::Unreadable(_))
        ));
        assert!(matches!(
            import("kind: DataContract\nschema: []\n", None),
            Err(ImportError::WhichObject(0))
        ));
    }
}
