//! Erasure completeness, end to end: values reach the real node over HTTP
//! and MQTT (valid ones into state and history, invalid ones into the
//! quarantine), `meshlet erase` removes the entity, and a raw scan of every
//! tree of the store — zstd frames decompressed — finds none of its values
//! while another entity's values are still found.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::graphql::workdir;
use common::*;

const PERSON: &str = r#"
product: person
version: 1
domain: test
owner: test@example.com
key: person_id
fields:
  person_id: { type: string, required: true }
  name:      { type: string }
  email:     { type: string, classification: pii }
  note:      { type: string }
  age:       { type: int, min: 0, max: 150 }
sources:
  - http: { format: ndjson }
  - mqtt: { topic: "people/{person_id}", format: json }
quality: { on_invalid: quarantine }
"#;

/// Every value of the erased entity carries this; nothing else does.
const GONE: &str = "GONE7f3a";
/// The other entity's values carry this; they must survive.
const KEPT: &str = "KEPT2b9c";

fn push(node: &NodeProcess, lines: &[String]) {
    let (status, body) = http_post(
        &node.url("/ingest/person"),
        "application/x-ndjson",
        lines.join("\n").into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

/// Every place `needle` occurs in the store: tree names, keys, values, and
/// the decompressed contents of every zstd frame inside a value.
fn occurrences(data_dir: &Path, needle: &str) -> Vec<String> {
    let store = open_store(data_dir);
    // Chunks compressed with a product dictionary only open with it.
    let dictionaries = store.raw_dictionaries("person").expect("dictionaries");
    let db = store.raw_db();
    let mut found = Vec::new();
    let contains = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
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

/// Decompresses every zstd frame that starts anywhere inside `bytes`,
/// without and with each of `dictionaries`.
fn zstd_frames(bytes: &[u8], dictionaries: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use std::io::Read;
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut out = Vec::new();
    for at in (0..bytes.len().saturating_sub(3)).filter(|&at| bytes[at..at + 4] == MAGIC) {
        out.extend(zstd::stream::decode_all(&bytes[at..]).ok());
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

#[test]
fn erase_removes_every_value_of_the_entity_from_every_tree() {
    let dir = workdir(
        &[("person", PERSON)],
        // Small chunks, so history is sealed into compressed chunks too.
        "[store]\nhistory_chunk_events = 2\n",
    );
    let mut node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");

    // State and history (five versions, so two sealed chunks and a tail).
    for version in 0..5 {
        push(
            &node,
            &[
                format!(
                    r#"{{"person_id":"p-1","name":"Ann {GONE} {version}","email":"ann.{GONE}@example.com","note":"v{version} {GONE}","age":40}}"#
                ),
                format!(r#"{{"person_id":"p-2","name":"Bob {KEPT} {version}","age":30}}"#),
            ],
        );
    }
    // Quarantine (HTTP pushes with invalid records are refused whole, so
    // the invalid ones come over MQTT): an out-of-range value...
    let mqtt = node.mqtt.expect("embedded broker").port();
    let publish = |topic: &str, payload: String| {
        let out = mosquitto_pub(mqtt, topic, payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    publish(
        "people/p-1",
        format!(r#"{{"note":"quarantined {GONE}","age":999}}"#),
    );
    // ...a payload that is not JSON at all (the key only in the topic)...
    publish("people/p-1", format!("{{not json {GONE}"));
    // ...and one of the other entity, which must stay.
    publish("people/p-2", format!(r#"{{"note":"bad {KEPT}","age":-5}}"#));

    // While the node holds the store, the command says where to go instead.
    let busy = run(
        dir.path(),
        &["--config", "meshlet.toml", "erase", "person", "p-1"],
    );
    assert!(!busy.status.success());
    assert!(stderr(&busy).contains("erasePerson"), "{}", stderr(&busy));

    node.signal(libc::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(20)).expect("node stops");
    assert!(status.success());

    let data = dir.path().join("data");
    assert!(
        !occurrences(&data, GONE).is_empty(),
        "the scan sees the values before erasure"
    );
    {
        let store = open_store(&data);
        assert_eq!(store.quarantine_count("person").expect("count"), 3);
    }

    let erased = run(
        dir.path(),
        &[
            "--config",
            "meshlet.toml",
            "erase",
            "person",
            "p-1",
            "--actor",
            "dpo@example.com",
        ],
    );
    assert!(erased.status.success(), "{}", stderr(&erased));
    assert!(
        stdout(&erased).contains("erased person `p-1`"),
        "{}",
        stdout(&erased)
    );

    let left = occurrences(&data, GONE);
    assert!(
        left.is_empty(),
        "values of the erased entity remain: {left:?}"
    );
    let kept = occurrences(&data, KEPT);
    assert!(
        kept.iter().any(|at| at.contains("zstd")) && kept.iter().any(|at| at.contains("plain")),
        "the other entity's values are still found, plain and compressed: {kept:?}"
    );
    // The files themselves, after the erase command flushed and exited:
    // without encryption, sled's log still holds stale page versions with
    // the erased values (README, "Erasure": what remains and until when).
    let dictionaries = open_store(&data)
        .raw_dictionaries("person")
        .expect("dictionaries");
    let on_disk = files_containing(&data, GONE, &dictionaries);
    assert!(
        on_disk.iter().all(|at| at.starts_with("store/db:")),
        "erased values outside sled's log: {on_disk:?}"
    );
    eprintln!("erased values left in stale pages of sled's log (no encryption): {on_disk:?}");

    let store = open_store(&data);
    assert!(store.get("person", "p-1").expect("get").is_none());
    assert!(store.get("person", "p-2").expect("get").is_some());
    assert_eq!(store.quarantine_count("person").expect("count"), 1);
    let rest = store.quarantine_list("person", None, 10).expect("list");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].item.entity.as_deref(), Some("p-2"));
    let audit = store
        .audit("person", "p-1", &Default::default())
        .expect("audit");
    assert_eq!(audit.len(), 1, "only the erasure line stays: {audit:?}");
    assert_eq!(audit[0].origin.actor.as_deref(), Some("dpo@example.com"));
    let tombstone = store.tombstone("person", "p-1").expect("tombstone");
    assert!(tombstone.is_some());
    drop(store);

    // Erasing again finds nothing and says so.
    let again = run(
        dir.path(),
        &["--config", "meshlet.toml", "erase", "person", "p-1"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing erased"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn erase_of_an_entity_known_only_from_the_quarantine_removes_its_payloads() {
    let dir = workdir(&[("person", PERSON)], "");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let mqtt = node.mqtt.expect("embedded broker").port();
    let payload = format!(r#"{{"note":"{GONE}","age":1000}}"#);
    let out = mosquitto_pub(mqtt, "people/p-9", payload.as_bytes(), 1, false);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, logs) = node.stop();
    assert!(status.success(), "{}", logs.join("\n"));

    let erased = run(
        dir.path(),
        &["--config", "meshlet.toml", "erase", "person", "p-9"],
    );
    assert!(erased.status.success(), "{}", stderr(&erased));
    let data = dir.path().join("data");
    let left = occurrences(&data, GONE);
    assert!(left.is_empty(), "{left:?}");
    let store = open_store(&data);
    assert_eq!(store.quarantine_count("person").expect("count"), 0);
    assert!(store
        .tombstone("person", "p-9")
        .expect("tombstone")
        .is_some());
}

/// Journal frames (in `store/journal/*.wal`) holding `needle`, zstd frames
/// opened, read as files: `Store::open` would replay and remove them.
fn journal_occurrences(data_dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let contains = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    for entry in std::fs::read_dir(data_dir.join("store/journal")).expect("journal dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("segment");
        // Records: payload length (u32 BE), CRC (u32), sequence (u64),
        // payload. A payload is a format byte, the plain length (u32) and
        // either a zstd frame of its own (format 1) or the next piece of
        // the segment's zstd stream (formats 2 and 3; 3 may hold deltas,
        // whose literals are the new bytes), decoded in order.
        let mut stream = zstd::stream::raw::Decoder::new().expect("decoder");
        let mut rest = bytes.as_slice();
        while rest.len() >= 16 {
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let end = (16 + len).min(rest.len());
            let payload = &rest[16..end];
            let plain = match payload.first() {
                Some(2 | 3) if payload.len() >= 5 => stream_piece(&mut stream, &payload[5..]),
                _ => zstd_frames(payload, &[]).concat(),
            };
            if contains(payload) || contains(&plain) {
                found.push(format!("{}: frame {:?}", path.display(), &rest[8..16]));
            }
            rest = &rest[end..];
        }
    }
    found
}

/// What one piece of a journal segment's zstd stream decodes to, given
/// the pieces before it (fed to the same decoder in order).
fn stream_piece(decoder: &mut zstd::stream::raw::Decoder<'static>, piece: &[u8]) -> Vec<u8> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let mut plain = Vec::new();
    let mut input = InBuffer::around(piece);
    loop {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut output = OutBuffer::around(&mut chunk[..]);
        if decoder.run(&mut input, &mut output).is_err() {
            break;
        }
        let wrote = output.pos();
        plain.extend_from_slice(&chunk[..wrote]);
        if wrote == 0 && input.pos() == piece.len() {
            break;
        }
    }
    plain
}

/// Store format 4 keeps acknowledged writes in journal frames until a
/// checkpoint. An erasure while the node runs must not leave a frame
/// holding the entity's values: it checkpoints, which drops every frame
/// before it. The node is SIGKILLed right after the erasure (no clean
/// close, no later checkpoint) and the raw journal is scanned.
#[test]
fn an_erasure_leaves_no_journal_frame_with_the_entity() {
    let dir = workdir(
        &[("person", PERSON)],
        "[store]\ncheckpoint_interval = \"1h\"\n",
    );
    let mut node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    for version in 0..3 {
        push(
            &node,
            &[
                format!(r#"{{"person_id":"p-1","name":"Ann {GONE} {version}"}}"#),
                format!(r#"{{"person_id":"p-2","name":"Bob {KEPT} {version}"}}"#),
            ],
        );
    }
    let (status, body) = http_post(
        &node.url("/graphql"),
        "application/json",
        br#"{"query":"mutation { erasePerson(person_id: \"p-1\") }"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("true"), "{body}");
    // One more write after the erasure: it is in a frame, p-1 is not.
    push(
        &node,
        &[format!(r#"{{"person_id":"p-2","name":"Bob {KEPT} late"}}"#)],
    );
    node.signal(libc::SIGKILL);
    let _ = node.wait_exit(Duration::from_secs(10));

    let data = dir.path().join("data");
    assert!(
        !journal_occurrences(&data, KEPT).is_empty(),
        "the write after the erasure is in a journal frame (the scan sees into frames)"
    );
    let left = journal_occurrences(&data, GONE);
    assert!(
        left.is_empty(),
        "frames still hold the erased entity: {left:?}"
    );
    let left = occurrences(&data, GONE);
    assert!(
        left.is_empty(),
        "values of the erased entity remain: {left:?}"
    );
}
