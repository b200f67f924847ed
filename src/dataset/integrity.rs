//! The integrity steps of a load (DESIGN.md section 2): an open that never blocks and
//! refuses anything but a regular file (and, for a reload, anything outside the data
//! folder), a shared advisory lock so a publisher holding an exclusive lock is never
//! read half-written, a stat before and after so a file changed under us is refused,
//! and the SHA-256 check.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::LoadError;

/// How often a blocked lock is retried. Short enough that a publisher releasing its lock
/// is noticed quickly, long enough not to spin.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// Why `open_regular` did not hand out a file.
#[derive(Debug)]
pub enum OpenRefusal {
    Io(std::io::Error),
    /// Not a regular file; says what it is instead ("a FIFO (named pipe)", ...).
    NotRegular(&'static str),
    /// The file opened does not lie in the folder it was confined to.
    Outside,
}

/// Opens `path` for reading, and refuses it unless it is a regular file and, with
/// `confine_to`, one that lies in that folder.
///
/// The open never blocks: `O_NONBLOCK` makes opening a FIFO return at once (instead of
/// waiting for a writer that may never come), `fstat` on the open descriptor refuses
/// anything but a regular file before a byte is read, and only then is `O_NONBLOCK`
/// cleared for the reads. Confinement is checked on the file actually opened, not on
/// the name before opening it, so repointing a symlink between a check and the open
/// cannot slip another file in.
pub fn open_regular(path: &Path, confine_to: Option<&Path>) -> Result<File, OpenRefusal> {
    // First where the name leads, existing or not: a file outside is refused the same
    // way whether it exists, is missing, unreadable or a FIFO, so the error says
    // nothing about it.
    if confine_to.is_some_and(|folder| !leads_into(path, folder)) {
        return Err(OpenRefusal::Outside);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(OpenRefusal::Io)?;
    let meta = file.metadata().map_err(OpenRefusal::Io)?;
    // Then the file actually opened, before anything else is said about it.
    if let Some(folder) = confine_to {
        if !lies_in(&meta, path, folder) {
            return Err(OpenRefusal::Outside);
        }
    }
    if !meta.is_file() {
        return Err(OpenRefusal::NotRegular(kind_of(&meta.file_type())));
    }
    clear_nonblocking(&file).map_err(OpenRefusal::Io)?;
    Ok(file)
}

/// How many symlinks `resolve_existing` follows in all before giving up, as the kernel
/// does (`ELOOP`).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Whether `path` leads into `folder`, whether or not the file it leads to exists.
/// Anything that cannot be resolved counts as outside.
pub fn leads_into(path: &Path, folder: &Path) -> bool {
    let mut hops = MAX_SYMLINK_HOPS;
    match (folder.canonicalize(), resolve_existing(path, &mut hops)) {
        (Ok(folder), Ok(target)) => target.starts_with(folder),
        _ => false,
    }
}

/// Where `path` leads: its canonical form if it exists; for a dangling symlink, where
/// the link points, resolved as far as it exists (the missing rest appended as
/// written), so a link to a missing file outside a folder is judged like one to an
/// existing file there. `hops` bounds the links followed across the whole resolution,
/// so a cycle of dangling links ends in an error, not in a stack overflow.
fn resolve_existing(path: &Path, hops: &mut u32) -> std::io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    loop {
        match path.canonicalize() {
            Ok(canonical) => return Ok(canonical),
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            Err(_) => {}
        }
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match std::fs::read_link(&path) {
            // A dangling link: follow it one step (relative targets are relative to
            // the link's folder).
            Ok(target) => {
                *hops = hops
                    .checked_sub(1)
                    .ok_or_else(|| std::io::Error::other("too many levels of symbolic links"))?;
                path = parent.join(target);
            }
            // Not a link, and missing: resolve its folder, keep its name.
            Err(_) => {
                let name = path
                    .file_name()
                    .ok_or_else(|| std::io::Error::other("no file name to resolve"))?;
                return Ok(resolve_existing(&parent, hops)?.join(name));
            }
        }
    }
}

/// Whether the open file (`meta` is its `fstat`) is the one `path` names after
/// following every symlink, and that name is inside `folder`. A path repointed between
/// the open and this check names another inode and is refused, never let through.
fn lies_in(meta: &std::fs::Metadata, path: &Path, folder: &Path) -> bool {
    let (Ok(folder), Ok(canonical)) = (folder.canonicalize(), path.canonicalize()) else {
        return false;
    };
    if !canonical.starts_with(&folder) {
        return false;
    }
    std::fs::metadata(&canonical)
        .is_ok_and(|named| named.dev() == meta.dev() && named.ino() == meta.ino())
}

fn clear_nonblocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns, for the duration of
    // the call; F_GETFL/F_SETFL touch only its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What a non-regular file is, for the error message.
fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "something else"
    }
}

