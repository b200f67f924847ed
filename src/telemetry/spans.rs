//! The span export queue: bounded, lossy and off the request path, like the log writer.
//!
//! The SDK's batch processor also drops spans when its queue is full, but it counts
//! them only in a private field and says so once; an operator needs to see, as it
//! happens, that traces are being lost (a collector down or too slow). So the spans
//! of sampled requests go into a queue that a request never waits on, bounded in
//! spans (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048) and in bytes (`--trace-buffer`):
//! a count alone would let spans of large requests hold gigabytes. A span that does
//! not fit is dropped and counted in `kvserve_trace_spans_dropped_total` (and warned
//! about by the export thread, at most once a minute). Its text values are cut first
//! (`attributes`), so a span's size is mostly fixed. Queuing a span is a lock and a
//! push; the export thread is woken only when a batch is full (a channel woke it for
//! every span: a system call per sampled request, measured in BENCHMARKS.md). One
//! thread sends them in batches of up to `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512), at
//! least every `OTEL_BSP_SCHEDULE_DELAY` (5 s). A batch the collector did not take is
//! counted there too, and a warning is logged at most once a minute.

use std::fmt;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::trace::{Event, Link};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use super::attributes;

/// Spans lost on the way to the collector. Static because tracing starts before the
/// metrics registry exists; `Metrics::new` registers it.
pub static DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "kvserve_trace_spans_dropped_total",
        "Spans dropped: the export queue was full or the collector did not take them",
    )
    .unwrap_or_else(|_| unreachable!("the name and help are valid"))
});

/// At most one warning about lost spans in this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The queue's limits: spans, batch and delay from the standard `OTEL_BSP_*`
/// variables, bytes from `--trace-buffer` (no standard variable bounds bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub queue: usize,
    /// The most bytes queued spans may hold, by `approximate_size`.
    pub bytes: usize,
    pub batch: usize,
    pub delay: Duration,
}

impl Limits {
    /// The SDK's defaults, overridden by valid `OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and `OTEL_BSP_SCHEDULE_DELAY` (milliseconds);
    /// an invalid value keeps the default, as the SDK's own processor does. `bytes`
    /// is `--trace-buffer`.
    pub fn from_env(bytes: usize) -> Self {
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&v| v > 0)
        };
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE").map_or(2048, |v| v as usize);
        Limits {
            queue,
            bytes,
            batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
                .map_or(512, |v| v as usize)
                .min(queue),
            delay: number("OTEL_BSP_SCHEDULE_DELAY")
                .map_or(Duration::from_secs(5), Duration::from_millis),
        }
    }
}

/// What the request threads and the export thread share.
#[derive(Default)]
struct Shared {
    state: Mutex<Pending>,
    /// Rung when a batch is full, a flush is asked for, or the queue closes: not for
    /// every span, so a sampled request costs a lock and a push, no wake-up.
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    spans: Vec<SpanData>,
    /// What `spans` hold, by `approximate_size`.
    bytes: usize,
    /// Spans refused by a full queue since the export thread last looked: it warns
    /// of them, so a request never logs.
    refused: u64,
    /// Callers of `force_flush` waiting for what was queued before them to be sent.
    flushes: Vec<SyncSender<()>>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A `SpanProcessor` that queues the spans of sampled requests for one export thread.
pub struct QueuedExport<E> {
    exporter: Arc<Mutex<E>>,
    limits: Limits,
    shared: Arc<Shared>,
    /// Started with the first span (the SDK hands the processor its resource after
    /// construction, before any span); `None` inside if it could not be started.
    thread: OnceLock<Mutex<Option<JoinHandle<()>>>>,
}

impl<E> fmt::Debug for QueuedExport<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedExport")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<E: SpanExporter + 'static> QueuedExport<E> {
    pub fn new(exporter: E, limits: Limits) -> Self {
        QueuedExport {
            exporter: Arc::new(Mutex::new(exporter)),
            limits,
            shared: Arc::default(),
            thread: OnceLock::new(),
        }
    }

