//! The API listener's routes by shape: which hot route a path is, the route *template*
//! every metric and access-log line is labelled with, and which paths are open without
//! a token. Pure functions of the path, so every layer asks the same question the same
//! way.

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
/// a path no route takes.
pub fn path_label(path: &str) -> &'static str {
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
    }
}
