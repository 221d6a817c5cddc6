//! Field masks: how a role or a sync rule sees a field it may not see whole.
//!
//! A mask never changes a field's type (the GraphQL schema is one for all
//! roles), which decides where each mask applies:
//!
//! | mask | YAML | applies to | result |
//! |---|---|---|---|
//! | redact | `redact` | string | a fixed placeholder string |
//! | hash | `hash` | string | a keyed digest (hex): stable, so joins and counts still work |
//! | partial | `{ partial: 4 }` | string | the last N characters, the rest replaced |
//! | round | `{ round: 0.5 }` | int, float | rounded to a multiple of the step (whole steps on int fields) |
//! | null | `null` | any | the field is absent |
//!
//! **The key field** may only be hashed: any other mask would make distinct
//! entities indistinguishable (or keyless), breaking lookups, subscriptions
//! and deduplication upstream; a hash keeps one masked key per entity.

use std::fmt;

use indexmap::IndexMap;
use marked_yaml::Node;

use super::diagnostic::Diagnostics;
use super::field::{Field, FieldTable, FieldType};
use super::reader::{self, did_you_mean, entries, expect_mapping, Entry, MapReader};
use super::yaml::{classify, Plain};

/// How a field is masked.
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    Redact,
    Hash,
    Partial { keep_last: usize },
    Round { step: f64 },
    Null,
}

impl Mask {
    /// The mask's name as written in definitions.
    pub fn name(&self) -> &'static str {
        match self {
            Mask::Redact => "redact",
            Mask::Hash => "hash",
            Mask::Partial { .. } => "partial",
            Mask::Round { .. } => "round",
            Mask::Null => "null",
        }
    }

    /// Whether this mask can apply to a field of type `ty`.
    pub fn applies_to(&self, ty: FieldType) -> bool {
        match self {
            Mask::Redact | Mask::Hash | Mask::Partial { .. } => ty == FieldType::String,
            Mask::Round { .. } => ty.is_numeric(),
            Mask::Null => true,
        }
    }

    fn applies_to_text(&self) -> &'static str {
        match self {
            Mask::Round { .. } => "int and float fields",
            Mask::Null => "any field",
            _ => "string fields",
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Partial { keep_last } => write!(f, "{{ partial: {keep_last} }}"),
            Mask::Round { step } => write!(f, "{{ round: {step} }}"),
            other => f.write_str(other.name()),
        }
    }
}

const SCALAR_MASKS: [&str; 3] = ["hash", "redact", "null"];
const EXPECTED: &str = "one of: hash, redact, null, { partial: N }, { round: STEP }";
/// Longest suffix `partial` may keep.
const MAX_KEEP_LAST: u64 = 64;

/// Parses a `mask:` mapping (field → mask) and checks each mask against
/// the field it names.
pub(crate) fn parse_masks(
    entry: &Entry<'_>,
    fields: &FieldTable,
    key_field: Option<&str>,
    diags: &mut Diagnostics,
) -> IndexMap<String, Mask> {
    let mut masks = IndexMap::new();
    let Some(map) = expect_mapping(
        entry,
        "a mapping of field name to mask, e.g. `{ email: hash }`",
        diags,
    ) else {
        return masks;
    };
    for (name, mask_entry) in entries(map, &entry.path) {
        let mask = parse_mask(&mask_entry, diags);
        let Some(field) = fields.resolve(
            name.as_str(),
            "masked field",
            mask_entry.item.key_at,
            &mask_entry.path,
            diags,
        ) else {
            continue;
        };
        let Some(mask) = mask else { continue };
        if !check_mask(&mask, field, key_field, &mask_entry, diags) {
            continue;
        }
        masks.insert(name.as_str().to_string(), mask);
    }
    masks
}

fn check_mask(
    mask: &Mask,
    field: &Field,
    key_field: Option<&str>,
    entry: &Entry<'_>,
    diags: &mut Diagnostics,
) -> bool {
    if !mask.applies_to(field.ty) {
        diags.push(
            entry.at(),
            &entry.path,
            format!(
                "mask `{}` applies only to {}; `{}` is {}",
                mask.name(),
                mask.applies_to_text(),
                field.name,
                field.ty.a_field()
            ),
        );
        return false;
    }
    if key_field == Some(field.name.as_str()) && *mask != Mask::Hash {
        diags.push(
            entry.at(),
            &entry.path,
            format!(
                "the key field `{}` can only be masked with `hash`: `{}` would make distinct entities indistinguishable",
                field.name,
                mask.name()
            ),
        );
        return false;
    }
    if let Mask::Round { step } = mask {
        if field.ty == FieldType::Int && step.fract() != 0.0 {
            diags.push(
                entry.at(),
                &entry.path,
                format!("round step for an int field must be a whole number, found {step}"),
            );
            return false;
        }
    }
    true
}

