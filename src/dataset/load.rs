//! The parallel loader: read the file once, check it, then let several threads parse
//! line-aligned chunks and insert into one shared `DashMap` index.
//!
//! Errors are reported in file order whatever the thread timing: every thread records
//! the earliest error it sees (by byte offset) and a shared minimum tells the others
//! when nothing they could still find would come first.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use dashmap::SharedValue;

use super::error::LoadError;
use super::format::{self, LineError, KEY_LEN};
use super::index::MAX_FILE_LEN;
use super::index::{self, Index, Key, ValueAt};
use super::integrity::{self, FileStamp};
use super::mapped::MappedFile;
use super::memory;
use super::options::{LoadOptions, OnDuplicate, Storage, MAX_VALUE_LEN};
use super::read;
use super::store::{Dataset, DatasetInfo};
use super::workers;

/// Files at least this big get progress logs; smaller ones load in well under a second.
const PROGRESS_MIN_BYTES: usize = 64 << 20;
/// Below this a single thread is faster than spawning several.
const PARALLEL_MIN_BYTES: usize = 1 << 20;
/// Chunks per thread: more chunks than threads evens out chunks of uneven cost.
const CHUNKS_PER_THREAD: usize = 8;
/// How many skipped lines are logged one by one before only the count is reported.
const SKIPPED_SAMPLES: usize = 10;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `--load-threads`, 0 meaning one per available core.
fn load_threads(opts: &LoadOptions) -> usize {
    match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Loads and checks a data file (docs/ARCHITECTURE.md section 1). Either the whole file is valid
/// and a `Dataset` is returned, or nothing is: there is no partially loaded state.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset, LoadError> {
    load_split(path, opts, None)
}

/// `load`, but the file is cut into line-aligned chunks of about `chunk_bytes` bytes
/// (0 counts as 1, which makes every line its own chunk) and parsed by `opts.threads`
/// threads whatever its size.
///
/// For the property tests and fuzz targets only: the files they generate are far
/// below `PARALLEL_MIN_BYTES`, so `load` would parse them as one chunk on one thread
/// and never exercise chunk seams, error ordering across chunks or duplicates found in
/// different chunks.
#[doc(hidden)]
pub fn load_with_chunk_bytes(
    path: &Path,
    opts: &LoadOptions,
    chunk_bytes: usize,
) -> Result<Dataset, LoadError> {
    load_split(path, opts, Some(chunk_bytes.max(1)))
}

