//! Data files good and bad (docs/ARCHITECTURE.md section 1), through the real binary's `verify`
//! and `serve`, and through the same `App` builder for what is served.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run kvserve")
}

/// Runs `kvserve verify` and returns (success, stdout + stderr).
fn verify(path: &Path, extra: &[&str]) -> (bool, String) {
    let path = path.display().to_string();
    let mut args = vec!["verify", path.as_str()];
    args.extend_from_slice(extra);
    let out = run(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn refused(path: &Path, extra: &[&str], needles: &[&str]) {
    let (ok, text) = verify(path, extra);
    assert!(!ok, "verify should fail:\n{text}");
    for needle in needles {
        assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
    }
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_good_file_verifies_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "good.data", sample_lines());
    let (ok, text) = verify(&path, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("keys:            4"), "{text}");
}

#[test]
fn empty_file_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "empty.data", "");
    refused(&path, &[], &["empty.data", "no records"]);
    let blank = write_file(dir.path(), "blank.data", "\n\r\n\n");
    refused(&blank, &[], &["no records"]);
    assert!(verify(&path, &["--allow-empty"]).0);
}

#[test]
fn missing_file_and_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        &dir.path().join("nope.data"),
        &[],
        &["cannot open data file", "nope.data", "No such file"],
    );
    refused(dir.path(), &[], &["is not a regular file"]);
}

/// A container started without its data volume (k8s mounts it at /data) finds neither
/// the file nor its folder: `serve` exits non-zero and says to check the mount.
#[test]
fn serve_without_the_data_folder_points_at_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |data: &Path| {
        let data = data.display().to_string();
        let out = run(&[
            "serve",
            "--data",
            &data,
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "serve should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing_folder = dir.path().join("data");
    let text = serve(&missing_folder.join("kvserve.data"));
    let folder = missing_folder.display().to_string();
    for needle in [
        "cannot open data file",
        "kvserve.data: No such file",
        &format!("the folder {folder} does not exist either"),
        "is the data volume mounted?",
    ] {
        assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
    }
    // The folder is there (the volume is mounted) but the file is not: no such guess.
    let text = serve(&dir.path().join("kvserve.data"));
    assert!(text.contains("No such file"), "{text}");
    assert!(!text.contains("volume"), "{text}");
}

#[test]
fn unreadable_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "secret.data", sample_lines());
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // Root reads anything, so as root the check runs as `nobody`, in a folder nobody
    // may enter, which is what an unreadable file looks like to a service account.
    let out = if is_root() {
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(binary())
            .arg("verify")
            .arg(&path)
            .output()
            .expect("setpriv")
    } else {
        run(&["verify", path.to_str().unwrap()])
    };
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("cannot open data file") && text.contains("Permission denied"),
        "{text}"
    );
}

#[test]
fn malformed_lines_name_file_line_reason_and_excerpt() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "nospace.data",
            format!("{KEY} a\n\nhello-world\n").into_bytes(),
            vec![":3:", "no space after the key", "\"hello-world\""],
        ),
        (
            "badkey.data",
            format!("{KEY} a\nzzcf48f7-d604-4423-b012-4e2329f5117b v\n").into_bytes(),
            vec![":2:", "not a UUID", "character 1"],
        ),
        (
            "shortkey.data",
            b"72cf48f7 value\n".to_vec(),
            vec![":1:", "36-character", "found 8"],
        ),
        (
            "utf8.data",
            [
                format!("{KEY} ok\n").as_bytes(),
                b"0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11 bad \xff\xfe\n",
            ]
            .concat(),
            vec![":2:", "not valid UTF-8"],
        ),
        (
            "keyonly.data",
            format!("{KEY}\n").into_bytes(),
            vec![":1:", "no space"],
        ),
    ];
    for (name, contents, needles) in cases {
        let path = write_file(dir.path(), name, contents);
        let mut needles = needles;
        needles.push(name);
        refused(&path, &[], &needles);
    }
}

#[test]
fn long_lines_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "long.data",
        format!("{KEY} {}\n", "x".repeat(100)),
    );
    refused(
        &path,
        &["--max-line-bytes", "64"],
        &[":1:", "137 bytes", "--max-line-bytes"],
    );
    assert!(verify(&path, &["--max-line-bytes", "1KiB"]).0);
    let (ok, text) = verify(&path, &["--max-line-bytes", "32MiB"]);
    assert!(!ok && text.contains("--max-line-bytes"), "{text}");
}

