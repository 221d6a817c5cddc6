//! GraphQL names generated from product names, and the check that they do
//! not collide.
//!
//! Product names are `[a-z][a-z0-9_]*`; the API spells them PascalCase for
//! types (`machine_health` → `MachineHealth`) and camelCase for root fields
//! (`machineHealth`, `machineHealthConnection`, `upsertMachineHealth`).
//! Field names are kept exactly as the definition writes them: the same
//! word for the same thing in YAML, row filters and GraphQL.
//!
//! Two different product names can map to one GraphQL name (`a_1` and `a1`
//! both become `A1`), and a product or field name can take a name the API
//! uses itself (a product `products`, a field `history`). Such a set of
//! definitions is refused with an error naming both sides, rather than
//! letting one silently shadow the other.

use std::collections::BTreeMap;

/// `machine_health` → `MachineHealth`.
pub(crate) fn pascal(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `machine_health` → `machineHealth`.
pub(crate) fn camel(name: &str) -> String {
    let pascal = pascal(name);
    let mut chars = pascal.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Every name generated for one product.
#[derive(Clone, Debug)]
pub(crate) struct ProductNames {
    /// The object type of an instance.
    pub object: String,
    pub connection: String,
    pub edge: String,
    pub filter: String,
    pub order: String,
    pub order_field: String,
    pub input: String,
    pub event: String,
    pub values: String,
    pub history_connection: String,
    pub history_edge: String,
    /// One window of `series`, and its per-field statistics (nested, as
    /// an event's `values` are, so no product field can collide with the
    /// bucket's own `start`, `end` and `count`).
    pub bucket: String,
    pub bucket_values: String,
    /// Fleet aggregates: the result, one group, its key, the group-by
    /// enum and the per-number-field statistics object.
    pub aggregate_type: String,
    pub group: String,
    pub group_key: String,
    pub group_field: String,
    pub numbers: String,
    pub change: String,
    /// One closed bucket of the bucket-close subscription.
    pub bucket_close: String,
    /// Root query field: lookup by key.
    pub lookup: String,
    /// Root query field: the cursor connection.
    pub list: String,
    /// Root query field: fleet aggregates.
    pub aggregate: String,
    /// Root subscription fields: changes, closed buckets.
    pub changes: String,
    pub buckets: String,
    /// Root mutation fields.
    pub upsert: String,
    pub erase: String,
}

impl ProductNames {
    pub(crate) fn new(product: &str) -> ProductNames {
        let p = pascal(product);
        let c = camel(product);
        ProductNames {
            connection: format!("{p}Connection"),
            edge: format!("{p}Edge"),
            filter: format!("{p}Filter"),
            order: format!("{p}Order"),
            order_field: format!("{p}OrderField"),
            input: format!("{p}Input"),
            event: format!("{p}Event"),
            values: format!("{p}Values"),
            history_connection: format!("{p}HistoryConnection"),
            history_edge: format!("{p}HistoryEdge"),
            bucket: format!("{p}Bucket"),
            bucket_values: format!("{p}BucketValues"),
            aggregate_type: format!("{p}Aggregate"),
            group: format!("{p}Group"),
            group_key: format!("{p}GroupKey"),
            group_field: format!("{p}GroupField"),
            numbers: format!("{p}Numbers"),
            aggregate: format!("{c}Aggregate"),
            change: format!("{p}Change"),
            bucket_close: format!("{p}BucketClose"),
            list: format!("{c}Connection"),
            changes: format!("{c}Changes"),
            buckets: format!("{c}Buckets"),
            upsert: format!("upsert{p}"),
            erase: format!("erase{p}"),
            lookup: c,
            object: p,
        }
    }

    fn types(&self) -> [&str; 20] {
        [
            &self.object,
            &self.connection,
            &self.edge,
            &self.filter,
            &self.order,
            &self.order_field,
            &self.input,
            &self.event,
            &self.values,
            &self.history_connection,
            &self.history_edge,
            &self.bucket,
            &self.bucket_values,
            &self.aggregate_type,
            &self.group,
            &self.group_key,
            &self.group_field,
            &self.numbers,
            &self.change,
            &self.bucket_close,
        ]
    }

    fn root_fields(&self) -> [&str; 7] {
        [
            &self.lookup,
            &self.list,
            &self.aggregate,
            &self.changes,
            &self.buckets,
            &self.upsert,
            &self.erase,
        ]
    }
}

/// Type names the API defines itself, whatever the products: GraphQL's
/// built-in scalars, then meshlet's own types (the catalog's and sync's
/// included). A unit test holds this list to the schema of an empty set.
pub(crate) const SHARED_TYPES: &[&str] = &[
    "String",
    "Int",
    "Float",
    "Boolean",
    "ID",
    "Query",
    "Mutation",
    "Subscription",
    "DateTime",
    "JSON",
    "Long",
    "Duration",
    "SeriesFill",
    "NumberStats",
    "ValueStats",
    "ValueShare",
    "PageInfo",
    "InstanceMeta",
    "AuditLine",
    "AuditAction",
    "AuditVerification",
    "AuditBreak",
    "OrderDirection",
    "StringFilter",
    "LongFilter",
    "FloatFilter",
    "BooleanFilter",
    "DateTimeFilter",
    "JSONFilter",
    "CatalogProduct",
    "CatalogField",
    "ContractFormat",
    "Freshness",
    "Quality",
    "Usage",
    "QuarantineEntry",
    "QuarantineEdge",
    "QuarantineConnection",
    "SchemaStatus",
    "SyncUpstream",
    "SyncNode",
    "SyncConsumer",
    "SyncReference",
    "Node",
];

/// Root query fields the catalog takes.
pub(crate) const CATALOG_FIELDS: &[&str] = &[
    "products",
    "product",
    "quarantine",
    "schemaStatus",
    "syncStatus",
    "syncNodes",
    "syncConsumers",
    "syncReferences",
    "edgeNodes",
    "node",
    "nodes",
];

/// Fields every instance object has besides the product's own.
pub(crate) const INSTANCE_FIELDS: &[&str] = &[
    "_meta",
    "history",
    "series",
    "audit",
    "auditHead",
    "auditVerified",
];

/// Combinators of every filter input besides the product's fields.
pub(crate) const FILTER_COMBINATORS: &[&str] = &["and", "or", "not"];

/// Words GraphQL does not allow as enum values (field names become the
/// values of `<Product>OrderField`).
const NOT_ENUM_VALUES: &[&str] = &["true", "false", "null"];

/// A name problem and the product whose definition must change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub product: String,
    pub message: String,
}

/// Checks that the names generated for `products` (name → field names)
/// are all distinct and free; returns every problem found, each with the
/// product to rename or change.
#[cfg(test)]
pub(crate) fn check<'a>(
    products: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>,
) -> Vec<Problem> {
    check_with_enums(
        products
            .into_iter()
            .map(|(product, fields)| (product, fields, Vec::new())),
    )
}

