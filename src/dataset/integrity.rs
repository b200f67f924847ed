//! The integrity steps of a load (docs/ARCHITECTURE.md section 1): an open that never blocks and
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

use super::error::LoadError;

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
///
/// The ctime is what catches a rewrite in place that puts the modification time back
/// (`rsync --inplace -t`, `touch -r`): every write and every `utimes` sets it to the
/// current time, and no unprivileged call can set it back. Reading the file changes
/// neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Inode change time (`st_ctime`, seconds and nanoseconds).
    pub changed: (i64, i64),
    pub dev: u64,
    pub ino: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
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
        } else if self.changed != after.changed {
            Some(
                "status change time (ctime) changed: written in place, perhaps with its \
                 modification time put back"
                    .to_owned(),
            )
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
    let mut text = Vec::new();
    // Reading at most 1 MiB bounds what a wrong file costs; a list of that many files
    // is not a sidecar.
    file.by_ref()
        .take(MAX_SIDECAR_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| LoadError::ChecksumFile {
            path: sidecar.clone(),
            source,
        })?;
    let format_error = |reason: String| LoadError::ChecksumFormat {
        source_desc: sidecar.display().to_string(),
        reason,
    };
    if text.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(format_error(format!(
            "longer than {MAX_SIDECAR_BYTES} bytes"
        )));
    }
    let hex = parse_sidecar(&text, &data_file_names(path)).map_err(format_error)?;
    Ok(Some((hex, ChecksumSource::Sidecar(sidecar))))
}

impl OpenRefusal {
    /// The load error for a refused data file or sidecar at `path`.
    pub fn into_load_error(self, path: &Path, confine_to: Option<&Path>) -> LoadError {
        let path = path.to_path_buf();
        match self {
            OpenRefusal::Io(source) => LoadError::open(path, source),
            OpenRefusal::NotRegular(kind) => LoadError::NotAFile { path, kind },
            OpenRefusal::Outside => LoadError::OutsideFolder {
                path,
                folder: confine_to.map(Path::to_path_buf).unwrap_or_default(),
            },
        }
    }
}

/// The most a sidecar may hold: about 12 000 lines of `sha256sum` output.
const MAX_SIDECAR_BYTES: u64 = 1 << 20;

/// The names a sidecar line may give the data file: its own, and, when `path` is a
/// symlink, the name of the file it leads to (a `current.data.sha256` link next to a
/// `current.data` link both pointing at `v2` files lists `v2.data`).
fn data_file_names(path: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = path
        .file_name()
        .map(|name| name.as_encoded_bytes().to_vec())
        .into_iter()
        .collect();
    if let Some(target) = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|name| name.as_encoded_bytes().to_vec()))
    {
        if !names.contains(&target) {
            names.push(target);
        }
    }
    names
}

/// One entry of a `sha256sum` output: the digest and the file name, unescaped (`None`
/// for a bare digest, which some publishers write by hand).
#[derive(Debug, PartialEq, Eq)]
struct SumLine {
    hex: String,
    name: Option<Vec<u8>>,
}

/// Finds the digest of the data file (named one of `names`) in a `sha256sum` output:
/// every form it writes is read (`<hex>  <name>`, `<hex> *<name>` with `-b`, `SHA256
/// (<name>) = <hex>` with `--tag`, the `\`-prefixed escaped form of a name holding a
/// backslash or a line break, NUL-terminated entries with `-z`), after an optional
/// UTF-8 BOM and with CRLF line ends. The entry naming the data file counts, wherever
/// it is in a list; a name with a folder (`sha256sum data/x.data`) counts by its last
/// component. A bare digest counts only as the sole entry. Any line that is not a
/// `sha256sum` entry makes the whole file suspect, and so does no entry, or two
/// disagreeing entries, for the data file.
fn parse_sidecar(text: &[u8], names: &[Vec<u8>]) -> Result<String, String> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    // `-z` ends entries with NUL and never escapes names (they may hold line feeds).
    let zero_terminated = text.contains(&0);
    let separator = if zero_terminated { b'\0' } else { b'\n' };
    let mut entries = Vec::new();
    for (n, line) in text.split(|&b| b == separator).enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let entry = parse_sum_line(line, !zero_terminated).ok_or_else(|| {
            format!(
                "line {} is not a line of `sha256sum` output (`<64 hex characters>  <file name>`, or `SHA256 (<file name>) = <64 hex characters>` with --tag)",
                n + 1
            )
        })?;
        entries.push(entry);
    }
    let wanted = |name: &[u8]| {
        let name = name.strip_prefix(b"./").unwrap_or(name);
        let last = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
        names
            .iter()
            .any(|n| n.as_slice() == name || n.as_slice() == last)
    };
    let mut found: Option<&str> = None;
    for entry in &entries {
        let matches = match &entry.name {
            Some(name) => wanted(name),
            None => entries.len() == 1,
        };
        if !matches {
            continue;
        }
        match found {
            Some(hex) if hex != entry.hex => {
                return Err(format!(
                    "two different digests for {}",
                    display_names(names)
                ))
            }
            _ => found = Some(&entry.hex),
        }
    }
    match found {
        Some(hex) => Ok(hex.to_owned()),
        None if entries.is_empty() => Err("no `sha256sum` line in it".to_owned()),
        None => Err(format!(
            "no line for {} among the {} it lists",
            display_names(names),
            entries.len()
        )),
    }
}

