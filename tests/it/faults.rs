//! Fault tests: kvserve's process, data file and sockets treated badly. Where a signal
//! or a crash is involved the real binary runs as a child, so the test survives what
//! the server does not; the rest use the in-process `TestServer`.
//!
//! The 10-minute soak at half the peak rate is a benchmark, not a test: see
//! `benches/load/soak.sh` and BENCHMARKS.md.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const STORAGES: [&str; 2] = ["memory", "mmap"];

/// One request on a fresh connection: status and body, `None` if the server closed
/// the connection without answering.
fn request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let (status, body) = read_response(&mut stream).ok()??;
    Some((status, String::from_utf8(body).unwrap()))
}

fn value_of(addr: SocketAddr, key: &str) -> Option<(u16, String)> {
    request(addr, "GET", &format!("/v1/keys/{key}/value"))
}

/// `(key, value)` of every line of a data file made by `kvserve gen` or `sample_lines`.
fn records(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let (key, value) = line.split_once(' ').unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn generate(path: &Path, lines: u32) {
    let out = Command::new(binary())
        .args(["gen", "--lines", &lines.to_string(), "--seed", "7", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// SIGTERM while eight clients keep their keep-alive connections busy: every request
/// the server took on is answered in full and correctly; the others find their
/// connection closed before any byte of an answer (safe to retry elsewhere). Exit 0.
#[test]
fn sigterm_under_steady_load_fails_no_accepted_request() {
    let (_dir, _, mut p) = ready_sample_binary("t.data", &["--shutdown-timeout", "10s"]);
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (api, answered) = (p.api, answered.clone());
            std::thread::spawn(move || {
                let request = format!("GET /v1/keys/{KEY}/value HTTP/1.1\r\nHost: x\r\n\r\n");
                // Reconnect until the listener is gone.
                while let Ok(mut stream) = TcpStream::connect(api) {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(15)))
                        .unwrap();
                    loop {
                        if stream.write_all(request.as_bytes()).is_err() {
                            break;
                        }
                        match read_response(&mut stream) {
                            Ok(Some((200, body))) => {
                                assert_eq!(body, VALUE.as_bytes());
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Some((status, body))) => panic!(
                                "an accepted request failed: {status} {}",
                                String::from_utf8_lossy(&body)
                            ),
                            Ok(None) => break,
                            Err(err) => panic!("an answer was cut off: {err}"),
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("steady load", || answered.load(Ordering::Relaxed) > 2000);
    sigterm(&p.child);
    for client in clients {
        client.join().expect("a client saw a failed request");
    }
    let status = wait_exit(&mut p.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", p.log());
}

/// SIGKILL leaves nothing behind that stops a restart (no stale lock, no state on
/// disk): the new process is ready again and gives the same answers.
#[test]
fn sigkill_then_restart_serves_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.data");
    generate(&path, 2000);
    let sample: Vec<_> = records(&path).into_iter().step_by(97).collect();
    for storage in STORAGES {
        let mut first = spawn_binary(&path, &["--storage", storage]);
        wait_until("ready", || http_status(first.admin, "/readyz") == Some(200));
        let before: Vec<_> = sample.iter().map(|(k, _)| value_of(first.api, k)).collect();
        first.child.kill().unwrap();
        first.child.wait().unwrap();

        let mut second = spawn_binary(&path, &["--storage", storage]);
        wait_until("ready after the restart", || {
            http_status(second.admin, "/readyz") == Some(200)
        });
        for ((key, value), before) in sample.iter().zip(before) {
            let after = value_of(second.api, key);
            assert_eq!(after, Some((200, value.clone())), "{storage}: {key}");
            assert_eq!(before, after, "{storage}: {key}");
        }
        second.child.kill().unwrap();
        second.child.wait().unwrap();
    }
}

/// Deleting the data file, or renaming another file over it, changes nothing until a
/// reload: memory storage holds a copy, mmap storage holds the old inode open.
#[tokio::test]
async fn a_deleted_or_replaced_data_file_keeps_serving_the_loaded_data() {
    for storage in STORAGES {
        let (dir, path, s) = TestServer::with_sample_file("d.data", &["--storage", storage]).await;
        let value = || async {
            let body: Value = s
                .get(&format!("/v1/keys/{KEY}"))
                .await
                .json()
                .await
                .unwrap();
            body["value"].as_str().unwrap().to_owned()
        };
        std::fs::remove_file(&path).unwrap();
        assert_eq!(value().await, VALUE, "{storage}: after delete");

        let next = write_file(dir.path(), "next.data", format!("{KEY} replaced\n"));
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(value().await, VALUE, "{storage}: after rename");

        // The replacement is served once asked for.
        let resp = s
            .client
            .post(format!("http://{}/admin/reload", s.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{storage}");
        assert_eq!(value().await, "replaced", "{storage}: after reload");
        s.stop().await.unwrap();
    }
}

/// Memory storage copied the file at load: truncating it in place changes nothing.
#[tokio::test]
async fn memory_storage_ignores_a_file_truncated_in_place() {
    let (_dir, path, s) = TestServer::with_sample_file("t.data", &[]).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    for (key, value) in [(KEY, VALUE), (KEY2, VALUE2)] {
        let resp = s.get(&format!("/v1/keys/{key}/value")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), value);
    }
    s.stop().await.unwrap();
}

/// mmap storage cannot keep pages a truncation removed. Values still inside the file
/// are served as before; the first read of a lost page ends the process with status 75
/// and a message that says what happened, and no answer is sent for that request:
/// never a value read from a hole. A restart then loads the file as it now is.
#[test]
fn mmap_storage_exits_cleanly_when_the_file_is_truncated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.data");
    generate(&path, 100_000);
    let all = records(&path);
    let (first_key, first_value) = all[0].clone();
    let (last_key, _) = all[all.len() - 1].clone();
    let mut p = spawn_binary(&path, &["--storage", "mmap"]);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));

    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    assert_eq!(
        value_of(p.api, &first_key),
        Some((200, first_value.clone()))
    );
    assert_eq!(
        value_of(p.api, &last_key),
        None,
        "no answer from a lost page"
    );
    let status = wait_exit(&mut p.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(75), "{}", p.log());
    let log = p.log();
    assert!(
        log.contains("SIGBUS") && log.contains("truncated in place"),
        "{log}"
    );
}

/// The SIGBUS handler is for faults in a mapping of the data file only. A SIGBUS sent
/// with `kill` (or a fault anywhere else) goes to the handler that was there before,
/// so the process dies of the signal as it would without kvserve's handler: no exit
/// 75, no "truncated" message blaming the data file.
#[test]
fn a_sigbus_sent_by_kill_is_not_blamed_on_the_data_file() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "k.data", sample_lines());
    let mut command = Command::new(binary());
    command.args(serve_args(&path, &["--storage", "mmap"]));
    // SAFETY: setrlimit is async-signal-safe; no core file from the expected crash.
    unsafe {
        command.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let mut p = spawn_command(command);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    let sent = Command::new("kill")
        .args(["-BUS", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_exit(&mut p.child, Duration::from_secs(10));
    let log = p.log();
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{log}");
    assert!(!log.contains("truncated"), "{log}");
}

/// A reload that cannot read the new file (permissions) or finds it half written
/// (a copy cut short by a full disk, caught by its checksum sidecar) fails with the
/// reason, and the old data goes on being served.
#[test]
fn an_unreadable_or_half_written_file_on_reload_keeps_the_old_data() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = write_file(dir.path(), "r.data", sample_lines());
    // Root reads anything: run the server as `nobody`, as a service account would be.
    let mut command = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(binary());
        c
    } else {
        Command::new(binary())
    };
    command.args(serve_args(&path, &[]));
    let mut p = spawn_command(command);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));

    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let (status, body) = request(p.admin, "POST", "/admin/reload").unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("Permission denied"), "{body}");
    assert_eq!(value_of(p.api, KEY), Some((200, VALUE.to_owned())));

    // A complete file's checksum next to a copy cut short.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let full = format!("{}{KEY2} changed\n", sample_lines());
    let sidecar = kvserve::dataset::integrity::sidecar_path(&path);
    std::fs::write(
        &sidecar,
        format!(
            "{}  r.data\n",
            kvserve::dataset::integrity::sha256_hex(full.as_bytes())
        ),
    )
    .unwrap();
    std::fs::write(&path, &full.as_bytes()[..full.len() - 10]).unwrap();
    let (status, body) = request(p.admin, "POST", "/admin/reload").unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sha256"), "{body}");
    assert_eq!(value_of(p.api, KEY2), Some((200, VALUE2.to_owned())));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

/// A port already taken is a start-up error that names the listener and address, and
/// the exit status is non-zero: an orchestrator sees the failure instead of a process
/// that never serves.
#[test]
fn a_port_in_use_is_a_clear_error_and_a_failed_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "p.data", sample_lines());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (flag, listener, other) in [
        ("--addr", "api", "--admin-addr"),
        ("--admin-addr", "admin", "--addr"),
    ] {
        let out = Command::new(binary())
            .arg("--data")
            .arg(&path)
            .args([flag, &addr, other, "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr} ({listener} listener)"))
                && stderr.contains("in use"),
            "{stderr}"
        );
    }
}

