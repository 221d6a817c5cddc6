//! `Store::ingest` as the ingest layer sees it, on a real sled database in
//! a temp dir: one batch = records + dedupe registrations + quarantine +
//! source offset, all or nothing, also across reopen and SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{
    Fingerprint, HistoryQuery, IngestBatch, IngestLimits, IngestRecord, QuarantineItem,
    SourceOffset, Store, StoreConfig, StoreError,
};
use rand::Rng;

const P: &str = "machine_health";

fn open(dir: &Path) -> Store {
    Store::open(StoreConfig::new(dir.join("db"))).expect("store opens")
}

fn record(entity: &str, n: i64) -> Record {
    let mut fields = Fields::new();
    fields.insert("n".into(), Value::Int(n));
    Record {
        entity: entity.to_string(),
        fields,
        event_time: Timestamp(n),
        origin: Origin::new("mqtt:0"),
    }
}

fn fp(n: u8) -> Fingerprint {
    [n; 16]
}

/// A record with fingerprint `fp(n)`, checked for duplicates.
fn checked(entity: &str, n: u8) -> IngestRecord {
    IngestRecord {
        record: record(entity, i64::from(n)),
        fingerprint: Some(fp(n)),
        check_duplicate: true,
    }
}

fn item(tag: &str) -> QuarantineItem {
    QuarantineItem {
        source: "mqtt:0".into(),
        topic: Some(format!("plant/berlin/machine/{tag}/telemetry")),
        captures: vec![
            ("site".into(), "berlin".into()),
            ("machine_id".into(), tag.into()),
        ],
        payload: format!("{{\"temp\": \"{tag}\"}}").into_bytes(),
        reasons: vec![format!("/temp: expected a number, got {tag:?}")],
        arrival: Timestamp(7),
        origin: Origin::new("mqtt:plant/berlin").with_actor("dev"),
        index: None,
        entity: Some(tag.into()),
    }
}

fn offset(source: &str, position: &[u8]) -> Option<SourceOffset> {
    Some(SourceOffset {
        source: source.into(),
        position: position.to_vec(),
    })
}

fn limits(quarantine_max: u64, dedupe_capacity: u64) -> IngestLimits {
    IngestLimits {
        quarantine_max,
        dedupe_capacity,
    }
}

fn ingest(store: &Store, batch: &IngestBatch) -> meshlet::store::IngestOutcome {
    store
        .ingest(P, batch, &IngestLimits::default(), Timestamp(1_000))
        .expect("ingest")
}

/// Which of `fps` the window recognises, via a probe batch on entity `probe`.
fn recognised(store: &Store, fps: &[u8], limits: &IngestLimits) -> Vec<bool> {
    let batch = IngestBatch {
        records: fps.iter().map(|&n| checked("probe", n)).collect(),
        ..IngestBatch::default()
    };
    let outcome = store
        .ingest(P, &batch, limits, Timestamp(2_000))
        .expect("probe ingest");
    outcome.changes.iter().map(Option::is_none).collect()
}

fn ids(store: &Store) -> Vec<u64> {
    store
        .quarantine_list(P, None, usize::MAX)
        .expect("quarantine lists")
        .iter()
        .map(|e| e.id)
        .collect()
}

#[test]
fn one_batch_writes_records_quarantine_and_offset_together_and_all_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // Raw bytes as received: invalid UTF-8, 256 KiB.
    let mut big = item("m9");
    big.payload = (0..256 * 1024u32).map(|i| (i % 251) as u8 ^ 0x80).collect();
    big.index = Some(3);
    let batch = IngestBatch {
        records: vec![checked("m1", 1), checked("m2", 2)],
        quarantine: vec![item("m3"), big.clone()],
        source_offset: offset("machine_health/file:0", b"inode=7;offset=4096"),
        resolve_quarantine: vec![],
        idempotency: None,
    };
    {
        let store = open(dir.path());
        let outcome = ingest(&store, &batch);
        assert_eq!(outcome.changes.len(), 2);
        assert!(outcome
            .changes
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| c.created)));
        assert_eq!((outcome.duplicates, outcome.quarantined), (0, 2));
        assert_eq!(outcome.quarantine_ids, vec![1, 2]);
        assert_eq!((outcome.quarantine_evicted, outcome.resolved), (0, 0));
        store.durable_blocking().unwrap();
    }
    let store = open(dir.path());
    for (entity, n) in [("m1", 1), ("m2", 2)] {
        let instance = store.get(P, entity).unwrap().expect("record stored");
        assert_eq!(instance.fields.get("n"), Some(&Value::Int(n)));
        assert_eq!(instance.first_seen, Timestamp(1_000));
    }
    assert_eq!(
        recognised(&store, &[1, 2, 3], &IngestLimits::default()),
        [true, true, false]
    );
    assert_eq!(store.quarantine_count(P).unwrap(), 2);
    let entries = store.quarantine_list(P, None, 10).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!((entries[0].id, entries[1].id), (1, 2));
    assert_eq!(entries[0].item, item("m3"));
    assert_eq!(entries[1].item, big, "payload bytes come back exactly");
    assert_eq!(entries[1].quarantined_at, Timestamp(1_000));
    assert_eq!(
        store
            .source_offset("machine_health/file:0")
            .unwrap()
            .as_deref(),
        Some(&b"inode=7;offset=4096"[..])
    );
}

