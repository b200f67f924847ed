//! The line grammar of a data file (docs/ARCHITECTURE.md section 1).
//!
//! A record is `<uuid> <value>`: a 36-character hyphenated UUID in any case, one ASCII
//! space, then the rest of the line as the value (possibly empty). This module only
//! looks at one line at a time; splitting the file into lines, UTF-8 validation and
//! error positions (file, line number) belong to the loader, which sees the whole file.

use std::fmt::Write as _;

/// Length of the hyphenated UUID form, the only key form a data file may use.
pub const KEY_LEN: usize = 36;

/// Why one line of a data file is not a record.
///
/// The variants carry enough to tell a publisher what to fix; the loader adds the file
/// name, the 1-based line number and an excerpt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line is {len} bytes, longer than the limit of {max} bytes (--max-line-bytes)")]
    TooLong { len: usize, max: usize },
    #[error("no space after the key: a record is `<uuid> <value>`")]
    MissingSeparator,
    #[error("the key must be a 36-character hyphenated UUID, found {len} characters before the first space")]
    KeyLength { len: usize },
    #[error("the key is not a UUID: {what} at character {column}")]
    KeySyntax { what: &'static str, column: usize },
    #[error("the line is not valid UTF-8")]
    InvalidUtf8,
}

/// A parsed record: the key and where the value sits inside the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub key: u128,
    /// Byte offset of the value from the start of the line.
    pub value_start: usize,
    /// Length of the value in bytes (without a trailing CR).
    pub value_len: usize,
}

/// Parses one line (without its `\n`). `Ok(None)` is a blank line, which is skipped.
///
/// The limit counts the line without its line end: a CRLF's CR is no more part of
/// the line than the LF, so a file loads the same whichever line ends it uses.
///
/// UTF-8 is not checked here: the loader validates whole chunks at once, which is
/// several times faster than validating line by line.
pub fn parse_line(line: &[u8], max_line_bytes: usize) -> Result<Option<Record>, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line_bytes {
        return Err(LineError::TooLong {
            len: line.len(),
            max: max_line_bytes,
        });
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.len() <= KEY_LEN || line[KEY_LEN] != b' ' {
        return Err(match memchr::memchr(b' ', line) {
            None => LineError::MissingSeparator,
            Some(len) => LineError::KeyLength { len },
        });
    }
    let key = parse_hyphenated(&line[..KEY_LEN])?;
    Ok(Some(Record {
        key,
        value_start: KEY_LEN + 1,
        value_len: line.len() - KEY_LEN - 1,
    }))
}

/// Positions of the hyphens in `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Positions of the 32 hex digits, in order.
const DIGITS: [usize; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35,
];

/// Hex digit values by byte; 0xFF marks a byte that is not a hex digit.
const HEX: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Parses the 36-byte hyphenated form into its 128-bit value.
///
/// Hand-written rather than `uuid::Uuid::try_parse_ascii` because it runs once per line
/// of a file with millions of lines (a table lookup per digit, no branch per digit),
/// and because a publisher is better served by "expected `-` at character 9" than by a
/// message about the other UUID forms.
pub fn parse_hyphenated(text: &[u8]) -> Result<u128, LineError> {
    // A public function must not panic on its input: text of another length is an
    // error, not an out-of-bounds index (found by the `line` fuzz target's checks).
    if text.len() != KEY_LEN {
        return Err(LineError::KeyLength { len: text.len() });
    }
    let (mut high, mut low) = (0u64, 0u64);
    let mut invalid = 0u8;
    for (n, &at) in DIGITS.iter().enumerate() {
        let digit = HEX[text[at] as usize];
        invalid |= digit;
        if n < 16 {
            high = (high << 4) | u64::from(digit & 0x0F);
        } else {
            low = (low << 4) | u64::from(digit & 0x0F);
        }
    }
    let hyphens_ok = HYPHENS.iter().all(|&at| text[at] == b'-');
    if invalid & 0xF0 != 0 || !hyphens_ok {
        return Err(syntax_error(text));
    }
    Ok((u128::from(high) << 64) | u128::from(low))
}

/// The first problem of a key that failed the fast check, for the error message.
fn syntax_error(text: &[u8]) -> LineError {
    for (i, &byte) in text.iter().enumerate() {
        if HYPHENS.contains(&i) {
            if byte != b'-' {
                return LineError::KeySyntax {
                    what: "expected `-`",
                    column: i + 1,
                };
            }
        } else if HEX[byte as usize] == 0xFF {
            return LineError::KeySyntax {
                what: "expected a hexadecimal digit",
                column: i + 1,
            };
        }
    }
    LineError::KeySyntax {
        what: "not a UUID",
        column: 1,
    }
}

