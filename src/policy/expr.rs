//! The row-filter expression language of `where:` clauses.
//!
//! Access roles and sync rules in a product definition say which rows they
//! apply to with a small expression, e.g. `where: "site == 'berlin'"`. The
//! text is parsed **once**, when the definition is loaded, into an [`Expr`];
//! [`Expr::check`] then type-checks it against the product's declared fields
//! so a typo or a nonsensical comparison is refused at load with its column,
//! and [`Expr::eval`] runs on every record on the read and sync hot paths. So
//! everything that can be decided at load is decided there: string literals
//! that are RFC 3339 timestamps are parsed once, and evaluation neither
//! allocates nor parses text.
//!
//! # Grammar
//!
//! ```text
//! expr       = or
//! or         = and { ("or" | "||") and }
//! and        = unary { ("and" | "&&") unary }
//! unary      = ("not" | "!") unary | "(" expr ")" | predicate
//! predicate  = field ("==" | "!=" | "<" | "<=" | ">" | ">=") literal
//!            | field ("<" | "<=" | ">" | ">=") time
//!            | field ["not"] "in" "[" [ literal { "," literal } ] "]"
//!            | field "contains" literal
//!            | field "is" ["not"] "null"
//! literal    = string | integer | float | "true" | "false" | "null"
//! time       = "now" "(" ")" { ("+" | "-") duration }
//! duration   = { digits unit }+            (unit: ms s m h d w; `7d`, `1h30m`)
//! field      = [A-Za-z_][A-Za-z0-9_]*      (but not a keyword)
//!            | "_meta." meta
//! meta       = "lastSeen" | "firstSeen" | "eventTime" | "version"
//! string     = '…' | "…"                   (escapes: \\ \' \" \n \t \r)
//! integer    = ["-"] digits                (64-bit)
//! float      = ["-"] digits ["." digits] [("e"|"E") ["+"|"-"] digits]
//! ```
//!
//! Keywords (`and or not in contains is null true false`) are
//! case-insensitive and cannot be field names. Precedence is
//! `not` > `and` > `or`; a comparison is always a single predicate, so
//! `not a == 1` means `not (a == 1)`.
//!
//! # Evaluation semantics
//!
//! - A field missing from the record is `null`; so is a json field holding
//!   JSON `null`.
//! - `_meta.lastSeen`, `_meta.firstSeen`, `_meta.eventTime` (timestamps)
//!   and `_meta.version` (int) read the instance's bookkeeping, as GraphQL's
//!   `_meta` shows it: `_meta.lastSeen < now() - 1h` is "silent for an
//!   hour". They are `null` where no instance is at hand ([`Expr::eval`]).
//! - `is null`, `== null` and `!= null` are the only tests that can be true of
//!   a null value. Every other comparison involving null is **false** — as in
//!   SQL, but with two values instead of three: `not (x > 3)` is **true** when
//!   `x` is null, because `x > 3` is plainly false. Write
//!   `x is not null and x <= 3` when that matters.
//! - Ints and floats compare numerically and exactly (`3 == 3.0`; an `i64`
//!   is never rounded through `f64`).
//! - Strings compare by byte order (so `'Z' < 'a'`).
//! - Timestamp fields compare with RFC 3339 string literals
//!   (`t >= '2024-05-01T00:00:00Z'`), parsed when the expression is parsed.
//! - Timestamp fields also compare with times relative to the moment of
//!   evaluation: `reported_at > now() - 7d`. `now()` is read when the
//!   filter runs (a sync rule when the change is planned for sending, an
//!   access filter when the row is read), never when the definition is
//!   loaded, so a rule loaded a week ago still means "the last 7 days".
//!   Only the ordering operators take a time: `==` against a clock that
//!   moves every microsecond is never meant. A time compared with anything
//!   but a timestamp field is refused by [`Expr::check`] (and is false).
//! - Values of different types never compare: the test is false — for `!=`
//!   too (`x != 'a'` on an int `x` is false; [`Expr::check`] reports it).
//! - `x in [a, b]` means `x == a or x == b`; `x not in [a, b]` means
//!   `x != a and x != b` (so both are false when `x` is null).
//! - `contains` is a substring test on strings (and json strings) and an
//!   element test on json arrays (`tags contains 'red'`). Anything else is
//!   false.
//! - Json fields: scalars compare like the matching plain type with `==`,
//!   `!=` and `in`; ordering (`<` …) on json and bool fields is always false
//!   and refused by [`Expr::check`]. Json arrays and objects equal nothing.
//! - A float that is NaN equals and orders against nothing.
//!
//! # Limits
//!
//! Expressions come from definition files that may be hostile or broken, so
//! the parser refuses sources over [`MAX_SOURCE_BYTES`] bytes, nesting of
//! `(`/`not` deeper than [`MAX_DEPTH`] (checked while descending, so no input
//! can overflow the stack, and every later walk of the tree is as shallow),
//! and `in` lists over [`MAX_LIST_LEN`] values.
//!
//! # Equality and display
//!
//! Two [`Expr`]s are equal when they mean the same tree, whatever their
//! spacing, keyword case or operator spelling (`&&` vs `and`); positions and
//! source text take no part. [`Expr`]'s `Display` writes the canonical text
//! (lowercase keywords, single quotes, minimal parentheses), which parses back
//! to an equal `Expr`.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use crate::record::{Fields, Timestamp, Value};

/// The longest source text accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// How deeply `(` and `not` may nest.
pub const MAX_DEPTH: usize = 64;
/// How many values an `in` list may hold.
pub const MAX_LIST_LEN: usize = 1024;

/// What is wrong with an expression, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ExprError {
    /// Byte offset in the source text.
    pub offset: usize,
    /// 1-based column, counted in characters from the start of the source (an
    /// expression is one line in practice; counting from the start keeps the
    /// column unambiguous even when it is not).
    pub column: usize,
    pub message: String,
}

impl ExprError {
    fn new(source: &str, offset: usize, message: impl Into<String>) -> ExprError {
        let column = source
            .get(..offset)
            .map_or(0, |before| before.chars().count())
            + 1;
        ExprError {
            offset,
            column,
            message: message.into(),
        }
    }
}

/// A declared field type, as [`Expr::check`] needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperandType {
    String,
    Int,
    Float,
    Bool,
    Timestamp,
    Json,
}

impl OperandType {
    /// The type's name as product definitions spell it.
    fn name(self) -> &'static str {
        match self {
            OperandType::String => "string",
            OperandType::Int => "int",
            OperandType::Float => "float",
            OperandType::Bool => "bool",
            OperandType::Timestamp => "timestamp",
            OperandType::Json => "json",
        }
    }
}

/// An instance's bookkeeping that `_meta.*` fields read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMeta {
    pub version: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub event_time: Timestamp,
}

/// Which `_meta` field a predicate reads; resolved at parse time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaField {
    LastSeen,
    FirstSeen,
    EventTime,
    Version,
}

impl MetaField {
    const ALL: [(&'static str, MetaField); 4] = [
        ("lastSeen", MetaField::LastSeen),
        ("firstSeen", MetaField::FirstSeen),
        ("eventTime", MetaField::EventTime),
        ("version", MetaField::Version),
    ];

    /// `_meta.lastSeen` → `LastSeen`; `None` for any other name.
    fn of(field: &str) -> Option<MetaField> {
        let name = field.strip_prefix("_meta.")?;
        MetaField::ALL
            .iter()
            .find(|(text, _)| *text == name)
            .map(|(_, meta)| *meta)
    }

    fn operand_type(self) -> OperandType {
        match self {
            MetaField::Version => OperandType::Int,
            _ => OperandType::Timestamp,
        }
    }

    fn value(self, row: &RowMeta) -> Value {
        match self {
            MetaField::LastSeen => Value::Timestamp(row.last_seen),
            MetaField::FirstSeen => Value::Timestamp(row.first_seen),
            MetaField::EventTime => Value::Timestamp(row.event_time),
            MetaField::Version => Value::Int(i64::try_from(row.version).unwrap_or(i64::MAX)),
        }
    }
}

/// A parsed row filter: immutable, cheap to evaluate, safe to share.
#[derive(Clone, Debug)]
pub struct Expr {
    source: String,
    root: Node,
    /// Whether any predicate compares with `now()`: only then does
    /// [`Expr::eval`] read the clock.
    relative: bool,
}

/// Equal when the trees are; see the module docs.
impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.root == other.root
    }
}

/// Parses a row filter, with an error that says where and what was expected.
pub fn parse(source: &str) -> Result<Expr, ExprError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ExprError::new(
            source,
            0,
            format!(
                "expression is {} bytes long; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    let mut parser = Parser {
        lexer: Lexer {
            src: source,
            pos: 0,
        },
        peeked: None,
        depth: 0,
    };
    let first = parser.next()?;
    if first.kind == Tok::Eof {
        return Err(parser.error(first.start, "expression is empty"));
    }
    parser.push_back(first);
    let root = parser.parse_or()?;
    let end = parser.next()?;
    match end.kind {
        Tok::Eof => {
            let mut relative = false;
            root.for_each_predicate(&mut |p| {
                if let Test::Compare { literal, .. } = &p.test {
                    relative |= matches!(literal.value, LitValue::Now { .. });
                }
            });
            Ok(Expr {
                source: source.to_string(),
                root,
                relative,
            })
        }
        Tok::RParen => Err(parser.error(end.start, "found `)` with no matching `(`")),
        _ => Err(parser.error(
            end.start,
            format!(
                "expected `and`, `or` or end of input, found {}",
                parser.describe(&end)
            ),
        )),
    }
}

