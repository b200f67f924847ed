//! The OpenAPI document: checked in, generated from the code, and complete.

use crate::common::TestServer;
use serde_json::Value;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");

fn spec() -> Value {
    serde_json::from_str(&kvserve::http::openapi_json()).unwrap()
}

/// Fails when the code changed the API but `openapi/openapi.json` was not regenerated.
/// `KVSERVE_UPDATE_OPENAPI=1 cargo test --test it spec::` rewrites it.
#[test]
fn checked_in_spec_is_up_to_date() {
    let generated = format!("{}\n", kvserve::http::openapi_json());
    if std::env::var_os("KVSERVE_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is out of date: run `KVSERVE_UPDATE_OPENAPI=1 cargo test --test it spec::` and commit it"
    );
}

/// Every operation with the statuses the server really sends it: its own, the shared
/// refusals of the pipeline (`responses::Guarded`), the limits checked before routing
/// (413 a declared body length, 414 URI, 431 header fields) and the catch-all 500; the
/// batch also the body's (408, 415).
#[test]
fn every_route_and_status_is_documented() {
    let spec = spec();
    let single = &[
        "200", "304", "400", "401", "403", "404", "412", "413", "414", "421", "429", "431", "500",
        "503",
    ];
    let legacy = &[
        "200", "304", "307", "400", "401", "403", "404", "412", "413", "414", "421", "422", "429",
        "431", "500", "503",
    ];
    let expected: &[(&str, &str, &[&str])] = &[
        ("/v1/keys/{key}", "get", single),
        ("/v1/keys/{key}", "head", single),
        ("/v1/keys/{key}/value", "get", single),
        ("/v1/keys/{key}/value", "head", single),
        (
            "/v1/keys/batch",
            "post",
            &[
                "200", "400", "401", "403", "408", "413", "414", "415", "421", "429", "431", "500",
                "503",
            ],
        ),
        ("/get_value/{key}", "get", legacy),
        ("/get_value/{key}", "head", legacy),
    ];
    let operations: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        operations,
        expected.len(),
        "an operation is not listed here"
    );
    for (path, method, statuses) in expected {
        let op = &spec["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        let mut documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        documented.sort();
        assert_eq!(documented, *statuses, "{method} {path}");
        if *method == "head" {
            continue;
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                let content = response["content"].as_object().unwrap();
                let legacy = path.starts_with("/get_value") && (status == "404" || status == "422");
                let want = if legacy {
                    "application/json"
                } else {
                    "application/problem+json"
                };
                assert!(
                    content.contains_key(want),
                    "{method} {path} {status} should be {want}"
                );
            }
        }
    }
    assert_eq!(spec["paths"]["/get_value/{key}"]["get"]["deprecated"], true);
    // The trailing-slash redirect says where it goes.
    let redirect = &spec["paths"]["/get_value/{key}"]["get"]["responses"]["307"];
    assert!(redirect["headers"]["Location"].is_object(), "{redirect}");
    // Every data route declares the bearer scheme, so Swagger UI's Authorize applies.
    assert_eq!(
        spec["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for (path, method, _) in expected {
        assert_eq!(
            spec["paths"][path][method]["security"][0]["bearerAuth"],
            serde_json::json!([]),
            "{method} {path}"
        );
    }
    let text = spec.to_string();
    assert!(!text.contains("param0"));
}

/// Every (method, path, status, response) of the document.
fn responses(spec: &Value) -> Vec<(String, String, String, &Value)> {
    let mut all = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                all.push((method.clone(), path.clone(), status.clone(), response));
            }
        }
    }
    all
}

/// A HEAD answer has no body (RFC 9110 §9.3.2): a generated client that reads the
/// declared content would parse the empty body (openapi-python-client did, as JSON).
#[test]
fn head_operations_declare_headers_only() {
    let spec = spec();
    let mut heads = 0;
    for (method, path, status, response) in responses(&spec) {
        if method == "head" {
            heads += 1;
            assert!(
                response.get("content").is_none(),
                "HEAD {path} {status} declares a body"
            );
        }
    }
    assert!(
        heads >= 3 * 12,
        "HEAD operations missing: {heads} responses"
    );
    let ok = &spec["paths"]["/v1/keys/{key}"]["head"]["responses"]["200"]["headers"];
    assert!(ok["ETag"].is_object() && ok["Cache-Control"].is_object());
}

