//! Local policies: the expression language, roles and masks.
//!
//! Policies sit at the edges where data leaves a stage (API reads, sync),
//! never scattered through the stages themselves. This module owns the pure
//! pieces they are built from; nothing here touches a socket or a disk.
//!
//! - [`expr`]: the row-filter language of `where:` clauses in access roles and
//!   sync rules — parsed and type-checked once when a product definition is
//!   loaded, then evaluated on every record on the hot paths.
//! - [`masking`]: field masks applied to records as a role or an upstream
//!   may see them, with the keyed pseudonym secret behind `hash`.

pub mod expr;
pub mod identity;
pub mod masking;
