//! Who sent a request: the one client address that the per-address rate limit, the
//! access log (`client=`) and the trace span (`client.address`) all use, worked out once
//! per request when the pipeline reads its head (`http::head`).
//!
//! Without trusted proxies it is the peer. Behind them it comes from
//! `X-Forwarded-For`, read the way appending proxies write it (nginx's
//! `$proxy_add_x_forwarded_for`, Envoy, cloud load balancers): each proxy appends the
//! address it received the request from, so only the entries on the right, added by
//! proxies kvserve trusts, are facts; everything left of them is whatever the client
//! sent. The header's lines are one list (RFC 9110 §5.3), read right to left:
//!
//! - `--trusted-proxies CIDR,...`: only if the peer is in the list does the header count
//!   at all; then each entry is taken while the address that wrote it (the peer, then
//!   the entry to its right) is a trusted proxy. The client is the right-most entry not
//!   in the list (the left-most, if every one is).
//! - `--forwarded-hops N`: every peer is a proxy, and the N right-most entries were
//!   written by the N proxies in front of kvserve; the client is the N-th from the right
//!   (the left-most, when there are fewer).
//!
//! An entry that is not an address (`unknown`, garbage) ends the walk: the client is
//! the last address known, the hop that wrote the entry.
//!
//! Limits count a client by its `key`: IPv4 addresses as they are, IPv6 ones by their
//! `--ipv6-prefix` network (a /64 by default), since one subscriber, host or VM
//! commonly holds a whole /64 and could otherwise rotate through 2^64 addresses. The
//! log and the span show the full address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;

use poem::http::{HeaderMap, HeaderName};

use super::cidr::Cidr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whose `X-Forwarded-For` entries are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Nobody's: the client is the peer.
    Peer,
    /// The proxies at these addresses (`--trusted-proxies`).
    Proxies(Vec<Cidr>),
    /// The N proxies in front of kvserve, whoever the peer is (`--forwarded-hops`).
    Hops(NonZeroUsize),
}

impl Trust {
    /// Whether the entry `hop` places from the right was written by a trusted proxy:
    /// `writer` is the address it was written by (the peer for the right-most).
    fn believes(&self, writer: IpAddr, hop: usize) -> bool {
        match self {
            Trust::Peer => false,
            Trust::Proxies(proxies) => proxies.iter().any(|p| p.contains(writer)),
            Trust::Hops(hops) => hop < hops.get(),
        }
    }
}

/// How client addresses are resolved: the trust and the IPv6 grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResolver {
    trust: Trust,
    /// `--ipv6-prefix`: the bits of an IPv6 address that name one client (1-128).
    ipv6_prefix: u8,
}

/// The peer, IPv6 by its /64.
impl Default for ClientResolver {
    fn default() -> Self {
        Self::new(Trust::Peer, 64)
    }
}

impl ClientResolver {
    pub fn new(trust: Trust, ipv6_prefix: u8) -> Self {
        Self {
            trust,
            ipv6_prefix: ipv6_prefix.clamp(1, 128),
        }
    }

