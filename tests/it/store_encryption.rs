//! Encryption at rest, end to end: the real binary with
//! `store.encryption_key_file`, data in over HTTP and MQTT, then the store
//! read directly — with the key everything reads back, and a raw scan of
//! every tree (zstd frames decompressed) finds none of the values. A wrong
//! key, a missing key and a key for an unencrypted store stop `meshlet
//! serve` with a clear error and leave the data directory's bytes as they
//! were.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::graphql::workdir;
use common::*;
use meshlet::store::{EncryptionKey, HistoryQuery, Store, StoreConfig};

const PERSON: &str = r#"
product: person
version: 1
domain: test
owner: test@example.com
key: person_id
fields:
  person_id: { type: string, required: true }
  name:      { type: string }
  note:      { type: string }
  age:       { type: int, min: 0, max: 150 }
sources:
  - http: { format: ndjson }
  - mqtt: { topic: "people/{person_id}", format: json }
quality: { on_invalid: quarantine }
"#;

/// In every value written; must appear nowhere on disk in the clear.
const MARKER: &str = "SECRET9d41";

fn open_with_key(data_dir: &Path, key_file: &Path) -> Store {
    let config = StoreConfig::new(data_dir.join("store"));
    let key = EncryptionKey::from_file(key_file).expect("key file");
    Store::open_with_key(config, Some(key)).expect("the encrypted store opens with its key")
}

/// Where `needle` occurs in the store: keys, values, and the decompressed
/// contents of every zstd frame found inside a value.
fn occurrences(store: &Store, needle: &str) -> Vec<String> {
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
            for at in 0..value.len().saturating_sub(3) {
                if value[at..at + 4] == [0x28, 0xb5, 0x2f, 0xfd] {
                    if let Ok(frame) = zstd::stream::decode_all(&value[at..]) {
                        if contains(&frame) {
                            found.push(format!("{tree_name}: zstd"));
                        }
                    }
                }
            }
        }
    }
    found
}

fn key_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let out = run(dir, &["key", "generate", "--out", name]);
    assert!(out.status.success(), "{}", stderr(&out));
    dir.join(name)
}

/// Starts a node that must refuse; returns its logs.
fn refused(dir: &Path, env: Option<(&str, String)>) -> String {
    let mut builder = NodeBuilder::new(dir).arg("--config").arg("meshlet.toml");
    if let Some((name, value)) = env {
        builder = builder.env(name, value);
    }
    match builder.start() {
        Ok(_) => panic!("the node started"),
        Err(logs) => logs,
    }
}

