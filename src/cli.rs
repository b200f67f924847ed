//! Command-line interface. Every flag has a `KVSERVE_*` environment twin so the same
//! binary is configured by flags on a laptop and by env in a container.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::dataset::{LoadOptions, OnDuplicate, Storage, MAX_VALUE_LEN};
use crate::telemetry::LogFormat;

/// What `serve --help` says after the flags. The access log is `serve`'s alone, so it
/// is named here rather than in the global `--log-level` help, which every subcommand
/// shows. Traces are configured by the standard OpenTelemetry variables, not flags: the
/// names every SDK and collector guide uses, one name per setting. Listed in `--help`
/// so they can be found where the flags are.
const SERVE_HELP: &str = "\
Logs: every API request writes one access-log line (target kvserve::access);
  `--log-level info,kvserve::access=off` silences the access log alone.

Traces (OpenTelemetry, off unless an OTLP endpoint is set):
  OTEL_EXPORTER_OTLP_ENDPOINT   OTLP/HTTP collector, e.g. http://127.0.0.1:4318
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  or the full traces URL, used as is
  OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT (and their _TRACES_ forms)
  OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none  traces off despite an endpoint
  OTEL_TRACES_SAMPLER           always_on, always_off, traceidratio, parentbased_always_on
                                (the default), parentbased_always_off, parentbased_traceidratio
  OTEL_TRACES_SAMPLER_ARG       the ratio of the *traceidratio samplers, 0.0-1.0
  OTEL_SERVICE_NAME             service.name (default kvserve)
  OTEL_RESOURCE_ATTRIBUTES      more resource attributes, key=value,key=value
  OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY
                                the export queue (spans beyond it, or beyond
                                --trace-buffer bytes, are dropped and counted)
  OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, or OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT
                                bytes of an attribute's text kept (default 1024)";

/// `--key-prefixes` as `verify` reads it: the same selection, but nothing is served.
const VERIFY_KEY_PREFIXES_HELP: &str = "Check the file as a shard with these `--key-prefixes` \
would load it (`0-7`, `8-f`, `0-3,a`): `keys` counts only the keys whose first hex digit \
is listed, so the parts of a split file add up to the whole";

