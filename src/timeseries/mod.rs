//! Time-series computations over a product's history, as plain functions
//! on plain values: no store, no GraphQL, no policy. The API reads the
//! events (through the role's view, so masks and row filters have already
//! applied), hands them here, and renders what comes back.
//!
//! - [`buckets`]: an entity's events into fixed windows of event time
//!   (`series`): per numeric field count/min/max/sum/avg/first/last, per
//!   text field the value held longest and counts and time per value.
//! - [`aggregate`]: current instances grouped by field values (fleet
//!   aggregates): per group the count and per number field min/max/avg.

//! - [`read`]: one entity's buckets from the store, reading sealed chunk
//!   summaries instead of events where they stand in exactly.
//! - [`closing`]: when a live series' buckets close by event time, and
//!   which closed bucket a late event revises (`<product>Buckets`).
//!
//! Public (hidden from docs) only so `benches/timeseries.rs` can drive it.

pub mod aggregate;
pub mod buckets;
pub mod closing;
pub mod read;