#[test]
fn a_failed_batch_writes_nothing_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A corrupt instance makes the transaction abort after `ok` was merged.
    store
        .raw_db()
        .open_tree(format!("{P}/instances"))
        .unwrap()
        .insert("bad", &[9u8, 9, 9][..])
        .unwrap();
    let batch = IngestBatch {
        records: vec![checked("ok", 1), checked("bad", 2)],
        quarantine: vec![item("q")],
        source_offset: offset("file:0", b"42"),
        resolve_quarantine: vec![],
        idempotency: None,
    };
    let err = store
        .ingest(P, &batch, &IngestLimits::default(), Timestamp(1))
        .expect_err("a corrupt instance refuses the batch");
    assert!(err.is_corrupt(), "{err}");
    assert_eq!(store.get(P, "ok").unwrap(), None);
    assert_eq!(store.quarantine_count(P).unwrap(), 0);
    assert!(ids(&store).is_empty());
    assert_eq!(store.source_offset("file:0").unwrap(), None);
    assert_eq!(
        recognised(&store, &[1, 2], &IngestLimits::default()),
        [false, false],
        "no fingerprint registered"
    );

    // An invalid entity key refuses the batch before anything is planned.
    let long = "k".repeat(10_000);
    let batch = IngestBatch {
        records: vec![checked("fine", 3), checked(&long, 4)],
        quarantine: vec![item("q")],
        source_offset: offset("file:0", b"43"),
        resolve_quarantine: vec![],
        idempotency: None,
    };
    let err = store
        .ingest(P, &batch, &IngestLimits::default(), Timestamp(1))
        .expect_err("key too long");
    assert!(matches!(err, StoreError::KeyTooLong { .. }), "{err}");
    assert_eq!(store.get(P, "fine").unwrap(), None);
    assert_eq!(store.quarantine_count(P).unwrap(), 0);
    assert_eq!(store.source_offset("file:0").unwrap(), None);

    // The next good batch gets quarantine id 1: failed batches use no ids.
    let batch = IngestBatch {
        quarantine: vec![item("q")],
        ..IngestBatch::default()
    };
    assert_eq!(ingest(&store, &batch).quarantine_ids, vec![1]);
}

#[test]
fn duplicates_within_and_across_batches_and_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let mut unchecked = checked("m1", 9);
        unchecked.check_duplicate = false;
        let no_fp = IngestRecord {
            fingerprint: None,
            ..checked("m1", 5)
        };
        let batch = IngestBatch {
            records: vec![
                checked("m1", 1),
                checked("m1", 1), // same batch: duplicate
                unchecked.clone(),
                unchecked, // not checked: applied again
                no_fp.clone(),
                no_fp, // no fingerprint: always applied
            ],
            ..IngestBatch::default()
        };
        let outcome = ingest(&store, &batch);
        let applied: Vec<bool> = outcome.changes.iter().map(Option::is_some).collect();
        assert_eq!(applied, [true, false, true, true, true, true]);
        assert_eq!(outcome.duplicates, 1);
        assert_eq!(store.get(P, "m1").unwrap().unwrap().version, 5);

        // Across batches: 1 and 9 are known; 2 is new.
        let batch = IngestBatch {
            records: vec![checked("m1", 1), checked("m1", 9), checked("m1", 2)],
            ..IngestBatch::default()
        };
        let outcome = ingest(&store, &batch);
        assert_eq!(outcome.duplicates, 2);
        assert_eq!(outcome.changes[2].as_ref().map(|c| c.version), Some(6));
        store.durable_blocking().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        recognised(&store, &[1, 2, 9, 5, 3], &IngestLimits::default()),
        [true, true, true, false, false],
        "the window survives reopen; records without fingerprint register nothing"
    );
    let history = store.history(P, "m1", &HistoryQuery::default()).unwrap();
    assert_eq!(
        history.len(),
        6,
        "skipped duplicates are not history events"
    );
}

#[test]
fn the_window_forgets_the_oldest_fingerprint_beyond_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cap3 = limits(100, 3);
    for n in 1..=4u8 {
        let batch = IngestBatch {
            records: vec![checked("m1", n)],
            ..IngestBatch::default()
        };
        store.ingest(P, &batch, &cap3, Timestamp(1)).unwrap();
    }
    // 1 is the 4th-oldest: forgotten. Probing 2..4 only (probing 1 would
    // register it and push 2 out).
    assert_eq!(recognised(&store, &[2, 3, 4], &cap3), [true, true, true]);
    assert_eq!(recognised(&store, &[1], &cap3), [false]);
    // Registering 1 again pushed 2 out; 3, 4, 1 remain.
    assert_eq!(recognised(&store, &[3, 4, 1], &cap3), [true, true, true]);
    assert_eq!(recognised(&store, &[2], &cap3), [false]);

    // Refreshing with check_duplicate = false moves a fingerprint to newest.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut refresh = checked("m1", 1);
    refresh.check_duplicate = false;
    let batch = IngestBatch {
        records: vec![
            checked("m1", 1),
            checked("m1", 2),
            checked("m1", 3),
            refresh,
        ],
        ..IngestBatch::default()
    };
    store.ingest(P, &batch, &cap3, Timestamp(1)).unwrap();
    let batch = IngestBatch {
        records: vec![checked("m1", 4)],
        ..IngestBatch::default()
    };
    store.ingest(P, &batch, &cap3, Timestamp(1)).unwrap();
    assert_eq!(recognised(&store, &[1, 3, 4], &cap3), [true, true, true]);
    assert_eq!(recognised(&store, &[2], &cap3), [false], "2 was the oldest");
}

