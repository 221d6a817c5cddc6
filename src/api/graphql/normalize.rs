//! A query text with its literal values taken out, so that requests that
//! differ only in the values they write inline (a dashboard asking for
//! `machineHealth(machine_id: "PR-0001")`, then `"PR-0002"`, …) share one
//! prepared plan (see `prepared.rs`).
//!
//! The shape is the text itself, byte for byte, with each plain string
//! literal (`"…"` without escapes) and each integer literal replaced by a
//! marker (`\u{1}` and a kind letter). Nothing else changes: not the
//! whitespace, not the comments, not the names. So the shape and the
//! literals give back exactly the original text, and two texts with the
//! same shape are the same document up to those literal values. A text
//! that already holds the marker character has no shape (it is executed
//! as sent, never prepared), which keeps that correspondence exact.
//!
//! This is a scan for token boundaries, not a parser: a text that is not
//! GraphQL still gets a shape, and the executor reports why it is not
//! GraphQL. Strings with escapes, block strings and floats stay in the
//! shape as written (their values are not needed by any plan).

use std::ops::Range;

/// The marker that stands for a literal in a shape.
const MARKER: char = '\u{1}';

/// The kind of a literal taken out of a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LiteralKind {
    /// A string literal without escapes; its value is its text.
    String,
    /// An integer literal (`-?(0|[1-9][0-9]*)`), as written.
    Int,
}

/// A literal taken out of a text, in text order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Literal<'a> {
    pub kind: LiteralKind,
    /// The value as written: a string's content without the quotes, an
    /// integer's digits with its sign.
    pub text: &'a str,
}

/// A query text split into its shape and its literals.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Normalized<'a> {
    pub shape: String,
    pub literals: Vec<Literal<'a>>,
}

fn is_name_start(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphabetic()
}

fn is_name_continue(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

/// The shape and literals made so far.
struct Split<'a> {
    text: &'a str,
    shape: String,
    literals: Vec<Literal<'a>>,
    /// The text up to here is in `shape` already; the rest up to the next
    /// literal is copied as is when that literal is taken.
    copied: usize,
}

impl<'a> Split<'a> {
    /// Replaces the literal token at `token` (its value at `value`) by a
    /// marker.
    fn take(&mut self, token: Range<usize>, value: Range<usize>, kind: LiteralKind) {
        self.shape.push_str(&self.text[self.copied..token.start]);
        self.shape.push(MARKER);
        self.shape.push(match kind {
            LiteralKind::String => 's',
            LiteralKind::Int => 'i',
        });
        self.literals.push(Literal {
            kind,
            text: &self.text[value],
        });
        self.copied = token.end;
    }
}

