//! Micro-benchmarks of the pieces a lookup is made of, and of the loader.
//!
//! `cargo bench --bench dataset` (about two minutes). Figures go to BENCHMARKS.md as
//! measured here; the HTTP figures come from `benches/load/run.sh`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kvserve::cache::Cache;
use kvserve::dataset::{self, gen, LoadOptions, Storage};
use kvserve::http::api::{lookup, Preconditions, Shape};
use kvserve::http::{limits::LimitSettings, HttpSettings, HttpState};
use kvserve::reload::Reloader;
use kvserve::state::AppState;

const LINES: u64 = 1_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    keys: Vec<u128>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.data");
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs each benchmark
    // once, unoptimised, only to see that it works: a small file is enough there.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let lines = if measuring { LINES } else { 10_000 };
    gen::generate(&path, lines, 7, |_| {}).expect("generate");
    let text = std::fs::read_to_string(&path).expect("read back");
    let keys = text
        .lines()
        .step_by(10)
        .map(|line| uuid::Uuid::parse_str(&line[..36]).expect("key").as_u128())
        .collect();
    Fixture {
        _dir: dir,
        path,
        keys,
    }
}

fn loader(c: &mut Criterion, f: &Fixture) {
    let bytes = std::fs::metadata(&f.path).expect("stat").len();
    let mut group = c.benchmark_group("load");
    group.sample_size(10).throughput(Throughput::Bytes(bytes));
    for storage in [Storage::Memory, Storage::Mmap] {
        let opts = LoadOptions {
            storage,
            ..LoadOptions::default()
        };
        group.bench_function(format!("1M lines, {storage:?}"), |b| {
            b.iter(|| black_box(dataset::load(&f.path, &opts).expect("load")))
        });
    }
    group.finish();
}

fn state(f: &Fixture, cache_capacity: usize) -> Arc<HttpState> {
    let settings = HttpSettings {
        cache_control_header: poem::http::HeaderValue::from_static("public, max-age=60"),
        max_batch: 1000,
        max_body_bytes: 1 << 20,
        limits: LimitSettings {
            max_uri_bytes: 16384,
            max_header_bytes: 32768,
            max_body_bytes: 1 << 20,
            max_in_flight: None,
            request_timeout: None,
        },
        fast_path: true,
        compression: kvserve::http::encoding::Compression::OFF,
        max_answer_bytes: 16 << 20,
        max_unsent_bytes: 256 << 20,
    };
    let reloader = Reloader::new(f.path.clone(), LoadOptions::default());
    let app = AppState::new(Cache::new(cache_capacity), reloader).expect("state");
    app.dataset
        .install(dataset::load(&f.path, &LoadOptions::default()).expect("load"));
    Arc::new(HttpState::new(Arc::new(app), settings, None, None).expect("state"))
}

fn lookups(c: &mut Criterion, f: &Fixture) {
    let dataset = dataset::load(&f.path, &LoadOptions::default()).expect("load");
    let mut group = c.benchmark_group("dataset");
    let mut i = 0usize;
    group.bench_function("lookup hit", |b| {
        b.iter(|| {
            i = (i + 7919) % f.keys.len();
            black_box(dataset.lookup(f.keys[i]))
        })
    });
    group.bench_function("lookup miss", |b| {
        b.iter(|| {
            i = (i + 7919) % f.keys.len();
            black_box(dataset.lookup(f.keys[i] ^ 1))
        })
    });
    group.finish();

    let cache = Cache::new(100_000);
    let hot = f.keys[0];
    cache.insert(
        hot,
        1,
        Bytes::from_static(b"{\"key\":\"x\",\"value\":\"y\"}"),
    );
    cache.insert(
        hot,
        1,
        Bytes::from_static(b"{\"key\":\"x\",\"value\":\"y\"}"),
    );
    c.bench_function("cache/hit", |b| {
        b.iter(|| black_box(cache.get(black_box(hot), 1)))
    });
    c.bench_function("cache/miss", |b| {
        b.iter(|| black_box(cache.get(black_box(hot ^ 1), 1)))
    });

    let key = uuid::Uuid::from_u128(hot);
    let value = dataset.lookup(hot).expect("present");
    c.bench_function("render/key_value", |b| {
        b.iter(|| {
            black_box(kvserve::http::key::render_key_value(
                black_box(key),
                black_box(&value),
            ))
        })
    });
    escaper(c, &value);

    // The whole lookup the hot route does, uniform over 100k keys: with the default
    // LRU and without one.
    let texts: Vec<String> = f
        .keys
        .iter()
        .map(|k| uuid::Uuid::from_u128(*k).to_string())
        .collect();
    for (name, capacity) in [
        ("lookup/json, LRU 100k", 100_000),
        ("lookup/json, no LRU", 0),
    ] {
        let state = state(f, capacity);
        c.bench_function(name, |b| {
            b.iter_batched(
                || {
                    i = (i + 7919) % texts.len();
                    i
                },
                |i| {
                    black_box(lookup(
                        &state,
                        &texts[i],
                        Preconditions::absent(),
                        Shape::Json,
                    ))
                },
                BatchSize::SmallInput,
            )
        });
    }
}

/// The byte-level JSON string escaper against serde_json on the same text: a value of
/// the data file (ASCII), the same with quotes and a control character, and
/// non-ASCII text.
fn escaper(c: &mut Criterion, ascii: &[u8]) {
    let ascii = String::from_utf8(ascii.to_vec()).expect("the generator writes text");
    let awkward = format!("{ascii} \"quoted\" \\ tab\there");
    let accented = "héllo wörld, ça va très bien, 日本語のテキスト, 𝄞 ".repeat(2);
    let mut group = c.benchmark_group("escape");
    for (name, text) in [
        ("ascii", ascii.as_str()),
        ("escapes", awkward.as_str()),
        ("non-ascii", accented.as_str()),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        let mut out = Vec::with_capacity(4 * text.len() + 2);
        group.bench_function(format!("{name}/kvserve"), |b| {
            b.iter(|| {
                out.clear();
                kvserve::json::escape_json(&mut out, black_box(text.as_bytes()));
                black_box(out.len())
            })
        });
        group.bench_function(format!("{name}/serde_json"), |b| {
            b.iter(|| {
                out.clear();
                let _ = serde_json::to_writer(&mut out, black_box(text));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    lookups(c, &f);
    loader(c, &f);
}

criterion_group!(all, benches);
criterion_main!(all);
