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
