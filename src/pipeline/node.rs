//! A JSON document that borrows its text from the payload.
//!
//! `serde_json::Value` owns everything: every object key and every string
//! of a message becomes its own allocation, and most are dropped unread
//! (a telemetry message's keys are looked up once, then the tree is
//! freed). A [`Node`] borrows keys and strings from the payload text and
//! owns only what had escapes in it, so decoding a message allocates the
//! containers and nothing else; a value is copied once, when it is
//! coerced into the record.
//!
//! Same answers as `serde_json::Value` (the parser is serde_json's, only
//! the tree differs): numbers are `serde_json::Number`s as Value keeps
//! them, a repeated object key means its last value (as `Value`'s map
//! does), and [`Node::to_json`] gives exactly the `Value` serde_json would
//! have built, for `json` fields.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value as Json};

/// One JSON value; strings and keys borrowed from the text when they had
/// no escapes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// In document order, repeated keys kept; see [`Node::get`].
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The value of `key` when this is an object: the last one when the
    /// key is repeated, as `serde_json::Value` keeps it.
    pub(crate) fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The owned `serde_json::Value` of this node, identical to what
    /// `serde_json::from_str` gives for the same text.
    pub(crate) fn to_json(&self) -> Json {
        match self {
            Node::Null => Json::Null,
            Node::Bool(b) => Json::Bool(*b),
            Node::Number(n) => Json::Number(n.clone()),
            Node::String(s) => Json::String(s.to_string()),
            Node::Array(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Node::Object(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for (key, value) in entries {
                    // `insert` over a repeated key keeps the first position
                    // and the last value, as serde_json's own decoder does.
                    map.insert(key.to_string(), value.to_json());
                }
                Json::Object(map)
            }
        }
    }

    /// A text node borrowing `text`: how a topic capture or a csv cell is
    /// seen by coercion, without copying it.
    pub(crate) fn text(text: &'a str) -> Node<'a> {
        Node::String(Cow::Borrowed(text))
    }
}

impl fmt::Display for Node<'_> {
    /// Compact JSON, as `serde_json::Value` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node<'de>, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Node<'de>, E> {
        // serde_json's own rule for a float it cannot hold.
        Ok(Number::from_f64(f).map_or(Node::Null, Node::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(s)))
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node<'de>, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).clamp(8, 64));
        while let Some(Key(key)) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Object(entries))
    }
}

/// An object key, borrowed when the text allows.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owned value is serde_json's for the same text, escapes, repeated
    /// keys, big and negative numbers and floats included.
    #[test]
    fn to_json_is_what_serde_json_decodes() {
        for text in [
            r#"{"temp": 21.5, "vib": {"rms": 0.4}, "s": "a\"b\u00e9", "k\n": [1, -2, 1e3, 18446744073709551615, -9223372036854775808, true, null]}"#,
            r#"{"a": 1, "b": 2, "a": 3}"#,
            r#"[{"x": {}}, [], "", 0.1, 1.0]"#,
            r#""just text""#,
            "12",
        ] {
            let node: Node = serde_json::from_str(text).expect("node decodes");
            let json: Json = serde_json::from_str(text).expect("json decodes");
            assert_eq!(node.to_json(), json, "{text}");
            assert_eq!(node.to_string(), json.to_string(), "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed_and_the_last_repeated_key_wins() {
        let text = r#"{"plain": "value", "esc\"aped": "a\nb", "plain": "again"}"#;
        let node: Node = serde_json::from_str(text).expect("decodes");
        let Node::Object(entries) = &node else {
            panic!("an object: {node:?}")
        };
        assert!(matches!(entries[0].0, Cow::Borrowed("plain")));
        assert!(matches!(entries[0].1, Node::String(Cow::Borrowed("value"))));
        assert!(matches!(entries[1].0, Cow::Owned(_)));
        assert_eq!(node.get("plain"), Some(&Node::text("again")));
        assert_eq!(node.get("esc\"aped"), Some(&Node::text("a\nb")));
        assert_eq!(node.get("missing"), None);
    }

    /// Errors come from serde_json's parser, so they read as before.
    #[test]
    fn syntax_errors_are_serde_jsons() {
        for text in ["{\"a\": }", "[1, 2", "{\"a\": 1} x", "{1: 2}", ""] {
            let node = serde_json::from_str::<Node>(text).expect_err("refused");
            let json = serde_json::from_str::<Json>(text).expect_err("refused");
            assert_eq!(node.to_string(), json.to_string(), "{text}");
        }
    }
}
