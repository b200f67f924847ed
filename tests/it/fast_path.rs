//! The hot routes are answered by the fast path on hyper's request
//! (`http::fast::serve`) or, when it steps aside, by the OpenAPI operations behind
//! poem's router. `differential` proves the two equal on generated requests; these
//! tests hold them equal on chosen ones (`--fast-path false` for the framework path),
//! for good requests and for every refusal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const SECRET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/hs256.secret"
);

fn token(scope: &str) -> String {
    token_for(scope, "local")
}

fn token_for(scope: &str, sub: &str) -> String {
    let out = Command::new(binary())
        .args([
            "token",
            "--secret-file",
            SECRET,
            "--scope",
            scope,
            "--sub",
            sub,
        ])
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

/// Starts two servers on `data` with `args` and waits until both are ready: one as
/// configured, where the fast path answers, and one with `--fast-path false`, where
/// the framework answers. Every test here compares the two.
fn spawn_both(data: &Path, args: &[&str]) -> (Process, Process) {
    let fast = spawn_binary(data, args);
    let mut framework_args = args.to_vec();
    framework_args.extend(["--fast-path", "false"]);
    let framework = spawn_binary(data, &framework_args);
    for p in [&fast, &framework] {
        wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    }
    (fast, framework)
}

/// Kills and reaps the two servers of `spawn_both`.
fn stop_both(fast: &mut Process, framework: &mut Process) {
    for p in [fast, framework] {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
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
        "--subject-rate-limit",
        "1000",
        "--max-uri-bytes",
        "300",
        "--key-prefixes",
        "0-7",
    ];
    let (mut fast, mut framework) = spawn_both(&data, &args);
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
    stop_both(&mut fast, &mut framework);
}

/// Over either rate limit, both paths refuse alike, headers (`RateLimit` values
/// included) and body: the per-address limit before the token is looked at, the
/// per-subject limit after.
#[test]
fn rate_limited_answers_are_alike() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "r.data", sample_lines());
    let args = [
        "--jwt-hs256-secret-file",
        SECRET,
        "--trust-forwarded-for",
        "--rate-limit",
        "1",
        "--rate-limit-burst",
        "3",
        "--subject-rate-limit",
        "1",
        "--subject-rate-limit-burst",
        "1",
    ];
    let (mut fast, mut framework) = spawn_both(&data, &args);
    let path = format!("/v1/keys/{KEY}");
    let request = |client: &str, bearer: Option<&str>| {
        let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n{auth}Connection: close\r\n\r\n"
        )
    };
    let alice = token_for("kv:read", "alice");
    // One address with no token: 3 × 401 (the burst), then 429 without a token check.
    // One subject: 200, then 429 from the subject limit.
    let scenarios: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![request("192.0.2.1", None); 4],
            vec!["401", "401", "401", "429"],
        ),
        (
            vec![request("192.0.2.2", Some(&alice)); 2],
            vec!["200", "429"],
        ),
    ];
    for (requests, expected) in scenarios {
        // Each server gets the whole scenario at once, so the buckets' refill (1 per
        // second) plays no part.
        let a: Vec<_> = requests.iter().map(|r| exchange(fast.api, r)).collect();
        let b: Vec<_> = requests
            .iter()
            .map(|r| exchange(framework.api, r))
            .collect();
        for ((a, b), status) in a.into_iter().zip(b).zip(expected) {
            assert!(a.0.contains(status), "{} instead of {status}", a.0);
            assert!(a.1.iter().any(|h| h.starts_with("ratelimit:")), "{:?}", a.1);
            assert_eq!(a, b, "{status}");
        }
    }
    stop_both(&mut fast, &mut framework);
}

