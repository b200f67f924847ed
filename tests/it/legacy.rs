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

/// The old service validates `uuid.UUID`, which takes every version: a present key of
/// any version is found, an absent one is "Key not found"; never a 422.
#[tokio::test]
async fn every_uuid_version_is_a_key_like_the_old_service() {
    let dir = tempfile::tempdir().unwrap();
    for s in servers(dir.path()).await {
        for (key, value) in [
            ("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "version one"),
            ("00000000-0000-0000-0000-000000000000", "nil"),
            ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "max"),
            ("{017f22e2-79b0-7cc3-98c4-dc0c0c07398f}", "version seven"),
        ] {
            let canonical = uuid::Uuid::parse_str(key).unwrap().hyphenated().to_string();
            let body = format!(r#"{{"key":"{canonical}","value":"{value}"}}"#);
            let got = get(&s, &format!("/get_value/{key}")).await;
            assert_eq!(got, (200, "application/json".into(), String::new(), body));
        }
        for key in [
            "6ba7b810-9dad-11e4-80b4-00c04fd430c8",
            "6ba7b810-9dad-7e4f-80b4-00c04fd430c8",
            "urn:uuid:6ba7b810-9dad-31d1-80b4-00c04fd430c8",
        ] {
            let got = get(&s, &format!("/get_value/{key}")).await;
            let want = r#"{"detail":"Key not found"}"#;
            assert_eq!(
                got,
                (404, "application/json".into(), String::new(), want.into())
            );
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
