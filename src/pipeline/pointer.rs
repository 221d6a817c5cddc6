//! JSON Pointer (RFC 6901), compiled once per source.
//!
//! `serde_json::Value::pointer` unescapes every reference token into two
//! fresh `String`s (`~1` → `/`, then `~0` → `~`) on every lookup. A
//! source's `map` and `event_time` pointers are looked up for every field
//! of every message, so a [`Pointer`] is split and unescaped once, when the
//! source's [`Plan`](super::Plan) is built, and array indexes are parsed
//! then too; a lookup is a walk of key compares. The result is
//! serde_json's for every pointer (tested against it below).

use std::borrow::Cow;

use super::node::Node;

/// A pointer split into its unescaped reference tokens.
#[derive(Clone, Debug)]
pub(super) struct Pointer {
    /// `None`: not a pointer (no leading `/` and not empty): finds nothing.
    tokens: Option<Vec<Token>>,
}

#[derive(Clone, Debug)]
struct Token {
    /// The unescaped key, for objects.
    key: String,
    /// The token as an array index, when it spells one.
    index: Option<usize>,
}

impl Pointer {
    pub(super) fn compile(pointer: &str) -> Pointer {
        let tokens = if pointer.is_empty() {
            Some(Vec::new())
        } else {
            pointer.strip_prefix('/').map(|rest| {
                rest.split('/')
                    .map(|token| {
                        let key = unescape(token).into_owned();
                        Token {
                            index: array_index(&key),
                            key,
                        }
                    })
                    .collect()
            })
        };
        Pointer { tokens }
    }

    /// The value this pointer refers to in `document`, as
    /// `serde_json::Value::pointer` finds it.
    pub(super) fn find<'n, 'a>(&self, document: &'n Node<'a>) -> Option<&'n Node<'a>> {
        self.tokens
            .as_ref()?
            .iter()
            .try_fold(document, |target, token| match target {
                Node::Object(_) => target.get(&token.key),
                Node::Array(list) => token.index.and_then(|i| list.get(i)),
                _ => None,
            })
    }
}

/// `~1` → `/` and `~0` → `~`, in that order (RFC 6901 §4); borrowed when
/// there is nothing to unescape.
fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// An array index as RFC 6901 spells one: digits, no sign, no leading
/// zero (serde_json's rule).
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::Pointer;
    use crate::pipeline::node::Node;
    use serde_json::json;

    #[test]
    fn finds_what_serde_json_finds_for_every_pointer() {
        let document = json!({
            "temp": 21.5,
            "vib": {"rms": 0.4, "axes": [1, 2, {"z": 3}]},
            "a/b": 1,
            "m~n": 2,
            "~1": 3,
            "": {"": 4},
            "list": [10, 20, 30],
            "07": "key that looks like an index",
        });
        let pointers = [
            "",
            "/",
            "/temp",
            "/vib",
            "/vib/rms",
            "/vib/axes/0",
            "/vib/axes/2/z",
            "/vib/axes/3",
            "/vib/axes/-",
            "/vib/axes/01",
            "/vib/axes/+1",
            "/a~1b",
            "/m~0n",
            "/~01",
            "/~1",
            "//",
            "/list/2",
            "/list/02",
            "/list/x",
            "/07",
            "/missing",
            "/temp/deeper",
            "temp",
            "/vib/rms/",
            "/list/18446744073709551616",
        ];
        let text = document.to_string();
        let node: Node = serde_json::from_str(&text).expect("decodes");
        for pointer in pointers {
            assert_eq!(
                Pointer::compile(pointer).find(&node).map(Node::to_json),
                document.pointer(pointer).cloned(),
                "pointer {pointer:?}"
            );
        }
    }
}