#[test]
fn an_encrypted_store_reads_back_with_its_key_and_shows_nothing_without_it() {
    let dir = workdir(
        &[("person", PERSON)],
        "[store]\nhistory_chunk_events = 2\nencryption_key_file = \"store.key\"\n",
    );
    let key = key_file(dir.path(), "store.key");
    let mut node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts with a new key");
    for version in 0..5 {
        let (status, body) = http_post(
            &node.url("/ingest/person"),
            "application/x-ndjson",
            format!(r#"{{"person_id":"p-1","name":"Ann {MARKER}","note":"v{version} {MARKER}"}}"#)
                .into_bytes(),
        );
        assert_eq!(status, 200, "{body}");
    }
    let mqtt = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(
        mqtt,
        "people/p-2",
        format!(r#"{{"note":"{MARKER}","age":999}}"#).as_bytes(),
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    node.signal(libc::SIGTERM);
    assert!(node
        .wait_exit(Duration::from_secs(20))
        .expect("node stops")
        .success());

    let data = dir.path().join("data");
    let store = open_with_key(&data, &key);
    // With the key, everything reads back.
    let instance = store.get("person", "p-1").expect("get").expect("instance");
    assert_eq!(instance.version, 5);
    let history = store
        .history("person", "p-1", &HistoryQuery::default())
        .expect("history");
    assert_eq!(history.len(), 5);
    assert!(history[0].fields["note"].to_string().contains(MARKER));
    let audit = store
        .audit("person", "p-1", &Default::default())
        .expect("audit");
    assert!(!audit.is_empty());
    let quarantined = store
        .quarantine_list("person", None, 10)
        .expect("quarantine");
    assert_eq!(quarantined.len(), 1);
    assert!(String::from_utf8_lossy(&quarantined[0].item.payload).contains(MARKER));
    let secret = meshlet::policy::masking::MaskSecret::of_store(&store).expect("mask secret");
    assert_eq!(
        secret.pseudonym("x"),
        meshlet::policy::masking::MaskSecret::of_store(&store)
            .expect("again")
            .pseudonym("x"),
        "the sealed mask secret reads back the same"
    );
    // On disk, nothing of it in the clear, compressed or not.
    let found = occurrences(&store, MARKER);
    assert!(found.is_empty(), "values readable on disk: {found:?}");
    // The scan does find what is really there (the entity keys).
    assert!(!occurrences(&store, "p-1").is_empty());
    // A sealed value copied under another key does not open there.
    let instances = store.raw_db().open_tree("person/instances").expect("tree");
    let sealed = instances.get("p-1").expect("read").expect("value");
    instances.insert("p-copy", sealed).expect("write");
    let err = store
        .get("person", "p-copy")
        .expect_err("a moved value is refused");
    assert!(err.to_string().contains("does not open"), "{err}");
    instances.remove("p-copy").expect("remove");
    // Erasure works the same on an encrypted store.
    assert!(store
        .erase("person", "p-1", &meshlet::record::Origin::new("test"))
        .expect("erase"));
    assert!(store
        .tombstone("person", "p-1")
        .expect("tombstone")
        .is_some());
    // The files themselves, after the erasure is flushed: not the live
    // trees but every byte under the data directory, stale page versions
    // and freed segments included, holds none of the values, in the clear
    // or in a zstd frame.
    store.raw_db().flush().expect("flush");
    drop(store);
    let found = files_containing(&data, MARKER, &[]);
    assert!(found.is_empty(), "values readable in the files: {found:?}");
    // The scan does find what is really there (a tree name; entity keys
    // are prefix-encoded in sled's nodes, so "p-2" is not whole on disk).
    assert!(!files_containing(&data, "person/instances", &[]).is_empty());
}

#[test]
fn a_wrong_or_missing_key_stops_the_node_and_touches_nothing() {
    let dir = workdir(
        &[("person", PERSON)],
        "[store]\nencryption_key_file = \"store.key\"\n",
    );
    key_file(dir.path(), "store.key");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let (status, body) = http_post(
        &node.url("/ingest/person"),
        "application/x-ndjson",
        br#"{"person_id":"p-1","name":"x"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = node.stop();
    assert!(status.success());
    let data = dir.path().join("data");
    let before = snapshot(&data);

    let other = key_file(dir.path(), "other.key");
    let logs = refused(
        dir.path(),
        Some((
            "MESHLET_STORE__ENCRYPTION_KEY_FILE",
            other.display().to_string(),
        )),
    );
    assert!(logs.contains("does not open the store"), "{logs}");
    assert_eq!(snapshot(&data), before, "a wrong key changes no byte");

    let config = dir.path().join("meshlet.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("encryption_key_file = \"store.key\"\n", ""),
    )
    .expect("config");
    let logs = refused(dir.path(), None);
    assert!(
        logs.contains("is encrypted but no key is configured"),
        "{logs}"
    );
    assert_eq!(snapshot(&data), before, "a missing key changes no byte");

    std::fs::write(dir.path().join("bad.key"), "not a key").expect("bad key");
    let logs = refused(
        dir.path(),
        Some(("MESHLET_STORE__ENCRYPTION_KEY_FILE", "bad.key".to_string())),
    );
    assert!(
        logs.contains("bad.key") && logs.contains("256-bit"),
        "{logs}"
    );
    assert_eq!(snapshot(&data), before);
}

#[test]
fn a_key_for_an_existing_unencrypted_store_is_refused() {
    let dir = workdir(&[("person", PERSON)], "");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let (status, _) = node.stop();
    assert!(status.success());
    let data = dir.path().join("data");
    let before = snapshot(&data);
    let key = key_file(dir.path(), "store.key");
    let logs = refused(
        dir.path(),
        Some((
            "MESHLET_STORE__ENCRYPTION_KEY_FILE",
            key.display().to_string(),
        )),
    );
    assert!(logs.contains("holds unencrypted data"), "{logs}");
    assert_eq!(snapshot(&data), before);
}
