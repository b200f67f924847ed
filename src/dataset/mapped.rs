//! `--storage mmap`: the data file mapped into memory instead of read into a buffer.
//!
//! The mapping owns the open file, so the shared `flock` taken before loading is held
//! for as long as any value cut from the mapping is alive. That is what keeps a
//! cooperative publisher from rewriting the file in place under us: publishers replace
//! the file by writing a new one and renaming it over the old (the old inode, still
//! mapped, stays intact). A file truncated in place by a process that ignores the lock
//! would make reads of the lost pages fault; that is inherent to mapping a file.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Once};

use bytes::Bytes;
use memmap2::{Advice, Mmap};

use super::LoadError;

pub struct MappedFile {
    map: Mmap,
    _file: File,
}

/// Lets `Bytes` own a shared mapping, so response bodies are zero-copy slices of it.
struct SharedMap(Arc<MappedFile>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

impl MappedFile {
    /// Maps `file` (already locked and stat-ed by the loader) for a sequential read.
    pub fn map(file: File, path: &Path) -> Result<Arc<Self>, LoadError> {
        // SAFETY: the mapping is read-only and the shared lock is held while it lives;
        // see the module comment for what a non-cooperating writer could still do.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Hints only: a failure costs speed, not correctness.
        let _ = map.advise(Advice::Sequential);
        exit_cleanly_on_sigbus();
        Ok(Arc::new(Self { map, _file: file }))
    }

    pub fn bytes(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(SharedMap(self.clone()))
    }

    /// The mapped file, for a later `fstat`.
    pub fn file(&self) -> &File {
        &self._file
    }

    /// After the load, lookups touch pages at random: stop reading ahead.
    pub fn expect_random_access(&self) {
        let _ = self.map.advise(Advice::Random);
    }
}

/// The exit status after a fault in the mapping: EX_TEMPFAIL, "try again": a restart
/// reads the file afresh.
pub const SIGBUS_EXIT_CODE: i32 = 75;

const SIGBUS_MESSAGE: &[u8] = b"kvserve: fatal: SIGBUS reading the memory-mapped data file \
(--storage mmap): the file was most likely truncated in place while mapped. Exiting with \
status 75; a restart loads the file as it is now. Publish new data files by renaming them \
over the old one, never by rewriting a file in place.\n";

/// Installs the SIGBUS handler once per process, when the first file is mapped.
fn exit_cleanly_on_sigbus() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: `on_sigbus` only calls async-signal-safe functions (write, _exit);
        // the sigaction struct is fully initialised (zeroed, then the handler set).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                tracing::warn!("cannot install the SIGBUS handler; a truncated data file would end the process with a bare \"Bus error\"");
            }
        }
    });
}

extern "C" fn on_sigbus(_signal: libc::c_int) {
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
    unsafe {
        libc::write(2, SIGBUS_MESSAGE.as_ptr().cast(), SIGBUS_MESSAGE.len());
        libc::_exit(SIGBUS_EXIT_CODE);
    }
}
