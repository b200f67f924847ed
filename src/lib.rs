//! kvserve serves UUID → text pairs from one immutable data file over HTTP.
//!
//! Design goal: a lookup costs one hash probe and no copy of the value, and a bad data
//! file is refused whole with a message that names the file, line and reason. The cost:
//! the whole file is held in memory (`--storage memory`) and a load reads every byte
//! before the first request is answered.
//!
//! [`App`] is the one way to run the service: `main` builds it from the command line,
//! and the integration tests build it the same way on `127.0.0.1:0`.

pub mod cache;
pub mod cli;
pub mod dataset;
pub mod http;
pub mod reload;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use poem::listener::TcpAcceptor;
use poem::Server;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::cache::Cache;
use crate::cli::ServeArgs;
use crate::dataset::{Dataset, LoadError, LoadOptions};
use crate::http::{AppState, HttpSettings};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({listener} listener): {source}")]
    Bind {
        listener: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the loader thread panicked; see the log above")]
    LoaderPanicked,
    #[error("the {listener} listener failed: {source}")]
    Serve {
        listener: &'static str,
        source: std::io::Error,
    },
}

/// A bound, not yet running kvserve: both listeners are open (so their addresses are
/// known, even for port 0) but nothing is loaded or served yet.
pub struct App {
    api: TcpListener,
    admin: TcpListener,
    api_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: Arc<AppState>,
    data: PathBuf,
    load: LoadOptions,
    shutdown_timeout: Duration,
}

impl App {
    pub async fn bind(args: &ServeArgs) -> Result<Self, AppError> {
        let (api, api_addr) = bind("api", &args.addr).await?;
        let (admin, admin_addr) = bind("admin", &args.admin_addr).await?;
        let settings = HttpSettings {
            cache_control: format!("public, max-age={}", args.cache_max_age.as_secs()),
            max_batch: args.max_batch,
            max_body_bytes: args.max_body_bytes,
        };
        Ok(Self {
            api,
            admin,
            api_addr,
            admin_addr,
            state: Arc::new(AppState::new(Cache::new(args.cache_capacity), settings)),
            data: args.data.clone(),
            load: args.load.options(),
            shutdown_timeout: args.shutdown_timeout,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` resolves, loading the data file in the background
    /// meanwhile (data routes answer 503 until it is in). Returns an error if the load
    /// fails: a process that cannot serve its data should not pretend to be healthy.
    ///
    /// Shutdown order: readiness turns 503, the API listener stops accepting and drains
    /// in-flight requests (bounded by `--shutdown-timeout`), then the admin listener
    /// stops, so probes see "not ready" for the whole drain.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        tracing::info!(api = %self.api_addr, admin = %self.admin_addr, data = %self.data.display(), "listening");
        let (stop_api_tx, stop_api) = watch::channel(false);
        let (stop_admin_tx, stop_admin) = watch::channel(false);
        let timeout = Some(self.shutdown_timeout);
        let api = tokio::spawn(
            Server::new_with_acceptor(acceptor("api", self.api)?)
                .name("api")
                .run_with_graceful_shutdown(
                    http::api_endpoint(self.state.clone()),
                    stopped(stop_api),
                    timeout,
                ),
        );
        let admin = tokio::spawn(
            Server::new_with_acceptor(acceptor("admin", self.admin)?)
                .name("admin")
                .run_with_graceful_shutdown(
                    http::admin::admin_endpoint(self.state.clone()),
                    stopped(stop_admin),
                    timeout,
                ),
        );

        let loaded = spawn_loader(self.data, self.load);
        let state = self.state.clone();
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            failure = install_then_wait(loaded, &state) => Err(failure),
        };

        tracing::info!("shutting down: readiness is now 503, draining in-flight requests");
        state.begin_shutdown();
        let _ = stop_api_tx.send(true);
        join("api", api).await?;
        let _ = stop_admin_tx.send(true);
        join("admin", admin).await?;
        tracing::info!("shutdown complete");
        outcome
    }
}

async fn bind(listener: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), AppError> {
    let err = |source| AppError::Bind {
        listener,
        addr: addr.to_owned(),
        source,
    };
    let socket = TcpListener::bind(addr).await.map_err(err)?;
    let local = socket.local_addr().map_err(err)?;
    Ok((socket, local))
}

fn acceptor(listener: &'static str, socket: TcpListener) -> Result<TcpAcceptor, AppError> {
    TcpAcceptor::from_tokio(socket).map_err(|source| AppError::Serve { listener, source })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn join(
    listener: &'static str,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), AppError> {
    match server.await {
        Ok(result) => result.map_err(|source| AppError::Serve { listener, source }),
        Err(join) => Err(AppError::Serve {
            listener,
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// Loads on a plain thread, not `spawn_blocking`: if shutdown comes mid-load, the
/// process can exit without waiting for the runtime's blocking pool to finish it.
fn spawn_loader(path: PathBuf, opts: LoadOptions) -> oneshot::Receiver<Result<Dataset, LoadError>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("kvserve-load".to_owned())
        .spawn(move || {
            let _ = tx.send(dataset::load(&path, &opts));
        })
        .map_or_else(
            |err| tracing::error!(error = %err, "cannot start the loader thread"),
            drop,
        );
    rx
}

/// Installs the loaded dataset, then waits forever; returns only if the load failed.
async fn install_then_wait(
    loaded: oneshot::Receiver<Result<Dataset, LoadError>>,
    state: &AppState,
) -> AppError {
    match loaded.await {
        Ok(Ok(dataset)) => {
            let keys = dataset.len();
            let generation = state.dataset.install(dataset);
            tracing::info!(keys, generation, "dataset installed; ready");
            std::future::pending().await
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, "data file refused; nothing will be served");
            AppError::Load(err)
        }
        Err(_) => AppError::LoaderPanicked,
    }
}
