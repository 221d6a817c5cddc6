//! `meshlet init [DIR]`: a commented starter hub config and one starter
//! product, so a newcomer gets from an empty folder to a running node with
//! `meshlet init && meshlet serve`.
//!
//! Nothing is ever overwritten: when any target file exists, nothing is
//! written at all and the error names the file. The templates are plain
//! text (comments are the point), and a unit test keeps them loadable by
//! the real config and product loaders.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The hub config file name `meshlet` looks for in the working directory.
pub const CONFIG_FILE: &str = "meshlet.toml";

/// The starter product's file, relative to DIR.
const PRODUCT_FILE: &str = "products/sensor.yaml";

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to write into (created when missing).
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

/// Why `init` wrote nothing (or stopped half-way on an I/O error).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{} already exists; init never overwrites (remove it, or init another folder)", .0.display())]
    Exists(PathBuf),
    #[error("cannot create {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The starter hub config. Paths are relative to the folder the node is
/// started from, which is DIR when the newcomer follows the printed steps.
pub const STARTER_CONFIG: &str = r#"# meshlet hub config, written by `meshlet init`.
#
# `meshlet` reads ./meshlet.toml when started without --config. Every key is
# optional; MESHLET_* environment variables override any of them, with `__`
# between levels (MESHLET_HTTP__LISTEN=0.0.0.0:8080). `meshlet check` validates
# this file and the products.

# This node's identity in the mesh; generated once and kept in data_dir
# when not set.
# node_id = "gateway-1"

# Where the store lives (relative to the folder meshlet runs in).
data_dir = "meshlet-data"

# Product definition files or folders.
products = ["products"]

[http]
# GraphQL (/graphql), ingest (/ingest/<product>), /livez, /readyz, /metrics.
# Loopback only: open it (0.0.0.0:8080) deliberately, with [http.tls] set.
listen = "127.0.0.1:8080"
# The GraphiQL playground at GET /graphql; turn off in production.
graphiql = true

# HTTPS instead of HTTP:
# [http.tls]
# cert_file = "tls/node.crt"
# key_file = "tls/node.key"

[mqtt.embedded]
# The embedded MQTT broker devices publish to. Loopback only by default.
enabled = true
listen = "127.0.0.1:1883"
# Username -> password; empty means no authentication.
# [mqtt.embedded.users]
# sensor-fleet = "change-me"

[log]
# "text" for people, "json" (one object per line) for log shippers.
format = "text"
# A tracing filter: "info", "meshlet=debug,sled=warn"; RUST_LOG wins.
level = "info"

[security]
# With a config file every API call needs a token. Create one with
#   meshlet token create --role admin --name me
# and send it as `Authorization: Bearer <token>`.
#
# WARNING: uncommenting the next line lets anyone who reaches http.listen
# read every product without a token (fields classified pii, confidential
# or restricted are masked).
# anonymous_role = "reader"
"#;

/// The starter product: one sensor reading over MQTT or HTTP.
pub const STARTER_PRODUCT: &str = r#"# A starter data product, written by `meshlet init`: the latest reading of
# every sensor, with a history, fed over MQTT and HTTP. Rename it, change
# the fields, then `meshlet check`.
#
# Over MQTT, to the embedded broker (topic names the sensor):
#   mosquitto_pub -p 1883 -t sensors/s-1/telemetry -m '{"temperature_c": 21.5}'
# Over HTTP (one JSON object, or an array of them; needs a writing token):
#   curl -H "Authorization: Bearer $TOKEN" -d '{"sensor_id": "s-2", "humidity_pct": 40}' \
#        http://127.0.0.1:8080/ingest/sensor
product: sensor
version: 1
domain: my-site
owner: you@example.com
description: Latest reading of every sensor on the site.
key: sensor_id

