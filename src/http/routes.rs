//! The API listener's routes by shape: which hot route a path is, the route *template*
//! every metric and access-log line is labelled with, and which paths are open without
//! a token. Pure functions of the path, so every layer asks the same question the same
//! way.

use std::borrow::Cow;

use poem::Response;

/// A hot route (answered by the fast path when it is on) with its raw key segment,
/// still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotRoute<'a> {
    Key(&'a str),
    Value(&'a str),
    Legacy(&'a str),
}

impl<'a> HotRoute<'a> {
    /// Which hot route `path` is; `None` for every other path.
    pub fn of(path: &'a str) -> Option<Self> {
        if let Some(rest) = path.strip_prefix("/v1/keys/") {
            return match rest.split_once('/') {
                None if rest.is_empty() || rest == "batch" => None,
                None => Some(HotRoute::Key(rest)),
                Some((key, "value")) => Some(HotRoute::Value(key)),
                Some(_) => None,
            };
        }
        let key = path.strip_prefix("/get_value/")?;
        (!key.is_empty() && !key.contains('/')).then_some(HotRoute::Legacy(key))
    }

    pub fn label(self) -> &'static str {
        match self {
            HotRoute::Key(_) => "/v1/keys/{key}",
            HotRoute::Value(_) => "/v1/keys/{key}/value",
            HotRoute::Legacy(_) => "/get_value/{key}",
        }
    }

    pub fn raw_key(self) -> &'a str {
        let (HotRoute::Key(raw) | HotRoute::Value(raw) | HotRoute::Legacy(raw)) = self;
        raw
    }
}

/// The route label of a request hyper could not parse (400, 414, 431 from the
/// connection, `http::conn`): it never reached a router.
pub const UNPARSED: &str = "unparsed";

/// The route template of an answered request: the pattern poem's router matched, else
/// `before_routing` (`path_label` of its path: the answer was given before routing, a
/// refusal by the limits, a rate limit or authentication). One of a fixed set of
/// values, so a client cannot create series by sending odd paths.
pub fn route_label(resp: &Response, before_routing: &'static str) -> &'static str {
    // poem-openapi registers path parameters positionally (`:param0`).
    let routed = resp.data::<poem::PathPattern>().map(|p| match &*p.0 {
        "/v1/keys/:param0" => "/v1/keys/{key}",
        "/v1/keys/:param0/value" => "/v1/keys/{key}/value",
        "/v1/keys/batch" => "/v1/keys/batch",
        "/get_value/:param0" => "/get_value/{key}",
        "/openapi.json" => "/openapi.json",
        p if p.starts_with("/docs") => "/docs",
        _ => "unmatched",
    });
    match routed {
        Some("unmatched") | None => before_routing,
        Some(label) => label,
    }
}

/// The route template `path` would be routed to, by its shape alone; `unmatched` for
/// a path no route takes. A path under `/get_value` is labelled by what the legacy
/// route makes of it as Starlette matched it (`target`), whichever path
/// answers it: a key or a redirect to one (`/get_value/K/`, `/get_value/K%2F`) is
/// `/get_value/{key}`, Starlette's "Not Found" (`/get_value/`, `/get_value/a%2Fb`)
/// `unmatched`.
pub fn path_label(path: &str) -> &'static str {
    if let Some(target) = target(path) {
        return match target {
            Target::NotFound => "unmatched",
            Target::Key(_) | Target::Redirect(_) => HotRoute::Legacy("").label(),
        };
    }
    if let Some(route) = HotRoute::of(path) {
        return route.label();
    }
    match path {
        "/v1/keys/batch" => "/v1/keys/batch",
        "/openapi.json" => "/openapi.json",
        p if is_open_path(p) => "/docs",
        _ => "unmatched",
    }
}

/// The methods the API listener answers on `path`, as a 405's `Allow` lists them: the
/// batch is the only POST route, every other route is read-only (`GET`, and `HEAD`
/// with the same headers). The routes registered in `http::mod` and `http::api` are
/// exactly these; `tests/it/api.rs` (`allow_lists_the_methods_answered`) sends every
/// method to every route and holds each 405's `Allow` to the methods that were not
/// refused.
pub fn api_allow(path: &str) -> &'static str {
    if path == "/v1/keys/batch" {
        "POST"
    } else {
        "GET, HEAD"
    }
}

