//! The hub config: one TOML file plus `MESHLET_*` environment overrides.
//!
//! With no file at all the node runs on the embedded default: data under
//! `./meshlet-data`, products from `./schema/examples` when that folder
//! exists, HTTP on `127.0.0.1:8080`, and one upstream named `central` that
//! is declared but has no transport yet (its outbox waits, bounded, until
//! one is configured). Layering, lowest to highest: built-in defaults → the
//! file → `MESHLET_*` variables (`__` separates levels, e.g.
//! `MESHLET_HTTP__LISTEN=0.0.0.0:8080`) → command-line flags.
//!
//! Every struct refuses unknown keys, so a typo is an error that names the
//! key, never a silently ignored setting.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};

mod store;

pub use store::{DictionaryConfig, StoreConfig};

/// The prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "MESHLET_";

/// Environment variables with the prefix that are not config keys
/// (`MESHLET_TOKEN` is the API token of `meshlet status`).
const ENV_NOT_CONFIG: &[&str] = &["config", "log", "token"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// This node's identity in the mesh; generated once and kept in the data
    /// directory when not set.
    pub node_id: Option<String>,
    /// This node's site: reference-data rules (`sync: - from: …`) may
    /// filter on it with `${node_site}` in their `where`.
    pub node_site: Option<String>,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Product definition files or folders. Empty: `./schema/examples` if it
    /// exists.
    pub products: Vec<PathBuf>,
    pub http: HttpConfig,
    /// `[store]`: the store's own settings type (its path follows
    /// `data_dir`).
    pub store: StoreConfig,
    pub log: LogConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestSettings,
    /// Upstreams that sync rules may name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Who may call the API, and as which role.
    pub security: SecurityConfig,
    /// Outbox budget and sender timing, for every upstream.
    pub sync: SyncSettings,
    /// Receiving sync from edges (`POST /sync/v1`, an MQTT subscription).
    pub aggregator: AggregatorConfig,
    /// The node as a Sparkplug B host application.
    pub sparkplug: SparkplugConfig,
    /// Budgets of API callers: response bytes, concurrent queries and
    /// subscriptions per identity.
    pub api: ApiLimits,
    /// How long shutdown waits for tasks to finish before giving up.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            node_id: None,
            node_site: None,
            data_dir: PathBuf::from("./meshlet-data"),
            products: Vec::new(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            log: LogConfig::default(),
            mqtt: MqttConfig::default(),
            ingest: IngestSettings::default(),
            upstreams: BTreeMap::from([("central".to_string(), UpstreamConfig::default())]),
            security: SecurityConfig::default(),
            sync: SyncSettings::default(),
            aggregator: AggregatorConfig::default(),
            sparkplug: SparkplugConfig::default(),
            api: ApiLimits::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The built-in read-only role (`policy::access::READER`; a test holds
/// the two equal), named here so the config imports no concept.
const BUILT_IN_READER: &str = "reader";

/// `[security]`: API identities and anonymous access.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The token file `meshlet token` writes and the node re-reads;
    /// default `<data_dir>/tokens.json`.
    pub tokens_file: Option<PathBuf>,
    /// The role of callers that present no credential. Absent (or
    /// `"none"`) in a config file: every API call needs a token. The
    /// embedded default (no config file) uses the built-in read-only
    /// `reader` role, which masks fields classified pii, confidential or
    /// restricted.
    pub anonymous_role: Option<String>,
    /// Client certificates (mTLS) → role: keys are a subject CN or
    /// `sha256:<certificate fingerprint>`.
    pub certificates: BTreeMap<String, String>,
}

impl SecurityConfig {
    /// The embedded default: anonymous callers read with personal data
    /// masked.
    pub fn embedded() -> SecurityConfig {
        SecurityConfig {
            anonymous_role: Some(BUILT_IN_READER.to_string()),
            ..SecurityConfig::default()
        }
    }
}

impl HubConfig {
    /// Every problem of the settings themselves, all at once: what
    /// `meshlet check` reports and what start-up refuses with before it
    /// opens anything, so the two cannot disagree. Checks that need a
    /// file, a socket or another module (TLS files, upstream URLs, product
    /// definitions) are the node's preflight (src/node.rs).
    pub fn validate(&self) -> Result<(), ConfigProblems> {
        let mut problems = Vec::new();
        let store = self.store.problems();
        if !store.is_empty() {
            // Worded as the store's own refusal (`StoreError::InvalidConfig`).
            problems.push(format!("store config: {}", store.join("; ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigProblems(problems))
        }
    }

    /// Where the token file is.
    pub fn tokens_file(&self) -> PathBuf {
        self.security
            .tokens_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tokens.json"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener (GraphQL, ingest, health, metrics).
    pub listen: SocketAddr,
    /// Serve GraphiQL at `GET /graphql` (on for the embedded default, off
    /// in the production config example).
    pub graphiql: bool,
    /// HTTPS instead of HTTP when set (`[http.tls]`).
    pub tls: Option<HttpTlsConfig>,
    /// Open HTTP connections at most (default 256); a connection beyond
    /// it gets `503` and is closed, counted in
    /// `meshlet_http_connections_refused_total`. Lowered at start when the
    /// process's descriptor limit cannot hold it next to the broker's.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, from the
    /// connection's start or the previous response (default 30s); an idle
    /// keep-alive connection is closed after it too.
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, from its headers
    /// (default 60s: 8 MiB at ~1.1 Mbit/s); a slower body fails the
    /// request with 408 and closes the connection.
    #[serde(with = "humantime_serde_compat")]
    pub body_read_timeout: Duration,
    /// Browser apps on other origins (`[http.cors]`).
    pub cors: CorsConfig,
    /// Serve the built-in web console at `/` and `/console/*` (default
    /// true). Off, those paths answer 404 and no console file is served;
    /// the API, `/metrics` and health checks are unchanged.
    pub console: bool,
}

/// `[http.cors]`: which pages on other origins may call the API and open
/// the subscription WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins exactly as browsers send them (`https://app.example.com`,
    /// with a port when not the default), or `"*"` for any. Default: none
    /// (only the node's own pages, e.g. GraphiQL).
    pub allow_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            graphiql: true,
            console: true,
            tls: None,
            max_connections: 256,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            cors: CorsConfig::default(),
        }
    }
}

/// TLS on the HTTP listener, optionally with client certificates (mTLS).
/// Files are read once at start; a file that is missing, holds no PEM of
/// the expected kind, or a key that does not match the certificate stops
/// the node with an error naming the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates are verified against. When
    /// absent, the listener does not ask for client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: `required` (the default — a connection without a
    /// valid certificate fails the handshake) or `optional` (no certificate
    /// is fine; a presented one must still verify).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Whether a client certificate is required when a client CA is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Optional,
    #[default]
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive (`info`, `meshlet=debug,sled=warn`);
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Where MQTT messages come from: the embedded broker devices connect to,
/// an external broker the node subscribes to, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub embedded: EmbeddedBrokerConfig,
    /// Off unless configured.
    pub external: Option<ExternalBrokerConfig>,
}

/// The embedded MQTT 3.1.1 broker. It acknowledges a device's QoS 1
/// publish only once the records it produced are on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBrokerConfig {
    pub enabled: bool,
    /// Loopback by default, as Mosquitto 2 does without a config: opening
    /// it to the network (`0.0.0.0:1883`) is a deliberate choice.
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted; a larger one closes the connection
    /// (MQTT 3.1.1 has no way to refuse a single packet). Payloads between
    /// `ingest.max_payload_bytes` and this are read and refused per policy.
    pub max_packet_bytes: usize,
    /// Open connections at most, counted from the moment a socket is
    /// accepted (before its CONNECT): one beyond it gets CONNACK 0x03 and
    /// is closed. Lowered at start when the process's descriptor limit
    /// cannot hold it next to `http.max_connections`.
    pub max_connections: usize,
    /// Largest CONNECT packet (default 16 KiB: client id, will, login); a
    /// larger one closes the connection. Together with `max_connections`
    /// it bounds what sockets that have not connected yet can buffer.
    pub max_connect_bytes: usize,
    /// Bytes all connections together may hold in large packets (over 64
    /// KiB) still arriving (default 64 MiB). A connection whose next large
    /// packet does not fit is not read until others completed theirs
    /// (TCP backpressure), counted in
    /// `meshlet_broker_packet_budget_waits_total`: half-sent packets hold
    /// this budget, not `max_connections` x `max_packet_bytes` of memory.
    pub max_pending_packet_bytes: usize,
    /// How long a new socket may take to send its CONNECT (default 10s).
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// QoS 1/2 publishes of one connection waiting for their durable ack;
    /// when reached, the connection is not read further (TCP backpressure).
    pub max_inflight: usize,
    /// Bytes (topic + payload) all retained messages may hold together
    /// (default 16 MiB). A retained publish beyond it is still ingested and
    /// delivered, but not retained: counted in
    /// `meshlet_broker_retained_refused_total` and logged.
    pub max_retained_bytes: usize,
    /// Subscriptions one client may hold (default 100); beyond it the
    /// filter's SUBACK code is 0x80 (failure), counted.
    pub max_subscriptions: usize,
    /// Bytes of subscription filters one client may hold (default 16 KiB);
    /// beyond it SUBACK 0x80, counted.
    pub max_subscription_bytes: usize,
    /// Bytes of deliveries queued towards one subscriber (default 2 MiB),
    /// and, apart, of the QoS 1/2 deliveries its session holds (in flight
    /// and waiting, also while a persistent session's client is away). A
    /// subscriber that reads slower than messages arrive loses the QoS 0
    /// deliveries beyond it; a QoS 1/2 delivery beyond its session's bytes
    /// is not queued; both counted in
    /// `meshlet_broker_deliveries_dropped_total`. Acks are never dropped.
    pub max_queued_bytes: usize,
    /// A persistent session (`clean_session = false`) whose client stayed
    /// away this long is removed (default 2h, `0s`: never), counted in
    /// `meshlet_broker_sessions_expired_total`. MQTT 3.1.1 leaves this to
    /// the server; MQTT 5 calls it the session expiry interval.
    #[serde(with = "humantime_serde_compat")]
    pub session_expiry: Duration,
    /// Bytes the QoS 1/2 deliveries of all sessions may hold together,
    /// in flight and queued (default 64 MiB): beyond it a delivery is not
    /// queued, counted in `meshlet_broker_deliveries_dropped_total`, so a
    /// fleet of away devices cannot hold `max_queued_bytes` each.
    pub max_session_bytes: usize,
    /// The highest QoS a subscription is granted (default 2; 0, 1 or 2,
    /// more counts as 2): a client asking more gets this in its SUBACK,
    /// and deliveries to it are downgraded to it. QoS 1/2 deliveries are
    /// resent (DUP) when the client reconnects, up to `max_inflight` of
    /// them (or the client's receive maximum) in flight at once.
    pub max_delivery_qos: u8,
    /// Topic aliases an MQTT 5 client may set on its publishes (default
    /// 16, told in CONNACK as `topic_alias_maximum`; 0: none). An alias
    /// outside 1..=this closes the connection with DISCONNECT 0x94.
    pub max_topic_aliases: u16,
    /// Username → password; empty means no authentication.
    pub users: BTreeMap<String, String>,
    /// Username → the topic filters it may subscribe within (default
    /// empty: every user may subscribe to anything). A listed user's
    /// SUBSCRIBE to a filter no pattern covers is refused (SUBACK 0x80 in
    /// 3.1.1, 0x87 not authorized in MQTT 5), counted in
    /// `meshlet_broker_subscriptions_refused_total`.
    pub subscribe_acl: BTreeMap<String, Vec<String>>,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_bytes: 1 << 20,
            max_connections: 1_000,
            max_connect_bytes: 16 * 1024,
            max_pending_packet_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 256,
            max_retained_bytes: 16 << 20,
            max_subscriptions: 100,
            max_subscription_bytes: 16 * 1024,
            max_queued_bytes: 2 << 20,
            session_expiry: Duration::from_secs(2 * 3600),
            max_session_bytes: 64 << 20,
            max_delivery_qos: 2,
            max_topic_aliases: 16,
            users: BTreeMap::new(),
            subscribe_acl: BTreeMap::new(),
        }
    }
}

