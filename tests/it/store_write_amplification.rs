//! Bytes written to disk per raw payload byte by the store's ingest path
//! (`/proc/self/io` `write_bytes`), as the writer drives it: groups of
//! single-record jobs for 1,000 machines, one durability barrier per group.
//! A measurement, not a check: `#[ignore]`d, run with `--ignored --nocapture`.

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{IngestBatch, IngestLimits, IngestRecord, Store, StoreConfig};

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn machine(i: u64, n: u64) -> (Record, usize) {
    let mut fields = Fields::new();
    fields.insert("machine_id".into(), Value::String(format!("m-{i:04}")));
    fields.insert("site".into(), Value::String("berlin".into()));
    fields.insert(
        "temperature".into(),
        Value::Float(40.0 + (n % 17) as f64 * 0.37),
    );
    fields.insert(
        "vibration".into(),
        Value::Float(0.1 + (n % 11) as f64 * 0.013),
    );
    fields.insert("rpm".into(), Value::Int(1400 + (n % 50) as i64));
    fields.insert("status".into(), Value::String("running".into()));
    let raw = format!(
        r#"{{"machine_id":"m-{i:04}","site":"berlin","temperature":{},"vibration":{},"rpm":{},"status":"running","ts":{}}}"#,
        40.0 + (n % 17) as f64 * 0.37,
        0.1 + (n % 11) as f64 * 0.013,
        1400 + (n % 50),
        1_700_000_000_000u64 + n
    );
    (
        Record {
            entity: format!("m-{i:04}"),
            fields,
            event_time: Timestamp::from_millis(1_700_000_000_000 + n as i64),
            origin: Origin::new("mqtt:0"),
        },
        raw.len() + 1,
    )
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn bytes_written_per_raw_byte() {
    let records: u64 = std::env::var("AMP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let group: u64 = std::env::var("AMP_GROUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let durable_each = std::env::var("AMP_NO_FLUSH").is_err();
    // Paced ingest (records per second), as a gateway sees it; unpaced when unset.
    let rate: Option<f64> = std::env::var("AMP_RATE").ok().and_then(|v| v.parse().ok());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path().join("db"));
    if let Some(ms) = std::env::var("AMP_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.checkpoint_interval = std::time::Duration::from_millis(ms);
    }
    if let Some(bytes) = std::env::var("AMP_HOT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.hot_bytes = bytes;
    }
    let store = Store::open(config).expect("open");
    let limits = IngestLimits::default();
    println!(
        "{}",
        std::fs::read_to_string("/proc/self/io")
            .unwrap_or_default()
            .replace('\n', " ")
    );
    let before = write_bytes();
    let started = std::time::Instant::now();
    let mut raw = 0usize;
    let mut n = 0u64;
    let mut flushes = 0u64;
    while n < records {
        if let Some(rate) = rate {
            let due = started + std::time::Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let mut batches = Vec::new();
        for _ in 0..group {
            let (record, len) = machine(n % 1000, n);
            raw += len;
            let mut fp = [0u8; 16];
            fp[..8].copy_from_slice(&n.to_be_bytes());
            batches.push(IngestBatch {
                records: vec![IngestRecord {
                    record,
                    fingerprint: Some(fp),
                    check_duplicate: true,
                }],
                ..IngestBatch::default()
            });
            n += 1;
        }
        let refs: Vec<_> = batches.iter().map(|b| (b, Timestamp::now())).collect();
        for r in store.ingest_group("machine_health", &refs, &limits) {
            r.expect("ingest");
        }
        if durable_each {
            store.durable_blocking().expect("durable");
            flushes += 1;
        }
    }
    store.durable_blocking().expect("durable");
    // What is still in the hot state is written too (a checkpoint, as at
    // close): counted, so short runs are not flattered. What sled writes
    // for it, per byte of hot state it moves, is its amplification.
    let hot = store.hot_bytes();
    let before_checkpoint = write_bytes();
    store.checkpoint().expect("checkpoint");
    let checkpoint_written = write_bytes() - before_checkpoint;
    println!(
        "last checkpoint: {hot} B of hot state, sled wrote {checkpoint_written} B ({:.2}x)",
        checkpoint_written as f64 / hot.max(1) as f64
    );
    let elapsed = started.elapsed();
    println!(
        "{}",
        std::fs::read_to_string("/proc/self/io")
            .unwrap_or_default()
            .replace('\n', " ")
    );
    let written = write_bytes() - before;
    let stats = store.journal_stats();
    let frames = stats
        .frames_written
        .load(std::sync::atomic::Ordering::Relaxed);
    let frame_bytes = stats.frame_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let checkpoints = stats.checkpoints.load(std::sync::atomic::Ordering::Relaxed);
    let keys = stats
        .checkpoint_keys
        .load(std::sync::atomic::Ordering::Relaxed);
    let micros = stats
        .checkpoint_micros
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "journal: {frames} frames, {frame_bytes} B ({:.2}x raw); {checkpoints} checkpoints, {keys} keys, {} ms",
        frame_bytes as f64 / raw as f64,
        micros / 1000
    );
    let size = dir_bytes(dir.path());
    for tree in [
        "machine_health/instances",
        "machine_health/history",
        "machine_health/dedupe",
        "machine_health/audit",
        "journal",
    ] {
        if let Ok(t) = store.raw_db().open_tree(tree) {
            let (k, v) = t
                .iter()
                .flatten()
                .fold((0usize, 0usize), |(k, v), (_, b)| (k + 1, v + b.len()));
            println!(
                "tree {tree}: {k} keys, {v} value bytes, {:.0} B avg",
                v as f64 / k.max(1) as f64
            );
        }
    }
    println!(
        "records {records} group {group} flushes {flushes}: raw {raw} B, written {written} B = {:.2}x raw, data dir {size} B = {:.2}x, {:.1} us/record",
        written as f64 / raw as f64,
        size as f64 / raw as f64,
        elapsed.as_micros() as f64 / records as f64
    );
}

/// sled alone: one 1 KiB insert and one flush, repeated — the floor of a
/// durable acknowledgement through sled.
#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn sled_bytes_written_per_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("db")).expect("open");
    let tree = db.open_tree("t").expect("tree");
    let n = 2000u64;
    let before = write_bytes();
    for i in 0..n {
        tree.insert(i.to_be_bytes(), vec![7u8; 1024])
            .expect("insert");
        db.flush().expect("flush");
    }
    let per = (write_bytes() - before) as f64 / n as f64;
    println!("sled: {per:.0} bytes written per 1 KiB insert + flush");
    // The journal's pattern: appends of ~2 KiB frames, the oldest removed
    // in bulk every 500 (a checkpoint).
    let journal = db.open_tree("journal").expect("tree");
    let before = write_bytes();
    for i in 0..n {
        journal
            .insert(i.to_be_bytes(), vec![9u8; 2048])
            .expect("insert");
        if i % 500 == 499 {
            for j in i - 499..=i {
                journal.remove(j.to_be_bytes()).expect("remove");
            }
        }
        db.flush().expect("flush");
    }
    let per = (write_bytes() - before) as f64 / n as f64;
    println!(
        "sled: {per:.0} bytes written per 2 KiB journal append + flush (bulk removal every 500)"
    );
}