#[test]
fn skip_invalid_counts_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "mixed.data",
        format!("{KEY} a\nbroken\n{KEY2} b\nalso broken\n"),
    );
    refused(&path, &[], &[":2:"]);
    let (ok, text) = verify(&path, &["--skip-invalid"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("keys:            2") && text.contains("skipped lines:   2"),
        "{text}"
    );
    assert!(
        text.contains("line=2") && text.contains("line=4"),
        "skipped lines are logged with their numbers:\n{text}"
    );
}

#[test]
fn duplicates_are_refused_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "dup.data",
        format!("{KEY} first\n{KEY2} x\n{} last\n", KEY.to_uppercase()),
    );
    refused(
        &path,
        &[],
        &[
            ":3:",
            "duplicate key",
            KEY,
            "first on line 1",
            "--on-duplicate",
        ],
    );
    assert!(verify(&path, &["--on-duplicate", "first"]).0);
}

#[tokio::test]
async fn on_duplicate_first_and_last_keep_the_right_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "dup.data",
        format!("{KEY} first\n{KEY2} x\n{} last\n", KEY.to_uppercase()),
    );
    for (policy, expected) in [("first", "first"), ("last", "last")] {
        let s = TestServer::start(&path, &["--on-duplicate", policy]).await;
        let body: Value = s
            .get(&format!("/v1/keys/{KEY}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["value"], expected);
        s.stop().await.unwrap();
    }
}

#[tokio::test]
async fn crlf_bom_and_missing_final_newline_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let contents = [
        b"\xEF\xBB\xBF".as_slice(),
        format!("{KEY} crlf value\r\n\r\n{KEY2} last, no newline").as_bytes(),
    ]
    .concat();
    let path = write_file(dir.path(), "dos.data", contents);
    let s = TestServer::start(&path, &[]).await;
    assert_eq!(s.value_text(KEY).await, "crlf value");
    assert_eq!(s.value_text(KEY2).await, "last, no newline");
    s.stop().await.unwrap();
}

/// A file big enough to be split over several parser threads, with errors in several
/// chunks: the one reported must be the first in the file, whatever the thread timing.
#[test]
fn parallel_load_reports_the_first_error_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let bad_lines = [150_001, 90_001, 170_001];
    for n in 1..=200_000u32 {
        if bad_lines.contains(&n) {
            text.push_str("not a record\n");
        } else {
            text.push_str(&format!("{:08x}-0000-4000-8000-{:012x} value {n}\n", n, n));
        }
    }
    let path = write_file(dir.path(), "big.data", &text);
    for _ in 0..3 {
        refused(&path, &["--load-threads", "4"], &["big.data:90001:"]);
    }
    // And a duplicate far from its first occurrence, in another chunk.
    let dup = text.replacen(
        "not a record",
        "00000001-0000-4000-8000-000000000001 again",
        1,
    );
    let path = write_file(dir.path(), "dup-big.data", dup);
    refused(
        &path,
        &["--load-threads", "4"],
        &["dup-big.data:90001:", "first on line 1"],
    );
    let clean = write_file(
        dir.path(),
        "clean-big.data",
        text.replace("not a record\n", ""),
    );
    let (ok, out) = verify(&clean, &["--load-threads", "4"]);
    assert!(ok && out.contains("keys:            199997"), "{out}");
}

#[test]
fn checksum_sidecar_and_flag_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "sum.data", sample_lines());
    let right = kvserve::dataset::integrity::sha256_hex(sample_lines().as_bytes());
    let wrong = "0".repeat(64);
    write_file(
        dir.path(),
        "sum.data.sha256",
        format!("{right}  sum.data\n"),
    );
    let (ok, text) = verify(&path, &[]);
    assert!(ok && text.contains(&right), "{text}");
    write_file(
        dir.path(),
        "sum.data.sha256",
        format!("{wrong}  sum.data\n"),
    );
    refused(
        &path,
        &[],
        &["SHA-256 of", &right, "sum.data.sha256", &wrong],
    );
    write_file(dir.path(), "sum.data.sha256", "garbage\n");
    refused(&path, &[], &["sum.data.sha256", "sha256sum"]);
    // The flag wins over the sidecar.
    assert!(verify(&path, &["--sha256", &right.to_uppercase()]).0);
    refused(&path, &["--sha256", &wrong], &["--sha256 expects"]);
    refused(&path, &["--sha256", "xyz"], &["--sha256", "64 hexadecimal"]);
}

