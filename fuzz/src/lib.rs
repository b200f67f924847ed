//! The checks behind the fuzz targets, and the reference model they compare with.
//!
//! They live here rather than in `fuzz_targets/` so that plain `cargo test` runs them
//! too: `tests/it/main.rs` includes this file with `#[path]`, for `tests/it/fuzz_seeds.rs`
//! (on the committed seeds) and `tests/it/properties.rs`. CI builds with stable, where libFuzzer cannot run;
//! without that the targets would stop compiling, or stop holding, unnoticed.
//!
//! [`reference`] is a deliberately naive reading of DESIGN.md section 2: one pass, line
//! by line, keys parsed by the `uuid` crate instead of `format::parse_hyphenated`. It
//! is slow and plainly right, the loader is fast and parallel; where they disagree,
//! one of them has a bug.

use std::collections::HashMap;
use std::path::Path;

use kvserve::dataset::format::{self, LineError};
use kvserve::dataset::{self, Dataset, LoadError, LoadOptions, OnDuplicate, Storage};

/// The hyphenated UUID's length, written out rather than taken from `format`.
const KEY_LEN: usize = 36;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What loading some bytes must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Loaded(Model),
    /// The first bad line (1-based) and why, roughly: the loader's exact reason for a
    /// grammar error depends on which check it runs first, which is not the grammar's
    /// business.
    Malformed {
        line: u64,
        kind: BadLine,
    },
    /// The first line whose key an earlier line already had.
    Duplicate {
        line: u64,
        first_line: u64,
        key: u128,
    },
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    InvalidUtf8,
    TooLong,
    Grammar,
}

/// A loaded dataset as the grammar describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub values: HashMap<u128, Vec<u8>>,
    pub skipped: u64,
    pub duplicates: u64,
    pub foreign: u64,
}

enum Line<'a> {
    Blank,
    Bad(BadLine),
    Record(u128, &'a [u8]),
}

/// One line (without its LF) per the grammar. UTF-8 comes first because the loader
/// validates whole chunks before it parses their lines.
fn classify(raw: &[u8], max_line_bytes: usize) -> Line<'_> {
    if std::str::from_utf8(raw).is_err() {
        return Line::Bad(BadLine::InvalidUtf8);
    }
    let text = raw.strip_suffix(b"\r").unwrap_or(raw);
    if text.len() > max_line_bytes {
        return Line::Bad(BadLine::TooLong);
    }
    if text.is_empty() {
        return Line::Blank;
    }
    match (text.get(..KEY_LEN), text.get(KEY_LEN)) {
        (Some(key), Some(b' ')) => match uuid::Uuid::try_parse_ascii(key) {
            Ok(key) => Line::Record(key.as_u128(), &text[KEY_LEN + 1..]),
            Err(_) => Line::Bad(BadLine::Grammar),
        },
        _ => Line::Bad(BadLine::Grammar),
    }
}

/// What `dataset::load` must make of `bytes` under `opts`.
pub fn reference(bytes: &[u8], opts: &LoadOptions) -> Expected {
    let body = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let max = opts.max_line_bytes.min(dataset::MAX_VALUE_LEN);
    let mut model = Model::default();
    let mut first_lines: HashMap<u128, u64> = HashMap::new();
    for (n, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = n as u64 + 1;
        match classify(raw, max) {
            Line::Blank => {}
            Line::Bad(_) if opts.skip_invalid => model.skipped += 1,
            Line::Bad(kind) => return Expected::Malformed { line, kind },
            Line::Record(key, _) if !opts.key_prefixes.owns(key) => model.foreign += 1,
            Line::Record(key, value) => match first_lines.get(&key) {
                None => {
                    first_lines.insert(key, line);
                    model.values.insert(key, value.to_vec());
                }
                Some(&first_line) => {
                    model.duplicates += 1;
                    match opts.on_duplicate {
                        OnDuplicate::Error => {
                            return Expected::Duplicate {
                                line,
                                first_line,
                                key,
                            }
                        }
                        OnDuplicate::First => {}
                        OnDuplicate::Last => {
                            model.values.insert(key, value.to_vec());
                        }
                    }
                }
            },
        }
    }
    if model.values.is_empty() && !opts.allow_empty {
        Expected::Empty
    } else {
        Expected::Loaded(model)
    }
}

/// One way to load a file: storage mode, and either the production split (`None`) or
/// chunks of about `chunk_bytes` bytes on `threads` threads.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub storage: Storage,
    pub chunk_bytes: Option<usize>,
    pub threads: usize,
}

impl Variant {
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Dataset, LoadError> {
        let opts = LoadOptions {
            storage: self.storage,
            threads: self.threads,
            ..opts.clone()
        };
        match self.chunk_bytes {
            None => dataset::load(path, &opts),
            Some(chunk_bytes) => dataset::load_with_chunk_bytes(path, &opts, chunk_bytes),
        }
    }
}

/// A load result in one line, for assertion messages and for comparing variants.
pub fn describe(result: &Result<Dataset, LoadError>) -> String {
    match result {
        Ok(dataset) => format!("a dataset of {} keys", dataset.len()),
        Err(err) => format!("error: {err}"),
    }
}

