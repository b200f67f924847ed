//! The `Host` header as RFC 9112 §3.2 requires it: an HTTP/1.1 request without one,
//! and any request with more than one line of it or a value that is not
//! `host[:port]`, is a 400. A request kvserve cannot tell the intended host of is
//! refused rather than answered for some host: a proxy in front that reads the host
//! differently (the first line, the last) would otherwise route one request and
//! kvserve answer another. HTTP/1.0 requests may leave it out.

use poem::http::{header, HeaderMap, Version};

use super::problem::{Problem, ProblemKind};

/// `Ok` when `headers` carry the `Host` that a request of `version` needs; else the
/// 400 problem naming what is wrong with it.
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), Problem> {
    let mut lines = headers.get_all(header::HOST).iter();
    let refuse = |detail: String| {
        Err(Problem::new(
            ProblemKind::InvalidHeader,
            format!("{detail} (RFC 9112 section 3.2)"),
        ))
    };
    match (lines.next(), lines.count()) {
        (None, _) if version >= Version::HTTP_11 => {
            refuse("the `Host` header is missing; HTTP/1.1 requests must send one".to_owned())
        }
        (None, _) => Ok(()),
        (Some(_), more @ 1..) => refuse(format!(
            "the `Host` header is sent {} times; send it once",
            more + 1
        )),
        (Some(value), 0) => match value.to_str() {
            Ok(value) if valid(value) => Ok(()),
            _ => refuse("the `Host` header is not a valid `host[:port]`".to_owned()),
        },
    }
}

/// RFC 3986 `host [ ":" port ]`: an IP literal in brackets, or a reg-name (which an
/// IPv4 address is too) of unreserved, percent-encoded and sub-delim characters, then
/// an optional port of digits. Empty is valid: a target without an authority sends
/// an empty `Host` (§3.2).
fn valid(value: &str) -> bool {
    let (name, port) = match value.rfind(':') {
        Some(colon) if !value[colon..].contains(']') => (&value[..colon], &value[colon + 1..]),
        _ => (value, ""),
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(literal) => ipv6_literal(literal) || ipv_future(literal),
        None => reg_name(name),
    }
}

/// `*( unreserved / pct-encoded / sub-delims )`.
fn reg_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// An IPv6 address in an IP literal (hex digits, `:` and a dotted IPv4 tail).
pub fn ipv6_literal(literal: &str) -> bool {
    literal.contains(':')
        && literal
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        && literal.parse::<std::net::Ipv6Addr>().is_ok()
}

/// `"v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn ipv_future(literal: &str) -> bool {
    let Some((version, rest)) = literal
        .strip_prefix(['v', 'V'])
        .and_then(|l| l.split_once('.'))
    else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn host_forms() {
        for good in [
            "kvserve.test",
            "kvserve.test:8000",
            "127.0.0.1:80",
            "[::1]:8000",
            "[v1.x]",
            "a%20b",
            "",
            "x:",
        ] {
            assert!(valid(good), "{good}");
        }
        for bad in ["a b", "a/b", "a@b", "[::1", "[zz]", "x:8a", "a%2", "é"] {
            assert!(!valid(bad), "{bad}");
        }
    }
}
