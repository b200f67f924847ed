//! The HTTP contract of docs/API.md, through a real server on 127.0.0.1:0.

use crate::common::*;
use serde_json::{json, Value};

async fn server() -> (tempfile::TempDir, TestServer) {
    TestServer::with_sample(&[]).await
}

#[tokio::test]
async fn get_key_returns_canonical_key_value_etag_and_cache_control() {
    let (_dir, s) = server().await;
    for form in [
        KEY.to_owned(),
        KEY.to_uppercase(),
        KEY.replace('-', ""),
        format!("{{{KEY}}}"),
        format!("urn:uuid:{KEY}"),
    ] {
        let resp = s.get(&format!("/v1/keys/{form}")).await;
        assert_eq!(resp.status(), 200, "{form}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["cache-control"], "public, max-age=60");
        assert!(resp.headers()["etag"].to_str().unwrap().starts_with('"'));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"key": KEY, "value": VALUE}));
    }
    let body: Value = s
        .get("/v1/keys/aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"key": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "value": "upper"})
    );
    let body: Value = s
        .get("/v1/keys/11111111-1111-4111-8111-111111111111")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["value"], "");
}

#[tokio::test]
async fn non_ascii_and_quotes_round_trip() {
    let (_dir, s) = server().await;
    let body: Value = s
        .get(&format!("/v1/keys/{KEY2}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["value"], VALUE2);
    let raw = s.get(&format!("/v1/keys/{KEY2}/value")).await;
    assert_eq!(raw.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(raw.text().await.unwrap(), VALUE2);
}

#[tokio::test]
async fn if_none_match_gives_304_with_the_same_etag() {
    let (_dir, s) = server().await;
    let first = s.get(&format!("/v1/keys/{KEY}")).await;
    let etag = first.headers()["etag"].clone();
    for path in [format!("/v1/keys/{KEY}"), format!("/v1/keys/{KEY}/value")] {
        let resp = s
            .client
            .get(s.url(&path))
            .header("If-None-Match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "{path}");
        assert_eq!(resp.headers()["etag"], etag);
        assert_eq!(resp.headers()["cache-control"], "public, max-age=60");
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    let weak = format!("\"nope\", W/{}", etag.to_str().unwrap());
    let resp = s
        .client
        .get(s.url(&format!("/v1/keys/{KEY}")))
        .header("If-None-Match", weak)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    let resp = s
        .client
        .get(s.url(&format!("/v1/keys/{KEY}")))
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A conditional request for a missing key is still a 404, never a 304.
    let resp = s
        .client
        .get(s.url(&format!("/v1/keys/{MISSING}")))
        .header("If-None-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn head_has_get_headers_and_no_body() {
    let (_dir, s) = server().await;
    let get = s.get(&format!("/v1/keys/{KEY}")).await;
    let head = s
        .client
        .head(s.url(&format!("/v1/keys/{KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    for name in ["etag", "cache-control", "content-type", "content-length"] {
        assert_eq!(head.headers()[name], get.headers()[name], "{name}");
    }
    assert!(head.bytes().await.unwrap().is_empty());
    let head = s
        .client
        .head(s.url(&format!("/v1/keys/{MISSING}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn unknown_keys_are_404_problems() {
    let (_dir, s) = server().await;
    for path in [
        format!("/v1/keys/{MISSING}"),
        format!("/v1/keys/{MISSING}/value"),
    ] {
        let body = problem(s.get(&path).await, 404).await;
        assert_eq!(body["type"], "urn:kvserve:problem:key-not-found");
        assert!(body["detail"].as_str().unwrap().contains(MISSING));
    }
}

/// Malformed keys of every kind, on every route that takes a key in the path.
#[tokio::test]
async fn malformed_keys_are_400_problems_naming_the_parameter() {
    let (_dir, s) = server().await;
    let long = "a".repeat(10 * 1024);
    let bad = [
        "abc",
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        "%00%2F..%20",
        "%E2%98%83",
        "72cf48f7-d604-4423-b012-4e2329f5117",
        long.as_str(),
    ];
    for key in bad {
        for path in [format!("/v1/keys/{key}"), format!("/v1/keys/{key}/value")] {
            let body = problem(s.get(&path).await, 400).await;
            assert_eq!(body["type"], "urn:kvserve:problem:invalid-key");
            assert!(body["detail"].as_str().unwrap().contains("`key`"), "{body}");
        }
    }
    // Percent-encoding that decodes to invalid UTF-8 is refused before routing (the
    // legacy route decodes it as the old service did: tests/it/legacy.rs).
    for path in ["/v1/keys/%ff%fe", "/v1/keys/%C3%28/value", "/nope/%ff"] {
        let body = problem(s.get(path).await, 400).await;
        assert_eq!(body["type"], "urn:kvserve:problem:invalid-path");
    }
    // An empty key: before `/value` it is an empty parameter, at the end no route.
    let body = problem(s.get("/v1/keys//value").await, 400).await;
    assert_eq!(body["type"], "urn:kvserve:problem:invalid-key");
    problem(s.get("/v1/keys/").await, 404).await;
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_problems() {
    let (_dir, s) = server().await;
    // (`/get_value` answers as the old service did: tests/it/legacy.rs.)
    for path in ["/", "/v2/keys/x", "/v1", "/nope/%20"] {
        let body = problem(s.get(path).await, 404).await;
        assert_eq!(body["type"], "urn:kvserve:problem:route-not-found");
    }
    let key_path = s.url(&format!("/v1/keys/{KEY}"));
    for req in [
        s.client.post(&key_path),
        s.client.delete(&key_path),
        s.client.put(s.url(&format!("/get_value/{KEY}"))),
        s.client.get(s.url("/v1/keys/batch")),
    ] {
        let resp = req.send().await.unwrap();
        let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
        assert!(!allow.is_empty());
        problem(resp, 405).await;
    }
}

#[tokio::test]
async fn batch_returns_values_and_missing_with_duplicates_folded() {
    let (_dir, s) = server().await;
    let resp = s
        .client
        .post(s.url("/v1/keys/batch"))
        .json(&json!({"keys": [KEY, MISSING, KEY.to_uppercase(), KEY2, MISSING.replace('-', "")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"values": {KEY: VALUE, KEY2: VALUE2}, "missing": [MISSING]})
    );
    let resp = s
        .client
        .post(s.url("/v1/keys/batch"))
        .json(&json!({"keys": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"values": {}, "missing": []})
    );
}

/// A batch body naming `keys` twice is refused, naming the member: a proxy that reads
/// the first and kvserve reading the last would disagree on the keys. Valid JSON in
/// a member kvserve does not read is ignored, however odd: a number no float holds, a
/// lone surrogate escape, nesting far deeper than 128 (issue 25, item 17).
#[tokio::test]
async fn batch_members_are_unique_and_ignored_ones_may_be_any_json() {
    let (_dir, s) = server().await;
    let post = |body: String| {
        s.client
            .post(s.url("/v1/keys/batch"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [
        format!(r#"{{"keys":["{KEY}"],"keys":["{KEY2}"]}}"#),
        format!(r#"{{"keys":["{KEY}"],"k\u0065ys":["{KEY2}"]}}"#),
    ] {
        let p = problem(post(body).await.unwrap(), 400).await;
        assert_eq!(p["type"], "urn:kvserve:problem:invalid-body", "{p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("member `keys` appears more than once"),
            "{p}"
        );
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for odd in ["1e400", r#""\ud800""#, deep.as_str()] {
        let body = format!(r#"{{"keys":["{KEY}"],"extra":{odd}}}"#);
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), 200, "{odd:.20}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(
            answer,
            json!({"values": {KEY: VALUE}, "missing": []}),
            "{odd:.20}"
        );
    }
}

#[tokio::test]
async fn bad_batch_bodies_are_problems_naming_the_field() {
    let (_dir, s) = server().await;
    let post = |body: Vec<u8>| {
        s.client
            .post(s.url("/v1/keys/batch"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let many: Vec<String> = (0..1001)
        .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
        .collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"not json".to_vec(), 400, "not valid JSON"),
        (b"".to_vec(), 400, "not valid JSON"),
        (b"[1, 2]".to_vec(), 400, "JSON object"),
        (b"{}".to_vec(), 400, "`keys` is missing"),
        (
            br#"{"keys": "abc"}"#.to_vec(),
            400,
            "`keys` must be an array",
        ),
        (
            br#"{"keys": [1]}"#.to_vec(),
            400,
            "`keys[0]` must be a string",
        ),
        (
            br#"{"keys": [null]}"#.to_vec(),
            400,
            "`keys[0]` must be a string",
        ),
        (
            format!(r#"{{"keys": ["{KEY}", "nope"]}}"#).into_bytes(),
            400,
            "`keys[1]` is not a UUID",
        ),
        (
            json!({"keys": many}).to_string().into_bytes(),
            400,
            "at most 1000",
        ),
        (vec![b' '; 2 << 20], 413, "larger than"),
    ];
    for (body, status, needle) in cases {
        let resp = post(body).await.unwrap();
        let p = problem(resp, status).await;
        assert!(
            p["detail"].as_str().unwrap().contains(needle),
            "{p} should mention {needle}"
        );
    }
    let resp = s
        .client
        .post(s.url("/v1/keys/batch"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    problem(resp, 415).await;
}

/// The README and the spec promise 415 for a body not declared JSON; a missing
/// `Content-Type` is not declared JSON either.
#[tokio::test]
async fn batch_needs_a_json_content_type() {
    let (_dir, s) = server().await;
    let body = json!({"keys": [KEY]}).to_string();
    let post = |content_type: Option<&str>| {
        let mut req = s.client.post(s.url("/v1/keys/batch")).body(body.clone());
        if let Some(value) = content_type {
            req = req.header("content-type", value);
        }
        req.send()
    };
    for refused in [
        None,
        Some(""),
        Some("text/plain"),
        Some("application/jsonx"),
    ] {
        let p = problem(post(refused).await.unwrap(), 415).await;
        assert_eq!(
            p["type"], "urn:kvserve:problem:unsupported-media-type",
            "{refused:?}"
        );
        assert!(
            p["detail"].as_str().unwrap().contains("application/json"),
            "{refused:?}: {p}"
        );
    }
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
    ] {
        let resp = post(Some(accepted)).await.unwrap();
        assert_eq!(resp.status(), 200, "{accepted}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["values"][KEY],
            VALUE,
            "{accepted}"
        );
    }
}

#[tokio::test]
async fn legacy_route_keeps_the_old_bodies_and_points_to_v1() {
    let (_dir, s) = server().await;
    let resp = s.get(&format!("/get_value/{}", KEY.to_uppercase())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["deprecation"], "@1795651200");
    assert_eq!(
        resp.headers()["link"],
        format!("</v1/keys/{KEY}>; rel=\"successor-version\"")
    );
    assert_eq!(
        resp.text().await.unwrap(),
        format!(r#"{{"key":"{KEY}","value":"{VALUE}"}}"#)
    );

    let resp = s.get(&format!("/get_value/{KEY2}")).await;
    assert_eq!(
        resp.text().await.unwrap(),
        format!(r#"{{"key":"{KEY2}","value":"héllo \"quoted\" wörld"}}"#)
    );

    // An absent version-4 key (`MISSING`, the nil UUID, is a 422 here: tests/it/legacy.rs).
    let resp = s
        .get("/get_value/6ba7b810-9dad-41d1-80b4-00c04fd430c8")
        .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), r#"{"detail":"Key not found"}"#);

    let resp = s.get("/get_value/abc").await;
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"detail":[{"type":"uuid_parsing","loc":["path","key"],"msg":"Input should be a valid UUID, invalid length: expected length 32 for simple format, found 3","input":"abc","ctx":{"error":"invalid length: expected length 32 for simple format, found 3"}}]}"#
    );
    let resp = s
        .get("/get_value/zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz")
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["detail"][0]["ctx"]["error"],
        "invalid character: found `z` at 1"
    );
}

#[tokio::test]
async fn cache_serves_repeated_lookups_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "test.data", sample_lines());
    for capacity in ["0", "1", "1000"] {
        let s = TestServer::start(&data, &["--cache-capacity", capacity]).await;
        for _ in 0..3 {
            for key in [KEY, KEY2] {
                let v1: Value = s
                    .get(&format!("/v1/keys/{key}"))
                    .await
                    .json()
                    .await
                    .unwrap();
                let legacy: Value = s
                    .get(&format!("/get_value/{key}"))
                    .await
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v1, legacy);
            }
        }
        s.stop().await.unwrap();
    }
}

#[tokio::test]
async fn docs_and_spec_are_served() {
    let (_dir, s) = server().await;
    let docs = s.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    for remote in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
    ] {
        assert!(
            !html.contains(remote),
            "Swagger UI must work offline, found {remote}"
        );
    }
    let spec: Value = s.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["paths"]["/v1/keys/{key}"]["get"].is_object());
}

#[tokio::test]
async fn admin_probes() {
    let (_dir, s) = server().await;
    let live = s.client.get(s.admin_url("/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = s.client.get(s.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    problem(
        s.client.get(s.admin_url("/nope")).send().await.unwrap(),
        404,
    )
    .await;
    s.stop().await.unwrap();
}

/// The ETag of one file tells apart the load options that decided which value is
/// served (`--on-duplicate`, `--skip-invalid` with `--max-line-bytes`): an instance
/// never answers 304 to an ETag another instance gave for a different value. Options
/// that changed nothing for this file leave the ETag alone, and `/admin/dataset`'s
/// `version` stays the hash of the file's bytes.
#[tokio::test]
async fn etag_tells_apart_the_load_options_that_change_values() {
    async fn fetch(s: &TestServer, etag: Option<&str>) -> (u16, String, String) {
        let mut req = s.client.get(s.url(&format!("/v1/keys/{KEY}/value")));
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        (status, etag, resp.text().await.unwrap())
    }
    async fn version(s: &TestServer) -> String {
        let info = s.dataset_info().await;
        info["version"].as_str().unwrap().to_owned()
    }
    let dir = tempfile::tempdir().unwrap();
    let long = "l".repeat(100);
    let dup = write_file(
        dir.path(),
        "dup.data",
        format!("{KEY} short\n{KEY2} x\n{KEY} {long}\n"),
    );
    let start = |args: &'static [&'static str]| TestServer::start(&dup, args);
    let first = start(&["--on-duplicate", "first"]).await;
    let last = start(&["--on-duplicate", "last"]).await;
    // The long line is skipped, so its duplicate never counts: "short" is served.
    let skipping = start(&[
        "--on-duplicate",
        "last",
        "--skip-invalid",
        "--max-line-bytes",
        "64",
    ])
    .await;
    let (_, first_etag, first_value) = fetch(&first, None).await;
    let (_, last_etag, last_value) = fetch(&last, None).await;
    let (_, skip_etag, skip_value) = fetch(&skipping, None).await;
    assert_eq!(
        (first_value.as_str(), skip_value.as_str()),
        ("short", "short")
    );
    assert_eq!(last_value, long);
    assert_ne!(first_etag, last_etag);
    assert_ne!(skip_etag, last_etag);
    assert_ne!(skip_etag, first_etag);
    // Another instance's ETag is not this one's: the value comes back, not a 304.
    for (server, foreign, own_value) in [
        (&last, &first_etag, &long),
        (&first, &last_etag, &first_value),
        (&last, &skip_etag, &long),
        (&skipping, &last_etag, &skip_value),
    ] {
        let (status, _, value) = fetch(server, Some(foreign)).await;
        assert_eq!((status, &value), (200, own_value), "{foreign}");
    }
    assert_eq!(fetch(&last, Some(&last_etag)).await.0, 304);
    let file_hash = version(&first).await;
    assert_eq!(file_hash.len(), 32);
    for s in [&last, &skipping] {
        assert_eq!(version(s).await, file_hash);
    }
    for s in [first, last, skipping] {
        s.stop().await.unwrap();
    }

    // Without duplicates or bad lines the options decide nothing: one ETag for all.
    let clean = write_file(dir.path(), "clean.data", sample_lines());
    let plain = TestServer::start(&clean, &[]).await;
    let (_, plain_etag, _) = fetch(&plain, None).await;
    plain.stop().await.unwrap();
    let options = TestServer::start(&clean, &["--on-duplicate", "last", "--skip-invalid"]).await;
    assert_eq!(fetch(&options, Some(&plain_etag)).await.0, 304);
    options.stop().await.unwrap();
}

/// Every JSON lookup route writes a value exactly as serde_json writes the same text
/// (compact, non-ASCII as is, control characters escaped, batch keys in request
/// order), whichever storage holds it.
#[tokio::test]
async fn json_answers_are_byte_for_byte_what_serde_json_writes() {
    let awkward = "tab\there \\ \"q\" \u{1}\u{1f}\u{7f} é€𝄞 /";
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(
        dir.path(),
        "awkward.data",
        format!("{KEY} {awkward}\n{KEY2} {VALUE2}\n"),
    );
    let quoted = |text: &str| serde_json::to_string(text).unwrap();
    for storage in ["memory", "mmap"] {
        let s = TestServer::start(&data, &["--storage", storage]).await;
        let single = format!(r#"{{"key":"{KEY}","value":{}}}"#, quoted(awkward));
        let resp = s.get(&format!("/v1/keys/{KEY}")).await;
        assert_eq!(resp.text().await.unwrap(), single, "{storage}");
        let resp = s.get(&format!("/get_value/{KEY}")).await;
        assert_eq!(resp.text().await.unwrap(), single, "{storage}");
        let resp = s.get(&format!("/v1/keys/{KEY}/value")).await;
        assert_eq!(resp.text().await.unwrap(), awkward, "{storage}");

        let resp = s
            .client
            .post(s.url("/v1/keys/batch"))
            .json(&json!({"keys": [KEY2, MISSING, KEY, KEY.to_uppercase()]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.text().await.unwrap(),
            format!(
                r#"{{"values":{{"{KEY2}":{},"{KEY}":{}}},"missing":["{MISSING}"]}}"#,
                quoted(VALUE2),
                quoted(awkward)
            ),
            "{storage}"
        );
        s.stop().await.unwrap();
    }
}

/// One request on its own connection (it should say `Connection: close`): status,
/// headers (names lowercased, in order) and body.
fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Issue 25 item 10: a 405's `Allow` lists exactly the methods the path answers.
/// Every method is sent to every route of both listeners (with the fast path on and
/// off); the methods not refused with 405 are the path's, and every 405 must list
/// them. `/docs` and `/openapi.json` answered every method; `POST /get_value/batch`
/// said `Allow: POST` and the admin's POST routes `Allow: GET, HEAD`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_the_methods_answered() {
    const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "test.data", sample_lines());
    for fast in ["true", "false"] {
        let s = TestServer::start(&data, &["--fast-path", fast]).await;
        let api = [
            format!("/v1/keys/{KEY}"),
            format!("/v1/keys/{KEY}/value"),
            "/v1/keys/batch".to_owned(),
            format!("/get_value/{KEY}"),
            "/get_value/batch".to_owned(),
            "/openapi.json".to_owned(),
            "/docs".to_owned(),
        ];
        let admin = [
            "/livez",
            "/readyz",
            "/metrics",
            "/admin/dataset",
            "/admin/reload",
            "/admin/cache/purge",
        ];
        let targets = api
            .iter()
            .map(|p| (s.api, p.clone()))
            .chain(admin.iter().map(|p| (s.admin, (*p).to_owned())));
        for (addr, path) in targets {
            let mut answered = Vec::new();
            let mut allows = Vec::new();
            for method in METHODS {
                let body = format!(r#"{{"keys":["{KEY}"]}}"#);
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let (status, headers, _) = raw(addr, &request);
                if status == 405 {
                    allows.push((method, header(&headers, "allow").unwrap_or("").to_owned()));
                } else {
                    answered.push(method);
                }
            }
            let want = answered.join(", ");
            assert!(!answered.is_empty(), "{path}: no method answered");
            for (method, allow) in allows {
                assert_eq!(allow, want, "{method} {path} (fast path {fast})");
            }
        }
        s.stop().await.unwrap();
    }
}

/// Issue 25 item 12: RFC 9112 §3.2's `Host` rules, on both listeners and both paths:
/// an HTTP/1.1 request without `Host`, with two `Host` lines or with one that is no
/// `host[:port]` is a 400 problem naming the header (they were served); HTTP/1.0 may
/// leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_required_once_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "test.data", sample_lines());
    for fast in ["true", "false"] {
        let s = TestServer::start(&data, &["--fast-path", fast]).await;
        let targets = [
            (s.api, format!("/v1/keys/{KEY}")),
            (s.api, format!("/get_value/{KEY}")),
            (s.api, "/openapi.json".to_owned()),
            (s.admin, "/livez".to_owned()),
        ];
        for (addr, path) in &targets {
            for (host_lines, what) in [
                ("", "missing"),
                ("Host: x\r\nHost: x\r\n", "sent 2 times"),
                ("Host: a b\r\n", "not a valid"),
                ("Host: a/b\r\n", "not a valid"),
            ] {
                let request =
                    format!("GET {path} HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n");
                let (status, headers, body) = raw(*addr, &request);
                assert_eq!(
                    status, 400,
                    "{path} {host_lines:?} (fast path {fast}): {body}"
                );
                assert_eq!(
                    header(&headers, "content-type"),
                    Some("application/problem+json")
                );
                let problem: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(problem["type"], "urn:kvserve:problem:invalid-header");
                let detail = problem["detail"].as_str().unwrap();
                assert!(
                    detail.contains("`Host`") && detail.contains(what),
                    "{detail}"
                );
            }
            for request in [
                format!("GET {path} HTTP/1.0\r\n\r\n"),
                format!("GET {path} HTTP/1.1\r\nHost: [::1]:8000\r\nConnection: close\r\n\r\n"),
            ] {
                let (status, _, body) = raw(*addr, &request);
                assert_eq!(status, 200, "{request:?} (fast path {fast}): {body}");
            }
        }
        s.stop().await.unwrap();
    }
}

/// Issue 25 item 19: `If-Match` on `/v1` (RFC 9110 §13.1.1, evaluated before
/// `If-None-Match`, §13.2.2): a tag that is not current, or a weak one, is 412
/// (it was 200); the current tag (of any coding) and `*` pass; a missing key is 404
/// whatever the condition (§13.2.1). Both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_that_fails_is_412() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "test.data", sample_lines());
    for fast in ["true", "false"] {
        let s = TestServer::start(&data, &["--fast-path", fast]).await;
        let etag = s.get(&format!("/v1/keys/{KEY}")).await.headers()["etag"]
            .to_str()
            .unwrap()
            .to_owned();
        let coded = format!("{}-gz\"", etag.trim_end_matches('"'));
        for path in [format!("/v1/keys/{KEY}"), format!("/v1/keys/{KEY}/value")] {
            for method in ["GET", "HEAD"] {
                let send = |if_match: String, extra: &str| {
                    raw(
                        s.api,
                        &format!(
                            "{method} {path} HTTP/1.1\r\nHost: x\r\nIf-Match: {if_match}\r\n\
                             {extra}Connection: close\r\n\r\n"
                        ),
                    )
                };
                for failing in ["\"0000000000000000\"".to_owned(), format!("W/{etag}")] {
                    let (status, headers, body) = send(failing.clone(), "");
                    assert_eq!(status, 412, "{method} {path} If-Match: {failing} ({fast})");
                    assert_eq!(
                        header(&headers, "content-type"),
                        Some("application/problem+json")
                    );
                    if method == "GET" {
                        let problem: Value = serde_json::from_str(&body).unwrap();
                        assert_eq!(problem["type"], "urn:kvserve:problem:precondition-failed");
                    }
                    // If-Match first: a matching If-None-Match does not make it a 304.
                    let (status, _, _) = send(failing, &format!("If-None-Match: {etag}\r\n"));
                    assert_eq!(status, 412, "{method} {path} ({fast})");
                }
                for passing in [
                    etag.clone(),
                    coded.clone(),
                    "*".to_owned(),
                    format!("\"x\", {etag}"),
                ] {
                    let (status, _, _) = send(passing.clone(), "");
                    assert_eq!(status, 200, "{method} {path} If-Match: {passing} ({fast})");
                }
                let (status, _, _) = send("*".to_owned(), &format!("If-None-Match: {etag}\r\n"));
                assert_eq!(status, 304, "{method} {path} ({fast})");
            }
        }
        let (status, _, _) = raw(
            s.api,
            &format!(
                "GET /v1/keys/{MISSING} HTTP/1.1\r\nHost: x\r\nIf-Match: \"x\"\r\n\
                 Connection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 404);
        s.stop().await.unwrap();
    }
}

/// Issue 25 item 13: `HEAD` gives the same headers as `GET` (docs/API.md), the
/// `Content-Length: 0` of an empty answer too (it was dropped: an empty value, the
/// legacy 307), on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_the_headers_of_get() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "test.data", sample_lines());
    for fast in ["true", "false"] {
        let s = TestServer::start(&data, &["--fast-path", fast]).await;
        for path in [
            format!("/v1/keys/{KEY}"),
            "/v1/keys/11111111-1111-4111-8111-111111111111/value".to_owned(),
            format!("/v1/keys/{KEY}/value"),
            format!("/get_value/{KEY}"),
            format!("/get_value/{KEY}/"),
            format!("/get_value/{MISSING}"),
            "/openapi.json".to_owned(),
            "/docs".to_owned(),
            "/nope".to_owned(),
        ] {
            let headers = |method: &str| {
                let (status, headers, _) = raw(
                    s.api,
                    &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                );
                let mut headers: Vec<_> = headers
                    .into_iter()
                    .filter(|(n, _)| n != "date" && n != "x-request-id")
                    .collect();
                headers.sort();
                (status, headers)
            };
            assert_eq!(headers("HEAD"), headers("GET"), "{path} (fast path {fast})");
        }
        s.stop().await.unwrap();
    }
}

/// `--max-line-bytes` changes the ETag only when it changed which records are served
/// (issue 25, item 16): lines skipped for another reason, or two limits that skip the
/// same long record, keep one ETag; a limit that serves that record gets another.
#[tokio::test]
async fn max_line_bytes_changes_the_etag_only_when_it_changes_the_answers() {
    async fn etag(data: &std::path::Path, args: &[&str]) -> String {
        let s = TestServer::start(data, args).await;
        let resp = s.get(&format!("/v1/keys/{KEY}")).await;
        assert_eq!(resp.status(), 200);
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        s.stop().await.unwrap();
        etag
    }
    let dir = tempfile::tempdir().unwrap();
    // A malformed line, skipped whatever the limit.
    let bad = write_file(
        dir.path(),
        "bad.data",
        format!("{KEY} {VALUE}\nnot a record\n"),
    );
    let skip = |limit: &'static str| ["--skip-invalid", "--max-line-bytes", limit];
    let default = etag(&bad, &["--skip-invalid"]).await;
    assert_eq!(etag(&bad, &skip("90")).await, default);
    assert_eq!(etag(&bad, &skip("200")).await, default);

    // A 150-byte record: skipped under 100 and 120 alike, served under 200.
    let long = write_file(
        dir.path(),
        "long.data",
        format!("{KEY} {VALUE}\n{KEY2} {}\n", "v".repeat(150 - 37)),
    );
    let under_100 = etag(&long, &skip("100")).await;
    assert_eq!(etag(&long, &skip("120")).await, under_100);
    assert_ne!(etag(&long, &skip("200")).await, under_100);
}

/// The `urn:uuid:` prefix of a key is case-insensitive on `/v1` (RFC 8141; docs/API.md:
/// "any form, any case"), for single keys and batches; the legacy route keeps the old
/// service's refusal (issue 25, item 18).
#[tokio::test]
async fn urn_prefix_in_any_case() {
    let (_dir, s) = server().await;
    for form in [
        format!("URN:UUID:{KEY}"),
        format!("Urn:Uuid:{}", KEY.to_uppercase()),
    ] {
        let resp = s.get(&format!("/v1/keys/{form}")).await;
        assert_eq!(resp.status(), 200, "{form}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"key": KEY, "value": VALUE}));
        let resp = s.get(&format!("/v1/keys/{form}/value")).await;
        assert_eq!(resp.text().await.unwrap(), VALUE, "{form}");
    }
    let resp = s
        .client
        .post(s.url("/v1/keys/batch"))
        .json(&json!({"keys": [format!("URN:UUID:{KEY}"), KEY]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"values": {KEY: VALUE}, "missing": []}));
    // Still refused where it must be: another prefix, and the legacy route.
    let resp = s.get(&format!("/v1/keys/URN:UUIX:{KEY}")).await;
    assert_eq!(resp.status(), 400);
    let resp = s.get(&format!("/get_value/URN:UUID:{KEY}")).await;
    assert_eq!(resp.status(), 422);
}

/// A CRLF line of exactly `--max-line-bytes` loads, as the same line with LF does: the
/// CR is part of the line end, not of the value (issue 25, item 18).
#[tokio::test]
async fn a_crlf_line_of_exactly_the_limit_loads() {
    let dir = tempfile::tempdir().unwrap();
    let value = "w".repeat(64 - 37);
    for (name, end) in [("lf.data", "\n"), ("crlf.data", "\r\n")] {
        let data = write_file(dir.path(), name, format!("{KEY} {value}{end}"));
        // Waits for readiness: a refused file never gets there.
        let s = TestServer::start(&data, &["--max-line-bytes", "64"]).await;
        assert_eq!(s.value_text(KEY).await, value, "{name}");
        s.stop().await.unwrap();
    }
}