/// Splits `text` into its shape and literals; `None` when the text holds
/// the marker character.
pub(crate) fn normalize(text: &str) -> Option<Normalized<'_>> {
    if text.contains(MARKER) {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Split {
        text,
        shape: String::with_capacity(text.len()),
        literals: Vec::new(),
        copied: 0,
    };
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                loop {
                    if i >= bytes.len() {
                        break;
                    }
                    if bytes[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                    } else if bytes[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                let start = i + 1;
                let mut end = start;
                let mut plain = true;
                while end < bytes.len() {
                    match bytes[end] {
                        b'"' => break,
                        b'\\' => {
                            plain = false;
                            end += 2;
                        }
                        b'\n' | b'\r' => {
                            plain = false;
                            break;
                        }
                        _ => end += 1,
                    }
                }
                let closed = end < bytes.len() && bytes[end] == b'"';
                if plain && closed {
                    out.take(i..end + 1, start..end, LiteralKind::String);
                }
                i = (end + 1).min(bytes.len());
            }
            b if is_name_start(b) => {
                while i < bytes.len() && is_name_continue(bytes[i]) {
                    i += 1;
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                if bytes[i] == b'-' {
                    i += 1;
                }
                let digits = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let int_end = i;
                // The rest of a float, or of something that is no number.
                while i < bytes.len()
                    && (is_name_continue(bytes[i]) || matches!(bytes[i], b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
                let written = &text[digits..int_end];
                let is_int = int_end == i
                    && !written.is_empty()
                    && (written == "0" || !written.starts_with('0'));
                if is_int {
                    out.take(start..int_end, start..int_end, LiteralKind::Int);
                }
            }
            _ => i += 1,
        }
    }
    out.shape.push_str(&text[out.copied..]);
    Some(Normalized {
        shape: out.shape,
        literals: out.literals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literals(text: &str) -> Vec<(LiteralKind, &str)> {
        normalize(text)
            .expect("normalizes")
            .literals
            .iter()
            .map(|l| (l.kind, l.text))
            .collect()
    }

    /// Rebuilds the text from its shape and literals.
    fn rebuild(normalized: &Normalized<'_>) -> String {
        let mut out = String::new();
        let mut literals = normalized.literals.iter();
        let mut chars = normalized.shape.chars();
        while let Some(c) = chars.next() {
            if c == MARKER {
                let literal = literals.next().expect("a literal per marker");
                match chars.next() {
                    Some('s') => {
                        assert_eq!(literal.kind, LiteralKind::String);
                        out.push('"');
                        out.push_str(literal.text);
                        out.push('"');
                    }
                    Some('i') => {
                        assert_eq!(literal.kind, LiteralKind::Int);
                        out.push_str(literal.text);
                    }
                    other => panic!("unknown marker kind {other:?}"),
                }
            } else {
                out.push(c);
            }
        }
        assert!(literals.next().is_none(), "every literal has its marker");
        out
    }

    #[test]
    fn texts_differing_only_in_literals_share_a_shape() {
        let a = normalize(r#"{ m(id: "PR-0001") { id } n(k: 12) { k } }"#).expect("a");
        let b = normalize(r#"{ m(id: "x y") { id } n(k: -7) { k } }"#).expect("b");
        assert_eq!(a.shape, b.shape);
        assert_eq!(
            literals(r#"{ m(id: "PR-0001") { id } n(k: 12) { k } }"#),
            vec![(LiteralKind::String, "PR-0001"), (LiteralKind::Int, "12")]
        );
        let spaced = normalize(r#"{ m(id:  "PR-0001") { id } n(k: 12) { k } }"#).expect("c");
        assert_ne!(a.shape, spaced.shape, "whitespace is part of the shape");
        let kinds = normalize(r#"{ m(id: 5) { id } n(k: 12) { k } }"#).expect("d");
        assert_ne!(
            a.shape, kinds.shape,
            "the kind of a literal is part of the shape"
        );
    }

    #[test]
    fn only_plain_strings_and_integers_are_taken_out() {
        assert_eq!(
            literals(r#"{ a(x: "e\"sc", y: """block "q" """, z: 1.5, w: 1e3, v: 007) }"#),
            vec![]
        );
        assert_eq!(literals("{ field1 a2: b3 $v4 }"), vec![], "digits in names");
        assert_eq!(
            literals("# \"comment\" 12\n{ a(x: \"\") }"),
            vec![(LiteralKind::String, "")]
        );
        assert_eq!(literals("{ a(x: 0, y: -0) }").len(), 2);
        assert_eq!(literals("{ a(x: \"open\n\") }"), vec![]);
        assert_eq!(literals("{ a(x: \"unterminated"), vec![]);
        assert!(normalize("{ a(x: \"\u{1}\") }").is_none());
    }

    #[test]
    fn shape_and_literals_give_back_the_text() {
        for text in [
            r#"{ m(id: "PR-0001") { id } }"#,
            r#"query Q($k: String!) { m(id: $k) { id } }"#,
            "{ a(x: \"é😀\", y: -12, z: [1, \"2\"]) } # \"c\" 3\r\n",
            r#"{ a(x: """b""" y: "a\\b" z: 1.5e3) }"#,
            "\"",
            "-",
            "",
        ] {
            let normalized = normalize(text).expect("normalizes");
            assert_eq!(rebuild(&normalized), text);
        }
    }
}
