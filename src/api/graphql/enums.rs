//! `enum:` fields as GraphQL enums: `status: { type: string, enum: [ok,
//! warn, fault] }` of product `sensor` is `status: SensorStatus` on the
//! instance, its history values and group keys, `SensorStatusFilter` in
//! filters, and `SensorStatus` in the upsert input — so clients and code
//! generators see the allowed values instead of a `String`.
//!
//! Names: a value that is a valid GraphQL enum value keeps its spelling,
//! so `ok` is sent and answered as `"ok"` exactly as when the field was a
//! `String` (JSON clients see no change). Any other value gets a name
//! that is one: each character outside `[A-Za-z0-9_]` becomes `_`, and a
//! leading digit, or the whole of `true`, `false` or `null`, gets a `_`
//! before it (`in-service` → `in_service`, `24h` → `_24h`, `true` →
//! `_true`; not `true_`, which async-graphql 7.2's parser misreads as
//! `true` in a query). The
//! value's description in the schema gives the stored text, and filters,
//! inputs and outputs map between the two. Two values that would get the
//! same name are a definition error naming both (checked with the other
//! generated names, `names.rs`).
//!
//! Kept a `String`: a field that some role sees through a mask that
//! rewrites text (redact, hash, partial; `reader`'s built-in mask of
//! pii/confidential/restricted fields) — a masked value is not one of the
//! values, and the schema is the same for every role. A stored value that
//! is not one of the values (the definition changed since) is returned
//! as `null`, as for any stored value of the wrong type (`values.rs`).
//!
//! Ordering (`orderBy`) compares the stored text, as before; the enum
//! filter offers `eq`, `ne`, `in` and `isNull`. A string where an enum
//! value is expected (what clients sent while these fields were `String`)
//! is still taken: async-graphql's dynamic schema coerces it, and it is
//! read as a GraphQL name, else as the stored text.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dynamic::{Enum, EnumItem, InputObject, InputValue, TypeRef};
use async_graphql::{Name, Value as Gql};

use super::names::pascal;
use crate::product::{FieldType, Product};
use crate::record::Value;

/// The enum types of one product, by field name.
pub(crate) type Enums = HashMap<String, Arc<EnumType>>;

/// One `enum:` field's GraphQL enum.
#[derive(Debug)]
pub(crate) struct EnumType {
    /// `SensorStatus`.
    pub name: String,
    /// (GraphQL name, stored text), in declaration order.
    values: Vec<(String, String)>,
    by_stored: HashMap<String, Name>,
    by_name: HashMap<String, String>,
}

/// The enum type name of `field` of the product whose object type is
/// `object`.
pub(crate) fn type_name(object: &str, field: &str) -> String {
    format!("{object}{}", pascal(field))
}

/// The enum filter input's name for an enum type.
pub(crate) fn filter_name(enum_type: &str) -> String {
    format!("{enum_type}Filter")
}

/// A GraphQL enum value name for a stored text (see the module doc).
pub(crate) fn graphql_name(stored: &str) -> String {
    let mut name: String = stored
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty()
        || name.starts_with(|c: char| c.is_ascii_digit())
        || matches!(name.as_str(), "true" | "false" | "null")
    {
        name.insert(0, '_');
    }
    name
}

/// The fields of `product` that are GraphQL enums: `enum:` string fields
/// no role sees through a text-rewriting mask.
pub(crate) fn enum_fields(product: &Product) -> impl Iterator<Item = &crate::product::Field> {
    product.fields.values().filter(move |f| {
        f.ty == FieldType::String
            && !f.enum_values.is_empty()
            && !crate::policy::access::rewritten_by_a_mask(product, &f.name)
    })
}

/// The enum types of `product` (its object type named `object`).
/// Values that would share a GraphQL name are left to [`value_problems`];
/// here the later one is dropped.
pub(crate) fn of_product(product: &Product, object: &str) -> Enums {
    enum_fields(product)
        .map(|field| {
            let mut values: Vec<(String, String)> = Vec::new();
            for stored in &field.enum_values {
                let name = graphql_name(stored);
                if !values.iter().any(|(n, _)| *n == name) {
                    values.push((name, stored.clone()));
                }
            }
            let ty = EnumType {
                name: type_name(object, &field.name),
                by_stored: values
                    .iter()
                    .map(|(n, s)| (s.clone(), Name::new(n)))
                    .collect(),
                by_name: values.iter().map(|(n, s)| (n.clone(), s.clone())).collect(),
                values,
            };
            (field.name.clone(), Arc::new(ty))
        })
        .collect()
}