fn load_split(
    path: &Path,
    opts: &LoadOptions,
    chunk_bytes: Option<usize>,
) -> Result<Dataset, LoadError> {
    let started = Instant::now();
    let span = tracing::info_span!("load", path = %path.display());
    let _enter = span.enter();

    let confine_to = opts.confine_to.as_deref();
    let file = integrity::open_regular(path, confine_to)
        .map_err(|refusal| refusal.into_load_error(path, confine_to))?;
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    integrity::lock_shared(&file, path, opts.lock_timeout)?;
    let before = FileStamp::of(&file.metadata().map_err(read_err)?);
    // Offsets run below the length, so a file of exactly `MAX_FILE_LEN` bytes fits.
    if before.len > MAX_FILE_LEN {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            len: before.len,
        });
    }
    // Memory storage reads the file and releases it (and its lock) at once; mmap
    // storage keeps it mapped, checks for changes after parsing, and holds the lock.
    let (buf, mapped) = match opts.storage {
        Storage::Memory => {
            let mut buf = allocate(path, before.len, opts.max_memory)?;
            // `allocate` checked that the length fits in `usize`.
            let len = usize::try_from(before.len).unwrap_or(usize::MAX);
            let complete =
                read::read_parallel(&file, &mut buf, len, load_threads(opts)).map_err(read_err)?;
            integrity::check_unchanged(&file, path, &before)?;
            if !complete {
                // Shorter than its size, yet the stamp did not move: refuse rather than
                // serve a partial file.
                return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            drop(file);
            (Bytes::from(buf), None)
        }
        Storage::Mmap => {
            let probe = file.try_clone().map_err(read_err)?;
            let mapped = MappedFile::map(file, path)?;
            (mapped.bytes(), Some((mapped, probe)))
        }
    };

    let read_done = Instant::now();
    let sha256 = match integrity::expected_sha256(path, opts.sha256.as_deref(), confine_to)? {
        Some((expected, source)) => {
            let actual = integrity::sha256_hex(&buf);
            if actual != expected {
                return Err(LoadError::ChecksumMismatch {
                    path: path.to_path_buf(),
                    expected,
                    actual,
                    source_desc: source.to_string(),
                });
            }
            Some(actual)
        }
        None => None,
    };
    let file_hash = xxhash_rust::xxh3::xxh3_128(&buf);
    let version = format!("{file_hash:032x}");

    let hashed = Instant::now();
    check_index_fits(path, &buf, opts)?;
    let parsed = parse(&buf, path, opts, chunk_bytes)?;
    let parse_done = Instant::now();
    let mapped = match mapped {
        Some((mapped, probe)) => {
            integrity::check_unchanged(&probe, path, &before)?;
            mapped.expect_random_access();
            Some((mapped, before))
        }
        None => None,
    };
    if parsed.index.is_empty() && !opts.allow_empty {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let info = DatasetInfo {
        path: path.to_path_buf(),
        bytes: buf.len() as u64,
        keys: parsed.index.len() as u64,
        etag: served_etag(file_hash, opts, &parsed),
        version,
        sha256,
        loaded_at: SystemTime::now(),
        load_seconds: started.elapsed().as_secs_f64(),
        skipped_lines: parsed.skipped,
        duplicate_lines: parsed.duplicates,
        key_prefixes: opts.key_prefixes.to_string(),
        foreign_lines: parsed.foreign,
        generation: 0,
    };
    // Where the time went, for profiling loads of big files (`--log-level kvserve=debug`).
    tracing::debug!(
        open_and_read = ?(read_done - started),
        checksums = ?(hashed - read_done),
        parse = ?parsed.parse_time,
        index = ?(parse_done - hashed).saturating_sub(parsed.parse_time),
        "load phases"
    );
    tracing::info!(
        keys = info.keys,
        bytes = info.bytes,
        skipped_lines = info.skipped_lines,
        duplicate_lines = info.duplicate_lines,
        version = %info.version,
        seconds = info.load_seconds,
        "data file loaded"
    );
    let etag = Bytes::copy_from_slice(info.etag.as_bytes());
    Ok(Dataset {
        bytes: buf,
        index: index::Frozen::new(parsed.index),
        etag,
        info,
        mapped,
    })
}

/// The quoted `ETag` of every value of a load: 64 bits of the file's hash, folded with
/// the load options that decided which of its lines are served, so two instances that
/// serve different values from one file never share an ETag (one would answer 304 to
/// the other's copy).
///
/// An option is folded in only when it changed something in this load: `--on-duplicate`
/// when a key was on two lines, and `--max-line-bytes` (with `--skip-invalid`) when it
/// skipped a record, a line that would have been served under a higher limit. The
/// limit itself is not folded in but the number of records it skipped: the records
/// over a limit shrink as the limit grows, so for one file that number names exactly
/// which records were left out, and two limits that leave out the same ones (say 100
/// and 120 bytes when no line is in between) serve the same values under one ETag.
/// Lines skipped for another reason are skipped whatever the options say. Otherwise
/// every line was served as written, so the ETag stays the file's and instances whose
/// options differ only where this file does not care keep answering 304 to each other.
/// `--key-prefixes` is never folded in: it decides which keys are answered 421, not
/// any value, and a 421 has no ETag.
fn served_etag(file_hash: u128, opts: &LoadOptions, parsed: &Parsed) -> String {
    let duplicates = (parsed.duplicates > 0).then_some(opts.on_duplicate);
    let too_long = (parsed.skipped_records > 0).then_some(parsed.skipped_records);
    if duplicates.is_none() && too_long.is_none() {
        return format!("\"{:016x}\"", file_hash >> 64);
    }
    let folded =
        format!("{file_hash:032x} on-duplicate={duplicates:?} records-too-long={too_long:?}");
    format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(folded.as_bytes()))
}

