//! Crypto-shredding (issue 30 point 2), end to end with the real binary:
//! with encryption at rest, each entity's values are sealed with a key of
//! its own (`src/store/keys_entity.rs`) and erasure destroys that key, so
//! copies of the values left behind — sled's stale pages, a backup of the
//! data directory taken before the erasure — no longer open with the store
//! key. Also: `meshlet key rotate` rewrites nothing but the wrapped data
//! key, and an encrypted store from before entity keys (a fixture written
//! by the older build) reads, takes new writes, erases and rotates.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::graphql::{workdir, Gql};
use common::*;
use meshlet::store::{EncryptionKey, HistoryQuery, Store, StoreConfig};
use serde_json::json;

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
  status:    { type: string }
  age:       { type: int, min: 0, max: 150 }
sources:
  - http: { format: ndjson }
  - mqtt: { topic: "people/{person_id}", format: json }
quality: { on_invalid: quarantine }
sync:
  - to: central
    fields: [person_id, name, note, status]
    when: { on_change: true }
"#;

/// An upstream that never answers, so the outbox keeps what sync owes.
const CONFIG: &str = "[store]\nhistory_chunk_events = 2\nhistory_block_events = 2\nencryption_key_file = \"store.key\"\n\n[upstreams.central]\nurl = \"http://127.0.0.1:9\"\n";

/// In the erased entity's values, and in the kept one's.
const VICTIM: &str = "VICTIM5e0a";
const KEEPER: &str = "KEEPER83b2";

/// Format byte of an entity-sealed value (`keys_entity.rs`).
const FORMAT_ENTITY_SEALED: u8 = 9;

fn open_with(store_dir: &Path, key_file: &Path) -> Result<Store, String> {
    let config = StoreConfig::new(store_dir.to_path_buf());
    let key = EncryptionKey::from_file(key_file).expect("key file");
    Store::open_with_key(config, Some(key)).map_err(|e| e.to_string())
}

