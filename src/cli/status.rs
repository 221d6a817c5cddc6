//! `meshlet status`: a one-screen summary of a running node, from the
//! node's own status document (`GET /status/v1`, src/api/status.rs:
//! store, ingest per source, sync per upstream, readiness; read twice,
//! `--sample` apart, for the rates) and the GraphQL catalog (`products`
//! with entities, freshness, quality and quarantine, as the token's role
//! may see them). `--json` prints the status document as the node served
//! it. Both calls need a token when the node's config has no anonymous
//! role.
//!
//! Fetching is the only I/O; laying out the screen is a plain function,
//! unit-tested below.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::api::status::{NodeStatus, SourceStatus};
use crate::config::HubConfig;
use crate::http_client::{HttpClient, HttpClientError, TlsFiles};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The node's base URL; default from `http.listen` (https when
    /// `[http.tls]` is set).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// API token (`meshlet token create`); needed unless the node lets
    /// anonymous callers read. Prefer the environment variable: a
    /// command-line argument is visible to every user in `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MESHLET_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM CA bundle the node's HTTPS certificate is checked against;
    /// default the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// How long to watch the counters for the per-second rates.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub sample: Duration,
    /// Print the node's status document (`GET /status/v1`, one reading,
    /// no rates) as JSON instead of the screen.
    #[arg(long)]
    pub json: bool,
}

/// Why no summary could be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot reach {authority}: {reason} (is the node running? see --url)")]
    Unreachable { authority: String, reason: String },
    #[error("{path} answered {status}: {body}")]
    Http {
        path: String,
        status: u16,
        body: String,
    },
    #[error("the node's GraphQL answer is not what status expects: {0}")]
    Answer(String),
    #[error("the node at {url} has no {path}: it runs a meshlet older than this one ({version}), which `meshlet status` needs; upgrade the node or read its /metrics")]
    NoStatus {
        url: String,
        path: &'static str,
        version: &'static str,
    },
    #[error("the node's {path} is not a status document this meshlet reads: {reason}")]
    Document { path: &'static str, reason: String },
}

/// The products table: what the token's role may see.
const QUERY: &str = "{ products { name entities quarantineCount \
    freshness { lastUpdate stale sla } quality { accepted rejected quarantined duplicates } } }";

/// `meshlet status`.
pub fn run(config: &HubConfig, args: StatusArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let screen = runtime.block_on(collect(config, &args))?;
    print!("{screen}");
    Ok(())
}

async fn collect(config: &HubConfig, args: &StatusArgs) -> Result<String, StatusError> {
    let url = args.url.clone().unwrap_or_else(|| default_url(config));
    let mut client = Client::new(&url, args.ca_file.clone(), args.token.clone())?;
    if args.json {
        let text = client.status_text(&url).await?;
        let document: Value = serde_json::from_str(&text).map_err(|e| StatusError::Document {
            path: crate::api::status::PATH,
            reason: e.to_string(),
        })?;
        let pretty =
            serde_json::to_string_pretty(&document).map_err(|e| StatusError::Document {
                path: crate::api::status::PATH,
                reason: e.to_string(),
            })?;
        return Ok(format!("{pretty}\n"));
    }
    let before = client.status(&url).await?;
    let body = serde_json::json!({ "query": QUERY }).to_string();
    let answer: Value = serde_json::from_str(&client.request("/graphql", Some(body)).await?)
        .map_err(|e| StatusError::Answer(e.to_string()))?;
    if let Some(errors) = answer.get("errors") {
        return Err(StatusError::Answer(errors.to_string()));
    }
    tokio::time::sleep(args.sample).await;
    let after = client.status(&url).await?;
    Ok(render(&url, &answer["data"], &before, &after, args.sample))
}

