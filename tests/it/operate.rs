//! Operating kvserve (docs/OPERATIONS.md): metrics, the admin surface, hot reload,
//! request ids and logs — through a real server on 127.0.0.1:0, and the real binary
//! where a signal is involved.

use std::fs::File;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

async fn metrics(s: &TestServer) -> String {
    let resp = s.client.get(s.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

async fn admin_post(s: &TestServer, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = s.client.post(s.admin_url(path));
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let (_dir, s) = TestServer::with_sample(&["--cache-capacity", "100"]).await;
    for _ in 0..3 {
        s.get(&format!("/v1/keys/{KEY}")).await;
    }
    s.get(&format!("/v1/keys/{MISSING}")).await;
    s.get("/v1/keys/not-a-key").await;
    s.get(&format!("/v1/keys/{KEY2}/value")).await;
    s.get(&format!("/get_value/{KEY}")).await;
    s.get("/some/secret/path/xyz").await;
    s.client
        .post(s.url("/v1/keys/batch"))
        .json(&json!({"keys": [KEY, MISSING]}))
        .send()
        .await
        .unwrap();

    let text = metrics(&s).await;
    let count = |route: &str, method: &str, status: u16| {
        series(&text, &format!("kvserve_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"))
    };
    assert_eq!(count("/v1/keys/{key}", "GET", 200), Some(3.0));
    assert_eq!(count("/v1/keys/{key}", "GET", 404), Some(1.0));
    assert_eq!(count("/v1/keys/{key}", "GET", 400), Some(1.0));
    assert_eq!(count("/v1/keys/{key}/value", "GET", 200), Some(1.0));
    assert_eq!(count("/get_value/{key}", "GET", 200), Some(1.0));
    assert_eq!(count("/v1/keys/batch", "POST", 200), Some(1.0));
    assert_eq!(count("unmatched", "GET", 404), Some(1.0));
    assert!(
        !text.contains("secret") && !text.contains(KEY),
        "raw paths must never become labels"
    );

    // 3 (v1) + 1 (value) + 1 (legacy) + 1 (batch) found; 1 (v1) + 1 (batch) missing.
    assert_eq!(
        series(&text, "kvserve_lookups_total{result=\"found\"}"),
        Some(6.0)
    );
    assert_eq!(
        series(&text, "kvserve_lookups_total{result=\"missing\"}"),
        Some(2.0)
    );
    // The rendered-answer cache is asked before the index and admits a key on its
    // second miss: the first two GETs of KEY miss (the second stores it), the third and
    // the legacy route hit, the GET of the missing key misses; KEY2's JSON was never
    // asked for.
    assert_eq!(series(&text, "kvserve_cache_hits_total"), Some(2.0));
    assert_eq!(series(&text, "kvserve_cache_misses_total"), Some(3.0));
    assert_eq!(series(&text, "kvserve_cache_entries"), Some(1.0));
    assert_eq!(series(&text, "kvserve_http_requests_in_flight"), Some(0.0));
    assert_eq!(series(&text, "kvserve_dataset_keys"), Some(4.0));
    assert_eq!(series(&text, "kvserve_dataset_generation"), Some(1.0));
    assert_eq!(
        series(&text, "kvserve_dataset_bytes"),
        Some(sample_lines().len() as f64)
    );
    assert!(series(&text, "kvserve_dataset_loaded_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(
        series(&text, "kvserve_dataset_reloads_total{result=\"success\"}"),
        Some(0.0)
    );
    for limit in ["peer", "subject"] {
        assert_eq!(
            series(
                &text,
                &format!("kvserve_rate_limited_total{{limit=\"{limit}\"}}")
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        series(
            &text,
            "kvserve_auth_failures_total{reason=\"invalid_token\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        series(
            &text,
            &format!(
                "kvserve_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert!(text.contains("kvserve_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/keys/{key}\",le=\"0.00005\"}"));
    assert!(series(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn admin_dataset_describes_what_is_served() {
    let (_dir, data, s) = TestServer::with_sample_file("d.data", &[]).await;
    let info: Value = s.dataset_info().await;
    assert_eq!(info["path"], data.display().to_string());
    assert_eq!(info["keys"], 4);
    assert_eq!(info["bytes"], sample_lines().len());
    assert_eq!(info["generation"], 1);
    assert_eq!(info["skipped_lines"], 0);
    assert_eq!(info["version"].as_str().unwrap().len(), 32);
    assert!(info["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(info["load_seconds"].as_f64().unwrap() >= 0.0);
    assert!(info.get("sha256").is_none(), "no checksum was given");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_good_reload_swaps_the_data_and_purges_the_cache() {
    let (dir, _, s) = TestServer::with_sample_file("r.data", &["--cache-capacity", "100"]).await;
    let etag_before = s.get(&format!("/v1/keys/{KEY}")).await.headers()["etag"].clone();

    write_file(
        dir.path(),
        "r.data",
        format!("{KEY} new value\n{MISSING} now present\n"),
    );
    let resp = admin_post(&s, "/admin/reload", None).await;
    assert_eq!(resp.status(), 200);
    let info: Value = resp.json().await.unwrap();
    assert_eq!(
        (info["generation"].as_u64(), info["keys"].as_u64()),
        (Some(2), Some(2))
    );

    let resp = s.get(&format!("/v1/keys/{KEY}")).await;
    assert_ne!(
        resp.headers()["etag"],
        etag_before,
        "a new file means new ETags"
    );
    assert_eq!(
        resp.json::<Value>().await.unwrap()["value"],
        "new value",
        "not the cached old answer"
    );
    assert_eq!(s.get(&format!("/v1/keys/{MISSING}")).await.status(), 200);
    assert_eq!(s.get(&format!("/v1/keys/{KEY2}")).await.status(), 404);

    let text = metrics(&s).await;
    assert_eq!(
        series(&text, "kvserve_dataset_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(series(&text, "kvserve_dataset_generation"), Some(2.0));
    assert_eq!(series(&text, "kvserve_dataset_keys"), Some(2.0));

    // A file named in the request, inside the folder, becomes the one served.
    write_file(dir.path(), "other.data", format!("{KEY2} from other\n"));
    let resp = admin_post(&s, "/admin/reload", Some(json!({"path": "other.data"}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.value_text(KEY2).await, "from other");
    let info: Value = s.dataset_info().await;
    assert!(info["path"].as_str().unwrap().ends_with("other.data"));
    s.stop().await.unwrap();
}

/// A reload naming another file of the data folder (a credential, a config) gets a
/// 422 that names the line and the reason but quotes nothing of it (issue 25, item 20).
#[tokio::test]
async fn a_reload_of_another_file_quotes_none_of_it() {
    let (dir, _, s) = TestServer::with_sample_file("q.data", &[]).await;
    write_file(dir.path(), "secret.txt", "password=TOP-SECRET-VALUE\n");
    let resp = admin_post(&s, "/admin/reload", Some(json!({"path": "secret.txt"}))).await;
    let body = problem(resp, 422).await;
    let text = body.to_string();
    assert!(!text.contains("TOP-SECRET"), "content quoted: {text}");
    assert!(!text.contains("password"), "content quoted: {text}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("secret.txt:1:"), "{detail}");
    assert_eq!(s.value_text(KEY).await, VALUE, "the old dataset stays");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_reload_keeps_the_old_data_and_says_why() {
    let (dir, _, s) = TestServer::with_sample_file("c.data", &[]).await;
    write_file(
        dir.path(),
        "c.data",
        format!("{KEY} fine\nthis line is broken\n"),
    );
    let resp = admin_post(&s, "/admin/reload", None).await;
    let body = problem(resp, 422).await;
    assert_eq!(body["type"], "urn:kvserve:problem:reload-failed");
    assert!(
        body["detail"].as_str().unwrap().contains("c.data:2:"),
        "{body}"
    );

    let value: Value = s
        .get(&format!("/v1/keys/{KEY}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(value["value"], VALUE, "the old dataset is still served");
    let text = metrics(&s).await;
    assert_eq!(
        series(&text, "kvserve_dataset_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
    assert_eq!(series(&text, "kvserve_dataset_generation"), Some(1.0));
    // A missing file in the folder is a failed reload too.
    let resp = admin_post(&s, "/admin/reload", Some(json!({"path": "nope.data"}))).await;
    assert!(problem(resp, 422).await["detail"]
        .as_str()
        .unwrap()
        .contains("nope.data"));
    s.stop().await.unwrap();
}

/// The reload-failing alert (prometheus/rules.yml) compares the time of the last failed
/// reload with the time the dataset served was loaded: the alert holds while the last
/// attempt failed, and a good reload clears it.
#[tokio::test]
async fn the_last_failed_reload_is_timestamped_until_a_good_one() {
    let (dir, _, s) = TestServer::with_sample_file("t.data", &[]).await;
    let failed = "kvserve_dataset_reload_failed_timestamp_seconds";
    let loaded = "kvserve_dataset_loaded_timestamp_seconds";
    let text = metrics(&s).await;
    assert_eq!(series(&text, failed), Some(0.0), "no reload failed yet");
    write_file(dir.path(), "t.data", "this line is broken\n");
    problem(admin_post(&s, "/admin/reload", None).await, 422).await;
    let text = metrics(&s).await;
    let (f, l) = (
        series(&text, failed).unwrap(),
        series(&text, loaded).unwrap(),
    );
    assert!(f > l && l > 0.0, "failed {f} after loaded {l}");
    write_file(dir.path(), "t.data", sample_lines());
    assert_eq!(admin_post(&s, "/admin/reload", None).await.status(), 200);
    let text = metrics(&s).await;
    let (f2, l2) = (
        series(&text, failed).unwrap(),
        series(&text, loaded).unwrap(),
    );
    assert_eq!(f2, f, "the failure time stays");
    assert!(l2 > f2, "loaded {l2} after the failure {f2}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_reload_while_one_runs_is_409() {
    let (_dir, data, s) =
        TestServer::with_sample_file("busy.data", &["--lock-timeout", "30s"]).await;
    // The publisher's exclusive lock holds the first reload in its lock wait.
    let publisher = File::open(&data).unwrap();
    publisher.lock().unwrap();
    let first = tokio::spawn({
        let (client, url) = (s.client.clone(), s.admin_url("/admin/reload"));
        async move { client.post(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = admin_post(&s, "/admin/reload", None).await;
    assert_eq!(
        problem(second, 409).await["type"],
        "urn:kvserve:problem:reload-in-progress"
    );
    publisher.unlock().unwrap();
    assert_eq!(first.await.unwrap(), 200);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn reload_paths_must_stay_in_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "p.data", sample_lines());
    let elsewhere = write_file(outside.path(), "elsewhere.data", sample_lines());
    std::os::unix::fs::symlink(&elsewhere, dir.path().join("link.data")).unwrap();
    write_file(dir.path(), "inside.data", sample_lines());
    std::os::unix::fs::symlink(
        dir.path().join("inside.data"),
        dir.path().join("good-link.data"),
    )
    .unwrap();
    let s = TestServer::start(&data, &[]).await;

    for path in [
        "../p.data".to_owned(),
        format!("sub/../../{}", elsewhere.display()),
        elsewhere.display().to_string(),
        "/etc/hostname".to_owned(),
        "link.data".to_owned(),
        String::new(),
        // A path is a file name: even an absolute path to a file in the folder is
        // refused, as are subfolders (which `--watch` does not watch).
        dir.path().join("inside.data").display().to_string(),
        "./inside.data".to_owned(),
        "inside.data/".to_owned(),
    ] {
        let resp = admin_post(&s, "/admin/reload", Some(json!({ "path": path }))).await;
        let body = problem(resp, 400).await;
        assert_eq!(
            body["type"], "urn:kvserve:problem:invalid-reload-path",
            "{path}: {body}"
        );
    }
    // Inside the folder: by name, or through a link that stays inside.
    for path in ["inside.data".to_owned(), "good-link.data".to_owned()] {
        assert_eq!(
            admin_post(&s, "/admin/reload", Some(json!({ "path": path })))
                .await
                .status(),
            200,
            "{path}"
        );
    }
    for (body, needle) in [
        ("[1]", "JSON object"),
        ("{\"path\": 3}", "`path` must be a string"),
        ("nope", "not valid JSON"),
    ] {
        let resp = s
            .client
            .post(s.admin_url("/admin/reload"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(problem(resp, 400).await["detail"]
            .as_str()
            .unwrap()
            .contains(needle));
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn admin_bad_paths_and_methods_are_problems() {
    let (_dir, s) = TestServer::with_sample(&[]).await;
    for path in ["/admin", "/admin/nope", "/v1/keys/x", "/metricz"] {
        problem(s.client.get(s.admin_url(path)).send().await.unwrap(), 404).await;
    }
    for (method, path) in [
        ("GET", "/admin/reload"),
        ("GET", "/admin/cache/purge"),
        ("POST", "/metrics"),
        ("DELETE", "/admin/dataset"),
        ("POST", "/readyz"),
    ] {
        let resp = s
            .client
            .request(method.parse().unwrap(), s.admin_url(path))
            .send()
            .await
            .unwrap();
        problem(resp, 405).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn cache_purge_empties_the_lru() {
    let (_dir, s) = TestServer::with_sample(&["--cache-capacity", "100"]).await;
    // Twice each: the cache admits a key on its second miss.
    for _ in 0..2 {
        s.get(&format!("/v1/keys/{KEY}")).await;
        s.get(&format!("/v1/keys/{KEY2}")).await;
    }
    let resp: Value = admin_post(&s, "/admin/cache/purge", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["purged"], 2);
    assert_eq!(
        series(&metrics(&s).await, "kvserve_cache_entries"),
        Some(0.0)
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let (_dir, s) = TestServer::with_sample(&[]).await;
    let resp = s
        .client
        .get(s.url(&format!("/v1/keys/{KEY}")))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let a = s.get("/nope").await.headers()["x-request-id"].clone();
    let b = s.get("/nope").await.headers()["x-request-id"].clone();
    assert_ne!(a, b);
    let long = "x".repeat(500);
    let resp = s
        .client
        .get(s.url("/docs"))
        .header("X-Request-Id", long.as_str())
        .send()
        .await
        .unwrap();
    assert_ne!(
        resp.headers()["x-request-id"],
        long.as_str(),
        "an oversized id is replaced"
    );
    s.stop().await.unwrap();
}

/// Readers never see a failed request while reloads swap datasets under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_steady_load_fail_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "load.data", sample_lines());
    let other = format!("{KEY} other value\n{KEY2} x\n");
    write_file(dir.path(), "other.data", &other);
    let s = TestServer::start(&data, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (s.client.clone(), s.url(&format!("/v1/keys/{KEY}")));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while Instant::now() < deadline {
                    match client.get(&url).send().await {
                        Ok(resp) if resp.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut reloads = 0;
    while Instant::now() < deadline {
        let path = if reloads % 2 == 0 {
            "other.data"
        } else {
            "load.data"
        };
        let resp = admin_post(&s, "/admin/reload", Some(json!({ "path": path }))).await;
        assert_eq!(resp.status(), 200);
        reloads += 1;
    }
    let (mut ok, mut failed) = (0, 0);
    for reader in readers {
        let (o, f) = reader.await.unwrap();
        ok += o;
        failed += f;
    }
    assert!(reloads >= 3 && ok > 100, "{reloads} reloads, {ok} requests");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during {reloads} reloads",
        ok + failed
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn watch_reloads_when_the_file_is_replaced() {
    let (dir, data, s) =
        TestServer::with_sample_file("w.data", &["--watch", "--watch-debounce", "100ms"]).await;
    // The publisher's way: write a new file, then rename it over the old one.
    let staged = write_file(dir.path(), "w.data.tmp", format!("{KEY} watched\n"));
    std::fs::rename(&staged, &data).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = s.value_text(KEY).await;
        if value == "watched" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replaced file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unrelated file in the folder does not trigger a reload.
    write_file(dir.path(), "unrelated.txt", "x");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let info: Value = s.dataset_info().await;
    assert_eq!(info["generation"], 2);
    s.stop().await.unwrap();
}

#[test]
fn sighup_reloads_the_file_and_logs_json() {
    let (dir, _, mut p) = ready_sample_binary("hup.data", &["--log-format", "json"]);
    write_file(dir.path(), "hup.data", format!("{MISSING} after hangup\n"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the reloaded file to be served", || {
        http_status(p.api, &format!("/v1/keys/{MISSING}")) == Some(200)
    });
    assert_eq!(http_status(p.api, &format!("/v1/keys/{KEY}")), Some(404));
    sigterm(&p.child);
    assert_eq!(
        wait_exit(&mut p.child, Duration::from_secs(10)).code(),
        Some(0)
    );

    let log = p.log();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(events.len() > 5, "every log line is JSON:\n{log}");
    let access: Vec<&Value> = events
        .iter()
        .filter(|e| e["target"] == "kvserve::access")
        .collect();
    let hit = access
        .iter()
        .find(|e| e["route"] == "/v1/keys/{key}" && e["status"] == 200)
        .expect("an access-log event for the found key");
    for field in ["method", "duration_us", "request_id", "client"] {
        assert!(!hit[field].is_null(), "access log lacks {field}: {hit}");
    }
    assert!(hit["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(events
        .iter()
        .any(|e| e["message"] == "dataset installed" && e["trigger"] == "SIGHUP"));
    assert!(events
        .iter()
        .any(|e| e["message"] == "starting kvserve with this configuration"));
}

/// `--watch` debounces on events about the data file only: another file in the folder
/// written to all the time does not hold back the reload of a replaced data file.
#[tokio::test]
async fn watch_is_not_starved_by_writes_to_other_files() {
    let (dir, data, s) =
        TestServer::with_sample_file("busy.data", &["--watch", "--watch-debounce", "300ms"]).await;
    // A log file next to the data, appended to every 100 ms for up to 15 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = std::thread::spawn({
        let (stop, path) = (stop.clone(), dir.path().join("noise.log"));
        move || {
            let started = Instant::now();
            let mut log = File::create(path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(15)
            {
                std::io::Write::write_all(&mut log, b"noise\n").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let staged = write_file(dir.path(), "busy.data.tmp", format!("{KEY} watched\n"));
    std::fs::rename(&staged, &data).unwrap();
    let mut picked_up = false;
    while !noise.is_finished() {
        let value = s.value_text(KEY).await;
        if value == "watched" {
            picked_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    noise.join().unwrap();
    assert!(
        picked_up,
        "the replaced file was not reloaded while another file was being written"
    );
    s.stop().await.unwrap();
}

fn mkfifo(path: &std::path::Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a directory entry.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A reload that takes its time to answer, given a generous deadline: long enough for
/// any honest reload of these small files, short enough that a hang fails the test.
async fn admin_post_within(s: &TestServer, body: Option<Value>) -> reqwest::Response {
    let mut req = s
        .client
        .post(s.admin_url("/admin/reload"))
        .timeout(Duration::from_secs(10));
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send()
        .await
        .expect("the reload answers instead of hanging")
}

/// A FIFO (or a FIFO as the `.sha256` sidecar) in the data folder is refused at once
/// with a reason naming it, instead of blocking the reload — and with it every other
/// reload — for ever.
#[tokio::test]
async fn a_fifo_in_the_data_folder_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "f.data", sample_lines());
    mkfifo(&dir.path().join("pipe.data"));
    write_file(dir.path(), "side.data", format!("{KEY} side\n"));
    mkfifo(&dir.path().join("side.data.sha256"));
    let s = TestServer::start(&data, &[]).await;
    for (path, named) in [
        ("pipe.data", "pipe.data"),
        ("side.data", "side.data.sha256"),
    ] {
        let resp = admin_post_within(&s, Some(json!({ "path": path }))).await;
        let body = problem(resp, 422).await;
        assert_eq!(body["type"], "urn:kvserve:problem:reload-failed");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(named) && detail.contains("FIFO"),
            "{detail}"
        );
    }
    // Nothing was left holding the reload lock.
    assert_eq!(admin_post_within(&s, None).await.status(), 200);
    assert_eq!(s.value_text(KEY).await, VALUE);
    s.stop().await.unwrap();
}

/// A symlink accepted by one reload is checked again by every later one: repointed
/// out of the folder, the next path-less reload refuses it without reading a byte of
/// the target, so nothing of it can show up in the answer.
#[tokio::test]
async fn a_symlink_repointed_outside_is_refused_on_the_next_reload() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "s.data", sample_lines());
    write_file(dir.path(), "inside.data", format!("{KEY} inside\n"));
    let secret = write_file(outside.path(), "secret", "TOP-SECRET first line\n");
    let link = dir.path().join("link.data");
    std::os::unix::fs::symlink(dir.path().join("inside.data"), &link).unwrap();
    let s = TestServer::start(&data, &[]).await;
    let resp = admin_post(&s, "/admin/reload", Some(json!({"path": "link.data"}))).await;
    assert_eq!(resp.status(), 200);

    // Repointed (the way a publisher swaps a link: a new one renamed over the old).
    let repoint = |target: &std::path::Path| {
        let staged = dir.path().join("link.data.tmp");
        std::os::unix::fs::symlink(target, &staged).unwrap();
        std::fs::rename(&staged, &link).unwrap();
    };
    repoint(&secret);
    let resp = admin_post_within(&s, None).await;
    let body = problem(resp, 422).await;
    let text = body.to_string();
    assert!(!text.contains("TOP-SECRET"), "content from outside: {text}");
    let detail = body["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("outside"), "{text}");
    // Nor does the refusal tell a missing file or a FIFO out there from a readable one.
    mkfifo(&outside.path().join("fifo"));
    for target in ["missing", "fifo"] {
        repoint(&outside.path().join(target));
        let resp = admin_post_within(&s, None).await;
        assert_eq!(
            problem(resp, 422).await["detail"],
            detail.as_str(),
            "{target}"
        );
    }
    assert_eq!(
        s.value_text(KEY).await,
        "inside",
        "the previous dataset stays"
    );
    assert_eq!(
        series(
            &metrics(&s).await,
            "kvserve_dataset_reloads_total{result=\"failure\"}"
        ),
        Some(3.0)
    );
    s.stop().await.unwrap();

    // The configured --data file is trusted wherever it points, on reload too.
    let trusted = dir.path().join("trusted.data");
    let target = write_file(outside.path(), "target.data", sample_lines());
    std::os::unix::fs::symlink(&target, &trusted).unwrap();
    let s = TestServer::start(&trusted, &[]).await;
    assert_eq!(admin_post_within(&s, None).await.status(), 200);
    s.stop().await.unwrap();
}

/// Refusing a path outside the folder does not tell whether it exists: confinement is
/// checked before existence, and every such path gets the same 400. Subfolders are not
/// "in the folder" (`--watch` does not see them): a path is a file name.
#[tokio::test]
async fn reload_path_refusals_do_not_reveal_what_exists_outside() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "o.data", sample_lines());
    let exists = write_file(outside.path(), "exists.data", sample_lines());
    let missing = outside.path().join("missing.data");
    std::os::unix::fs::symlink(&exists, dir.path().join("to-existing.data")).unwrap();
    std::os::unix::fs::symlink(&missing, dir.path().join("to-missing.data")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_file(&dir.path().join("sub"), "x.data", sample_lines());
    let s = TestServer::start(&data, &[]).await;

    let refusal = |path: String| {
        let s = &s;
        async move {
            let resp = admin_post_within(s, Some(json!({ "path": path }))).await;
            let body = problem(resp, 400).await;
            assert_eq!(
                body["type"], "urn:kvserve:problem:invalid-reload-path",
                "{path}: {body}"
            );
            body["detail"].as_str().unwrap().replace(&path, "<path>")
        }
    };
    for (a, b) in [
        (exists.display().to_string(), missing.display().to_string()),
        ("to-existing.data".to_owned(), "to-missing.data".to_owned()),
        (
            "sub/../../exists.data".to_owned(),
            "sub/../../missing.data".to_owned(),
        ),
    ] {
        assert_eq!(refusal(a).await, refusal(b).await);
    }
    refusal("sub/x.data".to_owned()).await;
    refusal(dir.path().join("sub/x.data").display().to_string()).await;
    s.stop().await.unwrap();
}

/// A reload path carrying a newline and an ANSI "clear screen" must not forge a second
/// text log line nor reach a terminal raw: control characters are escaped in every
/// field of a text log.
#[test]
fn text_logs_escape_control_characters() {
    let (_dir, _, mut p) = ready_sample_binary("esc.data", &["--log-format", "text"]);
    let forged = "2030-01-01T00:00:00.000000Z  INFO kvserve: FORGED admin logged in";
    let path = format!("nope\n{forged}\u{1b}[2J\r\t\u{7f}\u{9b}.data");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{}/admin/reload", p.admin))
            .json(&json!({ "path": path }))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_client_error(), "{status}");
    wait_until("the failed reload to be logged", || {
        p.log().contains("reload failed")
    });
    sigterm(&p.child);
    wait_exit(&mut p.child, Duration::from_secs(10));

    let log = p.log();
    assert!(!log.contains('\u{1b}'), "a raw ESC reached the log:\n{log}");
    assert!(
        !log.contains(['\r', '\u{7f}', '\u{9b}']),
        "a raw control character reached the log:\n{log:?}"
    );
    assert!(
        !log.lines().any(|line| line.starts_with("2030-01-01")),
        "a forged line:\n{log}"
    );
    let failed = log
        .lines()
        .find(|line| line.contains("reload failed"))
        .unwrap();
    assert!(
        failed.contains(r"nope\n2030-01-01") && failed.contains(r"\x1b[2J"),
        "the path is shown escaped: {failed}"
    );
}

/// A sparse file far larger than memory costs nothing on disk. With `--storage memory`
/// its reload must be refused (422 naming the size) before anything is allocated, and
/// the old dataset must keep serving: the real binary is used because an allocation
/// failure aborts the whole process.
#[test]
fn a_reload_larger_than_memory_is_refused_and_the_old_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "mem.data", sample_lines());
    let huge = File::create(dir.path().join("huge.data")).unwrap();
    huge.set_len(100 << 30).unwrap();
    let mut p = spawn_binary(&data, &["--storage", "memory"]);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/admin/reload", p.admin))
            .json(&json!({"path": "huge.data"}))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the server answers instead of aborting");
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(status, 422, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["type"], "urn:kvserve:problem:reload-failed");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("huge.data") && detail.contains("107374182400 bytes"),
        "{detail}"
    );
    assert_eq!(http_status(p.api, &format!("/v1/keys/{KEY}")), Some(200));
    assert!(p.child.try_wait().unwrap().is_none(), "the server is alive");

    // `--max-memory` bounds it explicitly: a 2 KiB file against a 1 KiB bound.
    sigterm(&p.child);
    wait_exit(&mut p.child, Duration::from_secs(10));
    let mut p = spawn_binary(&data, &["--max-memory", "1KiB"]);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    let mut big = sample_lines();
    for n in 0..20 {
        big.push_str(&format!(
            "{n:08x}-0000-4000-8000-000000000000 {}\n",
            "x".repeat(100)
        ));
    }
    write_file(dir.path(), "mem.data", &big);
    let (status, body) = runtime.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/admin/reload", p.admin))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(&format!("{} bytes", big.len())) && body.contains("--max-memory"),
        "{body}"
    );
    assert_eq!(http_status(p.api, &format!("/v1/keys/{KEY}")), Some(200));
    sigterm(&p.child);
    wait_exit(&mut p.child, Duration::from_secs(10));
}

/// With `--storage mmap` the values are read from the file's pages for as long as the
/// dataset is served, so `/admin/dataset` says whether the mapped file was written
/// since the load (an in-place rewrite that even put its mtime back): from then on
/// the `sha256` shown certifies what was loaded, no longer what is served.
#[tokio::test]
async fn admin_dataset_tells_when_a_mapped_file_was_rewritten_in_place() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "m.data", sample_lines());
    let sum = kvserve::dataset::integrity::sha256_hex(sample_lines().as_bytes());
    write_file(dir.path(), "m.data.sha256", format!("{sum}  m.data\n"));
    let info = |s: &TestServer| {
        let (client, url) = (s.client.clone(), s.admin_url("/admin/dataset"));
        async move {
            let resp = client.get(url).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let s = TestServer::start(&data, &["--storage", "mmap"]).await;
    let before = info(&s).await;
    assert_eq!(before["sha256"], sum);
    assert_eq!(before["mapped_file_changed"], false, "{before}");

    let mtime = std::fs::metadata(&data).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.write_all_at(b"Z", (KEY.len() + 1) as u64).unwrap();
    file.set_modified(mtime).unwrap();
    let after = info(&s).await;
    assert_eq!(after["mapped_file_changed"], true, "{after}");
    s.stop().await.unwrap();

    // A private copy (`--storage memory`) cannot change: no such field.
    let data = write_file(dir.path(), "c.data", sample_lines());
    let s = TestServer::start(&data, &[]).await;
    assert!(info(&s).await.get("mapped_file_changed").is_none());
    s.stop().await.unwrap();
}

/// With `--storage mmap` a writer that ignores the lock can rewrite a value in place
/// after the load. Every lookup route then answers what the file now holds, found (one
/// index probe, no second look at the bytes): the raw route the bytes as they are, the
/// JSON routes a valid JSON text in which a byte that is no longer UTF-8 reads as
/// U+FFFD. A key the index holds is never answered 404 because its bytes changed.
#[tokio::test]
async fn a_mapped_value_rewritten_in_place_is_still_found_and_rendered_as_json() {
    use std::os::unix::fs::FileExt;
    let (_dir, data, s) =
        TestServer::with_sample_file("m.data", &["--storage", "mmap", "--cache-capacity", "0"])
            .await;
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.write_all_at(b"\xff", (KEY.len() + 1) as u64).unwrap();
    let metrics = |s: &TestServer| {
        let (client, url) = (s.client.clone(), s.admin_url("/metrics"));
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            let count = |result: &str| {
                series(
                    &text,
                    &format!("kvserve_lookups_total{{result=\"{result}\"}}"),
                )
                .unwrap_or(0.0)
            };
            (count("found"), count("missing"))
        }
    };
    let (found, missing) = metrics(&s).await;
    let rewritten = format!("\u{fffd}{}", &VALUE[1..]);

    let resp = s.get(&format!("/v1/keys/{KEY}")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body, json!({"key": KEY, "value": rewritten}));

    let resp = s.get(&format!("/v1/keys/{KEY}/value")).await;
    assert_eq!(resp.status(), 200);
    let raw = resp.bytes().await.unwrap();
    assert_eq!(raw[0], 0xff);
    assert_eq!(&raw[1..], &VALUE.as_bytes()[1..]);

    let resp = s.get(&format!("/get_value/{KEY}")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["value"], rewritten);

    let resp = s
        .client
        .post(s.url("/v1/keys/batch"))
        .json(&json!({"keys": [KEY, KEY2, MISSING]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"values": {KEY: rewritten, KEY2: VALUE2}, "missing": [MISSING]})
    );

    // Counted as before: one per key looked up.
    assert_eq!(metrics(&s).await, (found + 5.0, missing + 1.0));
    s.stop().await.unwrap();
}

/// `--storage` and `--on-duplicate` list their values, each with its meaning, in
/// `--help`, and a bad value gets clap's own error naming the flag and the choices.
#[test]
fn the_help_lists_the_storage_and_duplicate_choices_and_refuses_others() {
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .output()
            .unwrap()
    };
    let help = run(&["serve", "--help"]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for line in [
        "--storage <STORAGE>",
        "- memory: The file is read into one contiguous buffer that holds every value",
        "- mmap:   Values are read from the memory-mapped file",
        "[default: memory]",
        "--on-duplicate <ON_DUPLICATE>",
        "- error: Refuse the file: two values for one key means a corrupt data file",
        "- first: Keep the value from the earliest line",
        "- last:  Keep the value from the latest line",
        "[default: error]",
        // Traces are set by the standard variables, listed where the flags are.
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER ",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
    for (flag, bad, expected) in [
        (
            "--storage",
            "nope",
            "'--storage <STORAGE>'\n  [possible values: memory, mmap]",
        ),
        (
            "--on-duplicate",
            "x",
            "'--on-duplicate <ON_DUPLICATE>'\n  [possible values: error, first, last]",
        ),
    ] {
        let out = run(&["serve", flag, bad]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            err,
            format!("error: invalid value '{bad}' for {expected}\n\nFor more information, try '--help'.\n")
        );
    }
    // The environment twins take the same values.
    let out = std::process::Command::new(binary())
        .args(["verify", "/nonexistent.data"])
        .env("KVSERVE_STORAGE", "disk")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: memory, mmap]"));
}

/// Start-up logs the effective settings one field each (text: one line per setting;
/// JSON: one event per setting with `name`, `value`, `source`), where each came from,
/// and no secret's content: an HS256 secret in a file or in the environment, a
/// collector URL's credentials and query.
#[test]
fn start_up_logs_each_setting_on_its_own_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "s.data", sample_lines());
    let secret = write_file(dir.path(), "hs.secret", "file-secret-content-7f3a");
    let stop = |mut p: Process| {
        sigterm(&p.child);
        wait_exit(&mut p.child, Duration::from_secs(10));
        p.log()
    };

    // Text: a secret file, a setting from the environment, a collector with credentials.
    let text = stop(spawn_binary_with_env(
        &data,
        &[
            "--jwt-hs256-secret-file",
            secret.to_str().unwrap(),
            "--max-batch",
            "7",
        ],
        &[
            ("KVSERVE_RATE_LIMIT", "50"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector-user:collector-pw@127.0.0.1:9/?sig=query-token",
            ),
        ],
    ));
    for line in [
        format!(
            "setting name=jwt-hs256-secret-file value={} source=flag",
            secret.display()
        ),
        "setting name=max-batch value=7 source=flag".to_owned(),
        "setting name=rate-limit value=50 source=env KVSERVE_RATE_LIMIT".to_owned(),
        "setting name=cache-capacity value=0 source=default for --storage".to_owned(),
        "setting name=max-connections-per-address value=1000 source=default for --max-connections"
            .to_owned(),
        "setting name=storage value=memory source=default".to_owned(),
        "setting name=request-timeout value=unset source=default".to_owned(),
        "setting name=log-level value=info source=default".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    assert!(!text.contains("ServeArgs"), "no Debug dump:\n{text}");
    for secret in [
        "file-secret-content",
        "collector-pw",
        "collector-user",
        "query-token",
    ] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }

    // JSON: one event per setting, every serve flag once; the secret from the env named.
    let json = stop(spawn_binary_with_env(
        &data,
        &["--log-format", "json"],
        &[("KVSERVE_JWT_HS256_SECRET", "env-secret-content-91c2")],
    ));
    assert!(
        !json.contains("env-secret-content"),
        "secret logged:\n{json}"
    );
    let settings: Vec<Value> = json
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["message"] == "setting" && e["target"] == "kvserve::config")
        .collect();
    let named =
        |name: &str| -> Vec<&Value> { settings.iter().filter(|e| e["name"] == name).collect() };
    for name in [
        "data",
        "addr",
        "admin-addr",
        "storage",
        "cache-capacity",
        "max-batch",
        "jwt-leeway",
        "rate-limit",
        "idle-timeout",
        "watch",
        "shutdown-timeout",
        "log-format",
        "log-buffer",
    ] {
        assert_eq!(named(name).len(), 1, "{name} once:\n{json}");
    }
    let log_format = named("log-format")[0];
    assert_eq!(log_format["value"], "json");
    assert_eq!(log_format["source"], "flag");
    let env_secret = named("jwt-hs256-secret")[0];
    assert_eq!(env_secret["value"], "(redacted)");
    assert_eq!(env_secret["source"], "env KVSERVE_JWT_HS256_SECRET");
}

/// The global flags' help is true for every subcommand: only `serve` has an access
/// log; and `serve --help` lists every route of the admin listener.
#[test]
fn the_help_of_each_subcommand_speaks_of_what_it_does() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for command in ["verify", "gen", "token", "openapi"] {
        let text = help(&[command, "--help"]);
        assert!(
            !text.contains("access log") && !text.contains("kvserve::access"),
            "{command} --help mentions the access log:\n{text}"
        );
    }
    let verify = help(&["verify", "--help"]);
    assert!(!verify.contains("421"), "verify serves nothing:\n{verify}");
    assert!(verify.contains("--key-prefixes"));
    let serve = help(&["serve", "--help"]);
    let admin = &serve[serve.find("--admin-addr").unwrap()..serve.find("--storage").unwrap()];
    for route in [
        "/livez",
        "/readyz",
        "/metrics",
        "/admin/dataset",
        "/admin/reload",
        "/admin/cache/purge",
    ] {
        assert!(admin.contains(route), "{route} missing from:\n{admin}");
    }
    assert!(
        serve.contains("kvserve::access=off"),
        "serve keeps it:\n{serve}"
    );
}

/// With the LRU off (`--cache-capacity 0`, the default of memory storage) nothing is
/// counted as a cache miss: `kvserve_cache_capacity` says 0 instead. With it on, the
/// gauge says how many entries it holds at most and lookups count as before.
#[tokio::test]
async fn a_cache_that_is_off_says_so_and_counts_no_misses() {
    let (_dir, off) = TestServer::with_sample(&["--cache-capacity", "0"]).await;
    for _ in 0..3 {
        off.get(&format!("/v1/keys/{KEY}")).await;
        off.get(&format!("/get_value/{KEY}")).await;
    }
    let text = metrics(&off).await;
    assert_eq!(series(&text, "kvserve_cache_capacity"), Some(0.0), "{text}");
    assert_eq!(series(&text, "kvserve_cache_misses_total"), Some(0.0));
    assert_eq!(series(&text, "kvserve_cache_hits_total"), Some(0.0));
    assert_eq!(series(&text, "kvserve_cache_entries"), Some(0.0));
    off.stop().await.unwrap();

    let (_dir, on) = TestServer::with_sample(&["--cache-capacity", "64"]).await;
    on.get(&format!("/v1/keys/{KEY}")).await;
    let text = metrics(&on).await;
    assert!(
        series(&text, "kvserve_cache_capacity").unwrap() >= 64.0,
        "{text}"
    );
    assert_eq!(series(&text, "kvserve_cache_misses_total"), Some(1.0));
    on.stop().await.unwrap();
}
