//! Row filters (`where:`): expressions of `crate::policy::expr`, checked
//! against the product's field types at load.

use super::diagnostic::Diagnostics;
use super::field::FieldTable;
use super::reader::{self, Entry};

/// Placeholder until the expression language lands.
pub type RowFilter = String;

/// What checking a filter needs besides the value itself.
pub(crate) struct FilterContext<'a> {
    /// The definition text, to place expression errors inside the string.
    pub text: &'a str,
    pub fields: &'a FieldTable,
}

pub(crate) fn parse_row_filter(
    entry: &Entry<'_>,
    ctx: &FilterContext<'_>,
    diags: &mut Diagnostics,
) -> Option<RowFilter> {
    let _ = (ctx.text, ctx.fields);
    reader::non_empty_string(entry, diags)
}