/// The buffer a `--storage memory` load reads the file into, checked against the
/// memory bound first and allocated fallibly, so that a file too large for memory is a
/// `LoadError` (a failed reload, a clear start-up error), never an abort.
fn allocate(path: &Path, len: u64, max_memory: Option<u64>) -> Result<Vec<u8>, LoadError> {
    // One byte more than the file, so `read_to_end` sees the end without growing.
    let want = len.saturating_add(1);
    if let Some(budget) = memory::budget(max_memory) {
        if len > budget.bytes {
            return Err(LoadError::TooLargeForMemory {
                path: path.to_path_buf(),
                len,
                limit: budget.bytes,
                budget: budget.source,
            });
        }
    }
    let mut buf = Vec::new();
    // Past `usize` (32-bit targets) the reservation fails with a capacity overflow.
    buf.try_reserve_exact(usize::try_from(want).unwrap_or(usize::MAX))
        .map_err(|source| LoadError::OutOfMemory {
            path: path.to_path_buf(),
            len,
            source,
        })?;
    Ok(buf)
}

/// Memory one line costs at the peak of a load: about 40 bytes in the index, plus the
/// 21-byte record waiting in a per-chunk list until it is indexed.
const LOAD_BYTES_PER_LINE: u64 = 64;

/// Refuses a file whose index would not fit, before it is allocated (an index
/// allocation that fails aborts the process). The line count is estimated from the
/// first MiB, as the index's capacity is. The bound is `--max-memory` (less the file's
/// bytes with memory storage, which already hold them) or what is available now.
fn check_index_fits(path: &Path, bytes: &[u8], opts: &LoadOptions) -> Result<(), LoadError> {
    let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let lines = estimate_lines(body) as u64;
    let need = lines.saturating_mul(LOAD_BYTES_PER_LINE);
    let max_memory = opts.max_memory.map(|max| match opts.storage {
        Storage::Memory => max.saturating_sub(bytes.len() as u64),
        Storage::Mmap => max,
    });
    let budget = memory::budget(max_memory).map(|mut budget| {
        if opts.max_memory.is_some() && opts.storage == Storage::Memory {
            budget.source = "--max-memory leaves after the file's bytes".to_owned();
        }
        budget
    });
    match budget {
        Some(budget) if need > budget.bytes => Err(LoadError::IndexTooLargeForMemory {
            path: path.to_path_buf(),
            lines,
            need,
            limit: budget.bytes,
            budget: budget.source,
        }),
        _ => Ok(()),
    }
}

struct Parsed {
    index: Index,
    /// Phase 1 (parsing into per-shard lists); the rest of `parse` is indexing.
    parse_time: Duration,
    skipped: u64,
    /// Skipped lines that are records this instance would serve but for
    /// `--max-line-bytes` (see `served_etag`).
    skipped_records: u64,
    duplicates: u64,
    foreign: u64,
}

/// What went wrong at one byte offset; turned into a `LoadError` once the earliest
/// one is known, because only then is it worth counting lines for the line number.
#[derive(Debug, Clone)]
enum Failure {
    Line(LineError),
    Duplicate { first_offset: usize, key: u128 },
}

#[derive(Default)]
struct ChunkResult {
    /// Which chunk this is: results are merged in file order.
    chunk: usize,
    /// The chunk's records, one list per index shard, in file order.
    records: Vec<Vec<(Key, ValueAt)>>,
    /// Line start offset and what was wrong with that line.
    first_error: Option<(usize, Failure)>,
    skipped: u64,
    /// Of `skipped`, the records left out by `--max-line-bytes` alone.
    skipped_records: u64,
    skipped_samples: Vec<(usize, LineError)>,
    duplicates: u64,
    /// Valid records of keys another shard owns (`--key-prefixes`).
    foreign: u64,
}