/// Keys of the product's dedupe tree, by their first byte.
fn dedupe_key_tags(store: &Store) -> Vec<u8> {
    store
        .raw_db()
        .open_tree(format!("{P}/dedupe"))
        .unwrap()
        .iter()
        .keys()
        .map(|k| k.unwrap()[0])
        .collect()
}

#[test]
fn the_window_keeps_one_key_per_write_group_and_reloads_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cap = limits(100, 100);
    {
        let store = open(dir.path());
        for group in 0..10u8 {
            let batch = IngestBatch {
                records: (1..=20).map(|i| checked("m1", group * 20 + i)).collect(),
                ..IngestBatch::default()
            };
            store.ingest(P, &batch, &cap, Timestamp(1)).unwrap();
        }
        let tags = dedupe_key_tags(&store);
        assert_eq!(
            tags.iter().filter(|&&t| t == b'G').count(),
            5,
            "100 registrations in their five write groups; wholly evicted groups removed: {tags:?}"
        );
        assert_eq!(tags.len(), 6, "the groups and the state: {tags:?}");
        store.durable_blocking().unwrap();
    }
    let store = open(dir.path());
    let newest: Vec<u8> = (101..=200).collect();
    assert_eq!(
        recognised(&store, &newest, &cap),
        vec![true; 100],
        "the newest 100 survive reopen"
    );
    assert_eq!(
        recognised(&store, &[100], &cap),
        [false],
        "the 101st newest is gone"
    );
}

/// Writes the dedupe window of `fps` (registered in that order) the way
/// store format 1 kept it — per fingerprint `F ++ fp` → seq and
/// `S ++ seq` → fp, then the state — and stamps the store format 1.
fn write_format_1_window(db: &sled::Db, fps: &[u8]) {
    let tree = db.open_tree(format!("{P}/dedupe")).unwrap();
    tree.clear().unwrap();
    for (seq, &n) in fps.iter().enumerate() {
        let seq = u8::try_from(seq).expect("a MessagePack fixint");
        let mut membership = vec![b'F'];
        membership.extend_from_slice(&fp(n));
        tree.insert(membership, vec![1u8, seq]).unwrap();
        let mut age = vec![b'S'];
        age.extend_from_slice(&u64::from(seq).to_be_bytes());
        let mut value = vec![1u8, 0xc4, 16];
        value.extend_from_slice(&fp(n));
        tree.insert(age, value).unwrap();
    }
    let len = u8::try_from(fps.len()).unwrap();
    // {"next_seq": len, "len": len} behind format byte 1.
    let mut state = vec![1u8, 0x82, 0xa8];
    state.extend_from_slice(b"next_seq");
    state.extend_from_slice(&[len, 0xa3]);
    state.extend_from_slice(b"len");
    state.push(len);
    tree.insert("N", state).unwrap();
    let mut format = vec![1u8, 0x81, 0xae];
    format.extend_from_slice(b"format_version");
    format.push(1);
    db.open_tree("meta")
        .unwrap()
        .insert("format", format)
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn a_format_1_dedupe_window_is_converted_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        write_format_1_window(store.raw_db(), &[1, 2, 3, 4, 5]);
    }
    let store = open(dir.path());
    assert_eq!(
        dedupe_key_tags(&store),
        [b'G', b'N'],
        "format 1 keys replaced by one group and the state"
    );
    let format = store
        .raw_db()
        .open_tree("meta")
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap();
    assert_eq!(
        format.last(),
        Some(&(meshlet::store::STORE_FORMAT_VERSION as u8)),
        "stamped with this build's format, so an older build refuses it"
    );
    let cap5 = limits(100, 5);
    assert_eq!(
        recognised(&store, &[1, 2, 3, 4, 5], &cap5),
        [true; 5],
        "every registration kept"
    );
    assert_eq!(recognised(&store, &[6], &cap5), [false]);
    assert_eq!(
        recognised(&store, &[1], &cap5),
        [false],
        "the age order kept: 1 was the oldest and went when 6 came"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(recognised(&store, &[3, 4, 5, 6], &cap5), [true; 4]);
}

