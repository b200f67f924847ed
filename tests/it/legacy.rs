//! The legacy `/get_value/{key}` route against the old FastAPI service's answers, as
//! observed from FastAPI 0.165.0 / Starlette 1.10.0 / pydantic 2.13.4 / uvicorn 0.54.0
//! running `tests/external/old_service.py` (tests/external/run.py `legacy-compat`
//! compares the two services on generated paths). Every case runs with the fast path
//! on and off: both must answer it.

use crate::common::*;

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A data file with keys of other UUID versions than 4, present.
fn data(dir: &std::path::Path) -> std::path::PathBuf {
    write_file(
        dir,
        "legacy.data",
        format!(
            "{KEY} {VALUE}\n\
             6ba7b810-9dad-11d1-80b4-00c04fd430c8 version one\n\
             00000000-0000-0000-0000-000000000000 nil\n\
             ffffffff-ffff-ffff-ffff-ffffffffffff max\n\
             017f22e2-79b0-7cc3-98c4-dc0c0c07398f version seven\n"
        ),
    )
}

async fn servers(dir: &std::path::Path) -> Vec<TestServer> {
    let data = data(dir);
    vec![
        TestServer::start(&data, &["--fast-path", "true"]).await,
        TestServer::start(&data, &["--fast-path", "false"]).await,
    ]
}

/// Status, content type, location and body of `GET path`.
async fn get(s: &TestServer, path: &str) -> (u16, String, String, String) {
    let resp = client().get(s.url(path)).send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, ct, location) = (
        resp.status().as_u16(),
        header("content-type"),
        header("location"),
    );
    (status, ct, location, resp.text().await.unwrap())
}

/// pydantic's 422 for a key that parses as a UUID of another version than 4 (or of
/// version 4 with a variant other than RFC 9562's), `input` as FastAPI received it.
fn uuid_version_error(input: &str) -> String {
    format!(
        r#"{{"detail":[{{"type":"uuid_version","loc":["path","key"],"msg":"UUID version 4 expected","input":"{input}","ctx":{{"expected_version":4}}}}]}}"#
    )
}

