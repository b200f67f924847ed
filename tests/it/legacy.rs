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
