//! README.md's commands, run as written, so the page a newcomer reads
//! cannot drift from what the binary does.
//!
//! The README marks the blocks this test runs in their fence's info
//! string (GitHub still highlights them as `sh`):
//!
//! - ```` ```sh runnable ````: "From an empty folder". All such blocks run
//!   in order in one `bash` (`set -euo pipefail`), in an empty temp dir,
//!   with the real `meshlet` first on `PATH`.
//! - ```` ```sh runnable:default-node ````: commands against the node of
//!   the README's first command (`serve` without a config file, from a
//!   checkout: the examples of `schema/examples/`), which this test
//!   starts the same way; all such blocks run in order in one `bash` in
//!   that node's folder.
//!
//! The only rewrite is the port: the README's `8080` and `1883` become
//! free ports (the node is pointed at them with `MESHLET_HTTP__LISTEN` and
//! `MESHLET_MQTT__EMBEDDED__LISTEN`), because tests run in parallel on a
//! shared machine. The first command itself (`cargo run --release --
//! serve`) is run as the binary cargo built for this test, and the
//! second (`tests/run.sh`) is the suite this test is part of: both are
//! checked to be there, not run again.
//!
//! `meshlet init` prints the same steps: every line it prints must be a
//! line of the README's runnable blocks.

use crate::common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, repo_root, NodeBuilder};

/// A fenced block of README.md: its info string and its text.
struct Block {
    info: String,
    text: String,
}

/// Every fenced block of a markdown text, in order.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<(String, String, String)> = None; // (fence, info, text)
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let indent = line.len() - trimmed.len();
                    current = Some((" ".repeat(indent), info.trim().to_string(), String::new()));
                }
            }
            Some((indent, info, text)) => {
                if trimmed == "```" {
                    out.push(Block {
                        info: std::mem::take(info),
                        text: std::mem::take(text),
                    });
                    current = None;
                } else {
                    text.push_str(line.strip_prefix(indent.as_str()).unwrap_or(line));
                    text.push('\n');
                }
            }
        }
    }
    out
}

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).expect("README.md reads")
}

/// The blocks whose info string is exactly `info`, joined in order.
fn script(info: &str) -> String {
    let found: Vec<String> = blocks(&readme())
        .into_iter()
        .filter(|b| b.info == info)
        .map(|b| b.text)
        .collect();
    assert!(
        !found.is_empty(),
        "README.md has no ```{info} block: the test would check nothing"
    );
    found.join("\n")
}

