//! Display: a tree as its canonical text (lowercase keywords, single
//! quotes, minimal parentheses), which parses back to an equal tree.

use std::fmt;

use super::ast::{At, LitValue, Literal, Node, Predicate, Test, UNITS};

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

pub(super) fn write_joined(
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

pub(super) fn write_child(f: &mut fmt::Formatter<'_>, child: &Node, parens: bool) -> fmt::Result {
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
    pub(super) fn display(value: &LitValue) -> String {
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

/// A duration as compound units without weeks (`14d`, `1d12h`, `1m30s`).
/// Every duration the lexer makes is a whole number of milliseconds, its
/// smallest unit, so this text lexes back to the same value.
pub(super) fn write_duration(f: &mut fmt::Formatter<'_>, micros: u64) -> fmt::Result {
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
pub(super) fn quote(text: &str) -> String {
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
