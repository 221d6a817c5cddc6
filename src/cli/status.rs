//! `meshlet status`: a one-screen summary of a running node, from what it
//! already serves — `/metrics` (sampled twice for rates, plus build and
//! start time) and the GraphQL catalog (`products` with entities,
//! freshness, quality and quarantine; `syncStatus`; `syncConsumers`, the
//! JetStream lag of an aggregator; `syncReferences`, the reference-data
//! revisions of an edge). The GraphQL call
//! needs a token when the node's config has no anonymous role.
//!
//! Fetching is the only I/O; parsing the Prometheus text and laying out
//! the screen are plain functions, unit-tested below.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

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
}

const QUERY: &str = "{ products { name entities quarantineCount \
    freshness { lastUpdate stale sla } quality { accepted rejected quarantined duplicates } } \
    syncStatus { name pending oldestPendingSeconds lastAck errors dropped } \
    syncConsumers { durable filterSubject pending ackPending redelivered naks error } \
    syncReferences { upstream product revision stored filtered lastApplied error } }";

/// `meshlet status`.
pub fn run(config: &HubConfig, args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(collect(config, &args)) {
        Ok(screen) => {
            print!("{screen}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn collect(config: &HubConfig, args: &StatusArgs) -> Result<String, StatusError> {
    let url = args.url.clone().unwrap_or_else(|| default_url(config));
    let mut client = Client::new(&url, args.ca_file.clone(), args.token.clone())?;
    let before = parse_metrics(&client.request("/metrics", None).await?);
    let body = serde_json::json!({ "query": QUERY }).to_string();
    let answer: Value = serde_json::from_str(&client.request("/graphql", Some(body)).await?)
        .map_err(|e| StatusError::Answer(e.to_string()))?;
    if let Some(errors) = answer.get("errors") {
        return Err(StatusError::Answer(errors.to_string()));
    }
    tokio::time::sleep(args.sample).await;
    let after = parse_metrics(&client.request("/metrics", None).await?);
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

/// Prometheus samples by series name, each with its labels.
type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// Parses the Prometheus text format: `name{a="x",b="y"} value` lines;
/// comments and lines that do not parse are skipped.
fn parse_metrics(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        out.entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    out
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// Sum of a series' samples whose labels include every `(key, value)`.
fn sum(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .get(name)
        .into_iter()
        .flatten()
        .filter(|(labels, _)| {
            with.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, value)| value)
        .fold(0.0, |a, b| a + b) // not `sum()`: an empty f64 sum is -0
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

/// Lays out the screen from one GraphQL answer and two metric samples
/// taken `sample` apart.
fn render(url: &str, data: &Value, before: &Samples, after: &Samples, sample: Duration) -> String {
    let mut out = String::new();
    let version = after
        .get("meshlet_build_info")
        .and_then(|s| s.first())
        .and_then(|(labels, _)| labels.get("version").cloned())
        .unwrap_or_else(|| "?".to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let up = match sum(after, "process_start_time_seconds", &[]) {
        started if started > 0.0 => uptime(now - started),
        _ => "?".to_string(),
    };
    let _ = writeln!(out, "meshlet {version} at {url}, up {up}");

    let secs = sample.as_secs_f64().max(0.001);
    let records = "meshlet_ingest_records_total";
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
    for outcome in ["accepted", "rejected", "quarantined", "duplicate"] {
        let total = sum(after, records, &[("outcome", outcome)]);
        let rate = (total - sum(before, records, &[("outcome", outcome)])).max(0.0) / secs;
        let _ = writeln!(out, "  {outcome:<12} {:>10}  {rate:>8.1}/s", total as u64);
    }
    let unmatched = sum(after, "meshlet_ingest_unmatched_messages_total", &[]);
    let failures = sum(after, "meshlet_ingest_write_failures_total", &[]);
    let _ = writeln!(
        out,
        "  unmatched MQTT messages {unmatched}, store write failures {failures}"
    );

    let _ = writeln!(out, "\nSYNC");
    let upstreams = data["syncStatus"].as_array().cloned().unwrap_or_default();
    if upstreams.is_empty() {
        let _ = writeln!(out, "  (no upstreams)");
    }
    for u in &upstreams {
        let oldest = u["oldestPendingSeconds"]
            .as_f64()
            .map_or_else(|| "-".to_string(), uptime);
        let _ = writeln!(
            out,
            "  {:<16} pending {} (oldest {oldest}), last ack {}, errors {}, dropped {}",
            u["name"].as_str().unwrap_or("?"),
            u["pending"],
            u["lastAck"].as_str().unwrap_or("never"),
            u["errors"],
            u["dropped"],
        );
    }
    for c in data["syncConsumers"].as_array().into_iter().flatten() {
        let n = |v: &Value| {
            v.as_u64()
                .map_or_else(|| "?".to_string(), |n| n.to_string())
        };
        let _ = writeln!(
            out,
            "  JetStream durable {} ({}): pending {}, ack pending {}, redelivered {}, naks {}{}",
            c["durable"].as_str().unwrap_or("?"),
            c["filterSubject"].as_str().unwrap_or("?"),
            n(&c["pending"]),
            n(&c["ackPending"]),
            n(&c["redelivered"]),
            n(&c["naks"]),
            c["error"]
                .as_str()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default(),
        );
    }
    for r in data["syncReferences"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  reference {} from {}: revision {}, stored {}, filtered {}, last applied {}{}",
            r["product"].as_str().unwrap_or("?"),
            r["upstream"].as_str().unwrap_or("?"),
            r["revision"],
            r["stored"],
            r["filtered"],
            r["lastApplied"].as_str().unwrap_or("never"),
            r["error"]
                .as_str()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP x y\n\
        meshlet_ingest_records_total{product=\"a\",source=\"mqtt:0\",outcome=\"accepted\"} 4\n\
        meshlet_ingest_records_total{product=\"b\",source=\"http:1\",outcome=\"accepted\"} 6\n\
        meshlet_ingest_records_total{product=\"b\",source=\"http:1\",outcome=\"rejected\"} 1\n\
        meshlet_build_info{version=\"1.2.3\"} 1\n\
        weird{a=\"q\\\"uote, and more\",b=\"2\"} 7\n\
        not a sample\n";

    #[test]
    fn metrics_parse_with_labels_and_escapes() {
        let samples = parse_metrics(METRICS);
        assert_eq!(
            sum(
                &samples,
                "meshlet_ingest_records_total",
                &[("outcome", "accepted")]
            ),
            10.0
        );
        assert_eq!(
            sum(
                &samples,
                "meshlet_ingest_records_total",
                &[("product", "b")]
            ),
            7.0
        );
        let (labels, value) = &samples["weird"][0];
        assert_eq!(labels["a"], "q\"uote, and more");
        assert_eq!(labels["b"], "2");
        assert_eq!(*value, 7.0);
        assert!(!samples.contains_key("not"));
    }

    #[test]
    fn the_screen_shows_products_rates_and_sync() {
        let before = parse_metrics(METRICS);
        let after = parse_metrics(&METRICS.replace("} 6\n", "} 26\n"));
        let data = serde_json::json!({
            "products": [{ "name": "b", "entities": 3, "quarantineCount": 2,
                "freshness": { "lastUpdate": "2026-01-01T00:00:00Z", "stale": true, "sla": "1m" },
                "quality": { "accepted": 26, "rejected": 1, "quarantined": 2, "duplicates": 0 } }],
            "syncStatus": [{ "name": "central", "pending": 5, "oldestPendingSeconds": 90.0,
                "lastAck": null, "errors": 0, "dropped": 0 }],
            "syncConsumers": [{ "durable": "plant", "filterSubject": "meshlet.sync.>",
                "pending": 12, "ackPending": 3, "redelivered": 1, "naks": 0, "error": null }]
        });
        let screen = render("http://x", &data, &before, &after, Duration::from_secs(2));
        assert!(screen.starts_with("meshlet 1.2.3 at http://x"), "{screen}");
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
            screen.contains("central          pending 5 (oldest 1m 30s), last ack never"),
            "{screen}"
        );
        assert!(
            screen.contains("JetStream durable plant (meshlet.sync.>): pending 12, ack pending 3, redelivered 1, naks 0\n"),
            "{screen}"
        );
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
