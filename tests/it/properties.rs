//! Property tests of the data file loader (issue 7): any valid file (docs/ARCHITECTURE.md section 1)
//! loads back exactly, under both storage modes and any chunk split; duplicate keys
//! follow `--on-duplicate`; arbitrary or damaged bytes never panic the loader, and a
//! refused file names its first bad line.
//!
//! Case counts are small so that `cargo test` stays quick. `PROPTEST_CASES=N` runs N
//! cases of every property instead, e.g.
//! `PROPTEST_CASES=5000 cargo test --release --test it properties::`. A failing case is
//! shrunk, then saved in `tests/it/properties.proptest-regressions` and replayed first
//! by later runs: commit that file with the fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::fuzz_checks::{assert_load_matches, reference, Expected, Model, Variant};
use kvserve::dataset::{LoadError, LoadOptions, OnDuplicate, Storage};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

/// `default` cases, unless `PROPTEST_CASES` says otherwise.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Beside this file. proptest's default would put it in
        // `tests/proptest-regressions/properties.txt`, as `tests/it` has a `main.rs`.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Lf,
    Crlf,
}

#[derive(Debug, Clone)]
enum Line {
    Record {
        key: u128,
        /// The key as written: hyphenated, each letter in either case.
        spelling: String,
        value: String,
    },
    Blank,
}

/// A valid data file, and what it means.
#[derive(Debug, Clone)]
struct DataFile {
    bom: bool,
    lines: Vec<(Line, Ending)>,
    final_newline: bool,
}

impl DataFile {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.bom {
            out.extend_from_slice(b"\xEF\xBB\xBF");
        }
        for (n, (line, ending)) in self.lines.iter().enumerate() {
            if let Line::Record {
                spelling, value, ..
            } = line
            {
                out.extend_from_slice(format!("{spelling} {value}").as_bytes());
            }
            if self.terminated(n) {
                out.extend_from_slice(match ending {
                    Ending::Lf => b"\n".as_slice(),
                    Ending::Crlf => b"\r\n",
                });
            }
        }
        out
    }

    fn terminated(&self, line: usize) -> bool {
        self.final_newline || line + 1 < self.lines.len()
    }

    /// (1-based line number, key, value the grammar gives it) of every record.
    fn records(&self) -> Vec<(u64, u128, String)> {
        let mut records = Vec::new();
        for (n, (line, ending)) in self.lines.iter().enumerate() {
            if let Line::Record { key, value, .. } = line {
                // A CR before the LF is not part of the value: with an LF ending, a
                // value's own trailing CR is that CR; with CRLF, the ending's is.
                let value = match (ending, self.terminated(n)) {
                    (Ending::Lf, true) => value.strip_suffix('\r').unwrap_or(value),
                    _ => value,
                };
                records.push((n as u64 + 1, *key, value.to_owned()));
            }
        }
        records
    }
}

