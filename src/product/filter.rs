//! Row filters (`where:`): expressions of [`crate::expr`], parsed
//! and type-checked against the product's fields at load.
//!
//! Expression errors are placed inside the YAML string: when the whole
//! expression sits on the value's line (a plain or quoted scalar without
//! escapes), the diagnostic's column is the column of the offending
//! character in the file. Otherwise (block scalars, escapes, line folding)
//! it points at the start of the value, and the message still carries the
//! column inside the expression.

use crate::expr::{self, Expr, ExprError, OperandType};

use super::diagnostic::{Diagnostics, Location};
use super::field::{FieldTable, FieldType};
use super::reader::{self, Entry};

/// A parsed row filter.
pub type RowFilter = Expr;

/// What checking a filter needs besides the value itself.
pub(crate) struct FilterContext<'a> {
    /// The definition text, to place expression errors inside the string.
    pub text: &'a str,
    pub fields: &'a FieldTable,
}

fn operand_type(ty: FieldType) -> OperandType {
    match ty {
        FieldType::String => OperandType::String,
        FieldType::Int => OperandType::Int,
        FieldType::Float => OperandType::Float,
        FieldType::Bool => OperandType::Bool,
        FieldType::Timestamp => OperandType::Timestamp,
        FieldType::Json => OperandType::Json,
    }
}

pub(crate) fn parse_row_filter(
    entry: &Entry<'_>,
    ctx: &FilterContext<'_>,
    diags: &mut Diagnostics,
) -> Option<RowFilter> {
    let source = reader::string(entry, diags)?;
    parse_row_filter_text(entry, &source, ctx, diags)
}

/// [`parse_row_filter`] of `source` (the entry's text, possibly with
/// placeholders already replaced) reported at `entry`.
pub(crate) fn parse_row_filter_text(
    entry: &Entry<'_>,
    source: &str,
    ctx: &FilterContext<'_>,
    diags: &mut Diagnostics,
) -> Option<RowFilter> {
    let source = source.to_string();
    let report = |error: &ExprError, diags: &mut Diagnostics| {
        diags.push(
            place(ctx.text, entry.at(), &source, error.column),
            &entry.path,
            format!(
                "invalid row filter: {} (expression column {})",
                error.message, error.column
            ),
        );
    };
    let parsed = match expr::parse(&source) {
        Ok(parsed) => parsed,
        Err(error) => {
            report(&error, diags);
            return None;
        }
    };
    // A filter on a field whose declaration is broken (already reported)
    // or on an unusable `fields` section cannot be checked meaningfully.
    let fields = ctx.fields;
    if !fields.usable || parsed.fields().iter().any(|f| fields.broken.contains(*f)) {
        return Some(parsed);
    }
    let problems = parsed.check(&|name| fields.get(name).map(|f| operand_type(f.ty)));
    for problem in &problems {
        report(problem, diags);
    }
    problems.is_empty().then_some(parsed)
}

/// The file position of column `column` (1-based, in characters) of the
/// expression `source` written as the scalar that starts at `value`.
fn place(text: &str, value: Location, source: &str, column: usize) -> Location {
    let Some(line) = text.lines().nth(value.line.saturating_sub(1)) else {
        return value;
    };
    let rest: String = line.chars().skip(value.column.saturating_sub(1)).collect();
    let opening = match rest.chars().next() {
        Some(quote @ ('"' | '\'')) => Some(quote),
        _ => None,
    };
    let body = if opening.is_some() {
        &rest[1..]
    } else {
        rest.as_str()
    };
    if !body.starts_with(source) {
        return value;
    }
    Location {
        line: value.line,
        column: value.column + usize::from(opening.is_some()) + column - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_land_inside_one_line_strings() {
        let text = "a:\n  where: \"site == 1\"\n  plain: site == 1\n";
        let quoted = Location {
            line: 2,
            column: 10,
        };
        assert_eq!(
            place(text, quoted, "site == 1", 9),
            Location {
                line: 2,
                column: 19
            }
        );
        let plain = Location {
            line: 3,
            column: 10,
        };
        assert_eq!(
            place(text, plain, "site == 1", 9),
            Location {
                line: 3,
                column: 18
            }
        );
        assert_eq!(
            place(text, plain, "something else", 3),
            plain,
            "falls back to the value"
        );
    }
}