fn display_names(names: &[Vec<u8>]) -> String {
    names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// One line (without its end) in any of the forms `sha256sum` writes; `None` if it is
/// none of them. `escapes`: a leading `\` marks an escaped name (not with `-z`).
fn parse_sum_line(line: &[u8], escapes: bool) -> Option<SumLine> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) if escapes => (true, rest),
        _ => (false, line),
    };
    let name_of = |raw: &[u8]| {
        if escaped {
            unescape(raw)
        } else {
            Some(raw.to_vec())
        }
    };
    if let Some(rest) = line.strip_prefix(b"SHA256 (") {
        // `--tag`: the digest is the last word, after the last `) = `.
        let at = rest.len().checked_sub(64 + 4)?;
        let (name, tail) = rest.split_at(at);
        let hex = tail.strip_prefix(b") = ")?;
        return Some(SumLine {
            hex: normalize_hex(std::str::from_utf8(hex).ok()?)?,
            name: Some(name_of(name)?),
        });
    }
    let hex = normalize_hex(std::str::from_utf8(line.get(..64)?).ok()?)?;
    let rest = &line[64..];
    let name = if rest.iter().all(u8::is_ascii_whitespace) && !escaped {
        None
    } else {
        // Two characters between digest and name: a space, then a space (text mode)
        // or `*` (binary mode).
        match rest {
            [b' ', b' ' | b'*', name @ ..] if !name.is_empty() => Some(name_of(name)?),
            _ => return None,
        }
    };
    Some(SumLine { hex, name })
}

/// Undoes `sha256sum`'s escaping of a name: `\\` is a backslash, `\n` a line feed,
/// `\r` a carriage return; anything else after a backslash is not its output.
fn unescape(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next()? {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            _ => return None,
        });
    }
    Some(out)
}

/// A sidecar line for `name` as `sha256sum` writes it, escaped when the name holds a
/// backslash or a line break (what `kvserve gen --checksum` writes).
pub fn sidecar_line(hex: &str, name: &[u8]) -> Vec<u8> {
    let escaped = name.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut line = Vec::with_capacity(name.len() + 70);
    if escaped {
        line.push(b'\\');
    }
    line.extend_from_slice(hex.as_bytes());
    line.extend_from_slice(b"  ");
    for &b in name {
        match b {
            b'\\' if escaped => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            _ => line.push(b),
        }
    }
    line.push(b'\n');
    line
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

    fn sidecar(text: &str) -> Result<String, String> {
        parse_sidecar(text.as_bytes(), &[b"data.txt".to_vec()])
    }

    #[test]
    fn sidecar_formats() {
        let hex = "a".repeat(64);
        assert_eq!(sidecar(&format!("{hex}  data.txt\n")), Ok(hex.clone()));
        assert_eq!(
            sidecar(&format!("{}\n", hex.to_uppercase())),
            Ok(hex.clone())
        );
        assert_eq!(sidecar(&format!("\n{hex} *data.txt")), Ok(hex.clone()));
        assert_eq!(sidecar(&format!("{hex}  ./data.txt\r\n")), Ok(hex.clone()));
        assert_eq!(sidecar(&format!("{hex}  /srv/data.txt\n")), Ok(hex.clone()));
        assert_eq!(
            sidecar(&format!("SHA256 (data.txt) = {hex}\0")),
            Ok(hex.clone())
        );
        assert!(sidecar("abc  data.txt").is_err());
        assert!(sidecar("").is_err());
        assert!(sidecar(&format!("{hex}  other.txt\n"))
            .unwrap_err()
            .contains("no line for data.txt"));
        assert!(
            sidecar(&format!("{hex}  data.txt\n{}  data.txt\n", "b".repeat(64)))
                .unwrap_err()
                .contains("two different")
        );
        // An escape sha256sum never writes.
        assert!(sidecar(&format!("\\{hex}  data\\q.txt\n")).is_err());
    }

    #[test]
    fn escaped_names_round_trip() {
        let hex = "b".repeat(64);
        for name in [
            &b"we\\ird.data"[..],
            b"new\nline.data",
            b"cr\r.data",
            b"plain.data",
        ] {
            let line = sidecar_line(&hex, name);
            assert_eq!(
                parse_sidecar(&line, &[name.to_vec()]),
                Ok(hex.clone()),
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
        assert_eq!(
            sidecar_line(&hex, b"we\\ird.data"),
            format!("\\{hex}  we\\\\ird.data\n").into_bytes()
        );
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
