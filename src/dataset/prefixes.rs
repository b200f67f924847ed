//! `--key-prefixes`: which keys this instance owns, by the first hex digit of the key.
//!
//! A sharded deployment runs one instance per range (`0-7`, `8-f`) behind an ingress
//! that routes on the same digit; each instance loads only its keys, and a request for
//! a key it does not own gets 421 Misdirected Request rather than a misleading 404.

use std::fmt;
use std::str::FromStr;

/// A set of first hex digits, as a 16-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPrefixes(u16);

impl Default for KeyPrefixes {
    fn default() -> Self {
        Self::ALL
    }
}

impl KeyPrefixes {
    pub const ALL: Self = KeyPrefixes(u16::MAX);

    /// Whether the key's first hex digit (its top four bits) is owned.
    pub fn owns(self, key: u128) -> bool {
        self.0 & (1 << (key >> 124)) != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a list of hex digits or ranges like `0-7` or `0-3,a,c-f`: {reason}")]
pub struct KeyPrefixesError {
    text: String,
    reason: &'static str,
}

impl FromStr for KeyPrefixes {
    type Err = KeyPrefixesError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| KeyPrefixesError {
            text: text.to_owned(),
            reason,
        };
        let digit = |part: &str| match part.trim() {
            d if d.len() == 1 => {
                u8::from_str_radix(d, 16).map_err(|_| err("a part is not a hex digit"))
            }
            _ => Err(err("each part is one hex digit or a range of two")),
        };
        let mut mask = 0u16;
        for part in text.split(',') {
            let (from, to) = match part.split_once('-') {
                Some((from, to)) => (digit(from)?, digit(to)?),
                None => {
                    let d = digit(part)?;
                    (d, d)
                }
            };
            if from > to {
                return Err(err("a range runs backwards"));
            }
            for d in from..=to {
                mask |= 1 << d;
            }
        }
        Ok(KeyPrefixes(mask))
    }
}

impl fmt::Display for KeyPrefixes {
    /// The canonical form: ascending ranges, `0-7,a`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut d = 0u8;
        while d < 16 {
            if self.0 & (1 << d) == 0 {
                d += 1;
                continue;
            }
            let start = d;
            while d < 15 && self.0 & (1 << (d + 1)) != 0 {
                d += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == d {
                write!(f, "{start:x}")?;
            } else {
                write!(f, "{start:x}-{d:x}")?;
            }
            d += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        for (text, canonical) in [
            ("0-7", "0-7"),
            ("8-F", "8-f"),
            ("0-3, a ,c-f", "0-3,a,c-f"),
            ("0-f", "0-f"),
            ("5", "5"),
        ] {
            assert_eq!(text.parse::<KeyPrefixes>().unwrap().to_string(), canonical);
        }
        for bad in ["", "g", "7-0", "0-77", "0--1", "a,"] {
            assert!(bad.parse::<KeyPrefixes>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ownership_is_by_first_hex_digit() {
        let low: KeyPrefixes = "0-7".parse().unwrap();
        assert!(low.owns(0x72cf48f7_d604_4423_b012_4e2329f5117b));
        assert!(!low.owns(0x8000_0000_0000_0000_0000_0000_0000_0000));
        assert!(KeyPrefixes::ALL.owns(u128::MAX) && KeyPrefixes::ALL.owns(0));
    }
}