/// Whether `label` is the template of a route that looks up one key (the hot routes).
pub fn is_single_key(label: &str) -> bool {
    matches!(
        label,
        "/v1/keys/{key}" | "/v1/keys/{key}/value" | "/get_value/{key}"
    )
}

/// The API paths anyone may read without a token: the spec and its viewer.
pub fn is_open_path(path: &str) -> bool {
    path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/")
}

/// Where the old service's router sent a path under `/get_value`.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/get_value/{key}`: the key as FastAPI received it, percent-decoded.
    Key(Cow<'a, str>),
    /// Trailing slashes: redirect to this decoded path without them.
    Redirect(Cow<'a, str>),
    /// Under `/get_value`, but no key.
    NotFound,
}

/// Which `Target` `raw_path` (still percent-encoded) is, matched as Starlette matched
/// uvicorn's decoded path (`urllib.parse.unquote`: invalid escapes kept as they are,
/// bytes that are not UTF-8 as U+FFFD); `None` for a path outside `/get_value`.
pub fn target(raw_path: &str) -> Option<Target<'_>> {
    let path: Cow<'_, str> = if raw_path.contains('%') {
        let bytes: Cow<'_, [u8]> = percent_encoding::percent_decode_str(raw_path).into();
        Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    } else {
        Cow::Borrowed(raw_path)
    };
    if path != "/get_value" && !path.starts_with("/get_value/") {
        return None;
    }
    const PREFIX: &str = "/get_value/";
    // Starlette's `{key}` is `[^/]+`.
    let is_key_path = |path: &str| {
        path.strip_prefix(PREFIX)
            .is_some_and(|key| !key.is_empty() && !key.contains('/'))
    };
    if is_key_path(&path) {
        return Some(Target::Key(tail(path, PREFIX.len())));
    }
    let stripped = path.trim_end_matches('/').len();
    if stripped < path.len() && is_key_path(&path[..stripped]) {
        return Some(Target::Redirect(head(path, stripped)));
    }
    Some(Target::NotFound)
}

/// `text[from..]`, borrowed or owned as `text` is.
fn tail(text: Cow<'_, str>, from: usize) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[from..]),
        Cow::Owned(mut text) => Cow::Owned(text.split_off(from)),
    }
}

/// `text[..to]`, borrowed or owned as `text` is.
fn head(text: Cow<'_, str>, to: usize) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[..to]),
        Cow::Owned(mut text) => {
            text.truncate(to);
            Cow::Owned(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_paths() {
        assert_eq!(HotRoute::of("/v1/keys/abc"), Some(HotRoute::Key("abc")));
        assert_eq!(
            HotRoute::of("/v1/keys/abc/value"),
            Some(HotRoute::Value("abc"))
        );
        assert_eq!(HotRoute::of("/v1/keys//value"), Some(HotRoute::Value("")));
        assert_eq!(
            HotRoute::of("/get_value/abc"),
            Some(HotRoute::Legacy("abc"))
        );
        for other in [
            "/v1/keys/",
            "/v1/keys/batch",
            "/v1/keys/a/b",
            "/v1/keys/a/value/x",
            "/get_value/",
            "/get_value/a/b",
            "/docs",
        ] {
            assert_eq!(HotRoute::of(other), None, "{other}");
        }
    }

    #[test]
    fn labels_are_templates() {
        assert_eq!(path_label("/v1/keys/x/value"), "/v1/keys/{key}/value");
        assert_eq!(path_label("/openapi.json"), "/openapi.json");
        assert_eq!(path_label("/docs/x.js"), "/docs");
        assert_eq!(path_label("/openapi.json/x"), "unmatched");
        assert_eq!(path_label("/nope"), "unmatched");
        assert_eq!(path_label("/get_value/k/"), "/get_value/{key}");
        assert_eq!(path_label("/get_value/k%2F"), "/get_value/{key}");
        assert_eq!(path_label("/get_value/"), "unmatched");
    }
}
