//! The web console (issue 28) in a real browser: headless Chromium
//! (Debian `chromium`, driven by `playwright-core` pinned in
//! `tests/js/package-lock.json`; `tests/run.sh` installs both) against
//! the real node with the example products, a real MQTT publisher
//! (`mosquitto_pub`), and every request but the node's own refused.
//!
//! `tests/js/console.mjs` walks the console: the token prompt when the
//! anonymous role cannot read, the overview's products, a live ingest rate
//! and instance table updated without reload, an entity chart, a reader's
//! masked values, an analyst's row filter (and refused subscription),
//! quarantine replay, keyboard navigation, the pages at
//! 360 px, and an accessibility check per page (`tests/js/a11y.mjs`).
//! Screenshots are kept under `target/tmp/console-screenshots/`.
//!
//! Issue 28 says Chromium *and* Firefox: `tests/js/console_firefox.mjs`
//! walks the main pages again in headless Firefox (Debian `firefox-esr`,
//! driven by `puppeteer-core` over WebDriver BiDi, since Playwright cannot
//! drive a stock Firefox); its screenshots go to
//! `target/tmp/console-screenshots-firefox/`.
//!
//! A missing `node`, `npm ci`, Chromium or Firefox fails the test; it is
//! never skipped.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_examples, create_token, sync_envelope, NodeBuilder, NodeProcess};
use serde_json::{json, Value};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// The example products, as the overview must list them.
fn example_products() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(common::repo_root().join("schema/examples"))
        .expect("examples")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// What an edge syncs to this node, which is also an aggregator (the
/// Sync page lists the edges heard from).
const READING: &str = "product: reading\nversion: 1\ndomain: test\nowner: test@example.com\n\
    key: meter\nfields:\n  meter: { type: string, required: true }\n  n: { type: int }\n\
    sources:\n  - http: {}\n";

/// POSTs a sync envelope as an edge would (`POST /sync/v1`).
fn post_envelope(node: &NodeProcess, token: &str, body: Vec<u8>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(node.url("/sync/v1"))
            .header("content-type", meshlet::sync::envelope::CONTENT_TYPE)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("HTTP body"))
    })
}

#[test]
fn the_console_shows_the_node_live_offline_and_per_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/reading.yaml"), READING).expect("product");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"schema/examples\", \"products\"]\n\
         [aggregator]\nenabled = true\n",
    )
    .expect("config");
    let admin = create_token(dir.path(), "admin", "ops");
    let reader = create_token(dir.path(), "operator", "shift-reader");
    let analyst = create_token(dir.path(), "analyst", "berlin-analyst");
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let mqtt = node.mqtt.expect("the embedded broker runs");
    let (status, body) = post_envelope(&node, &admin, sync_envelope("edge-7", "m1", 1..=3));
    assert_eq!(status, 200, "{body}");

    assert!(
        js_dir()
            .join("node_modules")
            .join("playwright-core")
            .is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (tests/run.sh does)",
        js_dir().display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is not installed at {chromium} (tests/run.sh installs Debian's `chromium`)"
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let config = json!({
        "url": node.url(""),
        "mqttPort": mqtt.port(),
        "adminToken": admin,
        "readerToken": reader,
        "analystToken": analyst,
        "productsDir": dir.path().join("schema/examples"),
        "products": example_products(),
        "edge": "edge-7",
        "outDir": shots,
    });
    let summary = run_browser_script("console.mjs", &config, ("CHROMIUM", &chromium), &shots);
    println!(
        "console: rate shown {}, {} chart points, masked email {}, widths at 360px {}, screenshots in {}",
        summary["rateText"],
        summary["chartPoints"],
        summary["maskedEmail"],
        summary["narrow"],
        shots.display()
    );
    common::stop_cleanly(node);
}

/// The same console in headless Firefox (Debian `firefox-esr`, driven by
/// `puppeteer-core` over WebDriver BiDi; `tests/js/console_firefox.mjs`):
/// the overview's products and node facts, a product table updated by
/// subscription after an MQTT publish, an entity chart, no page errors and
/// no request outside the node. A missing Firefox fails the test.
#[test]
fn the_console_works_in_firefox() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n",
    )
    .expect("config");
    let admin = create_token(dir.path(), "admin", "ops");
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let mqtt = node.mqtt.expect("the embedded broker runs");

    assert!(
        js_dir()
            .join("node_modules")
            .join("puppeteer-core")
            .is_dir(),
        "puppeteer-core is not installed: run `npm ci` in {} (tests/run.sh does)",
        js_dir().display()
    );
    let firefox = std::env::var("FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".to_string());
    assert!(
        Path::new(&firefox).exists(),
        "Firefox is not installed at {firefox} (tests/run.sh installs Debian's `firefox-esr`)"
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots-firefox");
    let _ = std::fs::remove_dir_all(&shots);
    let config = json!({
        "url": node.url(""),
        "mqttPort": mqtt.port(),
        "adminToken": admin,
        "products": example_products(),
        "outDir": shots,
    });
    let summary = run_browser_script(
        "console_firefox.mjs",
        &config,
        ("FIREFOX", &firefox),
        &shots,
    );
    println!(
        "console in {}: {} chart points, facts {}, screenshots in {}",
        summary["browser"],
        summary["chartPoints"],
        summary["facts"],
        shots.display()
    );
    common::stop_cleanly(node);
}

