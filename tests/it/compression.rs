//! Response compression (docs/API.md, "Compression"): zstd and gzip by `Accept-Encoding` for
//! the `/v1` answers above `--compress-min-bytes`, `Vary`, per-coding `ETag`s, 304s,
//! HEAD, and the legacy route left identity.

use std::io::Read;

use crate::common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const BIG: &str = "5b0c3d1e-7f6a-4b8c-9d0e-1f2a3b4c5d6e";

/// A value of about 8 KiB that compresses the way text does, not to nothing.
fn big_value() -> String {
    (0..800)
        .map(|i| format!("w{} ", (i * 7919) % 1000))
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// 100 keys with 60-byte values, for a batch answer of about 10 KiB.
fn batch_keys() -> Vec<String> {
    (0..100)
        .map(|i| format!("{i:08x}-0000-4000-8000-{:012x}", i * 31))
        .collect()
}

async fn server(extra: &[&str]) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lines = sample_lines();
    lines += &format!("{BIG} {}\n", big_value());
    for (i, key) in batch_keys().iter().enumerate() {
        lines += &format!(
            "{key} value number {i} of the batch, {}\n",
            "x y z ".repeat(7)
        );
    }
    let data = write_file(dir.path(), "test.data", lines);
    let server = TestServer::start(&data, extra).await;
    (dir, server)
}

async fn get(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = s.client.get(s.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request")
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    match encoding {
        None => body.to_vec(),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip");
            out
        }
        Some("zstd") => zstd::decode_all(body).expect("valid zstd"),
        Some(other) => panic!("unexpected coding {other}"),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("text header"))
}

/// (Content-Encoding, ETag, decoded body) of one answer, after checking `Vary`.
async fn fetch(resp: reqwest::Response) -> (Option<String>, Option<String>, Vec<u8>) {
    assert_eq!(resp.status(), 200, "{}", resp.url());
    let headers = resp.headers().clone();
    assert_eq!(header(&headers, "vary"), Some("accept-encoding"));
    let coding = header(&headers, "content-encoding").map(str::to_owned);
    let body = resp.bytes().await.expect("body");
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string().as_str())
    );
    let decoded = decode(coding.as_deref(), &body);
    // Large answers compress; a small one (identity refused) may not shrink.
    if coding.is_some() && decoded.len() >= 1024 {
        assert!(
            body.len() * 2 < decoded.len(),
            "compressed to {}",
            body.len()
        );
    }
    (coding, header(&headers, "etag").map(str::to_owned), decoded)
}

#[tokio::test]
async fn large_values_round_trip_in_zstd_and_gzip() {
    let (_dir, s) = server(&[]).await;
    for path in [format!("/v1/keys/{BIG}/value"), format!("/v1/keys/{BIG}")] {
        let (coding, identity_etag, identity) = fetch(get(&s, &path, &[]).await).await;
        assert_eq!(coding, None);
        let identity_etag = identity_etag.expect("etag");
        let stem = identity_etag.trim_end_matches('"');
        for (accept, expected, suffix) in [
            ("zstd", "zstd", "-zst"),
            ("gzip", "gzip", "-gz"),
            ("gzip, deflate, br, zstd", "zstd", "-zst"),
            ("gzip;q=1, zstd;q=0.5", "gzip", "-gz"),
            ("*", "zstd", "-zst"),
        ] {
            let resp = get(&s, &path, &[("accept-encoding", accept)]).await;
            let (coding, etag, body) = fetch(resp).await;
            assert_eq!(coding.as_deref(), Some(expected), "{path} {accept}");
            assert_eq!(etag, Some(format!("{stem}{suffix}\"")), "{path} {accept}");
            assert_eq!(body, identity, "{path} {accept}");
        }
        for accept in ["br", "zstd;q=0, gzip;q=0", "identity", "*;q=0.5, identity"] {
            let resp = get(&s, &path, &[("accept-encoding", accept)]).await;
            let (coding, etag, _) = fetch(resp).await;
            assert_eq!(coding, None, "{path} {accept}");
            assert_eq!(etag.as_deref(), Some(identity_etag.as_str()));
        }
    }
    let value = get(
        &s,
        &format!("/v1/keys/{BIG}/value"),
        &[("accept-encoding", "zstd")],
    )
    .await;
    assert_eq!(fetch(value).await.2, big_value().as_bytes());
}

#[tokio::test]
async fn batch_answers_round_trip_in_zstd_and_gzip() {
    let (_dir, s) = server(&[]).await;
    let body = json!({ "keys": batch_keys() }).to_string();
    let post = |accept: Option<&'static str>| {
        let mut req = s
            .client
            .post(s.url("/v1/keys/batch"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(accept) = accept {
            req = req.header("accept-encoding", accept);
        }
        req.send()
    };
    let (coding, _, identity) = fetch(post(None).await.unwrap()).await;
    assert_eq!(coding, None);
    let parsed: Value = serde_json::from_slice(&identity).unwrap();
    assert_eq!(parsed["values"].as_object().unwrap().len(), 100);
    for (accept, expected) in [("gzip", "gzip"), ("zstd", "zstd"), ("gzip, zstd", "zstd")] {
        let (coding, _, decoded) = fetch(post(Some(accept)).await.unwrap()).await;
        assert_eq!(coding.as_deref(), Some(expected));
        assert_eq!(decoded, identity);
    }
}

#[tokio::test]
async fn small_answers_and_errors_stay_identity_with_vary() {
    let (_dir, s) = server(&[]).await;
    let accept = [("accept-encoding", "gzip, deflate, br, zstd")];
    let (coding, _, body) = fetch(get(&s, &format!("/v1/keys/{KEY}"), &accept).await).await;
    assert_eq!(coding, None);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"key": KEY, "value": VALUE})
    );
    for path in [
        format!("/v1/keys/{MISSING}"),
        "/v1/keys/nope/value".to_owned(),
    ] {
        let resp = get(&s, &path, &accept).await;
        assert_eq!(header(resp.headers(), "vary"), Some("accept-encoding"));
        assert_eq!(header(resp.headers(), "content-encoding"), None);
        assert!(resp.status().is_client_error());
    }
    // Identity refused: even a small answer is compressed.
    let refused = [("accept-encoding", "gzip, identity;q=0")];
    let (coding, _, body) = fetch(get(&s, &format!("/v1/keys/{KEY}/value"), &refused).await).await;
    assert_eq!(coding.as_deref(), Some("gzip"));
    assert_eq!(body, VALUE.as_bytes());
    // Nothing acceptable: identity anyway, not 406.
    let nothing = [("accept-encoding", "br, identity;q=0")];
    let (coding, _, body) = fetch(get(&s, &format!("/v1/keys/{BIG}/value"), &nothing).await).await;
    assert_eq!(coding, None);
    assert_eq!(body, big_value().as_bytes());
}

