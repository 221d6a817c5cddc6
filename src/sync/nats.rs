//! The NATS JetStream transport (`nats://`, `tls://`): each envelope is
//! one JetStream publish to `<subject_prefix>.<origin>.<product>` with
//! `Nats-Msg-Id` = `<origin>/<link>/<lane>/<first seq>-<last seq>`, and
//! JetStream's publish ack — the message is stored (on a quorum of the
//! stream's replicas) — is the acknowledgement. A resend of the same
//! envelope within the stream's duplicate window is dropped by JetStream;
//! one after it is dropped by the aggregator's marks. The id names both
//! ends because a resend may carry more entries than the first try (the
//! outbox grew meanwhile): it must not be dropped as the shorter one.
//!
//! The stream (subjects `<subject_prefix>.>`) is created when missing, with
//! the configured replicas, duplicate window, age and size limits (full:
//! it refuses new messages, which stay in the outbox), or must exist
//! (`create_stream = false`). Dots in an origin node id become `_` in the
//! subject (a dot separates subject tokens); the envelope carries the id
//! as it is.
//!
//! An envelope over the server's `max_payload` is refused by the client
//! before anything is sent ([`TransportError::TooLarge`]): the sender
//! sends it again with fewer records.
//!
//! The connection (TLS through the same rustls setup as the MQTT and HTTPS
//! clients, token, user and password, or a `.creds` file) is made on first
//! use; async-nats reconnects it in the background, and a publish whose ack
//! does not come fails after the client's ack timeout (or the sender's
//! `send_timeout`) and is retried with back-off.

#[cfg(feature = "nats")]
use std::time::Duration;

#[cfg(feature = "nats")]
use async_nats::jetstream;
#[cfg(feature = "nats")]
use async_nats::{ConnectOptions, ServerAddr};

use super::TransportError;
use crate::config::{AggregatorNatsConfig, UpstreamConfig};

/// How long connecting to a server may take.
#[cfg(feature = "nats")]
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to connect: the part an upstream and an aggregator share.
#[cfg(feature = "nats")]
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    servers: Vec<ServerAddr>,
    tls: Option<rustls::ClientConfig>,
    require_tls: bool,
    token: Option<String>,
    user: Option<(String, String)>,
    credentials: Option<String>,
}

/// The settings [`Endpoint::new`] reads, borrowed from either config
/// (without `nats`, only the `url` its refusal names).
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) struct EndpointSettings<'a> {
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub credentials_file: Option<&'a std::path::Path>,
    pub ca_file: Option<&'a std::path::Path>,
    pub client_cert_file: Option<&'a std::path::Path>,
    pub client_key_file: Option<&'a std::path::Path>,
}

impl<'a> EndpointSettings<'a> {
    pub fn of_upstream(url: &'a str, c: &'a UpstreamConfig) -> Self {
        EndpointSettings {
            url,
            token: c.token.as_deref(),
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            credentials_file: c.credentials_file.as_deref(),
            ca_file: c.ca_file.as_deref(),
            client_cert_file: c.client_cert_file.as_deref(),
            client_key_file: c.client_key_file.as_deref(),
        }
    }

    pub fn of_aggregator(c: &'a AggregatorNatsConfig) -> Self {
        EndpointSettings {
            url: &c.url,
            token: c.token.as_deref(),
            username: c.username.as_deref(),
            password: c.password.as_deref(),
            credentials_file: c.credentials_file.as_deref(),
            ca_file: c.ca_file.as_deref(),
            client_cert_file: c.client_cert_file.as_deref(),
            client_key_file: c.client_key_file.as_deref(),
        }
    }
}

