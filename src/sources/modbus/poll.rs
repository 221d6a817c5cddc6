//! The poll task of one `modbus` source: every `poll_interval`, each
//! device in turn, its planned reads, one record per device.
//!
//! Failures never stop the task and never write made-up values: a device
//! that cannot be reached or does not answer in `timeout` is counted
//! (`meshlet_ingest_read_errors_total{reason=connect|timeout|io}`),
//! logged once when it goes down and once when it is back, and
//! reconnected on the next poll; a read the device refuses (a Modbus
//! exception) leaves that read's fields out of the record
//! (`reason="exception"`). The record is written through the ordinary
//! pipeline and the next poll of the source waits until it is durable, so
//! a slow store slows polling instead of queueing without bound.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::Slave;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decode::{plan, value, Block, Words};
use super::spec::{ModbusDevice, ModbusSource, Register, Table};
use crate::ingest::{Ingestor, SourceCounters};
use crate::pipeline::SourceShape;
use crate::product::{Product, SourceId, SourceSettings};
use crate::record::{Origin, Timestamp};

/// Why a device read failed, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Connect,
    Timeout,
    Io,
    Exception,
    ShortReply,
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Io => "io",
            Failure::Exception => "exception",
            Failure::ShortReply => "short_reply",
        }
    }
}

/// One device's connection and health.
struct Device {
    spec: ModbusDevice,
    context: Option<Context>,
    /// Whether the last poll reached it (for down/up log lines and the
    /// devices-down gauge).
    up: bool,
}

pub(super) struct Poller {
    ingestor: Ingestor,
    product: Arc<Product>,
    id: SourceId,
    source_id: String,
    /// The source's shape: named fields, event time at `time_field`.
    shape: SourceShape,
    /// Filled with the poll's time, when set.
    time_field: Option<String>,
    registers: indexmap::IndexMap<String, Register>,
    blocks: Vec<Block>,
    devices: Vec<Device>,
    interval: Duration,
    timeout: Duration,
}

impl Poller {
    pub(super) fn new(
        ingestor: Ingestor,
        product: Arc<Product>,
        id: SourceId,
        source: &ModbusSource,
    ) -> Poller {
        Poller {
            ingestor,
            product,
            id,
            source_id: id.to_string(),
            shape: source.shape(),
            time_field: source.time_field.clone(),
            blocks: plan(&source.registers),
            registers: source.registers.clone(),
            devices: source
                .devices
                .iter()
                .map(|spec| Device {
                    spec: spec.clone(),
                    context: None,
                    // Counted as up until a poll says otherwise, so the
                    // first failure is logged.
                    up: true,
                })
                .collect(),
            interval: source.poll_interval,
            timeout: source.timeout,
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let counters = self
            .ingestor
            .metrics()
            .source(&self.product.name, &self.source_id);
        counters.polled_devices(self.devices.len());
        info!(devices = self.devices.len(), reads = self.blocks.len(), interval = ?self.interval, "polling modbus devices");
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            // One time per poll: the readings of one poll line up.
            let at = Timestamp::now();
            for index in 0..self.devices.len() {
                if shutdown.is_cancelled() {
                    break;
                }
                self.poll_device(index, at, &counters).await;
            }
            let down = self.devices.iter().filter(|d| !d.up).count();
            counters.devices_down(down);
        }
        for device in &mut self.devices {
            if let Some(mut context) = device.context.take() {
                use tokio_modbus::client::Client;
                let _ = tokio::time::timeout(self.timeout, context.disconnect()).await;
            }
        }
        debug!(source = %self.id, "modbus poller stopped");
    }

    async fn poll_device(&mut self, index: usize, at: Timestamp, counters: &Arc<SourceCounters>) {
        let record = self.read_device(index, counters).await;
        let device = &mut self.devices[index];
        let Some(mut record) = record else {
            return;
        };
        if let (Some(field), Some(time)) = (&self.time_field, at.to_rfc3339()) {
            record.insert(field.clone(), Value::String(time));
        }
        if !device.up {
            info!(device = %device.spec.key, address = %device.spec.address, "modbus device answers again");
            device.up = true;
        }
        let payload = match serde_json::to_vec(&Value::Object(record)) {
            Ok(p) => p,
            Err(err) => {
                warn!(error = %err, "cannot encode a modbus record");
                return;
            }
        };
        let origin = Origin::new(format!(
            "modbus:{}/{}",
            device.spec.address, device.spec.unit
        ));
        let key = device.spec.key.clone();
        match self
            .ingestor
            .submit_polled(&self.product, &self.source_id, &self.shape, &payload, origin)
            .await
        {
            Ok(pending) => {
                if let Err(err) = pending.wait().await {
                    warn!(device = %key, error = %err, "modbus record not written");
                }
            }
            // Counted and logged (rate-limited) by the ingestor.
            Err(refusal) => debug!(device = %key, ?refusal, "modbus record refused"),
        }
    }

