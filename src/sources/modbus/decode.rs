//! Request planning and decoding: which reads cover a register map, and
//! how the words read become field values. Pure, so the byte-order and
//! scaling rules are tested without a device.

use indexmap::IndexMap;
use serde_json::Value;

use super::spec::{DataType, Order, Register, Table};

/// Most registers one read may ask for (Modbus application protocol,
/// function codes 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Most coils or discrete inputs one read may ask for (codes 1 and 2).
pub const MAX_BITS: u16 = 2000;

/// One read request: `count` items of `table` from `start`, and the
/// fields it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// The fields whose registers lie in this block.
    pub fields: Vec<String>,
}

/// The reads that cover `registers`: per table, in address order, one
/// block per run of adjacent or overlapping registers up to the protocol's
/// limit. Gaps are never read across: a device may refuse an address it
/// does not map (exception 2) and that would lose the whole block.
pub fn plan(registers: &IndexMap<String, Register>) -> Vec<Block> {
    let mut sorted: Vec<(&String, &Register)> = registers.iter().collect();
    sorted.sort_by_key(|(_, r)| (r.table, r.address));
    let mut blocks: Vec<Block> = Vec::new();
    for (field, register) in sorted {
        let width = register.ty.width();
        let end = u32::from(register.address) + u32::from(width);
        let limit = u32::from(register.table.max_count());
        if let Some(block) = blocks.last_mut() {
            let block_end = u32::from(block.start) + u32::from(block.count);
            if block.table == register.table
                && u32::from(register.address) <= block_end
                && end - u32::from(block.start) <= limit
            {
                block.count = block.count.max((end - u32::from(block.start)) as u16);
                block.fields.push(field.clone());
                continue;
            }
        }
        blocks.push(Block {
            table: register.table,
            start: register.address,
            count: width,
            fields: vec![field.clone()],
        });
    }
    blocks
}

