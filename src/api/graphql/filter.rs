//! The typed `filter` argument of connections and subscriptions: its
//! GraphQL input types, its parsed form and its evaluation on an
//! instance's fields. Pure: no store, no schema state.
//!
//! Semantics, as a user of SQL expects:
//! - every operator of one field filter, and every entry of one filter
//!   object, must hold (AND); `and: [...]`, `or: [...]`, `not: {...}`
//!   combine filters;
//! - a comparison with an absent or null value is false, `ne` included
//!   (`{ne: "ok"}` does not match an instance without the field): ask for
//!   those with `isNull: true`;
//! - `lt/lte/gt/gte` order numbers numerically, strings by bytes (the
//!   order of `orderBy`), timestamps by time; `contains` is a
//!   case-sensitive substring test on strings.
//!
//! A filter is bounded: at most [`MAX_DEPTH`] levels of `and/or/not` and
//! [`MAX_TERMS`] operators and `in` values in all, so one request cannot
//! make every instance test cost more than a few microseconds.

use std::cmp::Ordering;
use std::collections::HashMap;

use async_graphql::dynamic::{InputObject, InputValue, TypeRef};
use async_graphql::Value as Gql;

use super::values;
use crate::product::{FieldType, Product};
use crate::record::{Fields, Value};

pub(crate) const MAX_DEPTH: usize = 16;
pub(crate) const MAX_TERMS: usize = 1_000;

/// A parsed filter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Field { field: String, op: Op },
}

/// One operator on one field.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Eq(Value),
    Ne(Value),
    Lt(Value),
    Lte(Value),
    Gt(Value),
    Gte(Value),
    In(Vec<Value>),
    Contains(String),
    IsNull(bool),
}

/// Operators each field type offers, in schema order.
fn operators(ty: FieldType) -> &'static [&'static str] {
    match ty {
        FieldType::String => &[
            "eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "isNull",
        ],
        FieldType::Int | FieldType::Float | FieldType::Timestamp => {
            &["eq", "ne", "lt", "lte", "gt", "gte", "in", "isNull"]
        }
        FieldType::Bool | FieldType::Json => &["eq", "ne", "isNull"],
    }
}

/// The name of the shared filter input of a field type.
pub(crate) fn field_filter_type(ty: FieldType) -> String {
    format!("{}Filter", values::type_name(ty))
}

/// The shared per-type filter inputs (`StringFilter`, `LongFilter`...).
pub(crate) fn field_filter_inputs() -> Vec<InputObject> {
    FieldType::ALL
        .into_iter()
        .map(|ty| {
            let scalar = values::type_name(ty);
            let mut input = InputObject::new(field_filter_type(ty)).description(format!(
                "Conditions on a {} field; all given must hold. Comparisons with an absent value are false: use `isNull`.",
                ty.name()
            ));
            for op in operators(ty) {
                let value = match *op {
                    "in" => InputValue::new(*op, TypeRef::named_nn_list(scalar))
                        .description("The value is one of these."),
                    "isNull" => InputValue::new(*op, TypeRef::named(TypeRef::BOOLEAN))
                        .description("true: the field is absent or null; false: it has a value."),
                    "contains" => InputValue::new(*op, TypeRef::named(TypeRef::STRING))
                        .description("The value contains this text (case-sensitive)."),
                    _ => InputValue::new(*op, TypeRef::named(scalar)),
                };
                input = input.field(value);
            }
            input
        })
        .collect()
}

/// The filter input of one product.
pub(crate) fn product_filter_input(
    product: &Product,
    enums: &super::enums::Enums,
    type_name: &str,
) -> InputObject {
    let mut input = InputObject::new(type_name).description(format!(
        "Conditions on `{}` instances; all given must hold.",
        product.name
    ));
    for field in product.fields.values() {
        let filter_type = match enums.get(&field.name) {
            Some(e) => super::enums::filter_name(&e.name),
            None => field_filter_type(field.ty),
        };
        let mut value = InputValue::new(&field.name, TypeRef::named(filter_type));
        if let Some(description) = &field.description {
            value = value.description(description);
        }
        input = input.field(value);
    }
    input
        .field(
            InputValue::new("and", TypeRef::named_nn_list(type_name))
                .description("Every filter of the list holds."),
        )
        .field(
            InputValue::new("or", TypeRef::named_nn_list(type_name))
                .description("At least one filter of the list holds."),
        )
        .field(
            InputValue::new("not", TypeRef::named(type_name))
                .description("The filter does not hold."),
        )
}

/// Parses a `filter` argument value; `Ok(None)` for an absent or empty
/// filter.
pub(crate) fn parse(
    fields: &HashMap<String, FieldType>,
    value: &Gql,
) -> Result<Option<Filter>, String> {
    let mut terms = 0usize;
    let filter = parse_object(fields, value, 0, &mut terms)?;
    Ok(match filter {
        Filter::And(parts) if parts.is_empty() => None,
        filter => Some(filter),
    })
}

