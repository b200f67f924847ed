//! `--storage mmap`: the data file mapped into memory instead of read into a buffer.
//!
//! The mapping owns the open file, so the shared `flock` taken before loading is held
//! for as long as any value cut from the mapping is alive. That is what keeps a
//! cooperative publisher from rewriting the file in place under us: publishers replace
//! the file by writing a new one and renaming it over the old (the old inode, still
//! mapped, stays intact). A file truncated in place by a process that ignores the lock
//! would make reads of the lost pages fault; that is inherent to mapping a file.
//!
//! Such a fault is a SIGBUS whose address lies in one of these mappings. The handler
//! recognises it through a registry of the live mappings and exits with a message
//! (status 75); every other SIGBUS (another mapping, a misaligned access, one sent by
//! `kill`) goes to the handler that was installed before, as if kvserve had none.
//!
//! A file truncated while it is being loaded (a reload included) also ends the process
//! with status 75, though the dataset in service is intact. Failing only that load
//! would need the loader to survive the fault: unwinding or `siglongjmp` out of a
//! signal handler through Rust frames is undefined behaviour, and patching the lost
//! pages with zeroes from the handler (`mmap` `MAP_FIXED`, not async-signal-safe by
//! POSIX) changes memory behind live `&[u8]` borrows. Neither is worth it for a
//! publisher that breaks the locking protocol; a restart loads the file as it is.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};

use bytes::Bytes;
use memmap2::{Advice, Mmap};

use super::error::LoadError;

pub struct MappedFile {
    /// Declared first so it drops first: the range leaves the registry before it is
    /// unmapped, so an address reused by a later mapping is never taken for ours.
    _registered: Option<Registered>,
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
        exit_cleanly_on_sigbus();
        // SAFETY: the mapping is read-only and the shared lock is held while it lives;
        // see the module comment for what a non-cooperating writer could still do.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Hints only: a failure costs speed, not correctness.
        let _ = map.advise(Advice::Sequential);
        let registered = Registered::new(map.as_ptr() as usize, map.len());
        if registered.is_none() && !map.is_empty() {
            tracing::warn!(
                path = %path.display(),
                slots = MAPPING_SLOTS,
                "too many live mappings to track; if this file is truncated in place, reading it ends the process with a bare \"Bus error\" instead of status 75"
            );
        }
        Ok(Arc::new(Self {
            _registered: registered,
            map,
            _file: file,
        }))
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

/// How many data-file mappings can be tracked at once. One per dataset alive: the
/// served one, one being loaded, and old ones that in-flight responses still hold.
pub const MAPPING_SLOTS: usize = 64;

/// One tracked mapping: `len` 0 means free. Claimed by setting `len`, published by
/// setting `start`; cleared in the opposite order.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

/// The registry the SIGBUS handler reads: fixed-size atomics, so reading it takes no
/// lock and no allocation (async-signal-safe).
static MAPPINGS: [Slot; MAPPING_SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    }
}; MAPPING_SLOTS];

/// A mapping's place in [`MAPPINGS`], freed on drop.
struct Registered(usize);

impl Registered {
    /// Tracks `[start, start + len)`; `None` if it is empty or every slot is taken.
    fn new(start: usize, len: usize) -> Option<Self> {
        if len == 0 || start == 0 {
            return None;
        }
        let index = MAPPINGS.iter().position(|slot| {
            slot.len
                .compare_exchange(0, len, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        MAPPINGS[index].start.store(start, Ordering::Release);
        Some(Self(index))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let slot = &MAPPINGS[self.0];
        slot.start.store(0, Ordering::Release);
        slot.len.store(0, Ordering::Release);
    }
}

/// Whether `addr` lies in a live mapping of a data file. Async-signal-safe.
fn in_data_mapping(addr: usize) -> bool {
    MAPPINGS.iter().any(|slot| {
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Acquire);
        start != 0 && addr.wrapping_sub(start) < len
    })
}

/// The exit status after a fault in the mapping: EX_TEMPFAIL, "try again": a restart
/// reads the file afresh.
pub const SIGBUS_EXIT_CODE: i32 = 75;

const SIGBUS_MESSAGE: &[u8] = b"kvserve: fatal: SIGBUS reading the memory-mapped data file \
(--storage mmap): the file was most likely truncated in place while mapped. Exiting with \
status 75; a restart loads the file as it is now. Publish new data files by renaming them \
over the old one, never by rewriting a file in place.\n";

/// The SIGBUS disposition found when ours was installed (std's stack-overflow handler,
/// usually), which every SIGBUS that is not ours is passed to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Installs the SIGBUS handler once per process, before the first file is mapped.
fn exit_cleanly_on_sigbus() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: `on_sigbus` only calls async-signal-safe functions (write, _exit,
        // sigaction, raise, the previous handler) and reads only atomics and
        // `PREVIOUS`, which is set before it is installed; the sigaction structs are
        // fully initialised (zeroed, then filled).
        unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                tracing::warn!("cannot read the SIGBUS disposition; not installing the handler, so a truncated data file would end the process with a bare \"Bus error\"");
                return;
            }
            let _ = PREVIOUS.set(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as libc::sighandler_t;
            // SA_ONSTACK: a fault on an overflowed stack must still reach std's handler.
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                tracing::warn!("cannot install the SIGBUS handler; a truncated data file would end the process with a bare \"Bus error\"");
            }
        }
    });
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: `info` comes from the kernel (SA_SIGINFO). A positive si_code means the
    // kernel raised it for a fault, and only then is si_addr the faulting address;
    // SI_USER, SI_QUEUE and SI_TKILL (kill, sigqueue, tgkill) are zero or negative.
    let ours = !info.is_null()
        && unsafe { (*info).si_code > 0 && in_data_mapping((*info).si_addr() as usize) };
    if ours {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, SIGBUS_MESSAGE.as_ptr().cast(), SIGBUS_MESSAGE.len());
            libc::_exit(SIGBUS_EXIT_CODE);
        }
    }
    // SAFETY: see `chain`.
    unsafe { chain(signal, info, context) }
}

