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

mod ast;
mod check;
mod display;
mod eval;
mod lex;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use crate::record::{Fields, Timestamp};

use ast::{LitValue, Node, Test};

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
    let root = parse::parse_root(source)?;
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