#[derive(Debug, Parser)]
#[command(
    name = "kvserve",
    version,
    about = "Serve UUID → text pairs from one immutable data file over HTTP",
    long_about = "Serve UUID → text pairs from one immutable data file over HTTP.\n\n\
                  Without a subcommand, `kvserve` runs `serve`.",
    after_long_help = SERVE_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `kvserve=debug,poem=warn`.
    #[arg(long, global = true, env = "KVSERVE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log line format: `text` for people, `json` for log collectors.
    #[arg(long, global = true, env = "KVSERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Bytes of log lines that may wait for stderr (e.g. `1MiB`). Logs are written by a
    /// background thread; when stderr cannot keep up and this fills, further lines are
    /// dropped, never waited for (`serve` counts them in `kvserve_log_lines_dropped_total`).
    #[arg(long, global = true, env = "KVSERVE_LOG_BUFFER", default_value = "1MiB", value_parser = parse_size)]
    pub log_buffer: usize,

    /// Bytes of finished spans that may wait for the trace collector (e.g. `8MiB`),
    /// when traces are exported: a request's span holds about 2 KiB, up to about 7 KiB
    /// when the client fills every text it chooses to the attribute value limit. Beyond
    /// it, or beyond `OTEL_BSP_MAX_QUEUE_SIZE` spans, spans are dropped, never waited
    /// for (`serve` counts them in `kvserve_trace_spans_dropped_total`).
    #[arg(long, global = true, env = "KVSERVE_TRACE_BUFFER", default_value = "8MiB", value_parser = parse_size)]
    pub trace_buffer: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the data file and serve it (the default).
    #[command(after_long_help = SERVE_HELP)]
    Serve(Box<ServeArgs>),
    /// Check a data file offline (format, duplicates, checksum) and print a summary.
    #[command(mut_arg("key_prefixes", |arg| arg.help(VERIFY_KEY_PREFIXES_HELP)))]
    Verify(VerifyArgs),
    /// Write a valid data file of random records.
    Gen(GenArgs),
    /// Print the OpenAPI document of the API listener.
    Openapi,
    /// Mint an HS256 token for local use (the secret file `serve` verifies with).
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The data file to serve.
    #[arg(long, env = "KVSERVE_DATA", default_value = "data/sample.data")]
    pub data: PathBuf,

    /// Address of the API listener (`/v1`, `/get_value`, `/docs`, `/openapi.json`).
    #[arg(long, env = "KVSERVE_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: String,

    /// Address of the admin listener: `/livez`, `/readyz`, `/metrics`, `/admin/dataset`,
    /// `POST /admin/reload`, `POST /admin/cache/purge`. Keep it off public networks.
    #[arg(long, env = "KVSERVE_ADMIN_ADDR", default_value = "127.0.0.1:9000")]
    pub admin_addr: String,

    #[command(flatten)]
    pub load: LoadArgs,

    /// Entries in the LRU of rendered responses; 0 turns it off. Default: 0 with
    /// `--storage memory`, 100000 with `--storage mmap`. Measured (BENCHMARKS.md): with
    /// the values in memory a hit costs what rendering costs and a miss adds to it, so
    /// the LRU only pays where a value may have to come back from disk.
    #[arg(long, env = "KVSERVE_CACHE_CAPACITY")]
    pub cache_capacity: Option<usize>,

    /// `max-age` of the `Cache-Control` header on found keys (e.g. `60s`, `5m`); the
    /// header says `public`, or `private` when a JWT key is configured.
    #[arg(long, env = "KVSERVE_CACHE_MAX_AGE", default_value = "60s", value_parser = parse_duration)]
    pub cache_max_age: Duration,

    /// Most keys one `POST /v1/keys/batch` may ask for.
    #[arg(long, env = "KVSERVE_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// Largest request body accepted (bytes or `1MiB`-style); larger gets 413.
    #[arg(long, env = "KVSERVE_MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_body_bytes: usize,

    /// Answer the hot routes (`GET`/`HEAD` of `/v1/keys/{key}`, `.../value`,
    /// `/get_value/{key}`) without the framework's per-request layers (measured: about
    /// half the CPU per request). `false` sends every request through the reference
    /// path, the OpenAPI operations; both give the same bytes (a differential test
    /// proves it), so this is for diagnosis only.
    #[arg(long, env = "KVSERVE_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub fast_path: bool,

    /// Compress the answers of `/v1/keys/...`, `/v1/keys/batch` and `/openapi.json`
    /// (zstd or gzip, as the client's `Accept-Encoding` prefers) when they are at least
    /// `--compress-min-bytes` long. The legacy route `/get_value` never compresses.
    #[arg(long, env = "KVSERVE_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub compression: bool,

    /// Smallest body compressed (bytes or `1KiB`-style); shorter answers stay identity,
    /// where compressing costs more CPU than the bytes it saves (BENCHMARKS.md).
    #[arg(long, env = "KVSERVE_COMPRESS_MIN_BYTES", default_value = "1KiB", value_parser = parse_size)]
    pub compress_min_bytes: usize,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub protect: ProtectArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Reload by itself when the data file or its `.sha256` changes, and the TLS
    /// certificates when a file in their folders changes.
    #[arg(long, env = "KVSERVE_WATCH")]
    pub watch: bool,

    /// With `--watch`: how long the folder must be quiet before reloading.
    #[arg(long, env = "KVSERVE_WATCH_DEBOUNCE", default_value = "500ms", value_parser = parse_duration)]
    pub watch_debounce: Duration,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "KVSERVE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// The LRU size when `--cache-capacity` is not given and the storage is mmap.
pub const MMAP_CACHE_CAPACITY: usize = 100_000;

impl ServeArgs {
    /// `--cache-capacity`, or the default for the storage mode.
    pub fn cache_capacity(&self) -> usize {
        self.cache_capacity.unwrap_or(match self.load.storage {
            Storage::Memory => 0,
            Storage::Mmap => MMAP_CACHE_CAPACITY,
        })
    }
}