/// What a block read returned.
pub enum Words<'a> {
    Registers(&'a [u16]),
    Bits(&'a [bool]),
}

/// The value of `register` within a block read from `start`; `None` when
/// the reply was short (a device bug, counted by the caller as such).
pub fn value(register: &Register, start: u16, words: &Words<'_>) -> Option<Value> {
    let at = usize::from(register.address.checked_sub(start)?);
    match words {
        Words::Bits(bits) => bits.get(at).map(|b| Value::Bool(*b)),
        Words::Registers(regs) => {
            let width = usize::from(register.ty.width());
            let raw = regs.get(at..at + width)?;
            let fix = |w: u16| match register.byte_order {
                Order::Big => w,
                Order::Little => w.swap_bytes(),
            };
            let number = match register.ty {
                DataType::U16 => Number::Int(i64::from(fix(raw[0]))),
                DataType::I16 => Number::Int(i64::from(fix(raw[0]) as i16)),
                DataType::U32 | DataType::I32 | DataType::F32 => {
                    let (hi, lo) = match register.word_order {
                        Order::Big => (fix(raw[0]), fix(raw[1])),
                        Order::Little => (fix(raw[1]), fix(raw[0])),
                    };
                    let bits = (u32::from(hi) << 16) | u32::from(lo);
                    match register.ty {
                        DataType::U32 => Number::Int(i64::from(bits)),
                        DataType::I32 => Number::Int(i64::from(bits as i32)),
                        _ => Number::Float(f64::from(f32::from_bits(bits))),
                    }
                }
                DataType::Bool => Number::Int(i64::from(fix(raw[0]) != 0)),
            };
            Some(number.scaled(register.scale, register.offset))
        }
    }
}

enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// `raw * scale + offset`; integers stay integers when unscaled. A
    /// NaN or infinite float becomes JSON null, which the field's rules
    /// then see as missing (required fields reject it).
    fn scaled(self, scale: f64, offset: f64) -> Value {
        match self {
            Number::Int(i) if scale == 1.0 && offset == 0.0 => Value::from(i),
            Number::Int(i) => float(i as f64 * scale + offset),
            Number::Float(f) => float(f * scale + offset),
        }
    }
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(table: Table, address: u16, ty: DataType) -> Register {
        Register {
            table,
            address,
            ty,
            scale: 1.0,
            offset: 0.0,
            byte_order: Order::Big,
            word_order: Order::Big,
        }
    }

    #[test]
    fn adjacent_registers_share_a_read_and_gaps_split() {
        let mut map = IndexMap::new();
        map.insert("b".to_string(), reg(Table::Holding, 2, DataType::F32));
        map.insert("a".to_string(), reg(Table::Holding, 0, DataType::U32));
        map.insert("c".to_string(), reg(Table::Holding, 10, DataType::U16));
        map.insert("d".to_string(), reg(Table::Coil, 0, DataType::Bool));
        map.insert("e".to_string(), reg(Table::Coil, 1, DataType::Bool));
        map.insert("f".to_string(), reg(Table::Input, 0, DataType::I16));
        let blocks = plan(&map);
        let summary: Vec<(Table, u16, u16, Vec<&str>)> = blocks
            .iter()
            .map(|b| {
                let fields = b.fields.iter().map(String::as_str).collect();
                (b.table, b.start, b.count, fields)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Table::Holding, 0, 4, vec!["a", "b"]),
                (Table::Holding, 10, 1, vec!["c"]),
                (Table::Input, 0, 1, vec!["f"]),
                (Table::Coil, 0, 2, vec!["d", "e"]),
            ]
        );
    }

    #[test]
    fn a_block_never_exceeds_the_protocol_limit() {
        let mut map = IndexMap::new();
        for i in 0..100u16 {
            map.insert(format!("f{i}"), reg(Table::Input, i * 2, DataType::U32));
        }
        let blocks = plan(&map);
        assert!(blocks.iter().all(|b| b.count <= MAX_REGISTERS));
        assert_eq!(blocks.iter().map(|b| b.fields.len()).sum::<usize>(), 100);
        assert_eq!(blocks.len(), 2, "{blocks:?}");
    }

    #[test]
    fn byte_and_word_order_and_scaling() {
        // 230.5 as f32 is 0x4366_8000.
        let words = [0x4366u16, 0x8000];
        let mut r = reg(Table::Holding, 0, DataType::F32);
        assert_eq!(value(&r, 0, &Words::Registers(&words)), Some(230.5.into()));
        r.word_order = Order::Little;
        let swapped = [0x8000u16, 0x4366];
        assert_eq!(
            value(&r, 0, &Words::Registers(&swapped)),
            Some(230.5.into())
        );
        r.byte_order = Order::Little;
        let both = [0x0080u16, 0x6643];
        assert_eq!(value(&r, 0, &Words::Registers(&both)), Some(230.5.into()));

        let mut i = reg(Table::Input, 5, DataType::I16);
        assert_eq!(
            value(&i, 5, &Words::Registers(&[0xFFFE])),
            Some((-2).into())
        );
        i.scale = 0.5;
        i.offset = 1.0;
        assert_eq!(value(&i, 5, &Words::Registers(&[0xFFFE])), Some(0.0.into()));

        let i32r = reg(Table::Holding, 0, DataType::I32);
        assert_eq!(
            value(&i32r, 0, &Words::Registers(&[0xFFFF, 0xFFF6])),
            Some((-10).into())
        );
        let u32r = reg(Table::Holding, 0, DataType::U32);
        assert_eq!(
            value(&u32r, 0, &Words::Registers(&[0x0001, 0x0000])),
            Some(65536.into())
        );
        // A short reply is no value, not a zero.
        assert_eq!(value(&u32r, 0, &Words::Registers(&[0x0001])), None);
        let coil = reg(Table::Coil, 3, DataType::Bool);
        assert_eq!(
            value(&coil, 2, &Words::Bits(&[false, true])),
            Some(true.into())
        );
        // NaN is null, never a made-up number.
        let nan = reg(Table::Holding, 0, DataType::F32);
        assert_eq!(
            value(&nan, 0, &Words::Registers(&[0x7FC0, 0x0000])),
            Some(Value::Null)
        );
    }
}