/// Start-up after a SIGKILL with the hot state nearly full (just under
/// `hot_bytes`, nothing checkpointed): the replay is the bound on how long
/// readiness waits. The test re-runs its own binary as the writer.
#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn open_after_sigkill_with_a_full_hot_state() {
    use std::io::{BufRead, BufReader};
    const CHILD: &str = "AMP_REPLAY_CHILD";
    let config = |path: &std::path::Path| {
        let mut config = StoreConfig::new(path);
        config.checkpoint_interval = std::time::Duration::from_secs(3600);
        config
    };
    if let Ok(path) = std::env::var(CHILD) {
        let store = Store::open(config(std::path::Path::new(&path))).expect("open");
        let limits = IngestLimits::default();
        let bound = store.config().hot_bytes as u64;
        let mut n = 0u64;
        // Stop just short of the bound (a group is ~14 KiB of frame), so
        // no checkpoint ran: the longest replay there can be.
        // The writer's two triggers: the hot state past `hot_bytes`, the
        // plain frames past 8× that.
        while store.hot_bytes() as u64 + 65_536 < bound
            && store.journal_pending_plain_bytes() + (1 << 20) < bound * 8
        {
            let batches: Vec<IngestBatch> = (0..100)
                .map(|_| {
                    let (record, _) = machine(n % 1000, n);
                    n += 1;
                    IngestBatch {
                        records: vec![IngestRecord {
                            record,
                            fingerprint: None,
                            check_duplicate: false,
                        }],
                        ..IngestBatch::default()
                    }
                })
                .collect();
            let refs: Vec<_> = batches.iter().map(|b| (b, Timestamp::now())).collect();
            for r in store.ingest_group("machine_health", &refs, &limits) {
                r.expect("ingest");
            }
        }
        assert_eq!(
            store
                .journal_stats()
                .checkpoints
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        store.durable_blocking().expect("durable");
        println!("ready {n} {}", store.journal_pending_frames());
        std::thread::sleep(std::time::Duration::from_secs(600));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "store_write_amplification::open_after_sigkill_with_a_full_hot_state",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("ready"))
        .expect("the child filled the hot state");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let segments: u64 = std::fs::read_dir(path.join("journal"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let store = Store::open(config(&path)).expect("reopen");
    let opened = started.elapsed();
    let stats = store.journal_stats();
    println!(
        "{line}: reopened in {opened:?} (journal left {segments} B before the replay), {} frames replayed",
        stats
            .frames_replayed
            .load(std::sync::atomic::Ordering::Relaxed)
    );
}
