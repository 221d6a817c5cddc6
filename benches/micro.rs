//! Hot-path micro-benchmarks (criterion): what one message costs in each
//! stage, without the network.
//!
//! ```sh
//! cargo bench --bench micro
//! ```
//!
//! - `pipeline/*`: decode + map + coerce + validate of the machine_health
//!   telemetry payload a device publishes: `telemetry_message` by the
//!   source's kept plan, as the node's MQTT routes run it;
//!   `telemetry_message_unplanned` with the plan built for the one call,
//!   as an occasional caller of `pipeline::process` pays.
//! - `store/*`: one durable-less batch upsert of N records into sled (the
//!   transaction cost per record; durability is the group commit's job and
//!   measured end to end by `ingest_load`); `*_no_audit_chain`: the same
//!   without the audit hash chain, so the difference is its cost.
//! - `sled_floor/*`: sled alone, the floor under `store/*` in the same
//!   run: 100 records' worth of keys per call. The floor is
//!   `tx_overwrite_100_records_1kib`: one transaction that writes each
//!   record's instance (~1 KiB, with its open tail) with the vendored
//!   sled's `overwrite`, exactly the one write a record costs the writer
//!   (`src/store/write.rs`), without reading the key first. Beside it, in
//!   the same run, the same writes as `get` + `insert` (what the writer did
//!   before `overwrite`, and what stock sled's transactional `insert` does
//!   inside), plain inserts without a transaction, and format 2's pattern
//!   (read, rewrite, append a tail key). What the store cannot go below on
//!   this engine is the first.
//! - `codec/*`: zstd compression of a history chunk's worth of records,
//!   the baseline the per-product dictionaries are measured against, and
//!   `codec/zstd_chunk_dict`: a 32-event chunk with a trained dictionary
//!   beside the same chunk without (`codec/zstd_chunk32_level3`). The
//!   store's own stored-bytes figures are `benches/history_compression.rs`.
//!
//! Under `cargo test --all-targets` criterion runs each benchmark once as a
//! smoke test, so the code here keeps compiling and working.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meshlet::pipeline::{process, run, Input, Limits, Plan, SourceShape};
use meshlet::product::{load_path, LoadContext, Product};
use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{IngestBatch, IngestLimits, IngestRecord, Store, StoreConfig};

fn machine_health() -> Product {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let context = LoadContext::with_upstreams(["central".to_string()].into());
    let set = load_path(&root.join("schema/examples/machine_health.yaml"), &context)
        .expect("example product loads");
    let product = set.get("machine_health").expect("machine_health defined");
    (**product).clone()
}

fn telemetry(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"temp": {:.1}, "vib": {{"rms": {:.2}}}, "rpm": {}, "state": "ok", "hmi": {{"operator": "op{}@example.com"}}, "ts": {}}}"#,
        20.0 + (seq % 500) as f64 / 10.0,
        (seq % 300) as f64 / 100.0,
        1000 + seq % 2000,
        seq % 17,
        1_700_000_000_000u64 + seq
    )
    .into_bytes()
}

fn bench_pipeline(c: &mut Criterion) {
    let product = machine_health();
    let shape = SourceShape::from_source(&product.sources[0]);
    let limits = Limits::default();
    let captures = vec![
        ("site".to_string(), "berlin".to_string()),
        ("machine_id".to_string(), "PR-0042".to_string()),
    ];
    let payload = telemetry(7);
    let plan = Plan::new(&product, &shape);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("telemetry_message", |b| {
        b.iter(|| {
            let input = Input {
                payload: &payload,
                captures: &captures,
                arrival: Timestamp(1_700_000_000_000_000),
                origin: Origin::new("mqtt:0"),
            };
            let processed = run(&product, &plan, &input, &limits);
            assert_eq!(processed.accepted.len(), 1);
            processed
        })
    });
    group.bench_function("telemetry_message_unplanned", |b| {
        b.iter(|| {
            let input = Input {
                payload: &payload,
                captures: &captures,
                arrival: Timestamp(1_700_000_000_000_000),
                origin: Origin::new("mqtt:0"),
            };
            let processed = process(&product, &shape, &input, &limits);
            assert_eq!(processed.accepted.len(), 1);
            processed
        })
    });
    group.finish();
}

