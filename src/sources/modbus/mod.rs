//! `modbus` sources: Modbus TCP devices polled by the node itself.
//!
//! One source lists devices (address, unit id, the entity key their
//! records get) and a register map (field → table, address, data type,
//! byte and word order, scale and offset). Every `poll_interval` the
//! poller reads each device's registers, in as few requests as adjacent
//! addresses allow, and writes one record per device through the ordinary
//! pipeline (coercion, quality rules, quarantine, durable ack), keyed by
//! the device's `key`, with the poll's time as event time.
//!
//! Layout: `spec` (the definition: types and YAML parse, with
//! diagnostics), `decode` (request plan and register words → values; pure),
//! `poll` (the task; only with the `modbus` cargo feature, which brings
//! the `tokio-modbus` client). A build without the feature still checks
//! definitions, and refuses to start a node that has a modbus source.

mod decode;
#[cfg(feature = "modbus")]
mod poll;
mod spec;

use serde_json::json;

pub use decode::{plan, value, Block, Words};
pub(crate) use spec::parse;
pub use spec::{DataType, ModbusDevice, ModbusSource, Order, Register, Table};

use super::{SourceSpec, StartContext, StartError};
use crate::product::{SourceSettings, SourceShape};

#[cfg(not(feature = "modbus"))]
const UNAVAILABLE: &str =
    "this meshlet was built without the `modbus` feature (cargo build --features modbus)";

impl SourceSettings for ModbusSource {
    /// The poller builds one JSON object per device whose keys are the
    /// field names, so nothing is mapped; the event time is the poll's
    /// (read from `time_field` when there is one).
    fn shape(&self) -> SourceShape {
        SourceShape::polled(self.time_field.as_deref())
    }

    fn contract(&self) -> serde_json::Value {
        let devices: Vec<String> = self
            .devices
            .iter()
            .map(|d| format!("{}/{}", d.address, d.unit))
            .collect();
        json!({ "modbus": devices })
    }
}

impl SourceSpec for ModbusSource {
    #[cfg(feature = "modbus")]
    fn start(
        &self,
        ctx: StartContext<'_>,
    ) -> Result<Option<(futures_util::future::BoxFuture<'static, ()>, tracing::Span)>, StartError>
    {
        use futures_util::FutureExt;
        let span = tracing::info_span!("modbus", product = %ctx.product.name, source = %ctx.id);
        let poller = poll::Poller::new(ctx.ingestor.clone(), ctx.product.clone(), ctx.id, self);
        Ok(Some((poller.run(ctx.shutdown).boxed(), span)))
    }

    #[cfg(not(feature = "modbus"))]
    fn unavailable(&self) -> Option<&'static str> {
        Some(UNAVAILABLE)
    }

    #[cfg(not(feature = "modbus"))]
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
