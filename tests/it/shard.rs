//! `--key-prefixes`: an instance that owns part of the key space (a shard).

use crate::common::*;
use serde_json::{json, Value};

const FOREIGN: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const FOREIGN_MISSING: &str = "80000000-0000-4000-8000-000000000000";

#[tokio::test]
async fn a_shard_loads_and_answers_only_its_keys() {
    let (_dir, s) = TestServer::with_sample(&["--key-prefixes", "0-7"]).await;

    assert_eq!(s.get(&format!("/v1/keys/{KEY}")).await.status(), 200);
    assert_eq!(
        s.get(&format!("/v1/keys/{MISSING}")).await.status(),
        404,
        "owned but absent"
    );
    for key in [FOREIGN, FOREIGN_MISSING, &FOREIGN.to_uppercase()] {
        for path in [
            format!("/v1/keys/{key}"),
            format!("/v1/keys/{key}/value"),
            format!("/get_value/{key}"),
        ] {
            let body = problem(s.get(&path).await, 421).await;
            assert_eq!(body["type"], "urn:kvserve:problem:misdirected");
            assert!(body["detail"].as_str().unwrap().contains("0-7"), "{body}");
        }
    }
    let batch = |keys: Value| {
        s.client
            .post(s.url("/v1/keys/batch"))
            .json(&json!({ "keys": keys }))
            .send()
    };
    let resp = batch(json!([KEY, MISSING])).await.unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"values": {KEY: VALUE}, "missing": [MISSING]})
    );
    let body = problem(batch(json!([KEY, FOREIGN])).await.unwrap(), 421).await;
    assert!(body["detail"].as_str().unwrap().contains(FOREIGN));

    let info = s.dataset_info().await;
    assert_eq!(
        (info["keys"].as_u64(), info["foreign_lines"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(info["key_prefixes"], "0-7");
    let text = s.metrics_text().await;
    assert_eq!(
        series(&text, "kvserve_lookups_total{result=\"misdirected\"}"),
        Some(10.0),
        "9 single lookups and one batch"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn two_shards_cover_the_file_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "both.data", sample_lines());
    let low = TestServer::start(&data, &["--key-prefixes", "0-7"]).await;
    let high = TestServer::start(&data, &["--key-prefixes", "8-f"]).await;
    for key in [KEY, KEY2, FOREIGN, "11111111-1111-4111-8111-111111111111"] {
        let statuses = (
            low.get(&format!("/v1/keys/{key}")).await.status(),
            high.get(&format!("/v1/keys/{key}")).await.status(),
        );
        assert!(
            matches!(
                (statuses.0.as_u16(), statuses.1.as_u16()),
                (200, 421) | (421, 200)
            ),
            "{key}: {statuses:?}"
        );
    }
    low.stop().await.unwrap();
    high.stop().await.unwrap();
}

#[test]
fn bad_prefix_lists_are_refused() {
    for bad in ["g", "7-0", "0-77", ""] {
        let out = std::process::Command::new(binary())
            .args(["verify", "data/sample.data", "--key-prefixes", bad])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--key-prefixes"),
            "{bad}"
        );
    }
}