impl ChunkResult {
    fn record_error(&mut self, offset: usize, failure: Failure, shared: &Shared<'_>) {
        if self.first_error.as_ref().is_none_or(|(at, _)| offset < *at) {
            self.first_error = Some((offset, failure));
        }
        shared.earliest_error.fetch_min(offset, Ordering::Relaxed);
    }
}

/// State every parser thread sees.
struct Shared<'a> {
    bytes: &'a [u8],
    index: &'a Index,
    opts: &'a LoadOptions,
    /// Offset of the earliest error found so far by any thread (`usize::MAX`: none).
    earliest_error: AtomicUsize,
    bytes_done: AtomicU64,
    lines_done: AtomicU64,
}

/// `chunk_bytes` is `load_with_chunk_bytes`'s forced chunk size; `None` in production.
fn parse(
    bytes: &[u8],
    path: &Path,
    opts: &LoadOptions,
    chunk_bytes: Option<usize>,
) -> Result<Parsed, LoadError> {
    let body_start = if bytes.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    let threads = load_threads(opts);
    let (threads, step) = match chunk_bytes {
        Some(step) => (threads, step),
        None => {
            let threads = if bytes.len() < PARALLEL_MIN_BYTES {
                1
            } else {
                threads
            };
            let pieces = threads * CHUNKS_PER_THREAD;
            (threads, (bytes.len() - body_start) / pieces)
        }
    };
    let chunks = split_lines(bytes, body_start, step);
    let index = index::new_index(estimate_lines(&bytes[body_start..]));
    let shared = Shared {
        bytes,
        index: &index,
        opts,
        earliest_error: AtomicUsize::new(usize::MAX),
        bytes_done: AtomicU64::new(0),
        lines_done: AtomicU64::new(0),
    };
    let next_chunk = AtomicUsize::new(0);
    let started = Instant::now();
    // Woken by each worker as it ends, so the progress loop notices the last one at
    // once instead of at its next 50 ms tick.
    let this_thread = std::thread::current();
    let finished = AtomicUsize::new(0);

    // Phase 1: parse chunks in parallel into per-shard lists. No locks, and memory is
    // read and written sequentially.
    let mut results: Vec<ChunkResult> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut results = Vec::new();
                    loop {
                        let i = next_chunk.fetch_add(1, Ordering::Relaxed);
                        let Some(&(start, end)) = chunks.get(i) else {
                            break;
                        };
                        let mut result = parse_chunk(&shared, start, end);
                        result.chunk = i;
                        results.push(result);
                    }
                    finished.fetch_add(1, Ordering::Release);
                    this_thread.unpark();
                    results
                })
            })
            .collect();
        if bytes.len() >= PROGRESS_MIN_BYTES {
            report_progress(&shared, || finished.load(Ordering::Acquire) == threads);
        }
        workers::join_all(workers).into_iter().flatten().collect()
    });
    results.sort_by_key(|result| result.chunk);
    let parse_time = started.elapsed();

    // Phase 2: each thread fills whole shards. One shard's table is a small part of
    // the index, so inserts hit the CPU cache instead of missing on every key, and no
    // two threads ever want the same shard lock.
    let shard_results = index_shards(&shared, &results, threads);

    let mut skipped = 0;
    let mut skipped_records = 0;
    let mut duplicates = 0;
    let mut foreign = 0;
    let mut first_error: Option<(usize, Failure)> = None;
    let mut samples = Vec::new();
    let mut consider = |error: Option<(usize, Failure)>| {
        if let Some((at, failure)) = error {
            if first_error.as_ref().is_none_or(|(best, _)| at < *best) {
                first_error = Some((at, failure));
            }
        }
    };
    for result in results {
        skipped += result.skipped;
        skipped_records += result.skipped_records;
        foreign += result.foreign;
        samples.extend(result.skipped_samples);
        consider(result.first_error);
    }
    for result in shard_results {
        duplicates += result.duplicates;
        consider(result.first_error);
    }
    if let Some((offset, failure)) = first_error {
        return Err(to_load_error(bytes, path, offset, failure));
    }
    log_skipped(bytes, path, samples, skipped);
    if foreign > 0 {
        // The tables were sized for every line of the file; a shard reading a file it
        // shares with other shards keeps only its keys. Re-fitting costs one rehash of
        // the owned entries and gives back the rest (half the index for a 2-way split).
        index.shrink_to_fit();
    }
    Ok(Parsed {
        index,
        parse_time,
        skipped,
        skipped_records,
        duplicates,
        foreign,
    })
}

