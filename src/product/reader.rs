//! A small typed reader over the spanned YAML tree.
//!
//! Each reader call checks one value and, when it is wrong, pushes a
//! diagnostic at the value's position and returns `None`; the caller keeps
//! going. [`MapReader`] knows the keys a mapping may hold and reports every
//! other key with the list of expected ones, so a typo is found at once.

use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::Node;

use super::diagnostic::{Diagnostics, Location};
use super::duration::parse_duration;
use super::yaml::{classify, join, node_location, Plain};

/// Messages of every reader quote text through this (the definition
/// modules reach it as `reader::shorten`).
pub(crate) use super::diagnostic::shorten;

/// One value in the tree, with the dotted path and position diagnostics use.
#[derive(Clone, Copy)]
pub(crate) struct Item<'n> {
    pub node: &'n Node,
    /// Where the value starts.
    pub at: Location,
    /// Where the key that holds the value starts (the value's start for
    /// list elements).
    pub key_at: Location,
}

/// An [`Item`] plus its path; paths are built as owned strings.
pub(crate) struct Entry<'n> {
    pub item: Item<'n>,
    pub path: String,
}

impl<'n> Entry<'n> {
    pub(crate) fn new(node: &'n Node, path: String) -> Entry<'n> {
        let at = node_location(node);
        Entry {
            item: Item {
                node,
                at,
                key_at: at,
            },
            path,
        }
    }

    pub(crate) fn at(&self) -> Location {
        self.item.at
    }

    pub(crate) fn node(&self) -> &'n Node {
        self.item.node
    }
}

/// A mapping whose keys have been checked against the expected set.
pub(crate) struct MapReader<'n> {
    map: &'n MarkedMappingNode,
    pub path: String,
    pub at: Location,
}

