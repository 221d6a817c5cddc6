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
    pub change: String,
    /// Root query field: lookup by key.
    pub lookup: String,
    /// Root query field: the cursor connection.
    pub list: String,
    /// Root subscription field.
    pub changes: String,
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
            change: format!("{p}Change"),
            list: format!("{c}Connection"),
            changes: format!("{c}Changes"),
            upsert: format!("upsert{p}"),
            erase: format!("erase{p}"),
            lookup: c,
            object: p,
        }
    }

    fn types(&self) -> [&str; 12] {
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
            &self.change,
        ]
    }

    fn root_fields(&self) -> [&str; 5] {
        [
            &self.lookup,
            &self.list,
            &self.changes,
            &self.upsert,
            &self.erase,
        ]
    }
}

/// Type names the API defines itself, whatever the products.
pub(crate) const SHARED_TYPES: &[&str] = &[
    "Query",
    "Mutation",
    "Subscription",
    "DateTime",
    "JSON",
    "Long",
    "PageInfo",
    "InstanceMeta",
    "AuditLine",
    "AuditAction",
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
];

/// Root query fields the catalog takes.
pub(crate) const CATALOG_FIELDS: &[&str] = &["products", "product", "quarantine", "schemaStatus"];

/// Fields every instance object has besides the product's own.
pub(crate) const INSTANCE_FIELDS: &[&str] = &["_meta", "history", "audit"];

/// Combinators of every filter input besides the product's fields.
pub(crate) const FILTER_COMBINATORS: &[&str] = &["and", "or", "not"];

/// Words GraphQL does not allow as enum values (field names become the
/// values of `<Product>OrderField`).
const NOT_ENUM_VALUES: &[&str] = &["true", "false", "null"];

/// Checks that the names generated for `products` (name → field names)
/// are all distinct and free; returns every problem found.
pub(crate) fn check<'a>(
    products: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut types: BTreeMap<String, String> = SHARED_TYPES
        .iter()
        .map(|t| (t.to_string(), "the API itself".to_string()))
        .collect();
    let mut roots: BTreeMap<String, String> = CATALOG_FIELDS
        .iter()
        .map(|f| (f.to_string(), "the catalog".to_string()))
        .collect();
    for (product, fields) in products {
        let names = ProductNames::new(product);
        let owner = format!("product `{product}`");
        for ty in names.types() {
            if let Some(other) = types.insert(ty.to_string(), owner.clone()) {
                problems.push(format!(
                    "product `{product}`: its GraphQL type name `{ty}` is already taken by {other}; rename the product"
                ));
                break;
            }
        }
        for root in names.root_fields() {
            if let Some(other) = roots.insert(root.to_string(), owner.clone()) {
                problems.push(format!(
                    "product `{product}`: its GraphQL field `{root}` is already taken by {other}; rename the product"
                ));
                break;
            }
        }
        for field in fields {
            if INSTANCE_FIELDS.contains(&field) {
                problems.push(format!(
                    "product `{product}`: field `{field}` collides with the `{field}` every GraphQL instance has; rename the field"
                ));
            }
            if FILTER_COMBINATORS.contains(&field) {
                problems.push(format!(
                    "product `{product}`: field `{field}` collides with the `{field}` combinator of GraphQL filters; rename the field"
                ));
            }
            if NOT_ENUM_VALUES.contains(&field) {
                problems.push(format!(
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
        let problems = check([("a_1", vec!["id"]), ("a1", vec!["id"])]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`A1` is already taken by product `a_1`"));
        let problems = check([("products", vec!["id"])]);
        assert!(problems[0].contains("taken by the catalog"), "{problems:?}");
        let problems = check([("page_info", vec!["id"])]);
        assert!(
            problems[0].contains("taken by the API itself"),
            "{problems:?}"
        );
        let problems = check([("contract_format", vec!["id"])]);
        assert!(
            problems[0].contains("taken by the API itself"),
            "{problems:?}"
        );
        let problems = check([("m", vec!["history", "or", "null"])]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(check([("machine_health", vec!["machine_id"])]).is_empty());
    }
}
