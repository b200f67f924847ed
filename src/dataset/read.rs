//! The read of a `--storage memory` load: the file's bytes straight into the buffer
//! that will serve them, by several threads at once, in huge pages where the kernel
//! allows.
//!
//! At 10M lines (727 MB) a single `read` spent about a second of one core copying
//! from the page cache and faulting in 4 KiB pages while the other core idled; the
//! read was the largest serial step of a start-up.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{pages, workers};

/// Below this one thread reads: spawning more costs more than it saves.
const PARALLEL_MIN_BYTES: usize = 8 << 20;

/// The buffer's base pointer, shared by the reading threads, each of which writes only
/// its own disjoint range.
struct Base(*mut u8);

// SAFETY: the threads write disjoint ranges of one allocation that outlives them
// (`std::thread::scope`), and nothing reads it until they have all been joined.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

impl Base {
    fn at(&self, offset: usize) -> *mut u8 {
        self.0.wrapping_add(offset)
    }
}

/// Reads the first `len` bytes of `file` into `buf` (empty, with room for at least
/// `len` bytes), cut in `threads` ranges read at once with `pread`. Returns whether
/// the file held all `len` bytes; if it ended sooner (it shrank while being read)
/// `buf` stays empty, and the caller's stat after the read says what changed.
pub fn read_parallel(
    file: &File,
    buf: &mut Vec<u8>,
    len: usize,
    threads: usize,
) -> std::io::Result<bool> {
    buf.clear();
    if buf.capacity() < len {
        buf.try_reserve_exact(len).map_err(std::io::Error::other)?;
    }
    pages::advise(buf.as_mut_ptr(), len);
    let pieces = if len < PARALLEL_MIN_BYTES {
        1
    } else {
        threads.max(1)
    };
    // Ranges on 2 MiB boundaries, so no huge page is faulted in by two threads.
    let step = len.div_ceil(pieces).next_multiple_of(2 << 20).max(1);
    let base = Base(buf.as_mut_ptr());
    let fd = file.as_raw_fd();
    let results: Vec<std::io::Result<bool>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..len.div_ceil(step))
            .map(|piece| {
                let base = &base;
                scope.spawn(move || {
                    let (mut at, end) = (piece * step, ((piece + 1) * step).min(len));
                    while at < end {
                        // SAFETY: `[at, end)` lies within `buf`'s capacity and no other
                        // thread touches it; pread writes at most `end - at` bytes.
                        let n = unsafe {
                            libc::pread(fd, base.at(at).cast(), end - at, at as libc::off_t)
                        };
                        match n {
                            0 => return Ok(false),
                            n if n > 0 => at += n as usize,
                            _ => {
                                let err = std::io::Error::last_os_error();
                                if err.kind() != std::io::ErrorKind::Interrupted {
                                    return Err(err);
                                }
                            }
                        }
                    }
                    Ok(true)
                })
            })
            .collect();
        workers::join_all(workers)
    });
    for result in results {
        if !result? {
            return Ok(false);
        }
    }
    // SAFETY: every byte of `[0, len)` was written by a completed pread above.
    unsafe { buf.set_len(len) };
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_every_byte_in_order_whatever_the_threads() {
        let mut file = tempfile::tempfile().unwrap();
        let text: Vec<u8> = (0..(9 << 20) + 12345u32).map(|n| (n % 251) as u8).collect();
        file.write_all(&text).unwrap();
        for threads in [1, 2, 3, 8] {
            let mut buf = Vec::with_capacity(text.len() + 1);
            assert!(read_parallel(&file, &mut buf, text.len(), threads).unwrap());
            assert!(buf == text, "{threads} threads");
        }
    }

    #[test]
    fn a_file_shorter_than_its_size_is_reported() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"short").unwrap();
        let mut buf = Vec::new();
        assert!(!read_parallel(&file, &mut buf, 100, 2).unwrap());
        assert!(buf.is_empty());
    }
}