impl Expr {
    /// The text this expression was parsed from, as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every field name the expression reads, e.g. to check a projection
    /// keeps them.
    pub fn fields(&self) -> BTreeSet<&str> {
        let mut names = BTreeSet::new();
        self.root.for_each_predicate(&mut |p| {
            names.insert(p.field.as_str());
        });
        names
    }

    /// Whether the record passes the filter, `now()` being this moment.
    /// Never panics, never allocates; see the module docs for how nulls and
    /// mismatched types behave.
    pub fn eval(&self, fields: &Fields) -> bool {
        let now = if self.relative {
            Timestamp::now()
        } else {
            Timestamp::MIN
        };
        self.root.eval(fields, None, now)
    }

    /// Whether an instance passes the filter: its fields, and its `_meta`
    /// for `_meta.*`, `now()` being this moment.
    pub fn eval_row(&self, fields: &Fields, meta: &RowMeta) -> bool {
        let now = if self.relative {
            Timestamp::now()
        } else {
            Timestamp::MIN
        };
        self.root.eval(fields, Some(meta), now)
    }

    /// Whether the record passes the filter with `now()` being `now`: one
    /// clock for a whole scan, and deterministic tests.
    pub fn eval_at(&self, fields: &Fields, meta: Option<&RowMeta>, now: Timestamp) -> bool {
        self.root.eval(fields, meta, now)
    }

    /// Whether the filter compares with `now()`, so its answer for one row
    /// changes as time passes.
    pub fn is_relative(&self) -> bool {
        self.relative
    }

    /// Type-checks literals against the declared field types; returns every
    /// problem. `field_type` answers `None` for a name the product does not
    /// declare.
    pub fn check(&self, field_type: &dyn Fn(&str) -> Option<OperandType>) -> Vec<ExprError> {
        let mut problems = Vec::new();
        self.root.for_each_predicate(&mut |p| {
            for (offset, message) in p.check(field_type) {
                problems.push(ExprError::new(&self.source, offset, message));
            }
        });
        problems
    }
}

/// The canonical text: parses back to an equal [`Expr`].
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

// ---------------------------------------------------------------------------
// Tree
// ---------------------------------------------------------------------------

/// Where something was written (a byte offset). Positions serve diagnostics
/// only, so they never take part in equality: `a==1` equals `a == 1`.
#[derive(Clone, Copy, Debug, Default)]
struct At(usize);

impl PartialEq for At {
    fn eq(&self, _: &At) -> bool {
        true
    }
}

/// `Or` and `And` hold at least two children; the parser keeps a nested
/// group of the same kind nested (`a or (b or c)`) so display round-trips.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Predicate(Predicate),
}

#[derive(Clone, Debug, PartialEq)]
struct Predicate {
    field: String,
    /// Set when `field` is one of `_meta.*`.
    meta: Option<MetaField>,
    at: At,
    test: Test,
}

