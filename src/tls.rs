//! Optional TLS on each listener (`--tls-cert`/`--tls-key`, `--admin-tls-cert`/
//! `--admin-tls-key`, `--admin-client-ca`), for direct exposure: outside a mesh or an
//! ingress that terminates TLS, a bearer token would otherwise travel in clear.
//!
//! rustls with the ring provider (it builds with the C compiler alone; aws-lc-rs needs
//! cmake), TLS 1.2 and 1.3, HTTP/1.1 only (ALPN `http/1.1`), as the server speaks no
//! HTTP/2. The handshake runs under the connection's request-head deadline
//! (`http::server`), so a client that never finishes it does not hold a slot, and may
//! read at most [`MAX_HANDSHAKE_BYTES`] ([`HandshakeCap`]), so it holds little memory.
//!
//! The certificate is reloadable without dropping connections: each listener's
//! [`CertResolver`] hands rustls the pair held in an `ArcSwap`, and a reload (SIGHUP,
//! `--watch`) swaps a whole new pair in only once it has been read and checked; a bad
//! new pair is logged and the old one keeps serving. Open connections keep the keys
//! they negotiated; new full handshakes use the new certificate. (A client resuming a
//! TLS session from before the swap skips the certificate, as TLS resumption does;
//! rustls keeps at most 256 such sessions per listener.) The client CA of the admin
//! listener is read once, at start-up.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{Gauge, IntCounter};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// Why a certificate, key or client CA cannot be used. Each names the flag and the
/// file, so a start-up error or a refused reload says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{given} is set but {missing} is not: TLS on a listener needs both the certificate and its key")]
    HalfPair {
        given: &'static str,
        missing: &'static str,
    },
    #[error("--admin-client-ca needs TLS on the admin listener: set --admin-tls-cert and --admin-tls-key too")]
    ClientCaWithoutTls,
    #[error("cannot read {flag} file {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} file {} holds no PEM {what}", path.display())]
    Missing {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{flag} file {} is not valid PEM: {source}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{flag} file {}: the certificate cannot be parsed: {reason}", path.display())]
    Certificate {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{flag} file {} is not a usable private key: {source}", path.display())]
    Key {
        flag: &'static str,
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the key in {} ({key_flag}) does not match the certificate in {} ({cert_flag})", key.display(), cert.display())]
    Mismatch {
        cert_flag: &'static str,
        cert: PathBuf,
        key_flag: &'static str,
        key: PathBuf,
    },
    #[error("{flag} file {}: {source}", path.display())]
    ClientCa {
        flag: &'static str,
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Config(rustls::Error),
}

/// The TLS files as given (`cli::TlsArgs::config`); each `None` when not set.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub admin_cert: Option<PathBuf>,
    pub admin_key: Option<PathBuf>,
    pub admin_client_ca: Option<PathBuf>,
}

/// Where one listener's pair comes from, with the flags that named the files.
#[derive(Debug, Clone)]
pub struct PairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_flag: &'static str,
    pub key_flag: &'static str,
}

impl PairFiles {
    /// Both files or neither: `None` when TLS is off for the listener.
    fn of(
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        cert_flag: &'static str,
        key_flag: &'static str,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::HalfPair {
                given: cert_flag,
                missing: key_flag,
            }),
            (None, Some(_)) => Err(TlsError::HalfPair {
                given: key_flag,
                missing: cert_flag,
            }),
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.clone(),
                key: key.clone(),
                cert_flag,
                key_flag,
            })),
        }
    }
}

/// A pair read and checked: the key matches the certificate.
struct Pair {
    key: Arc<CertifiedKey>,
    subject: String,
    /// notAfter of the certificate, unix seconds.
    not_after: i64,
    /// The files' bytes, to tell a reload whether anything changed.
    bytes: (Vec<u8>, Vec<u8>),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// Every PEM certificate in `bytes`; an error if there is none.
fn certificates(
    flag: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            flag,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            flag,
            path: path.to_owned(),
            what: "certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

fn load_pair(files: &PairFiles, provider: &CryptoProvider) -> Result<Pair, TlsError> {
    let cert_bytes = read(files.cert_flag, &files.cert)?;
    let key_bytes = read(files.key_flag, &files.key)?;
    let chain = certificates(files.cert_flag, &files.cert, &cert_bytes)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            flag: files.key_flag,
            path: files.key.clone(),
            what: "private key (PKCS#8, PKCS#1 or SEC1)",
        },
        source => TlsError::Pem {
            flag: files.key_flag,
            path: files.key.clone(),
            source,
        },
    })?;
    let (subject, not_after) = describe(&chain[0]).map_err(|reason| TlsError::Certificate {
        flag: files.cert_flag,
        path: files.cert.clone(),
        reason,
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|source| match source {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError::Mismatch {
            cert_flag: files.cert_flag,
            cert: files.cert.clone(),
            key_flag: files.key_flag,
            key: files.key.clone(),
        },
        source => TlsError::Key {
            flag: files.key_flag,
            path: files.key.clone(),
            source,
        },
    })?;
    Ok(Pair {
        key: Arc::new(key),
        subject,
        not_after,
        bytes: (cert_bytes, key_bytes),
    })
}