/// Inserts every chunk's records into the index, shard by shard, on `threads` threads.
///
/// A thread takes a shard's write lock once and inserts all of its records into the
/// shard's table directly, instead of one `entry` call (a lock, an unlock and a second
/// hash of the key's shard) per record: nobody else can want the lock while the index
/// is being built, and at 10M keys the per-record locking was a tenth of the load.
fn index_shards(shared: &Shared<'_>, chunks: &[ChunkResult], threads: usize) -> Vec<ChunkResult> {
    let shard_count = shared.index.shards().len();
    let next_shard = AtomicUsize::new(0);
    let hasher = shared.index.hasher();
    // The hash `DashMap` itself uses for a key (its shard and its table slot).
    let hash = |key: &Key| hasher.hash_one(key);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut result = ChunkResult::default();
                    loop {
                        let shard = next_shard.fetch_add(1, Ordering::Relaxed);
                        if shard >= shard_count {
                            break;
                        }
                        let records = chunks
                            .iter()
                            .flat_map(|chunk| chunk.records.get(shard).into_iter().flatten());
                        let mut table = shared.index.shards()[shard].write();
                        for &(key, at) in records {
                            let h = hash(&key);
                            match table.get_mut(h, |(k, _)| *k == key) {
                                Some((_, existing)) => {
                                    duplicate(shared, &mut result, key, existing.get_mut(), at)
                                }
                                None => {
                                    table.insert(h, (key, SharedValue::new(at)), |(k, _)| hash(k));
                                }
                            }
                        }
                    }
                    result
                })
            })
            .collect();
        workers::join_all(workers)
    })
}

/// Parses the lines in `bytes[start..end]` (both line boundaries).
fn parse_chunk(shared: &Shared<'_>, start: usize, end: usize) -> ChunkResult {
    let bytes = shared.bytes;
    let opts = shared.opts;
    let mut result = ChunkResult::default();
    let mut bad_utf8_at = first_invalid_utf8(bytes, start, end);
    let mut line_start = start;
    let mut lines_since_report = 0u64;
    let mut reported_at = start;
    // One iterator over the chunk's line feeds: a `memchr` call per line would pay the
    // search set-up once per 70-byte line.
    let mut line_feeds = memchr::memchr_iter(b'\n', &bytes[start..end]).map(|n| start + n);

    while line_start < end {
        if line_start > shared.earliest_error.load(Ordering::Relaxed) {
            break; // an earlier error exists; nothing found here could be reported
        }
        let line_end = line_feeds.next().unwrap_or(end);
        let next = (line_end + 1).min(end);
        let line = &bytes[line_start..line_end];

        let parsed = if line_end > bad_utf8_at {
            bad_utf8_at = first_invalid_utf8(bytes, next, end);
            Err(LineError::InvalidUtf8)
        } else {
            format::parse_line(line, opts.max_line_bytes.min(MAX_VALUE_LEN))
        };
        match parsed {
            Ok(None) => {}
            Ok(Some(record)) if !opts.key_prefixes.owns(record.key) => result.foreign += 1,
            Ok(Some(record)) => {
                let key = Key::new(record.key);
                let shard = shared.index.determine_map(&key);
                if result.records.is_empty() {
                    result.records = vec![Vec::new(); shared.index.shards().len()];
                }
                result.records[shard].push((key, ValueAt::new(line_start + record.value_start)));
            }
            Err(err) if opts.skip_invalid => {
                result.skipped += 1;
                if matches!(err, LineError::TooLong { .. }) && would_serve(line, opts) {
                    result.skipped_records += 1;
                }
                if result.skipped_samples.len() < SKIPPED_SAMPLES {
                    result.skipped_samples.push((line_start, err));
                }
            }
            Err(err) => {
                result.record_error(line_start, Failure::Line(err), shared);
                break;
            }
        }

        lines_since_report += 1;
        if next - reported_at >= 1 << 20 {
            shared
                .bytes_done
                .fetch_add((next - reported_at) as u64, Ordering::Relaxed);
            shared
                .lines_done
                .fetch_add(lines_since_report, Ordering::Relaxed);
            reported_at = next;
            lines_since_report = 0;
        }
        line_start = next;
    }
    shared.bytes_done.fetch_add(
        (line_start.max(reported_at) - reported_at) as u64,
        Ordering::Relaxed,
    );
    shared
        .lines_done
        .fetch_add(lines_since_report, Ordering::Relaxed);
    result
}