/// Passes a SIGBUS that is not ours to the disposition found at install.
///
/// # Safety
/// Only from the SIGBUS handler, with the kernel's arguments.
unsafe fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: as `on_sigbus`.
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    let Some(previous) = PREVIOUS.get() else {
        // SAFETY: async-signal-safe calls only.
        return unsafe { die_of(signal) };
    };
    match previous.sa_sigaction {
        // A fault cannot be ignored: the kernel would kill us for it, so do the same.
        libc::SIG_DFL => unsafe { die_of(signal) },
        libc::SIG_IGN if !sent => unsafe { die_of(signal) },
        libc::SIG_IGN => {}
        handler => {
            // SAFETY: a handler installed with sigaction is one of these two shapes,
            // told apart by SA_SIGINFO, and expects to run inside a signal handler.
            unsafe {
                if previous.sa_flags & libc::SA_SIGINFO != 0 {
                    let handler: extern "C" fn(
                        libc::c_int,
                        *mut libc::siginfo_t,
                        *mut libc::c_void,
                    ) = std::mem::transmute(handler);
                    handler(signal, info, context);
                } else {
                    let handler: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    handler(signal);
                }
            }
            // A fault handler such as std's resets SIG_DFL and returns, counting on the
            // faulting instruction to fault again. A sent signal has no instruction to
            // repeat, so send it again if the disposition is now the default one.
            if sent {
                // SAFETY: sigaction and raise are async-signal-safe.
                unsafe {
                    let mut now: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(signal, std::ptr::null(), &mut now) == 0
                        && now.sa_sigaction == libc::SIG_DFL
                    {
                        libc::raise(signal);
                    }
                }
            }
        }
    }
}

/// Restores the default action and raises `signal` again: it is delivered (and ends
/// the process) as soon as the handler returns, the way an unhandled one would.
///
/// # Safety
/// Only from a signal handler for `signal`.
unsafe fn die_of(signal: libc::c_int) {
    // SAFETY: sigaction and raise are async-signal-safe; the struct is initialised.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut default.sa_mask);
        libc::sigaction(signal, &default, std::ptr::null_mut());
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_holds_a_mapping_exactly_while_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.data");
        std::fs::write(&path, vec![b'x'; 10_000]).unwrap();
        let mapped = MappedFile::map(File::open(&path).unwrap(), &path).unwrap();
        let (start, len) = (mapped.map.as_ptr() as usize, mapped.map.len());
        assert!(in_data_mapping(start));
        assert!(in_data_mapping(start + len - 1));
        assert!(!in_data_mapping(start + len));
        assert!(!in_data_mapping(start.wrapping_sub(1)));
        let elsewhere = Box::new(0u8);
        assert!(!in_data_mapping(&*elsewhere as *const u8 as usize));
        drop(mapped);

        // A range no other test's mapping can take: memory this test owns.
        let owned = [0u8; 64];
        let registered = Registered::new(owned.as_ptr() as usize, owned.len());
        assert!(registered.is_some());
        assert!(in_data_mapping(owned.as_ptr() as usize + 63));
        drop(registered);
        assert!(!in_data_mapping(owned.as_ptr() as usize));
    }
}
