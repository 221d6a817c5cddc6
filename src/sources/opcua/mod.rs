//! `opcua` sources: nodes of an OPC UA server, monitored by the node
//! itself through a subscription.
//!
//! One source names the server's endpoint and, per entity, the node each
//! field is read from. The node keeps one session and one subscription
//! per source; in every publishing cycle in which some of an entity's
//! nodes changed, it writes one record for that entity holding the
//! changed fields and the entity's key, through the ordinary pipeline
//! (coercion, quality rules, quarantine, durable ack), with the arrival
//! time as event time. Fields that did not change are not repeated: the
//! entity's state keeps their last values.
//!
//! Layout: `spec` (the definition: types and YAML parse, with
//! diagnostics; node ids checked without the client crate), `client` (the
//! task; only with the `opcua` cargo feature, which brings the
//! `async-opcua` client: pure Rust, its crypto from RustCrypto, no
//! OpenSSL). A build without the feature still checks definitions, and
//! refuses to start a node that has an opcua source.
//!
//! Counted in `meshlet_ingest_read_errors_total{reason}`: `connect` (a
//! connect or reconnect attempt failed), `connection_lost` (an active
//! session's connection dropped; a reconnect follows), `bad_node` (the
//! server refused to monitor a node), `bad_status` (a value the server
//! could not read), `unsupported_type`, `coalesced` (a cycle merged into a
//! queued record because the store is behind).
//! `meshlet_ingest_devices_down` is 1 while the server is not reached.

#[cfg(feature = "opcua")]
mod client;
mod spec;

use serde_json::json;

pub(crate) use spec::parse;
pub use spec::{OpcuaEntity, OpcuaSource, OpcuaUser};

use super::{SourceSpec, StartContext, StartError};
use crate::product::{SourceSettings, SourceShape};

#[cfg(not(feature = "opcua"))]
const UNAVAILABLE: &str =
    "this meshlet was built without the `opcua` feature (cargo build --features opcua)";

impl SourceSettings for OpcuaSource {
    /// The subscriber builds one JSON object per entity whose keys are the
    /// field names, so nothing is mapped; the event time is the arrival's.
    fn shape(&self) -> SourceShape {
        SourceShape::polled(self.time_field.as_deref())
    }

    fn contract(&self) -> serde_json::Value {
        json!({ "opcua": self.endpoint })
    }
}

impl SourceSpec for OpcuaSource {
    #[cfg(feature = "opcua")]
    fn start(
        &self,
        ctx: StartContext<'_>,
    ) -> Result<Option<(futures_util::future::BoxFuture<'static, ()>, tracing::Span)>, StartError>
    {
        use futures_util::FutureExt;
        let password = match &self.user {
            None => None,
            Some(user) => match std::env::var(&user.password_env) {
                Ok(password) => Some(password),
                Err(_) => {
                    return Err(StartError::Unsupported {
                        product: ctx.product.name.clone(),
                        id: ctx.id,
                        problem: format!(
                            "the environment variable `{}` (the OPC UA password of user `{}`) is not set",
                            user.password_env, user.name
                        ),
                    })
                }
            },
        };
        // The client's application certificate and the servers' trusted
        // and rejected certificates live with the node's data.
        let pki_dir = ctx.data_dir.join("opcua").join("pki");
        let span = tracing::info_span!("opcua", product = %ctx.product.name, source = %ctx.id);
        let subscriber = client::Subscriber::new(
            ctx.ingestor.clone(),
            ctx.product.clone(),
            ctx.id,
            self,
            password,
            pki_dir,
        );
        Ok(Some((subscriber.run(ctx.shutdown).boxed(), span)))
    }

    #[cfg(not(feature = "opcua"))]
    fn unavailable(&self) -> Option<&'static str> {
        Some(UNAVAILABLE)
    }

    #[cfg(not(feature = "opcua"))]
    fn start(
        &self,
        ctx: StartContext<'_>,
    ) -> Result<Option<(futures_util::future::BoxFuture<'static, ()>, tracing::Span)>, StartError>
    {
        Err(StartError::Unsupported {
            product: ctx.product.name.clone(),
            id: ctx.id,
            problem: UNAVAILABLE.to_string(),
        })
    }
}