/// Whether `url` names NATS servers.
pub(crate) fn is_nats_url(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

#[cfg(feature = "nats")]
impl Endpoint {
    /// Checks and reads everything (URLs, TLS files, credentials) without
    /// connecting.
    pub fn new(settings: &EndpointSettings<'_>) -> Result<Endpoint, TransportError> {
        let bad =
            |reason: String| TransportError::Config(format!("url `{}`: {reason}", settings.url));
        let mut servers = Vec::new();
        let mut require_tls = false;
        for url in settings
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            if !is_nats_url(url) {
                return Err(bad(format!("`{url}`: expected nats:// or tls://")));
            }
            require_tls |= url.starts_with("tls://");
            servers.push(
                url.parse::<ServerAddr>()
                    .map_err(|e| bad(format!("`{url}`: {e}")))?,
            );
        }
        if servers.is_empty() {
            return Err(bad("no server".to_string()));
        }
        let wants_tls = require_tls
            || settings.ca_file.is_some()
            || settings.client_cert_file.is_some()
            || settings.client_key_file.is_some();
        let tls = if wants_tls {
            Some(
                crate::tls::client_config(
                    settings.ca_file,
                    settings.client_cert_file,
                    settings.client_key_file,
                )
                .map_err(|e| TransportError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let credentials = match settings.credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    TransportError::Config(format!("credentials_file `{}`: {e}", path.display()))
                })?;
                // Parsed here so a bad file is refused at start.
                ConnectOptions::with_credentials(&text).map_err(|e| {
                    TransportError::Config(format!("credentials_file `{}`: {e}", path.display()))
                })?;
                Some(text)
            }
            None => None,
        };
        let user = match (settings.username, settings.password) {
            (Some(u), p) => Some((u.to_string(), p.unwrap_or_default().to_string())),
            (None, Some(_)) => return Err(bad("a password without a username".to_string())),
            (None, None) => None,
        };
        Ok(Endpoint {
            servers,
            tls,
            require_tls,
            token: settings.token.map(str::to_string),
            user,
            credentials,
        })
    }

    /// Connects (the client then reconnects by itself while it lives).
    pub async fn connect(&self, name: String) -> Result<async_nats::Client, TransportError> {
        let mut options = match &self.credentials {
            Some(text) => ConnectOptions::with_credentials(text)
                .map_err(|e| TransportError::Config(e.to_string()))?,
            None => ConnectOptions::new(),
        };
        options = options
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .require_tls(self.require_tls);
        if let Some(tls) = &self.tls {
            options = options.tls_client_config(tls.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        options
            .connect(self.servers.as_slice())
            .await
            .map_err(|e| TransportError::Unreachable(format!("NATS: {e}")))
    }
}

/// A key-value bucket name: `[A-Za-z0-9_-]+`.
pub(crate) fn check_bucket_name(name: &str) -> Result<(), TransportError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(TransportError::Config(format!(
            "reference_bucket `{name}`: a key-value bucket name is made of letters, digits, `_` and `-`"
        )));
    }
    Ok(())
}

/// The reference bucket: found, or created (one value per key, file
/// storage, `replicas`) when `create` — the publishing side; edges only
/// look it up, and wait (retrying) until a publisher made it.
#[cfg(feature = "nats")]
pub(crate) async fn open_bucket(
    context: &jetstream::Context,
    bucket: &str,
    create: bool,
    replicas: usize,
) -> Result<jetstream::kv::Store, TransportError> {
    if let Ok(kv) = context.get_key_value(bucket).await {
        return Ok(kv);
    }
    if !create {
        return Err(TransportError::Unreachable(format!(
            "key-value bucket `{bucket}` is not there (yet)"
        )));
    }
    // The bucket's stream made here as async-nats' `create_key_value`
    // makes it (`KV_<bucket>`, `$KV.<bucket>.>`, rollups, direct gets),
    // without its account-info query, which fails to parse the answer of
    // servers before 2.10 (Debian's 2.9).
    context
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("meshlet reference data (sync: - from: rules)".to_string()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_message_size: -1,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: replicas.max(1),
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            TransportError::Unreachable(format!(
                "key-value bucket `{bucket}` could not be created: {e}"
            ))
        })?;
    context
        .get_key_value(bucket)
        .await
        .map_err(|e| TransportError::Unreachable(format!("key-value bucket `{bucket}`: {e}")))
}

/// The subject token of an origin node id.
#[cfg(feature = "nats")]
pub(crate) fn subject_token(id: &str) -> String {
    id.replace('.', "_")
}

/// The message id JetStream deduplicates on.
#[cfg(feature = "nats")]
pub(crate) fn message_id(origin: &str, link: &str, lane: u8, first: u64, last: u64) -> String {
    format!("{origin}/{link}/{lane}/{first}-{last}")
}

#[cfg(feature = "nats")]
pub struct NatsTransport {
    endpoint: Endpoint,
    client_name: String,
    stream: String,
    subject_prefix: String,
    create_stream: bool,
    replicas: usize,
    duplicate_window: Duration,
    max_age: Duration,
    max_bytes: i64,
    origin_token: String,
    context: Option<jetstream::Context>,
    /// Set once the stream was found or created on this connection.
    stream_ready: bool,
    /// `publish = "reference"`: sends are puts into this bucket.
    reference_bucket: Option<String>,
    /// The bucket, once found or created on this connection.
    kv: Option<jetstream::kv::Store>,
}

