//! Start-up and shutdown: 503 until the data is loaded, readiness, and a graceful
//! SIGTERM through the real binary.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// The real binary on `sample_lines()` while a publisher holds the file's exclusive
/// lock, once its first load has started (and waits for the lock, up to 60 s): the
/// signal-during-the-first-load tests share this set-up. Unlock the returned file to
/// let the load go on.
fn binary_waiting_for_the_lock() -> (tempfile::TempDir, File, Process) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "t.data", sample_lines());
    let publisher = File::open(&path).unwrap();
    publisher.lock().unwrap();
    let p = spawn_binary(&path, &["--lock-timeout", "60s"]);
    wait_until("the first load to start", || {
        p.log().contains("loading data file")
    });
    (dir, publisher, p)
}

/// Asserts that the process exits with status 0 within 10 s of a stop signal, the
/// check each signal test ends with.
#[track_caller]
fn assert_exits_zero(p: &mut Process) {
    assert_eq!(
        wait_exit(&mut p.child, Duration::from_secs(10)).code(),
        Some(0)
    );
}

/// Holding the publisher's exclusive lock keeps the loader waiting, so the server is
/// observably up but not loaded, for as long as the test wants.
#[tokio::test]
async fn data_routes_answer_503_with_retry_after_until_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "slow.data", sample_lines());
    let publisher = File::open(&path).unwrap();
    publisher.lock().unwrap();
    let s = TestServer::spawn(&path, &["--lock-timeout", "30s"]).await;

    for path in [
        format!("/v1/keys/{KEY}"),
        format!("/v1/keys/{KEY}/value"),
        format!("/get_value/{KEY}"),
    ] {
        let resp = s.get(&path).await;
        assert_eq!(resp.headers()["retry-after"], "1", "{path}");
        let body = problem(resp, 503).await;
        assert_eq!(body["type"], "urn:kvserve:problem:not-loaded");
    }
    let batch = s
        .client
        .post(s.url("/v1/keys/batch"))
        .json(&serde_json::json!({"keys": [KEY]}))
        .send()
        .await
        .unwrap();
    problem(batch, 503).await;
    let ready = s.client.get(s.admin_url("/readyz")).send().await.unwrap();
    problem(ready, 503).await;
    let live = s.client.get(s.admin_url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    // Docs work before the data does.
    assert_eq!(s.get("/openapi.json").await.status(), 200);

    publisher.unlock().unwrap();
    s.wait_ready().await;
    assert_eq!(s.get(&format!("/v1/keys/{KEY}")).await.status(), 200);
    s.stop().await.unwrap();
}