/// Panics unless `actual`, a load of `path` (which holds `bytes`), is `expected`.
pub fn assert_load_matches(
    expected: &Expected,
    actual: &Result<Dataset, LoadError>,
    path: &Path,
    bytes: &[u8],
    what: &str,
) {
    let lines = count_lf(bytes) + 1;
    match (expected, actual) {
        (Expected::Loaded(model), Ok(dataset)) => assert_dataset(model, dataset, what),
        (
            Expected::Malformed { line, kind },
            Err(
                err @ LoadError::Malformed {
                    line: got, reason, ..
                },
            ),
        ) => {
            assert_eq!(got, line, "{what}: wrong line in `{err}`");
            let reason_fits = match kind {
                BadLine::InvalidUtf8 => matches!(reason, LineError::InvalidUtf8),
                BadLine::TooLong => matches!(reason, LineError::TooLong { .. }),
                BadLine::Grammar => matches!(
                    reason,
                    LineError::MissingSeparator
                        | LineError::KeyLength { .. }
                        | LineError::KeySyntax { .. }
                ),
            };
            assert!(reason_fits, "{what}: expected {kind:?}, got `{err}`");
            assert_names_line(err, path, *line, lines, what);
        }
        (
            Expected::Duplicate {
                line,
                first_line,
                key,
            },
            Err(
                err @ LoadError::Duplicate {
                    line: got,
                    first_line: got_first,
                    key: got_key,
                    ..
                },
            ),
        ) => {
            assert_eq!(
                (got, got_first, got_key.as_u128()),
                (line, first_line, *key),
                "{what}: `{err}`"
            );
            assert_names_line(err, path, *line, lines, what);
            assert!(
                err.to_string()
                    .contains(&format!("(first on line {first_line})")),
                "{what}: `{err}`"
            );
        }
        (Expected::Empty, Err(LoadError::Empty { .. })) => {}
        (expected, actual) => panic!("{what}: expected {expected:?}, got {}", describe(actual)),
    }
}

fn count_lf(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The message starts `path:LINE: `, and LINE is a line the file has.
fn assert_names_line(err: &LoadError, path: &Path, line: u64, lines: u64, what: &str) {
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:{line}: ", path.display())),
        "{what}: `{text}` does not start with the file and line {line}"
    );
    assert!(
        (1..=lines).contains(&line),
        "{what}: line {line} of {lines}"
    );
}

fn assert_dataset(model: &Model, dataset: &Dataset, what: &str) {
    assert_eq!(dataset.len(), model.values.len(), "{what}: key count");
    let info = dataset.info();
    assert_eq!(info.keys, model.values.len() as u64, "{what}: info.keys");
    assert_eq!(info.skipped_lines, model.skipped, "{what}: skipped lines");
    assert_eq!(info.duplicate_lines, model.duplicates, "{what}: duplicates");
    assert_eq!(info.foreign_lines, model.foreign, "{what}: foreign lines");
    for (&key, value) in &model.values {
        let got = dataset.lookup(key);
        assert_eq!(got.as_deref(), Some(value.as_slice()), "{what}: {key:032x}");
        // The loader validated the file: every value served is text.
        assert!(
            std::str::from_utf8(value).is_ok(),
            "{what}: {key:032x} as text"
        );
        // Neighbours of present keys are the likeliest wrong answers of a broken index.
        for near in [key ^ 1, key ^ (1 << 127), key.rotate_left(64)] {
            if !model.values.contains_key(&near) {
                assert_eq!(dataset.lookup(near), None, "{what}: absent {near:032x}");
            }
        }
    }
    for absent in [0, u128::MAX] {
        if !model.values.contains_key(&absent) {
            assert_eq!(dataset.lookup(absent), None, "{what}: absent {absent:032x}");
        }
    }
}

/// What the `load` target tries on every input: the strict default in both storage
/// modes with the production split and with every line its own chunk, then a lenient
/// and a sharded option set (small line limits, so that short inputs reach them) with
/// forced chunks in mmap mode. Five loads: each spawns threads, which is most of the
/// cost of an input, and a faster target explores more inputs.
pub fn fuzz_loads(len: usize) -> Vec<(LoadOptions, Vec<Variant>)> {
    let variant = |storage, chunk_bytes, threads| Variant {
        storage,
        chunk_bytes,
        threads,
    };
    let (memory, mmap) = (Storage::Memory, Storage::Mmap);
    vec![
        (
            LoadOptions::default(),
            vec![
                variant(memory, None, 0),
                variant(mmap, None, 0),
                variant(memory, Some(1), 2),
            ],
        ),
        (
            LoadOptions {
                skip_invalid: true,
                on_duplicate: OnDuplicate::Last,
                allow_empty: true,
                max_line_bytes: 64,
                ..LoadOptions::default()
            },
            vec![variant(mmap, Some(1 + len / 3), 3)],
        ),
        (
            LoadOptions {
                on_duplicate: OnDuplicate::First,
                max_line_bytes: 48,
                key_prefixes: "0-7,c".parse().expect("valid prefixes"),
                ..LoadOptions::default()
            },
            vec![variant(mmap, Some(1), 2)],
        ),
    ]
}