/// Parses one mask value, without looking at the field.
pub(crate) fn parse_mask(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<Mask> {
    match entry.node() {
        Node::Scalar(scalar) => {
            let text = scalar.as_str();
            let is_text = matches!(classify(scalar), Plain::Str(_))
                || (text == "null" && matches!(classify(scalar), Plain::Null));
            match text {
                "hash" if is_text => Some(Mask::Hash),
                "redact" if is_text => Some(Mask::Redact),
                "null" if is_text => Some(Mask::Null),
                "partial" | "round" if is_text => {
                    diags.push(
                        entry.at(),
                        &entry.path,
                        format!(
                            "mask `{text}` needs a parameter: write `{{ {text}: {} }}`",
                            if text == "partial" { "4" } else { "0.5" }
                        ),
                    );
                    None
                }
                _ if is_text => {
                    diags.push(
                        entry.at(),
                        &entry.path,
                        format!(
                            "unknown mask `{}`{}; expected {EXPECTED}",
                            reader::shorten(text),
                            did_you_mean(text, &SCALAR_MASKS)
                        ),
                    );
                    None
                }
                _ => {
                    diags.push(
                        entry.at(),
                        &entry.path,
                        format!(
                            "expected {EXPECTED}, found {}",
                            reader::describe(entry.node())
                        ),
                    );
                    None
                }
            }
        }
        Node::Mapping(_) => {
            let map = MapReader::open(entry, "a mask", &["partial", "round"], diags)?;
            match (map.get("partial"), map.get("round")) {
                (Some(partial), None) => {
                    reader::integer(&partial, 1, MAX_KEEP_LAST, diags).map(|n| Mask::Partial {
                        keep_last: n as usize,
                    })
                }
                (None, Some(round)) => {
                    let step = reader::number(&round, diags)?;
                    if step <= 0.0 {
                        diags.push(
                            round.at(),
                            &round.path,
                            format!("round step must be greater than zero, found {step}"),
                        );
                        return None;
                    }
                    Some(Mask::Round { step })
                }
                (Some(_), Some(_)) => {
                    diags.push(
                        entry.at(),
                        &entry.path,
                        "expected one mask, found both `partial` and `round`",
                    );
                    None
                }
                (None, None) => {
                    diags.push(
                        entry.at(),
                        &entry.path,
                        format!("expected {EXPECTED}, found an empty mapping"),
                    );
                    None
                }
            }
        }
        Node::Sequence(_) => {
            diags.push(
                entry.at(),
                &entry.path,
                format!("expected {EXPECTED}, found a list"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::diagnostic::Diagnostics;

    fn mask(yaml: &str) -> Result<Mask, String> {
        let root = marked_yaml::parse_yaml(0, format!("m: {yaml}")).unwrap();
        let node = root.as_mapping().unwrap().get_node("m").unwrap().clone();
        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        let entry = Entry::new(&node, "m".into());
        parse_mask(&entry, &mut diags).ok_or_else(|| diags.into_sorted()[0].message.clone())
    }

    #[test]
    fn masks_parse_in_both_forms() {
        assert_eq!(mask("hash"), Ok(Mask::Hash));
        assert_eq!(mask("redact"), Ok(Mask::Redact));
        assert_eq!(mask("null"), Ok(Mask::Null));
        assert_eq!(mask("{ partial: 4 }"), Ok(Mask::Partial { keep_last: 4 }));
        assert_eq!(mask("{ round: 0.5 }"), Ok(Mask::Round { step: 0.5 }));
    }

    #[test]
    fn bad_masks_say_what_is_expected() {
        assert_eq!(
            mask("hsah").unwrap_err(),
            "unknown mask `hsah` (did you mean `hash`?); expected one of: hash, redact, null, { partial: N }, { round: STEP }"
        );
        assert_eq!(
            mask("partial").unwrap_err(),
            "mask `partial` needs a parameter: write `{ partial: 4 }`"
        );
        assert_eq!(
            mask("{ partial: 0 }").unwrap_err(),
            "expected a whole number from 1 to 64, found the number `0`"
        );
        assert_eq!(
            mask("{ round: -1 }").unwrap_err(),
            "round step must be greater than zero, found -1"
        );
        assert_eq!(
            mask("{ partial: 2, round: 1 }").unwrap_err(),
            "expected one mask, found both `partial` and `round`"
        );
        assert_eq!(
            mask("[hash]").unwrap_err(),
            "expected one of: hash, redact, null, { partial: N }, { round: STEP }, found a list"
        );
    }

    #[test]
    fn masks_keep_the_field_type() {
        assert!(Mask::Hash.applies_to(FieldType::String));
        assert!(!Mask::Hash.applies_to(FieldType::Int));
        assert!(Mask::Round { step: 1.0 }.applies_to(FieldType::Int));
        assert!(!Mask::Round { step: 1.0 }.applies_to(FieldType::String));
        assert!(!Mask::Partial { keep_last: 2 }.applies_to(FieldType::Float));
        assert!(Mask::Null.applies_to(FieldType::Json));
    }
}