#[test]
fn quarantine_is_bounded_and_counts_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let max3 = limits(3, 100);
    let batch = |tags: &[&str]| IngestBatch {
        quarantine: tags.iter().map(|t| item(t)).collect(),
        ..IngestBatch::default()
    };
    let o = store
        .ingest(P, &batch(&["a", "b"]), &max3, Timestamp(1))
        .unwrap();
    assert_eq!((o.quarantined, o.quarantine_evicted), (2, 0));
    let o = store
        .ingest(P, &batch(&["c", "d"]), &max3, Timestamp(2))
        .unwrap();
    assert_eq!((o.quarantined, o.quarantine_evicted), (2, 1));
    assert_eq!(ids(&store), [2, 3, 4]);
    assert_eq!(store.quarantine_count(P).unwrap(), 3);
    // A batch larger than the bound keeps only its own newest items.
    let o = store
        .ingest(P, &batch(&["e", "f", "g", "h", "i"]), &max3, Timestamp(3))
        .unwrap();
    assert_eq!(o.quarantine_ids, [5, 6, 7, 8, 9]);
    assert_eq!(o.quarantine_evicted, 5, "three stored, two of its own");
    assert_eq!(ids(&store), [7, 8, 9]);
    let tags: Vec<String> = store
        .quarantine_list(P, None, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.item.captures[1].1.clone())
        .collect();
    assert_eq!(tags, ["g", "h", "i"]);
    // A lowered bound applies on the next batch that touches the quarantine.
    let o = store
        .ingest(P, &batch(&["j"]), &limits(1, 100), Timestamp(4))
        .unwrap();
    assert_eq!(o.quarantine_evicted, 3);
    assert_eq!(ids(&store), [10]);
    assert_eq!(store.quarantine_count(P).unwrap(), 1);
}

#[test]
fn quarantine_lists_in_pages_after_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = IngestBatch {
        quarantine: (0..7).map(|i| item(&format!("m{i}"))).collect(),
        resolve_quarantine: vec![],
        ..IngestBatch::default()
    };
    ingest(&store, &batch);
    ingest(
        &store,
        &IngestBatch {
            resolve_quarantine: vec![4],
            ..IngestBatch::default()
        },
    );
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.quarantine_list(P, after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        pages.push(page.iter().map(|e| e.id).collect::<Vec<_>>());
    }
    assert_eq!(pages, [vec![1, 2], vec![3, 5], vec![6, 7]]);
    assert!(store
        .quarantine_list(P, Some(u64::MAX), 5)
        .unwrap()
        .is_empty());
    assert_eq!(store.quarantine_list(P, Some(5), 1).unwrap()[0].id, 6);
    assert!(store.quarantine_list("other", None, 5).unwrap().is_empty());
    assert_eq!(store.quarantine_count("other").unwrap(), 0);
}

#[test]
fn quarantine_ids_are_never_reused_after_eviction_or_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let max2 = limits(2, 100);
    let batch = |tag: &str| IngestBatch {
        quarantine: vec![item(tag)],
        ..IngestBatch::default()
    };
    {
        let store = open(dir.path());
        for tag in ["a", "b", "c"] {
            store.ingest(P, &batch(tag), &max2, Timestamp(1)).unwrap();
        }
        // Resolve everything: the quarantine is empty, the counter is not.
        let o = store
            .ingest(
                P,
                &IngestBatch {
                    resolve_quarantine: vec![1, 2, 3, 99],
                    ..IngestBatch::default()
                },
                &max2,
                Timestamp(2),
            )
            .unwrap();
        assert_eq!(o.resolved, 2, "1 was evicted, 99 never existed");
        assert_eq!(store.quarantine_count(P).unwrap(), 0);
        let o = store.ingest(P, &batch("d"), &max2, Timestamp(3)).unwrap();
        assert_eq!(o.quarantine_ids, [4]);
        store.durable_blocking().unwrap();
    }
    let store = open(dir.path());
    let o = store.ingest(P, &batch("e"), &max2, Timestamp(4)).unwrap();
    assert_eq!(o.quarantine_ids, [5], "the counter survives reopen");
    assert_eq!(ids(&store), [4, 5]);
    // Products count separately.
    let o = store
        .ingest("other", &batch("x"), &max2, Timestamp(4))
        .unwrap();
    assert_eq!(o.quarantine_ids, [1]);
}

#[test]
fn resolving_removes_entries_together_with_the_replayed_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = IngestBatch {
        quarantine: vec![item("m1"), item("m2"), item("m3")],
        ..IngestBatch::default()
    };
    ingest(&store, &batch);
    // A replay that fails writes neither the records nor the resolution.
    store
        .raw_db()
        .open_tree(format!("{P}/instances"))
        .unwrap()
        .insert("broken", &[0u8][..])
        .unwrap();
    let failing = IngestBatch {
        records: vec![checked("m1", 1), checked("broken", 2)],
        resolve_quarantine: vec![1, 2],
        ..IngestBatch::default()
    };
    assert!(store
        .ingest(P, &failing, &IngestLimits::default(), Timestamp(5))
        .is_err());
    assert_eq!(ids(&store), [1, 2, 3]);
    assert_eq!(store.get(P, "m1").unwrap(), None);
    // A replay that succeeds does both.
    let replay = IngestBatch {
        records: vec![checked("m1", 1), checked("m2", 2)],
        resolve_quarantine: vec![1, 2],
        ..IngestBatch::default()
    };
    let o = ingest(&store, &replay);
    assert_eq!((o.resolved, o.quarantined), (2, 0));
    assert_eq!(ids(&store), [3]);
    assert_eq!(store.quarantine_count(P).unwrap(), 1);
    assert!(store.get(P, "m1").unwrap().is_some());
    assert!(store.get(P, "m2").unwrap().is_some());
}