/// A broker the node subscribes to (Mosquitto, EMQX, HiveMQ...), with a
/// persistent session so what devices publish while the node is down waits
/// in the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalBrokerConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    /// Default `meshlet-<node_id>`: stable, so the broker keeps the session.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA bundle for `mqtts://`; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that require
    /// mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub keep_alive: Duration,
    /// `false` (the default) asks the broker to keep the session and queue
    /// QoS 1 messages while the node is away.
    pub clean_session: bool,
    pub max_packet_bytes: usize,
}

impl Default for ExternalBrokerConfig {
    fn default() -> Self {
        ExternalBrokerConfig {
            url: "mqtt://127.0.0.1:1883".to_string(),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive: Duration::from_secs(30),
            clean_session: false,
            max_packet_bytes: 1 << 20,
        }
    }
}

/// `[sparkplug]`: the node as a Sparkplug 3.0 primary host application,
/// when some product has a `sparkplug` source (otherwise there is no host
/// and nothing here applies).
///
/// Edge nodes configured with a primary host id wait for its `STATE` to
/// say online before they publish, and re-birth when it comes back; a
/// node that hosts Sparkplug sources therefore announces itself by
/// default. Edges without a primary host configured ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparkplugConfig {
    /// Publish `spBv1.0/STATE/<host_id>` (retained, QoS 1): online at
    /// connect, offline on a clean stop or through the MQTT will.
    pub state: bool,
    /// The Sparkplug host id; default `meshlet-<node_id>`. One MQTT topic
    /// level: no `/`, `+` or `#`.
    pub host_id: Option<String>,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        SparkplugConfig {
            state: true,
            host_id: None,
        }
    }
}

