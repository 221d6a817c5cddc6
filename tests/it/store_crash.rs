//! Crash safety: a SIGKILL at any moment loses nothing that `durable`
//! acknowledged, duplicates nothing, and the store reopens cleanly.
//!
//! The test re-executes its own binary as a child (selected by
//! `MESHLET_CRASH_CHILD=<db dir>`) that writes batches in a loop and prints
//! `durable <n>` after each acknowledged flush, `n` being the number of
//! records acknowledged so far (record `i` for `i < n`). The parent kills it
//! at a random moment, reopens the store, checks, and starts the next round
//! on the same directory, continuing the numbering.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{HistoryQuery, Store, StoreConfig};
use rand::Rng;

const TEST_NAME: &str = "store_crash::sigkill_never_loses_acknowledged_records";
const CHILD_ENV: &str = "MESHLET_CRASH_CHILD";
const START_ENV: &str = "MESHLET_CRASH_START";
/// Set for the child on every third round: checkpoints every 20 ms and at
/// 64 KiB of hot state, so kills land in checkpoints too; the other
/// rounds leave journal frames for the replay.
const FAST_CHECKPOINTS_ENV: &str = "MESHLET_CRASH_FAST_CHECKPOINTS";
const P: &str = "crash";
const ENTITIES: u64 = 13;
const ROUNDS: usize = 6;

fn config(db: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(db);
    // Small chunks and blocks so kills land in the middle of seals and
    // block merges too.
    config.history_chunk_events = 8;
    config.history_block_events = 2;
    if std::env::var(FAST_CHECKPOINTS_ENV).is_ok_and(|v| v == "1") {
        config.checkpoint_interval = Duration::from_millis(20);
        config.hot_bytes = 64 * 1024;
    }
    config
}

/// Record `i` belongs to entity `e{i % ENTITIES}` and carries `n = i`.
fn record(i: u64) -> Record {
    let mut fields = Fields::new();
    fields.insert("n".into(), Value::Int(i as i64));
    fields.insert(
        "pad".into(),
        Value::String(format!("payload-{i}-{}", "x".repeat((i % 50) as usize))),
    );
    Record {
        entity: format!("e{}", i % ENTITIES),
        fields,
        event_time: Timestamp(i as i64),
        origin: Origin::new("crash-test"),
    }
}

#[test]
fn sigkill_never_loses_acknowledged_records() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(Path::new(&dir)),
        Err(_) => parent(),
    }
}

/// Writes until killed (or, as a safety net, for 20 s).
fn child(db: &Path) {
    let start: u64 = std::env::var(START_ENV)
        .expect("start index")
        .parse()
        .expect("numeric start");
    let store = Store::open(config(db)).expect("child opens the store");
    let mut rng = rand::rng();
    let mut stdout = std::io::stdout().lock();
    let mut next = start;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let batch = rng.random_range(1..=12u64);
        let records: Vec<Record> = (next..next + batch).map(record).collect();
        store.upsert(P, &records).expect("child upsert");
        next += batch;
        store.durable_blocking().expect("child durable");
        writeln!(stdout, "durable {next}").expect("stdout");
        stdout.flush().expect("stdout flush");
    }
}

fn parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db: PathBuf = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary path");
    let mut rng = rand::rng();
    let mut acked = 0u64;
    let mut next_start = 0u64;
    let started = Instant::now();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .env(START_ENV, next_start.to_string())
            .env(FAST_CHECKPOINTS_ENV, if round % 3 == 2 { "1" } else { "" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .strip_prefix("durable ")
                    .and_then(|n| n.trim().parse().ok())
                {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            }
        });

        // Even rounds: kill a random 50–600 ms after the first ack (mid-write).
        // Odd rounds: a random 50–600 ms after spawn (may hit open/recovery).
        let delay = Duration::from_millis(rng.random_range(50..=600));
        let kill_at = if round % 2 == 0 {
            let first = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("child acknowledges a batch");
            acked = acked.max(first);
            Instant::now() + delay
        } else {
            Instant::now() + delay
        };
        loop {
            let now = Instant::now();
            if now >= kill_at {
                break;
            }
            match rx.recv_timeout(kill_at - now) {
                Ok(n) => acked = acked.max(n),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("child exited before it was killed")
                }
            }
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(!status.success(), "the child was killed, not finished");
        reader.join().expect("reader thread");
        // Lines written before the kill are acknowledgements too.
        acked = rx.try_iter().fold(acked, u64::max);

        let store = Store::open(config(&db)).expect("store opens cleanly after SIGKILL");
        let persisted = verify(&store, acked);
        next_start = persisted;
        eprintln!(
            "round {round}: killed after {delay:?}, {acked} acknowledged, {persisted} persisted"
        );
        drop(store);
    }
    assert!(acked > 0, "the child acknowledged something");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "crash test took {:?}",
        started.elapsed()
    );
}

/// Checks the reopened store; returns the number of records persisted.
fn verify(store: &Store, acked: u64) -> u64 {
    let mut persisted = BTreeSet::new();
    for e in 0..ENTITIES {
        let entity = format!("e{e}");
        let history = store
            .history(P, &entity, &HistoryQuery::default())
            .unwrap_or_else(|err| panic!("history of {entity} after crash: {err}"));
        let instance = store
            .get(P, &entity)
            .unwrap_or_else(|err| panic!("{entity} after crash: {err}"));
        let versions: Vec<u64> = history.iter().map(|ev| ev.version).collect();
        assert_eq!(
            versions,
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "{entity}: versions contiguous from 1"
        );
        let ns: Vec<u64> = history
            .iter()
            .map(|ev| match ev.fields.get("n") {
                Some(Value::Int(n)) => *n as u64,
                other => panic!("{entity}: history event without n: {other:?}"),
            })
            .collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{entity}: records in order, none duplicated: {ns:?}"
        );
        match instance {
            Some(instance) => {
                assert_eq!(
                    instance.version,
                    history.len() as u64,
                    "{entity}: version = history length"
                );
                assert_eq!(
                    instance.fields.get("n"),
                    ns.last().map(|n| Value::Int(*n as i64)).as_ref()
                );
            }
            None => assert!(history.is_empty(), "{entity}: history without instance"),
        }
        for n in ns {
            assert_eq!(n % ENTITIES, e, "record {n} under the wrong entity");
            assert!(persisted.insert(n), "record {n} stored twice");
        }
    }
    for i in 0..acked {
        assert!(
            persisted.contains(&i),
            "record {i} was acknowledged but is lost"
        );
    }
    let count = persisted.len() as u64;
    // Batches commit atomically and in order, so what survived is a prefix.
    assert_eq!(
        persisted.iter().next_back().map_or(0, |max| max + 1),
        count,
        "persisted records have a gap"
    );
    count
}