/// Header names as the server sends them, in their registered spelling (poem-openapi
/// upper-cases them; a generator then exposes `ETAG`, a client looking up `ETag` in a
/// case-sensitive map finds nothing).
#[test]
fn header_names_are_published_in_their_registered_spelling() {
    let spec = spec();
    let known = [
        "ETag",
        "Cache-Control",
        "WWW-Authenticate",
        "Retry-After",
        "RateLimit",
        "RateLimit-Policy",
        "Deprecation",
        "Link",
        "Location",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (method, path, status, response) in responses(&spec) {
        for name in response["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|h| h.0)
        {
            assert!(
                known.contains(&name.as_str()),
                "{method} {path} {status}: header {name}"
            );
            seen.insert(name.clone());
        }
    }
    assert_eq!(seen.len(), known.len(), "declared: {seen:?}");
}

/// `RateLimit` and `RateLimit-Policy` are declared wherever the server may send them
/// (every answer after the per-address check, when a limit is on; always on a 429),
/// and the server does send them on a 200 and a 429 under the declared names.
#[tokio::test]
async fn rate_limit_fields_are_declared_where_they_are_sent() {
    let spec = spec();
    for (method, path, status, response) in responses(&spec) {
        let headers = &response["headers"];
        let must = status == "429";
        let never = status == "414" || status == "431";
        for name in ["RateLimit", "RateLimit-Policy"] {
            let declared = &headers[name];
            if never {
                assert!(declared.is_null(), "{method} {path} {status} {name}");
                continue;
            }
            assert!(
                declared.is_object(),
                "{method} {path} {status} lacks {name}"
            );
            assert_eq!(
                declared["required"].as_bool().unwrap_or(false),
                must,
                "{method} {path} {status} {name}"
            );
        }
        if status == "429" || status == "503" {
            assert_eq!(
                headers["Retry-After"]["required"], true,
                "{method} {path} {status}"
            );
        }
    }
    let (_dir, server) =
        TestServer::with_sample(&["--rate-limit", "1", "--rate-limit-burst", "1"]).await;
    let path = "/v1/keys/72cf48f7-d604-4423-b012-4e2329f5117b";
    for want in [200, 429] {
        let resp = server.get(path).await;
        assert_eq!(resp.status(), want);
        for name in ["RateLimit", "RateLimit-Policy"] {
            assert!(resp.headers().contains_key(name), "{want} lacks {name}");
        }
    }
    server.stop().await.unwrap();
}

#[test]
fn key_parameters_carry_an_example_from_the_sample_data() {
    let spec = spec();
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample.data")).unwrap();
    for path in ["/v1/keys/{key}", "/v1/keys/{key}/value", "/get_value/{key}"] {
        let param = &spec["paths"][path]["get"]["parameters"][0];
        assert_eq!(param["name"], "key");
        let example = param["schema"]["example"].as_str().unwrap();
        assert!(
            sample.contains(example),
            "the example key of {path} must exist in data/sample.data"
        );
    }
}

/// The served document says what this server checks: with a JWT key, the checked-in
/// spec as it is; without one, the same routes and answers with no security
/// requirement, in `/openapi.json` and in the document Swagger UI shows.
#[tokio::test]
async fn the_served_spec_requires_a_token_only_when_auth_is_on() {
    let secret = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/hs256.secret"
    );
    let (_dir, with_auth) = TestServer::with_sample(&["--jwt-hs256-secret-file", secret]).await;
    let served = with_auth.get("/openapi.json").await.text().await.unwrap();
    assert_eq!(
        format!("{served}\n"),
        std::fs::read_to_string(CHECKED_IN).unwrap()
    );
    with_auth.stop().await.unwrap();

    let (_dir, open) = TestServer::with_sample(&[]).await;
    let served: Value = open.get("/openapi.json").await.json().await.unwrap();
    let mut expected = spec();
    for item in expected["paths"].as_object_mut().unwrap().values_mut() {
        for op in item.as_object_mut().unwrap().values_mut() {
            assert!(op.as_object_mut().unwrap().remove("security").is_some());
        }
    }
    expected["components"]
        .as_object_mut()
        .unwrap()
        .remove("securitySchemes")
        .unwrap();
    assert_eq!(served, expected);
    let docs = open.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("SwaggerUIBundle") && html.contains("/v1/keys/{key}"));
    assert!(
        !html.contains("bearerAuth"),
        "Swagger UI would offer Authorize"
    );
    open.stop().await.unwrap();
}

/// The 413 every operation declares is sent: a request declaring a body over
/// `--max-body-bytes` is refused before routing, whatever its method and route (the
/// body is never read).
#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_on_every_route() {
    let (_dir, s) = crate::common::TestServer::with_sample(&["--max-body-bytes", "1024"]).await;
    let key = crate::common::KEY;
    for target in [
        format!("GET /v1/keys/{key}"),
        format!("GET /v1/keys/{key}/value"),
        format!("GET /get_value/{key}"),
        "POST /v1/keys/batch".to_owned(),
    ] {
        let mut stream = std::net::TcpStream::connect(s.api).unwrap();
        std::io::Write::write_all(
            &mut stream,
            format!("{target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let answer = tokio::task::spawn_blocking(move || crate::common::read_response(&mut stream))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.map(|(status, _)| status), Some(413), "{target}");
    }
    s.stop().await.unwrap();
}

/// The legacy route declares what it takes, a version-4 UUID (a pattern, no `uuid`
/// format, which would admit every version and so requests it refuses with 422);
/// `/v1` takes every version (`format: uuid`).
#[test]
fn the_legacy_key_is_declared_version_4_and_v1_keys_any_version() {
    let spec = spec();
    let schema = |path: &str| spec["paths"][path]["get"]["parameters"][0]["schema"].clone();
    let legacy = schema("/get_value/{key}");
    assert_eq!(legacy.get("format"), None, "{legacy}");
    let pattern = legacy["pattern"].as_str().unwrap_or_default();
    assert!(pattern.contains("-4[0-9a-fA-F]{3}-[89abAB]"), "{pattern}");
    assert_eq!(schema("/v1/keys/{key}")["format"], "uuid");
}