/// The hyphenated spelling of `key`, with the letters whose bit is set in `upper`
/// in upper case. Written out rather than asked of the `uuid` crate.
fn spell(key: u128, upper: u64) -> String {
    let hex = format!("{key:032x}");
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if upper >> i & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Values: empty, plain, any Unicode but LF, and runs of the characters that need
/// escaping in JSON or HTML, or that confuse line handling (CR, BOM, U+2028).
fn value() -> impl Strategy<Value = String> {
    let awkward = prop::sample::select(vec![
        "\"",
        "\\",
        "\t",
        "\r",
        "\u{0}",
        "\u{1b}",
        "\u{7f}",
        "\u{85}",
        "/",
        " ",
        "é",
        "漢",
        "🦀",
        "\u{2028}",
        "\u{feff}",
        "</script>",
        "\\u0000",
        "{\"a\":[1]}",
        "&amp;",
    ]);
    prop_oneof![
        1 => Just(String::new()),
        3 => "[ -~]{0,24}",
        2 => "[^\n]{0,12}",
        3 => prop::collection::vec(awkward, 0..8).prop_map(|parts| parts.concat()),
    ]
}

/// Valid files of up to `max_lines` lines whose keys come from `keys`: a BOM or not,
/// LF, CRLF or mixed endings, blank lines, a final newline or not.
fn data_file(
    keys: impl Strategy<Value = u128>,
    max_lines: usize,
) -> impl Strategy<Value = DataFile> {
    let line = prop_oneof![
        6 => (keys, any::<u64>(), value()).prop_map(|(key, upper, value)| Line::Record {
            key,
            spelling: spell(key, upper),
            value,
        }),
        1 => Just(Line::Blank),
    ];
    let endings = prop_oneof![Just(Some(Ending::Lf)), Just(Some(Ending::Crlf)), Just(None)];
    (
        any::<bool>(),
        prop::collection::vec((line, any::<bool>()), 0..max_lines),
        endings,
        any::<bool>(),
    )
        .prop_map(|(bom, lines, endings, final_newline)| {
            let lines = lines
                .into_iter()
                .map(|(line, crlf)| {
                    let ending = endings.unwrap_or(if crlf { Ending::Crlf } else { Ending::Lf });
                    (line, ending)
                })
                .collect();
            let mut file = DataFile {
                bom,
                lines,
                final_newline,
            };
            // A CR that ends the file is not a CRLF's; docs/ARCHITECTURE.md does not say whether
            // it belongs to the value, so generated files do not end in one.
            if !final_newline {
                if let Some((Line::Record { value, .. }, _)) = file.lines.last_mut() {
                    if value.ends_with('\r') {
                        value.push('.');
                    }
                }
            }
            file
        })
}

/// The record lines with distinct keys only (the first of each), for the properties
/// about files without duplicates.
fn without_duplicates(mut file: DataFile) -> DataFile {
    let mut seen = std::collections::HashSet::new();
    file.lines.retain(|(line, _)| match line {
        Line::Record { key, .. } => seen.insert(*key),
        Line::Blank => true,
    });
    file
}

/// The production split in both modes, every line its own chunk, the whole file as
/// one chunk, and two chunk sizes picked from 1..=len+1, on 1 to 4 threads.
fn variants() -> impl Strategy<Value = (usize, [Index; 2])> {
    (1usize..=4, any::<[Index; 2]>())
}

fn expand_variants(len: usize, (threads, cuts): (usize, [Index; 2])) -> Vec<Variant> {
    let (memory, mmap) = (Storage::Memory, Storage::Mmap);
    let mut variants = vec![
        Variant {
            storage: memory,
            chunk_bytes: None,
            threads: 0,
        },
        Variant {
            storage: mmap,
            chunk_bytes: None,
            threads: 0,
        },
        Variant {
            storage: memory,
            chunk_bytes: Some(1),
            threads,
        },
        Variant {
            storage: mmap,
            chunk_bytes: Some(len.max(1)),
            threads,
        },
    ];
    for (cut, storage) in cuts.iter().zip([memory, mmap]) {
        variants.push(Variant {
            storage,
            chunk_bytes: Some(cut.index(len + 1) + 1),
            threads,
        });
    }
    variants
}

fn write(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join("prop.data");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Asserts that every variant loads `path` into exactly `values`.
fn assert_loads_exactly(
    path: &Path,
    opts: &LoadOptions,
    variants: &[Variant],
    values: &HashMap<u128, String>,
    duplicates: u64,
    absent: &[u128],
) {
    for variant in variants {
        let dataset = match variant.load(path, opts) {
            Ok(dataset) => dataset,
            Err(err) => panic!("{variant:?}: {err}"),
        };
        assert_eq!(dataset.len(), values.len(), "{variant:?}");
        assert_eq!(dataset.info().duplicate_lines, duplicates, "{variant:?}");
        assert_eq!(dataset.info().skipped_lines, 0, "{variant:?}");
        for (key, value) in values {
            assert_eq!(
                dataset.lookup(*key).as_deref(),
                Some(value.as_bytes()),
                "{variant:?}: {key:032x}"
            );
        }
        for key in absent.iter().filter(|key| !values.contains_key(key)) {
            assert_eq!(dataset.lookup(*key), None, "{variant:?}: {key:032x}");
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Every record of a valid file comes back with its value, in both storage modes
    /// and whatever the chunk split; nothing else is there.
    #[test]
    fn valid_files_load_back_exactly(
        file in data_file(any::<u128>(), 40).prop_map(without_duplicates),
        allow_empty in any::<bool>(),
        split in variants(),
        absent in prop::collection::vec(any::<u128>(), 4),
    ) {
        let bytes = file.bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &bytes);
        let opts = LoadOptions { allow_empty, ..LoadOptions::default() };
        let values: HashMap<u128, String> = file
            .records()
            .into_iter()
            .map(|(_, key, value)| (key, value))
            .collect();
        let variants = expand_variants(bytes.len(), split);

        // The fuzz targets trust the reference model; it must agree with the generator.
        let expected = reference(&bytes, &opts);
        if values.is_empty() && !allow_empty {
            prop_assert_eq!(expected, Expected::Empty);
            for variant in &variants {
                let result = variant.load(&path, &opts);
                prop_assert!(matches!(result, Err(LoadError::Empty { .. })), "{:?}", variant);
            }
            return Ok(());
        }
        let model = Model {
            values: values.iter().map(|(k, v)| (*k, v.clone().into_bytes())).collect(),
            ..Model::default()
        };
        prop_assert_eq!(expected, Expected::Loaded(model));

        let mut absent = absent;
        absent.extend(values.keys().map(|key| key ^ 1));
        assert_loads_exactly(&path, &opts, &variants, &values, 0, &absent);
    }

    /// With keys drawn from a handful, duplicates are the rule: `error` names the
    /// first repeated line and where its key was first seen, `first` and `last` keep
    /// the earliest or latest value and count the other lines.
    #[test]
    fn duplicates_follow_on_duplicate(
        file in prop::collection::vec(any::<u128>(), 1..5)
            .prop_flat_map(|pool| data_file(prop::sample::select(pool), 16)),
        on_duplicate in prop::sample::select(vec![
            OnDuplicate::Error, OnDuplicate::First, OnDuplicate::Last,
        ]),
        split in variants(),
    ) {
        let bytes = file.bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, &bytes);
        let opts = LoadOptions { on_duplicate, allow_empty: true, ..LoadOptions::default() };
        let variants = expand_variants(bytes.len(), split);

        let mut first_lines: HashMap<u128, u64> = HashMap::new();
        let mut values: HashMap<u128, String> = HashMap::new();
        let mut duplicates = 0;
        let mut first_duplicate = None;
        for (line, key, value) in file.records() {
            match first_lines.get(&key) {
                None => {
                    first_lines.insert(key, line);
                    values.insert(key, value);
                }
                Some(&first_line) => {
                    duplicates += 1;
                    first_duplicate.get_or_insert((line, first_line, key));
                    if on_duplicate == OnDuplicate::Last {
                        values.insert(key, value);
                    }
                }
            }
        }

        match (on_duplicate, first_duplicate) {
            (OnDuplicate::Error, Some((line, first_line, key))) => {
                for variant in &variants {
                    let err = match variant.load(&path, &opts) {
                        Ok(dataset) => panic!("{variant:?}: loaded {} keys", dataset.len()),
                        Err(err) => err,
                    };
                    let text = err.to_string();
                    prop_assert!(
                        matches!(err, LoadError::Duplicate { .. }),
                        "{:?}: {}", variant, text
                    );
                    prop_assert!(
                        text.starts_with(&format!("{}:{line}: duplicate key", path.display())),
                        "{:?}: {}", variant, text
                    );
                    prop_assert!(
                        text.contains(&format!(
                            "{} (first on line {first_line})",
                            uuid::Uuid::from_u128(key)
                        )),
                        "{:?}: {}", variant, text
                    );
                }
            }
            _ => assert_loads_exactly(&path, &opts, &variants, &values, duplicates, &[]),
        }
    }
}

/// Bytes that are more often than not near the grammar: separators, hyphens, hex
/// digits, the BOM's bytes and broken UTF-8, among arbitrary ones.
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        2 => any::<u8>(),
        3 => prop::sample::select(b"\n\r -0123456789abcdefABCDEF\xEF\xBB\xBF\xC3\xA9\xFF".to_vec()),
    ];
    prop::collection::vec(byte, 0..400)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
    /// Copies a line over another place: a duplicate key, or a line cut in half.
    Repeat(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let inserted = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"\n\r -\xFF\xC3".to_vec()),
    ];
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        (any::<Index>(), inserted).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(from, to)| Mutation::Repeat(from, to)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::Flip(at, bits) => bytes[at.index(len)] ^= bits,
        Mutation::Insert(at, byte) => bytes.insert(at.index(len + 1), *byte),
        Mutation::Delete(at) => {
            bytes.remove(at.index(len));
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(len)),
        Mutation::Repeat(from, to) => {
            let start = from.index(len);
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(len, |n| start + n + 1);
            let line = bytes[start..end].to_vec();
            let to = to.index(len + 1);
            bytes.splice(to..to, line);
        }
    }
}