fn record(entity: usize, seq: i64) -> Record {
    let mut fields = Fields::new();
    fields.insert(
        "machine_id".into(),
        Value::String(format!("PR-{entity:04}")),
    );
    fields.insert("site".into(), Value::String("berlin".into()));
    fields.insert(
        "temperature_c".into(),
        Value::Float(20.0 + seq as f64 / 10.0),
    );
    fields.insert("vibration_rms".into(), Value::Float(1.5));
    fields.insert("spindle_rpm".into(), Value::Int(1480 + seq));
    fields.insert("status".into(), Value::String("ok".into()));
    Record {
        entity: format!("PR-{entity:04}"),
        fields,
        event_time: Timestamp(1_700_000_000_000_000 + seq * 1_000_000),
        origin: Origin::new("bench"),
    }
}

fn bench_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(StoreConfig::new(dir.path().join("db"))).expect("store opens");
    let mut seq = 0i64;
    let mut group = c.benchmark_group("store");
    // The same batches without the audit hash chain (`StoreConfig::
    // audit_chain`, bench-only), in the same run: the chain's cost per
    // record is the difference.
    let unchained_dir = tempfile::tempdir().expect("temp dir");
    let mut unchained_config = StoreConfig::new(unchained_dir.path().join("db"));
    unchained_config.audit_chain = false;
    let unchained = Store::open(unchained_config).expect("store opens");
    // And encrypted at rest, with entity keys (issue 30 point 2): the
    // per-record cost of sealing against the plain store, same run.
    let sealed_dir = tempfile::tempdir().expect("temp dir");
    let sealed_config = StoreConfig::new(sealed_dir.path().join("db"));
    let key = meshlet::store::EncryptionKey::generate().expect("key");
    let sealed = Store::open_with_key(sealed_config, Some(key)).expect("store opens");
    for (name, store) in [
        ("", &store),
        ("_no_audit_chain", &unchained),
        ("_encrypted", &sealed),
    ] {
        for batch in [1usize, 100] {
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("upsert_batch_{batch}{name}"), |b| {
                b.iter_batched(
                    || {
                        seq += 1;
                        (0..batch)
                            .map(|i| record(i % 1000, seq))
                            .collect::<Vec<_>>()
                    },
                    |records| store.upsert("machine_health", &records).expect("upsert"),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    // The chain's own work per record, alone: fold one encoded event (a
    // machine_health record as the writer encodes it) into an open line's
    // digest and rehash the line.
    group.throughput(Throughput::Elements(1));
    let sample = record(1, 1);
    let event = rmp_serde::to_vec(&(
        1u64,
        sample.event_time,
        sample.event_time,
        &sample.fields,
        &sample.origin,
    ))
    .expect("encode");
    let fields: Vec<String> = sample.fields.keys().cloned().collect();
    let mut line = meshlet::store::AuditBenchLine::new(&fields, &sample.origin);
    let mut version = 1u64;
    group.bench_function("audit_chain_step", |b| {
        b.iter(|| {
            version += 1;
            line.step(version, &event)
        })
    });
    // One value (an instance of ~1 KiB) sealed and opened with its
    // entity's key (key lookup, AES key schedule, AES-GCM) against the
    // data key's ready sealer: what entity keys add per value.
    let entity_seal = meshlet::store::EntitySealBench::new(1000);
    let instance_bytes = vec![0x5au8; 1024];
    let mut n = 0usize;
    group.bench_function("entity_seal_open_1kib", |b| {
        b.iter(|| {
            n = (n + 1) % 1000;
            entity_seal.entity_round(n, &instance_bytes)
        })
    });
    group.bench_function("data_key_seal_open_1kib", |b| {
        b.iter(|| {
            n = (n + 1) % 1000;
            entity_seal.data_round(n, &instance_bytes)
        })
    });
    // A writer group: 100 one-record jobs (one MQTT message each), one
    // transaction per job (before) vs one per group (`ingest_group`).
    group.throughput(Throughput::Elements(100));
    let jobs = |seq: i64| -> Vec<IngestBatch> {
        (0..100)
            .map(|i| IngestBatch {
                records: vec![IngestRecord {
                    record: record(i % 1000, seq),
                    fingerprint: None,
                    check_duplicate: false,
                }],
                ..IngestBatch::default()
            })
            .collect()
    };
    let limits = IngestLimits::default();
    // One transaction per job is also the workload that hung sled 0.34.7
    // (a truncation queued behind pool threads that wait for the lock its
    // waiter holds); src/vendor/sled carries the fix, and this bench,
    // which hung in 3 of 3 runs before it, finishes again.
    group.bench_function("jobs_100_one_transaction_each", |b| {
        b.iter_batched(
            || {
                seq += 1;
                jobs(seq)
            },
            |jobs| {
                for job in &jobs {
                    store
                        .ingest("machine_health", job, &limits, Timestamp::now())
                        .expect("ingest");
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("jobs_100_one_group_transaction", |b| {
        b.iter_batched(
            || {
                seq += 1;
                jobs(seq)
            },
            |jobs| {
                let now = Timestamp::now();
                let group: Vec<(&IngestBatch, Timestamp)> = jobs.iter().map(|j| (j, now)).collect();
                for result in store.ingest_group("machine_health", &group, &limits) {
                    result.expect("ingest");
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The same group on a store that keeps no decoded states (lookup
    // cache and writer states off): every record reads and decodes its
    // instance from sled inside the transaction, as before
    // `src/store/writer_states.rs`.
    let dir_uncached = tempfile::tempdir().expect("temp dir");
    let mut config = StoreConfig::new(dir_uncached.path().join("db"));
    config.instance_cache_entries = 0;
    let uncached = Store::open(config).expect("store opens");
    group.bench_function("jobs_100_one_group_transaction_no_decoded_states", |b| {
        b.iter_batched(
            || {
                seq += 1;
                jobs(seq)
            },
            |jobs| {
                let now = Timestamp::now();
                let group: Vec<(&IngestBatch, Timestamp)> = jobs.iter().map(|j| (j, now)).collect();
                for result in uncached.ingest_group("machine_health", &group, &limits) {
                    result.expect("ingest");
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_codec(c: &mut Criterion) {
    // A chunk's worth of one machine's history, as MessagePack rows.
    let rows: Vec<Vec<u8>> = (0..256)
        .map(|seq| rmp_serde::to_vec_named(&record(42, seq)).expect("encode"))
        .collect();
    let raw: Vec<u8> = rows.concat();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.bench_function("zstd_chunk_level3", |b| {
        b.iter(|| zstd::bulk::compress(&raw, 3).expect("compress"))
    });
    group.finish();

    // Small chunks (32 events), where a per-product dictionary matters:
    // one trained on other machines' rows, as the store trains on its
    // stored chunks (figures of the store's own layout and dictionaries:
    // `cargo bench --bench history_compression`).
    let small: Vec<u8> = rows[..32].concat();
    let samples: Vec<Vec<u8>> = (0..64)
        .map(|machine| {
            (0..32)
                .map(|seq| rmp_serde::to_vec_named(&record(100 + machine, seq)).expect("encode"))
                .collect::<Vec<_>>()
                .concat()
        })
        .collect();
    let dictionary = zstd::dict::from_samples(&samples, 16 * 1024).expect("dictionary trains");
    let prepared = zstd::dict::EncoderDictionary::copy(&dictionary, 3);
    let plain_len = zstd::bulk::compress(&small, 3).expect("compress").len();
    let dict_len = zstd::bulk::Compressor::with_prepared_dictionary(&prepared)
        .and_then(|mut c| c.compress(&small))
        .expect("compress")
        .len();
    println!(
        "codec: 32-event chunk of {} bytes: {plain_len} bytes with zstd -3, {dict_len} with a dictionary",
        small.len()
    );
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(small.len() as u64));
    group.bench_function("zstd_chunk32_level3", |b| {
        b.iter(|| zstd::bulk::compress(&small, 3).expect("compress"))
    });
    group.bench_function("zstd_chunk_dict", |b| {
        let mut compressor =
            zstd::bulk::Compressor::with_prepared_dictionary(&prepared).expect("compressor");
        b.iter(|| compressor.compress(&small).expect("compress"))
    });
    group.finish();
}

/// sled alone, for the same 100 records as `store/jobs_100_*`: the floor
/// the store's per-record cost sits on.
fn bench_sled_floor(c: &mut Criterion) {
    use sled::Transactional;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .cache_capacity(StoreConfig::DEFAULT_CACHE_CAPACITY_BYTES)
        .open()
        .expect("sled opens");
    let tree = |name: &str| db.open_tree(name).expect("tree");
    let (instances, history, plain) = (tree("instances"), tree("history"), tree("plain"));
    // A record's value as the store would hold it: its MessagePack.
    let value = |entity: usize, seq: i64| {
        rmp_serde::to_vec_named(&record(entity, seq).fields).expect("messagepack")
    };
    let mut seq = 0i64;
    let mut group = c.benchmark_group("sled_floor");
    group.throughput(Throughput::Elements(100));
    group.bench_function("plain_insert_100_records", |b| {
        b.iter_batched(
            || {
                seq += 1;
                (seq, (0..100).map(|i| value(i, seq)).collect::<Vec<_>>())
            },
            |(seq, values)| {
                for (i, v) in values.into_iter().enumerate() {
                    let key = format!("PR-{i:04}/{seq:012}");
                    plain.insert(key.as_bytes(), v).expect("insert");
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("tx_read_write_append_100_records", |b| {
        b.iter_batched(
            || {
                seq += 1;
                (seq, (0..100).map(|i| value(i, seq)).collect::<Vec<_>>())
            },
            |(seq, values)| {
                (&instances, &history)
                    .transaction(|(instances, history)| {
                        for (i, v) in values.iter().enumerate() {
                            let entity = format!("PR-{i:04}");
                            let _current = instances.get(entity.as_bytes())?;
                            instances.insert(entity.as_bytes(), v.as_slice())?;
                            let key = format!("{entity}/{seq:012}");
                            history.insert(key.as_bytes(), v.as_slice())?;
                        }
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction")
            },
            BatchSize::SmallInput,
        )
    });
    // Store format 3's pattern: a record writes one key, its instance,
    // which carries the open tail (here ~1 KiB: the record's MessagePack
    // eight times, like a tail of about eight events). The writer writes
    // it with `overwrite`, which does not read the key: the floor.
    let instances_with_tail = tree("instances_with_tail");
    let one_kib = |seq: i64| {
        (0..100)
            .map(|i| value(i, seq).repeat(8))
            .collect::<Vec<_>>()
    };
    // The floor against its baseline call by call: on a machine others
    // share, criterion's runs of one function after the other meet
    // different neighbours, so the ratio is taken from alternating calls
    // (order swapped every pair), its median over the pairs.
    let write_100 = |values: &[Vec<u8>], read_first: bool| {
        let started = std::time::Instant::now();
        instances_with_tail
            .transaction(|instances| {
                for (i, v) in values.iter().enumerate() {
                    let entity = format!("PR-{i:04}");
                    if read_first {
                        let _current = instances.get(entity.as_bytes())?;
                        instances.insert(entity.as_bytes(), v.as_slice())?;
                    } else {
                        instances.overwrite(entity.as_bytes(), v.as_slice());
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .expect("transaction");
        started.elapsed().as_secs_f64() * 1e6
    };
    let pairs = if std::env::args().any(|a| a == "--bench") {
        400
    } else {
        4
    };
    let (mut ratios, mut overwrite_us, mut read_write_us) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..pairs {
        seq += 1;
        let values = one_kib(seq);
        let (o, r) = if pair % 2 == 0 {
            let o = write_100(&values, false);
            (o, write_100(&values, true))
        } else {
            let r = write_100(&values, true);
            (write_100(&values, false), r)
        };
        ratios.push(o / r);
        overwrite_us.push(o);
        read_write_us.push(r);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "sled_floor A/B, {pairs} alternating pairs of 100-record transactions (~1 KiB instances): overwrite / get + insert = {:.2} (median of the per-pair ratios); medians {:.1} / {:.1} µs per record",
        median(&mut ratios),
        median(&mut overwrite_us) / 100.0,
        median(&mut read_write_us) / 100.0,
    );
    group.bench_function("tx_overwrite_100_records_1kib", |b| {
        b.iter_batched(
            || {
                seq += 1;
                one_kib(seq)
            },
            |values| {
                instances_with_tail
                    .transaction(|instances| {
                        for (i, v) in values.iter().enumerate() {
                            let entity = format!("PR-{i:04}");
                            instances.overwrite(entity.as_bytes(), v.as_slice());
                        }
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction")
            },
            BatchSize::SmallInput,
        )
    });
    // The same writes with a read of each key first (`get`, then
    // `insert`, which looks the key up again to return the old value):
    // the writer's pattern before `overwrite`, kept as the same-run
    // baseline the floor is compared against.
    group.bench_function("tx_read_write_100_records_1kib", |b| {
        b.iter_batched(
            || {
                seq += 1;
                one_kib(seq)
            },
            |values| {
                instances_with_tail
                    .transaction(|instances| {
                        for (i, v) in values.iter().enumerate() {
                            let entity = format!("PR-{i:04}");
                            let _current = instances.get(entity.as_bytes())?;
                            instances.insert(entity.as_bytes(), v.as_slice())?;
                        }
                        Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .expect("transaction")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_pipeline,
    bench_store,
    bench_sled_floor,
    bench_codec
);
criterion_main!(benches);