/// The default of `ingest.nice`. 5, not 10: both took the lookups' p99
/// under ingest from ~25 ms to the floor of the machine, but at 10 the
/// writer (the thread that limits ingest) lost a tenth of its rate to a
/// broker and publisher at the normal priority on the same cores, and at
/// 5 it lost nothing measurable. benches/README.md ("Ingest at a lower
/// CPU priority") has the runs.
pub const DEFAULT_INGEST_NICE: u8 = 5;

/// Limits and batching shared by every source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Largest payload (MQTT message, HTTP record batch line, file line)
    /// decoded; larger ones are refused per the product's quality policy.
    pub max_payload_bytes: usize,
    /// Largest HTTP push body; larger requests get 413.
    pub max_http_body_bytes: usize,
    /// Recent record fingerprints kept per product to recognise
    /// redeliveries.
    pub dedupe_capacity: u64,
    /// Records the writer gathers into one durability barrier.
    pub batch_max_records: usize,
    /// Write jobs waiting for the writer; when full, sources wait (and
    /// stop reading from their sockets and files).
    pub queue_depth: usize,
    /// How often a tailed file is checked for growth and rotation.
    #[serde(with = "humantime_serde_compat")]
    pub file_poll_interval: Duration,
    /// How many nice levels below the rest of the node the ingest sources
    /// (embedded broker sessions, external broker client, file tails) and
    /// the writer's store work run, 0 to 19. Under contention the cores go
    /// to the API first; ingest gets what is left, and what it has not
    /// read yet waits in the broker. 0 puts ingest on the node's own
    /// threads at the same priority (src/ingest/priority.rs).
    pub nice: IngestNice,
}

