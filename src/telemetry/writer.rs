//! Log output off the request path. A request thread only appends its finished line
//! to a bounded in-memory buffer; one writer thread hands the buffer to stderr, many
//! lines in one write(2) when busy. Measured before (default flags, access log on): the
//! write(2) per access line was about a fifth of the access log's cost, and a stderr
//! that a collector reads slowly (or not at all) stalled every request that logged.
//!
//! Lossy by design: a line that does not fit in the buffer is dropped whole and
//! counted (`kvserve_log_lines_dropped_total`), never waited for. Lines are never cut
//! or interleaved: the fmt layers hand each event over in one `write_all`.

use std::io::{self, Write};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::IntCounter;

/// Default bound of the buffer: some 4,000 access lines, a fraction of a second at
/// full load, so a short stall of the reader loses nothing.
pub const DEFAULT_BUFFER: usize = 1 << 20;

/// While lines keep coming, the writer waits this long after each write so the next
/// one carries many lines, and no request has to wake it. When the buffer is found
/// empty it sleeps until a line arrives.
const BATCH_WINDOW: Duration = Duration::from_millis(1);

/// Log lines dropped because the buffer was full. Static because logging starts
/// before the metrics registry exists; `Metrics::new` registers it.
pub static DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "kvserve_log_lines_dropped_total",
        "Log lines dropped because the log output could not keep up",
    )
    .unwrap_or_else(|_| unreachable!("the name and help are valid"))
});

struct Pending {
    lines: Vec<u8>,
    /// The writer waits for a notification (found nothing to write last time).
    asleep: bool,
    /// Shut down: the writer writes what is left and ends; later lines go to stderr
    /// directly.
    closed: bool,
}

/// The shared end of the non-blocking writer.
pub struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves plain bytes behind: keep going.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one whole line, or drops and counts it if it does not fit.
    fn push(&self, line: &[u8]) -> io::Result<()> {
        let mut pending = self.lock();
        if pending.closed {
            drop(pending);
            return io::stderr().write_all(line);
        }
        if pending.lines.len() + line.len() > self.limit {
            drop(pending);
            DROPPED.inc();
            return Ok(());
        }
        pending.lines.extend_from_slice(line);
        if pending.asleep {
            pending.asleep = false;
            drop(pending);
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// The writer the fmt layers use: `Copy`, no allocation and no syscall per line.
#[derive(Clone, Copy)]
pub struct NonBlocking(&'static Shared);

impl NonBlocking {
    /// Queues one whole line (dropped and counted if it does not fit).
    pub(super) fn push_line(&self, line: &[u8]) -> io::Result<()> {
        self.0.push(line)
    }
}

impl io::Write for NonBlocking {
    /// Takes `line` whole: a partial write would cut the line.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line)?;
        Ok(line.len())
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        self.0.push(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        *self
    }
}

/// Owns the writer thread; [`Writer::close`] writes what is buffered and stops it.
pub struct Writer {
    shared: &'static Shared,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread over `out`, with a buffer of at most `limit` bytes.
    /// The shared state lives as long as the process (one per process in practice):
    /// the global subscriber keeps writing to it after the guard is gone.
    pub fn start(limit: usize, out: impl Write + Send + 'static) -> io::Result<Self> {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            pending: Mutex::new(Pending {
                lines: Vec::with_capacity(limit.min(64 * 1024)),
                asleep: false,
                closed: false,
            }),
            wake: Condvar::new(),
            limit,
        }));
        let thread = std::thread::Builder::new()
            .name("kvserve-log".into())
            .spawn(move || run(shared, out))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> NonBlocking {
        NonBlocking(self.shared)
    }

    /// Writes every line buffered so far and stops the thread; lines logged after
    /// this go to stderr directly, synchronously.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: takes the whole buffer at once (swapping in the spare one, so
/// request threads append while it writes) and writes it in one call.
fn run(shared: &'static Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() && !pending.closed {
            pending.asleep = true;
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        pending.asleep = false;
        std::mem::swap(&mut pending.lines, &mut batch);
        let closed = pending.closed;
        drop(pending);
        // Nothing to tell anyone if stderr fails: the lines are lost either way.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        if closed {
            // Lines pushed between the swap and now went to stderr directly, but
            // any pushed before `closed` was set are in `batch` already.
            return;
        }
        std::thread::sleep(BATCH_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_and_close_flushes_them() {
        let sink = Sink::default();
        let mut writer = Writer::start(1 << 20, sink.clone()).unwrap();
        let mut handle = writer.handle();
        for n in 0..1000 {
            handle.write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
        writer.close();
        let writes = sink.0.lock().unwrap();
        let all: Vec<u8> = writes.concat();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
        assert!(writes.len() < 1000, "batched: {} writes", writes.len());
    }

    #[test]
    fn a_full_buffer_drops_whole_lines_and_counts_them() {
        /// Blocks every write until the test lets it go.
        struct Stuck(Arc<Mutex<()>>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let _gate = self.0.lock().unwrap();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let mut writer = Writer::start(100, Stuck(gate.clone())).unwrap();
        let mut handle = writer.handle();
        let before = DROPPED.get();
        // The writer takes at most one batch and blocks on it; then 100 bytes fit.
        for _ in 0..50 {
            handle.write_all(&[b'x'; 30]).unwrap();
        }
        assert!(DROPPED.get() - before >= 50 - 3 - 3 - 1);
        drop(held);
        writer.close();
    }
}