#[cfg(feature = "nats")]
impl NatsTransport {
    pub fn new(
        upstream: &str,
        url: &str,
        config: &UpstreamConfig,
        origin: &str,
    ) -> Result<NatsTransport, TransportError> {
        let endpoint = Endpoint::new(&EndpointSettings::of_upstream(url, config))?;
        let prefix = config.subject_prefix.trim_end_matches('.').to_string();
        if prefix.is_empty() || prefix.contains(['*', '>', ' ']) {
            return Err(TransportError::Config(format!(
                "subject_prefix `{}`: must be a plain NATS subject (no wildcards, no spaces)",
                config.subject_prefix
            )));
        }
        check_bucket_name(&config.reference_bucket)?;
        if config.stream.is_empty() || config.stream.contains(['.', '*', '>', ' ', '/']) {
            return Err(TransportError::Config(format!(
                "stream `{}`: a JetStream stream name has no `.`, `*`, `>`, `/` or spaces",
                config.stream
            )));
        }
        Ok(NatsTransport {
            endpoint,
            client_name: format!("meshlet-sync-{origin}-{upstream}"),
            stream: config.stream.clone(),
            subject_prefix: prefix,
            create_stream: config.create_stream,
            replicas: config.stream_replicas.max(1),
            duplicate_window: config.duplicate_window,
            max_age: config.stream_max_age,
            max_bytes: match config.stream_max_bytes {
                0 => -1,
                n => i64::try_from(n).unwrap_or(i64::MAX),
            },
            origin_token: subject_token(origin),
            context: None,
            stream_ready: false,
            reference_bucket: (config.publish == crate::config::PublishMode::Reference)
                .then(|| config.reference_bucket.clone()),
            kv: None,
        })
    }

    /// Whether sends are key-value puts (`publish = "reference"`).
    pub fn publishes_reference(&self) -> bool {
        self.reference_bucket.is_some()
    }

    /// Puts each record of `envelope` into the reference bucket (a
    /// tombstone deletes its key); Ok once JetStream stored every one.
    /// A failure part-way leaves the whole envelope in the outbox: the
    /// puts already made are made again, which only moves revisions.
    pub async fn put_reference(
        &mut self,
        envelope: &super::envelope::Envelope,
    ) -> Result<(), TransportError> {
        let Some(bucket) = self.reference_bucket.clone() else {
            return Err(TransportError::Config("not a reference upstream".into()));
        };
        let kv = match &self.kv {
            Some(kv) => kv.clone(),
            None => {
                let context = self.context().await?;
                let kv = open_bucket(&context, &bucket, self.create_stream, self.replicas).await?;
                self.kv = Some(kv.clone());
                kv
            }
        };
        let result = async {
            for record in &envelope.records {
                let key = super::reference::kv_key(&record.product, &record.entity);
                if record.tombstone {
                    kv.delete(&key).await.map_err(|e| {
                        TransportError::Unreachable(format!("reference delete `{key}`: {e}"))
                    })?;
                    continue;
                }
                let value = super::reference::ReferenceValue {
                    entity: record.entity.clone(),
                    event_time: record.event_time,
                    definition_version: record.definition_version,
                    fields: record.fields.clone(),
                }
                .encode()
                .map_err(TransportError::Store)?;
                kv.put(&key, value.into()).await.map_err(|e| {
                    TransportError::Unreachable(format!("reference put `{key}`: {e}"))
                })?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // The bucket may have gone: look again next time.
            self.kv = None;
        }
        result
    }

    async fn context(&mut self) -> Result<jetstream::Context, TransportError> {
        if let Some(context) = &self.context {
            return Ok(context.clone());
        }
        let client = self.endpoint.connect(self.client_name.clone()).await?;
        let context = jetstream::new(client);
        self.context = Some(context.clone());
        Ok(context)
    }

    /// Finds the stream, or creates it (when allowed).
    async fn ensure_stream(&mut self, context: &jetstream::Context) -> Result<(), TransportError> {
        if self.stream_ready {
            return Ok(());
        }
        if self.create_stream {
            context
                .get_or_create_stream(jetstream::stream::Config {
                    name: self.stream.clone(),
                    subjects: vec![format!("{}.>", self.subject_prefix)],
                    num_replicas: self.replicas,
                    duplicate_window: self.duplicate_window,
                    max_age: self.max_age,
                    max_bytes: self.max_bytes,
                    // Full: refuse new messages (they stay in the edges'
                    // outboxes), never drop unconsumed old ones.
                    discard: jetstream::stream::DiscardPolicy::New,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    TransportError::Unreachable(format!(
                        "JetStream stream `{}` could not be found or created: {e}",
                        self.stream
                    ))
                })?;
        } else {
            context.get_stream(&self.stream).await.map_err(|e| {
                TransportError::Unreachable(format!(
                    "JetStream stream `{}` is not there (create_stream = false): {e}",
                    self.stream
                ))
            })?;
        }
        self.stream_ready = true;
        Ok(())
    }

    /// Publishes one encoded envelope; Ok once JetStream stored it.
    pub async fn send(
        &mut self,
        product: &str,
        message_id: String,
        body: Vec<u8>,
    ) -> Result<(), TransportError> {
        let context = self.context().await?;
        self.ensure_stream(&context).await?;
        let subject = format!("{}.{}.{}", self.subject_prefix, self.origin_token, product);
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(message_id);
        let result = async {
            context
                .send_publish(subject, publish)
                .await
                .map_err(|e| match e.kind() {
                    // Checked by the client against the server's limit:
                    // nothing was sent.
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                        TransportError::TooLarge(e.to_string())
                    }
                    _ => TransportError::Unreachable(format!("NATS publish: {e}")),
                })?
                .await
                .map_err(|e| TransportError::Unreachable(format!("JetStream publish ack: {e}")))
        }
        .await;
        let ack = match result {
            Ok(ack) => ack,
            Err(e @ TransportError::TooLarge(_)) => return Err(e),
            Err(e) => {
                // The stream may have gone (or never matched): look again.
                self.stream_ready = false;
                return Err(e);
            }
        };
        if ack.stream != self.stream {
            return Err(TransportError::Refused(format!(
                "subject stored by stream `{}`, not `{}` (two streams overlap on `{}.>`)",
                ack.stream, self.stream, self.subject_prefix
            )));
        }
        Ok(())
    }
}