/// The highest nice value Linux knows; lower priorities do not exist
/// (`ingest.nice`'s bound, applied by src/ingest/priority.rs).
pub const MAX_NICE: u8 = 19;

/// A nice increment Linux can apply: 0 (none) to 19 (the lowest priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct IngestNice(u8);

impl IngestNice {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for IngestNice {
    type Error = String;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        let max = MAX_NICE;
        match u8::try_from(value) {
            Ok(nice) if nice <= max => Ok(IngestNice(nice)),
            _ => Err(format!(
                "ingest.nice must be 0 to {max} (levels below the node's CPU priority), not {value}"
            )),
        }
    }
}

impl From<IngestNice> for i64 {
    fn from(nice: IngestNice) -> i64 {
        i64::from(nice.0)
    }
}

impl IngestSettings {
    /// Also the decoder's default (`pipeline::Limits`).
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
            max_http_body_bytes: 8 << 20,
            dedupe_capacity: 65_536,
            batch_max_records: 4_096,
            queue_depth: 1_024,
            file_poll_interval: Duration::from_millis(250),
            nice: IngestNice(DEFAULT_INGEST_NICE),
        }
    }
}

/// An upstream of the central mesh. Without a `url` it is parked: sync
/// rules may name it and its outbox fills (within the disk budget) until a
/// transport is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `mqtt://`, `mqtts://` (a broker or broker cluster), `nats://`,
    /// `tls://` (NATS JetStream; several servers of a cluster separated by
    /// commas) or `https://` (`http://` for tests and trusted links) of an
    /// upstream meshlet in aggregator mode.
    pub url: Option<String>,
    /// MQTT: envelopes go to `<topic_prefix>/<origin node>/<product>`.
    pub topic_prefix: String,
    /// MQTT: default `meshlet-sync-<node_id>-<upstream>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// HTTPS: sent as `Authorization: Bearer <token>`. NATS: the
    /// server's auth token.
    pub token: Option<String>,
    /// PEM CA bundle for TLS; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// This upstream's outbox budget; `sync.max_outbox_bytes` when absent.
    pub max_outbox_bytes: Option<u64>,
    /// NATS: the JetStream stream envelopes go into. Default `MESHLET_SYNC`.
    pub stream: String,
    /// NATS: envelopes go to `<subject_prefix>.<origin node>.<product>`.
    /// Default `meshlet.sync`.
    pub subject_prefix: String,
    /// NATS: create the stream (subjects `<subject_prefix>.>`) when it does
    /// not exist. `false`: it must exist; until it does, sends fail and are
    /// retried (counted in `meshlet_sync_errors_total`). Default true.
    pub create_stream: bool,
    /// NATS: replicas of a stream this node creates (1, or 3 or 5 on a
    /// JetStream cluster). Default 1.
    pub stream_replicas: usize,
    /// NATS: the duplicate window of a stream this node creates: a resend
    /// with the same `Nats-Msg-Id` within it is dropped by JetStream.
    /// Longer than `sync.retry_max`, so a resend after an unseen ack falls
    /// in it. Default 10m.
    #[serde(with = "humantime_serde_compat")]
    pub duplicate_window: Duration,
    /// NATS: how long a stream this node creates keeps a message (consumed
    /// or not: a `limits` stream). "0s": no age limit. Default 7d.
    #[serde(with = "humantime_serde_compat")]
    pub stream_max_age: Duration,
    /// NATS: bytes a stream this node creates may hold; when full it
    /// refuses new messages (the edges keep them in their outboxes) rather
    /// than dropping old ones. 0: up to the server's own limits. Default 0.
    pub stream_max_bytes: u64,
    /// NATS: a credentials file (`.creds`: user JWT and nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// NATS: the JetStream key-value bucket reference data lives in
    /// (`sync: - from: <upstream>` rules watch it; an upstream with
    /// `publish = "reference"` writes it). Default `meshlet_reference`.
    pub reference_bucket: String,
    /// NATS: where this node's `sync: - to:` rules for this upstream go:
    /// `stream` (envelopes into the sync stream, the default) or
    /// `reference` (each instance put into `reference_bucket`, keyed
    /// `<product>.<entity>`, for edges to watch).
    pub publish: PublishMode,
    /// `https://` (or `http://`) API of the aggregator behind a NATS or
    /// MQTT upstream, for `meshlet sync verify` and `sync.verify_interval`
    /// (its digests are read over HTTP); an HTTPS upstream's own `url`
    /// when absent.
    pub verify_url: Option<String>,
}