/// The certificate's subject and notAfter (unix seconds).
fn describe(cert: &CertificateDer<'_>) -> Result<(String, i64), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|err| err.to_string())?;
    Ok((
        parsed.subject().to_string(),
        parsed.validity().not_after.timestamp(),
    ))
}

/// Warns when the certificate being put in service has expired or expires within a
/// week: clients will refuse it, and the log is the first place an operator looks.
fn warn_if_expiring(listener: &str, subject: &str, not_after: i64) {
    const WEEK: i64 = 7 * 24 * 3600;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if not_after <= now {
        tracing::warn!(listener, subject, not_after = %rfc3339(not_after), "the TLS certificate has expired: clients will refuse it");
    } else if not_after - now < WEEK {
        tracing::warn!(listener, subject, not_after = %rfc3339(not_after), "the TLS certificate expires within a week");
    }
}

fn rfc3339(unix: i64) -> String {
    let at = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
        .to_string()
}

/// Hands rustls one listener's current pair, and swaps in a new one on reload.
pub struct CertResolver {
    listener: &'static str,
    files: PairFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The bytes of the pair being served: a reload of unchanged files is a no-op.
    served: Mutex<(Vec<u8>, Vec<u8>)>,
    expiry: Gauge,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("listener", &self.listener)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertResolver {
    fn new(
        listener: &'static str,
        files: PairFiles,
        provider: Arc<CryptoProvider>,
        metrics: &Metrics,
    ) -> Result<Self, TlsError> {
        let pair = load_pair(&files, &provider)?;
        let expiry = metrics.tls_certificate_expiry(listener);
        expiry.set(pair.not_after as f64);
        tracing::info!(
            listener,
            cert = %files.cert.display(),
            subject = %pair.subject,
            not_after = %rfc3339(pair.not_after),
            "TLS on"
        );
        warn_if_expiring(listener, &pair.subject, pair.not_after);
        Ok(Self {
            listener,
            files,
            provider,
            current: ArcSwap::new(pair.key),
            served: Mutex::new(pair.bytes),
            expiry,
        })
    }

    /// The certificate and key files (watched by `--watch`).
    pub fn files(&self) -> &PairFiles {
        &self.files
    }

    /// Reads the pair again and, if it changed and is good, serves it from the next
    /// handshake on. A bad pair is logged and the old one keeps serving. `Ok(false)`
    /// when the files are unchanged.
    pub fn reload(&self, trigger: &str) -> Result<bool, TlsError> {
        let result = self.try_reload();
        match &result {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    listener = self.listener,
                    trigger,
                    "TLS certificate unchanged"
                )
            }
            Err(err) => tracing::error!(
                listener = self.listener,
                trigger,
                error = %err,
                "new TLS certificate refused; the old one keeps serving"
            ),
        }
        result
    }

    fn try_reload(&self) -> Result<bool, TlsError> {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let cert = read(self.files.cert_flag, &self.files.cert)?;
        let key = read(self.files.key_flag, &self.files.key)?;
        if served.0 == cert && served.1 == key {
            return Ok(false);
        }
        let pair = load_pair(&self.files, &self.provider)?;
        self.current.store(pair.key);
        self.expiry.set(pair.not_after as f64);
        tracing::info!(
            listener = self.listener,
            subject = %pair.subject,
            not_after = %rfc3339(pair.not_after),
            "TLS certificate reloaded; new connections use it"
        );
        warn_if_expiring(self.listener, &pair.subject, pair.not_after);
        *served = pair.bytes;
        Ok(true)
    }
}

/// TLS on one listener: the acceptor, the resolver reloads go through, and the count
/// of failed handshakes.
pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    pub resolver: Arc<CertResolver>,
    pub handshake_failures: IntCounter,
    /// Lets a failed handshake be logged once per interval (`http::server`).
    pub failure_log: crate::telemetry::throttle::Throttle,
}

