//! TLS on the listeners (`--tls-cert`, `--admin-tls-cert`, `--admin-client-ca`), against
//! the real binary: certificates are made here with rcgen (a CA, server certificates
//! good, expired, for the wrong host and self-signed, client certificates from the CA
//! and from a stranger). The client is rustls itself (what reqwest and most Rust
//! clients use): reqwest's rustls feature would need a process-wide crypto provider in
//! this shared test binary, or aws-lc-rs. curl and Python's `ssl` are checked in
//! tests/external (`tls_check.py`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::common::{self, Process, KEY, VALUE};

/// A certificate and its key, PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A test CA and the folder the PEM files go to.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: ca("kvserve test CA"),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `names` signed by the CA, valid now unless `expired`.
    fn server(&self, cn: &str, names: &[&str], expired: bool) -> Pem {
        leaf(
            &self.ca,
            cn,
            names,
            expired,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Writes `contents` into the folder and returns the path as a string.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }

    /// Writes a pair as `<name>.crt` and `<name>.key`.
    fn pair(&self, name: &str, pem: &Pem) -> (String, String) {
        (
            self.write(&format!("{name}.crt"), &pem.cert),
            self.write(&format!("{name}.key"), &pem.key),
        )
    }
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
    expired: bool,
    usage: ExtendedKeyUsagePurpose,
) -> Pem {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

const HOSTS: &[&str] = &["127.0.0.1", "localhost"];

/// A rustls client trusting `ca_pem`, presenting `identity` if given.
fn client_config(ca_pem: &str, identity: Option<&Pem>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(pem) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Each connection a full handshake: a resumed session skips the certificate, so
    // it would not show which one the server now serves.
    config.resumption = rustls::client::Resumption::disabled();
    config
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Opens a TLS connection to `addr` (the handshake runs with the first write).
fn connect(addr: SocketAddr, config: &ClientConfig) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(Arc::new(config.clone()), name).unwrap();
    StreamOwned::new(conn, tcp)
}

/// One keep-alive GET on an open connection.
fn get_on(tls: &mut Tls, path: &str) -> std::io::Result<(u16, String)> {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    tls.flush()?;
    match common::read_response(tls)? {
        Some((status, body)) => Ok((status, String::from_utf8_lossy(&body).into_owned())),
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// A GET on a new connection.
fn get(addr: SocketAddr, config: &ClientConfig, path: &str) -> std::io::Result<(u16, String)> {
    get_on(&mut connect(addr, config), path)
}

/// The common name of the certificate the server presented on `tls`.
fn peer_cn(tls: &Tls) -> String {
    let certs = tls.conn.peer_certificates().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
    cert.subject().to_string()
}

/// The rustls error a failed handshake ended with.
fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The real binary on the sample data with `extra`, waiting until it answers on the
/// API listener over TLS.
fn serve_tls(pki: &Pki, extra: &[&str]) -> (tempfile::TempDir, Process) {
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_file(dir.path(), "tls.data", common::sample_lines());
    let p = common::spawn_binary(&data, extra);
    let config = client_config(&pki.ca_pem(), None);
    common::wait_until("ready over TLS", || {
        matches!(
            get(p.api, &config, &format!("/v1/keys/{KEY}")),
            Ok((200, _))
        )
    });
    (dir, p)
}

fn sighup(p: &Process) {
    let status = Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn handshake_failures(p: &Process) -> f64 {
    common::series(
        &metrics(p),
        "kvserve_tls_handshake_failures_total{listener=\"api\"}",
    )
    .unwrap_or(0.0)
}

fn metrics(p: &Process) -> String {
    let mut tcp = TcpStream::connect(p.admin).unwrap();
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_client_trusting_the_ca_gets_the_value_over_https() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("kvserve api", HOSTS, false));
    let (_dir, mut p) = serve_tls(&pki, &["--tls-cert", &cert, "--tls-key", &key]);

    let config = client_config(&pki.ca_pem(), None);
    let (status, body) = get(p.api, &config, &format!("/v1/keys/{KEY}")).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(VALUE), "{body}");
    // The hot routes' fast path and the framework both answer over TLS.
    let (status, body) = get(p.api, &config, &format!("/v1/keys/{KEY}/value")).unwrap();
    assert_eq!((status, body.as_str()), (200, VALUE));
    assert_eq!(get(p.api, &config, "/openapi.json").unwrap().0, 200);
    // What hyper cannot parse still gets problem+json: the deadlines and the
    // replacement of hyper's bare answers sit above TLS, on the decrypted stream.
    let mut tls = connect(p.api, &config);
    tls.write_all(b"GET /v1/keys/\xff HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, body) = common::read_response(&mut tls).unwrap().unwrap();
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("urn:kvserve:problem:"),
        "{body:?}"
    );

    // The legacy route's trailing-slash redirect keeps the scheme, as Starlette's did,
    // through poem (`/`) and on the fast path (`%2F`).
    for target in [format!("/get_value/{KEY}/"), format!("/get_value/{KEY}%2F")] {
        let mut tls = connect(p.api, &config);
        write!(tls, "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        tls.flush().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let location = format!("location: https://127.0.0.1/get_value/{KEY}\r\n");
        assert!(
            head.starts_with("http/1.1 307") && head.contains(&location),
            "{target}: {head}"
        );
    }

    let log = p.log();
    assert!(
        log.contains("TLS on") && log.contains("CN=kvserve api") && log.contains("not_after"),
        "{log}"
    );
    let expiry = common::series(
        &metrics(&p),
        "kvserve_tls_certificate_expiry_seconds{listener=\"api\"}",
    )
    .expect("the expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "notAfter {expiry} is in the future");
    let _ = p.child.kill();
}

#[test]
fn clients_refuse_expired_wrong_host_and_self_signed_certificates() {
    let pki = Pki::new();
    let stranger = ca("a stranger");
    let cases = [
        ("expired", pki.server("expired", HOSTS, true), "expired"),
        (
            "wrong-host",
            pki.server("wrong host", &["other.example"], false),
            "not valid for name",
        ),
        (
            "self-signed",
            leaf(
                &stranger,
                "self-signed",
                HOSTS,
                false,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            "unknown issuer",
        ),
    ];
    let config = client_config(&pki.ca_pem(), None);
    for (name, pem, _) in &cases {
        let (cert, key) = pki.pair(name, pem);
        let dir = tempfile::tempdir().unwrap();
        let data = common::write_file(dir.path(), "tls.data", common::sample_lines());
        let mut p = common::spawn_binary(&data, &["--tls-cert", &cert, "--tls-key", &key]);
        common::wait_until("ready", || {
            common::http_status(p.admin, "/readyz") == Some(200)
        });
        let err = get(p.api, &config, &format!("/v1/keys/{KEY}")).unwrap_err();
        let refused = match rustls_error(&err) {
            Some(rustls::Error::InvalidCertificate(why)) => why.clone(),
            other => panic!("{name}: not a certificate error: {err} ({other:?})"),
        };
        let expected = match *name {
            "expired" => matches!(
                refused,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ),
            "wrong-host" => matches!(
                refused,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            _ => matches!(refused, CertificateError::UnknownIssuer),
        };
        assert!(expected, "{name}: refused for {refused:?}");
        if *name == "expired" {
            assert!(
                p.log().contains("the TLS certificate has expired"),
                "{}",
                p.log()
            );
        }
        let _ = p.child.kill();
    }
}

#[test]
fn plain_http_to_a_tls_port_fails_cleanly() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("kvserve api", HOSTS, false));
    let (_dir, mut p) = serve_tls(&pki, &["--tls-cert", &cert, "--tls-key", &key]);
    // A load balancer's TCP check (connect, close) is not a failed handshake.
    for _ in 0..3 {
        drop(TcpStream::connect(p.api).unwrap());
    }
    assert_ne!(common::http_status(p.api, "/readyz"), Some(200));
    assert_ne!(
        common::http_status(p.api, &format!("/v1/keys/{KEY}")),
        Some(200)
    );
    // Still serving, over TLS, and the refused handshakes were counted.
    let config = client_config(&pki.ca_pem(), None);
    assert_eq!(
        get(p.api, &config, &format!("/v1/keys/{KEY}")).unwrap().0,
        200
    );
    assert!(p.child.try_wait().unwrap().is_none());
    // Counted once the server has dropped the connection, which the client may see
    // first.
    common::wait_until("the failed handshakes counted", || {
        handshake_failures(&p) >= 2.0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        handshake_failures(&p),
        2.0,
        "only the two plain HTTP requests"
    );
    assert!(!p.log().contains("panicked"), "{}", p.log());
    let _ = p.child.kill();
}

#[test]
fn the_admin_client_ca_admits_only_ca_signed_client_certificates() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("admin", &pki.server("kvserve admin", HOSTS, false));
    let clients = ca("kvserve clients");
    let ca_file = pki.write("clients.crt", &clients.pem());
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_file(dir.path(), "tls.data", common::sample_lines());
    // On every interface, without a JWT key or --admin-insecure: the client CA is the
    // admin listener's authentication.
    let mut command = Command::new(common::binary());
    command.args([
        "--data",
        data.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "0.0.0.0:0",
        "--admin-tls-cert",
        &cert,
        "--admin-tls-key",
        &key,
        "--admin-client-ca",
        &ca_file,
    ]);
    let mut p = common::spawn_command(command);
    p.admin = SocketAddr::from(([127, 0, 0, 1], p.admin.port()));
    let member = leaf(
        &clients,
        "prober",
        &["prober"],
        false,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let good = client_config(&pki.ca_pem(), Some(&member));
    common::wait_until("ready with a client certificate", || {
        matches!(get(p.admin, &good, "/readyz"), Ok((200, _)))
    });
    // The API listener stays plain: the admin listener's pair is its own.
    assert_eq!(
        common::http_status(p.api, &format!("/v1/keys/{KEY}")),
        Some(200)
    );

    let none = client_config(&pki.ca_pem(), None);
    assert!(
        get(p.admin, &none, "/readyz").is_err(),
        "no client certificate"
    );
    let foreign = leaf(
        &ca("a stranger"),
        "intruder",
        &["intruder"],
        false,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let foreign = client_config(&pki.ca_pem(), Some(&foreign));
    assert!(
        get(p.admin, &foreign, "/readyz").is_err(),
        "a foreign certificate"
    );
    assert_eq!(get(p.admin, &good, "/readyz").unwrap().0, 200);
    let _ = p.child.kill();
}

#[test]
fn sighup_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("first", HOSTS, false));
    let (_dir, mut p) = serve_tls(&pki, &["--tls-cert", &cert, "--tls-key", &key]);
    let config = client_config(&pki.ca_pem(), None);
    let path = format!("/v1/keys/{KEY}");
    let mut open = connect(p.api, &config);
    assert_eq!(get_on(&mut open, &path).unwrap().0, 200);
    assert_eq!(peer_cn(&open), "CN=first");

    pki.pair("server", &pki.server("second", HOSTS, false));
    sighup(&p);
    common::wait_until("the new certificate", || {
        let mut fresh = connect(p.api, &config);
        get_on(&mut fresh, &path).is_ok() && peer_cn(&fresh) == "CN=second"
    });
    // The connection opened before the swap goes on with its own keys.
    assert_eq!(get_on(&mut open, &path).unwrap().0, 200);
    assert!(p.log().contains("TLS certificate reloaded"), "{}", p.log());
    let _ = p.child.kill();
}

#[test]
fn a_bad_new_pair_is_refused_and_the_old_one_keeps_serving() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("first", HOSTS, false));
    let (_dir, mut p) = serve_tls(&pki, &["--tls-cert", &cert, "--tls-key", &key]);
    let expiry = || {
        common::series(
            &metrics(&p),
            "kvserve_tls_certificate_expiry_seconds{listener=\"api\"}",
        )
    };
    let before = expiry();
    // A new certificate with the old key: they do not match.
    let other = pki.server("second", HOSTS, false);
    pki.write("server.crt", &other.cert);
    sighup(&p);
    common::wait_until("the refusal", || {
        p.log().contains("new TLS certificate refused")
    });
    assert!(p.log().contains("does not match"), "{}", p.log());
    let config = client_config(&pki.ca_pem(), None);
    let mut fresh = connect(p.api, &config);
    assert_eq!(
        get_on(&mut fresh, &format!("/v1/keys/{KEY}")).unwrap().0,
        200
    );
    assert_eq!(peer_cn(&fresh), "CN=first");
    assert_eq!(expiry(), before);
    let _ = p.child.kill();
}

#[test]
fn watch_picks_up_a_new_pair() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("first", HOSTS, false));
    let (_dir, mut p) = serve_tls(
        &pki,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--watch",
            "--watch-debounce",
            "100ms",
        ],
    );
    let config = client_config(&pki.ca_pem(), None);
    pki.pair("server", &pki.server("second", HOSTS, false));
    common::wait_until("the new certificate", || {
        let mut fresh = connect(p.api, &config);
        get_on(&mut fresh, "/v1/keys/").is_ok() && peer_cn(&fresh) == "CN=second"
    });
    let _ = p.child.kill();
}