/// 10,000 connections that connect and send nothing: the server's memory grows by a
/// bounded amount per connection (measured here: about 18 KiB, most of it hyper's
/// 8 KiB read buffer and the connection task; `--max-connections` caps the total), and
/// requests on new and on idle connections are still answered.
#[test]
fn ten_thousand_idle_connections_stay_bounded_and_requests_are_answered() {
    const IDLE: usize = 10_000;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let open_files: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        open_files > IDLE + 100,
        "this test needs more than {} open files (ulimit -n), the limit is {open_files}",
        IDLE + 100
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "i.data", sample_lines());
    let p = spawn_binary(
        &path,
        &[
            "--max-connections",
            "10100",
            "--max-connections-per-address",
            "0",
            "--header-read-timeout",
            "120s",
        ],
    );
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    assert_eq!(value_of(p.api, KEY), Some((200, VALUE.to_owned())));
    let pid = p.child.id();
    let before = rss_kib(pid);

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| TcpStream::connect(p.api).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    // Accepted and wrapped by the server: a request behind all of them is answered.
    let started = Instant::now();
    assert_eq!(value_of(p.api, KEY), Some((200, VALUE.to_owned())));
    let mut first = &idle[0];
    write!(
        first,
        "GET /v1/keys/{KEY}/value HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = idle[0].try_clone().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = read_response(&mut first).unwrap().unwrap();
    assert_eq!(answer, (200, VALUE.as_bytes().to_vec()));
    let after = rss_kib(pid);
    let per_connection = (after.saturating_sub(before) * 1024) / IDLE as u64;
    eprintln!(
        "{IDLE} idle connections: RSS {before} KiB -> {after} KiB ({per_connection} B each); answered in {:?}",
        started.elapsed()
    );
    assert!(
        per_connection < 32 * 1024,
        "{per_connection} bytes per idle connection"
    );
    drop(idle);
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

/// The reload lock belongs to the load, not to the request that asked for it: a client
/// that gives up (`curl -m 0.2`) leaves its load running, so a second reload is still
/// refused with 409 instead of starting a second copy of the file in memory, and the
/// orphaned load's outcome is still logged and counted.
#[test]
fn a_reload_whose_client_left_keeps_the_lock_and_is_logged_and_counted() {
    let (_dir, path, mut p) = ready_sample_binary("orphan.data", &["--lock-timeout", "60s"]);
    // A publisher rewriting the file under its exclusive lock holds the reload in its
    // lock wait for as long as the test wants: no timing involved.
    let publisher = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    publisher.lock().unwrap();
    {
        let mut client = TcpStream::connect(p.admin).unwrap();
        write!(
            client,
            "POST /admin/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        wait_until("the reload to start loading", || {
            p.log().matches("loading data file").count() >= 2
        });
    } // the client hangs up
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = request(p.admin, "POST", "/admin/reload").expect("an answer");
    assert_eq!(status, 409, "the first load still runs: {body}");

    // The publisher leaves a broken file: the orphaned load fails, and says so.
    publisher.set_len(0).unwrap();
    (&publisher).write_all(b"this line is broken\n").unwrap();
    publisher.unlock().unwrap();
    let failures = || {
        request(p.admin, "GET", "/metrics").and_then(|(_, text)| {
            series(&text, "kvserve_dataset_reloads_total{result=\"failure\"}")
        })
    };
    wait_until("the orphaned load's failure to be counted", || {
        failures() == Some(1.0)
    });
    let log = p.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("reload failed")
            && l.contains("orphan.data:1")),
        "{log}"
    );
    assert_eq!(value_of(p.api, KEY), Some((200, VALUE.to_owned())));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

