//! Per-product history dictionaries on a real store in a temp dir: they
//! shrink stored history for the same events, and an erasure after a
//! training leaves no value of the erased entity anywhere in the database
//! — dictionaries and dictionary-compressed chunks included.

use std::io::Read;
use std::path::Path;

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{HistoryQuery, Store, StoreConfig};

const P: &str = "machine_health";

/// Only the erased machine's values carry this.
const GONE: &str = "GONE7f3a";
/// Values every machine shares carry this.
const KEPT: &str = "KEPT2b9c";

fn record(machine: usize, seq: i64) -> Record {
    let id = format!("PR-{machine:04}");
    let mut fields = Fields::new();
    fields.insert("machine_id".into(), Value::String(id.clone()));
    fields.insert("site".into(), Value::String(format!("berlin-{KEPT}")));
    fields.insert(
        "temperature_c".into(),
        Value::Float(60.0 + ((seq * 7 + machine as i64 * 3) % 150) as f64 / 10.0),
    );
    fields.insert(
        "vibration_rms".into(),
        Value::Float(1.0 + ((seq * 3 + machine as i64) % 90) as f64 / 100.0),
    );
    fields.insert("spindle_rpm".into(), Value::Int(1400 + (seq * 13) % 200));
    fields.insert(
        "status".into(),
        Value::String(if seq % 50 == 7 { "warn" } else { "ok" }.into()),
    );
    let operator = if machine == 0 {
        format!("ann.{GONE}@example.com")
    } else {
        format!("op{}@example.com", (seq / 40 + machine as i64) % 9)
    };
    fields.insert("operator_email".into(), Value::String(operator));
    fields.insert(
        "reported_at".into(),
        Value::Timestamp(Timestamp(1_764_000_000_000_000 + seq * 1_000_000)),
    );
    let topic_id = if machine == 0 {
        format!("{id}-{GONE}")
    } else {
        id.clone()
    };
    Record {
        entity: id,
        fields,
        event_time: Timestamp(1_764_000_000_000_000 + seq * 1_000_000 + 120_000),
        origin: Origin::new(format!("mqtt:plant/berlin/machine/{topic_id}/telemetry"))
            .with_actor(format!("ctl-{machine}")),
    }
}

fn config(dir: &Path, chunk_events: usize, dictionary: bool) -> StoreConfig {
    let mut config = StoreConfig::new(dir.join("store"));
    config.history_chunk_events = chunk_events;
    config.dictionary.enabled = dictionary;
    // The tests train when they want to, not the trainer thread.
    config.dictionary.min_chunks = u64::MAX;
    config
}

fn ingest(store: &Store, machines: usize, seqs: std::ops::Range<i64>) {
    for seq in seqs {
        let batch: Vec<_> = (0..machines).map(|m| record(m, seq)).collect();
        // Arrival a little after the event, with some jitter, and the same
        // in every store, so histories compare equal.
        let arrival =
            Timestamp(1_764_000_000_000_000 + seq * 1_000_000 + 180_000 + (seq * 7919) % 5000);
        store.upsert_at(P, &batch, arrival).expect("upsert");
    }
}

/// Bytes of the history chunks whose first version is above `after`.
fn chunk_bytes_after(store: &Store, after: u64) -> u64 {
    let history = store
        .raw_db()
        .open_tree(format!("{P}/history"))
        .expect("history tree");
    history
        .iter()
        .map(|item| item.expect("item"))
        .filter(|(key, _)| {
            let tag = key[key.len() - 9];
            let version = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"));
            tag == 0 && version > after
        })
        .map(|(_, value)| value.len() as u64)
        .sum()
}

#[test]
fn dictionary_chunks_are_much_smaller_than_plain_chunks_of_the_same_events() {
    let with = tempfile::tempdir().expect("tempdir");
    let without = tempfile::tempdir().expect("tempdir");
    // Small chunks, where a dictionary matters most.
    let a = Store::open(config(with.path(), 16, true)).expect("open");
    let b = Store::open(config(without.path(), 16, false)).expect("open");
    for store in [&a, &b] {
        ingest(store, 12, 0..64);
    }
    let info = a
        .train_dictionary(P)
        .expect("trains")
        .expect("a dictionary");
    println!(
        "dictionary: {} bytes from {} samples ({} bytes) of {} entities in {} ms",
        info.bytes, info.samples, info.sample_bytes, info.entities, info.train_millis
    );
    for store in [&a, &b] {
        ingest(store, 12, 64..192);
    }
    let dict = chunk_bytes_after(&a, 64);
    let plain = chunk_bytes_after(&b, 64);
    println!(
        "chunks of versions 65..=192: {dict} bytes with the dictionary, {plain} without ({:.2})",
        dict as f64 / plain as f64
    );
    assert!(
        dict * 10 < plain * 9,
        "a dictionary saves at least 10% on 16-event chunks: {dict} vs {plain} bytes"
    );
    // The same events come back.
    for m in [0, 5, 11] {
        let entity = format!("PR-{m:04}");
        let left = a
            .history(P, &entity, &HistoryQuery::default())
            .expect("reads");
        let right = b
            .history(P, &entity, &HistoryQuery::default())
            .expect("reads");
        assert_eq!(left, right);
        assert_eq!(left.len(), 192);
    }
}