    /// The client of a request from `peer` with `headers`; `None` only when the peer
    /// is unknown.
    pub fn resolve(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<ClientAddr> {
        let peer = peer?;
        let mut ip = peer.ip().to_canonical();
        let mut forwarded = false;
        if self.trust != Trust::Peer {
            let entries = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','));
            for (hop, entry) in entries.enumerate() {
                if !self.trust.believes(ip, hop) {
                    break;
                }
                let Some(entry) = parse_entry(entry) else {
                    break;
                };
                ip = entry;
                forwarded = true;
            }
        }
        Some(ClientAddr {
            ip,
            port: (!forwarded).then_some(peer.port()),
            key: self.key(ip),
        })
    }

    /// The key a client is counted under: its IPv6 network, or its IPv4 address.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
    }

    /// The key a connection from `peer` is counted under for
    /// `--max-connections-per-address`; `None` for a trusted proxy's, which carry
    /// many clients.
    pub fn connection_key(&self, peer: IpAddr) -> Option<IpAddr> {
        match &self.trust {
            Trust::Proxies(proxies) if proxies.iter().any(|p| p.contains(peer)) => None,
            _ => Some(self.key(peer)),
        }
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`, as some load balancers write it) or in brackets.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })?;
    Some(ip.to_canonical())
}

/// A request's client, resolved once: the address, the peer's port when the address
/// is the peer's, and the key limits count it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    ip: IpAddr,
    port: Option<u16>,
    key: IpAddr,
}

impl ClientAddr {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The peer's port; `None` when the address came from `X-Forwarded-For`.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether the address came from `X-Forwarded-For` rather than being the peer.
    pub fn forwarded(&self) -> bool {
        self.port.is_none()
    }

    /// What limits count the client under (its `--ipv6-prefix` network for IPv6).
    pub fn key(&self) -> IpAddr {
        self.key
    }
}

/// `ip:port` for the peer (`[ip]:port` for IPv6), the bare address for a forwarded one.
impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::HeaderValue;

    fn resolver(trust: Trust) -> ClientResolver {
        ClientResolver::new(trust, 64)
    }

    fn proxies(list: &[&str]) -> Trust {
        Trust::Proxies(list.iter().map(|c| c.parse().unwrap()).collect())
    }

    fn hops(n: usize) -> Trust {
        Trust::Hops(NonZeroUsize::new(n).unwrap())
    }

    /// The client `resolver` finds from `peer` with these `X-Forwarded-For` lines.
    fn client(resolver: &ClientResolver, peer: &str, lines: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        let peer: SocketAddr = peer.parse().unwrap();
        resolver.resolve(&headers, Some(peer)).unwrap().to_string()
    }

    #[test]
    fn without_trust_the_header_is_ignored() {
        let r = resolver(Trust::Peer);
        assert_eq!(client(&r, "192.0.2.1:4000", &["1.1.1.1"]), "192.0.2.1:4000");
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let r = resolver(proxies(&["10.0.0.0/8", "192.0.2.1"]));
        let peer = "10.0.0.5:4000";
        // The client's own entries are left of the one the proxy appended.
        assert_eq!(client(&r, peer, &["6.6.6.6, 203.0.113.7"]), "203.0.113.7");
        // Through two trusted proxies.
        assert_eq!(
            client(&r, peer, &["6.6.6.6, 203.0.113.7, 192.0.2.1, 10.9.9.9"]),
            "203.0.113.7"
        );
        // Repeated lines are one list, in order.
        assert_eq!(client(&r, peer, &["6.6.6.6", "203.0.113.7"]), "203.0.113.7");
        assert_eq!(
            client(&r, peer, &["203.0.113.7", "10.1.1.1"]),
            "203.0.113.7"
        );
        // Every entry a proxy: the left-most.
        assert_eq!(client(&r, peer, &["10.2.2.2, 10.1.1.1"]), "10.2.2.2");
        // No header: the peer itself.
        assert_eq!(client(&r, peer, &[]), "10.0.0.5:4000");
        // An untrusted peer's header does not count at all.
        assert_eq!(
            client(&r, "198.51.100.1:4000", &["203.0.113.7"]),
            "198.51.100.1:4000"
        );
        // Garbage ends the walk at the hop that wrote it.
        assert_eq!(client(&r, peer, &["unknown"]), "10.0.0.5:4000");
        assert_eq!(client(&r, peer, &["6.6.6.6, x, 10.1.1.1"]), "10.1.1.1");
        // Ports and brackets, as some load balancers write them; mapped addresses.
        assert_eq!(client(&r, peer, &["203.0.113.7:55000"]), "203.0.113.7");
        assert_eq!(client(&r, peer, &["[2001:db8::1]:80"]), "2001:db8::1");
        assert_eq!(client(&r, peer, &["[2001:db8::1]"]), "2001:db8::1");
        assert_eq!(client(&r, peer, &["::ffff:203.0.113.7"]), "203.0.113.7");
        assert_eq!(
            client(&r, "[::ffff:10.0.0.5]:4000", &["203.0.113.7"]),
            "203.0.113.7",
            "a dual-stack socket's IPv4 peer"
        );
    }

    #[test]
    fn hops_count_entries_from_the_right() {
        let one = resolver(hops(1));
        assert_eq!(
            client(&one, "127.0.0.1:1", &["6.6.6.6, 203.0.113.7"]),
            "203.0.113.7"
        );
        assert_eq!(
            client(&one, "127.0.0.1:1", &["6.6.6.6", "203.0.113.7"]),
            "203.0.113.7"
        );
        let two = resolver(hops(2));
        assert_eq!(
            client(&two, "127.0.0.1:1", &["6.6.6.6, 203.0.113.7, 10.0.0.1"]),
            "203.0.113.7"
        );
        assert_eq!(client(&two, "127.0.0.1:1", &["203.0.113.7"]), "203.0.113.7");
        assert_eq!(client(&two, "127.0.0.1:1", &[]), "127.0.0.1:1");
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        let r = resolver(Trust::Peer);
        let key = |ip: &str| r.key(ip.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        let r48 = ClientResolver::new(Trust::Peer, 48);
        assert_eq!(
            r48.key("2001:db8:1:2::1".parse().unwrap()).to_string(),
            "2001:db8:1::"
        );
        let exact = ClientResolver::new(Trust::Peer, 128);
        assert_eq!(
            exact.key("2001:db8::1".parse().unwrap()).to_string(),
            "2001:db8::1"
        );
        let peer: SocketAddr = "[2001:db8:1:2::7]:443".parse().unwrap();
        let resolved = r.resolve(&HeaderMap::new(), Some(peer)).unwrap();
        assert_eq!(
            resolved.to_string(),
            "[2001:db8:1:2::7]:443",
            "logs show it whole"
        );
        assert_eq!(resolved.key().to_string(), "2001:db8:1:2::");
    }

    #[test]
    fn trusted_proxies_connections_are_not_counted_per_address() {
        let r = resolver(proxies(&["10.0.0.0/8"]));
        assert_eq!(r.connection_key("10.1.1.1".parse().unwrap()), None);
        assert_eq!(
            r.connection_key("2001:db8::5".parse().unwrap()),
            Some("2001:db8::".parse().unwrap())
        );
        assert!(resolver(hops(1))
            .connection_key("10.1.1.1".parse().unwrap())
            .is_some());
    }
}
