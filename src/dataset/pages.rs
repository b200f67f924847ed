//! Making the dataset's memory cheap to reach: transparent huge pages (the value buffer
//! is advised before it is filled, the index's tables are collapsed into huge pages
//! after the load) and cache-line prefetch hints for batch lookups.
//!
//! Why: a lookup is a few cache misses into hundreds of MiB spread over random pages,
//! and with 4 KiB pages each miss also misses the TLB; in a virtual machine the page
//! walk that follows costs as much as the miss itself. Measured at 10M keys, a probe
//! of the index took about half the time once its tables sat in 2 MiB pages
//! (BENCHMARKS.md).

/// The size of a transparent huge page on x86-64 and on aarch64 with 4 KiB pages.
const HUGE: usize = 2 << 20;

/// Asks for transparent huge pages over `[ptr, ptr + len)` (`madvise`), where the
/// system leaves that to the program: 2 MiB pages fault in 512 times less often, and
/// lookups later miss the TLB less. Only advice: an error changes nothing. Pages
/// already faulted in stay small: `collapse` is for memory that is already filled.
pub fn advise(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (ptr as usize).next_multiple_of(PAGE);
        let end = (ptr as usize).saturating_add(len);
        if end > start {
            // SAFETY: the range lies within one live allocation, and MADV_HUGEPAGE
            // changes how its pages are backed, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// What `collapse` did: 2 MiB ranges now in huge pages, and ranges the kernel refused
/// (one straddling two mappings, memory it could not find, a kernel before 6.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collapsed {
    pub huge_pages: usize,
    pub refused: usize,
}

/// Gaps up to this size between two allocations are taken into the run that holds
/// both (allocator headers and page rounding): the index's tables are each smaller
/// than a huge page, so only runs of neighbouring tables hold whole 2 MiB ranges.
const MAX_GAP: usize = 64 << 10;

/// Moves the memory of `allocations` (start, end) into huge pages, now, with
/// `MADV_COLLAPSE` (Linux 6.1): each whole 2 MiB range inside a run of allocations at
/// most `MAX_GAP` apart. The contents stay as they are, whoever else reads them
/// meanwhile; a gap's bytes belong to the same process's allocator. Slow (about a
/// second for 350 MiB on a small VM: the kernel copies every page), so callers run it
/// off the path to readiness.
pub fn collapse(mut allocations: Vec<(usize, usize)>) -> Collapsed {
    allocations.sort_unstable();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (start, end) in allocations {
        match runs.last_mut() {
            Some(run) if start <= run.1.saturating_add(MAX_GAP) => run.1 = run.1.max(end),
            _ => runs.push((start, end)),
        }
    }
    let mut done = Collapsed::default();
    for (start, end) in runs {
        let mut at = start.next_multiple_of(HUGE);
        while at.saturating_add(HUGE) <= end {
            if collapse_one(at) {
                done.huge_pages += 1;
            } else {
                done.refused += 1;
            }
            at += HUGE;
        }
    }
    done
}

#[cfg(target_os = "linux")]
fn collapse_one(at: usize) -> bool {
    // SAFETY: `at..at + HUGE` is mapped memory of this process (inside a run of live
    // allocations); MADV_HUGEPAGE and MADV_COLLAPSE change how its pages are backed,
    // never their contents, and the kernel refuses a range it cannot take.
    unsafe {
        libc::madvise(at as *mut libc::c_void, HUGE, libc::MADV_HUGEPAGE);
        libc::madvise(at as *mut libc::c_void, HUGE, libc::MADV_COLLAPSE) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn collapse_one(_at: usize) -> bool {
    false
}

/// A read hint for the cache line at `addr`; any address is allowed (a prefetch does
/// not fault). A no-op where there is no stable prefetch instruction.
#[inline(always)]
pub fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache; it reads nothing into the program
    // and never faults, whatever `addr` is.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collapsing filled memory keeps every byte, and at least one range becomes a
    /// huge page on a kernel that has `MADV_COLLAPSE`.
    #[test]
    fn collapse_keeps_the_contents() {
        let len = 8 * HUGE;
        let mut buf: Vec<u64> = (0..len as u64 / 8)
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .collect();
        let start = buf.as_mut_ptr() as usize;
        let done = collapse(vec![(start, start + len)]);
        assert!(done.huge_pages + done.refused >= 7, "{done:?}");
        #[cfg(target_os = "linux")]
        assert!(done.huge_pages >= 1, "{done:?}");
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u64).wrapping_mul(0x9e37_79b9)));
    }

    #[test]
    fn runs_take_small_gaps_only() {
        // Two allocations 4 KiB apart make one run holding a whole huge page; with a
        // gap wider than MAX_GAP neither holds one, so nothing is asked of the kernel.
        let base = 1 << 40;
        let near = collapse(vec![
            (base + HUGE + 8192, base + 2 * HUGE + 4096),
            (base + HUGE / 2, base + HUGE + 4096),
        ]);
        assert_eq!(near.huge_pages + near.refused, 1);
        let far = collapse(vec![
            (base, base + HUGE - 1),
            (base + HUGE + MAX_GAP + 1, base + 3 * HUGE - 1),
        ]);
        assert_eq!(far.huge_pages + far.refused, 0);
    }
}