/// JWT authentication: on when one key source is given. The HS256 secret may also come
/// from the `KVSERVE_JWT_HS256_SECRET` environment variable (never from a flag, which
/// would show in `ps`).
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// File holding the HS256 shared secret.
    #[arg(long, env = "KVSERVE_JWT_HS256_SECRET_FILE", value_name = "FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    #[arg(long, env = "KVSERVE_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWKS document; the token's `kid` selects the key.
    #[arg(long, env = "KVSERVE_JWT_JWKS_FILE", value_name = "FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Required `iss` claim.
    #[arg(long, env = "KVSERVE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim.
    #[arg(long, env = "KVSERVE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "KVSERVE_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
}

impl AuthArgs {
    pub fn config(&self) -> crate::http::auth::AuthConfig {
        crate::http::auth::AuthConfig {
            hs256_secret_file: self.jwt_hs256_secret_file.clone(),
            hs256_secret: std::env::var("KVSERVE_JWT_HS256_SECRET")
                .ok()
                .filter(|s| !s.is_empty()),
            public_key_file: self.jwt_public_key_file.clone(),
            jwks_file: self.jwt_jwks_file.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
        }
    }
}

/// Rate limits, load shedding and connection limits.
#[derive(Debug, Clone, Args)]
pub struct ProtectArgs {
    /// Requests per second per client address (off when unset), checked before
    /// authentication: requests without a valid token count too, and a refused one
    /// costs no signature check. The address is the peer's, or behind trusted proxies
    /// (`--trusted-proxies`, `--forwarded-hops`) the `X-Forwarded-For` entry they add;
    /// IPv6 clients are counted by their `--ipv6-prefix` network.
    #[arg(long, env = "KVSERVE_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<std::num::NonZeroU32>,

    /// Requests one address may send at once before `--rate-limit` applies (default:
    /// the rate).
    #[arg(
        long,
        env = "KVSERVE_RATE_LIMIT_BURST",
        value_name = "B",
        requires = "rate_limit"
    )]
    pub rate_limit_burst: Option<std::num::NonZeroU32>,

    /// Requests per second per token subject (`sub`; off when unset), checked after
    /// authentication. Needs a JWT key.
    #[arg(long, env = "KVSERVE_SUBJECT_RATE_LIMIT", value_name = "N")]
    pub subject_rate_limit: Option<std::num::NonZeroU32>,

    /// Requests one subject may send at once before `--subject-rate-limit` applies
    /// (default: the rate).
    #[arg(
        long,
        env = "KVSERVE_SUBJECT_RATE_LIMIT_BURST",
        value_name = "B",
        requires = "subject_rate_limit"
    )]
    pub subject_rate_limit_burst: Option<std::num::NonZeroU32>,

    /// Proxies in front of kvserve (addresses or CIDR ranges, comma-separated): from a
    /// peer in the list, the client is the right-most `X-Forwarded-For` entry not in
    /// the list; from any other peer the header is ignored. Their connections are not
    /// capped by `--max-connections-per-address`.
    #[arg(
        long,
        env = "KVSERVE_TRUSTED_PROXIES",
        value_name = "CIDR,...",
        value_delimiter = ',',
        conflicts_with = "forwarded_hops"
    )]
    pub trusted_proxies: Vec<crate::http::cidr::Cidr>,

    /// Number of proxies in front of kvserve that append to `X-Forwarded-For`, when
    /// their addresses are not known: the client is the N-th entry from the right,
    /// whoever the peer is. Only when no client can reach kvserve but through them.
    #[arg(long, env = "KVSERVE_FORWARDED_HOPS", value_name = "N")]
    pub forwarded_hops: Option<std::num::NonZeroUsize>,

    /// Deprecated: the same as `--forwarded-hops 1` (it used to take the first entry,
    /// which the client writes).
    #[arg(
        long,
        env = "KVSERVE_TRUST_FORWARDED_FOR",
        conflicts_with_all = ["trusted_proxies", "forwarded_hops"]
    )]
    pub trust_forwarded_for: bool,

    /// Leading bits of an IPv6 client address that name one client for the rate and
    /// connection limits (one host or subscriber commonly holds a /64); logs and spans
    /// show the whole address.
    #[arg(
        long,
        env = "KVSERVE_IPV6_PREFIX",
        default_value_t = 64,
        value_parser = clap::value_parser!(u8).range(1..=128)
    )]
    pub ipv6_prefix: u8,

    /// Concurrent API requests; more get 503 at once (off when unset).
    #[arg(long, env = "KVSERVE_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,

    /// Longest time to answer one API request; longer gets 503 (off when unset).
    #[arg(long, env = "KVSERVE_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Time a client has to send a request's headers; slower connections are closed.
    #[arg(long, env = "KVSERVE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time a client has to send a request's body, from the end of its headers; a
    /// slower body gets 408 and the connection is closed.
    #[arg(long, env = "KVSERVE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Keep-alive connections this long without a byte in either direction, once the
    /// last answer is handed over, are closed.
    #[arg(long, env = "KVSERVE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Open connections per listener; more are closed at once.
    #[arg(long, env = "KVSERVE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Open API connections from one address (an IPv6 client's `--ipv6-prefix`
    /// network); more are closed at once. Default: a tenth of `--max-connections` (at
    /// least 1); 0: no cap. `--trusted-proxies` are not capped.
    #[arg(long, env = "KVSERVE_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    pub max_connections_per_address: Option<usize>,

    /// Longest request target (path and query) accepted; longer gets 414.
    #[arg(long, env = "KVSERVE_MAX_URI_BYTES", default_value = "16KiB", value_parser = parse_size)]
    pub max_uri_bytes: usize,

    /// Longest header block accepted (every field line together); longer gets 431.
    /// With `--max-uri-bytes` it sizes each connection's read buffer, so a head that
    /// never ends holds at most their sum.
    #[arg(long, env = "KVSERVE_MAX_HEADER_BYTES", default_value = "32KiB", value_parser = parse_size)]
    pub max_header_bytes: usize,

    /// Largest batch answer made; a batch whose answer would be larger gets 413 (ask
    /// for fewer keys at once). Bounds what one connection can make kvserve hold.
    #[arg(long, env = "KVSERVE_MAX_ANSWER_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub max_answer_bytes: usize,

    /// Bytes of API answers over 16 KiB that may wait for their clients at once, all
    /// connections together (a slow reader holds its answer until it has read it);
    /// an answer that does not fit gets 503 with `Retry-After`.
    #[arg(long, env = "KVSERVE_MAX_UNSENT_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub max_unsent_bytes: usize,

    /// Allow the admin listener on a non-loopback address without authentication (a
    /// JWT key or `--admin-client-ca`).
    #[arg(long, env = "KVSERVE_ADMIN_INSECURE")]
    pub admin_insecure: bool,
}

