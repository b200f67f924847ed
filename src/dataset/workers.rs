//! Joining the loader's scoped worker threads. A worker that panicked is a bug, and the
//! caller should see that panic itself, with its message, rather than the generic "a
//! scoped thread panicked" that `std::thread::scope` raises for a thread nobody joined.

use std::thread::ScopedJoinHandle;

/// Every worker's result, in the order given; a worker's panic resumes in the caller.
pub fn join_all<T>(workers: Vec<ScopedJoinHandle<'_, T>>) -> Vec<T> {
    workers
        .into_iter()
        .map(|worker| {
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .collect()
}
