//! Shared helpers for the black-box tests: a real kvserve on 127.0.0.1:0, built by the
//! same `App` builder and CLI parser as `main`, and small data files.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use kvserve::cli::Cli;
use kvserve::App;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const KEY: &str = "72cf48f7-d604-4423-b012-4e2329f5117b";
pub const VALUE: &str = "zsda pl focnygogk x cjuu cmwrolqrmu wgdwxr";
pub const KEY2: &str = "0d9c6e4e-5c39-4f76-9a57-2f0b7e4c1a11";
pub const VALUE2: &str = "héllo \"quoted\" wörld";
pub const MISSING: &str = "00000000-0000-0000-0000-000000000000";

/// A small valid data file covering the awkward cases: a quote and non-ASCII in a
/// value, an empty value, an uppercase key.
pub fn sample_lines() -> String {
    format!(
        "{KEY} {VALUE}\n{KEY2} {VALUE2}\n11111111-1111-4111-8111-111111111111 \nAAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE upper\n"
    )
}

pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test data file");
    path
}

pub struct TestServer {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), kvserve::AppError>>>,
}

impl TestServer {
    /// Binds and starts kvserve on port 0 without waiting for the load.
    pub async fn spawn(data: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "kvserve".to_owned(),
            "--data".to_owned(),
            data.display().to_string(),
            "--addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--admin-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(args).expect("valid test arguments");
        let app = App::bind(&cli.serve).await.expect("bind on port 0");
        let (api, admin) = (app.api_addr(), app.admin_addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Self {
            api,
            admin,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts kvserve and waits until `/readyz` says the dataset is loaded.
    pub async fn start(data: &Path, extra: &[&str]) -> Self {
        let server = Self::spawn(data, extra).await;
        server.wait_ready().await;
        server
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(resp) = self.client.get(self.admin_url("/readyz")).send().await {
                if resp.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("kvserve did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Stops the server and returns what `App::run` returned.
    pub async fn stop(mut self) -> Result<(), kvserve::AppError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task")
    }

    /// Waits for the server to end by itself (a failed load).
    pub async fn finished(mut self) -> Result<(), kvserve::AppError> {
        tokio::time::timeout(Duration::from_secs(20), self.task.take().expect("running"))
            .await
            .expect("server ended")
            .expect("server task")
    }
}

/// Asserts a problem+json answer and returns its fields.
pub async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status of {}", resp.url());
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "content type of {}",
        resp.url()
    );
    let body: serde_json::Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:kvserve:problem:"));
    assert!(body["title"].is_string() && body["detail"].is_string());
    let text = body.to_string();
    assert!(
        !text.contains("param0") && !text.contains("string_uuid") && !text.contains("::"),
        "internals leak: {text}"
    );
    body
}

/// The kvserve binary Cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvserve"))
}
