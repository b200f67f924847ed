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
pub mod fdlimit;
pub mod http;
pub mod json;
pub mod metrics;
pub mod redact;
pub mod reload;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch as signal_channel;

use crate::cache::Cache;
use crate::cli::ServeArgs;
use crate::dataset::LoadError;
use crate::http::conn::{ConnectionGate, ConnectionLimits};
use crate::http::{HttpSettings, HttpState};
use crate::reload::{ReloadError, Reloader, Trigger};
use crate::state::AppState;

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
    #[error("the first load failed: {0}")]
    FirstLoad(ReloadError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Auth(#[from] http::auth::AuthConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    FdLimit(#[from] fdlimit::FdLimitError),
    #[error("--subject-rate-limit limits per verified token subject, but no JWT key is configured (--jwt-hs256-secret-file, --jwt-public-key-file, --jwt-jwks-file or KVSERVE_JWT_HS256_SECRET); use --rate-limit to limit per client address")]
    SubjectLimitWithoutAuth,
    #[error("refusing to serve the admin listener on {addr} without authentication: bind it to a loopback address, configure a JWT key or --admin-client-ca, or pass --admin-insecure")]
    InsecureAdmin { addr: SocketAddr },
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
    state: Arc<HttpState>,
    shutdown_timeout: Duration,
    watch: Option<Duration>,
    connections: ConnectionLimits,
    /// `--max-connections` of each listener, as the open-file limit leaves room for.
    budget: fdlimit::Budget,
    tls: tls::Listeners,
}

impl App {
    pub async fn bind(args: &ServeArgs) -> Result<Self, AppError> {
        let auth = http::auth::Authenticator::from_config(&args.auth.config())?;
        if args.protect.subject_rate_limit.is_some() && auth.is_none() {
            return Err(AppError::SubjectLimitWithoutAuth);
        }
        let (api, api_addr) = bind("api", &args.addr).await?;
        let (admin, admin_addr) = bind("admin", &args.admin_addr).await?;
        let protect = &args.protect;
        // With both listeners open, so the descriptors kept out count them.
        let budget = fdlimit::budget(protect.max_connections)?;
        // A client certificate from --admin-client-ca authenticates too.
        let admin_authenticated = auth.is_some() || args.tls.admin_client_ca.is_some();
        if !admin_addr.ip().is_loopback() && !admin_authenticated {
            if !protect.admin_insecure {
                return Err(AppError::InsecureAdmin { addr: admin_addr });
            }
            tracing::warn!(%admin_addr, "the admin listener (reload, cache purge) is reachable from the network without authentication (--admin-insecure)");
        }
        let settings = HttpSettings {
            cache_control_header: http::cache_control(auth.is_some(), args.cache_max_age),
            max_batch: args.max_batch,
            max_body_bytes: args.max_body_bytes,
            limits: http::limits::LimitSettings {
                max_uri_bytes: protect.max_uri_bytes,
                max_header_bytes: protect.max_header_bytes,
                max_body_bytes: args.max_body_bytes,
                max_in_flight: protect.max_in_flight,
                request_timeout: protect.request_timeout,
            },
            fast_path: args.fast_path,
            compression: http::encoding::Compression {
                enabled: args.compression,
                min_bytes: args.compress_min_bytes,
            },
            max_answer_bytes: protect.max_answer_bytes,
            max_unsent_bytes: protect.max_unsent_bytes,
        };
        let reloader = Reloader::new(args.data.clone(), args.load.options());
        let spec = |per_second, burst| http::ratelimit::LimitSpec { per_second, burst };
        let rate_limit = http::ratelimit::RateLimits::new(
            protect
                .rate_limit
                .map(|n| spec(n, protect.rate_limit_burst)),
            protect
                .subject_rate_limit
                .map(|n| spec(n, protect.subject_rate_limit_burst)),
        );
        if protect.trust_forwarded_for {
            tracing::warn!("--trust-forwarded-for (KVSERVE_TRUST_FORWARDED_FOR) is deprecated: it now means --forwarded-hops 1 (the right-most X-Forwarded-For entry, the one the proxy in front added); name the proxies with --trusted-proxies instead");
        }
        let app = AppState::new(Cache::new(args.cache_capacity()), reloader)?;
        let tls = tls::Listeners::new(&args.tls.config(), &app.metrics)?;
        let state = HttpState::new(Arc::new(app), settings, auth, rate_limit)?
            .with_clients(protect.clients(), protect.connections_per_address());
        Ok(Self {
            api,
            admin,
            api_addr,
            admin_addr,
            state: Arc::new(state),
            shutdown_timeout: args.shutdown_timeout,
            watch: args.watch.then_some(args.watch_debounce),
            connections: ConnectionLimits {
                max_connections: protect.max_connections,
                header_read_timeout: protect.header_read_timeout,
                idle_timeout: protect.idle_timeout,
                body_read_timeout: protect.body_read_timeout,
                max_head_bytes: protect
                    .max_uri_bytes
                    .saturating_add(protect.max_header_bytes),
            },
            budget,
            tls,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The shared state, for tests that look inside (the dataset slot, the metrics).
    pub fn state(&self) -> Arc<HttpState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, loading the data file in the background
    /// meanwhile (data routes answer 503 until it is in). Returns an error if the load
    /// fails: a process that cannot serve its data should not pretend to be healthy.
    ///
    /// Shutdown order: readiness turns 503, the API listener stops accepting and drains
    /// in-flight requests (bounded by `--shutdown-timeout`), then the admin listener
    /// stops, so probes see "not ready" for the whole drain.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        // Before anything is loaded: SIGHUP's default action ends the process, and a
        // load can take seconds (a large file, a publisher holding the lock).
        let hangup = listen_for_sighup();
        let data = self.state.app.reloader.current_path();
        tracing::info!(api = %self.api_addr, admin = %self.admin_addr, data = %data.display(), "listening");
        let (stop_api_tx, stop_api) = signal_channel::channel(false);
        let (stop_admin_tx, stop_admin) = signal_channel::channel(false);
        let limits = |max_connections| ConnectionLimits {
            max_connections,
            ..self.connections
        };
        let (api_limits, admin_limits) = (limits(self.budget.api), limits(self.budget.admin));
        if let Some(limit) = &self.state.rate_limit {
            http::ratelimit::spawn_pruning(limit);
        }
        let api = tokio::spawn(
            http::server::Listener {
                name: "api",
                socket: self.api,
                gate: ConnectionGate::new(api_limits)
                    .counted(
                        self.state
                            .metrics
                            .connections("api", api_limits.max_connections),
                    )
                    .logging_refusals(self.state.clone()),
                endpoint: http::api_endpoint(self.state.clone()),
                fast: Some(self.state.clone()),
                tls: self.tls.api.clone(),
                peers: Some(self.state.peers.clone()),
                refused: self
                    .state
                    .metrics
                    .connections_refused("api", "max_connections"),
            }
            .serve(stopped(stop_api), self.shutdown_timeout),
        );
        let admin = tokio::spawn(
            http::server::Listener {
                name: "admin",
                socket: self.admin,
                gate: ConnectionGate::new(admin_limits).counted(
                    self.state
                        .metrics
                        .connections("admin", admin_limits.max_connections),
                ),
                endpoint: http::admin::admin_endpoint(self.state.clone()),
                fast: None,
                tls: self.tls.admin.clone(),
                peers: None,
                refused: self
                    .state
                    .metrics
                    .connections_refused("admin", "max_connections"),
            }
            .serve(stopped(stop_admin), self.shutdown_timeout),
        );

        let certs = self.tls.resolvers();
        // Kept alive while serving: `--watch` reloads the certificates too.
        let _cert_watcher = match self.watch {
            Some(debounce) if !certs.is_empty() => Some(watch::spawn_tls(certs.clone(), debounce)?),
            _ => None,
        };
        let state = self.state.app.clone();
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            failure = serve_dataset(state.clone(), self.watch, hangup, &certs) => Err(failure),
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

/// Loads the data file, then keeps it current (SIGHUP, `--watch`) until cancelled;
/// SIGHUP also reloads the TLS certificates (`certs`), at once, even mid-load.
/// Returns only if the service cannot go on: the first load or the watch set-up failed.
///
/// A SIGHUP during the first load is logged and queued: one reload follows the load,
/// however many signals came, since the file may have been replaced while the load
/// waited for its lock or read the old one.
async fn serve_dataset(
    state: Arc<AppState>,
    watch_debounce: Option<Duration>,
    mut hangup: Option<Signal>,
    certs: &[Arc<tls::CertResolver>],
) -> AppError {
    let first = state.reload(None, Trigger::Startup, true);
    tokio::pin!(first);
    let mut queued = false;
    let loaded = loop {
        tokio::select! {
            loaded = &mut first => break loaded,
            Some(()) = recv(&mut hangup) => {
                tls::reload_all(certs, "SIGHUP");
                tracing::info!(
                    already_queued = queued,
                    "SIGHUP received during the first load; one reload follows it"
                );
                queued = true;
            }
        }
    };
    if let Err(err) = loaded {
        tracing::error!(error = %err, "data file refused; nothing will be served");
        return match err {
            ReloadError::Load(err) => AppError::Load(err),
            other => AppError::FirstLoad(other),
        };
    }
    tracing::info!("ready");
    let _watcher = match watch_debounce {
        Some(debounce) => match watch::spawn(state.clone(), debounce) {
            Ok(watcher) => Some(watcher),
            Err(err) => return AppError::Watch(err),
        },
        None => None,
    };
    if queued {
        let _ = state.reload(None, Trigger::Signal, true).await;
    }
    while recv(&mut hangup).await.is_some() {
        tls::reload_all(certs, "SIGHUP");
        let _ = state.reload(None, Trigger::Signal, true).await;
    }
    std::future::pending().await
}

/// SIGHUP asks for a reload of the current file, as daemons conventionally do.
/// Registered once, before the first load; `None` if it cannot be (then SIGHUP keeps
/// its default action, and reloads go through `POST /admin/reload`).
fn listen_for_sighup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; reload with POST /admin/reload");
            None
        }
    }
}

/// The next SIGHUP; never, if there is no handler.
async fn recv(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(hangup) => hangup.recv().await,
        None => std::future::pending().await,
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

async fn stopped(mut stop: signal_channel::Receiver<bool>) {
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