/// The old service's key was pydantic's `UUID4` (issue 16: the real service answered
/// `uuid_version` 422s): only version 4 of the RFC variant passes. Every other UUID is
/// its 422, even one the data file holds; `/v1` still finds that one.
#[tokio::test]
async fn keys_must_be_version_4_like_the_old_services_uuid4() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        for (path, input) in [
            // Present in the data file.
            (
                "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
                "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            ),
            (
                "00000000-0000-0000-0000-000000000000",
                "00000000-0000-0000-0000-000000000000",
            ),
            (
                "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
                "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            ),
            (
                "%7B017f22e2-79b0-7cc3-98c4-dc0c0c07398f%7D",
                "{017f22e2-79b0-7cc3-98c4-dc0c0c07398f}",
            ),
            // Absent: versions 1, 7, 3, 5, 0, 15; version 4 of the NCS, Microsoft and
            // future variants.
            (
                "6ba7b810-9dad-11e4-80b4-00c04fd430c8",
                "6ba7b810-9dad-11e4-80b4-00c04fd430c8",
            ),
            (
                "6ba7b810-9dad-7e4f-80b4-00c04fd430c8",
                "6ba7b810-9dad-7e4f-80b4-00c04fd430c8",
            ),
            (
                "urn:uuid:6ba7b810-9dad-31d1-80b4-00c04fd430c8",
                "urn:uuid:6ba7b810-9dad-31d1-80b4-00c04fd430c8",
            ),
            (
                "6ba7b8109dad51d180b400c04fd430c8",
                "6ba7b8109dad51d180b400c04fd430c8",
            ),
            (
                "6ba7b810-9dad-01d1-80b4-00c04fd430c8",
                "6ba7b810-9dad-01d1-80b4-00c04fd430c8",
            ),
            (
                "6ba7b810-9dad-f1d1-80b4-00c04fd430c8",
                "6ba7b810-9dad-f1d1-80b4-00c04fd430c8",
            ),
            (
                "6ba7b810-9dad-41d1-70b4-00c04fd430c8",
                "6ba7b810-9dad-41d1-70b4-00c04fd430c8",
            ),
            (
                "6ba7b810-9dad-41d1-c0b4-00c04fd430c8",
                "6ba7b810-9dad-41d1-c0b4-00c04fd430c8",
            ),
            (
                "6ba7b810-9dad-41d1-f0b4-00c04fd430c8",
                "6ba7b810-9dad-41d1-f0b4-00c04fd430c8",
            ),
        ] {
            let got = get(&s, &format!("/get_value/{path}")).await;
            let want = (
                422,
                "application/json".into(),
                String::new(),
                uuid_version_error(input),
            );
            assert_eq!(got, want, "{path}");
        }
        // Version 4 of the RFC variant (8, 9, a, b), in any spelling: looked up.
        for path in [
            "6ba7b810-9dad-41d1-80b4-00c04fd430c8",
            "6BA7B810-9DAD-41D1-B0B4-00C04FD430C8",
            "{6ba7b810-9dad-41d1-90b4-00c04fd430c8}",
            "urn:uuid:6ba7b810-9dad-41d1-a0b4-00c04fd430c8",
        ] {
            let got = get(&s, &format!("/get_value/{path}")).await;
            let want = r#"{"detail":"Key not found"}"#;
            let want = (404, "application/json".into(), String::new(), want.into());
            assert_eq!(got, want, "{path}");
        }
        let got = get(&s, &format!("/get_value/{}", KEY.to_uppercase())).await;
        let want = format!(r#"{{"key":"{KEY}","value":"{VALUE}"}}"#);
        assert_eq!(got, (200, "application/json".into(), String::new(), want));
        // `/v1` takes every version: the keys the legacy route refuses are found there.
        for key in [
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "017f22e2-79b0-7cc3-98c4-dc0c0c07398f",
        ] {
            let resp = client()
                .get(s.url(&format!("/v1/keys/{key}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{key}");
        }
    }
}

/// A path whose escapes are not UTF-8: Python decodes it with U+FFFD, pydantic says
/// it is not a UUID.
#[tokio::test]
async fn percent_escapes_that_are_not_utf8_are_decoded_with_replacement_characters() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        let got = get(&s, "/get_value/4Bn%E8C2%7B").await;
        let want = r#"{"detail":[{"type":"uuid_parsing","loc":["path","key"],"msg":"Input should be a valid UUID, invalid character: found `n` at 3","input":"4Bn\uFFFDC2{","ctx":{"error":"invalid character: found `n` at 3"}}]}"#;
        let want = want.replace("\\uFFFD", "\u{FFFD}");
        assert_eq!(got, (422, "application/json".into(), String::new(), want));
        let got = get(&s, "/get_value/%80").await;
        // As the old service answers it (curl'd): one U+FFFD, rejected as a character.
        let want = "{\"detail\":[{\"type\":\"uuid_parsing\",\"loc\":[\"path\",\"key\"],\"msg\":\"Input should be a valid UUID, invalid character: found `\u{FFFD}` at 1\",\"input\":\"\u{FFFD}\",\"ctx\":{\"error\":\"invalid character: found `\u{FFFD}` at 1\"}}]}";
        assert_eq!(
            got,
            (422, "application/json".into(), String::new(), want.into())
        );
    }
}

/// Starlette's `redirect_slashes`: a path that matches no route but would without its
/// trailing slashes is sent there with a 307 to an absolute URL built from `Host`,
/// the query kept.
#[tokio::test]
async fn trailing_slashes_redirect_like_starlette() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        let host = s.api.to_string();
        for (path, location) in [
            (format!("/get_value/{KEY}/"), format!("/get_value/{KEY}")),
            (format!("/get_value/{KEY}//"), format!("/get_value/{KEY}")),
            (format!("/get_value/{KEY}%2F"), format!("/get_value/{KEY}")),
            (
                "/get_value/abc/?a=1&b=%20".into(),
                "/get_value/abc?a=1&b=%20".into(),
            ),
            (
                "/get_value/%E8%7B/".into(),
                "/get_value/%EF%BF%BD%7B".into(),
            ),
            ("/get_value/a%3Fb%23/".into(), "/get_value/a%3Fb%23".into()),
        ] {
            let got = get(&s, &path).await;
            let want = (
                307,
                String::new(),
                format!("http://{host}{location}"),
                String::new(),
            );
            assert_eq!(got, want, "{path}");
        }
        // The authority is the Host header's when it is a valid one.
        let resp = client()
            .get(s.url(&format!("/get_value/{KEY}/")))
            .header("host", "kv.example:8443")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307);
        assert_eq!(
            resp.headers()["location"],
            format!("http://kv.example:8443/get_value/{KEY}")
        );
        assert_eq!(resp.headers()["content-length"], "0");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert!(resp.headers().contains_key("x-request-id"));
    }
}

