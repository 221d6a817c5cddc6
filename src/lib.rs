//! meshlet: one binary that makes an edge gateway a node of a data mesh.
//!
//! Data flows one way through modules that each own one concept:
//! `product` (definitions) → ingest → pipeline → `store` → api / sync, with
//! `policy` at the edges where data leaves a stage. `node` wires them into a
//! running process; `cli` and `config` are the binary's front door.
//!
//! Crate lints: `unsafe` only in the few functions that call the C
//! libraries (libc, mimalloc), each allowed where it is and each block
//! with a `SAFETY:` comment; no `unwrap()` outside tests, so input and I/O
//! errors are handled or carry a message (`expect` says why it cannot
//! fail).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod atomic_file;
pub mod cli;
pub mod config;
pub mod contract;
pub mod expr;
pub mod http_client;
pub mod ingest;
pub mod listen;
pub mod memory;
pub mod node;
pub mod pipeline;
pub mod policy;
pub mod product;
pub mod record;
pub mod retention;
pub mod sd_notify;
pub mod sources;
pub mod store;
pub mod sync;
pub mod telemetry;
#[doc(hidden)]
pub mod timeseries;
pub mod tls;