impl ProtectArgs {
    /// How a request's client address is found: `--trusted-proxies`,
    /// `--forwarded-hops` (or the deprecated `--trust-forwarded-for`, one hop), and
    /// `--ipv6-prefix`.
    pub fn clients(&self) -> crate::http::client::ClientResolver {
        use crate::http::client::{ClientResolver, Trust};
        let trust = if !self.trusted_proxies.is_empty() {
            Trust::Proxies(self.trusted_proxies.clone())
        } else if let Some(hops) = self.forwarded_hops {
            Trust::Hops(hops)
        } else if self.trust_forwarded_for {
            Trust::Hops(std::num::NonZeroUsize::MIN)
        } else {
            Trust::Peer
        };
        ClientResolver::new(trust, self.ipv6_prefix)
    }

    /// `--max-connections-per-address`, or its default: a tenth of
    /// `--max-connections`, at least 1.
    pub fn connections_per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or((self.max_connections / 10).max(1))
    }
}

/// TLS on the listeners, for direct exposure: without a mesh or an ingress that
/// terminates TLS, bearer tokens and values would travel in clear. Off by default.
/// SIGHUP (and `--watch`, when the files change) reloads the certificates without
/// dropping connections; a bad new pair is refused and the old one keeps serving.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain of the API listener (leaf first); with `--tls-key`, the
    /// API listener speaks HTTPS only.
    #[arg(long, env = "KVSERVE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "KVSERVE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate chain of the admin listener. Not inherited from `--tls-cert`:
    /// probes and scrapers that speak plain HTTP keep working until this is set.
    #[arg(long, env = "KVSERVE_ADMIN_TLS_CERT", value_name = "FILE")]
    pub admin_tls_cert: Option<PathBuf>,

    /// PEM private key of `--admin-tls-cert`.
    #[arg(long, env = "KVSERVE_ADMIN_TLS_KEY", value_name = "FILE")]
    pub admin_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): only clients presenting a certificate signed by one may
    /// connect to the admin listener (others fail the handshake). Needs the admin
    /// listener's TLS pair; read once at start-up. Counts as authentication for an
    /// admin listener on a non-loopback address (no `--admin-insecure` needed).
    #[arg(long, env = "KVSERVE_ADMIN_CLIENT_CA", value_name = "FILE")]
    pub admin_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub fn config(&self) -> crate::tls::TlsConfig {
        crate::tls::TlsConfig {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            admin_cert: self.admin_tls_cert.clone(),
            admin_key: self.admin_tls_key.clone(),
            admin_client_ca: self.admin_client_ca.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The HS256 secret file `serve --jwt-hs256-secret-file` uses.
    #[arg(long, env = "KVSERVE_JWT_HS256_SECRET_FILE", value_name = "FILE")]
    pub secret_file: PathBuf,

    /// Space-separated scopes, e.g. "kv:read" or "kv:read kv:admin".
    #[arg(long, default_value = "kv:read")]
    pub scope: String,

    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// The `sub` claim (who the token speaks for; `--subject-rate-limit` is per subject).
    #[arg(long, default_value = "local")]
    pub sub: String,

    /// The `iss` claim, if the server requires one.
    #[arg(long, env = "KVSERVE_JWT_ISSUER")]
    pub issuer: Option<String>,

    /// The `aud` claim, if the server requires one.
    #[arg(long, env = "KVSERVE_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// How a data file is read and checked; shared by `serve` and `verify`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Where values live: `memory` reads the file into one buffer.
    #[arg(long, env = "KVSERVE_STORAGE", value_parser = choices(Storage::ALL, Storage::name, Storage::meaning), default_value_t = Storage::Memory)]
    pub storage: Storage,

    /// A line longer than this is malformed (bytes or `1MiB`-style; at most 16MiB-1).
    #[arg(long, env = "KVSERVE_MAX_LINE_BYTES", default_value = "1MiB", value_parser = parse_line_limit)]
    pub max_line_bytes: usize,

    /// Skip and count malformed lines instead of refusing the file.
    #[arg(long, env = "KVSERVE_SKIP_INVALID")]
    pub skip_invalid: bool,

    /// What a key on two lines means: `error` refuses the file, `first`/`last` keep one.
    #[arg(long, env = "KVSERVE_ON_DUPLICATE", value_parser = choices(OnDuplicate::ALL, OnDuplicate::name, OnDuplicate::meaning), default_value_t = OnDuplicate::Error)]
    pub on_duplicate: OnDuplicate,

    /// How long to wait for a publisher's exclusive lock on the file before failing.
    #[arg(long, env = "KVSERVE_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// Expected SHA-256 of the file (hex). Without it, `<file>.sha256` is used if present.
    #[arg(long, env = "KVSERVE_SHA256")]
    pub sha256: Option<String>,

    /// Accept a file with no records (by default an empty file is refused).
    #[arg(long, env = "KVSERVE_ALLOW_EMPTY")]
    pub allow_empty: bool,

    /// The most memory a load may take (bytes or `8GiB`-style): the file's bytes with
    /// `--storage memory`, plus the index (about 64 bytes a line while loading) with
    /// either storage. A file that needs more is refused before anything is allocated
    /// (a failed reload keeps the old data). Default: what is available at each load,
    /// `MemAvailable` or the headroom under a cgroup memory limit, whichever is lower.
    #[arg(long, env = "KVSERVE_MAX_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<usize>,

    /// Parser threads; 0 uses one per core.
    #[arg(long, env = "KVSERVE_LOAD_THREADS", default_value_t = 0)]
    pub load_threads: usize,

    /// Load and serve only keys whose first hex digit is listed (`0-7`, `8-f`,
    /// `0-3,a`); other keys get 421. For sharding a file across instances.
    #[arg(long, env = "KVSERVE_KEY_PREFIXES", default_value = "0-f")]
    pub key_prefixes: crate::dataset::prefixes::KeyPrefixes,
}

impl LoadArgs {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            max_line_bytes: self.max_line_bytes,
            skip_invalid: self.skip_invalid,
            on_duplicate: self.on_duplicate,
            lock_timeout: self.lock_timeout,
            sha256: self.sha256.clone(),
            allow_empty: self.allow_empty,
            storage: self.storage,
            threads: self.load_threads,
            key_prefixes: self.key_prefixes,
            confine_to: None,
            max_memory: self.max_memory.map(|n| n as u64),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The data file to check.
    pub file: PathBuf,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GenArgs {
    /// Number of records to write.
    #[arg(long, env = "KVSERVE_GEN_LINES")]
    pub lines: u64,

    /// The file to write (replaced if it exists).
    #[arg(long, env = "KVSERVE_GEN_OUT")]
    pub out: PathBuf,

    /// Seed of the random generator: the same seed writes the same file.
    #[arg(long, env = "KVSERVE_GEN_SEED", default_value_t = 0)]
    pub seed: u64,

    /// Also write `<out>.sha256`, which `serve` and `verify` then check.
    #[arg(long, env = "KVSERVE_GEN_CHECKSUM")]
    pub checksum: bool,
}

/// A duration in humantime form (`30s`, `500ms`, `2m`) or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("`{text}` is not a duration like 30s, 500ms or 2m: {err}"))
}

/// A size in bytes, plain or with a suffix (`1MiB`, `64KiB`, `2MB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    parse_size::parse_size(text.trim())
        .map_err(|err| format!("`{text}` is not a size like 1048576 or 1MiB: {err}"))
        .and_then(|n| usize::try_from(n).map_err(|_| format!("`{text}` is too large")))
}