#[test]
fn a_silent_connection_is_closed_at_the_header_deadline() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("kvserve api", HOSTS, false));
    let (_dir, mut p) = serve_tls(
        &pki,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--header-read-timeout",
            "1s",
        ],
    );
    // Opens TCP and never starts the handshake: held (and its slot taken) until the
    // deadline, then closed.
    let mut silent = TcpStream::connect(p.api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed, not timed out: {read:?}"
    );
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(10),
        "{held:?}"
    );
    // Counted once the server has dropped the connection, which the client may see
    // first.
    common::wait_until("the failed handshakes counted", || {
        handshake_failures(&p) >= 1.0
    });
    let _ = p.child.kill();
}

/// Runs the binary with `args` (it should refuse to start) and returns its exit code
/// and error output.
fn refused(data: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::binary())
        .args(common::serve_args(data, args))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_configuration_is_a_start_up_error_naming_flag_and_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = common::write_file(dir.path(), "tls.data", common::sample_lines());
    let (cert, key) = pki.pair("server", &pki.server("kvserve api", HOSTS, false));
    let (_, other_key) = pki.pair("other", &pki.server("other", HOSTS, false));
    let empty = pki.write("empty.pem", "");
    let garbage = pki.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let missing = pki.dir.path().join("missing.pem").display().to_string();
    // How other configuration errors exit.
    let (config_error, _) = refused(&data, &["--subject-rate-limit", "5"]);
    assert_eq!(config_error, Some(1));

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--tls-cert", &cert], vec!["--tls-cert", "--tls-key"]),
        (
            vec!["--admin-tls-key", &key],
            vec!["--admin-tls-key", "--admin-tls-cert"],
        ),
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            vec!["--tls-cert", &missing],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &missing],
            vec!["--tls-key", &missing],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            vec!["--tls-key", &other_key, "does not match", &cert],
        ),
        (
            vec!["--tls-cert", &empty, "--tls-key", &key],
            vec!["--tls-cert", &empty, "no PEM certificate"],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &empty],
            vec!["--tls-key", &empty, "no PEM private key"],
        ),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            vec!["--tls-cert", &garbage],
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &cert],
            vec!["--tls-key", &cert],
        ),
        (
            vec!["--admin-client-ca", &cert],
            vec!["--admin-client-ca", "--admin-tls-cert"],
        ),
        (
            vec![
                "--admin-tls-cert",
                &cert,
                "--admin-tls-key",
                &key,
                "--admin-client-ca",
                &empty,
            ],
            vec!["--admin-client-ca", &empty],
        ),
    ];
    for (args, named) in cases {
        let (code, stderr) = refused(&data, &args);
        assert_eq!(code, config_error, "{args:?}: {stderr}");
        let error = stderr.lines().last().unwrap_or_default();
        for name in named {
            assert!(error.contains(name), "{args:?}: `{name}` not in `{error}`");
        }
    }
}