/// Where an upstream's sends go (`upstreams.<name>.publish`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Envelopes into the sync stream (or to the aggregator).
    #[default]
    Stream,
    /// Instances into the reference key-value bucket (NATS only).
    Reference,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: None,
            topic_prefix: "meshlet/sync".to_string(),
            client_id: None,
            username: None,
            password: None,
            token: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            max_outbox_bytes: None,
            stream: DEFAULT_NATS_STREAM.to_string(),
            subject_prefix: DEFAULT_NATS_SUBJECT_PREFIX.to_string(),
            create_stream: true,
            stream_replicas: 1,
            duplicate_window: Duration::from_secs(600),
            stream_max_age: Duration::from_secs(7 * 86_400),
            stream_max_bytes: 0,
            credentials_file: None,
            reference_bucket: DEFAULT_REFERENCE_BUCKET.to_string(),
            publish: PublishMode::Stream,
            verify_url: None,
        }
    }
}

/// `[api]`: what one caller may take of the node through the API, so a
/// few heavy (but legal) requests cannot crowd out everyone else. An
/// identity is a token, a client certificate, or all anonymous callers
/// together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Largest answer of one request, in bytes: a GraphQL response over it
    /// is replaced by a `RESPONSE_TOO_LARGE` error, a quarantine listing
    /// stops at it with a cursor to the next page. Default 16 MiB.
    pub max_response_bytes: usize,
    /// GraphQL queries and mutations one identity runs at once; a
    /// response counts until it has been written to the client. 0 (the
    /// default): half the CPU cores, at least 1 — so one identity's heavy
    /// queries always leave cores to the others (a slot is a core busy
    /// executing or serialising; more slots than cores only queue inside
    /// the runtime, ahead of everyone else's queries).
    pub max_concurrent_queries: usize,
    /// How long a query waits for one of its identity's slots before it is
    /// refused with 429 (`TOO_MANY_CONCURRENT_QUERIES`). Default 2s.
    #[serde(with = "humantime_serde_compat")]
    pub queue_timeout: Duration,
    /// Subscriptions open at once on one WebSocket. Default 100.
    pub max_subscriptions_per_connection: usize,
    /// Subscriptions open at once for one identity, over all its
    /// connections. Default 1000.
    pub max_subscriptions_per_identity: usize,
    /// Query texts kept for automatic persisted queries (Apollo APQ:
    /// clients then send only the SHA-256), in bytes over all texts;
    /// registering past it forgets the oldest. 0 turns APQ off (every
    /// hash-only request gets `PERSISTED_QUERY_NOT_FOUND`). Default 1 MiB.
    pub max_persisted_query_bytes: usize,
}