/// The header an entity-sealed value of `entity` starts with.
fn envelope(product: &str, entity: &str) -> Vec<u8> {
    let mut out = vec![FORMAT_ENTITY_SEALED];
    for s in [product, entity] {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// The trees holding values sealed with the key of `entity`.
fn trees_sealed_for(store: &Store, product: &str, entity: &str) -> BTreeSet<String> {
    let header = envelope(product, entity);
    let db = store.raw_db();
    let mut found = BTreeSet::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("tree");
        for item in tree.iter() {
            let (_, value) = item.expect("item");
            if value.starts_with(&header) {
                found.insert(String::from_utf8_lossy(&name).into_owned());
            }
        }
    }
    found
}

fn ingest(node: &NodeProcess, line: String) {
    let (status, body) = http_post(
        &node.url("/ingest/person"),
        "application/x-ndjson",
        line.into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

fn stop(mut node: NodeProcess) {
    node.signal(libc::SIGTERM);
    assert!(node
        .wait_exit(Duration::from_secs(20))
        .expect("node stops")
        .success());
}

fn start_node(dir: &Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts")
}

/// Writes the victim (five versions: sealed chunks and the open tail, a
/// quarantined payload, outbox entries) and the keeper, then stops.
fn write_victim_and_keeper(dir: &Path) {
    let node = start_node(dir);
    for v in 0..5 {
        ingest(
            &node,
            format!(
                r#"{{"person_id":"p-1","name":"Ann {VICTIM}","note":"v{v} {VICTIM}","status":"s{v}"}}"#
            ),
        );
    }
    ingest(
        &node,
        format!(r#"{{"person_id":"p-2","name":"Bob {KEEPER}","note":"{KEEPER}"}}"#),
    );
    let mqtt = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(
        mqtt,
        "people/p-1",
        format!(r#"{{"note":"{VICTIM}","age":999}}"#).as_bytes(),
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(Duration::from_secs(10), || http_get(
            &node.url("/quarantine/person")
        )
        .1
        .contains(VICTIM)),
        "the bad payload was quarantined"
    );
    stop(node);
}

#[test]
fn an_erased_entity_is_unreadable_in_every_copy_left_behind() {
    let dir = workdir(&[("person", PERSON)], CONFIG);
    let out = run(dir.path(), &["key", "generate", "--out", "store.key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = dir.path().join("store.key");
    write_victim_and_keeper(dir.path());
    let store_dir = dir.path().join("data/store");

    // Before: the victim's values are sealed with its own key in the
    // instance, history, quarantine and outbox trees.
    {
        let store = open_with(&store_dir, &key).expect("opens");
        let trees = trees_sealed_for(&store, "person", "p-1");
        for tree in [
            "person/instances",
            "person/history",
            "person/quarantine",
            "outbox",
        ] {
            assert!(trees.contains(tree), "{tree} not in {trees:?}");
        }
        let quarantined = store.quarantine_list("person", None, 10).expect("list");
        assert!(quarantined
            .iter()
            .any(|q| String::from_utf8_lossy(&q.item.payload).contains(VICTIM)));
    }
    let backup = tempfile::tempdir().expect("tempdir");
    copy_tree(&store_dir, backup.path());

    let out = run(
        dir.path(),
        &["--config", "meshlet.toml", "erase", "person", "p-1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // No file of the data directory (stale pages and segments not yet
    // reused included) holds a value in the clear or in a zstd frame.
    for marker in [VICTIM, KEEPER] {
        let found = files_containing(&dir.path().join("data"), marker, &[]);
        assert!(
            found.is_empty(),
            "{marker} readable in the files: {found:?}"
        );
    }
    {
        let store = open_with(&store_dir, &key).expect("opens");
        assert!(store.get("person", "p-1").expect("get").is_none());
        assert!(store.tombstone("person", "p-1").expect("tomb").is_some());
        let keeper = store.get("person", "p-2").expect("get").expect("keeper");
        assert!(keeper.fields["name"].to_string().contains(KEEPER));
        assert!(trees_sealed_for(&store, "person", "p-1").is_empty());
        let owed = store
            .outbox_read("central", 100, meshlet::record::Timestamp::now())
            .expect("outbox");
        assert!(owed
            .iter()
            .filter(|e| e.entry.item.entity == "p-1")
            .all(|e| e.entry.item.tombstone));
    }

    // The backup taken before the erasure, restored next to today's key
    // files: the victim's values are all still in it, and none opens.
    let restored = tempfile::tempdir().expect("tempdir");
    copy_tree(backup.path(), restored.path());
    for file in ["entity.keys", "encryption.datakey", "encryption.canary"] {
        std::fs::copy(store_dir.join(file), restored.path().join(file)).expect("copy key file");
    }
    {
        let store = open_with(restored.path(), &key).expect("the restored backup opens");
        let trees = trees_sealed_for(&store, "person", "p-1");
        assert!(
            trees.contains("person/instances") && trees.contains("person/history"),
            "the stale values are there: {trees:?}"
        );
        let err = store
            .get("person", "p-1")
            .expect_err("the instance does not open");
        assert!(err.to_string().contains("destroyed"), "{err}");
        let err = store
            .history("person", "p-1", &HistoryQuery::default())
            .expect_err("the history does not open");
        assert!(err.to_string().contains("destroyed"), "{err}");
        let keeper = store.get("person", "p-2").expect("get").expect("keeper");
        assert!(keeper.fields["name"].to_string().contains(KEEPER));
    }
    // What it takes to read them: the key file from before the erasure.
    // (So `entity.keys` must stay out of long-lived backups.)
    let store = open_with(backup.path(), &key).expect("the backup opens with its own keys");
    let victim = store.get("person", "p-1").expect("get").expect("victim");
    assert!(victim.fields["name"].to_string().contains(VICTIM));
}

#[test]
fn key_rotation_rewrites_only_the_wrapped_data_key() {
    let dir = workdir(&[("person", PERSON)], CONFIG);
    let out = run(dir.path(), &["key", "generate", "--out", "store.key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    write_victim_and_keeper(dir.path());
    let data = dir.path().join("data");
    let before = snapshot(&data);

    let out = run(dir.path(), &["key", "generate", "--out", "new.key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        dir.path(),
        &[
            "--config",
            "meshlet.toml",
            "key",
            "rotate",
            "--new-key-file",
            "new.key",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let after = snapshot(&data);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(name, bytes)| before.get(*name) != Some(*bytes))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        changed,
        ["store/encryption.datakey"],
        "only the data key is rewritten"
    );
    assert_eq!(before.len(), after.len());

    // The old key no longer opens the store; the new one reads everything.
    let logs = match NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
    {
        Ok(_) => panic!("the node started with the retired key"),
        Err(logs) => logs,
    };
    assert!(logs.contains("does not open the store"), "{logs}");
    let config = std::fs::read_to_string(dir.path().join("meshlet.toml")).expect("config");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        config.replace("\"store.key\"", "\"new.key\""),
    )
    .expect("config");
    let node = start_node(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let gql = Gql::new(&node);
    let data = rt.block_on(gql.data(
            r#"{ person(person_id: "p-1") { name note history { nodes { version values { note } } } } }"#,
            json!({}),
        ));
    assert_eq!(data["person"]["name"], format!("Ann {VICTIM}"));
    assert_eq!(
        data["person"]["history"]["nodes"].as_array().unwrap().len(),
        5
    );
    assert_eq!(
        data["person"]["history"]["nodes"][0]["values"]["note"],
        format!("v0 {VICTIM}")
    );
    let data = rt.block_on(gql.data(r#"{ person(person_id: "p-2") { name } }"#, json!({})));
    assert_eq!(data["person"]["name"], format!("Bob {KEEPER}"));
    stop(node);
}

fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/store-encrypted-v4")
}

#[test]
fn an_encrypted_store_from_before_entity_keys_reads_and_rotates() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture(), dir.path());
    let store_dir = dir.path().join("data/store");
    assert!(
        !store_dir.join("encryption.datakey").exists(),
        "the fixture is the old layout"
    );
    assert!(
        !store_dir.join("entity.keys").exists(),
        "the fixture is the old layout"
    );

    let node = start_node(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let gql = Gql::new(&node);
    let query = r#"{ person(person_id: "p-1") { name note status history { nodes { version values { note } } } } }"#;
    let data = rt.block_on(gql.data(query, json!({})));
    assert_eq!(data["person"]["name"], "Ann LEGACY7c1");
    assert_eq!(data["person"]["status"], "s5");
    let history = data["person"]["history"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(history.len(), 5);
    assert_eq!(history[0]["values"]["note"], "v1 LEGACY7c1");
    let data = rt.block_on(gql.data(r#"{ person(person_id: "p-2") { name } }"#, json!({})));
    assert_eq!(data["person"]["name"], "Bob LEGACY7c2");
    let (status, body) = rt.block_on(gql.get("/quarantine/person"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("LEGACY7c2"), "{body}");
    // New writes go under entity keys, old entities included.
    ingest(
        &node,
        format!(r#"{{"person_id":"p-4","name":"Dee {KEEPER}"}}"#),
    );
    ingest(&node, r#"{"person_id":"p-2","status":"moved"}"#.to_string());
    stop(node);
    assert!(store_dir.join("encryption.datakey").exists());
    assert!(store_dir.join("entity.keys").exists());

    let out = run(dir.path(), &["key", "generate", "--out", "new.key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        dir.path(),
        &[
            "--config",
            "meshlet.toml",
            "key",
            "rotate",
            "--new-key-file",
            "new.key",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(dir.path().join("meshlet.toml")).expect("config");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        config.replace("\"store.key\"", "\"new.key\""),
    )
    .expect("config");

    let node = start_node(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let gql = Gql::new(&node);
    let data = rt.block_on(gql.data(query, json!({})));
    assert_eq!(
        data["person"]["history"]["nodes"].as_array().unwrap().len(),
        5
    );
    assert_eq!(data["person"]["note"], "v5 LEGACY7c1");
    let data = rt.block_on(gql.data(r#"{ person(person_id: "p-2") { name status } }"#, json!({})));
    assert_eq!(data["person"]["name"], "Bob LEGACY7c2");
    assert_eq!(data["person"]["status"], "moved");
    let data = rt.block_on(gql.data(r#"{ person(person_id: "p-4") { name } }"#, json!({})));
    assert_eq!(data["person"]["name"], format!("Dee {KEEPER}"));
    let data = rt.block_on(gql.data(r#"mutation { erasePerson(person_id: "p-1") }"#, json!({})));
    assert_eq!(data["erasePerson"], true);
    stop(node);

    let store = open_with(&store_dir, &dir.path().join("new.key")).expect("opens with the new key");
    assert!(store.get("person", "p-1").expect("get").is_none());
    assert!(
        store.tombstone("person", "p-3").expect("tomb").is_some(),
        "the old erasure stays"
    );
    assert!(trees_sealed_for(&store, "person", "p-4").contains("person/instances"));
    assert!(
        trees_sealed_for(&store, "person", "p-2").contains("person/instances"),
        "an old entity's instance moved to its key when rewritten"
    );
    drop(store);
    let err = open_with(&store_dir, &dir.path().join("store.key"))
        .err()
        .expect("old key refused");
    assert!(err.contains("does not open the store"), "{err}");
}