/// A TLS record holding a ClientHello whose SNI extension names `host`, which need
/// not be a valid DNS name (rustls's client refuses to send one).
fn client_hello_with_sni(host: &[u8]) -> Vec<u8> {
    fn u16_len(out: &mut Vec<u8>, len: usize) {
        out.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    }
    let mut sni = Vec::new();
    u16_len(&mut sni, host.len() + 3);
    sni.push(0); // host_name
    u16_len(&mut sni, host.len());
    sni.extend_from_slice(host);
    let mut extensions = Vec::new();
    for (kind, body) in [
        (0x0000u16, sni),
        (0x000a, vec![0, 4, 0x00, 0x1d, 0x00, 0x17]), // x25519, secp256r1
        (0x000d, vec![0, 6, 0x08, 0x04, 0x04, 0x03, 0x04, 0x01]),
        (0x002b, vec![4, 0x03, 0x04, 0x03, 0x03]), // TLS 1.3, 1.2
    ] {
        extensions.extend_from_slice(&kind.to_be_bytes());
        u16_len(&mut extensions, body.len());
        extensions.extend_from_slice(&body);
    }
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0, 6, 0x13, 0x01, 0xc0, 0x2b, 0xc0, 0x2f]);
    hello.extend_from_slice(&[1, 0]); // null compression
    u16_len(&mut hello, extensions.len());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    u16_len(&mut record, handshake.len());
    record.extend_from_slice(&handshake);
    record
}

