//! The hot routes have two implementations of their request handling: the fast path
//! on hyper's request (`http::fast::serve`) and the poem middleware chain, which
//! answers them when the fast path steps aside (traces on). Both must answer alike:
//! same status, headers and body, for good requests and for every refusal.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

const SECRET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/hs256.secret"
);

fn token(scope: &str) -> String {
    let out = Command::new(binary())
        .args(["token", "--secret-file", SECRET, "--scope", scope])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Status line, headers (sorted, without the ones that differ per request) and body.
fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<String>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let mut headers: Vec<String> = lines
        .map(str::to_ascii_lowercase)
        .filter(|h| !h.starts_with("date:") && !h.starts_with("x-request-id:"))
        .collect();
    headers.sort();
    (status, headers, raw[split + 4..].to_vec())
}

#[test]
fn fast_path_and_framework_path_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "f.data", sample_lines());
    let args = [
        "--jwt-hs256-secret-file",
        SECRET,
        "--rate-limit",
        "1000",
        "--max-uri-bytes",
        "300",
        "--key-prefixes",
        "0-7",
    ];
    let mut fast = spawn_binary(&data, &args);
    // Traces on (to an address nobody listens on): the fast path steps aside.
    let mut framework = spawn_binary_with_env(
        &data,
        &args,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")],
    );
    for p in [&fast, &framework] {
        wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    }
    let read = token("kv:read");
    let admin_only = token("kv:admin");
    // 0-7 owns keys starting with 0 (KEY2) and 7 (KEY), not the one starting with A.
    let (owned, also_owned) = (KEY2, KEY);
    let not_owned = "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE";
    let long = "a".repeat(400);
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (format!("/v1/keys/{owned}"), Some(&read), ""),
        (format!("/v1/keys/{also_owned}"), Some(&read), ""),
        (format!("/v1/keys/{owned}/value"), Some(&read), ""),
        (format!("/get_value/{owned}"), Some(&read), ""),
        (format!("/v1/keys/{MISSING}"), Some(&read), ""),
        (format!("/get_value/{MISSING}"), Some(&read), ""),
        ("/v1/keys/not-a-uuid".to_owned(), Some(&read), ""),
        ("/get_value/not-a-uuid".to_owned(), Some(&read), ""),
        (
            "/v1/keys/%7B0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11%7D".to_owned(),
            Some(&read),
            "",
        ),
        ("/v1/keys/%FF".to_owned(), Some(&read), ""),
        (format!("/v1/keys/{not_owned}"), Some(&read), ""),
        (format!("/v1/keys/{owned}"), None, ""),
        (format!("/v1/keys/{owned}"), Some("not.a.jwt"), ""),
        (format!("/v1/keys/{owned}"), Some(&admin_only), ""),
        (format!("/v1/keys/{owned}?access_token=x"), Some(&read), ""),
        (format!("/v1/keys/{long}"), Some(&read), ""),
        (
            format!("/v1/keys/{owned}"),
            Some(&read),
            "If-None-Match: *\r\n",
        ),
    ];
    for method in ["GET", "HEAD"] {
        for (path, bearer, extra) in &cases {
            let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Connection: close\r\n\r\n"
            );
            let a = exchange(fast.api, &request);
            let b = exchange(framework.api, &request);
            // The rate limit's `RateLimit` header counts down per client: compare its
            // presence, not its value.
            let strip = |(status, headers, body): (String, Vec<String>, Vec<u8>)| {
                let headers: Vec<String> = headers
                    .into_iter()
                    .map(|h| {
                        if h.starts_with("ratelimit:") {
                            "ratelimit: …".into()
                        } else {
                            h
                        }
                    })
                    .collect();
                (status, headers, body)
            };
            assert_eq!(strip(a), strip(b), "{method} {path} {bearer:?} {extra:?}");
        }
    }
    for p in [&mut fast, &mut framework] {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
}
