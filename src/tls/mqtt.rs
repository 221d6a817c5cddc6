//! The MQTT client options every outgoing MQTT connection uses (the
//! external broker source, the MQTT sync transport and the aggregator's
//! subscriber): address from an `mqtt://` or `mqtts://` URL, identity,
//! persistent session, keep-alive, credentials, and TLS through the node's
//! one client setup ([`crate::tls::client_config`]). Shared plumbing, so
//! sync does not reach into a source kind for it.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

use crate::config::ExternalBrokerConfig;

/// Capacity of rumqttc's request channel (acks and subscriptions).
pub(crate) const REQUEST_CHANNEL: usize = 1_024;

/// Why the external broker settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("mqtt.external.url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("mqtt.external: {0}")]
    Tls(#[from] super::TlsConfigError),
}

/// Builds the rumqttc options: address, identity, session, TLS.
pub fn options(
    config: &ExternalBrokerConfig,
    node_id: &str,
) -> Result<MqttOptions, ClientConfigError> {
    let url_error = |reason: &str| ClientConfigError::Url {
        url: config.url.clone(),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(rest) = config.url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = config.url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(url_error("expected mqtt://host:port or mqtts://host:port"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| url_error("the port is not a number from 1 to 65535"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(url_error("no host"));
    }
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("meshlet-{node_id}"));
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
        .set_request_channel_capacity(REQUEST_CHANNEL);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if tls {
        let tls_config = tls_config(config)?;
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config)),
        ));
    }
    Ok(options)
}

/// The node's one TLS client setup ([`crate::tls::client_config`]) with
/// this broker's files.
fn tls_config(config: &ExternalBrokerConfig) -> Result<rustls::ClientConfig, ClientConfigError> {
    Ok(super::client_config(
        config.ca_file.as_deref(),
        config.client_cert_file.as_deref(),
        config.client_key_file.as_deref(),
    )?)
}