#[derive(Clone, Debug, PartialEq)]
enum Test {
    Compare { op: CmpOp, literal: Literal },
    In { negated: bool, list: Vec<Literal> },
    Contains(Literal),
    IsNull { negated: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    fn holds(self, ordering: Ordering) -> bool {
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
struct Literal {
    value: LitValue,
    at: At,
}

#[derive(Clone, Debug, PartialEq)]
enum LitValue {
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
    fn string(text: String) -> LitValue {
        let timestamp = Timestamp::parse_rfc3339(&text).ok();
        LitValue::Str { text, timestamp }
    }

    /// "a string", "an integer": for messages.
    fn kind(&self) -> &'static str {
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

/// `now + offset` microseconds, saturating at the ends of time.
fn shifted(now: Timestamp, offset: i64) -> Timestamp {
    Timestamp::from_micros(now.as_micros().saturating_add(offset))
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

static NULL: Value = Value::Null;

/// A field value seen as something a literal can be compared with.
#[derive(Clone, Copy)]
enum Operand<'a> {
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
    fn of(value: &'a Value) -> Operand<'a> {
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

    fn of_json(value: &'a serde_json::Value) -> Operand<'a> {
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
    fn compare(self, literal: &LitValue, now: Timestamp) -> Option<Ordering> {
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
    fn equals(self, literal: &LitValue) -> bool {
        self.compare(literal, Timestamp::MIN) == Some(Ordering::Equal)
    }

    fn differs(self, literal: &LitValue) -> bool {
        matches!(
            self.compare(literal, Timestamp::MIN),
            Some(Ordering::Less | Ordering::Greater)
        )
    }
}

/// Compares an int with a float exactly, without rounding the int through
/// `f64` (which would make `2^53 + 1 == 2^53 as f64`).
fn cmp_int_float(int: i64, float: f64) -> Option<Ordering> {
    if float.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
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
    fn eval(&self, fields: &Fields, meta: Option<&RowMeta>, now: Timestamp) -> bool {
        match self {
            Node::Or(children) => children.iter().any(|c| c.eval(fields, meta, now)),
            Node::And(children) => children.iter().all(|c| c.eval(fields, meta, now)),
            Node::Not(inner) => !inner.eval(fields, meta, now),
            Node::Predicate(p) => p.eval(fields, meta, now),
        }
    }

    /// Visits predicates in source order.
    fn for_each_predicate<'a>(&'a self, visit: &mut dyn FnMut(&'a Predicate)) {
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

impl Predicate {
    fn eval(&self, fields: &Fields, meta: Option<&RowMeta>, now: Timestamp) -> bool {
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

    /// Every problem with this predicate against the declared field types,
    /// as (byte offset, message).
    fn check(&self, field_type: &dyn Fn(&str) -> Option<OperandType>) -> Vec<(usize, String)> {
        let field = &self.field;
        let ty = match self.meta {
            Some(meta) => meta.operand_type(),
            None if field.starts_with("_meta.") => {
                let known: Vec<String> = MetaField::ALL
                    .iter()
                    .map(|(name, _)| format!("_meta.{name}"))
                    .collect();
                return vec![(
                    self.at.0,
                    format!(
                        "unknown field `{field}`; the _meta fields are {}",
                        known.join(", ")
                    ),
                )];
            }
            None => match field_type(field) {
                Some(ty) => ty,
                None => return vec![(self.at.0, format!("unknown field `{field}`"))],
            },
        };
        let mut problems = Vec::new();
        match &self.test {
            Test::IsNull { .. } => {}
            Test::Compare { literal, .. } if literal.value == LitValue::Null => {}
            Test::Compare { op, literal } => {
                if op.is_ordering() && matches!(ty, OperandType::Bool | OperandType::Json) {
                    problems.push((
                        self.at.0,
                        format!(
                            "cannot order {} field `{field}` with `{}`; use `==`, `!=` or `in`",
                            ty.name(),
                            op.symbol()
                        ),
                    ));
                } else {
                    problems.extend(check_literal(ty, field, literal));
                }
            }
            Test::In { list, .. } => {
                for literal in list {
                    problems.extend(check_literal(ty, field, literal));
                }
            }
            Test::Contains(needle) => match ty {
                OperandType::Json => {}
                OperandType::String => {
                    if !matches!(needle.value, LitValue::Str { .. }) {
                        problems.push((
                            needle.at.0,
                            format!(
                                "`contains` on string field `{field}` needs a string, found {}",
                                needle.value.kind()
                            ),
                        ));
                    }
                }
                other => problems.push((
                    self.at.0,
                    format!(
                        "`contains` needs a string or json field; `{field}` is a {} field",
                        other.name()
                    ),
                )),
            },
        }
        problems
    }
}

/// Whether `literal` can ever compare with a field of type `ty`.
fn check_literal(ty: OperandType, field: &str, literal: &Literal) -> Option<(usize, String)> {
    if let LitValue::Now { .. } = literal.value {
        if ty == OperandType::Timestamp {
            return None;
        }
        return Some((
            literal.at.0,
            format!(
                "cannot compare {} field `{field}` with a time ({}): only timestamp fields \
                 compare with now()",
                ty.name(),
                Literal::display(&literal.value)
            ),
        ));
    }
    let fits = match (ty, &literal.value) {
        (_, LitValue::Null) | (OperandType::Json, _) => true,
        (OperandType::String, LitValue::Str { .. }) => true,
        (OperandType::Int | OperandType::Float, LitValue::Int(_) | LitValue::Float(_)) => true,
        (OperandType::Bool, LitValue::Bool(_)) => true,
        (
            OperandType::Timestamp,
            LitValue::Str {
                timestamp: Some(_), ..
            },
        ) => true,
        (
            OperandType::Timestamp,
            LitValue::Str {
                text,
                timestamp: None,
            },
        ) => {
            return Some((
                literal.at.0,
                format!(
                    "cannot compare timestamp field `{field}` with {}: not an RFC 3339 \
                     timestamp like '2024-05-01T12:00:00Z'",
                    quote(text)
                ),
            ));
        }
        _ => false,
    };
    if fits {
        return None;
    }
    let hint = if ty == OperandType::Timestamp {
        "; write the time as an RFC 3339 string like '2024-05-01T12:00:00Z'"
    } else {
        ""
    };
    Some((
        literal.at.0,
        format!(
            "cannot compare {} field `{field}` with {}{hint}",
            ty.name(),
            literal.value.kind()
        ),
    ))
}

// ---------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Or(children) => write_joined(f, children, " or ", |c| matches!(c, Node::Or(_))),
            Node::And(children) => write_joined(f, children, " and ", |c| {
                matches!(c, Node::Or(_) | Node::And(_))
            }),
            Node::Not(inner) => {
                f.write_str("not ")?;
                write_child(f, inner, matches!(**inner, Node::Or(_) | Node::And(_)))
            }
            Node::Predicate(p) => p.fmt(f),
        }
    }
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    children: &[Node],
    separator: &str,
    needs_parens: impl Fn(&Node) -> bool,
) -> fmt::Result {
    for (i, child) in children.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_child(f, child, needs_parens(child))?;
    }
    Ok(())
}

fn write_child(f: &mut fmt::Formatter<'_>, child: &Node, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({child})")
    } else {
        write!(f, "{child}")
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = &self.field;
        match &self.test {
            Test::Compare { op, literal } => write!(f, "{field} {} {literal}", op.symbol()),
            Test::In { negated, list } => {
                let not = if *negated { "not " } else { "" };
                write!(f, "{field} {not}in [")?;
                for (i, literal) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{literal}")?;
                }
                f.write_str("]")
            }
            Test::Contains(needle) => write!(f, "{field} contains {needle}"),
            Test::IsNull { negated: false } => write!(f, "{field} is null"),
            Test::IsNull { negated: true } => write!(f, "{field} is not null"),
        }
    }
}

impl Literal {
    /// The canonical text of a literal value, for messages.
    fn display(value: &LitValue) -> String {
        Literal {
            value: value.clone(),
            at: At(0),
        }
        .to_string()
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            LitValue::Now { offset: 0 } => f.write_str("now()"),
            LitValue::Now { offset } => {
                let sign = if *offset < 0 { '-' } else { '+' };
                write!(f, "now() {sign} ")?;
                write_duration(f, offset.unsigned_abs())
            }
            LitValue::Null => f.write_str("null"),
            LitValue::Bool(b) => write!(f, "{b}"),
            LitValue::Int(i) => write!(f, "{i}"),
            // Debug keeps a `.0` or an exponent, so the text lexes back as a float,
            // and is the shortest text that round-trips exactly.
            LitValue::Float(x) => write!(f, "{x:?}"),
            LitValue::Str { text, .. } => f.write_str(&quote(text)),
        }
    }
}

/// Microseconds in each duration unit, largest first; `write_duration`
/// and the lexer share it so display and parsing agree.
const UNITS: [(&str, u64); 6] = [
    ("w", 7 * 86_400_000_000),
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
];

/// A duration as compound units without weeks (`14d`, `1d12h`, `1m30s`).
/// Every duration the lexer makes is a whole number of milliseconds, its
/// smallest unit, so this text lexes back to the same value.
fn write_duration(f: &mut fmt::Formatter<'_>, micros: u64) -> fmt::Result {
    if micros < 1_000 {
        return f.write_str("0s");
    }
    let mut rest = micros;
    for (unit, size) in UNITS.iter().skip(1) {
        if rest >= *size {
            write!(f, "{}{unit}", rest / size)?;
            rest %= size;
        }
    }
    Ok(())
}

/// `text` as a single-quoted literal that lexes back to `text`.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Field,
    Keyword(Keyword),
    Str(String),
    Int(i64),
    Float(f64),
    /// A signed duration in microseconds (`7d`, `-1h30m`).
    Duration(i64),
    Plus,
    /// A `-` not followed by a digit (`now() - 1h`).
    Minus,
    Cmp(CmpOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    AndAnd,
    OrOr,
    Bang,
    Eof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keyword {
    And,
    Or,
    Not,
    In,
    Contains,
    Is,
    Null,
    True,
    False,
}

impl Keyword {
    fn from_word(word: &str) -> Option<Keyword> {
        const KEYWORDS: [(&str, Keyword); 9] = [
            ("and", Keyword::And),
            ("or", Keyword::Or),
            ("not", Keyword::Not),
            ("in", Keyword::In),
            ("contains", Keyword::Contains),
            ("is", Keyword::Is),
            ("null", Keyword::Null),
            ("true", Keyword::True),
            ("false", Keyword::False),
        ];
        KEYWORDS
            .iter()
            .find(|(text, _)| word.eq_ignore_ascii_case(text))
            .map(|(_, keyword)| *keyword)
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
}

/// Turns source text into tokens on demand, so the first error reported is
/// the first one in the text.
struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

fn is_field_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'s> Lexer<'s> {
    fn error(&self, offset: usize, message: impl Into<String>) -> ExprError {
        ExprError::new(self.src, offset, message)
    }

    fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek_char() == Some(expected) {
            self.pos += expected.len_utf8();
            true
        } else {
            false
        }
    }

    fn next_token(&mut self) -> Result<Token, ExprError> {
        while self.peek_char().is_some_and(char::is_whitespace) {
            self.bump();
        }
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: Tok::Eof,
                start,
                end: start,
            });
        };
        let kind = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            ',' => Tok::Comma,
            '+' => Tok::Plus,
            '=' => {
                if self.eat('=') {
                    if self.eat('=') {
                        return Err(self.unknown_operator(start, "`==`"));
                    }
                    Tok::Cmp(CmpOp::Eq)
                } else if self.eat('<') {
                    return Err(self.unknown_operator(start, "`<=`"));
                } else if self.eat('>') {
                    return Err(self.unknown_operator(start, "`>=`"));
                } else {
                    return Err(self.unknown_operator(start, "`==`"));
                }
            }
            '!' => {
                if self.eat('=') {
                    if self.eat('=') {
                        return Err(self.unknown_operator(start, "`!=`"));
                    }
                    Tok::Cmp(CmpOp::Ne)
                } else {
                    Tok::Bang
                }
            }
            '<' => {
                if self.eat('=') {
                    Tok::Cmp(CmpOp::Le)
                } else if self.eat('>') {
                    return Err(self.unknown_operator(start, "`!=`"));
                } else {
                    Tok::Cmp(CmpOp::Lt)
                }
            }
            '>' => {
                if self.eat('=') {
                    Tok::Cmp(CmpOp::Ge)
                } else {
                    Tok::Cmp(CmpOp::Gt)
                }
            }
            '&' => {
                if self.eat('&') {
                    Tok::AndAnd
                } else {
                    return Err(self.unknown_operator(start, "`&&` or `and`"));
                }
            }
            '|' => {
                if self.eat('|') {
                    Tok::OrOr
                } else {
                    return Err(self.unknown_operator(start, "`||` or `or`"));
                }
            }
            '\'' | '"' => self.string(start, c)?,
            '-' | '0'..='9' => self.number(start)?,
            c if is_field_start(c) => {
                while self.peek_char().is_some_and(is_field_char) {
                    self.bump();
                }
                // `_meta.lastSeen`: the one dotted name.
                if &self.src[start..self.pos] == "_meta" && self.peek_char() == Some('.') {
                    self.bump();
                    while self.peek_char().is_some_and(is_field_char) {
                        self.bump();
                    }
                }
                match Keyword::from_word(&self.src[start..self.pos]) {
                    Some(keyword) => Tok::Keyword(keyword),
                    None => Tok::Field,
                }
            }
            '.' if self.peek_char().is_some_and(|d| d.is_ascii_digit()) => {
                return Err(self.error(start, "a number needs a digit before the `.`, like 0.5"));
            }
            c => {
                return Err(self.error(
                    start,
                    format!("unexpected character `{}`", c.escape_debug()),
                ));
            }
        };
        Ok(Token {
            kind,
            start,
            end: self.pos,
        })
    }

    fn unknown_operator(&self, start: usize, suggestion: &str) -> ExprError {
        let found = &self.src[start..self.pos];
        self.error(
            start,
            format!("unknown operator `{found}`; did you mean {suggestion}?"),
        )
    }

    /// A quoted string; the opening quote is already consumed.
    fn string(&mut self, start: usize, quote: char) -> Result<Tok, ExprError> {
        let mut text = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.error(
                    start,
                    format!(
                        "unterminated string starting at column {}",
                        ExprError::new(self.src, start, "").column
                    ),
                ));
            };
            match c {
                c if c == quote => return Ok(Tok::Str(text)),
                '\\' => {
                    let escape_at = self.pos - 1;
                    match self.bump() {
                        Some('\\') => text.push('\\'),
                        Some('\'') => text.push('\''),
                        Some('"') => text.push('"'),
                        Some('n') => text.push('\n'),
                        Some('t') => text.push('\t'),
                        Some('r') => text.push('\r'),
                        // End of input: reported as unterminated on the next turn.
                        None => {}
                        Some(other) => {
                            return Err(self.error(
                                escape_at,
                                format!(
                                    "unknown escape `\\{}` in string; use \\\\, \\', \\\", \\n, \\t or \\r",
                                    other.escape_debug()
                                ),
                            ));
                        }
                    }
                }
                c => text.push(c),
            }
        }
    }

    /// A number; its first character (`-` or a digit) is already consumed.
    fn number(&mut self, start: usize) -> Result<Tok, ExprError> {
        let digits = |lexer: &mut Lexer<'_>| {
            let from = lexer.pos;
            while lexer.peek_char().is_some_and(|c| c.is_ascii_digit()) {
                lexer.bump();
            }
            lexer.pos > from
        };
        if self.src.as_bytes().get(start) == Some(&b'-') && !digits(self) {
            // The parser decides whether a lone `-` is allowed here.
            return Ok(Tok::Minus);
        }
        digits(self);
        let mut is_float = false;
        if self.peek_char() == Some('.') {
            self.bump();
            is_float = true;
            if !digits(self) {
                return Err(self.error(
                    start,
                    format!(
                        "expected a digit after the `.` in number `{}`",
                        &self.src[start..self.pos]
                    ),
                ));
            }
        }
        if matches!(self.peek_char(), Some('e' | 'E'))
            && (self
                .peek_second()
                .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-'))
        {
            self.bump();
            is_float = true;
            if !self.eat('+') {
                self.eat('-');
            }
            if !digits(self) {
                return Err(self.error(
                    start,
                    format!(
                        "expected digits in the exponent of number `{}`",
                        &self.src[start..self.pos]
                    ),
                ));
            }
        }
        if !is_float && self.peek_char().is_some_and(|c| c.is_ascii_alphabetic()) {
            while self.peek_char().is_some_and(is_field_char) {
                self.bump();
            }
            let text = &self.src[start..self.pos];
            return lex_duration(text)
                .map(Tok::Duration)
                .map_err(|why| self.error(start, format!("invalid number `{text}`; {why}")));
        }
        if self
            .peek_char()
            .is_some_and(|c| is_field_char(c) || c == '.')
        {
            while self
                .peek_char()
                .is_some_and(|c| is_field_char(c) || c == '.')
            {
                self.bump();
            }
            return Err(self.error(
                start,
                format!("invalid number `{}`", &self.src[start..self.pos]),
            ));
        }
        let text = &self.src[start..self.pos];
        if is_float {
            match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Tok::Float(x)),
                _ => Err(self.error(start, format!("number `{text}` is out of range"))),
            }
        } else {
            text.parse::<i64>().map(Tok::Int).map_err(|_| {
                self.error(
                    start,
                    format!(
                        "integer `{text}` is out of range (from {} to {})",
                        i64::MIN,
                        i64::MAX
                    ),
                )
            })
        }
    }
}

