//! GraphQL execution micro-benchmarks (criterion): what the executor adds
//! on top of the store read a query resolves to, without HTTP.
//!
//! ```sh
//! cargo bench --bench graphql_micro -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! The schema is the real one, built from `schema/examples/machine_health.yaml`
//! by [`GraphqlApi::start`] over a real sled store on a temp dir holding
//! 10,000 machines (a third of them in `berlin`). Each request carries its
//! own [`Caller`] (role `admin`), as the HTTP handler does, so view building
//! and policy checks are part of the figure.
//!
//! Pairs, each measured in the same run:
//! - `lookup/store_get` vs `lookup/graphql`: one instance by key;
//! - `page/store_scan_filter` vs `page/graphql`: the first 100 machines in
//!   `berlin`, i.e. the store pages the connection walks plus the filter,
//!   vs the `machineHealthConnection(first: 100, filter: …)` query.
//!
//! The ratio of each pair is the "GraphQL overhead ×" in benches/README.md.
//! Under `cargo test --all-targets` criterion runs each benchmark once.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshlet::api::graphql::{GraphqlApi, GraphqlSettings};
use meshlet::config::IngestSettings;
use meshlet::ingest::priority::IngestRuntime;
use meshlet::ingest::Ingestor;
use meshlet::policy::access::{Caller, Identity};
use meshlet::product::{load_path, LoadContext, ProductSet};
use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{Store, StoreConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const PRODUCT: &str = "machine_health";
const MACHINES: usize = 10_000;
const SITES: [&str; 3] = ["berlin", "lyon", "brno"];

const LOOKUP: &str = r#"{ machineHealth(machine_id: "PR-4242") { machine_id site temperature_c spindle_rpm status } }"#;
const LOOKUP_VARIABLES: &str = r#"query Lookup($id: String!) { machineHealth(machine_id: $id) { machine_id site temperature_c spindle_rpm status } }"#;
const PAGE: &str = r#"{ machineHealthConnection(first: 100, filter: {site: {eq: berlin}}) {
    edges { cursor node { machine_id site temperature_c spindle_rpm status } }
    pageInfo { hasNextPage endCursor } } }"#;

fn products() -> Arc<ProductSet> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = LoadContext::with_upstreams(["central".to_string()].into());
    let set = load_path(&root.join("schema/examples/machine_health.yaml"), &context)
        .expect("example product loads");
    Arc::new(set)
}

fn record(machine: usize) -> Record {
    let entity = format!("PR-{machine:04}");
    let mut fields = Fields::new();
    fields.insert("machine_id".into(), Value::String(entity.clone()));
    fields.insert(
        "site".into(),
        Value::String(SITES[machine % SITES.len()].into()),
    );
    fields.insert(
        "temperature_c".into(),
        Value::Float(20.0 + (machine % 500) as f64 / 10.0),
    );
    fields.insert("vibration_rms".into(), Value::Float(1.5));
    fields.insert("spindle_rpm".into(), Value::Int(1480 + machine as i64));
    fields.insert("status".into(), Value::String("ok".into()));
    Record {
        entity,
        fields,
        event_time: Timestamp(1_700_000_000_000_000 + machine as i64),
        origin: Origin::new("bench"),
    }
}