/// A flag that takes one of a fixed set of names (a `dataset` enum, which knows
/// nothing of clap): clap checks the name, lists the choices with their meanings in
/// `--help` and names them in its error, as with `ValueEnum`.
fn choices<T>(
    all: impl IntoIterator<Item = T>,
    name: fn(T) -> &'static str,
    meaning: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T>
where
    T: Copy + std::str::FromStr + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let names = all
        .into_iter()
        .map(|choice| PossibleValue::new(name(choice)).help(meaning(choice)));
    PossibleValuesParser::new(names).try_map(|text| text.parse::<T>())
}

fn parse_line_limit(text: &str) -> Result<usize, String> {
    let n = parse_size(text)?;
    if n == 0 || n > MAX_VALUE_LEN {
        return Err(format!("must be between 1 and {MAX_VALUE_LEN} bytes"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_line_limit("32MiB").is_err());
    }

    #[test]
    fn serve_is_the_default() {
        let cli = Cli::try_parse_from(["kvserve", "--addr", "127.0.0.1:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.addr, "127.0.0.1:1");
        let cli = Cli::try_parse_from(["kvserve", "verify", "x.data", "--skip-invalid"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Verify(ref v)) if v.load.skip_invalid));
    }

    #[test]
    fn a_burst_needs_its_rate() {
        let parse = |args: &[&str]| Cli::try_parse_from(["kvserve"].iter().chain(args));
        assert!(parse(&["--rate-limit-burst", "5"]).is_err());
        assert!(parse(&["--subject-rate-limit-burst", "5"]).is_err());
        let cli = parse(&[
            "--subject-rate-limit",
            "2",
            "--subject-rate-limit-burst",
            "5",
        ])
        .unwrap();
        assert_eq!(
            cli.serve.protect.subject_rate_limit_burst.map(|b| b.get()),
            Some(5)
        );
    }

    #[test]
    fn the_lru_defaults_to_the_storage_mode() {
        let capacity = |args: &[&str]| {
            let cli = Cli::try_parse_from(["kvserve"].iter().chain(args)).unwrap();
            cli.serve.cache_capacity()
        };
        assert_eq!(capacity(&[]), 0);
        assert_eq!(capacity(&["--storage", "mmap"]), MMAP_CACHE_CAPACITY);
        assert_eq!(capacity(&["--storage", "mmap", "--cache-capacity", "0"]), 0);
        assert_eq!(capacity(&["--cache-capacity", "7"]), 7);
    }
}