fields:
  sensor_id:     { type: string, required: true, description: The sensor's name or serial }
  temperature_c: { type: float, min: -50, max: 150, unit: "°C", description: Air temperature }
  humidity_pct:  { type: float, min: 0, max: 100, unit: "%", description: Relative humidity }
  battery_v:     { type: float, min: 0, max: 5, unit: V }
  status:        { type: string, enum: [ok, warn, fault] }

sources:
  # Field values by name from a JSON object; the key comes from the topic.
  - mqtt: { topic: "sensors/{sensor_id}/telemetry", format: json }
  - http: { format: json }

quality:
  on_invalid: quarantine     # bad readings wait in `meshlet quarantine list sensor`

history:
  keep: 10000                # readings kept per sensor
  max_age: 7d

freshness: 5m                # a sensor silent for longer is shown as stale
"#;

/// `meshlet init [DIR]`.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let written = write_starter(&args.dir)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    print_next_steps(&args.dir);
    Ok(())
}

/// Writes both starter files into `dir`, or nothing when either exists.
fn write_starter(dir: &Path) -> Result<Vec<PathBuf>, InitError> {
    let files = [
        (dir.join(CONFIG_FILE), STARTER_CONFIG),
        (dir.join(PRODUCT_FILE), STARTER_PRODUCT),
    ];
    if let Some((path, _)) = files.iter().find(|(path, _)| path.exists()) {
        return Err(InitError::Exists(path.clone()));
    }
    let mut written = Vec::new();
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| InitError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        // create_new: a file that appeared since the check is still not
        // overwritten.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => InitError::Exists(path.clone()),
                _ => InitError::Write {
                    path: path.clone(),
                    source,
                },
            })?;
        written.push(path);
    }
    Ok(written)
}

/// What to run next, as README.md's "From an empty folder" has it line
/// for line (`tests/it/readme.rs` checks that every line here is one of the
/// README's, and runs the README's): the token kept in `$TOKEN`, the node
/// in the background, its readiness awaited on `/readyz`.
pub const NEXT_STEPS: &[&str] = &[
    "meshlet check                                          # config and products: every problem at once",
    "TOKEN=$(meshlet token create --role admin --name me)   # printed once; only its hash is kept",
    "meshlet serve &                                        # HTTP on 127.0.0.1:8080, MQTT on 127.0.0.1:1883",
    "until curl -sf localhost:8080/readyz; do sleep 0.2; done   # 200 once ready",
    "mosquitto_pub -p 1883 -q 1 -t sensors/s-1/telemetry -m '{\"temperature_c\": 21.5}'",
    "curl -sf localhost:8080/graphql -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' \\",
    "  -d '{\"query\": \"{ sensorConnection(first: 10) { nodes { sensor_id temperature_c humidity_pct } } }\"}'",
    "kill %1 && wait %1                                     # in-flight work finished, store flushed",
];

fn print_next_steps(dir: &Path) {
    println!("\nNext steps (in one shell):");
    if dir != Path::new(".") {
        println!("  cd {}", dir.display());
    }
    for line in NEXT_STEPS {
        println!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_files_load_with_the_real_loaders() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_starter(dir.path()).expect("init writes");
        assert_eq!(written.len(), 2);
        let config = crate::config::load_with_env(Some(&dir.path().join(CONFIG_FILE)), [])
            .expect("the starter config loads");
        assert_eq!(config.security.anonymous_role, None, "secure by default");
        let ctx = crate::product::LoadContext::with_upstreams(config.upstream_names());
        let set = crate::product::load_paths(&[dir.path().join("products")], &ctx)
            .expect("the starter product loads");
        assert!(set.get("sensor").is_some());
    }

    #[test]
    fn an_existing_file_stops_init_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("products")).expect("mkdir");
        std::fs::write(dir.path().join(PRODUCT_FILE), "mine").expect("write");
        let err = write_starter(dir.path()).expect_err("refused");
        assert!(
            matches!(err, InitError::Exists(ref p) if p.ends_with(PRODUCT_FILE)),
            "{err}"
        );
        assert!(!dir.path().join(CONFIG_FILE).exists(), "nothing written");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PRODUCT_FILE)).expect("read"),
            "mine"
        );
    }
}
