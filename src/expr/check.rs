//! Type checks: the literals of a parsed tree against the product's
//! declared field types, done once when a definition is loaded.

use super::ast::{LitValue, Literal, MetaField, Predicate, Test};
use super::display::quote;
use super::OperandType;

impl Predicate {
    /// Every problem with this predicate against the declared field types,
    /// as (byte offset, message).
    pub(super) fn check(
        &self,
        field_type: &dyn Fn(&str) -> Option<OperandType>,
    ) -> Vec<(usize, String)> {
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
pub(super) fn check_literal(
    ty: OperandType,
    field: &str,
    literal: &Literal,
) -> Option<(usize, String)> {
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
