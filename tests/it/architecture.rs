//! The import graph between meshlet's concepts (the top-level modules of
//! `src/`: `store`, `sync`, `api`, `product`, ...) has no cycles, so each
//! concept can be read, tested and changed from the ones below it.
//!
//! The graph is read from the source as written: every `crate::<module>`
//! path outside comments and outside a file's trailing `#[cfg(test)] mod
//! tests` (a test may reach across), in `use` lines and inline paths
//! alike. [`KNOWN`] lists allowed cycle edges; it is empty and can only
//! stay so. A new edge that closes a cycle fails
//! with the cycle and the files that make each edge; an edge of [`KNOWN`]
//! that no longer closes a cycle fails too, asking to delete its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::repo_root;

/// Edges `from -> to` between concepts that are part of a cycle. Empty
/// since f65086d (issue 31 point 4: the morning of 2026-12-07 it held 29
/// edges in one group of ten concepts); it stays empty — a new cycle is
/// cut, not listed.
const KNOWN: &[(&str, &str)] = &[];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without a trailing
/// `#[cfg(test)] mod tests` block.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" // ").next().unwrap_or(line);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules a piece of code names through `crate::`:
/// `crate::store::X`, `crate::{store, sync::Y}`.
fn named_concepts(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        {
            continue; // `meshlet_crate::`, `$crate::`
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a brace group, nested groups skipped.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            found.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// concept → concept → the files (relative to `src/`) that make the edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn import_graph() -> Graph {
    let src = repo_root().join("src");
    let concepts: BTreeSet<String> = std::fs::read_to_string(src.join("lib.rs"))
        .expect("src/lib.rs")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect();
    assert!(
        concepts.len() > 5,
        "src/lib.rs lists the concepts: {concepts:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path");
        let from = first.trim_end_matches(".rs").to_string();
        if !concepts.contains(&from) {
            continue; // lib.rs, main.rs, vendor/
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for to in named_concepts(&code(&text)) {
            if to != from && concepts.contains(&to) {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    graph
}

/// The strongly connected components with more than one concept
/// (Tarjan's algorithm): each is a set of concepts that import each other
/// in a cycle.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(from, tos)| {
            std::iter::once(from.as_str()).chain(tos.keys().map(String::as_str))
        })
        .collect();
    for v in nodes {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.out
}

#[test]
fn the_parser_reads_paths_and_groups() {
    let code = code(
        "use crate::store::Store;\nuse crate::{policy::View, record};\n// use crate::sync;\nlet x = crate::api::f();\nuse meshlet_crate::x;\n#[cfg(test)]\nmod tests {\n    use crate::node;\n}\n",
    );
    let names: Vec<String> = named_concepts(&code).into_iter().collect();
    assert_eq!(names, ["api", "policy", "record", "store"]);
    let mut graph = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(a.into())
            .or_default()
            .entry(b.into())
            .or_default();
    }
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );
}

#[test]
fn concepts_import_each_other_without_cycles() {
    let graph = import_graph();
    let mut in_cycles: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let components = cycles(&graph);
    for component in &components {
        for from in component {
            for (to, files) in graph.get(from).into_iter().flatten() {
                if component.contains(to) {
                    in_cycles.insert((from.clone(), to.clone()), files.clone());
                }
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<String> = in_cycles
        .iter()
        .filter(|(edge, _)| !known.contains(*edge))
        .map(|((from, to), files)| {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            format!("  {from} -> {to}  ({})", files.join(", "))
        })
        .collect();
    let gone: Vec<String> = known
        .iter()
        .filter(|edge| !in_cycles.contains_key(*edge))
        .map(|(from, to)| format!("  (\"{from}\", \"{to}\")"))
        .collect();
    let groups: Vec<String> = components
        .iter()
        .map(|c| format!("  {{{}}}", c.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(
        new.is_empty(),
        "imports between concepts close a cycle not in KNOWN; cut the edge (move the item to the concept that owns it):\n{}\nconcepts in cycles:\n{}",
        new.join("\n"),
        groups.join("\n")
    );
    assert!(
        gone.is_empty(),
        "these KNOWN edges no longer close a cycle: delete their lines from KNOWN in tests/it/architecture.rs:\n{}",
        gone.join("\n")
    );
}
