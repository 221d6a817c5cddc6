//! Local policies: roles, masks, tokens and who a request is.
//!
//! Policies sit at the edges where data leaves a stage (API reads, sync),
//! never scattered through the stages themselves. This module owns the pure
//! pieces they are built from; nothing here touches a socket or a disk.
//!
//! - The row-filter language of `where:` clauses is [`crate::expr`], a
//!   leaf that product definitions parse with and policies evaluate.
//! - [`masking`]: field masks applied to records as a role or an upstream
//!   may see them, with the keyed pseudonym secret behind `hash`.
//! - [`access`]: the per (role, product) [`access::View`] every API path
//!   goes through, and the built-in `admin` and `reader` roles.
//! - [`tokens`]: API tokens (the token file the CLI writes and the node
//!   re-reads); [`auth`]: from a request's credentials to an identity.

pub mod access;
pub mod auth;
pub mod identity;
pub mod masking;
pub mod tokens;