    /// One device's record: the key and every field read, or `None` when
    /// nothing could be read.
    async fn read_device(
        &mut self,
        index: usize,
        counters: &Arc<SourceCounters>,
    ) -> Option<Map<String, Value>> {
        let timeout = self.timeout;
        let device = &mut self.devices[index];
        if device.context.is_none() {
            match connect(&device.spec, timeout).await {
                Ok(context) => device.context = Some(context),
                Err(failure) => {
                    fail(device, failure, counters, "cannot connect");
                    return None;
                }
            }
        }
        let mut record = Map::new();
        let mut read_any = false;
        for block in &self.blocks {
            let Some(context) = device.context.as_mut() else {
                break;
            };
            match read_block(context, block, timeout).await {
                Ok(words) => {
                    read_any = true;
                    for field in &block.fields {
                        let Some(register) = self.registers.get(field) else {
                            continue;
                        };
                        let words = match &words {
                            Read::Registers(r) => Words::Registers(r),
                            Read::Bits(b) => Words::Bits(b),
                        };
                        match value(register, block.start, &words) {
                            Some(v) => {
                                record.insert(field.clone(), v);
                            }
                            None => counters.read_error(Failure::ShortReply.reason()),
                        }
                    }
                }
                Err(Failure::Exception) => {
                    // The device answered: the connection is fine, this
                    // read's fields are missing from the record.
                    counters.read_error(Failure::Exception.reason());
                    read_any = true;
                    debug!(device = %device.spec.key, table = ?block.table, start = block.start, "modbus exception");
                }
                Err(failure) => {
                    // A timed-out or broken connection may still deliver a
                    // stale reply: start again on a fresh one.
                    device.context = None;
                    fail(device, failure, counters, "read failed");
                    return None;
                }
            }
        }
        if !read_any || record.is_empty() {
            return None;
        }
        record.insert(
            self.product.key.clone(),
            Value::String(device.spec.key.clone()),
        );
        Some(record)
    }
}

fn fail(device: &mut Device, failure: Failure, counters: &SourceCounters, what: &str) {
    counters.read_error(failure.reason());
    if device.up {
        warn!(device = %device.spec.key, address = %device.spec.address, reason = failure.reason(), "modbus device {what}; retrying every poll");
        device.up = false;
    }
}

async fn connect(device: &ModbusDevice, timeout: Duration) -> Result<Context, Failure> {
    let resolve = tokio::net::lookup_host(device.address.as_str());
    let addr = match tokio::time::timeout(timeout, resolve).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or(Failure::Connect)?,
        Ok(Err(_)) => return Err(Failure::Connect),
        Err(_) => return Err(Failure::Timeout),
    };
    match tokio::time::timeout(timeout, tcp::connect_slave(addr, Slave(device.unit))).await {
        Ok(Ok(context)) => Ok(context),
        Ok(Err(_)) => Err(Failure::Connect),
        Err(_) => Err(Failure::Timeout),
    }
}

enum Read {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

async fn read_block(
    context: &mut Context,
    block: &Block,
    timeout: Duration,
) -> Result<Read, Failure> {
    let (start, count) = (block.start, block.count);
    let reply = match block.table {
        Table::Holding => {
            tokio::time::timeout(timeout, context.read_holding_registers(start, count))
                .await
                .map(|r| r.map(|r| r.map(Read::Registers)))
        }
        Table::Input => tokio::time::timeout(timeout, context.read_input_registers(start, count))
            .await
            .map(|r| r.map(|r| r.map(Read::Registers))),
        Table::Coil => tokio::time::timeout(timeout, context.read_coils(start, count))
            .await
            .map(|r| r.map(|r| r.map(Read::Bits))),
        Table::Discrete => {
            tokio::time::timeout(timeout, context.read_discrete_inputs(start, count))
                .await
                .map(|r| r.map(|r| r.map(Read::Bits)))
        }
    };
    match reply {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(_)) => Err(Failure::Io),
        Ok(Ok(Err(_exception))) => Err(Failure::Exception),
        Ok(Ok(Ok(read))) => Ok(read),
    }
}