#[test]
fn generated_files_carry_a_checksum_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.data");
    let status = run(&[
        "gen",
        "--lines",
        "2000",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "3",
        "--checksum",
    ]);
    assert!(status.status.success());
    let (ok, text) = verify(&out, &[]);
    assert!(ok && text.contains("keys:            2000"), "{text}");
    let mut file = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    file.write_all(format!("{KEY} tampered\n").as_bytes())
        .unwrap();
    refused(&out, &[], &["SHA-256"]);
}

#[test]
fn an_exclusive_lock_is_waited_for_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "locked.data", sample_lines());
    let publisher = File::open(&path).unwrap();
    publisher.lock().unwrap();
    refused(
        &path,
        &["--lock-timeout", "300ms"],
        &["locked exclusively", "--lock-timeout"],
    );

    // Released while the loader waits: the load goes ahead.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        publisher.unlock().unwrap();
    });
    let (ok, text) = verify(&path, &["--lock-timeout", "10s"]);
    release.join().unwrap();
    assert!(ok, "{text}");
}

/// 500,000 valid numbered lines (some 28 MB): a file big enough that a load takes a
/// while, for the tests that change it under the loader.
fn numbered_lines() -> String {
    let mut text = String::with_capacity(40 << 20);
    for n in 0..500_000u32 {
        text.push_str(&format!(
            "{:08x}-0000-4000-8000-{:012x} value number {n}\n",
            n, n
        ));
    }
    text
}

/// Runs `verify` on `path` with `args` while another thread calls `change` over and
/// over, then stops that thread: how the tests here change a file under the loader.
fn verify_while(
    path: &Path,
    args: &[&str],
    mut change: impl FnMut() + Send + 'static,
) -> (bool, String) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                change();
            }
        })
    };
    let result = verify(path, args);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    changer.join().unwrap();
    result
}

#[test]
fn a_file_that_grows_while_loading_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = numbered_lines();
    let path = write_file(dir.path(), "growing.data", &text);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let mut n = 0u64;
    let (ok, text) = verify_while(&path, &[], move || {
        writeln!(file, "ffffffff-0000-4000-8000-{n:012x} appended").unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    });
    assert!(!ok, "{text}");
    assert!(
        text.contains("changed while loading") && text.contains("size went from"),
        "{text}"
    );
}

#[test]
fn serve_exits_non_zero_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bad.data", "garbage\n");
    let out = run(&[
        "--data",
        path.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: ") && stderr.contains("bad.data:1:"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_failed_load_serves_nothing_and_ends_run_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bad.data", format!("{KEY} fine\nbroken\n"));
    let s = TestServer::spawn(&path, &[]).await;
    let err = s.finished().await.unwrap_err();
    assert!(matches!(err, kvserve::AppError::Load(_)), "{err}");
    assert!(err.to_string().contains("bad.data:2:"));
}

#[test]
fn big_files_log_progress_with_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.data");
    let mut out = std::io::BufWriter::new(File::create(&path).unwrap());
    for n in 0..1_000_000u64 {
        writeln!(
            out,
            "{:08x}-0000-4000-8000-{n:012x} some words for value number {n}",
            n as u32
        )
        .unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 64 << 20);
    let (ok, text) = verify(&path, &["--load-threads", "2"]);
    assert!(ok, "{text}");
    let percents: Vec<u64> = text
        .lines()
        .filter(|line| line.contains("loading data file"))
        .map(|line| {
            assert!(line.contains("lines_per_second="), "{line}");
            let at = line.find("percent=").unwrap() + "percent=".len();
            line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!percents.is_empty(), "no progress logged:\n{text}");
    assert!(
        percents.windows(2).all(|w| w[0] < w[1])
            && percents.iter().all(|p| p % 10 == 0 && *p < 100),
        "{percents:?}"
    );
}