/// `[http] console = false`: no console route exists (`/`, its files and
/// its status answer 404, with or without a token); the API is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_switched_off_is_gone_and_the_api_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n[http]\nconsole = false\n",
    )
    .expect("config");
    let admin = create_token(dir.path(), "admin", "ops");
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/console/app.js",
        "/console/console.css",
        "/console/index.html",
    ] {
        for token in [None, Some(admin.as_str())] {
            let mut request = client.get(node.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("request");
            assert_eq!(
                response.status(),
                404,
                "{path} (token: {})",
                token.is_some()
            );
            let body = response.text().await.expect("body");
            assert!(!body.contains("<script"), "{path}: {body}");
        }
    }
    let answer = client
        .post(node.url("/graphql"))
        .bearer_auth(&admin)
        .json(&json!({ "query": "{ products { name } }" }))
        .send()
        .await
        .expect("graphql");
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.expect("json");
    assert!(
        answer["data"]["products"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{answer}"
    );
    assert_eq!(
        client
            .get(node.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .status(),
        200
    );
    // The status document is the node's, not the console's.
    let status = client
        .get(node.url("/status/v1"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), 200);
    common::stop_cleanly(node);
}

/// The shell is served without credentials, compiled in, with its
/// content type, a validator and gzip; the data behind it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shell_is_open_cached_and_compressed_but_its_data_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"schema/examples\"]\n",
    )
    .expect("config");
    let admin = create_token(dir.path(), "admin", "ops");
    let node = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");

    let client = reqwest::Client::new();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut request = client.get(node.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.expect("request") }
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };

    let index = get("/", &[]).await;
    assert_eq!(index.status(), 200);
    assert_eq!(header(&index, "content-type"), "text/html; charset=utf-8");
    assert!(header(&index, "content-security-policy").contains("default-src 'self'"));
    let page = index.text().await.expect("page");
    assert!(
        page.contains("<script type=\"module\" src=\"/console/app.js\">"),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page links outside the node: {page}"
    );

    let plain = get("/console/app.js", &[]).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(
        header(&plain, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&plain, "content-encoding"), "");
    let etag = header(&plain, "etag");
    assert!(etag.starts_with('"'), "{etag}");
    let plain_len = plain.bytes().await.expect("body").len();

    let packed = get("/console/app.js", &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(header(&packed, "content-encoding"), "gzip");
    assert_eq!(header(&packed, "vary"), "Accept-Encoding");
    assert_ne!(
        header(&packed, "etag"),
        etag,
        "each representation has its own tag"
    );
    assert!(packed.bytes().await.expect("body").len() < plain_len);

    let again = get("/console/app.js", &[("if-none-match", etag.as_str())]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(
        header(&get("/console/console.css", &[]).await, "content-type"),
        "text/css; charset=utf-8"
    );
    assert_eq!(get("/console/nope.js", &[]).await.status(), 404);

    // The data behind the shell needs credentials like any other client.
    assert_eq!(get("/status/v1", &[]).await.status(), 401);
    let status = client
        .get(node.url("/status/v1"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.expect("json");
    assert_eq!(status["readiness"]["phase"], "ready", "{status}");
    assert!(
        status["store"]["bytes_on_disk"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{status}"
    );
    assert!(
        status["memory_rss_bytes"].as_u64().is_some_and(|b| b > 0),
        "{status}"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    common::stop_cleanly(node);
}

/// Runs one browser script of `tests/js` with its JSON config (the browser's
/// path in `browser_env`) and returns the summary it prints last, which must
/// say `ok`; a failure shows its output and where the screenshots are.
fn run_browser_script(
    script: &str,
    config: &Value,
    browser_env: (&str, &str),
    shots: &Path,
) -> Value {
    let out = Command::new("node")
        .arg(script)
        .arg(config.to_string())
        .env(browser_env.0, browser_env.1)
        .current_dir(js_dir())
        .output()
        .expect("`node` (v20 or later) must be installed: tests/run.sh installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}\nscreenshots so far: {}",
        String::from_utf8_lossy(&out.stderr),
        shots.display()
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("summary ({e}): {stdout}"));
    assert_eq!(summary["ok"], true, "{summary:#}");
    summary
}