#[test]
fn source_offsets_are_stored_overwritten_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        assert_eq!(store.source_offset("p/file:0").unwrap(), None);
        let at = |pos: &[u8]| IngestBatch {
            source_offset: offset("p/file:0", pos),
            ..IngestBatch::default()
        };
        ingest(&store, &at(b"\x00\x01first"));
        assert_eq!(
            store.source_offset("p/file:0").unwrap().as_deref(),
            Some(&b"\x00\x01first"[..])
        );
        ingest(&store, &at(b"second"));
        let other = IngestBatch {
            records: vec![checked("m1", 1)],
            source_offset: offset("p/file:1", b""),
            ..IngestBatch::default()
        };
        ingest(&store, &other);
        // A batch without an offset leaves the stored one alone.
        ingest(
            &store,
            &IngestBatch {
                records: vec![checked("m1", 2)],
                ..IngestBatch::default()
            },
        );
        store.durable_blocking().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store.source_offset("p/file:0").unwrap().as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(store.source_offset("p/file:1").unwrap(), Some(Vec::new()));
    assert_eq!(store.source_offset("p/file:2").unwrap(), None);
}

#[test]
fn upsert_and_ingest_are_one_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .upsert_at(P, &[record("m1", 1)], Timestamp(1))
        .unwrap();
    let o = ingest(
        &store,
        &IngestBatch {
            records: vec![checked("m1", 2)],
            ..IngestBatch::default()
        },
    );
    assert_eq!(o.changes[0].as_ref().map(|c| c.version), Some(2));
    let changes = store
        .upsert_at(P, &[record("m1", 3)], Timestamp(2))
        .unwrap();
    assert_eq!(changes[0].version, 3);
    assert!(store.upsert(P, &[]).unwrap().is_empty());
    let empty = ingest(&store, &IngestBatch::default());
    assert!(empty.changes.is_empty());
    assert!(IngestBatch::default().is_empty());
    assert_eq!(
        IngestLimits::default(),
        limits(10_000, 65_536),
        "documented defaults"
    );
}

// ---------------------------------------------------------------------------
// Group commit: several batches in one transaction.

/// Random batches over a few entities: overlapping fingerprints (within
/// and across batches), quarantine items, resolutions of earlier ids, and
/// offsets.
fn random_batches(rng: &mut impl Rng, count: usize) -> Vec<(IngestBatch, Timestamp)> {
    (0..count)
        .map(|i| {
            let records = (0..rng.random_range(0..4))
                .map(|_| {
                    checked(
                        &format!("m{}", rng.random_range(0..5)),
                        rng.random_range(0..40),
                    )
                })
                .collect();
            let quarantine = (0..rng.random_range(0..3))
                .map(|_| item(&format!("q{}", rng.random_range(0..100))))
                .collect();
            let resolve_quarantine = if rng.random_bool(0.2) {
                vec![rng.random_range(1..20)]
            } else {
                Vec::new()
            };
            let source_offset = if rng.random_bool(0.5) {
                offset(
                    &format!("p/file:{}", rng.random_range(0..2)),
                    &i.to_be_bytes(),
                )
            } else {
                None
            };
            let batch = IngestBatch {
                records,
                quarantine,
                source_offset,
                resolve_quarantine,
                idempotency: None,
            };
            (batch, Timestamp(10_000 + i as i64))
        })
        .collect()
}

/// Everything a reader can see of the store after the batches.
fn visible_state(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for e in 0..5 {
        let entity = format!("m{e}");
        let instance = store.get(P, &entity).unwrap();
        let history = store
            .history(P, &entity, &HistoryQuery::default())
            .unwrap()
            .into_iter()
            .map(|h| (h.version, h.fields, h.received_at))
            .collect::<Vec<_>>();
        out.push(format!(
            "{entity}: {:?} {history:?}",
            instance.map(|i| (i.version, i.fields, i.first_seen, i.last_seen))
        ));
    }
    out.push(format!("quarantine {:?}", ids(store)));
    for source in ["p/file:0", "p/file:1"] {
        out.push(format!(
            "{source} {:?}",
            store.source_offset(source).unwrap()
        ));
    }
    out
}

#[test]
fn a_group_of_batches_is_the_same_batches_one_by_one() {
    let limits = limits(6, 16);
    for seed in 0..8u64 {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let batches = random_batches(&mut rng, 40);
        let dir_one = tempfile::tempdir().unwrap();
        let dir_group = tempfile::tempdir().unwrap();
        let one = open(dir_one.path());
        let grouped = open(dir_group.path());

        let mut expected = Vec::new();
        for (batch, at) in &batches {
            expected.push(one.ingest(P, batch, &limits, *at).expect("ingest"));
        }
        let mut got = Vec::new();
        let mut rest = &batches[..];
        while !rest.is_empty() {
            let take = rng.random_range(1..=rest.len().min(7));
            let group: Vec<(&IngestBatch, Timestamp)> =
                rest[..take].iter().map(|(b, t)| (b, *t)).collect();
            for result in grouped.ingest_group(P, &group, &limits) {
                got.push(result.expect("group ingest"));
            }
            rest = &rest[take..];
        }
        for (i, (want, got)) in expected.iter().zip(&got).enumerate() {
            assert_eq!(want.changes, got.changes, "seed {seed}, batch {i}: changes");
            assert_eq!(want.duplicates, got.duplicates, "seed {seed}, batch {i}");
            assert_eq!(
                want.quarantine_ids, got.quarantine_ids,
                "seed {seed}, batch {i}"
            );
        }
        let evicted = |o: &[meshlet::store::IngestOutcome]| -> (usize, usize) {
            o.iter().fold((0, 0), |(e, r), o| {
                (e + o.quarantine_evicted, r + o.resolved)
            })
        };
        assert_eq!(
            evicted(&expected),
            evicted(&got),
            "seed {seed}: evictions, resolutions"
        );
        assert_eq!(visible_state(&one), visible_state(&grouped), "seed {seed}");
        assert!(
            expected.iter().any(|o| o.duplicates > 0),
            "seed {seed}: the batches exercise the dedupe window"
        );
    }
}