/// Paths under `/get_value` that no route takes: FastAPI's own 404 body.
#[tokio::test]
async fn unrouted_legacy_paths_are_fastapis_not_found() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        for path in [
            "/get_value/",
            "/get_value",
            "/get_value//",
            "/get_value/a%2Fb",
            &format!("/get_value/{KEY}/x"),
            &format!("/get_value/{KEY}/;x"),
        ] {
            let got = get(&s, path).await;
            let want = r#"{"detail":"Not Found"}"#;
            assert_eq!(
                got,
                (404, "application/json".into(), String::new(), want.into()),
                "{path}"
            );
        }
        // A decoded `/get_value/` prefix is the route too, as Starlette matches it.
        let got = get(&s, &format!("/get_value%2F{KEY}")).await;
        let want = format!(r#"{{"key":"{KEY}","value":"{VALUE}"}}"#);
        assert_eq!(got, (200, "application/json".into(), String::new(), want));
    }
}

/// One request on its own connection: status and the raw response head.
fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let head = out.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    (head[9..12].parse().unwrap(), head)
}

/// Issue 25 item 14: `Deprecation` is RFC 9745's sf-date (`@<epoch seconds>`, it was
/// `true`): the day `/v1`, the successor, was first released, 2026-11-26 UTC.
#[tokio::test]
async fn deprecation_is_an_rfc_9745_date() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        for path in [
            format!("/get_value/{KEY}"),
            format!("/get_value/{KEY}/"),
            "/get_value/nope".to_owned(),
        ] {
            let resp = client().get(s.url(&path)).send().await.unwrap();
            let value = resp.headers()["deprecation"].to_str().unwrap();
            let seconds: u64 = value
                .strip_prefix('@')
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{path}: `{value}` is no sf-date"));
            // 2026-11-26T00:00:00Z.
            assert_eq!(seconds, 1_795_651_200, "{path}");
        }
    }
}

/// Issue 25 item 15: the legacy route's redirect is one route's answer, however the
/// trailing slash is spelled: `/get_value/K/` (answered before poem's router) was
/// counted as `route="unmatched"`, `/get_value/K%2F` as `/get_value/{key}`.
#[tokio::test]
async fn legacy_redirects_are_labelled_as_the_legacy_route() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        for path in [format!("/get_value/{KEY}/"), format!("/get_value/{KEY}%2F")] {
            assert_eq!(get(&s, &path).await.0, 307, "{path}");
        }
        let text = s.metrics_text().await;
        let series = |route: &str| {
            series(
                &text,
                &format!(
                    "kvserve_http_requests_total{{method=\"GET\",route=\"{route}\",status=\"307\"}}"
                ),
            )
        };
        assert_eq!(series("/get_value/{key}"), Some(2.0), "{text}");
        assert_eq!(series("unmatched"), None, "{text}");
    }
}

/// Issue 25 item 19: `If-None-Match: *` on a key that exists is a 304 (RFC 9110
/// §13.1.2; it was 200), with the route's `Deprecation` and `Link`; a missing key
/// stays 404, and tags never match (the route sends no `ETag`). `If-Match` with a tag
/// is 412 for the same reason; `*` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_preconditions_follow_rfc_9110() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        let missing = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
        for method in ["GET", "HEAD"] {
            let send = |key: &str, condition: &str| {
                raw(
                    s.api,
                    &format!(
                        "{method} /get_value/{key} HTTP/1.1\r\nHost: x\r\n{condition}\r\n\
                         Connection: close\r\n\r\n"
                    ),
                )
            };
            let (status, head) = send(KEY, "If-None-Match: *");
            assert_eq!(status, 304, "{method}: {head}");
            assert!(head.contains("deprecation: @1795651200"), "{head}");
            assert!(head.contains("link: </v1/keys/"), "{head}");
            assert_eq!(send(KEY, "If-None-Match: \"x\"").0, 200, "{method}");
            assert_eq!(send(missing, "If-None-Match: *").0, 404, "{method}");
            assert_eq!(send(KEY, "If-Match: \"x\"").0, 412, "{method}");
            assert_eq!(send(KEY, "If-Match: *").0, 200, "{method}");
            assert_eq!(send(missing, "If-Match: \"x\"").0, 404, "{method}");
        }
    }
}

/// Issue 25 item 12: with an absolute-form target the redirect names the target's
/// authority, not the `Host` header's (RFC 9112 §3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_redirect_uses_the_targets_authority() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        let (status, head) = raw(
            s.api,
            &format!(
                "GET http://kv.example:8443/get_value/{KEY}/?a=1 HTTP/1.1\r\n\
                 Host: other.example\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 307, "{head}");
        assert!(
            head.contains(&format!(
                "location: http://kv.example:8443/get_value/{KEY}?a=1\r\n"
            )),
            "{head}"
        );
    }
}