/// SIGTERM while a request is half sent: readiness turns 503 at once, new connections
/// are refused, the in-flight request still gets its full answer, and the exit is 0.
#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (_dir, _, mut p) = ready_sample_binary("t.data", &["--shutdown-timeout", "20s"]);

    let body = format!(r#"{{"keys": ["{KEY}"]}}"#);
    let mut in_flight = TcpStream::connect(p.api).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        in_flight,
        "POST /v1/keys/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the server is now reading the body

    sigterm(&p.child);
    wait_until("readiness to turn 503", || {
        http_status(p.admin, "/readyz") == Some(503)
    });
    wait_until("the API listener to close", || {
        TcpStream::connect(p.api).is_err()
    });
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "must wait for the in-flight request"
    );

    in_flight.write_all(&body.as_bytes()[5..]).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains(VALUE) {
        let n = in_flight.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed before the answer: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let status = wait_exit(&mut p.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

/// A request that never completes cannot hold the process past --shutdown-timeout.
#[test]
fn shutdown_timeout_bounds_the_drain() {
    let (_dir, _, mut p) = ready_sample_binary("t.data", &["--shutdown-timeout", "500ms"]);
    let mut stuck = TcpStream::connect(p.api).unwrap();
    write!(
        stuck,
        "POST /v1/keys/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    sigterm(&p.child);
    let status = wait_exit(&mut p.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the drain waited for the request"
    );
}

/// SIGINT (Ctrl-C) stops the server the same way.
#[test]
fn sigint_exits_zero() {
    let (_dir, _, mut p) = ready_sample_binary("t.data", &[]);
    assert_eq!(http_status(p.api, &format!("/v1/keys/{KEY}")), Some(200));
    Command::new("kill")
        .args(["-INT", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert_exits_zero(&mut p);
}

/// SIGHUP while the first load waits for the publisher's lock: the handler is in place
/// before the load starts, so the signal is logged instead of killing the process
/// (SIGHUP's default action), and the server becomes ready once the lock is released.
#[test]
fn sighup_during_the_first_load_is_logged_not_fatal() {
    let (_dir, publisher, mut p) = binary_waiting_for_the_lock();
    let status = Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the SIGHUP to be logged", || {
        p.log().contains("SIGHUP received during the first load")
    });
    assert!(p.child.try_wait().unwrap().is_none(), "{}", p.log());
    assert_eq!(http_status(p.admin, "/livez"), Some(200));

    publisher.unlock().unwrap();
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    assert_eq!(http_status(p.api, &format!("/v1/keys/{KEY}")), Some(200));
    // The queued SIGHUP: one reload after the first load.
    wait_until("the queued reload", || {
        p.log().matches("dataset installed").count() == 2
    });
    sigterm(&p.child);
    assert_exits_zero(&mut p);
}

/// SIGTERM while the first load waits for the publisher's lock is a clean shutdown
/// (exit 0), not SIGTERM's default action: the handler is in place before loading.
#[test]
fn sigterm_during_the_first_load_exits_zero() {
    let (_dir, _publisher, mut p) = binary_waiting_for_the_lock();
    sigterm(&p.child);
    assert_exits_zero(&mut p);
    wait_until("the shutdown to be logged", || {
        p.log().contains("SIGTERM received")
    });
}

/// A log reader that stalls (a full stderr pipe nobody drains) must not stall the
/// service: log lines beyond the bounded buffer are dropped and counted, and every
/// request is still answered.
#[test]
fn a_stalled_log_reader_drops_lines_but_never_blocks_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "t.data", sample_lines());
    let mut command = Command::new(binary());
    // A small buffer fills fast; the 64 KiB pipe behind it fills after a few hundred
    // access lines. Not smaller: the start-up lines before "listening" (about 6.5 KB,
    // one per setting) must fit even when the log thread is slow to run, or the line
    // the test waits for is the one dropped.
    command
        .env("KVSERVE_LOG_BUFFER", "16KiB")
        .args(serve_args(&path, &[]));
    let (mut p, _stderr_never_read) = spawn_command_undrained(command);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));

    let mut conn = TcpStream::connect(p.api).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_nodelay(true).unwrap();
    let request = format!("GET /v1/keys/{KEY} HTTP/1.1\r\nHost: x\r\n\r\n");
    for n in 0..2000 {
        conn.write_all(request.as_bytes()).unwrap();
        let answer = read_response(&mut conn)
            .unwrap_or_else(|err| panic!("request {n} not answered: {err}"))
            .unwrap_or_else(|| panic!("request {n}: connection closed"));
        assert_eq!(answer.0, 200, "request {n}");
    }
    let mut admin = TcpStream::connect(p.admin).unwrap();
    admin
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut admin).unwrap().unwrap();
    assert_eq!(status, 200);
    let dropped = series(
        &String::from_utf8_lossy(&body),
        "kvserve_log_lines_dropped_total",
    );
    assert!(dropped.unwrap_or(0.0) > 0.0, "dropped lines: {dropped:?}");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

/// Log lines are written off the request path; a clean exit still writes every one
/// of them, the access line of the last request and the final shutdown message.
#[test]
fn the_last_log_lines_before_a_sigterm_are_written() {
    let (_dir, _, mut p) = ready_sample_binary("t.data", &[]);
    let mut conn = TcpStream::connect(p.api).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_nodelay(true).unwrap();
    for n in 0..200 {
        let request = format!(
            "GET /v1/keys/{KEY} HTTP/1.1\r\nHost: x\r\nX-Request-Id: last-words-{n}\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_response(&mut conn).unwrap().unwrap().0, 200);
    }
    drop(conn);
    sigterm(&p.child);
    let status = wait_exit(&mut p.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    wait_until("the final message", || {
        p.log().contains("shutdown complete")
    });
    let log = p.log();
    for n in 0..200 {
        assert!(
            log.contains(&format!("request_id=\"last-words-{n}\" ")),
            "access line {n} missing from:\n{log}"
        );
    }
}

/// The caller's `X-Request-Id` is quoted in the text access line, so an id such as
/// `"x"client=6.6.6.6` cannot plant a second `client=` field for a logfmt parser
/// (issue 25, item 20).
#[test]
fn a_request_id_cannot_plant_a_log_field() {
    let (_dir, _, mut p) = ready_sample_binary("t.data", &[]);
    let mut conn = TcpStream::connect(p.api).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /v1/keys/{KEY} HTTP/1.1\r\nHost: x\r\nX-Request-Id: \"x\"client=6.6.6.6\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_response(&mut conn).unwrap().unwrap().0, 200);
    wait_until("the access line", || p.log().contains("6.6.6.6"));
    let log = p.log();
    let line = log.lines().find(|l| l.contains("6.6.6.6")).unwrap();
    assert!(
        line.contains(r#" request_id="\"x\"client=6.6.6.6" client=127.0.0.1:"#),
        "{line}"
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}