/// Options that reach every branch: strict or lenient, each duplicate policy, line
/// limits small enough for short inputs to exceed, sharding by key prefix.
fn options() -> impl Strategy<Value = LoadOptions> {
    (
        any::<bool>(),
        prop::sample::select(vec![
            OnDuplicate::Error,
            OnDuplicate::First,
            OnDuplicate::Last,
        ]),
        any::<bool>(),
        prop_oneof![3 => Just(1usize << 20), 1 => 0usize..120],
        prop::sample::select(vec!["0-f", "0-7", "8-f", "3,a-c"]),
    )
        .prop_map(
            |(skip_invalid, on_duplicate, allow_empty, max_line_bytes, prefixes)| LoadOptions {
                skip_invalid,
                on_duplicate,
                allow_empty,
                max_line_bytes,
                key_prefixes: prefixes.parse().unwrap(),
                ..LoadOptions::default()
            },
        )
}

/// Loads `bytes` every way and checks each result against the reference model: a
/// dataset equal to the model, or the error it predicts, which names the file and the
/// first bad line (`path:LINE: `, LINE within the file).
fn check_against_reference(bytes: &[u8], opts: &LoadOptions, split: (usize, [Index; 2])) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, bytes);
    let expected = reference(bytes, opts);
    for variant in expand_variants(bytes.len(), split) {
        let actual = variant.load(&path, opts);
        assert_load_matches(&expected, &actual, &path, bytes, &format!("{variant:?}"));
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Arbitrary bytes: a dataset or an error naming the first bad line, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_loader(
        bytes in arbitrary_bytes(),
        opts in options(),
        split in variants(),
    ) {
        check_against_reference(&bytes, &opts, split);
    }

    /// A valid file with a few byte flips, inserted or deleted bytes (newlines among
    /// them), a repeated line or a truncation: the same, closer to real damage.
    #[test]
    fn damaged_files_never_panic_the_loader(
        file in data_file(any::<u128>(), 12),
        mutations in prop::collection::vec(mutation(), 1..4),
        opts in options(),
        split in variants(),
    ) {
        let mut bytes = file.bytes();
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        check_against_reference(&bytes, &opts, split);
    }
}

