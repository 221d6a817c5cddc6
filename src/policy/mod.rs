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
//! - [`access`]: the per (role, product) [`access::View`] every API path
//!   goes through, and the built-in `admin` and `reader` roles.
//! - [`tokens`]: API tokens (the token file the CLI writes and the node
//!   re-reads); [`auth`]: from a request's credentials to an identity.

pub mod access;
pub mod auth;
pub mod expr;
pub mod identity;
pub mod masking;
pub mod tokens;
