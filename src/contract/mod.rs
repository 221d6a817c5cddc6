//! Data contracts in the Bitol Open Data Contract Standard (ODCS v3): a
//! product definition exported as a contract a central catalog understands,
//! and a contract turned into a product-definition skeleton.
//!
//! The product definition stays the source of truth on the node; a contract
//! is a view of it for the people and tools of the mesh (catalogs, contract
//! testers), so export is lossless for what ODCS can say (schema, keys,
//! classification, constraints as quality rules, SLAs, owner, roles) and
//! carries the edge-only parts (sources, history, sync) as `meshlet`
//! custom properties. Import goes the other way for what maps cleanly and
//! leaves sources to the operator: a contract does not say which topic a
//! device publishes on.
//!
//! Exported contracts declare `apiVersion: v3.1.0`, the line most tools
//! read today; they avoid the constructs 3.2 added (enum objects) and
//! validate against the published 3.2.0 JSON Schema too (the tests check
//! every example product against the vendored schema).

mod export;
mod import;
mod yaml_out;

pub use export::{export, ODCS_API_VERSION};
pub use import::{import, ImportError};
pub use yaml_out::to_yaml;

use crate::product::Product;

/// The text forms of an exported contract. `meshlet contract export` and
/// the GraphQL catalog (`CatalogProduct.contract`) both render through
/// [`render`], so the file an operator exports and the text a catalog
/// client fetches are the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractFormat {
    /// The ODCS file as contract tools read it (the default).
    Yaml,
    /// The same document as pretty-printed JSON.
    Json,
}

/// `product`'s ODCS contract as text in `format`, ending in a newline.
pub fn render(product: &Product, format: ContractFormat) -> String {
    let value = export(product);
    match format {
        ContractFormat::Yaml => to_yaml(&value),
        // `{:#}` pretty-prints a `Value`, which cannot fail (its keys are
        // strings), unlike `to_string_pretty` for an arbitrary `Serialize`.
        ContractFormat::Json => format!("{value:#}\n"),
    }
}