/// Each pair of `enum:` values of `product` that would get one GraphQL
/// name, as a message.
pub(crate) fn value_problems(product: &Product) -> Vec<String> {
    let mut problems = Vec::new();
    for field in enum_fields(product) {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for stored in &field.enum_values {
            let name = graphql_name(stored);
            if let Some(other) = seen.insert(name.clone(), stored) {
                problems.push(format!(
                    "product `{}`: field `{}`: the enum values `{other}` and `{stored}` would both be the GraphQL enum value `{name}`; change one",
                    product.name, field.name
                ));
            }
        }
    }
    problems
}

impl EnumType {
    /// The GraphQL enum, each value described by its stored text when the
    /// two differ.
    pub(crate) fn graphql_type(&self, product: &str, field: &str) -> Enum {
        let mut e = Enum::new(&self.name).description(format!(
            "The values of `{product}.{field}` (`enum:` in the definition)."
        ));
        for (name, stored) in &self.values {
            let mut item = EnumItem::new(name);
            if name != stored {
                item = item.description(format!("Stored as `{stored}`."));
            }
            e = e.item(item);
        }
        e
    }

    /// The filter input of the enum.
    pub(crate) fn filter_input(&self) -> InputObject {
        InputObject::new(filter_name(&self.name))
            .description(format!(
                "Conditions on a `{}` field; all given must hold. Comparisons with an absent value are false: use `isNull`.",
                self.name
            ))
            .field(InputValue::new("eq", TypeRef::named(&self.name)))
            .field(InputValue::new("ne", TypeRef::named(&self.name)))
            .field(
                InputValue::new("in", TypeRef::named_nn_list(&self.name))
                    .description("The value is one of these."),
            )
            .field(
                InputValue::new("isNull", TypeRef::named(TypeRef::BOOLEAN))
                    .description("true: the field is absent or null; false: it has a value."),
            )
    }

    /// A stored value as the enum value GraphQL returns; `null` when it is
    /// not one of the values.
    pub(crate) fn output(&self, value: &Value) -> Gql {
        match value {
            Value::String(s) => self
                .by_stored
                .get(s)
                .map(|name| Gql::Enum(name.clone()))
                .unwrap_or(Gql::Null),
            _ => Gql::Null,
        }
    }

    /// An enum input value (already validated by the schema) as the
    /// stored text; other values pass unchanged. A literal comes as an
    /// enum value, a variable as a string: both are GraphQL names here.
    pub(crate) fn input(&self, value: &Gql) -> Gql {
        let stored = |name: &str| {
            self.by_name
                .get(name)
                .map(|s| Gql::String(s.clone()))
                .unwrap_or_else(|| value.clone())
        };
        match value {
            Gql::Enum(name) => stored(name.as_str()),
            Gql::String(name) => stored(name),
            Gql::List(items) => Gql::List(items.iter().map(|v| self.input(v)).collect()),
            other => other.clone(),
        }
    }
}

/// `value` (a product's filter input) with each enum field's operands
/// as stored texts, so the filter compares stored values.
pub(crate) fn decode_filter(enums: &Enums, value: &Gql) -> Gql {
    if enums.is_empty() {
        return value.clone();
    }
    match value {
        Gql::Object(entries) => Gql::Object(
            entries
                .iter()
                .map(|(key, v)| {
                    let v = match (key.as_str(), enums.get(key.as_str()), v) {
                        ("and" | "or" | "not", _, _) => decode_filter(enums, v),
                        (_, Some(ty), Gql::Object(ops)) => Gql::Object(
                            ops.iter()
                                .map(|(op, operand)| (op.clone(), ty.input(operand)))
                                .collect(),
                        ),
                        _ => v.clone(),
                    };
                    (key.clone(), v)
                })
                .collect(),
        ),
        Gql::List(items) => Gql::List(items.iter().map(|v| decode_filter(enums, v)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_graphql_enum_values() {
        assert_eq!(graphql_name("ok"), "ok");
        assert_eq!(graphql_name("in-service"), "in_service");
        assert_eq!(graphql_name("24h"), "_24h");
        assert_eq!(graphql_name("true"), "_true");
        assert_eq!(graphql_name(""), "_");
        assert_eq!(graphql_name("à la carte"), "__la_carte");
    }
}