/// A large group (100 batches, ~200 records, several per entity, many
/// duplicates) in one shared transaction is still its batches one by one.
#[test]
fn a_group_larger_than_one_transaction_is_still_the_batches_one_by_one() {
    let limits = limits(6, 64);
    let batches: Vec<(IngestBatch, Timestamp)> = (0..100u8)
        .map(|i| {
            let records = (0..1 + usize::from(i % 3))
                .map(|r| {
                    checked(
                        &format!("m{}", (usize::from(i) + r) % 7),
                        (i + r as u8) % 45,
                    )
                })
                .collect();
            (
                IngestBatch {
                    records,
                    source_offset: offset("p/file:0", &[i]),
                    ..IngestBatch::default()
                },
                Timestamp(i64::from(i)),
            )
        })
        .collect();
    let records: usize = batches.iter().map(|(b, _)| b.records.len()).sum();
    assert!(records > 150, "a large group");
    let (dir_one, dir_group) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, grouped) = (open(dir_one.path()), open(dir_group.path()));
    let expected: Vec<_> = batches
        .iter()
        .map(|(batch, at)| one.ingest(P, batch, &limits, *at).expect("ingest"))
        .collect();
    let group: Vec<(&IngestBatch, Timestamp)> = batches.iter().map(|(b, t)| (b, *t)).collect();
    let got: Vec<_> = grouped
        .ingest_group(P, &group, &limits)
        .into_iter()
        .map(|r| r.expect("group ingest"))
        .collect();
    assert_eq!(expected.len(), got.len());
    for (i, (want, got)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(want.changes, got.changes, "batch {i}: changes");
        assert_eq!(want.duplicates, got.duplicates, "batch {i}: duplicates");
    }
    assert!(expected.iter().map(|o| o.duplicates).sum::<usize>() > 10);
    assert_eq!(visible_state(&one), visible_state(&grouped));
}

#[test]
fn a_bad_batch_in_a_group_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = |entity: &str, n: u8| IngestBatch {
        records: vec![checked(entity, n)],
        ..IngestBatch::default()
    };
    let at = Timestamp(5);
    store
        .ingest(P, &batch("m3", 1), &limits(10, 10), at)
        .unwrap();

    // An invalid key is refused before the transaction.
    let (good, bad, later) = (batch("m1", 2), batch("", 3), batch("m2", 4));
    let results = store.ingest_group(P, &[(&good, at), (&bad, at), (&later, at)], &limits(10, 10));
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::EmptyEntityKey { .. })),
        "{results:?}"
    );
    assert!(store.get(P, "m1").unwrap().is_some() && store.get(P, "m2").unwrap().is_some());

    // A corrupt instance aborts the shared transaction: the group is
    // written again batch by batch and only the corrupt one fails.
    store
        .raw_db()
        .open_tree(format!("{P}/instances"))
        .unwrap()
        .insert("m3", &[1u8, 0xc1, 0xff][..])
        .unwrap();
    let (good, bad, later) = (batch("m4", 5), batch("m3", 6), batch("m5", 7));
    let results = store.ingest_group(P, &[(&good, at), (&bad, at), (&later, at)], &limits(10, 10));
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        results[1].as_ref().is_err_and(|e| e.is_corrupt()),
        "{results:?}"
    );
    assert_eq!(store.get(P, "m4").unwrap().map(|i| i.version), Some(1));
    assert_eq!(store.get(P, "m5").unwrap().map(|i| i.version), Some(1));
}

// ---------------------------------------------------------------------------
// Crash consistency.

const CRASH_TEST: &str = "store_ingest::sigkill_keeps_each_batch_whole";
const CHILD_ENV: &str = "MESHLET_INGEST_CRASH_CHILD";
const START_ENV: &str = "MESHLET_INGEST_CRASH_START";
const ROUND_ENV: &str = "MESHLET_INGEST_CRASH_ROUND";
const CRASH_SOURCE: &str = "crash/file:0";
const ROUNDS: u64 = 5;

fn crash_config(db: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(db);
    // Small chunks so kills also land in the middle of seals.
    config.history_chunk_events = 4;
    config
}

/// Fingerprint of record `j` of batch `n` written in round `round`: the
/// round is part of it, so a probe that registers a fingerprint of an
/// unwritten batch never collides with what the next round writes.
fn crash_fp(round: u64, n: u64, j: u8) -> Fingerprint {
    let mut fp = [0u8; 16];
    fp[0] = round as u8;
    fp[1] = j;
    fp[8..].copy_from_slice(&n.to_be_bytes());
    fp
}

