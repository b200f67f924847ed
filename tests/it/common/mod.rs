//! Shared helpers for the black-box tests: a real kvserve on 127.0.0.1:0, built by the
//! same `App` builder and CLI parser as `main`, and small data files.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    /// The running server's shared state, for the few checks only its inside shows.
    pub state: std::sync::Arc<kvserve::http::HttpState>,
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
        let (api, admin, state) = (app.api_addr(), app.admin_addr(), app.state());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Self {
            api,
            admin,
            state,
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

    /// Starts kvserve on `sample_lines()` in a fresh folder, kept alive by the guard.
    pub async fn with_sample(extra: &[&str]) -> (tempfile::TempDir, Self) {
        let (dir, _, server) = Self::with_sample_file("test.data", extra).await;
        (dir, server)
    }

    /// As `with_sample`, with the data file called `name` and its path returned: the
    /// tests that rewrite, lock or name the file each wrote this set-up out by hand.
    pub async fn with_sample_file(
        name: &str,
        extra: &[&str],
    ) -> (tempfile::TempDir, PathBuf, Self) {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = write_file(dir.path(), name, sample_lines());
        let server = Self::start(&data, extra).await;
        (dir, data, server)
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

    /// The admin listener's `/metrics` text: most tests check a counter after the fact,
    /// and each used to spell out the same scrape.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("/metrics body")
    }

    /// What `GET /admin/dataset` says about the dataset served (keys, generation,
    /// version...), which reload and sharding tests read back after each step.
    pub async fn dataset_info(&self) -> serde_json::Value {
        self.client
            .get(self.admin_url("/admin/dataset"))
            .send()
            .await
            .expect("GET /admin/dataset")
            .json()
            .await
            .expect("/admin/dataset body is JSON")
    }

    /// The bare value served for `key` (`/v1/keys/{key}/value`), for the tests that
    /// watch which dataset answers.
    pub async fn value_text(&self, key: &str) -> String {
        self.get(&format!("/v1/keys/{key}/value"))
            .await
            .text()
            .await
            .expect("value body")
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

/// The value of one series in Prometheus text format, e.g.
/// `kvserve_lookups_total{result="found"}`.
pub fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The kvserve binary Cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvserve"))
}

pub struct Process {
    pub child: Child,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Process {
    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// Starts the real binary on `sample_lines()`, written as `name` in a fresh folder
/// (kept alive by the guard), and waits until `/readyz` answers 200: the signal and
/// fault tests each spelled out these four lines.
pub fn ready_sample_binary(name: &str, extra: &[&str]) -> (tempfile::TempDir, PathBuf, Process) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), name, sample_lines());
    let p = spawn_binary(&path, extra);
    wait_until("ready", || http_status(p.admin, "/readyz") == Some(200));
    (dir, path, p)
}

/// Starts the real binary on port 0 and reads the bound addresses from its log.
pub fn spawn_binary(data: &std::path::Path, extra: &[&str]) -> Process {
    spawn_binary_with_env(data, extra, &[])
}

/// As `spawn_binary`, with extra environment variables.
pub fn spawn_binary_with_env(
    data: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Process {
    let mut command = Command::new(binary());
    command
        .envs(env.iter().copied())
        .args(serve_args(data, extra));
    spawn_command(command)
}

/// The arguments of a server on port 0 for `data`, then `extra`.
pub fn serve_args(data: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--data",
        data.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Starts `command` (kvserve, perhaps behind a wrapper such as `setpriv`) and reads the
/// bound addresses from its log.
pub fn spawn_command(command: Command) -> Process {
    let (process, lines) = start_command(command);
    // Keep draining stderr so the child never blocks on a full pipe.
    let sink = process.log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    process
}

/// As `spawn_command`, but nobody reads the child's stderr once it has logged its
/// addresses: a log collector that stalls. The pipe stays open as long as the returned
/// reader lives.
pub fn spawn_command_undrained(
    command: Command,
) -> (
    Process,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    start_command(command)
}

fn start_command(
    mut command: Command,
) -> (
    Process,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvserve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, name: &str| -> SocketAddr {
        let start = line.find(name).unwrap() + name.len();
        line[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut addresses = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.lock().unwrap().push_str(&line);
        log.lock().unwrap().push('\n');
        if let Some(found) = listening_addresses(&line, field) {
            addresses = Some(found);
            break;
        }
    }
    let (api, admin) = addresses.expect("kvserve logs its addresses");
    let process = Process {
        child,
        api,
        admin,
        log,
    };
    (process, lines)
}

/// The API and admin addresses from kvserve's "listening" line, text or JSON.
fn listening_addresses(
    line: &str,
    field: impl Fn(&str, &str) -> SocketAddr,
) -> Option<(SocketAddr, SocketAddr)> {
    if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
        if event["message"] == "listening" && event["api"].is_string() {
            let addr = |name: &str| event[name].as_str().unwrap().parse().unwrap();
            return Some((addr("api"), addr("admin")));
        }
        return None;
    }
    (line.contains("listening") && line.contains("api="))
        .then(|| (field(line, "api="), field(line, "admin=")))
}

pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) from a raw stream:
/// `Ok(None)` if the server closed the connection before sending a byte of it, an
/// error if it closed half-way.
pub fn read_response(stream: &mut impl Read) -> std::io::Result<Option<(u16, Vec<u8>)>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) if head.is_empty() => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => head.push(byte[0]),
            Err(err) if head.is_empty() && err.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(None)
            }
            Err(err) => return Err(err),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let line = line.to_ascii_lowercase();
            line.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head}")))?;
    Ok(Some((status, body)))
}

/// Whether the tests run as root, who reads any file whatever its permissions.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "kvserve did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