/// Whether a line refused as too long is a record this instance would otherwise serve.
/// Only asked of skipped long lines, so the second parse costs nothing on good files.
fn would_serve(line: &[u8], opts: &LoadOptions) -> bool {
    matches!(format::parse_line(line, usize::MAX), Ok(Some(record)) if opts.key_prefixes.owns(record.key))
}

/// A second line for `key`, whose value starts at `loc`: keeps the value
/// `--on-duplicate` says in `slot`, or records the error.
fn duplicate(
    shared: &Shared<'_>,
    result: &mut ChunkResult,
    key: Key,
    slot: &mut ValueAt,
    loc: ValueAt,
) {
    let existing = *slot;
    let (earlier, later) = if existing < loc {
        (existing, loc)
    } else {
        (loc, existing)
    };
    match shared.opts.on_duplicate {
        OnDuplicate::Error => {
            result.record_error(
                later.offset() - KEY_LEN - 1,
                Failure::Duplicate {
                    first_offset: earlier.offset() - KEY_LEN - 1,
                    key: key.get(),
                },
                shared,
            );
        }
        OnDuplicate::First => *slot = earlier,
        OnDuplicate::Last => *slot = later,
    }
    result.duplicates += 1;
}

/// Offset of the first byte of `bytes[from..end]` that is not valid UTF-8, or `usize::MAX`.
///
/// `simdutf8` checks valid text several times faster than `std`; only when it finds a
/// problem does `std` run again to say where.
fn first_invalid_utf8(bytes: &[u8], from: usize, end: usize) -> usize {
    let chunk = &bytes[from..end];
    if simdutf8::basic::from_utf8(chunk).is_ok() {
        return usize::MAX;
    }
    match std::str::from_utf8(chunk) {
        Ok(_) => usize::MAX,
        Err(err) => from + err.valid_up_to(),
    }
}

/// Splits `bytes[start..]` into ranges of about `step` bytes (at least one line each)
/// that each begin at a line start.
fn split_lines(bytes: &[u8], start: usize, step: usize) -> Vec<(usize, usize)> {
    let len = bytes.len();
    let step = step.max(1);
    let mut ranges = Vec::new();
    let mut from = start;
    while from < len {
        let nominal = from.saturating_add(step).min(len);
        let to = match memchr::memchr(b'\n', &bytes[nominal.saturating_sub(1).max(from)..]) {
            Some(n) => nominal.saturating_sub(1).max(from) + n + 1,
            None => len,
        };
        ranges.push((from, to));
        from = to;
    }
    ranges
}

/// Guesses the number of lines from the first 1 MiB so the index is allocated once
/// instead of doubling (and rehashing) its way up.
fn estimate_lines(body: &[u8]) -> usize {
    let sample = &body[..body.len().min(1 << 20)];
    let lines = memchr::memchr_iter(b'\n', sample).count().max(1);
    let estimate = body.len() as u128 * lines as u128 / sample.len().max(1) as u128;
    (estimate as usize).saturating_add(estimate as usize / 20)
}

/// 1-based number of the line that contains `offset`.
fn line_number(bytes: &[u8], offset: usize) -> u64 {
    memchr::memchr_iter(b'\n', &bytes[..offset]).count() as u64 + 1
}

