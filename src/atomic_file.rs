//! The one way the node replaces a small file on disk (the node id, the
//! encryption canary, the token file): write a temporary file beside it,
//! fsync it, rename it over the target, fsync the directory.
//!
//! Why all four steps: the rename makes the swap atomic (a reader sees the
//! old file or the new one, never half of one), the file fsync makes the
//! new bytes durable before the name points at them, and the directory
//! fsync makes the rename itself durable — without it a power cut after
//! the call returned may bring back the old name, or no file at all for a
//! file that was new (the node id would change and upstreams would see a
//! new node). Like fjall's `fsync_directory`, which every durable rename
//! there goes through.
//!
//! The temporary name is unique per process and call, so two writers of
//! the same file never share a temporary; the temporary is removed when a
//! step fails, and the target is then untouched.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporaries made by this process so far (part of their names).
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` durably and atomically (see the module
/// doc). The parent directory is created when missing. `mode` sets the
/// Unix permissions of the new file (e.g. `0o600` for secrets); `None`
/// keeps the process default.
pub fn replace(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir)?;
    let tmp = temporary_for(path)?;
    let written = write_synced(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    fsync_directory(&dir)
}

/// Makes the entries of `dir` (a rename, a new or removed file) durable.
/// A no-op where directories cannot be opened as files (Windows).
pub fn fsync_directory(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `<dir>/.<name>.tmp-<pid>-<n>`: hidden, beside the target (a rename
/// across file systems is not atomic), unique per process and call.
fn temporary_for(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    Ok(parent_of(path).join(tmp_name))
}

fn write_synced(tmp: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_then_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/node_id");
        replace(&path, b"first", None).expect("created, with its folder");
        assert_eq!(fs::read(&path).expect("read"), b"first");
        replace(&path, b"second, longer", None).expect("replaced");
        assert_eq!(fs::read(&path).expect("read"), b"second, longer");
        replace(&path, b"3", None).expect("replaced by a shorter one");
        assert_eq!(fs::read(&path).expect("read"), b"3");
        assert_eq!(names_in(&dir.path().join("sub")), vec!["node_id"]);
    }

    #[cfg(unix)]
    #[test]
    fn sets_the_mode_of_the_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        replace(&path, b"{}", Some(0o600)).expect("written");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The target is a non-empty directory: the rename fails.
        let path = dir.path().join("canary");
        fs::create_dir_all(path.join("inside")).expect("mkdir");
        let err = replace(&path, b"new", None).expect_err("cannot replace a folder");
        assert!(!err.to_string().is_empty());
        assert!(path.join("inside").is_dir(), "the old entry is untouched");
        assert_eq!(names_in(dir.path()), vec!["canary"], "temporary removed");
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = replace(Path::new("/"), b"x", None).expect_err("no file name");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn directories_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        fsync_directory(dir.path()).expect("a directory syncs");
        assert!(fsync_directory(&dir.path().join("missing")).is_err());
    }
}
