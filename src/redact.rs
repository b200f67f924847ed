//! What may be logged of a setting that can carry a credential.

/// What stands for a secret's content.
pub const REDACTED: &str = "(redacted)";

/// A URL without its user info (`user:password@`) and query: `https://u:p@h/x?k=v`
/// becomes `https://(redacted)@h/x?(redacted)`. Text that is not a URL is kept.
pub fn redact_url(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_owned();
    };
    let (scheme, rest) = value.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => format!("{}?{REDACTED}", &tail[..q]),
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pw@idp.example/jwks.json?sig=abc#x"),
            "https://(redacted)@idp.example/jwks.json?(redacted)"
        );
        assert_eq!(redact_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318");
        assert_eq!(redact_url("data/sample.data"), "data/sample.data");
    }
}
