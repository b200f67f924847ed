//! Connections per address on the API listener: at most
//! `--max-connections-per-address` open from one address, so one client cannot take
//! every `--max-connections` slot, and a client refused by the per-address rate limit
//! gives back the connections it cannot use.
//!
//! Counted by the peer (IPv6 by its `--ipv6-prefix` network), the address that holds
//! the connection: at accept nothing else is known, and a connection outlives any one
//! request's `X-Forwarded-For`. A trusted proxy's connections (`--trusted-proxies`)
//! are not counted: they carry many clients, each still rate-limited by its own
//! resolved address; bound them at the proxy. With `--forwarded-hops` kvserve cannot
//! tell proxies from clients, so every peer is counted.
//!
//! A client that keeps hitting the limit loses its idle connections first: a `429` of
//! the per-address rate limit to a client connected directly that holds more
//! connections than the limit's burst says `Connection: close`. More connections than
//! its burst are more than it could use at once without refusal, so each refused
//! request closes one of them (the connection it came on, idle from then on) until it
//! holds no more than that. A proxy's connections are never closed for one client's
//! refusal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use poem::http::{header, HeaderValue};
use poem::Response;
use prometheus::IntCounter;

use super::client::{ClientAddr, ClientResolver};

/// The open connections of each address, and the cap on them.
pub struct PeerConnections {
    /// `--max-connections-per-address`; 0 counts without refusing.
    cap: usize,
    resolver: ClientResolver,
    held: Mutex<HashMap<IpAddr, usize>>,
    /// `kvserve_http_connections_refused_total{listener="api",reason="per_address"}`.
    refused: IntCounter,
}

impl PeerConnections {
    pub fn new(cap: usize, resolver: ClientResolver, refused: IntCounter) -> Self {
        Self {
            cap,
            resolver,
            held: Mutex::new(HashMap::new()),
            refused,
        }
    }

    /// Counts a connection accepted from `peer` until the returned slot is dropped, or
    /// `None` (counted) when the address already holds the cap: the caller closes it.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<PeerSlot> {
        let Some(key) = self.resolver.connection_key(peer) else {
            return Some(PeerSlot { counted: None });
        };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key).or_insert(0);
        if self.cap > 0 && *count >= self.cap {
            drop(held);
            self.refused.inc();
            tracing::debug!(remote = %peer, limit = self.cap, "connection refused: --max-connections-per-address reached");
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counted: Some((self.clone(), key)),
        })
    }

    /// Connections open from `key` now.
    pub fn held(&self, key: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&key).copied().unwrap_or(0)
    }

    /// Adds `Connection: close` to the per-address limit's refusal of `client` when it
    /// is connected directly and holds more than `burst` connections (module docs).
    pub fn shed_refused(&self, client: Option<&ClientAddr>, burst: u32, refusal: &mut Response) {
        let Some(client) = client.filter(|c| !c.forwarded()) else {
            return;
        };
        let Some(key) = self.resolver.connection_key(client.ip()) else {
            return;
        };
        if self.held(key) > burst as usize {
            refusal
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }

    fn release(&self, key: IpAddr) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

/// A connection's place in its address's count, given back when dropped with the
/// connection.
pub struct PeerSlot {
    counted: Option<(Arc<PeerConnections>, IpAddr)>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some((peers, key)) = &self.counted {
            peers.release(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::Trust;

    fn peers(cap: usize, trust: Trust) -> Arc<PeerConnections> {
        let counter = IntCounter::new("refused", "test").unwrap();
        Arc::new(PeerConnections::new(
            cap,
            ClientResolver::new(trust, 64),
            counter,
        ))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_address_holds_at_most_the_cap_and_gets_slots_back() {
        let p = peers(2, Trust::Peer);
        let a = [p.admit(ip("192.0.2.1")), p.admit(ip("192.0.2.1"))];
        assert!(a.iter().all(Option::is_some));
        assert!(p.admit(ip("192.0.2.1")).is_none());
        assert!(p.admit(ip("192.0.2.2")).is_some(), "another address");
        // One /64 is one address.
        let v6 = [p.admit(ip("2001:db8::1")), p.admit(ip("2001:db8::2"))];
        assert!(v6.iter().all(Option::is_some));
        assert!(p.admit(ip("2001:db8::ffff")).is_none());
        assert_eq!(p.refused.get(), 2);
        drop(a);
        assert_eq!(p.held(ip("192.0.2.1")), 0);
        assert!(
            p.held.lock().unwrap().len() == 1,
            "empty counts are removed"
        );
        assert!(p.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn trusted_proxies_are_not_capped_and_zero_is_no_cap() {
        let p = peers(1, Trust::Proxies(vec!["10.0.0.0/8".parse().unwrap()]));
        let held: Vec<_> = (0..5).map(|_| p.admit(ip("10.0.0.1"))).collect();
        assert!(held.iter().all(Option::is_some));
        let p = peers(0, Trust::Peer);
        let held: Vec<_> = (0..5).map(|_| p.admit(ip("192.0.2.1"))).collect();
        assert!(held.iter().all(Option::is_some));
        assert_eq!(p.held(ip("192.0.2.1")), 5, "counted all the same");
    }
}