/// A short, printable excerpt of a bad line for error messages: at most `max_chars`
/// characters, invalid UTF-8 replaced, control characters escaped, so that an error
/// message stays one readable line whatever the file holds.
///
/// Only `excerpt_prefix` of the line is decoded: a line may be hundreds of megabytes,
/// and decoding it whole with replacements would copy it (three bytes per invalid
/// byte) to print 60 characters.
pub fn excerpt(line: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(excerpt_prefix(line, max_chars));
    let mut out = String::with_capacity(max_chars + 8);
    out.push('"');
    for (n, ch) in text.chars().enumerate() {
        if n == max_chars {
            out.push('…');
            break;
        }
        if ch.is_control() {
            let _ = write!(out, "{}", ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out.push('"');
    out
}

/// The part of `line` that decides its first `max_chars + 1` characters (the last one
/// only says whether `…` follows). Decoding with replacements turns 1 to 4 bytes into
/// one character, so `4 * (max_chars + 1)` bytes hold them all, decoded exactly as in
/// the whole line: a sequence cut at the end of the prefix can only change characters
/// after those.
fn excerpt_prefix(line: &[u8], max_chars: usize) -> &[u8] {
    let bound = max_chars.saturating_add(1).saturating_mul(4);
    &line[..line.len().min(bound)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "72cf48f7-d604-4423-b012-4e2329f5117b";

    fn parse(line: &str) -> Result<Option<Record>, LineError> {
        parse_line(line.as_bytes(), 1 << 20)
    }

    #[test]
    fn record_with_spaces_in_value() {
        let line = format!("{KEY} zsda pl focnygogk");
        let rec = parse(&line).unwrap().unwrap();
        assert_eq!(rec.key, 0x72cf48f7_d604_4423_b012_4e2329f5117b);
        assert_eq!(
            &line[rec.value_start..rec.value_start + rec.value_len],
            "zsda pl focnygogk"
        );
    }

    #[test]
    fn uppercase_key_is_the_same_key() {
        let upper = parse(&format!("{} v", KEY.to_uppercase()))
            .unwrap()
            .unwrap();
        let lower = parse(&format!("{KEY} v")).unwrap().unwrap();
        assert_eq!(upper.key, lower.key);
    }

    #[test]
    fn empty_value_and_crlf() {
        let rec = parse(&format!("{KEY} ")).unwrap().unwrap();
        assert_eq!(rec.value_len, 0);
        let rec = parse(&format!("{KEY} abc\r")).unwrap().unwrap();
        assert_eq!(rec.value_len, 3);
    }

    #[test]
    fn blank_lines() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("\r"), Ok(None));
    }

    #[test]
    fn bad_lines_say_why() {
        assert_eq!(parse("hello"), Err(LineError::MissingSeparator));
        assert_eq!(parse(KEY), Err(LineError::MissingSeparator));
        assert_eq!(parse("abc value"), Err(LineError::KeyLength { len: 3 }));
        let bad_hex = KEY.replacen('7', "g", 1);
        assert_eq!(
            parse(&format!("{bad_hex} v")),
            Err(LineError::KeySyntax {
                what: "expected a hexadecimal digit",
                column: 1
            })
        );
        let no_hyphen = KEY.replacen('-', "0", 1);
        assert_eq!(
            parse(&format!("{no_hyphen} v")),
            Err(LineError::KeySyntax {
                what: "expected `-`",
                column: 9
            })
        );
        let simple = KEY.replace('-', "");
        assert_eq!(
            parse(&format!("{simple} v")),
            Err(LineError::KeyLength { len: 32 })
        );
    }

    #[test]
    fn keys_of_the_wrong_length_are_errors_not_panics() {
        for len in [0, 1, 35, 37, 100] {
            let text = "a".repeat(len);
            assert_eq!(
                parse_hyphenated(text.as_bytes()),
                Err(LineError::KeyLength { len })
            );
        }
        assert_eq!(
            parse_hyphenated(KEY.as_bytes()),
            Ok(0x72cf48f7_d604_4423_b012_4e2329f5117b)
        );
    }

    #[test]
    fn too_long_counts_the_line_without_its_line_end() {
        let line = format!("{KEY} {}", "x".repeat(100));
        assert_eq!(
            parse_line(line.as_bytes(), 50),
            Err(LineError::TooLong { len: 137, max: 50 })
        );
        let crlf = format!("{line}\r");
        assert_eq!(
            parse_line(crlf.as_bytes(), 50),
            Err(LineError::TooLong { len: 137, max: 50 })
        );
        assert!(parse_line(crlf.as_bytes(), 137).unwrap().is_some());
    }

    #[test]
    fn excerpts_decode_a_bounded_prefix_the_same_way_as_the_whole_line() {
        let lines: Vec<Vec<u8>> = vec![
            vec![0xFF; 10_000],
            "é€😀".repeat(5_000).into_bytes(),
            b"\xF0\x9F\x98\x80\xE2\x82\xF0\x9F\x98A\xC3".to_vec(),
            b"short".to_vec(),
            [0xE2, 0x82, 0xAC].repeat(3_000),
        ];
        for line in &lines {
            let line = line.as_slice();
            for max in [0, 1, 2, 3, 5, 60] {
                assert!(excerpt_prefix(line, max).len() <= 4 * (max + 1));
                let whole: String = String::from_utf8_lossy(line)
                    .chars()
                    .take(max + 1)
                    .collect();
                let prefix: String = String::from_utf8_lossy(excerpt_prefix(line, max))
                    .chars()
                    .take(max + 1)
                    .collect();
                assert_eq!(prefix, whole, "{line:?} at {max}");
            }
        }
        // Cut inside a character at every position: what is shown never changes.
        let line = "a€😀é".repeat(40);
        for len in 0..line.len() {
            let cut = &line.as_bytes()[..len];
            let whole: String = String::from_utf8_lossy(cut).chars().take(4).collect();
            let prefix: String = String::from_utf8_lossy(excerpt_prefix(cut, 3))
                .chars()
                .take(4)
                .collect();
            assert_eq!(prefix, whole, "{len}");
        }
    }

    #[test]
    fn excerpt_is_short_and_printable() {
        assert_eq!(excerpt(b"ab\tc", 10), "\"ab\\tc\"");
        assert_eq!(excerpt(b"abcdef", 3), "\"abc…\"");
        assert_eq!(excerpt(b"a\xffb", 10), "\"a\u{fffd}b\"");
    }
}