impl ApiLimits {
    /// The query slots of one identity: `max_concurrent_queries`, or half
    /// the CPU cores (at least 1) when it is 0.
    pub fn concurrent_queries(&self) -> usize {
        match self.max_concurrent_queries {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() / 2)
                .unwrap_or(1)
                .max(1),
            n => n,
        }
    }
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_response_bytes: 16 << 20,
            max_concurrent_queries: 0,
            queue_timeout: Duration::from_secs(2),
            max_subscriptions_per_connection: 100,
            max_subscriptions_per_identity: 1_000,
            max_persisted_query_bytes: 1 << 20,
        }
    }
}

/// Outbox budget and sender timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Pending bytes per upstream before the overflow rule applies
    /// (coalesce history to the latest state per entity, then drop the
    /// lowest priority, oldest first; tombstones are never dropped).
    pub max_outbox_bytes: u64,
    /// Back-off while an upstream is away: from `retry_min`, doubling with
    /// jitter, up to `retry_max`.
    #[serde(with = "humantime_serde_compat")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub retry_max: Duration,
    /// How long one send may take before it counts as failed.
    #[serde(with = "humantime_serde_compat")]
    pub send_timeout: Duration,
    /// How often each upstream's digests are compared with the
    /// aggregator's and what differs is sent again (`meshlet sync
    /// verify`, periodically). "0s" (default): never.
    #[serde(with = "humantime_serde_compat")]
    pub verify_interval: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            max_outbox_bytes: 64 << 20,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            verify_interval: Duration::ZERO,
        }
    }
}

/// Aggregator mode: this node accepts envelopes from edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Recompute the digests of what this node holds of each edge from
    /// its instances at start, so records lost or edited behind the
    /// store's back (a restore, a disk fault, an offline edit) show up in
    /// `meshlet sync verify`. It is a full read of the store (seconds per
    /// 100k entities: benches/README.md), so default false: they are then
    /// rebuilt only once, for a store that predates them.
    pub digest_rebuild_on_start: bool,
    /// Serve `POST /sync/v1`.
    pub enabled: bool,
    /// Also subscribe to `<topic_prefix>/+/+` on this broker.
    pub mqtt: Option<ExternalBrokerConfig>,
    /// The prefix edges publish under (their upstream's `topic_prefix`).
    pub topic_prefix: Option<String>,
    /// Also consume envelopes from a NATS JetStream stream.
    pub nats: Option<AggregatorNatsConfig>,
}

/// The JetStream stream edges' `nats://` upstreams publish into.
/// The default reference key-value bucket.
pub const DEFAULT_REFERENCE_BUCKET: &str = "meshlet_reference";
pub const DEFAULT_NATS_STREAM: &str = "MESHLET_SYNC";
/// The subject prefix of edges' `nats://` upstreams.
pub const DEFAULT_NATS_SUBJECT_PREFIX: &str = "meshlet.sync";