/// Batch `n`: two records for `e{n}` (plus a within-batch duplicate of the
/// first), one update of `shared`, one quarantine item, offset `n`.
fn crash_batch(round: u64, n: u64) -> IngestBatch {
    let rec = |entity: String, j: u8, check: bool| IngestRecord {
        record: Record {
            entity,
            fields: [
                ("n".to_string(), Value::Int(n as i64)),
                (
                    "pad".to_string(),
                    Value::String("x".repeat((n % 40) as usize)),
                ),
            ]
            .into_iter()
            .collect(),
            event_time: Timestamp(n as i64),
            origin: Origin::new("file:0"),
        },
        fingerprint: Some(crash_fp(round, n, j)),
        check_duplicate: check,
    };
    let mut quarantined = item(&format!("line{n}"));
    quarantined.payload = n.to_be_bytes().to_vec();
    IngestBatch {
        records: vec![
            rec(format!("e{n}"), 0, true),
            rec(format!("e{n}"), 1, true),
            rec(format!("e{n}"), 0, true),
            rec("shared".to_string(), 2, false),
        ],
        quarantine: vec![quarantined],
        source_offset: offset(CRASH_SOURCE, &n.to_be_bytes()),
        resolve_quarantine: vec![],
        idempotency: None,
    }
}

#[test]
fn sigkill_keeps_each_batch_whole() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => crash_child(Path::new(&dir)),
        Err(_) => crash_parent(),
    }
}

/// Ingests batches until killed (or, as a safety net, for 20 s).
fn crash_child(db: &Path) {
    let env = |name: &str| -> u64 {
        std::env::var(name)
            .expect("child env")
            .parse()
            .expect("numeric")
    };
    let (start, round) = (env(START_ENV), env(ROUND_ENV));
    let store = Store::open(crash_config(db)).expect("child opens the store");
    let mut stdout = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = start;
    while Instant::now() < deadline {
        let outcome = store
            .ingest(
                P,
                &crash_batch(round, n),
                &IngestLimits::default(),
                Timestamp(n as i64),
            )
            .expect("child ingest");
        assert_eq!(outcome.duplicates, 1, "the within-batch duplicate");
        store.durable_blocking().expect("child durable");
        writeln!(stdout, "durable {n}").expect("stdout");
        stdout.flush().expect("stdout flush");
        n += 1;
    }
}

fn crash_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db: PathBuf = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary path");
    let mut rng = rand::rng();
    let started = Instant::now();
    // Batch n → the round that wrote it (for its fingerprints).
    let mut written: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next = 0u64;
    let mut acked: Option<u64> = None;

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .env(START_ENV, next.to_string())
            .env(ROUND_ENV, round.to_string())
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
        // Even rounds: kill 30–400 ms after the first ack (mid-write).
        // Odd rounds: 30–400 ms after spawn (may hit open or recovery).
        let delay = Duration::from_millis(rng.random_range(30..=400));
        if round % 2 == 0 {
            let first = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("child acknowledges a batch");
            acked = acked.max(Some(first));
        }
        let kill_at = Instant::now() + delay;
        while let Some(left) = kill_at.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(n) => acked = acked.max(Some(n)),
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
        acked = rx.try_iter().fold(acked, |a, n| a.max(Some(n)));

        let store = Store::open(crash_config(&db)).expect("store opens cleanly after SIGKILL");
        let last = verify_crash(&store, round, next, acked, &written);
        let committed_now = last.map_or(0, |l| l + 1);
        for n in next..committed_now {
            written.insert(n, round);
        }
        eprintln!(
            "round {round}: killed after {delay:?}; batches {next}..{committed_now} committed, \
             acknowledged up to {acked:?}"
        );
        next = committed_now;
        drop(store);
    }
    assert!(acked.is_some(), "the child acknowledged something");
    let elapsed = started.elapsed();
    eprintln!("crash test: {ROUNDS} rounds, {next} batches, {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(30),
        "crash test took {elapsed:?}"
    );
}