/// `If-None-Match` sent on several field lines is one list (RFC 9110 §5.3): the ETag
/// on any line gives 304, whichever line comes first, on both paths and every
/// conditional route, with the same headers; no line matching still gives 200.
#[test]
fn repeated_if_none_match_lines_are_one_list() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "inm.data", sample_lines());
    let (mut fast, mut framework) = spawn_both(&data, &[]);
    let get = |path: &str, lines: &[&str]| {
        let conditions: String = lines
            .iter()
            .map(|l| format!("If-None-Match: {l}\r\n"))
            .collect();
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{conditions}Connection: close\r\n\r\n")
    };
    let (_, headers, _) = exchange(fast.api, &get(&format!("/v1/keys/{KEY}"), &[]));
    let etag = headers
        .iter()
        .find_map(|h| h.strip_prefix("etag: "))
        .expect("an etag")
        .to_owned();
    let weak = format!("W/{etag}");
    for path in [format!("/v1/keys/{KEY}"), format!("/v1/keys/{KEY}/value")] {
        for (lines, status) in [
            (vec!["\"x\"", etag.as_str()], "304"),
            (vec![etag.as_str(), "\"x\""], "304"),
            (vec!["\"x\", \"y\"", weak.as_str()], "304"),
            (vec!["\"x\"", "*"], "304"),
            (vec!["\"x\"", "\"y\""], "200"),
        ] {
            let request = get(&path, &lines);
            let a = exchange(fast.api, &request);
            let b = exchange(framework.api, &request);
            assert!(a.0.contains(status), "{path} {lines:?}: {}", a.0);
            assert_eq!(a, b, "{path} {lines:?}");
        }
    }
    stop_both(&mut fast, &mut framework);
}

/// Refusals on the hot routes (401, 403, 414) are counted under their route, not
/// `unmatched`, on both paths; a path no route knows stays `unmatched`.
#[test]
fn refusals_are_counted_under_their_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "m.data", sample_lines());
    let args = ["--jwt-hs256-secret-file", SECRET, "--max-uri-bytes", "300"];
    let (mut fast, mut framework) = spawn_both(&data, &args);
    let admin_only = token("kv:admin");
    let long = "a".repeat(400);
    let cases = [
        (format!("/v1/keys/{KEY}"), None, "/v1/keys/{key}", "401"),
        (
            format!("/v1/keys/{KEY}/value"),
            None,
            "/v1/keys/{key}/value",
            "401",
        ),
        (
            format!("/get_value/{KEY}"),
            Some(&admin_only),
            "/get_value/{key}",
            "403",
        ),
        (format!("/v1/keys/{long}"), None, "/v1/keys/{key}", "414"),
        ("/no/such/route".to_owned(), None, "unmatched", "401"),
    ];
    for p in [&fast, &framework] {
        for (path, bearer, _, status) in &cases {
            let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
            let (line, _, _) = exchange(p.api, &request);
            assert!(line.contains(status), "{path}: {line}");
        }
        let (_, _, body) = exchange(
            p.admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8(body).unwrap();
        for (_, _, route, status) in &cases {
            let name = format!(
                "kvserve_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"{status}\"}}"
            );
            assert_eq!(series(&text, &name), Some(1.0), "{name}\n{text}");
        }
    }
    stop_both(&mut fast, &mut framework);
}

/// Issue 25 item 11: a request whose body the answer leaves unread ends its
/// connection, and the answer says so (`Connection: close`, RFC 9112 §9.6), on both
/// paths and whatever the body's framing. A GET with a chunked body got
/// `Connection: close` on the fast path only; a GET with a 200 kB body got neither,
/// and its connection was closed under the next request.
#[test]
fn an_unread_request_body_closes_the_connection_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "f.data", sample_lines());
    let (mut fast, mut framework) = spawn_both(&data, &[]);
    let big = "x".repeat(200_000);
    for p in [&fast, &framework] {
        for path in [format!("/v1/keys/{KEY}"), "/openapi.json".to_owned()] {
            for body in [
                "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned(),
                format!("Content-Length: {}\r\n\r\n{big}", big.len()),
            ] {
                let mut stream = TcpStream::connect(p.api).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{body}");
                stream.write_all(request.as_bytes()).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
                let what = format!("{path} with {}", &body[..20]);
                assert!(head.starts_with("http/1.1 200"), "{what}: {head}");
                assert!(head.contains("\r\nconnection: close\r\n"), "{what}: {head}");
            }
        }
    }
    stop_both(&mut fast, &mut framework);
}