/// Every zstd frame inside `bytes`, decompressed without and with each of
/// `dictionaries`.
fn zstd_frames(bytes: &[u8], dictionaries: &[Vec<u8>]) -> Vec<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut out = Vec::new();
    for at in (0..bytes.len().saturating_sub(3)).filter(|&at| bytes[at..at + 4] == MAGIC) {
        if let Ok(plain) = zstd::stream::decode_all(&bytes[at..]) {
            out.push(plain);
        }
        for dictionary in dictionaries {
            let mut plain = Vec::new();
            let decoded = zstd::stream::read::Decoder::with_dictionary(
                std::io::BufReader::new(&bytes[at..]),
                dictionary,
            )
            .and_then(|mut d| d.read_to_end(&mut plain));
            if decoded.is_ok() {
                out.push(plain);
            }
        }
    }
    out
}

/// Where `needle` occurs in the database: keys, values, and every zstd
/// frame (dictionary frames decoded with the product's dictionaries).
fn occurrences(store: &Store, needle: &str) -> Vec<String> {
    let dictionaries = store.raw_dictionaries(P).expect("dictionaries");
    let db = store.raw_db();
    let contains = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    let mut found = Vec::new();
    for name in db.tree_names() {
        let tree_name = String::from_utf8_lossy(&name).into_owned();
        let tree = db.open_tree(&name).expect("open tree");
        for item in tree.iter() {
            let (key, value) = item.expect("tree item");
            if contains(&key) || contains(&value) {
                found.push(format!("{tree_name}: plain"));
            }
            for frame in zstd_frames(&value, &dictionaries) {
                if contains(&frame) {
                    found.push(format!("{tree_name}: in a zstd frame"));
                }
            }
        }
    }
    found
}

#[test]
fn erasing_after_a_training_leaves_no_value_of_the_entity_in_dictionaries_or_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), 16, true)).expect("open");
    ingest(&store, 6, 0..64);
    // Trained while the entity's values are in the samples.
    store
        .train_dictionary(P)
        .expect("trains")
        .expect("a dictionary");
    ingest(&store, 6, 64..96);
    let before = occurrences(&store, GONE);
    assert!(
        before.iter().any(|at| at.contains("zstd frame")),
        "the scan reads dictionary-compressed chunks: {before:?}"
    );
    let dictionaries = store.raw_dictionaries(P).expect("dictionaries");
    assert!(
        dictionaries[0]
            .windows(KEPT.len())
            .any(|w| w == KEPT.as_bytes()),
        "values all machines share do go into the dictionary"
    );

    let erased = store
        .erase(P, "PR-0000", &Origin::new("test").with_actor("dpo"))
        .expect("erases");
    assert!(erased);
    let left = occurrences(&store, GONE);
    assert!(
        left.is_empty(),
        "values of the erased entity remain: {left:?}"
    );
    let kept = occurrences(&store, KEPT);
    assert!(
        kept.iter().any(|at| at.contains("dictionaries"))
            && kept
                .iter()
                .any(|at| at.contains("history: in a zstd frame")),
        "other machines' values are still found, in the dictionary and in chunks: {kept:?}"
    );

    // The erasure queued a retraining for future chunks on the trainer
    // thread (the deadline only stops a hung test; no timing is asserted).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let again = loop {
        let infos = store.dictionaries(P).expect("dictionaries");
        if let Some(info) = infos.get(1) {
            break info.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retraining after the erasure"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!((again.id, again.reason.as_str()), (2, "erasure"));
    assert_eq!(again.entities, 5, "the erased entity is not sampled");
    assert!(occurrences(&store, GONE).is_empty());
    assert_eq!(
        store
            .history(P, "PR-0003", &HistoryQuery::default())
            .expect("older chunks still read")
            .len(),
        96
    );
}
