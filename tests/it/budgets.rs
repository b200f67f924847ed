//! What a client can make kvserve hold, and the bounds on it: answers made but not
//! read (shared documents, the unsent-answer budget, the batch answer cap) and the
//! request head a connection may buffer. The clients here ask and never read, with a
//! small receive buffer, as a slow remote client looks.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream as AsyncStream};

use crate::common::{self, series, TestServer};

/// A connection that sent `request` and will not read its answer, as a remote client
/// looks: a 4 KiB receive buffer and Ethernet's segment size (loopback's 64 KiB
/// segments let the kernel take a whole answer into its buffers), so the answer waits
/// in the server.
async fn never_reading(addr: std::net::SocketAddr, request: &[u8]) -> AsyncStream {
    use std::os::fd::AsRawFd;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mss: libc::c_int = 1460;
    // SAFETY: a valid socket descriptor and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt TCP_MAXSEG");
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream
}

fn batch_request(keys: &[String]) -> Vec<u8> {
    let body = serde_json::json!({ "keys": keys }).to_string();
    format!(
        "POST /v1/keys/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `count` keys with values of `len` bytes each.
fn big_values(count: usize, len: usize) -> (Vec<String>, String) {
    let keys: Vec<String> = (0..count)
        .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    let value = "v".repeat(len);
    let lines = keys.iter().map(|key| format!("{key} {value}\n")).collect();
    (keys, lines)
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

fn answered(admin: std::net::SocketAddr, route: &str) -> f64 {
    let text = reqwest::blocking::get(format!("http://{admin}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let name =
        format!("kvserve_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"200\"}}");
    series(&text, &name).unwrap_or(0.0)
}

/// The documents are made once: a reader that never reads holds a reference to them,
/// not a copy. Before, each such reader of `/docs` pinned a private 1.7 MB copy: 60 of
/// them grew the process by about 100 MB. A bound, not a figure: the margin is 4×.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_the_documents_share_one_copy() {
    let (_dir, _path, mut process) = common::ready_sample_binary("docs.data", &[]);
    let (api, admin, pid) = (process.api, process.admin, process.child.id());
    // Made once before measuring: the first answers of each.
    for path in ["/docs", "/openapi.json"] {
        assert_eq!(common::http_status(api, path), Some(200));
    }
    let before = rss(pid);
    let readers: u32 = 60;
    let mut held = Vec::new();
    for i in 0..readers {
        let path = if i % 2 == 0 { "/docs" } else { "/openapi.json" };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        held.push(never_reading(api, request.as_bytes()).await);
    }
    tokio::task::spawn_blocking(move || {
        common::wait_until("every document request answered", || {
            answered(admin, "/docs") + answered(admin, "/openapi.json") >= f64::from(readers + 2)
        })
    })
    .await
    .unwrap();
    let grown = rss(pid).saturating_sub(before);
    let page = 1_700_000 * u64::from(readers) / 2;
    assert!(
        grown < page / 4,
        "{readers} readers that never read grew the server by {grown} bytes (a copy of /docs each: ~{page})"
    );
    drop(held);
    common::sigterm(&process.child);
    common::wait_exit(&mut process.child, Duration::from_secs(10));
}

/// Answers not read yet are charged to `--max-unsent-bytes`: once they hold it, the
/// next large answer gets 503 (with `Retry-After`, counted), small answers still flow,
/// and when the slow clients go the bytes are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_are_bounded_by_the_unsent_budget() {
    // Answers of ~8 MB: more than the kernel's socket buffers take, so most of each
    // stays in the server while its client does not read.
    let (keys, lines) = big_values(80, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_file(
        dir.path(),
        "big.data",
        format!("{}{lines}", common::sample_lines()),
    );
    let server = TestServer::start(&data, &["--max-unsent-bytes", "17MiB"]).await;
    let request = batch_request(&keys);
    let ask_all = || async {
        let body = serde_json::json!({ "keys": keys });
        let url = server.url("/v1/keys/batch");
        server.client.post(url).json(&body).send().await.unwrap()
    };
    let first = never_reading(server.api, &request).await;
    let second = never_reading(server.api, &request).await;
    let held = |holds: fn(f64) -> bool| {
        let metrics = server.admin_url("/metrics");
        let client = server.client.clone();
        async move {
            for _ in 0..500 {
                let text = client
                    .get(&metrics)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let bytes = series(&text, "kvserve_http_unsent_bytes").unwrap_or(0.0);
                if holds(bytes) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(
        held(|bytes| bytes > 16_000_000.0).await,
        "two unread answers are charged"
    );

    let refused = ask_all().await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = common::problem(refused, 503).await;
    assert_eq!(body["type"], "urn:kvserve:problem:overloaded");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("--max-unsent-bytes"),
        "{body}"
    );
    let small = server.get(&format!("/v1/keys/{}", common::KEY)).await;
    assert_eq!(small.status(), 200, "small answers are not charged");
    let text = server.metrics_text().await;
    assert_eq!(
        series(
            &text,
            "kvserve_http_answers_refused_total{reason=\"unsent_budget\"}"
        ),
        Some(1.0)
    );

    drop((first, second));
    assert!(
        held(|bytes| bytes == 0.0).await,
        "gone clients release their answers"
    );
    let served = ask_all().await;
    assert_eq!(served.status(), 200);
    assert!(served.bytes().await.unwrap().len() > 8_000_000);
    server.stop().await.unwrap();
}

/// A batch answer over `--max-answer-bytes` is refused with 413 before it is made,
/// also when only the escaping of control characters (six bytes for one) makes it so.
#[tokio::test]
async fn batch_answers_over_the_answer_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plain = "10000000-0000-4000-8000-000000000000";
    let control = "20000000-0000-4000-8000-000000000000";
    let lines = format!(
        "{plain} {}\n{control} {}\n",
        "p".repeat(3000),
        "\u{1}".repeat(1000)
    );
    let data = common::write_file(dir.path(), "answers.data", lines);
    let server = TestServer::start(&data, &["--max-answer-bytes", "4KiB"]).await;
    let batch = |keys: Vec<&str>| {
        server
            .client
            .post(server.url("/v1/keys/batch"))
            .json(&serde_json::json!({ "keys": keys }))
            .send()
    };
    let within = batch(vec![plain, control.replace('2', "3").as_str()])
        .await
        .unwrap();
    assert_eq!(within.status(), 200, "3 KB of values fit in 4 KiB");
    for keys in [
        vec![plain, plain.replace('1', "4").as_str(), control],
        vec![control],
    ] {
        let body = common::problem(batch(keys).await.unwrap(), 413).await;
        assert_eq!(body["type"], "urn:kvserve:problem:answer-too-large");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("--max-answer-bytes") && detail.contains("4096"),
            "{detail}"
        );
    }
    let text = server.metrics_text().await;
    assert_eq!(
        series(
            &text,
            "kvserve_http_answers_refused_total{reason=\"too_large\"}"
        ),
        Some(2.0)
    );
    server.stop().await.unwrap();
}

/// A request head is read into a buffer sized by `--max-uri-bytes` +
/// `--max-header-bytes` (16 + 32 KiB by default): a longer head gets 431 problem+json
/// as soon as it fills the buffer, finished or not, instead of filling hyper's default
/// of about 400 KiB (which a head that never ends used to hold until its deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_header_limit_is_refused() {
    let (_dir, server) = TestServer::with_sample(&[]).await;
    let (_dir2, small) = TestServer::with_sample(&["--max-header-bytes", "1KiB"]).await;
    let ask = |api: std::net::SocketAddr, filler: usize, end: bool| {
        let mut stream = TcpStream::connect(api).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let head = format!(
            "GET /v1/keys/{} HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n{}",
            common::KEY,
            "f".repeat(filler),
            if end { "\r\n" } else { "" }
        );
        let _ = stream.write_all(head.as_bytes());
        let (status, body) = common::read_response(&mut stream)
            .unwrap()
            .expect("an answer");
        let kind = serde_json::from_slice::<serde_json::Value>(&body)
            .map(|problem| problem["type"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        (status, kind)
    };
    let (api, small_api) = (server.api, small.api);
    let answers = tokio::task::spawn_blocking(move || {
        [
            ask(api, 30_000, true),
            ask(api, 100_000, true),
            ask(api, 60_000, false),
            ask(small_api, 500, true),
            ask(small_api, 2_000, true),
        ]
    })
    .await
    .unwrap();
    let too_large = (431, "urn:kvserve:problem:headers-too-large".to_owned());
    assert_eq!(answers[0].0, 200, "30 KB of headers fit the default 32 KiB");
    assert_eq!(answers[1], too_large, "100 KB of headers");
    assert_eq!(answers[2], too_large, "60 KB of an unfinished head");
    assert_eq!(answers[3].0, 200, "500 bytes under --max-header-bytes 1KiB");
    assert_eq!(answers[4], too_large, "2 KB under --max-header-bytes 1KiB");
    server.stop().await.unwrap();
    small.stop().await.unwrap();
}