/// [`check`], with the names of each product's enum types (`enums.rs`)
/// and their filter inputs taken as its types too.
pub(crate) fn check_with_enums<'a>(
    products: impl IntoIterator<Item = (&'a str, Vec<&'a str>, Vec<String>)>,
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut push = |product: &str, message: String| {
        problems.push(Problem {
            product: product.to_string(),
            message,
        })
    };
    let mut types: BTreeMap<String, String> = SHARED_TYPES
        .iter()
        .map(|t| (t.to_string(), "the API itself".to_string()))
        .collect();
    let mut roots: BTreeMap<String, String> = CATALOG_FIELDS
        .iter()
        .map(|f| (f.to_string(), "the catalog".to_string()))
        .collect();
    for (product, fields, enum_types) in products {
        let names = ProductNames::new(product);
        let owner = format!("product `{product}`");
        for ty in names.types() {
            if let Some(other) = types.insert(ty.to_string(), owner.clone()) {
                push(product, format!(
                    "product `{product}`: its GraphQL type name `{ty}` is already taken by {other}; rename the product"
                ));
                break;
            }
        }
        for ty in enum_types {
            let owner = format!("an `enum:` field of product `{product}`");
            if let Some(other) = types.insert(ty.clone(), owner) {
                push(product, format!(
                    "product `{product}`: the GraphQL enum type `{ty}` of one of its `enum:` fields is already taken by {other}; rename the field"
                ));
            }
        }
        for root in names.root_fields() {
            if let Some(other) = roots.insert(root.to_string(), owner.clone()) {
                push(product, format!(
                    "product `{product}`: its GraphQL field `{root}` is already taken by {other}; rename the product"
                ));
                break;
            }
        }
        for field in fields {
            if INSTANCE_FIELDS.contains(&field) {
                push(product, format!(
                    "product `{product}`: field `{field}` collides with the `{field}` every GraphQL instance has; rename the field"
                ));
            }
            if FILTER_COMBINATORS.contains(&field) {
                push(product, format!(
                    "product `{product}`: field `{field}` collides with the `{field}` combinator of GraphQL filters; rename the field"
                ));
            }
            if NOT_ENUM_VALUES.contains(&field) {
                push(product, format!(
                    "product `{product}`: field `{field}` cannot be a GraphQL enum value (orderBy); rename the field"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reserved lists are the schema's own names: every type and root
    /// query field of the schema of no products is in them, so a product
    /// can never register a name twice (`nodes`, `sync_status`…).
    #[test]
    fn the_reserved_names_cover_the_schema_of_no_products() {
        let sdl = super::super::sdl(&crate::product::ProductSet::default()).expect("builds");
        let mut in_query = false;
        let mut in_description = false;
        for line in sdl.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("\"\"\"") {
                let closes_here = trimmed.len() > 3 && trimmed.ends_with("\"\"\"");
                if !closes_here {
                    in_description = !in_description;
                }
                continue;
            }
            if in_description || trimmed.starts_with('"') || trimmed.is_empty() {
                continue;
            }
            let mut words = trimmed.split_whitespace();
            let first = words.next().unwrap_or_default();
            if !line.starts_with(char::is_whitespace) {
                if let ("type" | "scalar" | "enum" | "input" | "interface" | "union", Some(name)) =
                    (first, words.next())
                {
                    assert!(
                        SHARED_TYPES.contains(&name),
                        "type `{name}` is missing from SHARED_TYPES"
                    );
                    in_query = name == "Query";
                }
                continue;
            }
            if in_query {
                let field: String = trimmed
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !field.is_empty() {
                    assert!(
                        CATALOG_FIELDS.contains(&field.as_str()),
                        "root field `{field}` is missing from CATALOG_FIELDS"
                    );
                }
            }
        }
        for reserved in ["nodes", "sync_status", "string", "int", "boolean"] {
            let problems = super::check([(reserved, vec!["id"])]);
            assert_eq!(problems.len(), 1, "{reserved}: {problems:?}");
            assert_eq!(problems[0].product, reserved);
        }
    }

    #[test]
    fn cases() {
        assert_eq!(pascal("machine_health"), "MachineHealth");
        assert_eq!(camel("machine_health"), "machineHealth");
        assert_eq!(pascal("p2"), "P2");
        assert_eq!(pascal("a__b"), "AB");
        assert_eq!(camel("x"), "x");
    }

    #[test]
    fn collisions_are_reported_with_both_sides() {
        let check = |products: Vec<(&str, Vec<&str>)>| -> Vec<String> {
            super::check(products)
                .into_iter()
                .map(|p| p.message)
                .collect()
        };
        let problems = check(vec![("a_1", vec!["id"]), ("a1", vec!["id"])]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`A1` is already taken by product `a_1`"));
        let problems = check(vec![("products", vec!["id"])]);
        assert!(problems[0].contains("taken by the catalog"), "{problems:?}");
        let problems = check(vec![("page_info", vec!["id"])]);
        assert!(
            problems[0].contains("taken by the API itself"),
            "{problems:?}"
        );
        let problems = check(vec![("contract_format", vec!["id"])]);
        assert!(
            problems[0].contains("taken by the API itself"),
            "{problems:?}"
        );
        let problems = check(vec![("m", vec!["history", "or", "null"])]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(check(vec![("machine_health", vec!["machine_id"])]).is_empty());
    }
}
