//! Who a client is (`src/http/client.rs`) and what one address may hold
//! (`src/http/peers.rs`): `X-Forwarded-For` read from the right behind trusted
//! proxies, its lines combined, IPv6 clients counted by network, the one resolved
//! address in the rate limit and the access log; connections capped per address, and a
//! client refused by the rate limit giving its connections back.
//!
//! Loopback is all of 127.0.0.0/8 on Linux: a client socket bound to 127.0.0.2 and one
//! bound to 127.0.0.3 are two addresses to the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// The statuses of `n` requests for `KEY`, the i-th with `X-Forwarded-For` lines
/// `forwarded(i)` (each item one header line).
async fn statuses(s: &TestServer, n: u32, forwarded: impl Fn(u32) -> Vec<String>) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let mut req = s.client.get(s.url(&format!("/v1/keys/{KEY}")));
        for line in forwarded(i) {
            req = req.header("X-Forwarded-For", line);
        }
        statuses.push(req.send().await.unwrap().status().as_u16());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// A client rotating the entries it writes itself (left of the one the proxy
/// appended) is one client: `--rate-limit 2` lets 2 of 20 through, whichever way the
/// proxy in front is trusted. Before, the first entry was the key: 20 × 200.
#[tokio::test]
async fn rotating_left_forwarded_entries_stay_limited_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "xff.data", sample_lines());
    let limit = ["--rate-limit", "2", "--rate-limit-burst", "2"];
    for trust in [
        &["--trusted-proxies", "127.0.0.0/8"][..],
        &["--forwarded-hops", "1"][..],
        &["--trust-forwarded-for"][..],
    ] {
        let args: Vec<&str> = limit.iter().chain(trust).copied().collect();
        let s = TestServer::start(&data, &args).await;
        let got = statuses(&s, 20, |i| {
            vec![format!("10.9.{}.{}, 203.0.113.7", i / 200, i % 200)]
        })
        .await;
        assert_eq!(count(&got, 200), 2, "{trust:?}: {got:?}");
        assert_eq!(count(&got, 429), 18, "{trust:?}: {got:?}");
        // Another client behind the same proxy has its own bucket.
        let other = statuses(&s, 1, |_| vec!["203.0.113.8".to_owned()]).await;
        assert_eq!(other, [200], "{trust:?}");
        s.stop().await.unwrap();
    }
}

/// Two `X-Forwarded-For` lines are one list (RFC 9110 §5.3): the right-most entry of
/// the last line is the one the proxy added. Before, the second line was ignored.
#[tokio::test]
async fn repeated_forwarded_for_lines_are_combined() {
    let (_dir, s) = TestServer::with_sample(&[
        "--rate-limit",
        "2",
        "--rate-limit-burst",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    let got = statuses(&s, 10, |i| {
        vec![format!("10.9.0.{i}"), "203.0.113.7".to_owned()]
    })
    .await;
    assert_eq!(&got[..2], [200, 200], "{got:?}");
    assert_eq!(count(&got, 429), 8, "{got:?}");
    s.stop().await.unwrap();
}

/// `--trusted-proxies` that do not include the peer: its `X-Forwarded-For` does not
/// count at all, so forged addresses are one client, the peer.
#[tokio::test]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    let (_dir, s) = TestServer::with_sample(&[
        "--rate-limit",
        "2",
        "--rate-limit-burst",
        "2",
        "--trusted-proxies",
        "192.0.2.0/24,2001:db8::/32",
    ])
    .await;
    let got = statuses(&s, 10, |i| vec![format!("203.0.113.{i}")]).await;
    assert_eq!(count(&got, 200), 2, "{got:?}");
    assert_eq!(s.state.rate_limit.as_ref().unwrap().tracked_clients(), 1);
    s.stop().await.unwrap();
}