/// Takes a shared `flock` on `file`, waiting up to `timeout` for an exclusive holder.
///
/// std's `try_lock_shared` is polled rather than calling the blocking `lock_shared`,
/// because a blocking `flock` cannot be given a deadline.
pub fn lock_shared(file: &File, path: &Path, timeout: Duration) -> Result<(), LoadError> {
    let start = Instant::now();
    loop {
        match file.try_lock_shared() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if start.elapsed() < timeout => {
                std::thread::sleep(LOCK_POLL.min(timeout.saturating_sub(start.elapsed())));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LoadError::Locked {
                    path: path.to_path_buf(),
                    waited: start.elapsed().into(),
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(LoadError::Lock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// What identifies one version of a file on disk: if any of these differ between the
/// start and the end of a load, what was read may mix two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
    pub dev: u64,
    pub ino: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// Names the first difference, for the error message.
    pub fn difference(&self, after: &FileStamp) -> Option<String> {
        if self.dev != after.dev || self.ino != after.ino {
            Some("the path now points to another file".to_owned())
        } else if self.len != after.len {
            Some(format!(
                "size went from {} to {} bytes",
                self.len, after.len
            ))
        } else if self.modified != after.modified {
            Some("modification time changed".to_owned())
        } else {
            None
        }
    }
}

/// Checks the file handle and the path itself against the stamp taken before reading.
pub fn check_unchanged(file: &File, path: &Path, before: &FileStamp) -> Result<(), LoadError> {
    let changed = |what: String| LoadError::Changed {
        path: path.to_path_buf(),
        what,
    };
    let by_handle = file.metadata().map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(what) = before.difference(&FileStamp::of(&by_handle)) {
        return Err(changed(what));
    }
    match std::fs::metadata(path) {
        Ok(meta) => match before.difference(&FileStamp::of(&meta)) {
            Some(what) => Err(changed(what)),
            None => Ok(()),
        },
        Err(err) => Err(changed(format!("the path can no longer be read: {err}"))),
    }
}

/// Where the expected SHA-256 came from, so a mismatch can say which one to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumSource {
    Flag,
    Sidecar(PathBuf),
}

impl std::fmt::Display for ChecksumSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChecksumSource::Flag => f.write_str("--sha256"),
            ChecksumSource::Sidecar(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The sidecar path `sha256sum` users expect: `<file>.sha256`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Finds the expected digest: the `--sha256` flag wins, else the sidecar if present.
/// The sidecar is opened as the data file is: never blocking, regular files only, and
/// inside `confine_to` when the data file had to be.
pub fn expected_sha256(
    path: &Path,
    flag: Option<&str>,
    confine_to: Option<&Path>,
) -> Result<Option<(String, ChecksumSource)>, LoadError> {
    if let Some(hex) = flag {
        let hex = normalize_hex(hex).ok_or_else(|| LoadError::ChecksumFormat {
            source_desc: ChecksumSource::Flag.to_string(),
            reason: "expected 64 hexadecimal characters".to_owned(),
        })?;
        return Ok(Some((hex, ChecksumSource::Flag)));
    }
    let sidecar = sidecar_path(path);
    let mut file = match open_regular(&sidecar, confine_to) {
        Ok(file) => file,
        Err(OpenRefusal::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(OpenRefusal::Io(source)) => {
            return Err(LoadError::ChecksumFile {
                path: sidecar,
                source,
            })
        }
        Err(refusal) => return Err(refusal.into_load_error(&sidecar, confine_to)),
    };
    let mut text = String::new();
    // A sidecar is one line; reading at most 64 KiB of it bounds what a wrong file costs.
    file.by_ref()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|source| LoadError::ChecksumFile {
            path: sidecar.clone(),
            source,
        })?;
    let hex = parse_sidecar(&text).ok_or_else(|| LoadError::ChecksumFormat {
        source_desc: sidecar.display().to_string(),
        reason: "expected `<64 hex characters>  <file name>` as `sha256sum` writes it".to_owned(),
    })?;
    Ok(Some((hex, ChecksumSource::Sidecar(sidecar))))
}

impl OpenRefusal {
    /// The load error for a refused data file or sidecar at `path`.
    pub fn into_load_error(self, path: &Path, confine_to: Option<&Path>) -> LoadError {
        let path = path.to_path_buf();
        match self {
            OpenRefusal::Io(source) => LoadError::Open { path, source },
            OpenRefusal::NotRegular(kind) => LoadError::NotAFile { path, kind },
            OpenRefusal::Outside => LoadError::OutsideFolder {
                path,
                folder: confine_to.map(Path::to_path_buf).unwrap_or_default(),
            },
        }
    }
}

/// Reads the first line of a `sha256sum` output file: the digest is the first word.
fn parse_sidecar(text: &str) -> Option<String> {
    let first = text.lines().find(|line| !line.trim().is_empty())?;
    normalize_hex(first.split_whitespace().next()?)
}

fn normalize_hex(hex: &str) -> Option<String> {
    let hex = hex.trim();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// SHA-256 of the whole file, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_formats() {
        let hex = "a".repeat(64);
        assert_eq!(
            parse_sidecar(&format!("{hex}  data.txt\n")),
            Some(hex.clone())
        );
        assert_eq!(
            parse_sidecar(&format!("{}\n", hex.to_uppercase())),
            Some(hex.clone())
        );
        assert_eq!(parse_sidecar(&format!("\n{hex} *data.txt")), Some(hex));
        assert_eq!(parse_sidecar("abc  data.txt"), None);
        assert_eq!(parse_sidecar(""), None);
    }

    #[test]
    fn links_are_judged_by_where_they_lead_whether_or_not_it_exists() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("data");
        std::fs::create_dir(&folder).unwrap();
        std::fs::create_dir(folder.join("sub")).unwrap();
        std::fs::write(root.path().join("outside"), "x").unwrap();
        let link = |name: &str, target: &Path| {
            std::os::unix::fs::symlink(target, folder.join(name)).unwrap();
            folder.join(name)
        };
        assert!(leads_into(&folder.join("missing"), &folder));
        assert!(leads_into(&link("in", Path::new("sub/missing")), &folder));
        assert!(!leads_into(
            &link("out", &root.path().join("outside")),
            &folder
        ));
        assert!(!leads_into(
            &link("out-missing", &root.path().join("nope")),
            &folder
        ));
        assert!(!leads_into(&link("up", Path::new("../nope")), &folder));
        // A cycle of dangling links, through each other's folders: an error, counted
        // as outside, not a stack overflow.
        link("a", Path::new("b/x"));
        let b = link("b", Path::new("a/y"));
        assert!(!leads_into(&b.join("z"), &folder));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a directory entry.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        assert!(matches!(
            open_regular(&fifo, None),
            Err(OpenRefusal::NotRegular("a FIFO (named pipe)"))
        ));
        assert!(matches!(
            open_regular(dir.path(), None),
            Err(OpenRefusal::NotRegular("a directory"))
        ));
    }

    #[test]
    fn sidecar_is_next_to_the_file() {
        assert_eq!(
            sidecar_path(Path::new("/d/x.data")),
            PathBuf::from("/d/x.data.sha256")
        );
    }
}
