//! The generated GraphQL schema of each example product is kept as a
//! golden file beside it (`schema/examples/<product>.graphql`): a change to
//! the schema generator shows up as a diff in review. Regenerate them with
//! `UPDATE_GOLDEN=1 cargo test --test it graphql_sdl::`.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use meshlet::product::{load_path, LoadContext};

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("schema/examples"))
        .expect("schema/examples exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn sdl_of(file: &Path) -> String {
    let ctx = LoadContext::with_upstreams(["central".to_string()].into());
    let set = load_path(file, &ctx).expect("example loads");
    meshlet::api::graphql::sdl(&set).expect("example makes a schema")
}

#[test]
fn golden_sdl_files_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let files = examples();
    assert_eq!(files.len(), 5);
    let mut stale = Vec::new();
    for file in files {
        let sdl = sdl_of(&file);
        assert_eq!(sdl, sdl_of(&file), "generation is deterministic");
        let golden = file.with_extension("graphql");
        if update {
            std::fs::write(&golden, &sdl).expect("write golden file");
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != sdl {
            let line = expected
                .lines()
                .zip(sdl.lines())
                .position(|(a, b)| a != b)
                .map_or(expected.lines().count().min(sdl.lines().count()), |i| i)
                + 1;
            stale.push(format!(
                "{} (first difference at line {line})",
                golden.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "generated SDL differs from the golden files; if the change is intended, run `UPDATE_GOLDEN=1 cargo test --test it graphql_sdl::` and review the diff:\n{}",
        stale.join("\n")
    );
}

#[test]
fn schema_print_prints_the_golden_sdl() {
    let out = run(
        &repo_root(),
        &[
            "schema",
            "print",
            "--products",
            "schema/examples/machine_health.yaml",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let golden =
        std::fs::read_to_string(repo_root().join("schema/examples/machine_health.graphql"))
            .expect("golden file");
    assert_eq!(stdout(&out), golden);
    let sdl = stdout(&out);
    for expected in [
        "type MachineHealth implements Node {",
        "\tstatus: MachineHealthStatus\n",
        "status: MachineHealthStatusFilter",
        "node(id: ID!): Node",
        "nodes(ids: [ID!]!): [Node]!",
        "syncNodes: [SyncNode!]!",
        "machineHealth(machine_id: String!): MachineHealth",
        "machineHealthConnection(",
        "): MachineHealthConnection!",
        "orderBy: [MachineHealthOrder!]",
        "upsertMachineHealth(input: MachineHealthInput!): MachineHealth!",
        "machineHealthChanges(filter: MachineHealthFilter): MachineHealthChange!",
        "scalar Long",
    ] {
        assert!(sdl.contains(expected), "missing `{expected}`");
    }
}

#[test]
fn definitions_that_make_no_schema_are_refused_by_print_and_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "product: bad\nversion: 1\ndomain: t\nowner: t@example.com\nkey: id\nfields:\n  id: { type: string }\n  audit: { type: string }\n",
    )
    .expect("write");
    let out = run(dir.path(), &["schema", "print", "--products", "bad.yaml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("product `bad`: field `audit` collides"),
        "{err}"
    );

    let out = meshlet(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--products",
            "bad.yaml",
            "--data-dir",
            "data",
        ])
        .env("MESHLET_MQTT__EMBEDDED__LISTEN", "127.0.0.1:0")
        .output()
        .expect("meshlet runs");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("GraphQL schema cannot be generated") && err.contains("audit"),
        "{err}"
    );
}