/// IPv6 clients are counted by their /64 (`--ipv6-prefix`): rotating the low 64 bits is
/// one client; another /64 is another. With `--ipv6-prefix 128` each address counts.
#[tokio::test]
async fn ipv6_clients_are_limited_by_network() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "v6.data", sample_lines());
    let base = [
        "--rate-limit",
        "2",
        "--rate-limit-burst",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
    ];
    let s = TestServer::start(&data, &base).await;
    let got = statuses(&s, 10, |i| vec![format!("2001:db8:1:2::{:x}", i + 1)]).await;
    assert_eq!(count(&got, 200), 2, "one /64 is one client: {got:?}");
    let other = statuses(&s, 1, |_| vec!["2001:db8:1:3::1".to_owned()]).await;
    assert_eq!(other, [200], "another /64");
    s.stop().await.unwrap();

    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--ipv6-prefix", "128"])
        .collect();
    let s = TestServer::start(&data, &args).await;
    let got = statuses(&s, 10, |i| vec![format!("2001:db8:1:2::{:x}", i + 1)]).await;
    assert_eq!(count(&got, 200), 10, "--ipv6-prefix 128: {got:?}");
    s.stop().await.unwrap();
}

/// The access log's `client` is the resolved client: the forwarded address behind a
/// trusted proxy (no port: it is not the peer's), the peer's `ip:port` otherwise.
#[test]
fn the_access_log_names_the_resolved_client() {
    let (_dir, _, mut p) = ready_sample_binary(
        "log.data",
        &["--log-format", "json", "--trusted-proxies", "127.0.0.1"],
    );
    let send = |id: &str, forwarded: Option<&str>| {
        let mut stream = TcpStream::connect(p.api).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let forwarded = forwarded
            .map(|f| format!("X-Forwarded-For: {f}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /v1/keys/{KEY} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\n{forwarded}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stream.local_addr().unwrap()
    };
    let forwarded_id = "forwarded-request";
    send(forwarded_id, Some("6.6.6.6, 203.0.113.7"));
    let direct = send("direct-request", None);
    let client_of = |log: &str, id: &str| -> Option<String> {
        log.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|e| e["target"] == "kvserve::access" && e["request_id"] == id)
            .map(|e| e["client"].as_str().unwrap().to_owned())
    };
    wait_until("both access lines", || {
        client_of(&p.log(), "direct-request").is_some()
    });
    let log = p.log();
    assert_eq!(
        client_of(&log, forwarded_id).as_deref(),
        Some("203.0.113.7"),
        "{log}"
    );
    assert_eq!(
        client_of(&log, "direct-request"),
        Some(direct.to_string()),
        "{log}"
    );
    sigterm(&p.child);
    wait_exit(&mut p.child, Duration::from_secs(10));
}

/// A blocking connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(to).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One keep-alive `GET` of `KEY` on `stream`: the status and whether the answer said
/// `Connection: close`, or `None` if the connection was closed without an answer.
fn get(stream: &mut TcpStream) -> Option<(u16, bool)> {
    let sent = write!(stream, "GET /v1/keys/{KEY} HTTP/1.1\r\nHost: x\r\n\r\n");
    sent.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    let status = head[9..12].parse().unwrap();
    Some((status, head.contains("\r\nconnection: close\r\n")))
}

/// Whether the server has closed `stream` (end of file or reset within 5 s).
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    matches!(stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
}

/// One address cannot take every slot: with `--max-connections 8` and
/// `--max-connections-per-address 4`, 127.0.0.2 gets 4 of its 8 connections (the others
/// are closed at once, and counted), and 127.0.0.3 is still served. Before, 127.0.0.2
/// held all 8 and 127.0.0.3 was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_connection_slot() {
    let (_dir, s) = TestServer::with_sample(&[
        "--max-connections",
        "8",
        "--max-connections-per-address",
        "4",
    ])
    .await;
    let mut greedy = Vec::new();
    for _ in 0..8 {
        greedy.push(connect_from("127.0.0.2", s.api).await);
    }
    let mut other = connect_from("127.0.0.3", s.api).await;
    let (greedy, answers, other_answer, other) = tokio::task::spawn_blocking(move || {
        let answers: Vec<Option<(u16, bool)>> = greedy.iter_mut().map(get).collect();
        let other_answer = get(&mut other);
        (greedy, answers, other_answer, other)
    })
    .await
    .unwrap();
    let served = answers.iter().filter(|a| **a == Some((200, false))).count();
    assert_eq!(served, 4, "{answers:?}");
    assert_eq!(
        answers.iter().filter(|a| a.is_none()).count(),
        4,
        "{answers:?}"
    );
    assert_eq!(
        other_answer,
        Some((200, false)),
        "another address is served"
    );
    // The listener's own limit still holds: 127.0.0.3 fills the other slots, and the
    // ninth connection, from a third address, is closed (and counted as such).
    let mut more = vec![other];
    for _ in 0..3 {
        more.push(connect_from("127.0.0.3", s.api).await);
    }
    let mut ninth = connect_from("127.0.0.4", s.api).await;
    let (more, ninth_answer) = tokio::task::spawn_blocking(move || {
        let answer = get(&mut ninth);
        (more, answer)
    })
    .await
    .unwrap();
    assert_eq!(ninth_answer, None, "--max-connections 8 is reached");
    let text = s.metrics_text().await;
    let refused = |reason: &str| {
        series(
            &text,
            &format!(
                "kvserve_http_connections_refused_total{{listener=\"api\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(refused("per_address"), Some(4.0), "{text}");
    assert_eq!(refused("max_connections"), Some(1.0), "{text}");
    drop((greedy, more));
    s.stop().await.unwrap();
}

/// A client that keeps hitting the rate limit loses its idle connections first: each
/// `429` says `Connection: close` and closes the connection while the address holds
/// more connections than its burst, so the slots come back; another address is served
/// all along. A client within its burst of connections keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_client_gives_back_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_file(dir.path(), "shed.data", sample_lines());
    for path in [&[][..], &["--fast-path", "false"][..]] {
        let args: Vec<&str> = [
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "1",
            "--max-connections-per-address",
            "4",
        ]
        .iter()
        .chain(path)
        .copied()
        .collect();
        let s = TestServer::start(&data, &args).await;
        gives_back(&s, path).await;
        s.stop().await.unwrap();
    }
}

/// `a_rate_limited_client_gives_back_its_connections` on one path (`path`: its flags).
async fn gives_back(s: &TestServer, path: &[&str]) {
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.2", s.api).await);
    }
    let api = s.api;
    let mut other = connect_from("127.0.0.3", api).await;
    let (answers, all_closed, mut first, other_answer) = tokio::task::spawn_blocking(move || {
        let answers: Vec<Option<(u16, bool)>> = held.iter_mut().map(get).collect();
        let all_closed = held[1..].iter_mut().all(closed);
        (answers, all_closed, held.swap_remove(0), get(&mut other))
    })
    .await
    .unwrap();
    assert_eq!(answers[0], Some((200, false)), "{path:?}: {answers:?}");
    assert_eq!(
        answers[1..],
        [Some((429, true)); 3],
        "{path:?}: {answers:?}"
    );
    assert!(all_closed, "{path:?}: every refused connection closed");
    assert_eq!(
        other_answer,
        Some((200, false)),
        "{path:?}: another address is served"
    );
    // The three slots are free again: the address may open them anew. Then, holding
    // one connection (its burst), a refused request keeps its connection.
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(connect_from("127.0.0.2", api).await);
    }
    let (fresh, first_again) = tokio::task::spawn_blocking(move || {
        let fresh: Vec<bool> = again.iter_mut().map(|s| get(s).is_some()).collect();
        drop(again);
        std::thread::sleep(Duration::from_millis(300));
        (fresh, get(&mut first))
    })
    .await
    .unwrap();
    assert_eq!(
        fresh, [true; 3],
        "{path:?}: the slots given back take new connections"
    );
    assert!(
        matches!(first_again, Some((_, false))),
        "{path:?}: within its burst of connections a client keeps its connection: {first_again:?}"
    );
}
