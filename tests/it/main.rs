//! meshlet's integration tests, linked as one binary so CI links the
//! library and its dependencies once instead of once per file. Each former
//! `tests/<name>.rs` is the module `<name>` here: run one with
//! `cargo test --test it <name>::` (a test's full name is
//! `<name>::<test>`). The shared kit stays in `tests/common/`, so a
//! standalone `tests/<new>.rs` still builds with `mod common;`.

#[path = "../common/mod.rs"]
mod common;

mod api_budgets;
mod architecture;
mod audit_chain;
mod broker_limits;
mod console;
mod container;
mod contract_odcs;
mod cross_qemu;
mod deb_package;
mod erasure;
mod firmware_examples;
mod fuzz_corpus;
mod graphql_api;
mod graphql_buckets;
mod graphql_clients;
mod graphql_limits;
mod graphql_paging;
mod graphql_prepared;
mod graphql_reload;
mod graphql_sdl;
mod graphql_timeseries;
mod homie;
mod http_limits;
mod http_tls;
mod ingest_durability;
mod ingest_http;
mod ingest_mqtt;
mod ingest_priority;
mod ingest_tls;
mod metrics_names;
mod mqtt_client;
mod mqtt_conformance;
mod node_cli;
mod operator_cli;
mod policy_access;
mod product_definitions;
mod readme;
mod retention_sweep;
mod shutdown;
mod sources_modbus;
mod sources_opcua;
mod sparkplug;
mod store_api;
mod store_crash;
mod store_dictionaries;
mod store_encryption;
mod store_ingest;
mod store_journal;
mod store_kill_loop;
mod store_shredding;
mod store_upgrade;
mod store_write_amplification;
mod sync_http;
mod sync_mqtt;
mod sync_nats;
mod sync_reference;
mod sync_tls;
mod sync_verify;
mod time_rules;
mod timeseries_summaries;
mod timeseries_summaries_node;