#[tokio::test]
async fn mmap_storage_serves_the_same_answers_and_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let contents = [
        b"\xEF\xBB\xBF".as_slice(),
        format!("{KEY} {VALUE}\r\n\r\n{KEY2} {VALUE2}\n{MISSING} last").as_bytes(),
    ]
    .concat();
    let path = write_file(dir.path(), "mapped.data", contents);
    let memory = TestServer::start(&path, &["--storage", "memory"]).await;
    let mapped = TestServer::start(&path, &["--storage", "mmap"]).await;
    for key in [KEY, KEY2, MISSING, "11111111-1111-4111-8111-111111111111"] {
        for route in [
            format!("/v1/keys/{key}"),
            format!("/v1/keys/{key}/value"),
            format!("/get_value/{key}"),
        ] {
            let a = memory.get(&route).await;
            let b = mapped.get(&route).await;
            assert_eq!(a.status(), b.status(), "{route}");
            assert_eq!(
                a.bytes().await.unwrap(),
                b.bytes().await.unwrap(),
                "{route}"
            );
        }
    }
    assert_eq!(
        mapped
            .get(&format!("/v1/keys/{MISSING}/value"))
            .await
            .text()
            .await
            .unwrap(),
        "last"
    );
    // The mapping holds the shared lock: a publisher cannot lock the file exclusively.
    let publisher = File::open(&path).unwrap();
    assert!(
        publisher.try_lock().is_err(),
        "mmap storage keeps its shared lock"
    );
    memory.stop().await.unwrap();
    mapped.stop().await.unwrap();
    // Once the server (and its mapping) is gone, the lock is free.
    assert!(publisher.try_lock().is_ok());
}

#[test]
fn mmap_storage_refuses_bad_files_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(dir.path(), "bad.data", format!("{KEY} ok\nbroken line\n"));
    refused(
        &bad,
        &["--storage", "mmap"],
        &["bad.data:2:", "36-character"],
    );
    let dup = write_file(dir.path(), "dup.data", format!("{KEY} a\n{KEY} b\n"));
    refused(
        &dup,
        &["--storage", "mmap"],
        &["dup.data:2:", "duplicate key"],
    );
    let good = write_file(dir.path(), "good.data", sample_lines());
    let (ok, text) = verify(&good, &["--storage", "mmap"]);
    assert!(ok && text.contains("keys:            4"), "{text}");
}

/// A first load of a file larger than memory ends the process with a clear error
/// (exit 1), not an allocation abort (134).
#[test]
fn serve_exits_cleanly_on_a_file_larger_than_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.data");
    File::create(&path).unwrap().set_len(100 << 30).unwrap();
    let out = run(&[
        "--data",
        path.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--storage",
        "memory",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("huge.data")
            && stderr.contains("107374182400 bytes")
            && stderr.contains("memory"),
        "{stderr}"
    );
    refused(&path, &[], &["107374182400 bytes", "--storage mmap"]);
}