/// Not random: one awkward file (BOM, CRLF and LF, blank lines, an empty value, a
/// value ending in CR, no final newline), split at every chunk size from one byte to
/// the whole file, on 1 to 3 threads, in both modes.
#[test]
fn every_chunk_size_loads_an_awkward_file_the_same() {
    let text = "\u{feff}72cf48f7-d604-4423-b012-4e2329f5117b a b\r\n\
        \r\n\
        0D9C6E4E-5C39-4F76-9A57-2F0B7E4C1A11 \n\
        \n\
        11111111-1111-4111-8111-111111111111 cr\r\r\n\
        aaaaaaaa-BBBB-4ccc-8DDD-eeeeeeeeeeee \"é\" \\ 🦀";
    let bytes = text.as_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, bytes);
    let values: HashMap<u128, String> = [
        (0x72cf48f7_d604_4423_b012_4e2329f5117b, "a b"),
        (0x0d9c6e4e_5c39_4f76_9a57_2f0b7e4c1a11, ""),
        (0x11111111_1111_4111_8111_111111111111, "cr\r"),
        (0xaaaaaaaa_bbbb_4ccc_8ddd_eeeeeeeeeeee, "\"é\" \\ 🦀"),
    ]
    .into_iter()
    .map(|(key, value)| (key, value.to_owned()))
    .collect();
    let mut variants = Vec::new();
    for chunk_bytes in 1..=bytes.len() + 1 {
        for threads in 1..=3 {
            for storage in [Storage::Memory, Storage::Mmap] {
                variants.push(Variant {
                    storage,
                    chunk_bytes: Some(chunk_bytes),
                    threads,
                });
            }
        }
    }
    assert_loads_exactly(
        &path,
        &LoadOptions::default(),
        &variants,
        &values,
        0,
        &[0, u128::MAX],
    );
}

/// Not random either: errors on lines 4 and 7 and a duplicate on line 6, at every
/// chunk size: the first in file order (line 4) wins, wherever the seams fall.
#[test]
fn every_chunk_size_reports_the_first_error() {
    let text = "72cf48f7-d604-4423-b012-4e2329f5117b a\n\
        0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11 b\n\
        \n\
        not a record\n\
        11111111-1111-4111-8111-111111111111 c\n\
        72CF48F7-D604-4423-B012-4E2329F5117B again\n\
        also not a record\n";
    let bytes = text.as_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, bytes);
    let strict = LoadOptions::default();
    let lenient = LoadOptions {
        skip_invalid: true,
        ..LoadOptions::default()
    };
    for chunk_bytes in 1..=bytes.len() + 1 {
        for threads in 1..=3 {
            for storage in [Storage::Memory, Storage::Mmap] {
                let variant = Variant {
                    storage,
                    chunk_bytes: Some(chunk_bytes),
                    threads,
                };
                let err = variant.load(&path, &strict).err().unwrap();
                assert!(
                    err.to_string()
                        .starts_with(&format!("{}:4: ", path.display())),
                    "{variant:?}: {err}"
                );
                // Skipping the bad lines leaves the duplicate as the first error.
                let err = variant.load(&path, &lenient).err().unwrap();
                assert!(
                    err.to_string().starts_with(&format!(
                        "{}:6: duplicate key 72cf48f7-d604-4423-b012-4e2329f5117b (first on line 1)",
                        path.display()
                    )),
                    "{variant:?}: {err}"
                );
            }
        }
    }
}