#[tokio::test]
async fn threshold_and_switch_are_flags() {
    let (_dir, s) = server(&["--compress-min-bytes", "0"]).await;
    let resp = get(
        &s,
        &format!("/v1/keys/{KEY}"),
        &[("accept-encoding", "zstd")],
    )
    .await;
    assert_eq!(fetch(resp).await.0.as_deref(), Some("zstd"));
    let (_dir, s) = server(&["--compression", "false"]).await;
    let resp = get(
        &s,
        &format!("/v1/keys/{BIG}"),
        &[("accept-encoding", "zstd")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-encoding"), None);
    assert_eq!(header(resp.headers(), "vary"), None);
}

#[tokio::test]
async fn etags_match_any_coding_and_304_names_the_one_asked_for() {
    let (_dir, s) = server(&[]).await;
    let path = format!("/v1/keys/{BIG}/value");
    let plain = get(&s, &path, &[]).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let stem = plain.trim_end_matches('"');
    let (zst, gz) = (format!("{stem}-zst\""), format!("{stem}-gz\""));
    for (accept, held, expected) in [
        ("zstd", zst.as_str(), zst.as_str()),
        ("zstd", plain.as_str(), zst.as_str()),
        ("gzip", zst.as_str(), gz.as_str()),
        ("", gz.as_str(), plain.as_str()),
        ("gzip", &format!("W/{gz}"), gz.as_str()),
    ] {
        let resp = get(
            &s,
            &path,
            &[("accept-encoding", accept), ("if-none-match", held)],
        )
        .await;
        assert_eq!(resp.status(), 304, "{accept} {held}");
        assert_eq!(
            header(resp.headers(), "etag"),
            Some(expected),
            "{accept} {held}"
        );
        assert_eq!(header(resp.headers(), "vary"), Some("accept-encoding"));
        assert_eq!(header(resp.headers(), "content-encoding"), None);
    }
    // A small answer's 304 names the identity tag, as its 200 would.
    let small = format!("/v1/keys/{KEY}");
    let plain_small = get(&s, &small, &[]).await.headers()["etag"].clone();
    let held = format!(
        "{}-zst\"",
        plain_small.to_str().unwrap().trim_end_matches('"')
    );
    let resp = get(
        &s,
        &small,
        &[("accept-encoding", "zstd"), ("if-none-match", &held)],
    )
    .await;
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], plain_small);
    // Another coding suffix is not one of this entity's tags.
    let other = format!("{stem}-br\"");
    let resp = get(
        &s,
        &path,
        &[("accept-encoding", "zstd"), ("if-none-match", &other)],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn head_carries_the_headers_of_get() {
    let (_dir, s) = server(&[]).await;
    for path in [format!("/v1/keys/{BIG}/value"), format!("/v1/keys/{BIG}")] {
        for accept in ["zstd", "gzip", ""] {
            let send = |method| {
                s.client
                    .request(method, s.url(&path))
                    .header("accept-encoding", accept)
                    .send()
            };
            let get = send(reqwest::Method::GET).await.unwrap();
            let head = send(reqwest::Method::HEAD).await.unwrap();
            assert_eq!(head.status(), 200);
            for name in [
                "content-encoding",
                "content-length",
                "etag",
                "vary",
                "content-type",
            ] {
                assert_eq!(
                    header(head.headers(), name),
                    header(get.headers(), name),
                    "{path} {accept} {name}"
                );
            }
        }
    }
}

#[tokio::test]
async fn legacy_route_never_compresses() {
    let (_dir, s) = server(&[]).await;
    let path = format!("/get_value/{BIG}");
    let plain = get(&s, &path, &[]).await;
    let plain_headers = plain.headers().clone();
    let plain_body = plain.bytes().await.unwrap();
    // python requests' default, and more.
    for accept in [
        "gzip, deflate",
        "gzip, deflate, br, zstd",
        "zstd, identity;q=0",
    ] {
        let resp = get(&s, &path, &[("accept-encoding", accept)]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(resp.headers(), "content-encoding"), None);
        assert_eq!(header(resp.headers(), "vary"), None);
        let mut headers = resp.headers().clone();
        headers.remove("date");
        headers.remove("x-request-id");
        let mut expected = plain_headers.clone();
        expected.remove("date");
        expected.remove("x-request-id");
        assert_eq!(headers, expected);
        assert_eq!(resp.bytes().await.unwrap(), plain_body);
    }
}