fn parse_object(
    fields: &HashMap<String, FieldType>,
    value: &Gql,
    depth: usize,
    terms: &mut usize,
) -> Result<Filter, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "filter nests deeper than {MAX_DEPTH} levels of and/or/not"
        ));
    }
    let Gql::Object(entries) = value else {
        return Err(format!("expected a filter object, got {value}"));
    };
    let mut all = Vec::new();
    for (name, entry) in entries {
        if matches!(entry, Gql::Null) {
            continue;
        }
        match name.as_str() {
            "and" | "or" => {
                let Gql::List(items) = entry else {
                    return Err(format!("`{name}` expects a list of filters"));
                };
                let parts = items
                    .iter()
                    .map(|item| parse_object(fields, item, depth + 1, terms))
                    .collect::<Result<Vec<_>, _>>()?;
                all.push(if name.as_str() == "and" {
                    Filter::And(parts)
                } else {
                    Filter::Or(parts)
                });
            }
            "not" => all.push(Filter::Not(Box::new(parse_object(
                fields,
                entry,
                depth + 1,
                terms,
            )?))),
            field => {
                let ty = *fields
                    .get(field)
                    .ok_or_else(|| format!("no field named `{field}`"))?;
                all.extend(parse_field(field, ty, entry, terms)?);
            }
        }
    }
    Ok(if all.len() == 1 {
        all.remove(0)
    } else {
        Filter::And(all)
    })
}

fn parse_field(
    field: &str,
    ty: FieldType,
    value: &Gql,
    terms: &mut usize,
) -> Result<Vec<Filter>, String> {
    let Gql::Object(ops) = value else {
        return Err(format!("`{field}`: expected an object of operators"));
    };
    let mut out = Vec::new();
    for (name, operand) in ops {
        if matches!(operand, Gql::Null) {
            continue;
        }
        *terms += 1;
        let one = |v: &Gql| values::input(ty, v).map_err(|e| format!("`{field}.{name}`: {e}"));
        let op = match name.as_str() {
            "eq" => Op::Eq(one(operand)?),
            "ne" => Op::Ne(one(operand)?),
            "lt" => Op::Lt(one(operand)?),
            "lte" => Op::Lte(one(operand)?),
            "gt" => Op::Gt(one(operand)?),
            "gte" => Op::Gte(one(operand)?),
            "in" => {
                let Gql::List(items) = operand else {
                    return Err(format!("`{field}.in` expects a list"));
                };
                *terms += items.len();
                Op::In(items.iter().map(one).collect::<Result<_, _>>()?)
            }
            "contains" => match operand {
                Gql::String(s) => Op::Contains(s.clone()),
                other => return Err(format!("`{field}.contains` expects a string, got {other}")),
            },
            "isNull" => match operand {
                Gql::Boolean(b) => Op::IsNull(*b),
                other => return Err(format!("`{field}.isNull` expects a boolean, got {other}")),
            },
            other => return Err(format!("`{field}`: unknown operator `{other}`")),
        };
        if *terms > MAX_TERMS {
            return Err(format!(
                "filter has more than {MAX_TERMS} operators and `in` values"
            ));
        }
        out.push(Filter::Field {
            field: field.to_string(),
            op,
        });
    }
    Ok(out)
}

impl Filter {
    /// Whether an instance with these fields matches.
    pub(crate) fn matches(&self, fields: &Fields) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|f| f.matches(fields)),
            Filter::Or(parts) => parts.iter().any(|f| f.matches(fields)),
            Filter::Not(inner) => !inner.matches(fields),
            Filter::Field { field, op } => {
                let value = fields.get(field).filter(|v| !v.is_null());
                op.holds(value)
            }
        }
    }
}

impl Op {
    fn holds(&self, value: Option<&Value>) -> bool {
        if let Op::IsNull(wanted) = self {
            return value.is_none() == *wanted;
        }
        let Some(value) = value else {
            return false;
        };
        match self {
            Op::Eq(x) => equal(value, x),
            Op::Ne(x) => !x.is_null() && !equal(value, x),
            Op::Lt(x) => compare(value, x) == Some(Ordering::Less),
            Op::Lte(x) => matches!(compare(value, x), Some(Ordering::Less | Ordering::Equal)),
            Op::Gt(x) => compare(value, x) == Some(Ordering::Greater),
            Op::Gte(x) => matches!(compare(value, x), Some(Ordering::Greater | Ordering::Equal)),
            Op::In(xs) => xs.iter().any(|x| equal(value, x)),
            Op::Contains(text) => matches!(value, Value::String(s) if s.contains(text.as_str())),
            Op::IsNull(_) => false,
        }
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Json(a), Value::Json(b)) => a == b,
        _ => compare(a, b) == Some(Ordering::Equal),
    }
}

