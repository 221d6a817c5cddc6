//! YAML text → spanned node tree, with the limits that keep a hostile or
//! broken file from hurting the node.
//!
//! marked-yaml gives every node a line and column. On top of it this module:
//! - refuses files over [`MAX_DEFINITION_BYTES`] before parsing (a definition
//!   is a few KiB; a huge file is a mistake or an attack);
//! - refuses nesting deeper than [`MAX_DEPTH`], and takes such trees apart
//!   iteratively, because dropping a deeply nested tree recursively could
//!   overflow the stack;
//! - turns loader errors (syntax, duplicate keys, anchors, tags) into
//!   diagnostics, naming both lines of a duplicate key;
//! - reads plain scalars with the YAML 1.2 core schema ([`Plain`]), the same
//!   way for the parser and for [`yaml_to_json`], so the JSON Schema and
//!   the parser always see the same types.
//!
//! Quoted scalars are always strings (`"1"` is not a number, `"true"` not a
//! bool): the loader runs with coercion prevented for them.

use marked_yaml::{LoadError, LoaderOptions, Node};

use super::diagnostic::{Diagnostics, LoadErrors, Location, DOCUMENT_KEY};

/// Largest definition file accepted, in bytes (256 KiB).
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// Deepest nesting of mappings and lists accepted. A definition needs six.
pub const MAX_DEPTH: usize = 32;

/// Widest run of indentation and block indicators (`- `, `? `) at the start
/// of a line. Checked before parsing: it bounds how deep a block structure
/// can nest (flow structures are bounded by the scanner at 255), so no tree
/// the loader builds — even one it abandons on an error — is deep enough to
/// overflow the stack when dropped.
const MAX_LINE_PREFIX: usize = 256;

fn options(duplicate_keys_are_errors: bool) -> LoaderOptions {
    LoaderOptions::default()
        .error_on_duplicate_keys(duplicate_keys_are_errors)
        .prevent_coercion(true)
}

/// Parses `text` into a node tree, reporting every loader problem into
/// `diags`. Returns a tree whenever one can be validated further: after a
/// duplicate key the file is re-read with "last one wins" so the rest of it
/// is still checked in the same run.
pub(crate) fn load(text: &str, diags: &mut Diagnostics) -> Option<Node> {
    if text.len() > MAX_DEFINITION_BYTES {
        diags.push(
            Location::START,
            DOCUMENT_KEY,
            format!(
                "file is {} bytes: a product definition may be at most {} bytes (256 KiB)",
                text.len(),
                MAX_DEFINITION_BYTES
            ),
        );
        return None;
    }
    if let Some(at) = lone_carriage_return(text) {
        diags.push(
            at,
            DOCUMENT_KEY,
            "carriage return without a line feed (an old Mac line ending): save the file with \\n or \\r\\n line endings",
        );
        return None;
    }
    if let Some(line) = overly_indented_line(text) {
        diags.push(
            Location { line, column: 1 },
            DOCUMENT_KEY,
            format!(
                "line indented or nested by more than {MAX_LINE_PREFIX} columns: a product definition is never that deep"
            ),
        );
        return None;
    }
    let node = match marked_yaml::parse_yaml_with_options(0, text, options(true)) {
        Ok(node) => node,
        Err(LoadError::DuplicateKey(dup)) => {
            let relaxed = marked_yaml::parse_yaml_with_options(0, text, options(false)).ok();
            let first = Location::of(dup.prev_key.span());
            let second = Location::of(dup.key.span());
            let path = relaxed
                .as_ref()
                .and_then(|root| path_of_key(root, first))
                .unwrap_or_else(|| dup.key.as_str().to_string());
            diags.push(
                second,
                &path,
                format!(
                    "duplicate key `{}`: first at line {}, again at line {}; each key may appear only once",
                    dup.key.as_str(),
                    first.line,
                    second.line
                ),
            );
            relaxed?
        }
        Err(err) => {
            let (at, message) = describe_load_error(&err);
            diags.push(at, DOCUMENT_KEY, message);
            return None;
        }
    };
    if let Some(line) = second_document(text) {
        diags.push(
            Location { line, column: 1 },
            DOCUMENT_KEY,
            "a second yaml document starts here: one file defines one product; move it to its own file",
        );
    }
    if let Some(at) = too_deep(&node) {
        diags.push(
            at,
            DOCUMENT_KEY,
            format!(
                "nesting deeper than {MAX_DEPTH} levels: a product definition is never that deep"
            ),
        );
        dismantle(node);
        return None;
    }
    Some(node)
}

/// `text` without a leading byte-order mark, which some Windows editors
/// write and which would otherwise become part of the first key.
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Where the first `\r` not followed by `\n` is. YAML counts a lone CR
/// as a line break, but editors, `grep -n` and this module's other checks
/// count `\n` only: after one, every diagnostic would name a line further
/// down than the one the operator sees (found by fuzzing: an error on
/// line 58 of a 56-line file). So it is refused, at its own position.
fn lone_carriage_return(text: &str) -> Option<Location> {
    let at = text
        .match_indices('\r')
        .map(|(at, _)| at)
        .find(|&at| text.as_bytes().get(at + 1) != Some(&b'\n'))?;
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some(Location {
        line: before.matches('\n').count() + 1,
        column: before.get(line_start..).map_or(0, |l| l.chars().count()) + 1,
    })
}

