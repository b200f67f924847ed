//! JSON string contents written straight from bytes, the one escaper of the crate: the
//! answers' values (`http::key`, `http::batch`) and the access log's JSON lines
//! (`telemetry::access`) both write through it, byte for byte as `serde_json` would.

/// What `escape_json` does with a byte: pass it on, write a two-character escape,
/// write `\u00XX`, or look at the UTF-8 sequence it starts.
const PASS: u8 = 0;
const UNICODE: u8 = b'u';
const MULTIBYTE: u8 = 0xff;

/// serde_json's table: `"` and `\`, the five control characters with a short form,
/// every other byte below 0x20 as `\u00XX`; bytes of 0x80 and up start (or continue)
/// a multi-byte character.
static ESCAPE: [u8; 256] = {
    let mut table = [PASS; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = UNICODE;
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    let mut byte = 0x80;
    while byte < 0x100 {
        table[byte] = MULTIBYTE;
        byte += 1;
    }
    table
};

/// Appends `value` to `out` as the contents of a JSON string (without the quotes),
/// straight from bytes: for UTF-8 input exactly what `serde_json` writes for the same
/// `&str` (the unit tests hold it to that for arbitrary strings).
///
/// The loader validated the file as UTF-8, but these bytes are not trusted to still
/// be: with `--storage mmap` a writer that ignores the lock can change the mapped
/// pages after the load. So each multi-byte character is checked where it stands (the
/// table sends ASCII, most of a typical value, through without it), and any sequence
/// that is not UTF-8 is written as U+FFFD, as `String::from_utf8_lossy` would: the
/// answer is always valid JSON, and never `&str` made from bytes that may not be text.
pub fn escape_json(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < value.len() {
        let byte = value[i];
        match ESCAPE[byte as usize] {
            PASS => i += 1,
            MULTIBYTE => {
                let (len, valid) = utf8_sequence(&value[i..]);
                if !valid {
                    out.extend_from_slice(&value[start..i]);
                    out.extend_from_slice(REPLACEMENT);
                    start = i + len;
                }
                i += len;
            }
            escape => {
                out.extend_from_slice(&value[start..i]);
                match escape {
                    UNICODE => out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(byte >> 4)],
                        HEX[usize::from(byte & 0xf)],
                    ]),
                    short => out.extend_from_slice(&[b'\\', short]),
                }
                i += 1;
                start = i;
            }
        }
    }
    out.extend_from_slice(&value[start..]);
}

/// The character that `bytes` (non-empty, first byte 0x80 or above) starts with: its
/// length and whether it is valid UTF-8 (Unicode table 3-7: no overlong forms, no
/// surrogates, nothing above U+10FFFF). When it is not, the length is that of the
/// longest prefix that could have begun a valid character (at least 1), the unit
/// `String::from_utf8_lossy` replaces with one U+FFFD.
fn utf8_sequence(bytes: &[u8]) -> (usize, bool) {
    let lead = bytes[0];
    let (len, second) = match lead {
        0xc2..=0xdf => (2, 0x80..=0xbf),
        0xe0 => (3, 0xa0..=0xbf),
        0xe1..=0xec | 0xee..=0xef => (3, 0x80..=0xbf),
        0xed => (3, 0x80..=0x9f),
        0xf0 => (4, 0x90..=0xbf),
        0xf1..=0xf3 => (4, 0x80..=0xbf),
        0xf4 => (4, 0x80..=0x8f),
        _ => return (1, false),
    };
    for n in 1..len {
        let Some(&byte) = bytes.get(n) else {
            return (n, false);
        };
        let fits = if n == 1 {
            second.contains(&byte)
        } else {
            (0x80..=0xbf).contains(&byte)
        };
        if !fits {
            return (n, false);
        }
    }
    (len, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &[u8]) -> String {
        let mut out = Vec::new();
        escape_json(&mut out, value);
        String::from_utf8(out).expect("the escaper writes UTF-8")
    }

    /// serde_json's rendering of the same text, without the quotes.
    fn serde_escaped(text: &str) -> String {
        let quoted = serde_json::to_string(text).unwrap();
        quoted[1..quoted.len() - 1].to_owned()
    }

    #[test]
    fn escapes_like_serde_json() {
        for text in [
            "",
            "plain",
            "\"\\/\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}",
            "é€𝄞\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
            "\u{1}a\u{1}",
            "a\"",
        ] {
            assert_eq!(escaped(text.as_bytes()), serde_escaped(text), "{text:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_read_as_replacement_characters() {
        for bytes in [
            &b"\xff"[..],
            b"a\xc3",
            b"\xc3(",
            b"\xe2\x82",
            b"\xe2\x82(",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf4\x90\x80\x80",
            b"\xf8\x88\x80\x80\x80",
            b"\xf0\x9f\x98",
            b"\xf0\x9f\x98\"",
            b"\x80\x80\"\n",
        ] {
            let lossy = String::from_utf8_lossy(bytes);
            assert_eq!(escaped(bytes), serde_escaped(&lossy), "{bytes:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Every string, every character class: the same bytes as serde_json.
        #[test]
        fn any_text_escapes_like_serde_json(text in "(?s).{0,64}") {
            proptest::prop_assert_eq!(escaped(text.as_bytes()), serde_escaped(&text));
        }

        /// Control characters, quotes and backslashes densely, around non-ASCII.
        #[test]
        fn awkward_text_escapes_like_serde_json(text in "[\\x00-\\x1f\"\\\\\\x7fé€𝄞a ]{0,64}") {
            proptest::prop_assert_eq!(escaped(text.as_bytes()), serde_escaped(&text));
        }

        /// Any bytes at all: valid JSON, the text `String::from_utf8_lossy` makes of them.
        #[test]
        fn any_bytes_escape_like_their_lossy_text(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let lossy = String::from_utf8_lossy(&bytes);
            proptest::prop_assert_eq!(escaped(&bytes), serde_escaped(&lossy));
        }
    }
}
