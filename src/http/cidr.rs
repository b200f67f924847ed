//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address),
//! as `--trusted-proxies` names the proxies in front of kvserve.
//!
//! Written here rather than taken from a crate: parsing and `contains` are a few lines,
//! and a range with bits set past its length (`10.0.0.1/8`) is refused rather than
//! silently widened, since that is more often a typo for one address than a range.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network: an address whose bits past `len` are zero, and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address or a CIDR range (like 10.0.0.0/8 or 2001:db8::/32)")]
    Address(String),
    #[error("`{text}`: the prefix length must be a number from 0 to {max}")]
    Length { text: String, max: u8 },
    #[error("`{text}` has bits set past its prefix length: the range is {network}")]
    HostBits { text: String, network: Cidr },
}

impl Cidr {
    /// Whether `ip` is in the range. IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`, as
    /// a dual-stack socket reports IPv4 peers) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let address: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let address = address.to_canonical();
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| CidrError::Length {
                    text: text.to_owned(),
                    max,
                })?,
        };
        let network = match address {
            IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) & mask_v4(len)).into()),
            IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) & mask_v6(len)).into()),
        };
        let cidr = Cidr { network, len };
        if network != address {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                network: cidr,
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let private = cidr("10.0.0.0/8");
        assert!(private.contains(ip("10.255.0.1")));
        assert!(private.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(
            !private.contains(ip("::a00:1")),
            "not mapped: another family"
        );
        let one = cidr("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("::/0").contains(ip("fe80::1")));
    }

    #[test]
    fn typos_are_refused_with_what_was_meant() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Length { max: 32, .. })
        ));
        assert!(matches!(
            "proxy".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`10.0.0.1/8` has bits set past its prefix length: the range is 10.0.0.0/8"
        );
    }
}