fn line_at(bytes: &[u8], offset: usize) -> &[u8] {
    let end = memchr::memchr(b'\n', &bytes[offset..]).map_or(bytes.len(), |n| offset + n);
    &bytes[offset..end]
}

fn to_load_error(bytes: &[u8], path: &Path, offset: usize, failure: Failure) -> LoadError {
    match failure {
        Failure::Line(reason) => LoadError::Malformed {
            path: path.to_path_buf(),
            line: line_number(bytes, offset),
            reason,
            excerpt: format::excerpt(line_at(bytes, offset), 60),
        },
        Failure::Duplicate { first_offset, key } => LoadError::Duplicate {
            path: path.to_path_buf(),
            line: line_number(bytes, offset),
            first_line: line_number(bytes, first_offset),
            key: uuid::Uuid::from_u128(key),
        },
    }
}

fn log_skipped(bytes: &[u8], path: &Path, mut samples: Vec<(usize, LineError)>, total: u64) {
    if total == 0 {
        return;
    }
    samples.sort_by_key(|(offset, _)| *offset);
    for (offset, reason) in samples.into_iter().take(SKIPPED_SAMPLES) {
        tracing::warn!(
            file = %path.display(),
            line = line_number(bytes, offset),
            %reason,
            excerpt = %format::excerpt(line_at(bytes, offset), 60),
            "skipped invalid line (--skip-invalid)"
        );
    }
    tracing::warn!(file = %path.display(), skipped_lines = total, "skipped invalid lines");
}

/// Logs at every 10 % of the file, with the parse rate, until `done()` says so.
fn report_progress(shared: &Shared<'_>, done: impl Fn() -> bool) {
    let total = shared.bytes.len() as u64;
    let started = Instant::now();
    let mut next_tenth = 1;
    while !done() {
        std::thread::park_timeout(Duration::from_millis(50));
        let bytes = shared.bytes_done.load(Ordering::Relaxed);
        let tenth = bytes * 10 / total.max(1);
        if tenth >= next_tenth && tenth < 10 {
            let lines = shared.lines_done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                percent = tenth * 10,
                lines,
                lines_per_second = (lines as f64 / secs) as u64,
                "loading data file"
            );
            next_tenth = tenth + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_at_line_starts_and_cover_everything() {
        let text = b"aaa\nbb\n\nccccc\nd";
        for step in 0..=text.len() + 1 {
            let ranges = split_lines(text, 0, step);
            assert_eq!(ranges.first().unwrap().0, 0);
            assert_eq!(ranges.last().unwrap().1, text.len());
            for w in ranges.windows(2) {
                assert_eq!(w[0].1, w[1].0);
                assert_eq!(text[w[1].0 - 1], b'\n');
            }
        }
        // The smallest step makes every line its own chunk.
        assert_eq!(split_lines(text, 0, 1).len(), 5);
        assert_eq!(split_lines(text, 0, text.len()), vec![(0, text.len())]);
    }

    #[test]
    fn a_shard_sizes_its_index_for_its_own_keys() {
        let dir = std::env::temp_dir().join(format!("kvserve-shard-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("all.data");
        let mut text = String::new();
        for i in 0..20_000u128 {
            // Keys spread over all 16 first hex digits.
            let key =
                uuid::Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
            text.push_str(&format!("{key} v{i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let whole = load(&path, &LoadOptions::default()).unwrap();
        let opts = LoadOptions {
            key_prefixes: "0-7".parse().unwrap(),
            ..LoadOptions::default()
        };
        let half = load(&path, &opts).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(half.len() > 9_000 && half.len() < 11_000, "{}", half.len());
        assert!(
            half.index.capacity() * 3 <= whole.index.capacity() * 2,
            "shard index {} slots against {} for the whole file",
            half.index.capacity(),
            whole.index.capacity()
        );
    }

    #[test]
    fn line_numbers_are_one_based() {
        let text = b"a\nb\nc";
        assert_eq!(line_number(text, 0), 1);
        assert_eq!(line_number(text, 2), 2);
        assert_eq!(line_number(text, 4), 3);
    }
}