/// The README's ports made free ones.
fn with_ports(script: &str, http: u16, mqtt: u16) -> String {
    script
        .replace("localhost:8080", &format!("localhost:{http}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
        .replace("-p 1883", &format!("-p {mqtt}"))
}

/// A folder holding only a `meshlet` link to the binary under test, for
/// the front of `PATH`.
fn bin_dir(root: &Path) -> std::path::PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(common::meshlet_bin(), bin.join("meshlet")).expect("link");
    bin
}

/// Runs `script` in `bash -euo pipefail` in `cwd`, in a process group of
/// its own (a node it left running is stopped with the group), at most
/// `deadline`. Returns stdout; panics with both streams on failure.
fn run_bash(
    cwd: &Path,
    bin: &Path,
    env: &[(&str, String)],
    script: &str,
    deadline: Duration,
) -> String {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(cwd)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (name, _) in std::env::vars() {
        if name.starts_with("MESHLET_") || name == "RUST_LOG" || name.starts_with("MIMALLOC_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut child = command.spawn().expect("bash runs");
    let group = child.id() as i32;
    let (mut out, mut err) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    );
    let end = Instant::now() + deadline;
    let status = loop {
        match child.try_wait().expect("wait for bash") {
            Some(status) => break Some(status),
            None if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            None => break None,
        }
    };
    // Whatever the script left behind (a node it did not stop) goes with
    // its group, so the pipes close.
    // SAFETY: kill(2) on the process group this test created.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    if status.is_none() {
        let _ = child.wait();
    }
    let stdout = readers.0.join().expect("stdout reader");
    let stderr = readers.1.join().expect("stderr reader");
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!(
            "README commands failed ({status}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
        None => panic!(
            "README commands did not finish in {deadline:?}:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
}

fn normalized(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn from_an_empty_folder_runs_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = bin_dir(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let http = free_port();
    let mqtt = std::iter::repeat_with(free_port)
        .find(|port| *port != http)
        .expect("a second free port");
    let script = with_ports(&script("sh runnable"), http, mqtt);
    let stdout = run_bash(
        &work,
        &bin,
        &[
            ("MESHLET_HTTP__LISTEN", format!("127.0.0.1:{http}")),
            (
                "MESHLET_MQTT__EMBEDDED__LISTEN",
                format!("127.0.0.1:{mqtt}"),
            ),
        ],
        &script,
        Duration::from_secs(120),
    );
    // What the commands promise: the reading over MQTT and the push over
    // HTTP are both in the GraphQL answer.
    for expected in [
        r#""status":"ready""#,
        r#""products":["sensor"]"#,
        r#"{"accepted":1"#,
        r#"{"sensor_id":"s-1","temperature_c":21.5"#,
        r#"{"sensor_id":"s-2","temperature_c":null,"humidity_pct":40.0}"#,
    ] {
        assert!(stdout.contains(expected), "no {expected} in:\n{stdout}");
    }
    assert!(
        work.join("edge/meshlet-data").is_dir(),
        "the node kept its data in edge/meshlet-data"
    );
}

#[test]
fn meshlet_init_prints_the_readme_steps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = common::run(dir.path(), &["init", "edge"]);
    assert!(out.status.success(), "init: {}", common::stderr(&out));
    let printed = common::stdout(&out);
    let steps: Vec<&str> = printed
        .split_once("Next steps")
        .map(|(_, steps)| steps.lines().skip(1).collect())
        .unwrap_or_default();
    assert!(steps.len() > 3, "init prints its next steps:\n{printed}");
    let readme: Vec<String> = script("sh runnable").lines().map(normalized).collect();
    for step in steps {
        let step = normalized(step);
        if step.is_empty() || step == "cd edge" {
            continue;
        }
        assert!(
            readme.contains(&step),
            "`meshlet init` prints a step README.md does not have:\n{step}"
        );
    }
    // The starter files point at routes the node has.
    for file in ["edge/meshlet.toml", "edge/products/sensor.yaml"] {
        let text = std::fs::read_to_string(dir.path().join(file)).expect("starter file");
        assert!(
            !text.contains("/health"),
            "{file} names /health, which the node does not serve (/livez, /readyz)"
        );
    }
}

#[test]
fn the_first_command_and_the_examples_run_as_written() {
    // The two commands are the README's first block, exactly.
    let first = blocks(&readme())
        .into_iter()
        .next()
        .expect("README.md has a first block");
    let commands: Vec<String> = first
        .text
        .lines()
        .map(|l| normalized(l.split('#').next().unwrap_or("")))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        commands,
        ["cargo run --release -- serve", "tests/run.sh"],
        "the README's two commands"
    );
    let run_sh = repo_root().join("tests/run.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&run_sh)
            .expect("tests/run.sh")
            .permissions(),
    );
    assert!(mode & 0o111 != 0, "tests/run.sh is executable");

    // `serve` from a checkout, no config file: the examples, ./meshlet-data.
    let dir = tempfile::tempdir().expect("temp dir");
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(&checkout).expect("checkout dir");
    std::os::unix::fs::symlink(repo_root().join("schema"), checkout.join("schema"))
        .expect("schema link");
    let mut node = NodeBuilder::new(&checkout)
        .secured()
        .start()
        .expect("the node starts on the embedded default");
    let (status, ready) = common::http_get(&node.url("/readyz"));
    assert_eq!(status, 200, "{ready}");
    for product in [
        "customer_asset",
        "energy_meter",
        "machine_health",
        "press_line",
        "room_climate",
    ] {
        assert!(ready.contains(product), "{product} loaded: {ready}");
    }
    assert!(
        checkout.join("meshlet-data").is_dir(),
        "data in ./meshlet-data"
    );

    let bin = bin_dir(dir.path());
    let mqtt = node.mqtt.expect("the embedded broker runs").port();
    let script = with_ports(&script("sh runnable:default-node"), node.http.port(), mqtt);
    let stdout = run_bash(&checkout, &bin, &[], &script, Duration::from_secs(120));
    for expected in [
        r#"{"accepted":2"#,
        r#""totalCount":2"#,
        r#""machine_id":"PR-0042","temperature_c":71.5"#,
        r#""machine_id":"PR-0043","temperature_c":88.0"#,
    ] {
        assert!(stdout.contains(expected), "no {expected} in:\n{stdout}");
    }

    // "Stop it with Ctrl-C": SIGINT, a clean exit.
    node.signal(libc::SIGINT);
    let status = node
        .wait_exit(Duration::from_secs(30))
        .expect("the node stops on Ctrl-C");
    assert!(status.success(), "clean stop: {status}");
}
