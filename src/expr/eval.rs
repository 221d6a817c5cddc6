//! Evaluation: a parsed tree against one record, on the read and sync hot
//! paths. Never panics, never allocates, never parses text.

use std::cmp::Ordering;

use crate::record::{Fields, Timestamp, Value};

use super::ast::{CmpOp, LitValue, Node, Predicate, Test};
use super::RowMeta;

/// `now + offset` microseconds, saturating at the ends of time.
pub(super) fn shifted(now: Timestamp, offset: i64) -> Timestamp {
    Timestamp::from_micros(now.as_micros().saturating_add(offset))
}

pub(super) static NULL: Value = Value::Null;

/// A field value seen as something a literal can be compared with.
#[derive(Clone, Copy)]
pub(super) enum Operand<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Time(Timestamp),
    /// A json array: only `contains` looks inside.
    List(&'a [serde_json::Value]),
    /// A json object: equals nothing.
    Opaque,
}

impl<'a> Operand<'a> {
    pub(super) fn of(value: &'a Value) -> Operand<'a> {
        match value {
            Value::Null => Operand::Null,
            Value::Bool(b) => Operand::Bool(*b),
            Value::Int(i) => Operand::Int(*i),
            Value::Float(x) => Operand::Float(*x),
            Value::String(s) => Operand::Str(s),
            Value::Timestamp(t) => Operand::Time(*t),
            Value::Json(j) => Operand::of_json(j),
        }
    }

    pub(super) fn of_json(value: &'a serde_json::Value) -> Operand<'a> {
        match value {
            serde_json::Value::Null => Operand::Null,
            serde_json::Value::Bool(b) => Operand::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Operand::Int(i),
                None => n.as_f64().map_or(Operand::Opaque, Operand::Float),
            },
            serde_json::Value::String(s) => Operand::Str(s),
            serde_json::Value::Array(items) => Operand::List(items),
            serde_json::Value::Object(_) => Operand::Opaque,
        }
    }

    /// How this operand orders against a literal; `None` when they are of
    /// different types (or either is null or NaN): every test is then false.
    pub(super) fn compare(self, literal: &LitValue, now: Timestamp) -> Option<Ordering> {
        match (self, literal) {
            (Operand::Bool(a), LitValue::Bool(b)) => Some(a.cmp(b)),
            (Operand::Int(a), LitValue::Int(b)) => Some(a.cmp(b)),
            (Operand::Int(a), LitValue::Float(b)) => cmp_int_float(a, *b),
            (Operand::Float(a), LitValue::Int(b)) => cmp_int_float(*b, a).map(Ordering::reverse),
            (Operand::Float(a), LitValue::Float(b)) => a.partial_cmp(b),
            (Operand::Str(a), LitValue::Str { text, .. }) => Some(a.cmp(text.as_str())),
            (
                Operand::Time(a),
                LitValue::Str {
                    timestamp: Some(b), ..
                },
            ) => Some(a.cmp(b)),
            (Operand::Time(a), LitValue::Now { offset }) => Some(a.cmp(&shifted(now, *offset))),
            _ => None,
        }
    }

    /// Equality never involves `now()` (the parser keeps it to orderings),
    /// so no clock is needed.
    pub(super) fn equals(self, literal: &LitValue) -> bool {
        self.compare(literal, Timestamp::MIN) == Some(Ordering::Equal)
    }

    pub(super) fn differs(self, literal: &LitValue) -> bool {
        matches!(
            self.compare(literal, Timestamp::MIN),
            Some(Ordering::Less | Ordering::Greater)
        )
    }
}

/// Compares an int with a float exactly, without rounding the int through
/// `f64` (which would make `2^53 + 1 == 2^53 as f64`).
pub(super) fn cmp_int_float(int: i64, float: f64) -> Option<Ordering> {
    if float.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    pub(super) const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if float >= TWO_63 {
        return Some(Ordering::Less);
    }
    if float < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = float.trunc();
    // In range, so the cast is exact.
    let whole_int = whole as i64;
    match int.cmp(&whole_int) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(float - whole)),
        unequal => Some(unequal),
    }
}

impl Node {
    pub(super) fn eval(&self, fields: &Fields, meta: Option<&RowMeta>, now: Timestamp) -> bool {
        match self {
            Node::Or(children) => children.iter().any(|c| c.eval(fields, meta, now)),
            Node::And(children) => children.iter().all(|c| c.eval(fields, meta, now)),
            Node::Not(inner) => !inner.eval(fields, meta, now),
            Node::Predicate(p) => p.eval(fields, meta, now),
        }
    }
}

impl Predicate {
    pub(super) fn eval(&self, fields: &Fields, meta: Option<&RowMeta>, now: Timestamp) -> bool {
        let meta_value;
        let value = match (self.meta, meta) {
            (Some(field), Some(row)) => {
                meta_value = field.value(row);
                &meta_value
            }
            (Some(_), None) => &NULL,
            (None, _) => fields.get(self.field.as_str()).unwrap_or(&NULL),
        };
        let operand = Operand::of(value);
        let is_null = matches!(operand, Operand::Null);
        match &self.test {
            Test::IsNull { negated } => is_null != *negated,
            Test::Compare { op, literal } => match (op, &literal.value) {
                (CmpOp::Eq, LitValue::Null) => is_null,
                (CmpOp::Ne, LitValue::Null) => !is_null,
                (CmpOp::Eq, lit) => operand.equals(lit),
                (CmpOp::Ne, lit) => operand.differs(lit),
                (op, lit) => {
                    // Bools and json have no order worth trusting (see module docs).
                    let orderable = matches!(
                        value,
                        Value::Int(_) | Value::Float(_) | Value::String(_) | Value::Timestamp(_)
                    );
                    orderable && operand.compare(lit, now).is_some_and(|o| op.holds(o))
                }
            },
            Test::In {
                negated: false,
                list,
            } => list.iter().any(|l| operand.equals(&l.value)),
            Test::In {
                negated: true,
                list,
            } => !is_null && list.iter().all(|l| operand.differs(&l.value)),
            Test::Contains(needle) => match (operand, &needle.value) {
                (Operand::Str(haystack), LitValue::Str { text, .. }) => {
                    haystack.contains(text.as_str())
                }
                (Operand::List(items), lit) => {
                    items.iter().any(|item| Operand::of_json(item).equals(lit))
                }
                _ => false,
            },
        }
    }
}