/// The 1-based number of the first line whose leading indentation and
/// block indicators are wider than [`MAX_LINE_PREFIX`].
fn overly_indented_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.bytes()
                .take_while(|b| matches!(b, b' ' | b'\t' | b'-' | b'?' | b':'))
                .count()
                > MAX_LINE_PREFIX
        })
        .map(|i| i + 1)
}

/// The 1-based line of a `---` document marker that follows content. The
/// loader reads only the first document, so anything after it would be
/// silently ignored. (A `---` at column 0 always ends a block scalar too, so
/// this never misreads text inside a value.)
fn second_document(text: &str) -> Option<usize> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker && seen_content {
            return Some(i + 1);
        }
        let trimmed = line.trim_start();
        if !is_marker && !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%')
        {
            seen_content = true;
        }
    }
    None
}

fn describe_load_error(err: &LoadError) -> (Location, String) {
    match err {
        LoadError::TopLevelMustBeMapping(m) => (
            Location::from_marker(m),
            "expected a mapping at the top level (product: ..., version: ..., ...), found a list or a single value".into(),
        ),
        LoadError::TopLevelMustBeSequence(m) => (
            Location::from_marker(m),
            "expected a list at the top level".into(),
        ),
        LoadError::UnexpectedAnchor(m) => (
            Location::from_marker(m),
            "yaml anchors and aliases (`&name`, `*name`) are not supported: write the value out".into(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => (
            Location::from_marker(m),
            "expected a plain key, found a list or mapping used as a key".into(),
        ),
        LoadError::UnexpectedTag(m) => (
            Location::from_marker(m),
            "yaml tags (`!name`) are not supported: remove the tag".into(),
        ),
        LoadError::ScanError(m, e) => (
            Location::from_marker(m),
            format!("invalid yaml: {}", scan_message(e)),
        ),
        LoadError::DuplicateKey(dup) => (
            Location::of(dup.key.span()),
            format!("duplicate key `{}`", dup.key.as_str()),
        ),
    }
}

/// The scanner's own message, without the " at byte ... line ... column ..."
/// suffix it appends (the diagnostic carries the position already).
fn scan_message(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let text = match text.find(" at byte ") {
        Some(i) => &text[..i],
        None => text.as_str(),
    };
    text.to_string()
}

/// The dotted path of the mapping key that starts at `at`, if any.
fn path_of_key(root: &Node, at: Location) -> Option<String> {
    let mut stack: Vec<(&Node, String)> = vec![(root, String::new())];
    while let Some((node, path)) = stack.pop() {
        match node {
            Node::Mapping(map) => {
                for (key, value) in map.iter() {
                    let child = join(&path, key.as_str());
                    if Location::of(key.span()) == at {
                        return Some(child);
                    }
                    stack.push((value, child));
                }
            }
            Node::Sequence(seq) => {
                for (i, value) in seq.iter().enumerate() {
                    stack.push((value, format!("{path}[{i}]")));
                }
            }
            Node::Scalar(_) => {}
        }
    }
    None
}

/// `parent.child`, or `child` at the top.
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Where a value starts. A block mapping's own mark sits after its first
/// key, so for mappings the first key wins when it comes earlier.
pub(crate) fn node_location(node: &Node) -> Location {
    let own = Location::of(node.span());
    match node {
        Node::Mapping(map) => map
            .keys()
            .next()
            .map_or(own, |k| Location::of(k.span()).min(own)),
        _ => own,
    }
}

/// Where the first node deeper than [`MAX_DEPTH`] starts, if any. Iterative,
/// so any depth is safe to inspect.
fn too_deep(root: &Node) -> Option<Location> {
    let mut stack: Vec<(&Node, usize)> = vec![(root, 1)];
    while let Some((node, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Some(node_location(node));
        }
        match node {
            Node::Mapping(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            Node::Sequence(seq) => stack.extend(seq.iter().map(|v| (v, depth + 1))),
            Node::Scalar(_) => {}
        }
    }
    None
}

/// Drops a tree without recursion: children are moved out onto a heap
/// stack before their parent is dropped.
fn dismantle(root: Node) {
    let mut stack = vec![root];
    while let Some(mut node) = stack.pop() {
        match &mut node {
            Node::Mapping(map) => stack.extend(map.drain().map(|(_, v)| v)),
            Node::Sequence(seq) => stack.append(seq),
            Node::Scalar(_) => {}
        }
    }
}

/// A plain (unquoted) scalar read with the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plain<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

/// How a scalar reads: quoted or block scalars are always strings.
pub(crate) fn classify(scalar: &marked_yaml::types::MarkedScalarNode) -> Plain<'_> {
    let text = scalar.as_str();
    if !scalar.may_coerce() {
        return Plain::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Plain::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    if let Some(int) = parse_int(text) {
        return Plain::Int(int);
    }
    if is_float_syntax(text) {
        if let Ok(float) = text.parse::<f64>() {
            return Plain::Float(float);
        }
    }
    Plain::Str(text)
}

fn parse_int(text: &str) -> Option<i64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, without a regex.
fn is_float_syntax(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (whole, frac) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        None => !whole.is_empty() && digits(whole),
        Some(frac) => digits(whole) && digits(frac) && !(whole.is_empty() && frac.is_empty()),
    };
    let exponent_ok = match exponent {
        None => true,
        Some(exp) => {
            let exp = exp.strip_prefix(['-', '+']).unwrap_or(exp);
            !exp.is_empty() && digits(exp)
        }
    };
    mantissa_ok && exponent_ok
}

/// A definition file as plain JSON, typed exactly as the parser reads it:
/// for validating against `schema/product.schema.json` in tests and tools.
/// Non-finite floats (`.inf`, `.nan`) have no JSON form and become strings.
pub fn yaml_to_json(text: &str) -> Result<serde_json::Value, LoadErrors> {
    let mut diags = Diagnostics::new(std::path::Path::new("<yaml>"));
    match load(strip_bom(text), &mut diags) {
        Some(node) if diags.is_empty() => Ok(to_json(&node)),
        _ => Err(LoadErrors(diags.into_sorted())),
    }
}

/// Recursive, but only ever called on trees [`load`] accepted, which are at
/// most [`MAX_DEPTH`] deep.
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Scalar(scalar) => match classify(scalar) {
            Plain::Null => Value::Null,
            Plain::Bool(b) => Value::Bool(b),
            Plain::Int(i) => Value::from(i),
            Plain::Float(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(scalar.as_str().to_string())),
            Plain::Str(s) => Value::String(s.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str) -> Node {
        marked_yaml::parse_yaml_with_options(0, format!("v: {text}"), options(true))
            .unwrap()
            .as_mapping()
            .unwrap()
            .get_node("v")
            .unwrap()
            .clone()
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let cases: &[(&str, Plain)] = &[
            ("", Plain::Null),
            ("~", Plain::Null),
            ("true", Plain::Bool(true)),
            ("False", Plain::Bool(false)),
            ("42", Plain::Int(42)),
            ("-7", Plain::Int(-7)),
            ("0x1f", Plain::Int(31)),
            ("1.5", Plain::Float(1.5)),
            ("-40.", Plain::Float(-40.0)),
            ("1e3", Plain::Float(1000.0)),
            ("yes", Plain::Str("yes")),
            ("10s", Plain::Str("10s")),
            ("'42'", Plain::Str("42")),
            ("\"true\"", Plain::Str("true")),
        ];
        for (text, expected) in cases {
            let node = scalar(text);
            assert_eq!(&classify(node.as_scalar().unwrap()), expected, "{text}");
        }
    }

    #[test]
    fn deep_trees_are_refused() {
        let text = format!("a: {}x{}", "[".repeat(100), "]".repeat(100));
        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        assert!(load(&text, &mut diags).is_none());
        let out = diags.into_sorted();
        assert_eq!(out.len(), 1);
        assert!(out[0].message.starts_with("nesting deeper than 32 levels"));
    }

    #[test]
    fn deep_block_nesting_is_refused_before_parsing() {
        let text = format!("a:\n{}x", "- ".repeat(100_000));
        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        assert!(load(&text, &mut diags).is_none());
        let out = diags.into_sorted();
        assert_eq!(out.len(), 1);
        assert!(out[0]
            .message
            .starts_with("line indented or nested by more than 256"));
    }

    /// Regression (fuzzing, product_definition): a lone CR made the parser
    /// report a syntax error on line 58 of a 56-line file.
    #[test]
    fn a_lone_carriage_return_is_refused_where_it_is() {
        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        let text = "product: p\nowner: a\rb\nkey: k\n";
        assert!(load(text, &mut diags).is_none());
        let out = diags.into_sorted();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].line, out[0].column), (2, 9), "{out:?}");
        assert!(out[0]
            .message
            .starts_with("carriage return without a line feed"));

        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        let fuzzed = "access:\r  operator:\n    mask: { a\r\x03g host.\n'#\n# The li";
        assert!(load(fuzzed, &mut diags).is_none());
        let out = diags.into_sorted();
        assert_eq!((out[0].line, out[0].column), (1, 8), "{out:?}");

        // Windows line endings are fine.
        let mut diags = Diagnostics::new(std::path::Path::new("t.yaml"));
        assert!(load("a: 1\r\nb: 2\r\n", &mut diags).is_some());
        assert!(diags.into_sorted().is_empty());
    }

    #[test]
    fn dismantle_handles_any_depth() {
        let mut node = Node::from(marked_yaml::types::MarkedScalarNode::from("x"));
        for _ in 0..200_000 {
            node = Node::from(marked_yaml::types::MarkedSequenceNode::from(vec![node]));
        }
        dismantle(node);
    }
}