/// Checks that the reopened store holds batches `0..=last` whole and nothing
/// of any later batch, where `last` is the stored offset; returns `last`.
fn verify_crash(
    store: &Store,
    round: u64,
    start: u64,
    acked: Option<u64>,
    written: &BTreeMap<u64, u64>,
) -> Option<u64> {
    let last = store
        .source_offset(CRASH_SOURCE)
        .expect("offset reads")
        .map(|pos| u64::from_be_bytes(pos.try_into().expect("8-byte offset")));
    let committed = last.map_or(0, |l| l + 1);
    assert!(
        committed >= start,
        "offset went backwards: {last:?} < {start}"
    );
    assert!(
        acked.is_none_or(|a| committed > a),
        "acknowledged batch {acked:?} lost (offset {last:?})"
    );

    // Records: e{n} whole (version 2, the duplicate skipped) exactly for n ≤ last.
    for n in 0..committed {
        let instance = store
            .get(P, &format!("e{n}"))
            .expect("instance reads")
            .unwrap_or_else(|| panic!("batch {n} ≤ offset {last:?} has no records"));
        assert_eq!(
            instance.version, 2,
            "e{n}: both records, the duplicate skipped"
        );
    }
    for n in committed..committed + 3 {
        assert_eq!(
            store.get(P, &format!("e{n}")).expect("instance reads"),
            None,
            "batch {n} > offset {last:?} left records"
        );
    }
    let shared = store.get(P, "shared").expect("shared reads");
    assert_eq!(shared.as_ref().map_or(0, |s| s.version), committed);
    if let Some(shared) = shared {
        assert_eq!(
            shared.fields.get("n"),
            Some(&Value::Int(committed as i64 - 1))
        );
        let history = store
            .history(P, "shared", &HistoryQuery::default())
            .expect("history reads");
        assert_eq!(
            history.len() as u64,
            committed,
            "one history event per batch"
        );
    }

    // Quarantine: one entry per committed batch, the newest from `last`.
    assert_eq!(store.quarantine_count(P).expect("count"), committed);
    let entries = store.quarantine_list(P, None, usize::MAX).expect("list");
    assert_eq!(entries.len() as u64, committed);
    assert_eq!(
        entries.last().map(|e| e.item.payload.clone()),
        last.map(|l| l.to_be_bytes().to_vec())
    );

    // Fingerprints: registered for every committed batch, not for the next
    // one. The probe registers what it does not find (harmless: the next
    // round uses its own fingerprints).
    let mut probe: Vec<(u64, Fingerprint)> = written
        .iter()
        .map(|(&n, &r)| (n, crash_fp(r, n, 1)))
        .collect();
    probe.extend((start..=committed).map(|n| (n, crash_fp(round, n, 1))));
    let batch = IngestBatch {
        records: probe
            .iter()
            .map(|&(n, fp)| IngestRecord {
                record: record("probe", n as i64),
                fingerprint: Some(fp),
                check_duplicate: true,
            })
            .collect(),
        ..IngestBatch::default()
    };
    let outcome = store
        .ingest(P, &batch, &IngestLimits::default(), Timestamp(0))
        .expect("probe ingest");
    for ((n, _), change) in probe.iter().zip(&outcome.changes) {
        assert_eq!(
            change.is_none(),
            *n < committed,
            "batch {n}: fingerprint registration disagrees with offset {last:?}"
        );
    }
    last
}

/// An idempotency key is part of the dedupe window: its batch's records
/// and its receipt are written together, a resend (also after reopen) is
/// answered from the receipt and writes nothing, a different request under
/// the key is a conflict, and once newer registrations push the key out
/// of the window its receipt goes with it (the tree keeps no stray one).
#[test]
fn an_idempotency_key_is_remembered_with_its_receipt_until_the_window_forgets_it() {
    use meshlet::store::{Idempotency, Receipt, Resend};
    let dir = tempfile::tempdir().unwrap();
    let small = limits(10, 3);
    let key = Idempotency {
        key: [0xee; 16],
        request: 42,
    };
    let push = |request: u64| IngestBatch {
        // Records without fingerprints: only the key can recognise them.
        records: vec![
            IngestRecord {
                record: record("a", 1),
                fingerprint: None,
                check_duplicate: false,
            },
            checked("a", 2),
        ],
        idempotency: Some(Idempotency { request, ..key }),
        ..IngestBatch::default()
    };
    let receipts = |store: &Store| {
        store
            .raw_db()
            .open_tree(format!("{P}/dedupe"))
            .expect("dedupe tree")
            .scan_prefix(b"R")
            .count()
    };
    let history = |store: &Store| {
        store
            .history(P, "a", &HistoryQuery::default())
            .expect("history")
            .len()
    };
    {
        let store = open(dir.path());
        let first = store
            .ingest(P, &push(42), &small, Timestamp(1_000))
            .expect("ingest");
        assert_eq!(first.resend, None);
        assert_eq!(first.changes.iter().flatten().count(), 2);
        let again = store
            .ingest(P, &push(42), &small, Timestamp(1_001))
            .expect("ingest");
        let receipt = Receipt {
            request: 42,
            accepted: 2,
            duplicates: 0,
        };
        assert_eq!(again.resend, Some(Resend::Replayed(receipt)));
        assert!(again.changes.iter().all(Option::is_none));
        assert_eq!(history(&store), 2);
    }
    let store = open(dir.path());
    let after_reopen = store
        .ingest(P, &push(42), &small, Timestamp(1_002))
        .expect("ingest");
    assert!(matches!(after_reopen.resend, Some(Resend::Replayed(_))));
    let other = store
        .ingest(P, &push(7), &small, Timestamp(1_003))
        .expect("ingest");
    assert_eq!(other.resend, Some(Resend::Conflict));
    assert_eq!(history(&store), 2, "neither resend wrote anything");
    assert_eq!(receipts(&store), 1);

    // Three newer registrations in a window of three: the key is out.
    assert_eq!(recognised(&store, &[10, 11, 12], &small), [false; 3]);
    assert_eq!(receipts(&store), 0, "the receipt left with its key");
    let late = store
        .ingest(P, &push(42), &small, Timestamp(1_004))
        .expect("ingest");
    assert_eq!(late.resend, None, "a forgotten key is a new request");
    assert_eq!(history(&store), 4);
    assert_eq!(receipts(&store), 1);
}