    /// Starts the export thread once; whether it runs.
    fn started(&self) -> bool {
        let thread = self.thread.get_or_init(|| {
            let (exporter, shared, limits) =
                (self.exporter.clone(), self.shared.clone(), self.limits);
            let thread = std::thread::Builder::new()
                .name("kvserve-spans".to_owned())
                .spawn(move || export_loop(&exporter, &shared, limits));
            Mutex::new(thread.ok())
        });
        thread.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl<E: SpanExporter + 'static> SpanProcessor for QueuedExport<E> {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, mut span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if !self.started() {
            DROPPED.inc();
            return;
        }
        attributes::limit_span(&mut span, attributes::value_limit());
        let size = approximate_size(&span);
        let mut pending = self.shared.lock();
        if pending.closed {
            DROPPED.inc();
            return;
        }
        if pending.spans.len() >= self.limits.queue
            || pending.bytes.saturating_add(size) > self.limits.bytes
        {
            DROPPED.inc();
            pending.refused += 1;
            return;
        }
        pending.bytes += size;
        pending.spans.push(span);
        let full = pending.spans.len() == self.limits.batch;
        drop(pending);
        if full {
            self.shared.ready.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.thread.get().is_none() {
            return Ok(());
        }
        let (done_tx, done) = mpsc::sync_channel(1);
        {
            let mut pending = self.shared.lock();
            if pending.closed {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            pending.flushes.push(done_tx);
        }
        self.shared.ready.notify_one();
        done.recv_timeout(Duration::from_secs(30))
            .map_err(|_| OTelSdkError::Timeout(Duration::from_secs(30)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        let taken = self
            .thread
            .get()
            .and_then(|thread| thread.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = taken {
            // The loop ends once it has sent what is queued.
            let deadline = Instant::now() + timeout;
            while !thread.is_finished() {
                if Instant::now() >= deadline {
                    return Err(OTelSdkError::Timeout(timeout));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = thread.join();
        }
        let result = self
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown_with_timeout(timeout);
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_resource(resource);
    }
}

/// The export thread: batches of up to `limits.batch` spans, sent when one is full,
/// when `limits.delay` has passed since the last send, on a flush, and at the end.
fn export_loop<E: SpanExporter>(exporter: &Mutex<E>, shared: &Shared, limits: Limits) {
    let mut last_warning: Option<Instant> = None;
    let mut last_full_warning: Option<Instant> = None;
    let mut due = Instant::now() + limits.delay;
    loop {
        let (spans, flushes, closed, refused) = {
            let pending = shared.lock();
            let wait = due.saturating_duration_since(Instant::now());
            let (mut pending, _) = shared
                .ready
                .wait_timeout_while(pending, wait, |p| {
                    p.spans.len() < limits.batch && p.flushes.is_empty() && !p.closed
                })
                .unwrap_or_else(|e| e.into_inner());
            let timed_out = Instant::now() >= due;
            let full = pending.spans.len() >= limits.batch;
            if !(full || timed_out || pending.closed || !pending.flushes.is_empty()) {
                continue;
            }
            pending.bytes = 0;
            (
                std::mem::take(&mut pending.spans),
                std::mem::take(&mut pending.flushes),
                pending.closed,
                std::mem::take(&mut pending.refused),
            )
        };
        if refused > 0 && last_full_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            last_full_warning = Some(Instant::now());
            tracing::warn!(
                spans = refused,
                max_spans = limits.queue,
                max_bytes = limits.bytes,
                "trace spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE spans or --trace-buffer bytes; counted in kvserve_trace_spans_dropped_total; this warning repeats at most once a minute)"
            );
        }
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            let mut batch: Vec<SpanData> = spans.by_ref().take(limits.batch).collect();
            send(exporter, &mut batch, &mut last_warning);
        }
        due = Instant::now() + limits.delay;
        for done in flushes {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

/// What a queued span holds, roughly: its fixed parts and each attribute's slot,
/// plus the text on the heap (names, keys, values). Close enough to bound the queue
/// in bytes: only text varies much between spans.
fn approximate_size(span: &SpanData) -> usize {
    fn values(attributes: &[KeyValue]) -> usize {
        attributes
            .iter()
            .map(|kv| {
                let value = match &kv.value {
                    Value::String(text) => text.as_str().len(),
                    Value::Array(Array::String(texts)) => texts
                        .iter()
                        .map(|t| size_of::<StringValue>() + t.as_str().len())
                        .sum(),
                    Value::Array(Array::Bool(list)) => list.len(),
                    Value::Array(Array::I64(list)) => list.len() * 8,
                    Value::Array(Array::F64(list)) => list.len() * 8,
                    _ => 0,
                };
                size_of::<KeyValue>() + kv.key.as_str().len() + value
            })
            .sum()
    }
    let events: usize = span
        .events
        .iter()
        .map(|e| size_of::<Event>() + e.name.len() + values(&e.attributes))
        .sum();
    let links: usize = span
        .links
        .iter()
        .map(|l| size_of::<Link>() + values(&l.attributes))
        .sum();
    size_of::<SpanData>() + span.name.len() + values(&span.attributes) + events + links
}

/// Sends `batch` (emptying it); a batch the collector did not take is counted as
/// dropped, with a warning at most every `WARN_EVERY`.
fn send<E: SpanExporter>(
    exporter: &Mutex<E>,
    batch: &mut Vec<SpanData>,
    last_warning: &mut Option<Instant>,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let count = spans.len() as u64;
    let exporter = exporter.lock().unwrap_or_else(|e| e.into_inner());
    // The OTLP exporter uses a blocking HTTP client, so its future is driven here,
    // on this thread, outside any async runtime.
    if let Err(err) = futures_executor::block_on(exporter.export(spans)) {
        DROPPED.inc_by(count);
        if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last_warning = Some(Instant::now());
            tracing::warn!(
                spans = count,
                error = %err,
                "trace spans dropped: the collector did not take them (counted in kvserve_trace_spans_dropped_total; this warning repeats at most once a minute)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::InstrumentationScope;
    use std::sync::mpsc::Receiver;
    use std::time::SystemTime;

    /// An exporter that holds every batch until the test lets it go, as a collector
    /// that has stopped answering would.
    #[derive(Debug)]
    struct Stalled(
        Mutex<Receiver<()>>,
        Arc<Mutex<usize>>,
        Mutex<mpsc::Sender<()>>,
    );

    impl SpanExporter for Stalled {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let _ = self.2.lock().unwrap_or_else(|e| e.into_inner()).send(());
            let _ = self.0.lock().unwrap_or_else(|e| e.into_inner()).recv();
            *self.1.lock().unwrap_or_else(|e| e.into_inner()) += batch.len();
            Ok(())
        }
    }

    /// The tests that count drops run one at a time: `DROPPED` is the process's.
    static COUNTING: Mutex<()> = Mutex::new(());

    fn span(flags: TraceFlags) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(1),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET /v1/keys/{key}".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    /// A full queue drops and counts, without waiting; what was queued is still sent;
    /// spans of unsampled requests never enter the queue.
    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let _counting = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        let (release, gate) = mpsc::channel();
        let (entered_tx, entered) = mpsc::channel();
        let exported = Arc::new(Mutex::new(0));
        let limits = Limits {
            queue: 2,
            bytes: usize::MAX,
            batch: 1,
            delay: Duration::from_secs(60),
        };
        let processor = QueuedExport::new(
            Stalled(Mutex::new(gate), exported.clone(), Mutex::new(entered_tx)),
            limits,
        );
        let before = DROPPED.get();
        for _ in 0..5 {
            processor.on_end(span(TraceFlags::NOT_SAMPLED));
        }
        assert_eq!(DROPPED.get(), before, "unsampled spans are not queued");
        // The first span is taken by the stalled export, two fill the queue, and the
        // other seven are dropped at once.
        processor.on_end(span(TraceFlags::SAMPLED));
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the export thread takes the first span");
        let started = Instant::now();
        for _ in 0..9 {
            processor.on_end(span(TraceFlags::SAMPLED));
        }
        assert!(started.elapsed() < Duration::from_secs(5), "on_end waited");
        assert_eq!(DROPPED.get() - before, 7);
        for _ in 0..10 {
            let _ = release.send(());
        }
        processor
            .shutdown_with_timeout(Duration::from_secs(10))
            .expect("shutdown");
        assert_eq!(*exported.lock().unwrap(), 3, "the queued spans are sent");
    }

    /// A span of a request with a 100 KiB `User-Agent`.
    fn large_span() -> SpanData {
        let mut span = span(TraceFlags::SAMPLED);
        span.attributes
            .push(KeyValue::new("user_agent.original", "u".repeat(100 << 10)));
        span
    }

    /// The queue is bounded in bytes too, below its count: with room for 100 spans
    /// but bytes for 3, 3 are queued and the rest dropped and counted at once. The
    /// bytes are counted after the values are cut to the attribute limit (uncut, not
    /// one span would fit).
    #[test]
    fn a_queue_full_in_bytes_drops_and_counts_without_waiting() {
        let _counting = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        let mut cut = large_span();
        attributes::limit_span(&mut cut, attributes::value_limit());
        assert_eq!(cut.attributes[0].value.as_str().len(), 1024);
        let (release, gate) = mpsc::channel();
        let (entered_tx, entered) = mpsc::channel();
        let exported = Arc::new(Mutex::new(0));
        let limits = Limits {
            queue: 100,
            bytes: 3 * approximate_size(&cut) + 10,
            batch: 1,
            delay: Duration::from_secs(60),
        };
        let processor = QueuedExport::new(
            Stalled(Mutex::new(gate), exported.clone(), Mutex::new(entered_tx)),
            limits,
        );
        let before = DROPPED.get();
        processor.on_end(large_span());
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the export thread takes the first span");
        let started = Instant::now();
        for _ in 0..9 {
            processor.on_end(large_span());
        }
        assert!(started.elapsed() < Duration::from_secs(5), "on_end waited");
        assert_eq!(DROPPED.get() - before, 6, "3 of 9 fit in the bytes");
        for _ in 0..10 {
            let _ = release.send(());
        }
        processor
            .shutdown_with_timeout(Duration::from_secs(10))
            .expect("shutdown");
        assert_eq!(*exported.lock().unwrap(), 4, "the queued spans are sent");
    }

    /// Text is what makes a span large: its size grows with its values.
    #[test]
    fn a_spans_size_counts_its_text() {
        let small = approximate_size(&span(TraceFlags::SAMPLED));
        assert!(small > size_of::<SpanData>());
        assert!(approximate_size(&large_span()) >= small + (100 << 10));
    }

    #[test]
    fn limits_come_from_the_standard_variables_or_the_defaults() {
        let limits = Limits::from_env(16 << 20);
        // The test process does not set them.
        assert_eq!(
            limits,
            Limits {
                queue: 2048,
                bytes: 16 << 20,
                batch: 512,
                delay: Duration::from_secs(5)
            }
        );
    }
}
