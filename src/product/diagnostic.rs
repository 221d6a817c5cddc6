//! Diagnostics: one problem in one definition file, with its location.
//!
//! Validation never stops at the first problem: every check pushes into a
//! [`Diagnostics`] sink and keeps going, so an operator fixes a file in one
//! round instead of one error per restart.

use std::fmt;
use std::path::{Path, PathBuf};

/// The key path used for problems that belong to the file or the YAML text
/// as a whole (unreadable file, syntax error) rather than to one key.
pub const DOCUMENT_KEY: &str = "(document)";

/// One problem in a product definition.
///
/// `line` and `column` are 1-based, as editors count them. `key` is the
/// dotted path of the offending key (`fields.temperature_c.type`,
/// `sync[0].to`), or [`DOCUMENT_KEY`] when no key is involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    /// What is wrong and what was expected, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.key,
            self.message
        )
    }
}

/// Every problem found while loading one or more definitions.
///
/// Display prints one diagnostic per line, sorted by file and position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<Diagnostic>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl LoadErrors {
    /// The diagnostics as displayed, one string each: handy in tests.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// A 1-based position in a definition file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The start of the file, for problems with no better position.
    pub const START: Location = Location { line: 1, column: 1 };

    pub(crate) fn of(span: &marked_yaml::Span) -> Location {
        span.start()
            .map(Location::from_marker)
            .unwrap_or(Location::START)
    }

    pub(crate) fn from_marker(marker: &marked_yaml::Marker) -> Location {
        Location {
            line: marker.line().max(1),
            column: marker.column().max(1),
        }
    }
}

/// The sink every check writes into, for one file.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    file: PathBuf,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(crate) fn new(file: &Path) -> Diagnostics {
        Diagnostics {
            file: file.to_path_buf(),
            items: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, at: Location, key: &str, message: impl Into<String>) {
        self.items.push(Diagnostic {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            key: if key.is_empty() {
                DOCUMENT_KEY.to_string()
            } else {
                key.to_string()
            },
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The diagnostics in file order (line, then column); ties keep the
    /// order in which the checks found them.
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by_key(|d| (d.line, d.column));
        self.items
    }
}

/// Text quoted in messages is cut to 60 characters.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