/// Why a `nats://` or `tls://` setting is refused by a build without the
/// `nats` feature (a gateway build that leaves async-nats out).
#[cfg(not(feature = "nats"))]
const UNAVAILABLE: &str =
    "this meshlet was built without the `nats` feature (cargo build --features nats)";

/// Without the `nats` feature no endpoint exists: [`Endpoint::new`]
/// refuses every setting, so nothing that would connect (a transport, a
/// reference watch, a JetStream consumer) can be made, and `meshlet check`
/// and `serve` name the missing feature.
#[cfg(not(feature = "nats"))]
#[derive(Clone, Debug)]
pub(crate) enum Endpoint {}

#[cfg(not(feature = "nats"))]
impl Endpoint {
    pub fn new(settings: &EndpointSettings<'_>) -> Result<Endpoint, TransportError> {
        Err(unavailable(settings.url))
    }
}

/// The refusal of a NATS `url` by a build without the `nats` feature.
#[cfg(not(feature = "nats"))]
pub(crate) fn unavailable(url: &str) -> TransportError {
    TransportError::Config(format!("url `{url}`: {UNAVAILABLE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "nats")]
    #[test]
    fn settings_are_checked_without_connecting() {
        let config = UpstreamConfig::default();
        let ok = |url: &str| {
            NatsTransport::new("central", url, &config, "gw.1").map(|t| t.servers_len())
        };
        assert_eq!(ok("nats://127.0.0.1:4222").ok(), Some(1));
        assert_eq!(
            ok("nats://127.0.0.1:4222, nats://127.0.0.1:4223").ok(),
            Some(2)
        );
        assert!(matches!(ok("http://x:1"), Err(TransportError::Config(_))));
        assert!(matches!(ok(","), Err(TransportError::Config(_))));
        let bad = UpstreamConfig {
            subject_prefix: "a.*".into(),
            ..UpstreamConfig::default()
        };
        assert!(NatsTransport::new("central", "nats://h:1", &bad, "gw").is_err());
        let bad = UpstreamConfig {
            stream: "a.b".into(),
            ..UpstreamConfig::default()
        };
        assert!(NatsTransport::new("central", "nats://h:1", &bad, "gw").is_err());
        let missing = UpstreamConfig {
            credentials_file: Some("/nonexistent/x.creds".into()),
            ..UpstreamConfig::default()
        };
        assert!(matches!(
            NatsTransport::new("central", "nats://h:1", &missing, "gw"),
            Err(TransportError::Config(_))
        ));
    }

    /// A build without `nats` refuses every NATS setting at check and
    /// start, naming the feature (never a silently parked upstream).
    #[cfg(not(feature = "nats"))]
    #[test]
    fn a_build_without_the_feature_refuses_nats_settings_by_name() {
        for url in ["nats://127.0.0.1:4222", "tls://h:4222"] {
            let upstream = UpstreamConfig {
                url: Some(url.into()),
                ..UpstreamConfig::default()
            };
            let err = crate::sync::check_upstream("central", &upstream, "gw")
                .expect_err("refused")
                .to_string();
            assert!(err.contains("`nats` feature") && err.contains(url), "{err}");
        }
        let aggregator = AggregatorNatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            ..AggregatorNatsConfig::default()
        };
        let err = crate::sync::check_aggregator_nats(&aggregator).expect_err("refused");
        assert!(err.contains("`nats` feature"), "{err}");
    }

    #[cfg(feature = "nats")]
    #[test]
    fn subjects_and_ids() {
        assert_eq!(subject_token("gw.7-a"), "gw_7-a");
        assert_eq!(message_id("gw", "central", 1, 3, 9), "gw/central/1/3-9");
    }

    #[cfg(feature = "nats")]
    impl NatsTransport {
        fn servers_len(&self) -> usize {
            self.endpoint.servers.len()
        }
    }
}