/// Runs `command` for at most `within`; `None` (and the child killed) if it hangs.
fn output_within(mut command: Command, within: Duration) -> Option<std::process::Output> {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(output) => Some(output.unwrap()),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            None
        }
    }
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a directory entry.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A FIFO named as the data file (or as its `.sha256`) is refused at once, naming the
/// path and what it is, by `serve` and by `verify`: reading it would block for ever.
#[test]
fn a_fifo_as_the_data_file_is_refused_at_start_up_and_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.data");
    mkfifo(&fifo);
    let good = write_file(dir.path(), "good.data", sample_lines());
    mkfifo(&dir.path().join("good.data.sha256"));
    for (file, named) in [(&fifo, "pipe.data"), (&good, "good.data.sha256")] {
        let mut serve = Command::new(binary());
        serve.args(serve_args(file, &[]));
        let mut verify = Command::new(binary());
        verify.arg("verify").arg(file);
        for (what, command) in [("serve", serve), ("verify", verify)] {
            let out = output_within(command, Duration::from_secs(15))
                .unwrap_or_else(|| panic!("{what} {named} hangs"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what} {named}: {stderr}");
            assert!(
                stderr.contains(named) && stderr.contains("FIFO"),
                "{what} {named}: {stderr}"
            );
        }
    }
}

