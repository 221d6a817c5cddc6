//! The `modbus:` source definition and its checks.
//!
//! ```yaml
//! sources:
//!   - modbus:
//!       poll_interval: 5s          # default 5s
//!       timeout: 1s                # per request and per connect; default 1s
//!       time_field: read_at        # optional: a timestamp field the poll's time fills
//!       devices:
//!         - { address: 10.0.0.7:502, unit: 1, key: meter-1 }
//!       registers:
//!         voltage_v:  { table: input, address: 0, type: f32, word_order: little }
//!         energy_kwh: { table: holding, address: 10, type: u32, scale: 0.01 }
//!         breaker_on: { table: coil, address: 0 }
//! ```

use std::time::Duration;

use indexmap::IndexMap;

use crate::product::diagnostic::Diagnostics;
use crate::product::reader::{
    self, elements, entries, expect_list, expect_mapping, Entry, MapReader,
};
use crate::product::source::{time_field, SourceContext};
use crate::product::FieldType;

/// Polled Modbus TCP devices, one record per device per poll.
#[derive(Clone, Debug)]
pub struct ModbusSource {
    pub devices: Vec<ModbusDevice>,
    /// Field → where its value is read.
    pub registers: IndexMap<String, Register>,
    pub poll_interval: Duration,
    /// Bound on each connect and each request; a device that does not
    /// answer in time is counted (`reason="timeout"`) and reconnected.
    pub timeout: Duration,
    /// A timestamp field each record's poll time fills (and its event
    /// time is then read from): for products that require when a reading
    /// was taken.
    pub time_field: Option<String>,
}

/// One device: where it is and which entity its records are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModbusDevice {
    /// `host:port`; the port defaults to 502.
    pub address: String,
    /// The unit (slave) id, 0–255; default 1. Gateways to serial buses
    /// route by it.
    pub unit: u8,
    /// The value of the product's key field in this device's records.
    pub key: String,
}

/// The four Modbus data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Table {
    const NAMES: [&'static str; 4] = ["holding", "input", "coil", "discrete"];

    fn from_name(name: &str) -> Option<Table> {
        match name {
            "holding" => Some(Table::Holding),
            "input" => Some(Table::Input),
            "coil" => Some(Table::Coil),
            "discrete" => Some(Table::Discrete),
            _ => None,
        }
    }

    /// Coils and discrete inputs are bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most items one read of this table may ask for.
    pub fn max_count(self) -> u16 {
        if self.is_bits() {
            super::decode::MAX_BITS
        } else {
            super::decode::MAX_REGISTERS
        }
    }
}

/// How a register's words are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
    /// A coil or discrete input (or a register read as non-zero).
    Bool,
}

impl DataType {
    const NAMES: [&'static str; 6] = ["u16", "i16", "u32", "i32", "f32", "bool"];

    fn from_name(name: &str) -> Option<DataType> {
        match name {
            "u16" => Some(DataType::U16),
            "i16" => Some(DataType::I16),
            "u32" => Some(DataType::U32),
            "i32" => Some(DataType::I32),
            "f32" => Some(DataType::F32),
            "bool" => Some(DataType::Bool),
            _ => None,
        }
    }

    /// Registers (or bits) the value takes.
    pub fn width(self) -> u16 {
        match self {
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            _ => 1,
        }
    }
}

/// Byte order within a register, or word order within a 32-bit value.
/// Modbus itself is big-endian; many meters put the low word first
/// (`word_order: little`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Big,
    Little,
}

/// Where one field's value is read, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Register {
    pub table: Table,
    /// Zero-based protocol address (register 40001 is holding 0).
    pub address: u16,
    pub ty: DataType,
    /// The value is `raw * scale + offset`.
    pub scale: f64,
    pub offset: f64,
    pub byte_order: Order,
    pub word_order: Order,
}

