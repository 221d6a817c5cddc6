//! The tree an expression parses into: what each node means, with the
//! positions diagnostics need. Parsing builds it (`parse`), `check` and
//! `eval` walk it, `display` writes it back as canonical text.

use std::cmp::Ordering;

use crate::record::{Timestamp, Value};

use super::{OperandType, RowMeta};

/// Which `_meta` field a predicate reads; resolved at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MetaField {
    LastSeen,
    FirstSeen,
    EventTime,
    Version,
}

impl MetaField {
    pub(super) const ALL: [(&'static str, MetaField); 4] = [
        ("lastSeen", MetaField::LastSeen),
        ("firstSeen", MetaField::FirstSeen),
        ("eventTime", MetaField::EventTime),
        ("version", MetaField::Version),
    ];

    /// `_meta.lastSeen` → `LastSeen`; `None` for any other name.
    pub(super) fn of(field: &str) -> Option<MetaField> {
        let name = field.strip_prefix("_meta.")?;
        MetaField::ALL
            .iter()
            .find(|(text, _)| *text == name)
            .map(|(_, meta)| *meta)
    }

    pub(super) fn operand_type(self) -> OperandType {
        match self {
            MetaField::Version => OperandType::Int,
            _ => OperandType::Timestamp,
        }
    }

    pub(super) fn value(self, row: &RowMeta) -> Value {
        match self {
            MetaField::LastSeen => Value::Timestamp(row.last_seen),
            MetaField::FirstSeen => Value::Timestamp(row.first_seen),
            MetaField::EventTime => Value::Timestamp(row.event_time),
            MetaField::Version => Value::Int(i64::try_from(row.version).unwrap_or(i64::MAX)),
        }
    }
}

/// Where something was written (a byte offset). Positions serve diagnostics
/// only, so they never take part in equality: `a==1` equals `a == 1`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct At(pub(super) usize);

impl PartialEq for At {
    fn eq(&self, _: &At) -> bool {
        true
    }
}

/// `Or` and `And` hold at least two children; the parser keeps a nested
/// group of the same kind nested (`a or (b or c)`) so display round-trips.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Predicate(Predicate),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Predicate {
    pub(super) field: String,
    /// Set when `field` is one of `_meta.*`.
    pub(super) meta: Option<MetaField>,
    pub(super) at: At,
    pub(super) test: Test,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Test {
    Compare { op: CmpOp, literal: Literal },
    In { negated: bool, list: Vec<Literal> },
    Contains(Literal),
    IsNull { negated: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    pub(super) fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    pub(super) fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Eq => ordering == Ordering::Equal,
            CmpOp::Ne => ordering != Ordering::Equal,
            CmpOp::Lt => ordering == Ordering::Less,
            CmpOp::Le => ordering != Ordering::Greater,
            CmpOp::Gt => ordering == Ordering::Greater,
            CmpOp::Ge => ordering != Ordering::Less,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Literal {
    pub(super) value: LitValue,
    pub(super) at: At,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum LitValue {
    Null,
    Bool(bool),
    Int(i64),
    /// Always finite: the parser refuses literals that overflow.
    Float(f64),
    /// `timestamp` is the text read as RFC 3339 when it is one, decided at
    /// parse time so evaluation against timestamp fields never parses.
    Str {
        text: String,
        timestamp: Option<Timestamp>,
    },
    /// `now() + offset`: a timestamp known only when the filter runs.
    Now {
        /// Signed offset in microseconds (`now() - 1h` is -3_600_000_000).
        offset: i64,
    },
}

impl LitValue {
    pub(super) fn string(text: String) -> LitValue {
        let timestamp = Timestamp::parse_rfc3339(&text).ok();
        LitValue::Str { text, timestamp }
    }

    /// "a string", "an integer": for messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            LitValue::Null => "null",
            LitValue::Bool(_) => "a bool",
            LitValue::Int(_) => "an integer",
            LitValue::Float(_) => "a float",
            LitValue::Str { .. } => "a string",
            LitValue::Now { .. } => "a time relative to now()",
        }
    }
}

/// Microseconds in each duration unit, largest first; `write_duration`
/// and the lexer share it so display and parsing agree.
pub(super) const UNITS: [(&str, u64); 6] = [
    ("w", 7 * 86_400_000_000),
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
];

impl Node {
    /// Visits predicates in source order.
    pub(super) fn for_each_predicate<'a>(&'a self, visit: &mut dyn FnMut(&'a Predicate)) {
        match self {
            Node::Or(children) | Node::And(children) => {
                for child in children {
                    child.for_each_predicate(visit);
                }
            }
            Node::Not(inner) => inner.for_each_predicate(visit),
            Node::Predicate(p) => visit(p),
        }
    }
}
