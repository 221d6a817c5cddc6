//! Loading a file or a folder of definitions into a [`ProductSet`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::definition::{parse_located, LoadContext, Product};
use super::diagnostic::{Diagnostic, LoadErrors, Location, DOCUMENT_KEY};

/// The products a node serves, by name. Immutable once loaded: a reload
/// builds a new set, so readers holding an `Arc<Product>` never see a
/// half-updated definition.
#[derive(Clone, Debug, Default)]
pub struct ProductSet {
    products: BTreeMap<String, Arc<Product>>,
}

impl ProductSet {
    pub fn get(&self, name: &str) -> Option<&Arc<Product>> {
        self.products.get(name)
    }

    /// Every product, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.products.values()
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Product names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.products.keys().map(String::as_str)
    }
}

impl FromIterator<Product> for ProductSet {
    /// For tests and tools: a later product replaces an earlier one of the
    /// same name (use [`load_path`] to have duplicates reported).
    fn from_iter<I: IntoIterator<Item = Product>>(iter: I) -> Self {
        ProductSet {
            products: iter
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
        }
    }
}

/// Loads a definition file, or every `*.yaml` / `*.yml` file directly
/// inside a folder (sorted by name; subfolders and other files are
/// ignored). Returns every diagnostic of every file, plus cross-file ones
/// (a product name defined twice names both files). An existing folder
/// with no definitions gives an empty set: a fresh node may start with
/// none and get them on reload.
pub fn load_path(path: &Path, ctx: &LoadContext) -> Result<ProductSet, LoadErrors> {
    load_paths(&[path.to_path_buf()], ctx)
}

/// [`load_path`] over several files or folders at once, as a node's config
/// lists them: product names must be unique across all of them.
pub fn load_paths(paths: &[PathBuf], ctx: &LoadContext) -> Result<ProductSet, LoadErrors> {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        match definition_files(path) {
            Ok(found) => files.extend(found),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    let mut products: BTreeMap<String, (Arc<Product>, Location)> = BTreeMap::new();
    for file in files {
        let text = match read_text(&file) {
            Ok(text) => text,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                continue;
            }
        };
        match parse_located(&file, &text, ctx) {
            Ok((product, at)) => {
                if let Some((first, first_at)) = products.get(&product.name) {
                    diagnostics.push(Diagnostic {
                        file: file.clone(),
                        line: at.line,
                        column: at.column,
                        key: "product".into(),
                        message: format!(
                            "product `{}` is already defined in {} (line {}): product names must be unique",
                            product.name,
                            first.file.display(),
                            first_at.line
                        ),
                    });
                } else {
                    products.insert(product.name.clone(), (Arc::new(product), at));
                }
            }
            Err(errors) => diagnostics.extend(errors.0),
        }
    }
    if !diagnostics.is_empty() {
        return Err(LoadErrors(diagnostics));
    }
    Ok(ProductSet {
        products: products
            .into_iter()
            .map(|(name, (p, _))| (name, p))
            .collect(),
    })
}

fn file_error(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        key: DOCUMENT_KEY.into(),
        message,
    }
}

fn definition_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let meta = std::fs::metadata(path)
        .map_err(|e| file_error(path, format!("cannot read: {}", io_reason(&e))))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| file_error(path, format!("cannot list folder: {}", io_reason(&e))))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a file as UTF-8. Only regular files are read (a FIFO would block
/// forever, a device like `/dev/zero` never ends), and never more than
/// [`super::yaml::MAX_DEFINITION_BYTES`] plus one byte, whatever the
/// metadata says: a file that grows while read is still refused, not
/// read until memory runs out.
fn read_text(file: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let limit = super::yaml::MAX_DEFINITION_BYTES as u64;
    let too_big = |len: u64| {
        file_error(
            file,
            format!(
                "file is {len} bytes: a product definition may be at most {limit} bytes (256 KiB)"
            ),
        )
    };
    let meta = std::fs::metadata(file)
        .map_err(|e| file_error(file, format!("cannot read: {}", io_reason(&e))))?;
    if !meta.is_file() {
        return Err(file_error(
            file,
            format!(
                "not a regular file ({}): a product definition must be a plain file",
                file_kind(&meta)
            ),
        ));
    }
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let opened = std::fs::File::open(file)
        .map_err(|e| file_error(file, format!("cannot read: {}", io_reason(&e))))?;
    // The file may have been swapped for something else since `metadata`:
    // check what was opened, before reading from it.
    let opened_meta = opened
        .metadata()
        .map_err(|e| file_error(file, format!("cannot read: {}", io_reason(&e))))?;
    if !opened_meta.is_file() {
        return Err(file_error(
            file,
            format!(
                "not a regular file ({}): a product definition must be a plain file",
                file_kind(&opened_meta)
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(opened_meta.len().min(limit)).unwrap_or(0));
    opened
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(file, format!("cannot read: {}", io_reason(&e))))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..offset];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = offset
            - before
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0)
            + 1;
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            key: DOCUMENT_KEY.into(),
            message: format!("invalid utf-8 at byte {offset}: definitions must be utf-8 text"),
        }
    })
}

/// What kind of non-regular file `meta` describes, for the error.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let ty = meta.file_type();
    if ty.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ty.is_fifo() {
            return "a named pipe";
        }
        if ty.is_char_device() {
            return "a character device";
        }
        if ty.is_block_device() {
            return "a block device";
        }
        if ty.is_socket() {
            return "a socket";
        }
    }
    "not a plain file"
}

/// The OS error without Rust's " (os error 2)" suffix.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text.to_lowercase(),
    }
}