const KEYS: &[&str] = &["devices", "registers", "poll_interval", "timeout", "time_field"];
const DEVICE_KEYS: &[&str] = &["address", "unit", "key"];
const REGISTER_KEYS: &[&str] = &[
    "table",
    "address",
    "type",
    "scale",
    "offset",
    "byte_order",
    "word_order",
];
const ORDERS: [&str; 2] = ["big", "little"];
const DEFAULT_POLL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Parses a `modbus:` source; every problem is a diagnostic.
pub(crate) fn parse(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<ModbusSource> {
    let map = MapReader::open(
        entry,
        "modbus source settings, e.g. `{ devices: [{ address: 10.0.0.7:502, key: meter-1 }], registers: { power_w: { address: 0 } } }`",
        KEYS,
        diags,
    )?;
    let poll_interval = map
        .get("poll_interval")
        .map(|e| reader::duration(&e, diags))
        .unwrap_or(Some(DEFAULT_POLL));
    let timeout = map
        .get("timeout")
        .map(|e| reader::duration(&e, diags))
        .unwrap_or(Some(DEFAULT_TIMEOUT));
    let devices = map
        .required("devices", diags)
        .and_then(|e| devices(&e, diags));
    let registers = map
        .required("registers", diags)
        .and_then(|e| registers(&e, ctx, diags));
    let time_field = match map.get("time_field") {
        None => Some(None),
        // A register feeds a numeric or bool field, never a timestamp
        // one, so the two cannot collide.
        Some(e) => time_field(&e, ctx, diags).map(Some),
    };
    Some(ModbusSource {
        devices: devices?,
        registers: registers?,
        poll_interval: poll_interval?,
        timeout: timeout?,
        time_field: time_field?,
    })
}

fn devices(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<Vec<ModbusDevice>> {
    let seq = expect_list(
        entry,
        "a list of devices, e.g. `- { address: 10.0.0.7:502, unit: 1, key: meter-1 }`",
        diags,
    )?;
    let list = elements(seq, &entry.path);
    if list.is_empty() {
        diags.push(entry.at(), &entry.path, "expected at least one device");
        return None;
    }
    let mut out: Vec<ModbusDevice> = Vec::new();
    let mut ok = true;
    for element in list {
        match device(&element, diags) {
            Some(d) if out.iter().any(|o| o.key == d.key) => {
                diags.push(
                    element.at(),
                    &element.path,
                    format!(
                        "device key `{}` is used twice: each device is its own entity",
                        d.key
                    ),
                );
                ok = false;
            }
            Some(d) => out.push(d),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn device(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<ModbusDevice> {
    let map = MapReader::open(
        entry,
        "a device, e.g. `{ address: 10.0.0.7:502, unit: 1, key: meter-1 }`",
        DEVICE_KEYS,
        diags,
    )?;
    let address = map.required("address", diags).and_then(|e| {
        let text = reader::non_empty_string(&e, diags)?;
        match host_port(&text) {
            Ok(address) => Some(address),
            Err(problem) => {
                diags.push(e.at(), &e.path, problem);
                None
            }
        }
    });
    let unit = map
        .get("unit")
        .map(|e| reader::integer(&e, 0, 255, diags))
        .unwrap_or(Some(1));
    let key = map
        .required("key", diags)
        .and_then(|e| reader::non_empty_string(&e, diags));
    Some(ModbusDevice {
        address: address?,
        unit: unit? as u8,
        key: key?,
    })
}

/// `host` or `host:port` (IPv6 as `[::1]:502`), normalised to `host:port`.
fn host_port(text: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "invalid device address `{}`: expected host or host:port, e.g. 10.0.0.7:502",
            reader::shorten(text)
        )
    };
    if text.contains(char::is_whitespace) || text.contains('/') {
        return Err(bad());
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)?,
        ),
        _ if text.contains(':') && !text.starts_with('[') => return Err(bad()),
        _ => (text, 502),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

fn registers(
    entry: &Entry<'_>,
    ctx: &SourceContext<'_>,
    diags: &mut Diagnostics,
) -> Option<IndexMap<String, Register>> {
    let mapping = expect_mapping(
        entry,
        "a mapping of field name to register, e.g. `{ power_w: { table: input, address: 0, type: f32 } }`",
        diags,
    )?;
    let mut out = IndexMap::new();
    let mut ok = true;
    for (field, e) in entries(mapping, &entry.path) {
        let Some(target) = ctx.fields.resolve(
            field.as_str(),
            "register target",
            e.item.key_at,
            &e.path,
            diags,
        ) else {
            ok = false;
            continue;
        };
        let field_ty = target.ty;
        match register(&e, field.as_str(), field_ty, diags) {
            Some(r) => {
                out.insert(field.as_str().to_string(), r);
            }
            None => ok = false,
        }
    }
    if ok && out.is_empty() {
        diags.push(entry.at(), &entry.path, "expected at least one register");
        return None;
    }
    ok.then_some(out)
}

fn register(
    entry: &Entry<'_>,
    field: &str,
    field_ty: FieldType,
    diags: &mut Diagnostics,
) -> Option<Register> {
    let map = MapReader::open(
        entry,
        "a register, e.g. `{ table: input, address: 0, type: f32 }`",
        REGISTER_KEYS,
        diags,
    )?;
    let table = match map.get("table") {
        Some(e) => Table::from_name(reader::choice(&e, "modbus table", &Table::NAMES, diags)?)?,
        None => Table::Holding,
    };
    let address = map
        .required("address", diags)
        .and_then(|e| reader::integer(&e, 0, u64::from(u16::MAX), diags))
        .map(|a| a as u16);
    let default_ty = if table.is_bits() {
        DataType::Bool
    } else {
        DataType::U16
    };
    let ty = match map.get("type") {
        None => Some(default_ty),
        Some(e) => {
            let ty = reader::choice(&e, "modbus data type", &DataType::NAMES, diags)
                .and_then(DataType::from_name);
            match ty {
                Some(t) if table.is_bits() && t != DataType::Bool => {
                    diags.push(
                        e.at(),
                        &e.path,
                        format!(
                            "a {} table holds bits: its type is bool",
                            Table::NAMES[table as usize]
                        ),
                    );
                    None
                }
                other => other,
            }
        }
    };
    let number = |key: &str, default: f64, diags: &mut Diagnostics| match map.get(key) {
        None => Some(default),
        Some(e) if ty == Some(DataType::Bool) => {
            diags.push(
                e.item.key_at,
                &e.path,
                format!("`{key}` does not apply to a bool value"),
            );
            None
        }
        Some(e) => reader::number(&e, diags),
    };
    let scale = number("scale", 1.0, diags);
    let offset = number("offset", 0.0, diags);
    let order = |key: &str, diags: &mut Diagnostics| match map.get(key) {
        None => Some(Order::Big),
        Some(e) => match reader::choice(&e, key, &ORDERS, diags)? {
            "little" => Some(Order::Little),
            _ => Some(Order::Big),
        },
    };
    let byte_order = order("byte_order", diags);
    let word_order = order("word_order", diags);
    if let (Some(e), Some(t)) = (map.get("word_order"), ty) {
        if t.width() == 1 {
            diags.push(
                e.item.key_at,
                &e.path,
                "`word_order` applies to 32-bit types (u32, i32, f32) only",
            );
            return None;
        }
    }
    let ty = ty?;
    let fits = match ty {
        DataType::Bool => field_ty == FieldType::Bool,
        _ => field_ty.is_numeric(),
    };
    if !fits {
        let wanted = if ty == DataType::Bool {
            "a bool field"
        } else {
            "a numeric field (int or float)"
        };
        diags.push(
            entry.item.key_at,
            &entry.path,
            format!(
                "field `{field}` is {} but a modbus {} value needs {wanted}",
                field_ty.a_field(),
                DataType::NAMES[ty as usize]
            ),
        );
        return None;
    }
    if let Some(a) = address {
        if u32::from(a) + u32::from(ty.width()) > 65_536 {
            diags.push(
                entry.at(),
                &entry.path,
                format!(
                    "a {} at address {a} runs past the last address 65535",
                    DataType::NAMES[ty as usize]
                ),
            );
            return None;
        }
    }
    Some(Register {
        table,
        address: address?,
        ty,
        scale: scale?,
        offset: offset?,
        byte_order: byte_order?,
        word_order: word_order?,
    })
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn addresses_default_to_port_502() {
        assert_eq!(host_port("10.0.0.7").unwrap(), "10.0.0.7:502");
        assert_eq!(host_port("meter.local:1502").unwrap(), "meter.local:1502");
        assert_eq!(host_port("[::1]:5020").unwrap(), "[::1]:5020");
        assert_eq!(host_port("[::1]").unwrap(), "[::1]:502");
        for bad in [
            "10.0.0.7:0",
            "10.0.0.7:x",
            ":502",
            "a b",
            "::1",
            "host:99999",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }
}