impl ListenerTls {
    fn new(
        listener: &'static str,
        files: PairFiles,
        client_ca: Option<Arc<RootCertStore>>,
        metrics: &Metrics,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let resolver = Arc::new(CertResolver::new(
            listener,
            files,
            provider.clone(),
            metrics,
        )?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match client_ca {
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|err| TlsError::Config(rustls::Error::General(err.to_string())))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            handshake_failures: metrics.tls_handshake_failures(listener),
            failure_log: crate::telemetry::throttle::Throttle::new(
                crate::telemetry::throttle::FAILURE_LOG_INTERVAL,
            ),
        })
    }
}

/// The CA certificates client certificates must chain to.
fn client_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    const FLAG: &str = "--admin-client-ca";
    let bytes = read(FLAG, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(FLAG, path, &bytes)? {
        roots.add(cert).map_err(|source| TlsError::ClientCa {
            flag: FLAG,
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// TLS for the API and the admin listener, as the flags say (each `None` when off).
pub struct Listeners {
    pub api: Option<Arc<ListenerTls>>,
    pub admin: Option<Arc<ListenerTls>>,
}

impl Listeners {
    /// Reads and checks every file at start-up; any problem is a start-up error.
    ///
    /// The admin listener does not inherit the API's pair: probes and scrapers
    /// configured for plain HTTP keep working when TLS is turned on for the API.
    pub fn new(config: &TlsConfig, metrics: &Metrics) -> Result<Self, TlsError> {
        let api = PairFiles::of(&config.cert, &config.key, "--tls-cert", "--tls-key")?;
        let admin = PairFiles::of(
            &config.admin_cert,
            &config.admin_key,
            "--admin-tls-cert",
            "--admin-tls-key",
        )?;
        let client_ca = match (&config.admin_client_ca, &admin) {
            (Some(_), None) => return Err(TlsError::ClientCaWithoutTls),
            (Some(path), Some(_)) => Some(client_roots(path)?),
            (None, _) => None,
        };
        let api = api
            .map(|files| ListenerTls::new("api", files, None, metrics))
            .transpose()?;
        let admin = admin
            .map(|files| ListenerTls::new("admin", files, client_ca, metrics))
            .transpose()?;
        Ok(Self {
            api: api.map(Arc::new),
            admin: admin.map(Arc::new),
        })
    }

    /// The resolvers a reload goes through.
    pub fn resolvers(&self) -> Vec<Arc<CertResolver>> {
        [&self.api, &self.admin]
            .into_iter()
            .flatten()
            .map(|tls| tls.resolver.clone())
            .collect()
    }
}

/// Reloads every listener's pair (SIGHUP, `--watch`); errors are logged by `reload`.
pub fn reload_all(resolvers: &[Arc<CertResolver>], trigger: &str) {
    for resolver in resolvers {
        let _ = resolver.reload(trigger);
    }
}

/// The most a client may send before its TLS handshake ends: a ClientHello (a few KiB
/// even with post-quantum key shares) and, on the admin listener with
/// `--admin-client-ca`, its certificate chain (rarely over 10 KiB). rustls buffers a
/// handshake message of up to 64 KiB while it arrives, so without this cap a client
/// that starts a handshake and never ends it held about 70 KiB until the deadline.
pub const MAX_HANDSHAKE_BYTES: usize = 32 * 1024;

/// A connection's stream beneath TLS that refuses to read more than
/// [`MAX_HANDSHAKE_BYTES`] until the handshake has ended ([`HandshakeCap::lift`]), so an
/// unfinished handshake holds at most that much; after it, a plain pass-through.
pub struct HandshakeCap<S> {
    inner: S,
    /// Bytes the handshake may still read; `None` once it has ended.
    left: Option<usize>,
}

impl<S> HandshakeCap<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            left: Some(MAX_HANDSHAKE_BYTES),
        }
    }

    /// The handshake has ended: no cap from now on.
    pub fn lift(&mut self) {
        self.left = None;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HandshakeCap<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(left) = this.left else {
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the client sent more than {MAX_HANDSHAKE_BYTES} bytes before its TLS handshake ended"),
            )));
        }
        // Read into at most `left` bytes of the caller's buffer.
        let mut limited = buf.take(left);
        let result = std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let read = limited.filled().len();
        // SAFETY: `read` bytes of the buffer's unfilled part were just initialised by
        // the inner read through `limited`, which borrows that same memory.
        unsafe { buf.assume_init(read) };
        buf.advance(read);
        this.left = Some(left - read);
        result
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HandshakeCap<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
