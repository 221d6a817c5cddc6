//! The audit hash chain, end to end: records reach the real node over
//! HTTP, GraphQL shows each entity's `auditHead` and `auditVerified`, and
//! after the node stops `meshlet audit verify` checks every chain of the
//! data directory. One byte of one audit record changed with sled directly
//! (as someone with the files could) is reported as that entity's broken
//! link, with a non-zero exit; the other entity (erased by then, its chain
//! kept verifiable by its `Erased` line) still verifies. A store of
//! format 3 (lines from before the chain) verifies too.

use crate::common;

use std::path::Path;

use common::graphql::{workdir, Gql};
use common::*;
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
  email:     { type: string, classification: pii }
  age:       { type: int, min: 0, max: 150 }
sources:
  - http: { format: ndjson }
"#;

fn push(node: &NodeProcess, lines: &[String]) {
    let (status, body) = tokio::task::block_in_place(|| {
        http_post(
            &node.url("/ingest/person"),
            "application/x-ndjson",
            lines.join("\n").into_bytes(),
        )
    });
    assert_eq!(status, 200, "{body}");
}

fn verify(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["--config", "meshlet.toml", "audit", "verify"];
    all.extend_from_slice(args);
    let out = run(dir, &all);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// The length-prefixed entity key the audit tree's keys start with.
fn entity_prefix(entity: &str) -> Vec<u8> {
    let mut prefix = (entity.len() as u16).to_be_bytes().to_vec();
    prefix.extend_from_slice(entity.as_bytes());
    prefix
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_audit_record_is_the_broken_link_that_audit_verify_reports() {
    let dir = workdir(&[("person", PERSON)], "");
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    for version in 0..4 {
        push(
            &node,
            &[
                format!(
                    r#"{{"person_id":"p-1","name":"Ann {version}","email":"ann@example.com","age":{}}}"#,
                    40 + version
                ),
                format!(r#"{{"person_id":"p-2","name":"Bob {version}","age":30}}"#),
            ],
        );
    }
    let gql = Gql::new(&node);
    let data = gql
        .data(
            r#"{ person(person_id: "p-1") {
                auditHead
                auditVerified { ok lines linked unlinked head broken { line reason } }
                audit { action hash }
            } }"#,
            json!({}),
        )
        .await;
    let p1 = &data["person"];
    let head = p1["auditHead"].as_str().expect("a head").to_string();
    assert_eq!(head.len(), 64, "{p1}");
    let verified = &p1["auditVerified"];
    assert_eq!(verified["ok"], true, "{p1}");
    assert_eq!(verified["broken"], json!(null));
    assert_eq!(verified["head"], json!(head));
    assert_eq!(
        (verified["linked"].as_i64(), verified["unlinked"].as_i64()),
        (Some(2), Some(0))
    );
    let lines = p1["audit"].as_array().expect("lines");
    assert_eq!(lines.len(), 2, "Created, then the coalesced updates: {p1}");
    assert_eq!(lines[1]["hash"], json!(head));
    stop_cleanly(node);

    // The untouched store verifies, whole or one entity at a time.
    let (ok, out) = verify(dir.path(), &[]);
    assert!(ok, "{out}");
    assert!(out.contains("2 entities, 4 audit lines: 4 linked"), "{out}");
    assert!(out.contains("0 broken"), "{out}");
    let (ok, out) = verify(dir.path(), &["person", "p-1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("head {head}")),
        "the same head offline: {out}"
    );

    // Erasure keeps the chain verifiable: p-2's lines make way for one
    // `Erased` line that links to their head.
    let out = run(
        dir.path(),
        &["--config", "meshlet.toml", "erase", "person", "p-2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (ok, out) = verify(dir.path(), &["person", "p-2"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 entities, 1 audit lines: 1 linked"), "{out}");

    // One byte of p-1's closed `Created` line, in its field names: the
    // line still decodes, so only the hash can tell.
    {
        let db = sled::open(dir.path().join("data/store")).expect("sled opens the store");
        let audit = db.open_tree("person/audit").expect("audit tree");
        let (key, value) = audit
            .scan_prefix(entity_prefix("p-1"))
            .next()
            .expect("p-1 has a closed audit line")
            .expect("read");
        let mut edited = value.to_vec();
        let at = edited
            .windows(5)
            .position(|w| w == b"email")
            .expect("the line names the field `email`");
        edited[at + 4] = b'x';
        audit.insert(key, edited).expect("write");
        db.flush().expect("flush");
    }

    let (ok, out) = verify(dir.path(), &[]);
    assert!(!ok, "an edited store must fail: {out}");
    assert!(
        out.contains("BROKEN person `p-1`: line 1") && out.contains("does not match its hash"),
        "{out}"
    );
    assert!(!out.contains("`p-2`"), "p-2's chain is intact: {out}");
    assert!(out.contains("1 broken"), "{out}");
    let (ok, out) = verify(dir.path(), &["person", "p-2"]);
    assert!(ok, "{out}");
    let (ok, out) = verify(dir.path(), &["person", "p-1"]);
    assert!(!ok, "{out}");
    let (ok, out) = verify(dir.path(), &["nosuch"]);
    assert!(!ok && out.contains("no product named `nosuch`"), "{out}");

    // The running node reports the same break.
    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let data = Gql::new(&node)
        .data(
            r#"{ person(person_id: "p-1") { auditVerified { ok broken { line reason } } } }"#,
            json!({}),
        )
        .await;
    let verified = &data["person"]["auditVerified"];
    assert_eq!(verified["ok"], false, "{verified}");
    assert_eq!(verified["broken"]["line"], 1);
    stop_cleanly(node);
}

/// Lines written before the chain (a format 3 store) read and verify as
/// unlinked (new lines chaining after them: `store::audit_verify` tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_the_chain_verifies_with_its_lines_unlinked() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(
        &repo_root().join("tests/fixtures/store-format-3"),
        dir.path(),
    );
    let (ok, out) = verify(dir.path(), &[]);
    assert!(ok, "{out}");
    assert!(out.contains(" 0 linked,"), "nothing hashed yet: {out}");
    assert!(!out.contains(" 0 from before the chain"), "{out}");
}