/// Under a low open-file limit (`ulimit -n 256`, soft and hard), 300 idle API
/// connections must not take the descriptors the admin listener needs: kvserve lowers
/// the API listener's `--max-connections` to fit the limit, keeping a reserve, says so
/// in the log, and `/livez` keeps answering; failed accepts are logged at most once per
/// interval. Before, the API listener took every descriptor, `/livez` timed out and
/// "accept failed" was logged every 50 ms (issue 25, item 7).
#[test]
fn a_low_open_file_limit_leaves_room_for_probes() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "fd.data", sample_lines());
    let mut p = spawn_command(with_open_file_limit(&data, 256));
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(p.api).unwrap());
    }
    // Give the server time to accept (or refuse) every one of them.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(http_status(p.admin, "/livez"), Some(200), "/livez");
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = {
        let mut stream = TcpStream::connect(p.admin).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        text
    };
    let api_limit = series(&text, "kvserve_http_connections_limit{listener=\"api\"}").unwrap();
    let admin_limit = series(&text, "kvserve_http_connections_limit{listener=\"admin\"}").unwrap();
    assert!(
        api_limit + admin_limit < 256.0 && admin_limit >= 8.0,
        "api {api_limit}, admin {admin_limit}"
    );
    let log = p.log();
    assert!(
        log.contains("lowered to fit"),
        "no warning about the limit:\n{log}"
    );
    let accept_failures = log.matches("accept failed").count();
    assert!(
        accept_failures <= 1,
        "{accept_failures} accept failures logged"
    );
    drop(idle);
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// kvserve serving `data`, started with `RLIMIT_NOFILE` soft and hard at `limit`, so it
/// cannot raise it.
fn with_open_file_limit(data: &Path, limit: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(binary());
    command.args(serve_args(data, &[]));
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// An open-file limit too low for a few connections per listener is refused at
/// start-up with a message naming it, instead of serving until the first flood.
#[test]
fn an_open_file_limit_too_low_to_serve_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "fd.data", sample_lines());
    let out = with_open_file_limit(&data, 40).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the open-file limit (ulimit -n) is 40"),
        "{stderr}"
    );
}