/// `[aggregator.nats]`: a durable pull consumer on the sync stream.
/// Aggregators with the same `durable` share its messages (one domain's
/// load spread over several nodes); aggregators with different
/// `filter_subject`s (and so different `durable`s) each take their own
/// products — `meshlet.sync.*.machine_health` takes one product from every
/// edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorNatsConfig {
    /// `nats://` or `tls://` servers, separated by commas. Required.
    pub url: String,
    /// The stream to consume. It must exist (edges create it); until it
    /// does, the consumer retries with back-off. Default `MESHLET_SYNC`.
    pub stream: String,
    /// The durable consumer's name. Default `meshlet-aggregator`.
    pub durable: String,
    /// Subjects this consumer takes. Default `meshlet.sync.>` (every
    /// product of every edge).
    pub filter_subject: String,
    /// How long JetStream waits for this node's ack before it redelivers a
    /// message (to any node on the durable). Default 30s.
    #[serde(with = "humantime_serde_compat")]
    pub ack_wait: Duration,
    /// Messages delivered and not yet acknowledged, over every node on the
    /// durable: the bound on what a crash leaves to redeliver. Default 1024.
    pub max_ack_pending: i64,
    /// Messages one pull asks for (this node's in-memory bound). Default 64.
    pub batch: usize,
    /// When an envelope cannot be applied yet (a product this node does
    /// not know, a store error), it is not acknowledged: JetStream
    /// redelivers it after this delay. Default 5s.
    #[serde(with = "humantime_serde_compat")]
    pub retry_delay: Duration,
    /// The server's auth token.
    pub token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A credentials file (`.creds`: user JWT and nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// PEM CA bundle for TLS; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key (mutual TLS).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for AggregatorNatsConfig {
    fn default() -> Self {
        AggregatorNatsConfig {
            url: String::new(),
            stream: DEFAULT_NATS_STREAM.to_string(),
            durable: "meshlet-aggregator".to_string(),
            filter_subject: format!("{DEFAULT_NATS_SUBJECT_PREFIX}.>"),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
            batch: 64,
            retry_delay: Duration::from_secs(5),
            token: None,
            username: None,
            password: None,
            credentials_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl HubConfig {
    /// The names sync rules may use as `to:`.
    pub fn upstream_names(&self) -> BTreeSet<String> {
        self.upstreams.keys().cloned().collect()
    }

    /// The product paths to load: the configured ones, or the examples
    /// folder under the current directory when none are configured.
    pub fn product_paths(&self) -> Vec<PathBuf> {
        if !self.products.is_empty() {
            return self.products.clone();
        }
        let examples = PathBuf::from("./schema/examples");
        if examples.is_dir() {
            vec![examples]
        } else {
            Vec::new()
        }
    }
}

/// Why a hub config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}")]
    Override(String),
}

/// What [`HubConfig::validate`] found: one line per problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigProblems(pub Vec<String>);

/// Loads the config: defaults, then `file` when given, then the `MESHLET_*`
/// variables of the process environment.
pub fn load(file: Option<&Path>) -> Result<HubConfig, ConfigError> {
    load_with_env(file, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not mutate the
/// process's own.
pub fn load_with_env(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<HubConfig, ConfigError> {
    let base = match file {
        Some(path) => parse_file(path)?,
        None => HubConfig {
            security: SecurityConfig::embedded(),
            ..HubConfig::default()
        },
    };
    apply_env(base, env)
}

/// Parses one TOML file. Parsed directly with `toml` (not through
/// figment) because its errors carry a byte span we turn into line and
/// column.
fn parse_file(path: &Path) -> Result<HubConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str::<HubConfig>(&text).map_err(|err| {
        let (line, column) = err
            .span()
            .map(|span| line_column(&text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: err.message().trim().to_string(),
        }
    })
}

/// Layers `MESHLET_*` variables over `base`; figment names the variable in
/// its errors.
fn apply_env(
    base: HubConfig,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<HubConfig, ConfigError> {
    let vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .filter(|(name, _)| {
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            !ENV_NOT_CONFIG.contains(&key.as_str())
        })
        .collect();
    if vars.is_empty() {
        return Ok(base);
    }
    let figment = Figment::from(Serialized::defaults(&base)).merge(EnvSnapshot {
        vars: vars.into_iter().collect(),
    });
    figment
        .extract::<HubConfig>()
        .map_err(|err| ConfigError::Override(render_figment_error(err)))
}

fn render_figment_error(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figment provider over a given set of environment variables (not the
/// process's own, so tests stay hermetic), mapped as figment's `Env` maps
/// them: prefix stripped, lowercased, `__` nests.
struct EnvSnapshot {
    vars: BTreeMap<String, String>,
}

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable").interpolater(|_, keys| {
            let key = keys.join("__").to_ascii_uppercase();
            format!("{ENV_PREFIX}{key}")
        })
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, raw) in &self.vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|part| part.to_ascii_lowercase())
                .collect();
            // Parsed the way figment's `Env` parses: numbers, booleans,
            // arrays (`[a, b]`) and dicts become typed; the rest stays text.
            let value = match raw.parse::<figment::value::Value>() {
                Ok(value) => value,
                Err(never) => match never {},
            };
            insert_nested(&mut dict, &path, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_nested(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| figment::value::Dict::new().into());
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Durations in the config as humantime text (`10s`, `2m`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`: {e}; expected e.g. 10s, 5m, 1h"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn no_file_means_the_embedded_default() {
        let config = load_with_env(None, env(&[])).expect("defaults load");
        // The embedded default lets anonymous callers read, masked; a
        // config file must say so itself.
        assert_eq!(
            config,
            HubConfig {
                security: SecurityConfig::embedded(),
                ..HubConfig::default()
            }
        );
        assert_eq!(
            config.security.anonymous_role.as_deref(),
            Some(crate::policy::access::READER)
        );
        let file = write("data_dir = \"d\"\n");
        let from_file = load_with_env(Some(file.path()), env(&[])).expect("file loads");
        assert_eq!(from_file.security.anonymous_role, None);
        assert_eq!(from_file.tokens_file(), PathBuf::from("d/tokens.json"));
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./meshlet-data"));
        assert!(config.upstream_names().contains("central"));
    }

    #[test]
    fn file_values_override_defaults_and_keep_the_rest() {
        let file = write(
            "node_id = \"gw-7\"\n[http]\nlisten = \"0.0.0.0:9000\"\n[upstreams.hq]\nurl = \"mqtts://hq:8883\"\n",
        );
        let config = load_with_env(Some(file.path()), env(&[])).expect("loads");
        assert_eq!(config.node_id.as_deref(), Some("gw-7"));
        assert_eq!(config.http.listen.to_string(), "0.0.0.0:9000");
        assert!(config.http.graphiql, "unset keys keep their default");
        assert_eq!(
            config.upstream_names(),
            BTreeSet::from(["hq".to_string()]),
            "an explicit upstream table replaces the default one"
        );
    }

    /// schema/README.md's NATS JetStream sample, as written, is a valid config.
    #[test]
    fn the_readme_nats_sample_loads() {
        let readme = include_str!("../schema/README.md");
        let block = readme
            .split("### The central mesh on NATS JetStream")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("README has the NATS sample");
        let file = write(block);
        let config = load_with_env(Some(file.path()), env(&[])).expect("loads");
        let central = config.upstreams.get("central").expect("central");
        assert_eq!(central.stream_replicas, 3);
        assert_eq!(central.duplicate_window, Duration::from_secs(600));
        let nats = config.aggregator.nats.expect("aggregator.nats");
        assert_eq!(nats.filter_subject, "meshlet.sync.*.machine_health");
        assert_eq!(nats.ack_wait, AggregatorNatsConfig::default().ack_wait);
    }

    #[test]
    fn env_overrides_the_file() {
        let file = write("[http]\nlisten = \"0.0.0.0:9000\"\n");
        let config = load_with_env(
            Some(file.path()),
            env(&[
                ("MESHLET_HTTP__LISTEN", "127.0.0.1:7001"),
                ("MESHLET_DATA_DIR", "/var/lib/meshlet"),
                ("MESHLET_STORE__ZSTD_LEVEL", "9"),
                ("MESHLET_CONFIG", "ignored.toml"),
                ("OTHER_VAR", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/meshlet"));
        assert_eq!(config.store.zstd_level, 9);
    }

    #[test]
    fn unknown_key_in_file_names_file_line_and_column() {
        let file = write("[http]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n");
        let err = load_with_env(Some(file.path()), env(&[])).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "{}:3:1: unknown field `listne`",
                file.path().display()
            )),
            "{text}"
        );
        assert!(
            text.contains("expected one of `listen`, `graphiql`, `tls`"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_in_file_is_located() {
        let file = write("shutdown_grace = \"ten seconds\"\n");
        let err = load_with_env(Some(file.path()), env(&[])).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(":1:18: invalid duration `ten seconds`"),
            "{text}"
        );
    }

    #[test]
    fn ingest_nice_outside_what_linux_knows_is_refused_where_it_is_written() {
        for (value, column) in [("20", 8), ("-1", 8), ("300", 8)] {
            let file = write(&format!("[ingest]\nnice = {value}\n"));
            let err = load_with_env(Some(file.path()), env(&[])).expect_err("refused");
            let text = err.to_string();
            assert!(
                text.contains(&format!(":2:{column}: ingest.nice must be 0 to 19"))
                    && text.contains(value),
                "{text}"
            );
        }
        let file = write("[ingest]\nnice = 19\n");
        let config = load_with_env(Some(file.path()), env(&[])).expect("19 loads");
        assert_eq!(config.ingest.nice.get(), 19);
        let config = load_with_env(None, env(&[("MESHLET_INGEST__NICE", "0")])).expect("0 loads");
        assert_eq!(config.ingest.nice.get(), 0);
        let err = load_with_env(None, env(&[("MESHLET_INGEST__NICE", "42")])).expect_err("refused");
        assert!(
            err.to_string().contains("ingest.nice must be 0 to 19"),
            "{err}"
        );
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let err = load_with_env(None, env(&[("MESHLET_HTTP__LISTEN", "not-an-address")]))
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("MESHLET_HTTP__LISTEN"), "{text}");
        let err = load_with_env(None, env(&[("MESHLET_HTTP__LISTNE", "1")])).expect_err("refused");
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = load_with_env(Some(Path::new("/nonexistent/meshlet.toml")), env(&[]))
            .expect_err("refused");
        assert!(err
            .to_string()
            .starts_with("cannot read config file /nonexistent/meshlet.toml"));
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é=1", 2), (1, 2));
    }
}