/// A duration token's text (`7d`, `-1h30m`) as signed microseconds, or
/// why it is not one.
fn lex_duration(text: &str) -> Result<i64, String> {
    const HINT: &str = "a duration is a number with a unit: ms, s, m, h, d or w (e.g. 7d, 1h30m)";
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (number, unit) = (&rest[..digits], &rest[digits..digits + letters]);
        let size = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, size)| *size);
        let (Ok(number), Some(size)) = (number.parse::<i64>(), size) else {
            return Err(HINT.to_string());
        };
        total = i64::try_from(size)
            .ok()
            .and_then(|size| number.checked_mul(size))
            .and_then(|micros| total.checked_add(micros))
            .ok_or_else(|| "the duration is out of range".to_string())?;
        rest = &rest[digits + letters..];
    }
    Ok(if negative { -total } else { total })
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

/// Recursive descent with one token of lookahead. Recursion happens only
/// through `(` and `not`, and `depth` bounds both.
struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token>,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn error(&self, offset: usize, message: impl Into<String>) -> ExprError {
        self.lexer.error(offset, message)
    }

    fn next(&mut self) -> Result<Token, ExprError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    fn push_back(&mut self, token: Token) {
        self.peeked = Some(token);
    }

    /// Consumes the next token when `wanted` says so.
    fn next_if(&mut self, wanted: impl Fn(&Tok) -> bool) -> Result<Option<Token>, ExprError> {
        let token = self.next()?;
        if wanted(&token.kind) {
            Ok(Some(token))
        } else {
            self.push_back(token);
            Ok(None)
        }
    }

    /// How a token reads in an error message: "end of input", "field `x`",
    /// "string 'x'", "number 3", "`)`".
    fn describe(&self, token: &Token) -> String {
        let text = self.lexer.src.get(token.start..token.end).unwrap_or("");
        let shown: String = if text.chars().count() > 40 {
            text.chars().take(40).chain("…".chars()).collect()
        } else {
            text.to_string()
        };
        match token.kind {
            Tok::Eof => "end of input".to_string(),
            Tok::Field => format!("field `{shown}`"),
            Tok::Str(_) => format!("string {shown}"),
            Tok::Int(_) | Tok::Float(_) => format!("number {shown}"),
            Tok::Duration(_) => format!("duration {shown}"),
            _ => format!("`{shown}`"),
        }
    }

    fn descend(&mut self, at: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(
                at,
                format!("expression nests deeper than {MAX_DEPTH} levels of `(` and `not`"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, ExprError> {
        let mut children = vec![self.parse_and(None)?];
        while let Some(op) = self.next_if(|t| matches!(t, Tok::Keyword(Keyword::Or) | Tok::OrOr))? {
            let after = self.lexer.src[op.start..op.end].to_string();
            children.push(self.parse_and(Some(&after))?);
        }
        Ok(if children.len() == 1 {
            children.swap_remove(0)
        } else {
            Node::Or(children)
        })
    }

    fn parse_and(&mut self, after: Option<&str>) -> Result<Node, ExprError> {
        let mut children = vec![self.parse_unary(after)?];
        while let Some(op) =
            self.next_if(|t| matches!(t, Tok::Keyword(Keyword::And) | Tok::AndAnd))?
        {
            let after = self.lexer.src[op.start..op.end].to_string();
            children.push(self.parse_unary(Some(&after))?);
        }
        Ok(if children.len() == 1 {
            children.swap_remove(0)
        } else {
            Node::And(children)
        })
    }

    /// `after` names the token before this operand, for error messages.
    fn parse_unary(&mut self, after: Option<&str>) -> Result<Node, ExprError> {
        let token = self.next()?;
        match token.kind {
            Tok::Keyword(Keyword::Not) | Tok::Bang => {
                self.descend(token.start)?;
                let text = self.lexer.src[token.start..token.end].to_string();
                let inner = self.parse_unary(Some(&text))?;
                self.depth -= 1;
                Ok(Node::Not(Box::new(inner)))
            }
            Tok::LParen => {
                self.descend(token.start)?;
                let inner = self.parse_or_in_parens(token.start)?;
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Field => {
                let name = self.lexer.src[token.start..token.end].to_string();
                self.parse_predicate(name, token.start)
            }
            _ => {
                let after = after.map_or(String::new(), |a| format!(" after `{a}`"));
                Err(self.error(
                    token.start,
                    format!(
                        "expected a field name, `not` or `(`{after}, found {}",
                        self.describe(&token)
                    ),
                ))
            }
        }
    }

    fn parse_or_in_parens(&mut self, open: usize) -> Result<Node, ExprError> {
        let token = self.next()?;
        if token.kind == Tok::RParen {
            return Err(self.error(token.start, "expected an expression inside `()`"));
        }
        self.push_back(token);
        let inner = self.parse_or()?;
        let close = self.next()?;
        if close.kind != Tok::RParen {
            let column = ExprError::new(self.lexer.src, open, "").column;
            return Err(self.error(
                close.start,
                format!(
                    "expected `)` to close the `(` at column {column}, found {}",
                    self.describe(&close)
                ),
            ));
        }
        Ok(inner)
    }

    fn parse_predicate(&mut self, field: String, at: usize) -> Result<Node, ExprError> {
        let token = self.next()?;
        let test = match token.kind {
            Tok::Cmp(op) => {
                let literal = self.parse_literal(op.symbol())?;
                if !op.is_ordering() && matches!(literal.value, LitValue::Now { .. }) {
                    return Err(self.error(
                        literal.at.0,
                        format!(
                            "`{}` with a time relative to now() holds for at most one \
                             microsecond; use `<`, `<=`, `>` or `>=`",
                            op.symbol()
                        ),
                    ));
                }
                if op.is_ordering() && literal.value == LitValue::Null {
                    return Err(self.error(
                        literal.at.0,
                        format!(
                            "`{}` cannot compare with `null`; use `is null` or `is not null`",
                            op.symbol()
                        ),
                    ));
                }
                Test::Compare { op, literal }
            }
            Tok::Keyword(Keyword::In) => Test::In {
                negated: false,
                list: self.parse_list("in")?,
            },
            Tok::Keyword(Keyword::Not) => {
                let next = self.next()?;
                if next.kind != Tok::Keyword(Keyword::In) {
                    return Err(self.error(
                        next.start,
                        format!(
                            "expected `in` after `{field} not`, found {}",
                            self.describe(&next)
                        ),
                    ));
                }
                Test::In {
                    negated: true,
                    list: self.parse_list("not in")?,
                }
            }
            Tok::Keyword(Keyword::Contains) => {
                let needle = self.parse_literal("contains")?;
                self.refuse_time(&needle, "contains")?;
                if needle.value == LitValue::Null {
                    return Err(self.error(
                        needle.at.0,
                        "`contains` needs a value, not `null`; use `is null` to test for null",
                    ));
                }
                Test::Contains(needle)
            }
            Tok::Keyword(Keyword::Is) => {
                let negated = self
                    .next_if(|t| *t == Tok::Keyword(Keyword::Not))?
                    .is_some();
                let null = self.next()?;
                if null.kind != Tok::Keyword(Keyword::Null) {
                    return Err(self.error(
                        null.start,
                        format!(
                            "expected `null` after `{}`, found {}",
                            if negated { "is not" } else { "is" },
                            self.describe(&null)
                        ),
                    ));
                }
                Test::IsNull { negated }
            }
            Tok::LParen if field.eq_ignore_ascii_case("now") => {
                return Err(self.error(
                    at,
                    "now() goes on the right of a comparison, after a timestamp field: \
                     write `reported_at > now() - 7d`",
                ));
            }
            _ => {
                return Err(self.error(
                    token.start,
                    format!(
                        "expected an operator after field `{field}` (==, !=, <, <=, >, >=, in, \
                         not in, contains, is null), found {}",
                        self.describe(&token)
                    ),
                ));
            }
        };
        Ok(Node::Predicate(Predicate {
            meta: MetaField::of(&field),
            field,
            at: At(at),
            test,
        }))
    }

    fn parse_literal(&mut self, after: &str) -> Result<Literal, ExprError> {
        let token = self.next()?;
        let value = match token.kind {
            Tok::Str(text) => LitValue::string(text),
            Tok::Int(i) => LitValue::Int(i),
            Tok::Float(x) => LitValue::Float(x),
            Tok::Keyword(Keyword::True) => LitValue::Bool(true),
            Tok::Keyword(Keyword::False) => LitValue::Bool(false),
            Tok::Keyword(Keyword::Null) => LitValue::Null,
            Tok::Field
                if self.lexer.src[token.start..token.end].eq_ignore_ascii_case("now")
                    && self.next_if(|t| *t == Tok::LParen)?.is_some() =>
            {
                self.parse_now(token.start)?
            }
            Tok::Minus => {
                return Err(self.error(token.start, "expected a digit after `-`"));
            }
            Tok::Duration(_) => {
                let text = &self.lexer.src[token.start..token.end];
                return Err(self.error(
                    token.start,
                    format!(
                        "a duration needs a time to count from: write `now() - {}`",
                        text.trim_start_matches('-')
                    ),
                ));
            }
            Tok::Field => {
                let name = &self.lexer.src[token.start..token.end];
                return Err(self.error(
                    token.start,
                    format!(
                        "expected a value after `{after}`, found field `{name}`; fields can only \
                         be compared with values (to compare with the text, quote it: '{name}')"
                    ),
                ));
            }
            _ => {
                return Err(self.error(
                    token.start,
                    format!(
                        "expected a value after `{after}`, found {}",
                        self.describe(&token)
                    ),
                ));
            }
        };
        Ok(Literal {
            value,
            at: At(token.start),
        })
    }

    /// The rest of `now() ± duration…`; `now(` is already consumed.
    fn parse_now(&mut self, start: usize) -> Result<LitValue, ExprError> {
        let close = self.next()?;
        if close.kind != Tok::RParen {
            return Err(self.error(
                close.start,
                format!(
                    "expected `)` after `now(`: now() takes no arguments, found {}",
                    self.describe(&close)
                ),
            ));
        }
        let mut offset: i64 = 0;
        loop {
            let token = self.next()?;
            let step = match token.kind {
                Tok::Plus | Tok::Minus => {
                    let sign = if token.kind == Tok::Plus { "+" } else { "-" };
                    let amount = self.next()?;
                    match amount.kind {
                        Tok::Duration(d) if d >= 0 => {
                            if sign == "-" {
                                -d
                            } else {
                                d
                            }
                        }
                        _ => {
                            return Err(self.error(
                                amount.start,
                                format!(
                                    "expected a duration after `now() {sign}`, like 7d, 1h, \
                                     30m or 10s; found {}",
                                    self.describe(&amount)
                                ),
                            ));
                        }
                    }
                }
                // `now()-7d` lexes the sign into the duration.
                Tok::Duration(d) if d < 0 => d,
                Tok::Int(i) if i < 0 => {
                    return Err(self.error(
                        token.start,
                        format!(
                            "expected a duration after `now() -`, like 7d, 1h, 30m or 10s; \
                             found {}",
                            self.describe(&token)
                        ),
                    ));
                }
                _ => {
                    self.push_back(token);
                    return Ok(LitValue::Now { offset });
                }
            };
            offset = offset
                .checked_add(step)
                .ok_or_else(|| self.error(start, "the offset from now() is out of range"))?;
        }
    }

    /// `now()` is compared with, never looked for in a list or a string.
    fn refuse_time(&self, literal: &Literal, place: &str) -> Result<(), ExprError> {
        if matches!(literal.value, LitValue::Now { .. }) {
            return Err(self.error(
                literal.at.0,
                format!(
                    "a time relative to now() cannot be used in {place}; compare with `<`, \
                     `<=`, `>` or `>=`"
                ),
            ));
        }
        Ok(())
    }

    fn parse_list(&mut self, after: &str) -> Result<Vec<Literal>, ExprError> {
        let open = self.next()?;
        if open.kind != Tok::LBracket {
            return Err(self.error(
                open.start,
                format!(
                    "expected `[` after `{after}`, found {}",
                    self.describe(&open)
                ),
            ));
        }
        let mut list = Vec::new();
        if self.next_if(|t| *t == Tok::RBracket)?.is_some() {
            return Ok(list);
        }
        let mut separator = "[";
        loop {
            let literal = self.parse_literal(separator)?;
            self.refuse_time(&literal, "a list")?;
            if literal.value == LitValue::Null {
                return Err(self.error(
                    literal.at.0,
                    "a list cannot hold `null`; use `is null` to test for null",
                ));
            }
            if list.len() == MAX_LIST_LEN {
                return Err(self.error(
                    literal.at.0,
                    format!("list has more than {MAX_LIST_LEN} values"),
                ));
            }
            list.push(literal);
            let token = self.next()?;
            match token.kind {
                Tok::Comma => separator = ",",
                Tok::RBracket => return Ok(list),
                _ => {
                    let column = ExprError::new(self.lexer.src, open.start, "").column;
                    return Err(self.error(
                        token.start,
                        format!(
                            "expected `,` or `]` in the list opened at column {column}, found {}",
                            self.describe(&token)
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn sample() -> Fields {
        record(&[
            ("site", Value::String("berlin".into())),
            ("temp", Value::Float(21.5)),
            ("count", Value::Int(3)),
            ("big", Value::Int(9_007_199_254_740_993)), // 2^53 + 1
            ("ok", Value::Bool(true)),
            ("nothing", Value::Null),
            (
                "seen",
                Value::Timestamp(Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap()),
            ),
            (
                "tags",
                Value::Json(serde_json::json!(["red", 7, 2.5, true, null])),
            ),
            ("doc", Value::Json(serde_json::json!({"a": 1}))),
            ("jstr", Value::Json(serde_json::json!("hello world"))),
            ("jnum", Value::Json(serde_json::json!(4))),
            ("jnull", Value::Json(serde_json::Value::Null)),
            ("nan", Value::Float(f64::NAN)),
        ])
    }

    #[track_caller]
    fn eval(source: &str) -> bool {
        match parse(source) {
            Ok(expr) => expr.eval(&sample()),
            Err(e) => panic!("`{source}` did not parse: {e}"),
        }
    }

    #[test]
    fn evaluates_every_operator_precedence_and_null_rule() {
        let cases: &[(&str, bool)] = &[
            // == and != on each type
            ("site == 'berlin'", true),
            ("site == \"berlin\"", true),
            ("site != 'berlin'", false),
            ("site != 'paris'", true),
            ("count == 3", true),
            ("count != 3", false),
            ("ok == true", true),
            ("ok != false", true),
            ("ok == false", false),
            // ordering
            ("count < 4", true),
            ("count <= 3", true),
            ("count > 3", false),
            ("count >= 3", true),
            ("site < 'c'", true),
            ("site > 'Berlin'", true), // byte order: 'b' > 'B'
            ("site >= 'berlin'", true),
            ("site > 'Zurich'", true), // byte order: 'b' > 'Z'
            // int/float mixing, exact
            ("count == 3.0", true),
            ("count < 3.5", true),
            ("count > 2.999", true),
            ("temp > 21", true),
            ("temp == 21.5", true),
            ("temp < 2.15e1", false),
            ("temp <= 2.15E+1", true),
            ("temp > -1e3", true),
            ("big > 9007199254740992.0", true),
            ("big == 9007199254740992.0", false),
            ("big != 9007199254740992.0", true),
            ("count < 1e300", true),
            ("count > -1e300", true),
            // in / not in
            ("site in ['paris', 'berlin']", true),
            ("site in ['paris']", false),
            ("site in []", false),
            ("site not in ['paris']", true),
            ("site not in ['berlin', 'paris']", false),
            ("site not in []", true),
            ("count in [1, 2.0, 3]", true),
            ("count not in [1, 2]", true),
            // contains
            ("site contains 'erl'", true),
            ("site contains 'x'", false),
            ("site contains ''", true),
            ("tags contains 'red'", true),
            ("tags contains 'blue'", false),
            ("tags contains 7", true),
            ("tags contains 7.0", true),
            ("tags contains 2.5", true),
            ("tags contains true", true),
            ("tags contains 're'", false),
            ("jstr contains 'lo wo'", true),
            ("count contains 3", false),
            ("doc contains 'a'", false),
            // json scalars
            ("jstr == 'hello world'", true),
            ("jnum == 4", true),
            ("jnum == 4.0", true),
            ("jnum in [1, 4]", true),
            ("jnum > 1", false), // json has no ordering
            ("doc == 1", false),
            ("tags == 'red'", false),
            // booleans have no ordering
            ("ok > false", false),
            // is null / == null / != null
            ("nothing is null", true),
            ("missing is null", true),
            ("jnull is null", true),
            ("site is null", false),
            ("site is not null", true),
            ("missing is not null", false),
            ("missing == null", true),
            ("missing != null", false),
            ("site != null", true),
            // null in anything else is false; two-valued not
            ("missing == 1", false),
            ("missing != 1", false),
            ("missing > 1", false),
            ("missing < 1", false),
            ("missing in [1]", false),
            ("missing not in [1]", false),
            ("missing not in []", false),
            ("missing contains 'a'", false),
            ("not (missing > 3)", true),
            ("not missing > 3", true),
            ("jnull == 1", false),
            // mismatched types are false, also for !=
            ("count == '3'", false),
            ("count != '3'", false),
            ("site == 1", false),
            ("site not in [1]", false),
            ("ok == 1", false),
            ("seen == 1", false),
            // NaN equals and orders against nothing
            ("nan == 1.0", false),
            ("nan != 1.0", false),
            ("nan < 1.0", false),
            // timestamps
            ("seen == '2024-05-01T12:00:00Z'", true),
            ("seen == '2024-05-01T14:00:00+02:00'", true),
            ("seen < '2024-05-01T12:00:00.000001Z'", true),
            ("seen > '2024-05-01T11:59:59Z'", true),
            ("seen >= '2025-01-01T00:00:00Z'", false),
            (
                "seen in ['2020-01-01T00:00:00Z', '2024-05-01T12:00:00Z']",
                true,
            ),
            ("seen == 'yesterday'", false),
            ("seen != 'yesterday'", false),
            // boolean operators and precedence
            ("site == 'berlin' and count == 3", true),
            ("site == 'berlin' and count == 4", false),
            ("site == 'paris' or count == 3", true),
            ("site == 'paris' or count == 4", false),
            ("site == 'paris' or count == 3 and ok == false", false), // and binds tighter
            ("(site == 'paris' or count == 3) and ok == true", true),
            ("site == 'berlin' or count == 4 and ok == false", true),
            ("not site == 'paris' and count == 3", true), // not binds tighter than and
            ("not (site == 'berlin' and count == 4)", true),
            ("not not site == 'berlin'", true),
            ("!(site == 'paris') && count == 3", true),
            ("site == 'paris' || !ok == false", true),
            ("SITE == 'berlin'", false), // field names are case-sensitive
            ("site == 'berlin' AND count IS NOT NULL", true),
            ("site NOT IN ['x'] Or ok == False", true),
            ("((((count == 3))))", true),
        ];
        for (source, expected) in cases {
            assert_eq!(eval(source), *expected, "`{source}`");
        }
    }

    #[test]
    fn eval_of_an_empty_record_is_all_null() {
        let empty = Fields::new();
        assert!(parse("a is null and b == null").unwrap().eval(&empty));
        assert!(!parse("a == 1 or a != 1").unwrap().eval(&empty));
    }

    #[test]
    fn int_float_comparison_is_exact_at_the_edges() {
        use Ordering::*;
        assert_eq!(
            cmp_int_float(i64::MAX, 9_223_372_036_854_775_808.0),
            Some(Less)
        );
        assert_eq!(
            cmp_int_float(i64::MIN, -9_223_372_036_854_775_808.0),
            Some(Equal)
        );
        assert_eq!(cmp_int_float(i64::MIN, -1e19), Some(Greater));
        assert_eq!(cmp_int_float(-3, -2.5), Some(Less));
        assert_eq!(cmp_int_float(-2, -2.5), Some(Greater));
        assert_eq!(cmp_int_float(0, -0.0), Some(Equal));
        assert_eq!(cmp_int_float(1, f64::NAN), None);
        assert_eq!(cmp_int_float(1, f64::INFINITY), Some(Less));
    }

    #[test]
    fn strings_unescape_and_display_canonically() {
        let expr = parse(r#"s == 'it\'s' or s == "a \"q\" \\ \n\t\r" or s == 'é"'"#).unwrap();
        let fields = record(&[("s", Value::String("a \"q\" \\ \n\t\r".into()))]);
        assert!(expr.eval(&fields));
        assert_eq!(
            expr.to_string(),
            r#"s == 'it\'s' or s == 'a "q" \\ \n\t\r' or s == 'é"'"#
        );
        assert_eq!(parse(&expr.to_string()).unwrap(), expr);
    }

    #[test]
    fn display_is_canonical_and_keeps_grouping() {
        let cases = [
            ("a==1&&b!=2||!c<3", "a == 1 and b != 2 or not c < 3"),
            (
                "a == 1 or (b == 2 or c == 3)",
                "a == 1 or (b == 2 or c == 3)",
            ),
            (
                "(a == 1 or b == 2) or c == 3",
                "(a == 1 or b == 2) or c == 3",
            ),
            (
                "a == 1 and (b == 2 and c == 3)",
                "a == 1 and (b == 2 and c == 3)",
            ),
            (
                "(a == 1 or b == 2) and c == 3",
                "(a == 1 or b == 2) and c == 3",
            ),
            ("NOT (a == 1 AND b == 2)", "not (a == 1 and b == 2)"),
            ("not(not(a is null))", "not not a is null"),
            ("a IN [1,2.0,'x',TRUE]", "a in [1, 2.0, 'x', true]"),
            ("a not in []", "a not in []"),
            ("a contains \"x\"", "a contains 'x'"),
            ("a is not null", "a is not null"),
            ("a == NULL", "a == null"),
            ("a >= -1e-7", "a >= -1e-7"),
            ("a < 1E3", "a < 1000.0"),
            ("a == -0.0", "a == -0.0"),
        ];
        for (source, canonical) in cases {
            let expr = parse(source).unwrap();
            assert_eq!(expr.to_string(), canonical, "`{source}`");
            assert_eq!(expr.source(), source);
            let again = parse(canonical).unwrap();
            assert_eq!(again, expr, "`{source}`");
        }
        // Equality ignores layout but not meaning.
        assert_eq!(parse("a==1").unwrap(), parse("  a  ==  1 ").unwrap());
        assert_ne!(parse("a == 1").unwrap(), parse("a == 1.0").unwrap());
        assert_ne!(
            parse("a == 1 or b == 2").unwrap(),
            parse("b == 2 or a == 1").unwrap()
        );
    }

    #[test]
    fn fields_lists_every_name_once() {
        let expr = parse("a == 1 or not (b in [1] and c contains 'x') or a is null").unwrap();
        assert_eq!(expr.fields(), BTreeSet::from(["a", "b", "c"]));
    }

    #[test]
    fn errors_say_where_what_was_found_and_what_was_expected() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "expression is empty"),
            ("   ", 4, "expression is empty"),
            (
                "site ==",
                8,
                "expected a value after `==`, found end of input",
            ),
            ("site = 'x'", 6, "unknown operator `=`; did you mean `==`?"),
            (
                "site === 'x'",
                6,
                "unknown operator `===`; did you mean `==`?",
            ),
            (
                "site !== 'x'",
                6,
                "unknown operator `!==`; did you mean `!=`?",
            ),
            (
                "site <> 'x'",
                6,
                "unknown operator `<>`; did you mean `!=`?",
            ),
            ("site =< 1", 6, "unknown operator `=<`; did you mean `<=`?"),
            ("site => 1", 6, "unknown operator `=>`; did you mean `>=`?"),
            (
                "a == 1 & b == 2",
                8,
                "unknown operator `&`; did you mean `&&` or `and`?",
            ),
            (
                "a == 1 | b == 2",
                8,
                "unknown operator `|`; did you mean `||` or `or`?",
            ),
            (
                "site == 'berl",
                9,
                "unterminated string starting at column 9",
            ),
            ("a == 1 or é == 2", 11, "unexpected character `é`"),
            ("s == 'x\\", 6, "unterminated string starting at column 6"),
            (
                "s == 'a\\qb'",
                8,
                "unknown escape `\\q` in string; use \\\\, \\', \\\", \\n, \\t or \\r",
            ),
            (
                "a == 1 and",
                11,
                "expected a field name, `not` or `(` after `and`, found end of input",
            ),
            (
                "a == 1 OR ) ",
                11,
                "expected a field name, `not` or `(` after `OR`, found `)`",
            ),
            (
                "not",
                4,
                "expected a field name, `not` or `(` after `not`, found end of input",
            ),
            (
                "(a == 1",
                8,
                "expected `)` to close the `(` at column 1, found end of input",
            ),
            ("()", 2, "expected an expression inside `()`"),
            ("a == 1)", 7, "found `)` with no matching `(`"),
            (
                "a == 1 b == 2",
                8,
                "expected `and`, `or` or end of input, found field `b`",
            ),
            (
                "a == 1 'x'",
                8,
                "expected `and`, `or` or end of input, found string 'x'",
            ),
            (
                "active",
                7,
                "expected an operator after field `active` (==, !=, <, <=, >, >=, in, not in, \
                 contains, is null), found end of input",
            ),
            (
                "'berlin' == site",
                1,
                "expected a field name, `not` or `(`, found string 'berlin'",
            ),
            (
                "and == 1",
                1,
                "expected a field name, `not` or `(`, found `and`",
            ),
            (
                "site == berlin",
                9,
                "expected a value after `==`, found field `berlin`; fields can only be \
                 compared with values (to compare with the text, quote it: 'berlin')",
            ),
            ("a == )", 6, "expected a value after `==`, found `)`"),
            ("a in 1", 6, "expected `[` after `in`, found number 1"),
            ("a not 1", 7, "expected `in` after `a not`, found number 1"),
            (
                "a in [1, 2",
                11,
                "expected `,` or `]` in the list opened at column 6, found end of input",
            ),
            ("a in [1,]", 9, "expected a value after `,`, found `]`"),
            (
                "a in [1, null]",
                10,
                "a list cannot hold `null`; use `is null` to test for null",
            ),
            ("a is 1", 6, "expected `null` after `is`, found number 1"),
            (
                "a is not true",
                10,
                "expected `null` after `is not`, found `true`",
            ),
            (
                "a < null",
                5,
                "`<` cannot compare with `null`; use `is null` or `is not null`",
            ),
            (
                "a contains null",
                12,
                "`contains` needs a value, not `null`; use `is null` to test for null",
            ),
            ("a == 1e999", 6, "number `1e999` is out of range"),
            (
                "a == 9223372036854775808",
                6,
                "integer `9223372036854775808` is out of range (from -9223372036854775808 to \
                 9223372036854775807)",
            ),
            (
                "a == 1.",
                6,
                "expected a digit after the `.` in number `1.`",
            ),
            (
                "a == 1e+",
                6,
                "expected digits in the exponent of number `1e+`",
            ),
            (
                "a == 12abc",
                6,
                "invalid number `12abc`; a duration is a number with a unit: ms, s, m, h, d or w \
                 (e.g. 7d, 1h30m)",
            ),
            ("a == - 3", 6, "expected a digit after `-`"),
            (
                "a == .5",
                6,
                "a number needs a digit before the `.`, like 0.5",
            ),
            ("a @ 1", 3, "unexpected character `@`"),
        ];
        for (source, column, message) in cases {
            let error = parse(source).expect_err(source);
            assert_eq!(
                (error.column, error.message.as_str()),
                (*column, *message),
                "`{source}`"
            );
            let prefix: String = source.chars().take(column - 1).collect();
            assert_eq!(error.offset, prefix.len(), "`{source}`");
        }
        assert_eq!(
            parse("site ==").unwrap_err().to_string(),
            "at column 8: expected a value after `==`, found end of input"
        );
    }

    #[test]
    fn now_is_read_at_evaluation_and_offsets_by_durations() {
        let seen = Timestamp::parse_rfc3339("2024-05-01T12:00:00Z").unwrap();
        let hours = |h: i64| Timestamp::from_micros(seen.as_micros() + h * 3_600_000_000);
        let record = sample();
        let cases: &[(&str, Timestamp, bool)] = &[
            ("seen > now() - 1h", hours(0), true),
            ("seen > now() - 1h", hours(1), false),
            ("seen >= now() - 1h", hours(1), true),
            ("seen > now()-1h", hours(2), false),
            ("seen < now() - 7d", hours(7 * 24 + 1), true),
            ("seen < now() - 1w", hours(7 * 24 - 1), false),
            ("seen < now() + 30m", hours(0), true),
            ("seen <= now() - 1h30m", hours(2), true),
            ("seen <= now() - 1h - 30m", hours(1), false),
            ("seen > NOW() - 90s", hours(0), true),
            ("not (seen > now() - 1h)", hours(5), true),
            // Only timestamp fields compare with a time; null is false.
            ("site > now() - 1h", hours(0), false),
            ("nothing > now() - 1h", hours(0), false),
            ("missing < now()", hours(0), false),
        ];
        for (source, now, expected) in cases {
            let expr = parse(source).unwrap_or_else(|e| panic!("`{source}`: {e}"));
            assert!(expr.is_relative(), "`{source}`");
            assert_eq!(
                expr.eval_at(&record, None, *now),
                *expected,
                "`{source}` at {now}"
            );
        }
        // eval reads the clock: a time in 2024 is more than a day ago.
        assert!(parse("seen < now() - 1d").unwrap().eval(&record));
        assert!(!parse("seen == '2024-05-01T12:00:00Z'")
            .unwrap()
            .is_relative());
        // Saturates instead of overflowing at the ends of time.
        assert!(parse("seen > now() - 10000000w")
            .unwrap()
            .eval_at(&record, None, Timestamp::MIN));
    }

    #[test]
    fn meta_fields_read_the_instance_bookkeeping() {
        let t = |s: &str| Timestamp::parse_rfc3339(s).unwrap();
        let meta = RowMeta {
            version: 7,
            first_seen: t("2024-01-01T00:00:00Z"),
            last_seen: t("2024-05-01T12:00:00Z"),
            event_time: t("2024-05-01T11:59:00Z"),
        };
        let now = t("2024-05-01T14:00:00Z");
        let record = sample();
        let cases: &[(&str, bool)] = &[
            ("_meta.lastSeen < now() - 1h", true),
            ("_meta.lastSeen > now() - 1h", false),
            ("_meta.firstSeen < '2024-02-01T00:00:00Z'", true),
            ("_meta.eventTime >= '2024-05-01T11:59:00Z'", true),
            ("_meta.version >= 7 and _meta.version in [7, 8]", true),
            ("_meta.version > 7", false),
            ("_meta.lastSeen is null", false),
        ];
        for (source, expected) in cases {
            let expr = parse(source).unwrap_or_else(|e| panic!("`{source}`: {e}"));
            assert_eq!(
                expr.eval_at(&record, Some(&meta), now),
                *expected,
                "`{source}`"
            );
            assert_eq!(expr.to_string(), *source, "displays as written");
        }
        // Without an instance at hand, _meta is null.
        let silent = parse("_meta.lastSeen < now() - 1h").unwrap();
        assert!(!silent.eval_at(&record, None, now));
        assert!(parse("_meta.lastSeen is null").unwrap().eval(&record));
        assert!(silent.eval_row(&record, &meta), "2024 is long ago");
        assert_eq!(
            problems("_meta.lastSeen > 5 or _meta.version < now() or _meta.nope == 1"),
            vec![
                (
                    18,
                    "cannot compare timestamp field `_meta.lastSeen` with an integer; write the \
                     time as an RFC 3339 string like '2024-05-01T12:00:00Z'"
                        .to_string()
                ),
                (
                    39,
                    "cannot compare int field `_meta.version` with a time (now()): only \
                     timestamp fields compare with now()"
                        .to_string()
                ),
                (
                    48,
                    "unknown field `_meta.nope`; the _meta fields are _meta.lastSeen, \
                     _meta.firstSeen, _meta.eventTime, _meta.version"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn times_display_canonically_and_parse_back() {
        let cases = [
            ("seen>now()", "seen > now()"),
            ("seen > now()-7d", "seen > now() - 7d"),
            ("seen > Now() + 90m", "seen > now() + 1h30m"),
            ("seen > now() - 1w", "seen > now() - 7d"),
            ("seen > now() - 1h - 1h + 30s", "seen > now() - 1h59m30s"),
            ("seen > now() - 1500ms", "seen > now() - 1s500ms"),
            ("seen > now() - 1h + 1h", "seen > now()"),
        ];
        for (source, canonical) in cases {
            let expr = parse(source).unwrap();
            assert_eq!(expr.to_string(), canonical, "`{source}`");
            assert_eq!(parse(canonical).unwrap(), expr, "`{canonical}`");
        }
        assert_ne!(
            parse("seen > now() - 1h").unwrap(),
            parse("seen > now() - 2h").unwrap()
        );
        // A field may still be called `now`.
        assert!(parse("now == 1").is_ok());
    }

    #[test]
    fn misused_times_are_refused_with_their_column() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "seen == now()",
                9,
                "`==` with a time relative to now() holds for at most one microsecond; use \
                 `<`, `<=`, `>` or `>=`",
            ),
            (
                "seen > 7d",
                8,
                "a duration needs a time to count from: write `now() - 7d`",
            ),
            (
                "seen > now() - 7",
                16,
                "expected a duration after `now() -`, like 7d, 1h, 30m or 10s; found number 7",
            ),
            (
                "seen > now()-7",
                13,
                "expected a duration after `now() -`, like 7d, 1h, 30m or 10s; found number -7",
            ),
            (
                "seen > now() - 7x",
                16,
                "invalid number `7x`; a duration is a number with a unit: ms, s, m, h, d or w \
                 (e.g. 7d, 1h30m)",
            ),
            (
                "seen > now(1)",
                12,
                "expected `)` after `now(`: now() takes no arguments, found number 1",
            ),
            (
                "now() > seen",
                1,
                "now() goes on the right of a comparison, after a timestamp field: write \
                 `reported_at > now() - 7d`",
            ),
            (
                "seen in [now()]",
                10,
                "a time relative to now() cannot be used in a list; compare with `<`, `<=`, \
                 `>` or `>=`",
            ),
            (
                "tags contains now()",
                15,
                "a time relative to now() cannot be used in contains; compare with `<`, `<=`, \
                 `>` or `>=`",
            ),
            (
                "seen > now() - 99999999999999d",
                16,
                "invalid number `99999999999999d`; the duration is out of range",
            ),
            ("seen > now() * 2", 14, "unexpected character `*`"),
        ];
        for (source, column, message) in cases {
            let error = parse(source).expect_err(source);
            assert_eq!(
                (error.column, error.message.as_str()),
                (*column, *message),
                "`{source}`"
            );
        }
    }

    #[test]
    fn check_allows_now_only_against_timestamp_fields() {
        assert_eq!(problems("seen > now() - 7d and seen <= now()"), vec![]);
        assert_eq!(
            problems("count > now() - 1h or site < now() or tags > now()"),
            vec![
                (
                    9,
                    "cannot compare int field `count` with a time (now() - 1h): only timestamp \
                     fields compare with now()"
                        .to_string()
                ),
                (
                    30,
                    "cannot compare string field `site` with a time (now()): only timestamp \
                     fields compare with now()"
                        .to_string()
                ),
                (
                    39,
                    "cannot order json field `tags` with `>`; use `==`, `!=` or `in`".to_string()
                ),
            ]
        );
    }

    #[test]
    fn limits_refuse_hostile_input() {
        let long = format!("a == '{}'", "x".repeat(MAX_SOURCE_BYTES));
        let error = parse(&long).unwrap_err();
        assert_eq!(
            error.message,
            format!("expression is {} bytes long; the limit is 4096", long.len())
        );

        let nested = |n: usize| format!("{}a == 1{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        let error = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(
            (error.column, error.message.as_str()),
            (
                65,
                "expression nests deeper than 64 levels of `(` and `not`"
            )
        );
        assert!(parse(&format!("{}a == 1", "not ".repeat(MAX_DEPTH))).is_ok());
        assert!(parse(&format!("{}a == 1", "!".repeat(MAX_DEPTH + 1))).is_err());
        assert!(parse(&"(".repeat(10_000)).is_err());
        assert!(parse(&"(".repeat(4_000))
            .unwrap_err()
            .message
            .contains("nests deeper"));

        let list = |n: usize| format!("a in [{}]", vec!["1"; n].join(","));
        assert!(parse(&list(MAX_LIST_LEN)).is_ok());
        let error = parse(&list(MAX_LIST_LEN + 1)).unwrap_err();
        assert_eq!(error.message, "list has more than 1024 values");
        assert_eq!(error.offset, 6 + 2 * MAX_LIST_LEN);
    }

    fn declared(name: &str) -> Option<OperandType> {
        match name {
            "site" => Some(OperandType::String),
            "count" => Some(OperandType::Int),
            "temperature_c" => Some(OperandType::Float),
            "ok" => Some(OperandType::Bool),
            "seen" => Some(OperandType::Timestamp),
            "tags" => Some(OperandType::Json),
            _ => None,
        }
    }

    #[track_caller]
    fn problems(source: &str) -> Vec<(usize, String)> {
        parse(source)
            .unwrap()
            .check(&declared)
            .into_iter()
            .map(|e| (e.column, e.message))
            .collect()
    }

    #[test]
    fn check_accepts_well_typed_expressions() {
        let fine = [
            "site == 'berlin' and site in ['a', 'b'] and site contains 'x'",
            "count == 3 and count < 2.5 and temperature_c >= -4 and temperature_c in [1, 2.5]",
            "ok == true and ok != false and ok in [true]",
            "seen >= '2024-05-01T00:00:00Z' and seen in ['2024-05-01T00:00:00+02:00']",
            "tags contains 'red' and tags contains 3 and tags == 'x' and tags != 1",
            "site is null or count == null or ok != null or tags is not null",
        ];
        for source in fine {
            assert_eq!(problems(source), vec![], "`{source}`");
        }
    }

    #[test]
    fn check_reports_every_problem_with_its_column() {
        assert_eq!(
            problems("sitee == 'berlin' or temperature_c == 'hot'"),
            vec![
                (1, "unknown field `sitee`".to_string()),
                (
                    39,
                    "cannot compare float field `temperature_c` with a string".to_string()
                ),
            ]
        );
        assert_eq!(
            problems("seen > 'yesterday'"),
            vec![(
                8,
                "cannot compare timestamp field `seen` with 'yesterday': not an RFC 3339 \
                 timestamp like '2024-05-01T12:00:00Z'"
                    .to_string()
            )]
        );
        assert_eq!(
            problems("seen > 1714560000"),
            vec![(
                8,
                "cannot compare timestamp field `seen` with an integer; write the time as an \
                 RFC 3339 string like '2024-05-01T12:00:00Z'"
                    .to_string()
            )]
        );
        assert_eq!(
            problems("ok < true"),
            vec![(
                1,
                "cannot order bool field `ok` with `<`; use `==`, `!=` or `in`".to_string()
            )]
        );
        assert_eq!(
            problems("tags >= 3"),
            vec![(
                1,
                "cannot order json field `tags` with `>=`; use `==`, `!=` or `in`".to_string()
            )]
        );
        assert_eq!(
            problems("count in [1, 'two', 3.0, false]"),
            vec![
                (
                    14,
                    "cannot compare int field `count` with a string".to_string()
                ),
                (
                    26,
                    "cannot compare int field `count` with a bool".to_string()
                ),
            ]
        );
        assert_eq!(
            problems("site == 3 or ok == 'yes' or site contains 1 or count contains 'x'"),
            vec![
                (
                    9,
                    "cannot compare string field `site` with an integer".to_string()
                ),
                (
                    20,
                    "cannot compare bool field `ok` with a string".to_string()
                ),
                (
                    43,
                    "`contains` on string field `site` needs a string, found an integer"
                        .to_string()
                ),
                (
                    48,
                    "`contains` needs a string or json field; `count` is a int field".to_string()
                ),
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const TOKENS: &[&str] = &[
            "now",
            "now()",
            "+",
            "-",
            "7d",
            "1h30m",
            "-2s",
            "3x",
            "(",
            ")",
            "[",
            "]",
            ",",
            "==",
            "!=",
            "<",
            "<=",
            ">",
            ">=",
            "=",
            "!",
            "&&",
            "||",
            "&",
            "|",
            "===",
            "=<",
            "<>",
            "and",
            "OR",
            "not",
            "in",
            "contains",
            "is",
            "null",
            "true",
            "False",
            "a",
            "site",
            "_x1",
            "'x'",
            "\"y\"",
            "'",
            "\"",
            "'\\",
            "'\\q'",
            "1",
            "-2.5e3",
            "1e999",
            "99999999999999999999",
            "-",
            ".",
            "0.",
            "1e",
            "@",
            "é",
            " ",
            "\n",
            "\u{0}",
        ];

        fn token_soup() -> impl Strategy<Value = String> {
            (
                prop::collection::vec(prop::sample::select(TOKENS), 0..40),
                any::<bool>(),
            )
                .prop_map(|(tokens, spaced)| tokens.join(if spaced { " " } else { "" }))
        }

        /// Whatever parses must also display, re-parse, evaluate and check
        /// without surprises.
        fn exercise(source: &str) {
            if let Ok(expr) = parse(source) {
                let canonical = expr.to_string();
                assert_eq!(
                    parse(&canonical).as_ref(),
                    Ok(&expr),
                    "`{source}` → `{canonical}`"
                );
                let _ = expr.eval(&sample());
                let _ = expr.check(&declared);
            }
        }

        fn field_name() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(&["site", "count", "temp", "tags", "seen", "_"][..])
                    .prop_map(str::to_string),
                "[A-Za-z_][A-Za-z0-9_]{0,8}",
            ]
            .prop_filter("keywords are not field names", |name| {
                Keyword::from_word(name).is_none()
            })
        }

        fn literal(allow_null: bool) -> impl Strategy<Value = Literal> {
            let value = prop_oneof![
                any::<bool>().prop_map(LitValue::Bool),
                any::<i64>().prop_map(LitValue::Int),
                any::<f64>()
                    .prop_filter("finite", |x| x.is_finite())
                    .prop_map(LitValue::Float),
                any::<String>().prop_map(LitValue::string),
                Just("2024-05-01T12:00:00.5+02:00".to_string()).prop_map(LitValue::string),
            ];
            // Null and now() are for comparisons only (not lists or contains).
            let value = if allow_null {
                prop_oneof![
                    8 => value,
                    1 => Just(LitValue::Null),
                    1 => (-1_000_000_000_i64..1_000_000_000)
                        .prop_map(|ms| LitValue::Now { offset: ms * 1_000 }),
                ]
                .boxed()
            } else {
                value.boxed()
            };
            value.prop_map(|value| Literal { value, at: At(0) })
        }

        fn predicate() -> impl Strategy<Value = Node> {
            let op = prop::sample::select(
                &[
                    CmpOp::Eq,
                    CmpOp::Ne,
                    CmpOp::Lt,
                    CmpOp::Le,
                    CmpOp::Gt,
                    CmpOp::Ge,
                ][..],
            );
            let test = prop_oneof![
                (op, literal(true)).prop_map(|(op, literal)| {
                    let op = match literal.value {
                        LitValue::Null if op.is_ordering() => CmpOp::Eq,
                        LitValue::Now { .. } if !op.is_ordering() => CmpOp::Gt,
                        _ => op,
                    };
                    Test::Compare { op, literal }
                }),
                (any::<bool>(), prop::collection::vec(literal(false), 0..4))
                    .prop_map(|(negated, list)| Test::In { negated, list }),
                literal(false).prop_map(Test::Contains),
                any::<bool>().prop_map(|negated| Test::IsNull { negated }),
            ];
            (field_name(), test).prop_map(|(field, test)| {
                Node::Predicate(Predicate {
                    meta: MetaField::of(&field),
                    field,
                    at: At(0),
                    test,
                })
            })
        }

        fn node() -> impl Strategy<Value = Node> {
            predicate().prop_recursive(5, 32, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 2..4).prop_map(Node::Or),
                    prop::collection::vec(inner.clone(), 2..4).prop_map(Node::And),
                    inner.prop_map(|n| Node::Not(Box::new(n))),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn any_text_parses_or_fails_cleanly(source in any::<String>()) {
                exercise(&source);
            }

            #[test]
            fn any_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                exercise(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn token_soup_parses_or_fails_cleanly(source in token_soup()) {
                exercise(&source);
            }

            #[test]
            fn display_parses_back_to_an_equal_expr(root in node()) {
                let expr = Expr { source: String::new(), root, relative: true };
                let canonical = expr.to_string();
                let reparsed = parse(&canonical);
                prop_assert_eq!(reparsed.as_ref(), Ok(&expr), "canonical text: {}", canonical);
            }

            #[test]
            fn deep_nesting_is_an_error_not_a_stack_overflow(
                openers in prop::collection::vec(prop::sample::select(&["(", "not ", "!"][..]), 65..2000),
            ) {
                let source = format!("{}a == 1", openers.concat());
                let error = parse(&source).unwrap_err();
                prop_assert!(
                    error.message.contains("nests deeper") || error.message.contains("bytes long"),
                    "{}", error
                );
            }
        }
    }
}