/// What the real `sha256sum` writes for `names`, run in `dir`.
fn sha256sum(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("sha256sum")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Every form `sha256sum` writes is accepted (the escaped form of a name with a
/// backslash, `--tag`, `-b`, a BOM in front), and the line that counts is the one
/// naming the data file.
#[test]
fn sidecars_as_sha256sum_writes_them_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let weird = write_file(dir.path(), "we\\ird.data", sample_lines());
    let right = kvserve::dataset::integrity::sha256_hex(sample_lines().as_bytes());
    write_file(dir.path(), "other.data", format!("{KEY} other\n"));
    let sidecar = |contents: String| write_file(dir.path(), "we\\ird.data.sha256", contents);
    let accepted = |what: &str| {
        let (ok, text) = verify(&weird, &[]);
        assert!(ok && text.contains(&right), "{what}:\n{text}");
    };

    let plain = sha256sum(dir.path(), &["we\\ird.data"]);
    assert!(plain.starts_with('\\'), "the escaped form: {plain}");
    sidecar(plain.clone());
    accepted("escaped");
    sidecar(sha256sum(dir.path(), &["--tag", "we\\ird.data"]));
    accepted("--tag");
    sidecar(sha256sum(dir.path(), &["-b", "we\\ird.data"]));
    accepted("-b");
    sidecar(format!("\u{feff}{plain}"));
    accepted("BOM");
    // A list of several files: the line naming this one counts, wherever it is.
    sidecar(sha256sum(dir.path(), &["other.data", "we\\ird.data"]));
    accepted("list");
    sidecar(sha256sum(
        dir.path(),
        &["--tag", "other.data", "we\\ird.data"],
    ));
    accepted("--tag list");

    // A line naming another file is not this file's checksum.
    sidecar(sha256sum(dir.path(), &["other.data"]));
    refused(&weird, &[], &["we\\ird.data.sha256", "no line for"]);
    // Nor is a list whose line for this file is wrong, whatever comes first.
    let mut list = sha256sum(dir.path(), &["other.data"]);
    list.push_str(&format!("\\{}  we\\\\ird.data\n", "0".repeat(64)));
    sidecar(list);
    refused(&weird, &[], &["SHA-256 of", &right, &"0".repeat(64)]);
}

/// The size limit names the real size, and a file of exactly the limit is not "more
/// than" it.
#[test]
fn the_size_limit_message_names_the_real_size() {
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("exact.data");
    File::create(&exact).unwrap().set_len(1 << 40).unwrap();
    let (ok, text) = verify(&exact, &["--max-memory", "1MiB"]);
    assert!(!ok, "{text}");
    assert!(
        !text.contains("the index can address") && text.contains("--max-memory"),
        "a 1 TiB file is addressable: {text}"
    );
    let over = dir.path().join("over.data");
    File::create(&over).unwrap().set_len((1 << 40) + 1).unwrap();
    refused(
        &over,
        &[],
        &["1099511627777 bytes, more than the 1099511627776 bytes"],
    );
}

/// A rewrite in place that puts the modification time back (`rsync --inplace -t`)
/// keeps the size, the inode and the mtime: only the ctime tells. A load during such
/// rewrites must be refused, not accept a mix of two versions.
#[test]
fn an_in_place_rewrite_that_restores_the_mtime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = numbered_lines();
    let path = write_file(dir.path(), "inplace.data", &text);
    // The value of the first line after 90 % of the file.
    let at = text[text.len() * 9 / 10..].find('\n').unwrap() + text.len() * 9 / 10 + 1 + 37;
    assert_eq!(&text[at..at + 5], "value");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut n = 0u64;
    let (ok, out) = verify_while(&path, &["--storage", "mmap"], move || {
        use std::os::unix::fs::FileExt;
        let byte = if n.is_multiple_of(2) { b"V" } else { b"v" };
        file.write_all_at(byte, at as u64).unwrap();
        file.set_modified(mtime).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    });
    assert!(!ok, "a file rewritten during the load was accepted:\n{out}");
    assert!(out.contains("changed while loading"), "{out}");
}

/// The excerpt of a bad line is built from a bounded prefix of it: a 48 MiB line of
/// invalid UTF-8 used to be copied whole (three bytes per invalid byte) to print 60
/// characters, peaking at about four times the file. The message itself is unchanged.
#[test]
fn the_excerpt_of_a_huge_invalid_line_costs_no_copy_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let len = 48usize << 20;
    let mut contents = format!("{KEY} ").into_bytes();
    contents.resize(len, 0xFF);
    contents.push(b'\n');
    let path = write_file(dir.path(), "invalid.data", &contents);
    drop(contents);
    // The peak is read from the child's own /proc/PID/status while it runs: wait4's
    // ru_maxrss would also count the RSS of this test process, whose address space the
    // child shares until its exec (posix_spawn), and that grows with the other tests.
    let mut child = Command::new(binary())
        .args(["verify", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        stderr
    });
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0usize;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            let hwm = text
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kb| {
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                });
            peak = peak.max(hwm.unwrap_or(0) * 1024);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected = format!("\"{KEY} {}…\"", "\u{fffd}".repeat(60 - KEY.len() - 1));
    assert!(
        stderr.contains("invalid.data:1: the line is not valid UTF-8: ")
            && stderr.contains(&expected),
        "{stderr}"
    );
    assert!(
        peak > len && peak < len * 3,
        "peak RSS {} MiB for a {} MiB file:\n{stderr}",
        peak >> 20,
        len >> 20
    );
}

/// The index is bounded too: a file whose bytes fit under `--max-memory` but whose
/// many short lines need an index that does not is refused before the index is
/// allocated, with either storage.
#[test]
fn an_index_larger_than_the_memory_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for n in 0..20_000u32 {
        text.push_str(&format!("{n:08x}-0000-4000-8000-000000000000 v\n"));
    }
    assert!(text.len() < 1 << 20);
    let path = write_file(dir.path(), "many.data", &text);
    for storage in ["memory", "mmap"] {
        refused(
            &path,
            &["--storage", storage, "--max-memory", "1MiB"],
            &["many.data", "index", "--max-memory"],
        );
    }
    assert!(verify(&path, &["--max-memory", "8MiB"]).0);
}