/// The `load` target: `data` as a data file, loaded as `fuzz_loads` says. Every load
/// must match the reference, and the loads of one option set must describe their
/// results identically (same error text, byte for byte).
pub fn check_load(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fuzz.data");
    std::fs::write(&path, data).expect("write the input");
    for (n, (opts, variants)) in fuzz_loads(data.len()).iter().enumerate() {
        let expected = reference(data, opts);
        let mut first: Option<String> = None;
        for variant in variants {
            let what = format!("options #{n}, {variant:?}");
            let actual = variant.load(&path, opts);
            assert_load_matches(&expected, &actual, &path, data, &what);
            let described = describe(&actual);
            let first = first.get_or_insert_with(|| described.clone());
            assert_eq!(*first, described, "{what} disagrees with the first variant");
        }
    }
}

/// The `line` target: `format::parse_line`, `format::parse_hyphenated` and
/// `format::excerpt` on any bytes, checked against the grammar and the `uuid` crate.
pub fn check_line(data: &[u8]) {
    for max in [1 << 20, data.len(), data.len() / 2] {
        check_parse_line(data, max);
    }
    check_parse_hyphenated(data);
    if let Some(key) = data.get(..KEY_LEN) {
        check_parse_hyphenated(key);
    }
    for max_chars in [0, 3, 60] {
        let excerpt = format::excerpt(data, max_chars);
        assert!(
            excerpt.starts_with('"') && excerpt.ends_with('"'),
            "{excerpt}"
        );
        assert!(
            !excerpt.chars().any(char::is_control),
            "an excerpt must stay one printable line: {excerpt:?}"
        );
        // Each character becomes at most `\u{xxxxxx}`; plus quotes and an ellipsis.
        assert!(excerpt.chars().count() <= max_chars * 10 + 3, "{excerpt:?}");
    }
}

fn check_parse_line(data: &[u8], max: usize) {
    let result = format::parse_line(data, max);
    let text = data.strip_suffix(b"\r").unwrap_or(data);
    let first_space = text.iter().position(|&b| b == b' ');
    let separated = text.get(KEY_LEN) == Some(&b' ');
    if text.len() > max {
        assert_eq!(
            result,
            Err(LineError::TooLong {
                len: text.len(),
                max
            })
        );
        return;
    }
    match result {
        Ok(None) => assert!(text.is_empty(), "only an empty line is blank"),
        Ok(Some(record)) => {
            assert!(separated);
            assert_eq!(record.value_start, KEY_LEN + 1);
            assert_eq!(record.value_len, text.len() - KEY_LEN - 1);
            let key = &text[..KEY_LEN];
            let by_uuid = uuid::Uuid::try_parse_ascii(key).expect("the uuid crate agrees");
            assert_eq!(by_uuid.as_u128(), record.key);
            assert_eq!(format::parse_hyphenated(key), Ok(record.key));
            // The key round-trips: its canonical spelling is the text, up to case.
            let canonical = uuid::Uuid::from_u128(record.key).hyphenated().to_string();
            assert!(
                canonical.as_bytes().eq_ignore_ascii_case(key),
                "{canonical}"
            );
        }
        Err(LineError::MissingSeparator) => {
            assert!(!text.is_empty() && first_space.is_none())
        }
        Err(LineError::KeyLength { len }) => {
            assert!(!separated);
            assert_eq!(first_space, Some(len));
            assert_ne!(len, KEY_LEN);
        }
        Err(LineError::KeySyntax { column, .. }) => {
            assert!(separated);
            assert!(uuid::Uuid::try_parse_ascii(&text[..KEY_LEN]).is_err());
            assert_key_syntax_column(&text[..KEY_LEN], column);
        }
        Err(err @ (LineError::TooLong { .. } | LineError::InvalidUtf8)) => {
            panic!("parse_line({data:?}, {max}) said {err}")
        }
    }
}

/// The column a `KeySyntax` error names holds a character that is wrong there.
fn assert_key_syntax_column(key: &[u8], column: usize) {
    assert!((1..=KEY_LEN).contains(&column), "column {column}");
    let byte = key[column - 1];
    if [9, 14, 19, 24].contains(&column) {
        assert_ne!(byte, b'-', "column {column} of {key:?}");
    } else {
        assert!(!byte.is_ascii_hexdigit(), "column {column} of {key:?}");
    }
}

fn check_parse_hyphenated(text: &[u8]) {
    let result = format::parse_hyphenated(text);
    if text.len() != KEY_LEN {
        assert_eq!(result, Err(LineError::KeyLength { len: text.len() }));
        return;
    }
    match (result, uuid::Uuid::try_parse_ascii(text)) {
        (Ok(key), Ok(by_uuid)) => assert_eq!(key, by_uuid.as_u128()),
        (Err(LineError::KeySyntax { column, .. }), Err(_)) => {
            assert_key_syntax_column(text, column)
        }
        (ours, theirs) => panic!("parse_hyphenated({text:?}) = {ours:?}, uuid: {theirs:?}"),
    }
}