/// Order of two values of comparable types; `None` across types.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
        (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
        (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Value::String(a), Value::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Timestamp;

    fn types() -> HashMap<String, FieldType> {
        [
            ("id", FieldType::String),
            ("n", FieldType::Int),
            ("t", FieldType::Float),
            ("on", FieldType::Bool),
            ("at", FieldType::Timestamp),
            ("doc", FieldType::Json),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect()
    }

    fn filter(json: serde_json::Value) -> Filter {
        parse(&types(), &Gql::from_json(json).expect("json"))
            .expect("valid filter")
            .expect("not empty")
    }

    fn fields(json: serde_json::Value) -> Fields {
        let serde_json::Value::Object(map) = json else {
            panic!("object")
        };
        map.into_iter()
            .map(|(k, v)| {
                let value = match (k.as_str(), v) {
                    (_, serde_json::Value::Null) => Value::Null,
                    ("id", serde_json::Value::String(s)) => Value::String(s),
                    ("n", v) => Value::Int(v.as_i64().expect("int")),
                    ("t", v) => Value::Float(v.as_f64().expect("float")),
                    ("on", serde_json::Value::Bool(b)) => Value::Bool(b),
                    ("at", serde_json::Value::String(s)) => {
                        Value::Timestamp(Timestamp::parse_rfc3339(&s).expect("time"))
                    }
                    (_, v) => Value::Json(v),
                };
                (k, value)
            })
            .collect()
    }

    #[test]
    fn operators_compare_typed_values() {
        let f = fields(
            serde_json::json!({"id": "m-7", "n": 7, "t": 1.5, "on": true,
            "at": "2024-05-01T12:00:00Z", "doc": {"a": 1}}),
        );
        for (json, expected) in [
            (serde_json::json!({"id": {"eq": "m-7"}}), true),
            (serde_json::json!({"id": {"contains": "-7"}}), true),
            (serde_json::json!({"id": {"contains": "M"}}), false),
            (serde_json::json!({"n": {"gt": 6, "lte": 7}}), true),
            (serde_json::json!({"n": {"in": [1, 2]}}), false),
            (serde_json::json!({"t": {"gte": 1.5}}), true),
            (serde_json::json!({"on": {"ne": true}}), false),
            (
                serde_json::json!({"at": {"lt": "2024-05-01T14:00:01+02:00"}}),
                true,
            ),
            (serde_json::json!({"doc": {"eq": {"a": 1}}}), true),
            (
                serde_json::json!({"or": [{"n": {"eq": 1}}, {"n": {"eq": 7}}]}),
                true,
            ),
            (serde_json::json!({"not": {"n": {"eq": 7}}}), false),
            (
                serde_json::json!({"and": [{"n": {"eq": 7}}, {"id": {"eq": "x"}}]}),
                false,
            ),
        ] {
            assert_eq!(filter(json.clone()).matches(&f), expected, "{json}");
        }
    }

    #[test]
    fn absent_values_only_match_is_null() {
        let f = fields(serde_json::json!({"id": "a", "n": null}));
        assert!(!filter(serde_json::json!({"n": {"ne": 1}})).matches(&f));
        assert!(!filter(serde_json::json!({"t": {"lt": 1.0}})).matches(&f));
        assert!(filter(serde_json::json!({"n": {"isNull": true}})).matches(&f));
        assert!(filter(serde_json::json!({"t": {"isNull": true}})).matches(&f));
        assert!(filter(serde_json::json!({"id": {"isNull": false}})).matches(&f));
    }

    #[test]
    fn empty_and_bad_filters() {
        assert_eq!(
            parse(
                &types(),
                &Gql::from_json(serde_json::json!({})).expect("json")
            ),
            Ok(None)
        );
        let err = parse(
            &types(),
            &Gql::from_json(serde_json::json!({"nope": {"eq": 1}})).expect("json"),
        )
        .expect_err("unknown field");
        assert!(err.contains("no field named `nope`"), "{err}");
        let mut deep = serde_json::json!({"n": {"eq": 1}});
        for _ in 0..=MAX_DEPTH {
            deep = serde_json::json!({ "not": deep });
        }
        let err = parse(&types(), &Gql::from_json(deep).expect("json")).expect_err("too deep");
        assert!(err.contains("deeper than"), "{err}");
        let many: Vec<i64> = (0..=MAX_TERMS as i64).collect();
        let err = parse(
            &types(),
            &Gql::from_json(serde_json::json!({"n": {"in": many}})).expect("json"),
        )
        .expect_err("too many");
        assert!(err.contains("more than"), "{err}");
    }
}