/// Where the node listens by the config; a wildcard address is reached
/// over loopback.
fn default_url(config: &HubConfig) -> String {
    let mut addr = config.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// The node's one HTTP client with the CA file given; GET `path`, or POST
/// a JSON `body`; the body of a 2xx answer.
struct Client(HttpClient);

impl Client {
    fn new(
        url: &str,
        ca_file: Option<PathBuf>,
        token: Option<String>,
    ) -> Result<Client, StatusError> {
        let files = TlsFiles {
            ca_file: ca_file.as_deref(),
            ..TlsFiles::default()
        };
        HttpClient::new(url, files, token)
            .map(Client)
            .map_err(StatusError::from)
    }

    async fn request(&mut self, path: &str, body: Option<String>) -> Result<String, StatusError> {
        let answer = self
            .0
            .request(path, body.map(|b| ("application/json", Bytes::from(b))))
            .await?;
        let text = answer.text();
        if answer.status.is_success() {
            Ok(text)
        } else {
            Err(StatusError::Http {
                path: path.to_string(),
                status: answer.status.as_u16(),
                body: text.chars().take(300).collect(),
            })
        }
    }
}

impl Client {
    /// `GET /status/v1` as text; a node without it (404) is an older one.
    async fn status_text(&mut self, url: &str) -> Result<String, StatusError> {
        match self.request(crate::api::status::PATH, None).await {
            Err(StatusError::Http { status: 404, .. }) => Err(StatusError::NoStatus {
                url: url.to_string(),
                path: crate::api::status::PATH,
                version: env!("CARGO_PKG_VERSION"),
            }),
            other => other,
        }
    }

    /// `GET /status/v1`, read.
    async fn status(&mut self, url: &str) -> Result<NodeStatus, StatusError> {
        let text = self.status_text(url).await?;
        serde_json::from_str(&text).map_err(|e| StatusError::Document {
            path: crate::api::status::PATH,
            reason: e.to_string(),
        })
    }
}

impl From<HttpClientError> for StatusError {
    fn from(err: HttpClientError) -> StatusError {
        match err {
            HttpClientError::Url { url, reason } => StatusError::Url {
                url,
                reason: reason.to_string(),
            },
            HttpClientError::Tls(e) => StatusError::Tls(e.to_string()),
            HttpClientError::Unreachable { authority, reason } => {
                StatusError::Unreachable { authority, reason }
            }
        }
    }
}

fn uptime(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes for a person: `512 B`, `1.5 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A source's count of `outcome` (`accepted`, ...).
fn outcome(source: &SourceStatus, outcome: &str) -> u64 {
    match outcome {
        "accepted" => source.accepted,
        "rejected" => source.rejected,
        "quarantined" => source.quarantined,
        "duplicate" => source.duplicates,
        _ => 0,
    }
}

/// The same source in an earlier reading.
fn earlier<'a>(before: &'a NodeStatus, source: &SourceStatus) -> Option<&'a SourceStatus> {
    before
        .ingest
        .sources
        .iter()
        .find(|s| s.product == source.product && s.source == source.source)
}

/// Lays out the screen from the products of one GraphQL answer and two
/// status readings taken `sample` apart.
fn render(
    url: &str,
    data: &Value,
    before: &NodeStatus,
    after: &NodeStatus,
    sample: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "meshlet {} at {url}, up {}",
        after.version,
        uptime(after.uptime_seconds)
    );
    let phase = serde_json::to_value(after.readiness.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = writeln!(out, "node {}, {phase}", after.node_id);
    for problem in &after.readiness.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    let store = &after.store;
    let _ = writeln!(
        out,
        "store format {}, {} on disk, {} hot; journal {} frames ({}) since the last of {} checkpoints",
        store.format_version,
        store.bytes_on_disk.map_or_else(|| "?".to_string(), size),
        size(store.hot_bytes),
        store.journal.pending_frames,
        size(store.journal.pending_bytes),
        store.checkpoints.count,
    );

    let secs = sample.as_secs_f64().max(0.001);
    let _ = writeln!(
        out,
        "\n{:<22} {:>9}  {:<28} {:<5} {:>9} {:>9}  QUARANTINED (NOW)",
        "PRODUCT", "ENTITIES", "LAST UPDATE", "STALE", "ACCEPTED", "REJECTED"
    );
    let products = data["products"].as_array().cloned().unwrap_or_default();
    if products.is_empty() {
        let _ = writeln!(out, "(no products visible to this token)");
    }
    for p in &products {
        let name = p["name"].as_str().unwrap_or("?");
        let n = |v: &Value| {
            v.as_u64()
                .map_or_else(|| "?".to_string(), |n| n.to_string())
        };
        let stale = match (
            p["freshness"]["stale"].as_bool(),
            p["freshness"]["sla"].as_str(),
        ) {
            (Some(true), _) => "STALE".to_string(),
            (Some(false), Some(_)) => "no".to_string(),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{name:<22} {:>9}  {:<28} {stale:<5} {:>9} {:>9}  {} ({})",
            n(&p["entities"]),
            p["freshness"]["lastUpdate"].as_str().unwrap_or("never"),
            n(&p["quality"]["accepted"]),
            n(&p["quality"]["rejected"]),
            n(&p["quality"]["quarantined"]),
            n(&p["quarantineCount"]),
        );
    }

    let _ = writeln!(
        out,
        "\nINGEST since start (rate over the last {})",
        humantime::format_duration(sample)
    );
    let sources = &after.ingest.sources;
    for name in ["accepted", "rejected", "quarantined", "duplicate"] {
        let total: u64 = sources.iter().map(|s| outcome(s, name)).sum();
        let gained: u64 = sources
            .iter()
            .map(|s| {
                let was = earlier(before, s).map_or(0, |b| outcome(b, name));
                outcome(s, name).saturating_sub(was)
            })
            .sum();
        let rate = gained as f64 / secs;
        let _ = writeln!(out, "  {name:<12} {total:>10}  {rate:>8.1}/s");
    }
    let _ = writeln!(
        out,
        "  unmatched MQTT messages {}, store write failures {}",
        after.ingest.unmatched_messages, after.ingest.write_failures
    );
    if !sources.is_empty() {
        let _ = writeln!(
            out,
            "  {:<22} {:<12} {:>9} {:>9} {:>11} {:>10}  DEVICES DOWN",
            "PRODUCT", "SOURCE", "ACCEPTED", "REJECTED", "QUARANTINED", "ACCEPTED/s"
        );
    }
    for s in sources {
        let was = earlier(before, s).map_or(0, |b| b.accepted);
        let rate = s.accepted.saturating_sub(was) as f64 / secs;
        let down = match (s.devices_down, s.devices) {
            (Some(down), Some(of)) => format!("{down} of {of}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<22} {:<12} {:>9} {:>9} {:>11} {rate:>10.1}  {down}",
            s.product, s.source, s.accepted, s.rejected, s.quarantined
        );
    }

    let _ = writeln!(out, "\nSYNC");
    let sync = &after.sync;
    if sync.upstreams.is_empty() {
        let _ = writeln!(out, "  (no upstreams)");
    }
    for u in &sync.upstreams {
        let oldest = u
            .oldest_pending_seconds
            .map_or_else(|| "-".to_string(), uptime);
        let _ = writeln!(
            out,
            "  {:<16} pending {} (oldest {oldest}), last ack {}, errors {}, dropped {}",
            u.name,
            u.pending,
            u.last_ack.as_deref().unwrap_or("never"),
            u.errors,
            u.dropped,
        );
    }
    let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
    for c in &sync.consumers {
        let _ = writeln!(
            out,
            "  JetStream durable {} ({}): pending {}, ack pending {}, redelivered {}, naks {}{}",
            c.durable,
            c.filter_subject,
            n(c.pending),
            n(c.ack_pending),
            n(c.redelivered),
            c.naks,
            c.error
                .as_deref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default(),
        );
    }
    for r in &sync.references {
        let _ = writeln!(
            out,
            "  reference {} from {}: revision {}, stored {}, filtered {}, last applied {}{}",
            r.product,
            r.upstream,
            r.revision,
            r.stored,
            r.filtered,
            r.last_applied.as_deref().unwrap_or("never"),
            r.error
                .as_deref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::*;

    fn reading(accepted: u64) -> NodeStatus {
        let source = |product: &str, source: &str, accepted: u64, rejected: u64| SourceStatus {
            product: product.into(),
            source: source.into(),
            messages: accepted + rejected,
            bytes: 0,
            accepted,
            rejected,
            quarantined: 0,
            duplicates: 0,
            retained_known: 0,
            invalid_by_rule: Default::default(),
            last_event_time: None,
            devices: (source == "modbus:1").then_some(3),
            devices_down: (source == "modbus:1").then_some(1),
            read_errors: Default::default(),
        };
        NodeStatus {
            status_version: VERSION,
            node_id: "edge-1".into(),
            version: "1.2.3".into(),
            started_at: 0.0,
            uptime_seconds: 90.0,
            readiness: ReadinessStatus {
                phase: crate::api::Phase::Ready,
                problems: vec!["upstream central is down".into()],
            },
            memory_rss_bytes: None,
            store: StoreStatus {
                format_version: 4,
                bytes_on_disk: Some(3 * 1024 * 1024),
                hot_bytes: 2048,
                journal: JournalStatus {
                    frames_written: 9,
                    frame_bytes: 100,
                    frames_replayed: 0,
                    pending_frames: 2,
                    pending_bytes: 512,
                },
                checkpoints: CheckpointStatus {
                    count: 7,
                    keys: 70,
                    seconds: 0.1,
                },
            },
            ingest: IngestStatus {
                sources: vec![
                    source("a", "mqtt:0", 4, 0),
                    source("b", "http:1", accepted, 1),
                    source("b", "modbus:1", 0, 0),
                ],
                unmatched_messages: 0,
                write_failures: 0,
                batches_written: 1,
                records_written: 1,
            },
            sync: SyncStatus {
                upstreams: vec![UpstreamStatus {
                    name: "central".into(),
                    pending: 5,
                    pending_bytes: 10,
                    oldest_pending_seconds: Some(90.0),
                    last_ack: None,
                    errors: 0,
                    dropped: 0,
                    refusals: 0,
                    waiting: None,
                }],
                consumers: vec![ConsumerStatus {
                    durable: "plant".into(),
                    stream: "S".into(),
                    filter_subject: "meshlet.sync.>".into(),
                    pending: Some(12),
                    ack_pending: Some(3),
                    redelivered: Some(1),
                    naks: 0,
                    error: None,
                }],
                references: Vec::new(),
            },
        }
    }

    #[test]
    fn the_screen_shows_the_node_products_rates_and_sync() {
        let data = serde_json::json!({
            "products": [{ "name": "b", "entities": 3, "quarantineCount": 2,
                "freshness": { "lastUpdate": "2026-01-01T00:00:00Z", "stale": true, "sla": "1m" },
                "quality": { "accepted": 26, "rejected": 1, "quarantined": 2, "duplicates": 0 } }]
        });
        let screen = render(
            "http://x",
            &data,
            &reading(6),
            &reading(26),
            Duration::from_secs(2),
        );
        assert!(
            screen.starts_with("meshlet 1.2.3 at http://x, up 1m 30s\nnode edge-1, ready\n  problem: upstream central is down\n"),
            "{screen}"
        );
        assert!(
            screen.contains("store format 4, 3.0 MiB on disk, 2.0 KiB hot; journal 2 frames (512 B) since the last of 7 checkpoints"),
            "{screen}"
        );
        assert!(screen.contains("STALE"), "{screen}");
        assert!(
            screen.contains("accepted             30      10.0/s"),
            "{screen}"
        );
        assert!(
            screen.contains("  quarantined           0       0.0/s"),
            "{screen}"
        );
        assert!(
            screen.contains("  b                      http:1              26         1           0       10.0  -\n"),
            "{screen}"
        );
        assert!(screen.contains("modbus:1"), "{screen}");
        assert!(screen.contains("  1 of 3\n"), "{screen}");
        assert!(
            screen.contains("central          pending 5 (oldest 1m 30s), last ack never"),
            "{screen}"
        );
        assert!(
            screen.contains("JetStream durable plant (meshlet.sync.>): pending 12, ack pending 3, redelivered 1, naks 0\n"),
            "{screen}"
        );
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn the_default_url_follows_the_config() {
        let mut config = HubConfig::default();
        config.http.listen = "0.0.0.0:9000".parse().expect("addr");
        assert_eq!(default_url(&config), "http://127.0.0.1:9000");
        config.http.listen = "[::]:9443".parse().expect("addr");
        config.http.tls = Some(crate::config::HttpTlsConfig {
            cert_file: "node.pem".into(),
            key_file: "node.key".into(),
            client_ca_file: None,
            client_auth: Default::default(),
        });
        assert_eq!(default_url(&config), "https://[::1]:9443");
    }
}