/// The store, the API over it and a runtime to execute on. The temp dir
/// lives as long as the fixture.
struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    store: Store,
    api: GraphqlApi,
    secret: meshlet::policy::masking::MaskSecret,
    denials: Arc<AtomicU64>,
    _shutdown: CancellationToken,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(StoreConfig::new(dir.path().join("store"))).expect("store opens");
        let records: Vec<Record> = (0..MACHINES).map(record).collect();
        for batch in records.chunks(1_000) {
            store.upsert(PRODUCT, batch).expect("upsert");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let products = products();
        let secret = meshlet::policy::masking::MaskSecret::of_store(&store).expect("mask secret");
        let api = runtime.block_on(async {
            // The micro benchmark measures the API alone: no ingest runs.
            let shared_runtime = IngestRuntime::start(0).expect("ingest runtime");
            let ingestor = Ingestor::new(
                products.clone(),
                store.clone(),
                &IngestSettings::default(),
                &tasks,
                &shared_runtime,
            );
            GraphqlApi::start(
                products,
                ingestor,
                meshlet::policy::masking::MaskSecret::of_store(&store).expect("mask secret"),
                GraphqlSettings::default(),
                shutdown.clone(),
                &tasks,
                None,
            )
            .expect("schema builds")
        });
        Fixture {
            _dir: dir,
            runtime,
            store,
            api,
            secret,
            denials: Arc::default(),
            _shutdown: shutdown,
        }
    }

    /// Executes `query` as the HTTP handler would (a fresh caller per
    /// request) and checks it produced no errors.
    fn execute(&self, query: &str) -> async_graphql::Response {
        let request = async_graphql::Request::new(query).data(Caller::new(
            Identity::anonymous("admin"),
            self.secret.clone(),
            self.denials.clone(),
        ));
        let schema = self.api.schema().current();
        let response = self.runtime.block_on(schema.execute(request));
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        response
    }

    /// Executes `request` as the HTTP handler does: from a prepared plan
    /// when its shape has one (`prepared.rs`), else by the executor.
    fn execute_prepared(&self, request: async_graphql::Request) -> async_graphql::Response {
        let caller = Caller::new(
            Identity::anonymous("admin"),
            self.secret.clone(),
            self.denials.clone(),
        );
        let response = self.runtime.block_on(self.api.execute(request, caller));
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        response
    }

    /// The store side of [`PAGE`]: scan in the connection's page size,
    /// filter on `site`, stop at 100.
    fn scan_filtered(&self) -> usize {
        let mut found = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .scan(PRODUCT, after.as_deref(), 512)
                .expect("scan");
            for instance in &page.instances {
                if matches!(instance.fields.get("site"), Some(Value::String(s)) if s == "berlin") {
                    found += 1;
                    if found == 100 {
                        return found;
                    }
                }
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return found,
            }
        }
    }
}

fn bench_graphql(c: &mut Criterion) {
    let fixture = Fixture::new();
    // Sanity: both sides find what they should before anything is timed.
    let page = fixture.execute(PAGE).data.into_json().expect("json");
    let edges = page["machineHealthConnection"]["edges"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(edges, 100, "a full page of berlin machines");
    assert_eq!(fixture.scan_filtered(), 100);

    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("store_get", |b| {
        b.iter(|| {
            fixture
                .store
                .get(PRODUCT, "PR-4242")
                .expect("get")
                .expect("present")
        })
    });
    group.bench_function("executor", |b| b.iter(|| fixture.execute(LOOKUP)));
    // The same lookup through `GraphqlApi::execute`, a new key each time:
    // the first request of each form teaches its shape, the rest are
    // answered from the plan.
    let mut machine = 0usize;
    let mut next_key = move || {
        machine = (machine + 7_919) % MACHINES;
        format!("PR-{machine:04}")
    };
    let text_lookup = |key: &str| async_graphql::Request::new(LOOKUP.replace("PR-4242", key));
    let variables_lookup = |key: &str| {
        async_graphql::Request::new(LOOKUP_VARIABLES).variables(
            async_graphql::Variables::from_json(serde_json::json!({ "id": key })),
        )
    };
    // Teach both shapes, and check plans answer before anything is timed.
    for key in ["PR-0001", "PR-0002"] {
        fixture.execute_prepared(text_lookup(key));
        fixture.execute_prepared(variables_lookup(key));
    }
    let api = fixture.api.clone();
    let metrics = meshlet::telemetry::expose::render_fn(move |enc| api.encode_metrics(enc));
    let prepared = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshlet_graphql_prepared_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        prepared == 2,
        "the prepared lookups were answered from plans"
    );
    group.bench_function("prepared_key_in_text", |b| {
        b.iter(|| fixture.execute_prepared(text_lookup(&next_key())))
    });
    group.bench_function("prepared_key_in_variables", |b| {
        b.iter(|| fixture.execute_prepared(variables_lookup(&next_key())))
    });
    group.finish();

    let mut group = c.benchmark_group("page");
    group.throughput(Throughput::Elements(100));
    group.bench_function("store_scan_filter", |b| b.iter(|| fixture.scan_filtered()));
    group.bench_function("graphql", |b| b.iter(|| fixture.execute(PAGE)));
    group.finish();
}

criterion_group!(benches, bench_graphql);
criterion_main!(benches);