impl<'n> MapReader<'n> {
    /// Opens `entry` as a mapping of the keys in `expected`. `what` names
    /// the mapping in the "expected a mapping" message. Unknown keys are
    /// reported here, all of them.
    pub(crate) fn open(
        entry: &Entry<'n>,
        what: &str,
        expected: &[&str],
        diags: &mut Diagnostics,
    ) -> Option<MapReader<'n>> {
        let map = expect_mapping(entry, what, diags)?;
        for key in map.keys() {
            if !expected.contains(&key.as_str()) {
                diags.push(
                    Location::of(key.span()),
                    &join(&entry.path, key.as_str()),
                    format!(
                        "unknown key `{}`{}; expected one of: {}",
                        shorten(key.as_str()),
                        did_you_mean(key.as_str(), expected),
                        expected.join(", ")
                    ),
                );
            }
        }
        Some(MapReader {
            map,
            path: entry.path.clone(),
            at: entry.at(),
        })
    }

    /// Whether the mapping has no keys at all (known or not).
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value under `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<Entry<'n>> {
        let (k, v) = self.map.get_key_value(key)?;
        Some(Entry {
            item: Item {
                node: v,
                at: node_location(v),
                key_at: Location::of(k.span()),
            },
            path: join(&self.path, key),
        })
    }

    /// The value under `key`; reports it missing (at the mapping) if absent.
    pub(crate) fn required(&self, key: &str, diags: &mut Diagnostics) -> Option<Entry<'n>> {
        let entry = self.get(key);
        if entry.is_none() {
            diags.push(
                self.at,
                &join(&self.path, key),
                format!("missing required key `{key}`"),
            );
        }
        entry
    }
}

/// Iterates the entries of a free-form mapping (field names, role names).
pub(crate) fn entries<'n>(
    map: &'n MarkedMappingNode,
    path: &str,
) -> Vec<(&'n MarkedScalarNode, Entry<'n>)> {
    map.iter()
        .map(|(k, v)| {
            let mut entry = Entry::new(v, join(path, k.as_str()));
            entry.item.key_at = Location::of(k.span());
            (k, entry)
        })
        .collect()
}

/// The elements of a list, each with its `path[i]`.
pub(crate) fn elements<'n>(seq: &'n MarkedSequenceNode, path: &str) -> Vec<Entry<'n>> {
    seq.iter()
        .enumerate()
        .map(|(i, v)| Entry::new(v, format!("{path}[{i}]")))
        .collect()
}

/// How a value looks, for "found ..." in messages.
pub(crate) fn describe(node: &Node) -> String {
    match node {
        Node::Mapping(_) => "a mapping".into(),
        Node::Sequence(_) => "a list".into(),
        Node::Scalar(scalar) => match classify(scalar) {
            Plain::Null => "an empty value".into(),
            Plain::Bool(b) => format!("the boolean `{b}`"),
            Plain::Int(_) | Plain::Float(_) => format!("the number `{}`", scalar.as_str()),
            Plain::Str(s) => format!("`{}`", shorten(s)),
        },
    }
}

/// ` (did you mean `x`?)` when a candidate is within two edits, else "".
pub(crate) fn did_you_mean(found: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(found, c), *c))
        .filter(|(d, _)| *d > 0 && *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

pub(crate) fn expect_mapping<'n>(
    entry: &Entry<'n>,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<&'n MarkedMappingNode> {
    match entry.node() {
        Node::Mapping(map) => Some(map),
        other => {
            diags.push(
                entry.at(),
                &entry.path,
                format!("expected {what}, found {}", describe(other)),
            );
            None
        }
    }
}

pub(crate) fn expect_list<'n>(
    entry: &Entry<'n>,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<&'n MarkedSequenceNode> {
    match entry.node() {
        Node::Sequence(seq) => Some(seq),
        other => {
            diags.push(
                entry.at(),
                &entry.path,
                format!("expected {what}, found {}", describe(other)),
            );
            None
        }
    }
}

fn wrong(entry: &Entry<'_>, expected: &str, diags: &mut Diagnostics) {
    diags.push(
        entry.at(),
        &entry.path,
        format!("expected {expected}, found {}", describe(entry.node())),
    );
}

/// A text value: a quoted scalar, or a plain one that does not read as
/// null, a boolean or a number (quote those to use them as text).
pub(crate) fn string(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<String> {
    if let Node::Scalar(scalar) = entry.node() {
        match classify(scalar) {
            Plain::Str(s) => return Some(s.to_string()),
            Plain::Bool(_) | Plain::Int(_) | Plain::Float(_) => {
                diags.push(
                    entry.at(),
                    &entry.path,
                    format!(
                        "expected a string, found {} (quote it to use it as text)",
                        describe(entry.node())
                    ),
                );
                return None;
            }
            Plain::Null => {}
        }
    }
    wrong(entry, "a string", diags);
    None
}

/// A non-empty text value.
pub(crate) fn non_empty_string(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<String> {
    let text = string(entry, diags)?;
    if text.trim().is_empty() {
        diags.push(
            entry.at(),
            &entry.path,
            "expected a non-empty string, found an empty string",
        );
        return None;
    }
    Some(text)
}

pub(crate) fn boolean(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<bool> {
    if let Node::Scalar(scalar) = entry.node() {
        if let Plain::Bool(b) = classify(scalar) {
            return Some(b);
        }
    }
    wrong(entry, "`true` or `false`", diags);
    None
}

/// A whole number in `min..=max`.
pub(crate) fn integer(
    entry: &Entry<'_>,
    min: u64,
    max: u64,
    diags: &mut Diagnostics,
) -> Option<u64> {
    let expected = if max == u64::MAX {
        format!("a whole number ≥ {min}")
    } else {
        format!("a whole number from {min} to {max}")
    };
    if let Node::Scalar(scalar) = entry.node() {
        if let Plain::Int(i) = classify(scalar) {
            if let Ok(u) = u64::try_from(i) {
                if (min..=max).contains(&u) {
                    return Some(u);
                }
            }
        }
    }
    wrong(entry, &expected, diags);
    None
}

/// A finite number (integer or decimal).
pub(crate) fn number(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<f64> {
    if let Node::Scalar(scalar) = entry.node() {
        match classify(scalar) {
            Plain::Int(i) => return Some(i as f64),
            Plain::Float(f) if f.is_finite() => return Some(f),
            _ => {}
        }
    }
    wrong(entry, "a finite number", diags);
    None
}

/// A humantime duration such as `10s`, `7d`, `1h 30m`.
pub(crate) fn duration(entry: &Entry<'_>, diags: &mut Diagnostics) -> Option<Duration> {
    if let Node::Scalar(scalar) = entry.node() {
        if classify(scalar) != Plain::Null {
            return match parse_duration(scalar.as_str()) {
                Ok(d) if d.is_zero() => {
                    diags.push(
                        entry.at(),
                        &entry.path,
                        format!(
                            "expected a duration greater than zero, found `{}`",
                            scalar.as_str()
                        ),
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(message) => {
                    diags.push(entry.at(), &entry.path, message);
                    None
                }
            };
        }
    }
    wrong(entry, "a duration such as 10s, 5m or 7d", diags);
    None
}

/// One of `allowed`, spelled exactly. `what` names the setting in the
/// message ("unknown priority `hihg`; expected one of: low, normal, high").
pub(crate) fn choice<'a>(
    entry: &Entry<'_>,
    what: &str,
    allowed: &[&'a str],
    diags: &mut Diagnostics,
) -> Option<&'a str> {
    let expected = format!("one of: {}", allowed.join(", "));
    if let Node::Scalar(scalar) = entry.node() {
        if let Plain::Str(text) = classify(scalar) {
            if let Some(found) = allowed.iter().find(|a| **a == text) {
                return Some(found);
            }
            diags.push(
                entry.at(),
                &entry.path,
                format!(
                    "unknown {what} `{}`{}; expected {expected}",
                    shorten(text),
                    did_you_mean(text, allowed)
                ),
            );
            return None;
        }
    }
    wrong(entry, &expected, diags);
    None
}

/// A list of strings; bad elements are reported one by one and skipped.
pub(crate) fn string_list<'n>(
    entry: &Entry<'n>,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<(String, Entry<'n>)>> {
    let seq = expect_list(entry, what, diags)?;
    Some(
        elements(seq, &entry.path)
            .into_iter()
            .filter_map(|element| string(&element, diags).map(|s| (s, element)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(
            did_you_mean("flaot", &["string", "float"]),
            " (did you mean `float`?)"
        );
        assert_eq!(did_you_mean("zzz", &["string", "float"]), "");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