/// Handshakes that name an invalid SNI host cost a bounded, aggregated log: rustls
/// logged each whole name (up to 64 KiB) at WARN, 200 handshakes 12 MB; now at most
/// one short line per interval says how many failed (issue 25, item 8).
#[test]
fn failed_handshakes_are_logged_bounded_and_aggregated() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("kvserve api", HOSTS, false));
    let (_dir, mut p) = serve_tls(&pki, &["--tls-cert", &cert, "--tls-key", &key]);
    let before = p.log().len();
    let host = "bad!name".repeat(1_500); // 12,000 bytes
    let hello = client_hello_with_sni(host.as_bytes());
    for _ in 0..30 {
        let mut tcp = TcpStream::connect(p.api).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(&hello).unwrap();
        tcp.shutdown(std::net::Shutdown::Write).unwrap();
        // Until the server has answered (an alert) and closed.
        let _ = tcp.read_to_end(&mut Vec::new());
    }
    // Still serving.
    let config = client_config(&pki.ca_pem(), None);
    assert_eq!(
        get(p.api, &config, &format!("/v1/keys/{KEY}")).unwrap().0,
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = p.log();
    let written = &log[before..];
    assert!(
        !written.contains("bad!namebad!namebad!name"),
        "the name was logged: {} bytes of log",
        written.len()
    );
    assert!(
        written.len() < 8_000,
        "{} bytes of log for 30 handshakes",
        written.len()
    );
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// A handshake may read at most `tls::MAX_HANDSHAKE_BYTES` (32 KiB) before it ends: a
/// client that starts a ClientHello of 60,000 bytes and sends 48 KiB of it is refused
/// and closed at once, instead of being buffered (about 70 KiB in rustls) until the
/// head deadline.
#[test]
fn an_oversized_unfinished_handshake_is_refused_at_the_cap() {
    let pki = Pki::new();
    let (cert, key) = pki.pair("server", &pki.server("kvserve api", HOSTS, false));
    let (_dir, mut p) = serve_tls(
        &pki,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--header-read-timeout",
            "60s",
        ],
    );
    let mut tcp = TcpStream::connect(p.api).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Three full handshake records: a ClientHello header announcing 60,000 bytes, then
    // filler; the message is never finished.
    let mut sent = Vec::new();
    for record in 0..3 {
        let mut payload = vec![0x42u8; 16_384];
        if record == 0 {
            payload[..4].copy_from_slice(&[1, 0x00, 0xea, 0x60]);
        }
        sent.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
        sent.extend_from_slice(&payload);
    }
    let _ = tcp.write_all(&sent);
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = match tcp.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        closed,
        "the connection stayed open {:?} after 48 KiB of an unfinished handshake",
        started.elapsed()
    );
    common::wait_until("the refusal counted", || handshake_failures(&p) >= 1.0);
    let config = client_config(&pki.ca_pem(), None);
    assert_eq!(
        get(p.api, &config, &format!("/v1/keys/{KEY}")).unwrap().0,
        200
    );
    let _ = p.child.kill();
    let _ = p.child.wait();
}
