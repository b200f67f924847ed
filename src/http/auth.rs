//! Optional JWT bearer authentication with scopes (`kv:read`, `kv:admin`).
//!
//! On when a key source is configured. The accepted algorithm is pinned by the key,
//! never taken from the token: an HS256 secret accepts HS256 only, an RSA key RS256, an
//! EC P-256 key ES256, an Ed25519 key EdDSA; a JWKS key by its type. So `alg: none`, an
//! HS256 token signed with the RSA public key as its secret, and any other algorithm
//! are refused before a signature is checked.
//!
//! Claims are read strictly: with an issuer or audience configured, `iss` / `aud` are
//! required and must have their registered JSON types; `scope` and `scp` are each a
//! space-separated string or an array of strings, and any other type refuses the
//! token rather than silently granting nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use poem::http::{header, HeaderMap, HeaderValue, Uri};
use poem::{IntoResponse, Request, Response};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use super::problem::{Problem, ProblemKind};

/// The scope every data route needs.
pub const SCOPE_READ: &str = "kv:read";
/// The scope `/admin/*` needs.
pub const SCOPE_ADMIN: &str = "kv:admin";

/// A longer `Authorization` header is refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where the verification keys come from and what the tokens must say.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub hs256_secret_file: Option<PathBuf>,
    /// The secret itself, from the environment only (never a flag: flags show in `ps`).
    pub hs256_secret: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("give one JWT key source, not several: {0}")]
    SeveralSources(String),
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the HS256 secret is empty")]
    EmptySecret,
    #[error("{} is not a PEM public key of a supported type (RSA, EC P-256, Ed25519)", path.display())]
    UnsupportedKey { path: PathBuf },
    #[error("{} is not a JWKS document: {source}", path.display())]
    Jwks {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: the JWKS holds no keys, so every token would be refused", path.display())]
    EmptyJwks { path: PathBuf },
    #[error("{}: key {index} of the JWKS {reason}", path.display())]
    JwksKey {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

/// One verification key and the one algorithm it accepts.
struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

enum Keys {
    Single(Box<VerifyingKey>),
    ByKid(HashMap<String, VerifyingKey>),
}

fn single(key: VerifyingKey) -> Keys {
    Keys::Single(Box::new(key))
}

pub struct Authenticator {
    keys: Keys,
    /// `--jwt-issuer` is set: `iss` must be a string (jsonwebtoken would also take an
    /// array holding the issuer, which RFC 7519 does not allow).
    issuer_required: bool,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Option<String>,
    scopes: Vec<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// The claims kvserve reads itself; jsonwebtoken has checked `exp`, `nbf`, `iss` and
/// `aud`. `scope`, `scp` and `iss` are kept as raw JSON (a present `null` included) so
/// a claim of the wrong type gets a 401 that names it.
#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    scope: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    scp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<Value>,
}

/// `Some` for every claim present, `null` too (serde's `Option` would read `null` as
/// absent).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// The scopes of a `scope` or `scp` claim: a space-separated string (RFC 8693 / RFC
/// 9068) or an array of strings (as several identity providers send `scp`).
fn scope_claim(name: &str, claim: Option<Value>) -> Result<Vec<String>, AuthFailure> {
    let wrong_type = || {
        AuthFailure::Invalid(format!(
            "the claim `{name}` must be a space-separated string or an array of strings"
        ))
    };
    match claim {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(scope) => Ok(scope),
                _ => Err(wrong_type()),
            })
            .collect(),
        Some(_) => Err(wrong_type()),
    }
}

/// Why a request was refused; the label is the `reason` of `kvserve_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    /// More than one `Authorization` header: which one a proxy in front checked and
    /// which one kvserve would read may differ, so neither is trusted.
    DuplicateHeader,
    Invalid(String),
    Expired,
    InsufficientScope(&'static str),
}

impl AuthFailure {
    /// Every `reason`, for the metric that creates each series at 0 up front (so a
    /// dashboard or alert sees a reason before its first failure). Kept complete by
    /// the test `every_reason_is_listed`.
    pub const REASONS: [&'static str; 5] = [
        "missing_token",
        "duplicate_header",
        "invalid_token",
        "expired",
        "insufficient_scope",
    ];

    /// The `reason` label of `kvserve_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_token",
            AuthFailure::DuplicateHeader => "duplicate_header",
            AuthFailure::Invalid(_) => "invalid_token",
            AuthFailure::Expired => "expired",
            AuthFailure::InsufficientScope(_) => "insufficient_scope",
        }
    }

    /// 401 or 403 (400 for a duplicate header, RFC 6750 `invalid_request`)
    /// problem+json with the RFC 6750 `WWW-Authenticate` header.
    pub fn into_response(self) -> Response {
        let (kind, detail, challenge) = match &self {
            AuthFailure::DuplicateHeader => (
                ProblemKind::InvalidHeader,
                "the `Authorization` header is sent more than once; send exactly one".to_owned(),
                r#"Bearer realm="kvserve", error="invalid_request", error_description="the Authorization header is sent more than once""#.to_owned(),
            ),
            AuthFailure::Missing => (
                ProblemKind::Unauthorized,
                "this route needs a bearer token: send `Authorization: Bearer <token>`".to_owned(),
                r#"Bearer realm="kvserve""#.to_owned(),
            ),
            AuthFailure::Invalid(why) => (
                ProblemKind::Unauthorized,
                format!("the bearer token was refused: {why}"),
                format!(r#"Bearer realm="kvserve", error="invalid_token", error_description="{}""#, quote_safe(why)),
            ),
            AuthFailure::Expired => (
                ProblemKind::Unauthorized,
                "the bearer token has expired".to_owned(),
                r#"Bearer realm="kvserve", error="invalid_token", error_description="the token has expired""#.to_owned(),
            ),
            AuthFailure::InsufficientScope(scope) => (
                ProblemKind::Forbidden,
                format!("the bearer token lacks the scope `{scope}`"),
                format!(r#"Bearer realm="kvserve", error="insufficient_scope", scope="{scope}""#),
            ),
        };
        let mut resp = Problem::new(kind, detail).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}

/// `error_description` is a quoted string: keep it to printable ASCII without quotes.
fn quote_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl Authenticator {
    /// `None` when no key source is configured: authentication is off.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthConfigError> {
        let sources: Vec<&str> = [
            (
                config.hs256_secret_file.is_some(),
                "--jwt-hs256-secret-file",
            ),
            (config.hs256_secret.is_some(), "KVSERVE_JWT_HS256_SECRET"),
            (config.public_key_file.is_some(), "--jwt-public-key-file"),
            (config.jwks_file.is_some(), "--jwt-jwks-file"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if sources.len() > 1 {
            return Err(AuthConfigError::SeveralSources(sources.join(", ")));
        }
        if sources.is_empty() {
            return Ok(None);
        }
        // jsonwebtoken 11 has no implicit crypto backend; without one installed the
        // first verification would panic. Installing twice is harmless.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let validation = |alg: Algorithm| validation(config, alg);
        let keys = if let Some(path) = &config.hs256_secret_file {
            let secret = read(path, "the HS256 secret file")?;
            single(hs256_key(
                secret.trim_ascii_end(),
                validation(Algorithm::HS256),
            )?)
        } else if let Some(secret) = &config.hs256_secret {
            single(hs256_key(secret.as_bytes(), validation(Algorithm::HS256))?)
        } else if let Some(path) = &config.public_key_file {
            let pem = read(path, "the public key file")?;
            let (key, alg) = pem_key(&pem)
                .ok_or_else(|| AuthConfigError::UnsupportedKey { path: path.clone() })?;
            single(VerifyingKey {
                key,
                validation: validation(alg),
            })
        } else if let Some(path) = &config.jwks_file {
            Keys::ByKid(jwks_keys(path, &read(path, "the JWKS file")?, validation)?)
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            keys,
            issuer_required: config.issuer.is_some(),
        }))
    }

    /// Verifies the request's bearer token (signature, `exp`, `nbf`, issuer, audience)
    /// and returns who it speaks for.
    pub fn authenticate(&self, uri: &Uri, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
        if uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token=")))
        {
            return Err(AuthFailure::Invalid(
                "tokens in the query string are not accepted (they end up in logs); use the Authorization header".to_owned(),
            ));
        }
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(AuthFailure::Missing);
        };
        if values.next().is_some() {
            return Err(AuthFailure::DuplicateHeader);
        }
        if value.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::Invalid(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let value = value
            .to_str()
            .map_err(|_| AuthFailure::Invalid("the header is not ASCII".to_owned()))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ if value.eq_ignore_ascii_case("bearer") => "",
            _ => {
                return Err(AuthFailure::Invalid(
                    "expected `Authorization: Bearer <token>`".to_owned(),
                ))
            }
        };
        if token.is_empty() {
            return Err(AuthFailure::Invalid("the bearer token is empty".to_owned()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthFailure::Invalid("not a well-formed JWT".to_owned()))?;
        let key = match &self.keys {
            Keys::Single(key) => key,
            Keys::ByKid(keys) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthFailure::Invalid("the token has no `kid`".to_owned()))?;
                keys.get(kid).ok_or_else(|| {
                    AuthFailure::Invalid(format!("unknown key id `{}`", quote_safe(kid)))
                })?
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                match err.into_kind() {
                    ErrorKind::ExpiredSignature => AuthFailure::Expired,
                    ErrorKind::ImmatureSignature => {
                        AuthFailure::Invalid("the token is not valid yet (nbf)".to_owned())
                    }
                    ErrorKind::InvalidSignature => AuthFailure::Invalid("bad signature".to_owned()),
                    ErrorKind::InvalidAlgorithm => AuthFailure::Invalid(format!(
                        "algorithm {:?} is not accepted with this key",
                        header.alg
                    )),
                    ErrorKind::InvalidIssuer => AuthFailure::Invalid("wrong issuer".to_owned()),
                    ErrorKind::InvalidAudience => AuthFailure::Invalid("wrong audience".to_owned()),
                    // jsonwebtoken reports a claim of the wrong type as missing.
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthFailure::Invalid(match claim.as_str() {
                            "aud" => {
                                "the claim `aud` is missing or not a string or an array of strings"
                                    .to_owned()
                            }
                            "exp" => "the claim `exp` is missing or not a number".to_owned(),
                            _ => format!("the claim `{claim}` is missing or not a string"),
                        })
                    }
                    _ => AuthFailure::Invalid("not a valid token".to_owned()),
                }
            })?;
        let claims = data.claims;
        if self.issuer_required && !matches!(claims.iss, Some(Value::String(_))) {
            return Err(AuthFailure::Invalid(
                "the claim `iss` is missing or not a string".to_owned(),
            ));
        }
        let mut scopes = scope_claim("scope", claims.scope)?;
        scopes.extend(scope_claim("scp", claims.scp)?);
        Ok(Principal {
            subject: claims.sub,
            scopes,
        })
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn validation(config: &AuthConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    // jsonwebtoken checks `iss` and `aud` only when present (a claim of another JSON
    // type counts as absent): a configured one must also be required.
    let mut required = vec!["exp"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &config.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn hs256_key(secret: &[u8], validation: Validation) -> Result<VerifyingKey, AuthConfigError> {
    if secret.is_empty() {
        return Err(AuthConfigError::EmptySecret);
    }
    Ok(VerifyingKey {
        key: DecodingKey::from_secret(secret),
        validation,
    })
}

/// A PEM public key and the algorithm its type allows.
fn pem_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, Algorithm::ES256));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|key| (key, Algorithm::EdDSA))
}

fn jwks_keys(
    path: &Path,
    text: &[u8],
    validation: impl Fn(Algorithm) -> Validation,
) -> Result<HashMap<String, VerifyingKey>, AuthConfigError> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|source| AuthConfigError::Jwks {
        path: path.to_path_buf(),
        source,
    })?;
    if set.keys.is_empty() {
        return Err(AuthConfigError::EmptyJwks {
            path: path.to_path_buf(),
        });
    }
    let mut keys = HashMap::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let refuse = |reason: &str| AuthConfigError::JwksKey {
            path: path.to_path_buf(),
            index,
            reason: reason.to_owned(),
        };
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| refuse("has no `kid`"))?;
        let alg = signature_algorithm(jwk).map_err(|reason| refuse(&reason))?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|err| refuse(&format!("cannot be used: {err}")))?;
        if keys
            .insert(
                kid,
                VerifyingKey {
                    key,
                    validation: validation(alg),
                },
            )
            .is_some()
        {
            return Err(refuse("repeats a `kid` of an earlier key"));
        }
    }
    Ok(keys)
}

/// The one algorithm a JWKS key verifies: fixed by its key type, narrowed by its `alg`
/// when it has one. A key published for encryption (`"use": "enc"`, `key_ops`
/// without `verify`, an encryption `alg`) or whose `alg` does not fit its type is
/// refused: an identity provider's JWKS may hold such keys, and none must verify.
fn signature_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Encryption) => {
            return Err(r#"is marked "use": "enc"; only "sig" keys verify tokens"#.to_owned())
        }
        Some(PublicKeyUse::Other(other)) => {
            return Err(format!(
                r#"is marked "use": "{}"; only "sig" keys verify tokens"#,
                quote_safe(other)
            ))
        }
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err(r#"has `key_ops` without "verify""#.to_owned());
        }
    }
    use AlgorithmParameters::{EllipticCurve as Ec, OctetKeyPair, RSA};
    match (&jwk.algorithm, jwk.common.key_algorithm) {
        (_, Some(KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256)) => {
            Err("has an encryption `alg`; only signature keys verify tokens".to_owned())
        }
        (RSA(_), None | Some(KeyAlgorithm::RS256)) => Ok(Algorithm::RS256),
        (RSA(_), Some(KeyAlgorithm::RS384)) => Ok(Algorithm::RS384),
        (RSA(_), Some(KeyAlgorithm::RS512)) => Ok(Algorithm::RS512),
        (RSA(_), Some(KeyAlgorithm::PS256)) => Ok(Algorithm::PS256),
        (RSA(_), Some(KeyAlgorithm::PS384)) => Ok(Algorithm::PS384),
        (RSA(_), Some(KeyAlgorithm::PS512)) => Ok(Algorithm::PS512),
        (Ec(ec), None | Some(KeyAlgorithm::ES256)) if ec.curve == EllipticCurve::P256 => {
            Ok(Algorithm::ES256)
        }
        (Ec(ec), None | Some(KeyAlgorithm::ES384)) if ec.curve == EllipticCurve::P384 => {
            Ok(Algorithm::ES384)
        }
        (OctetKeyPair(okp), None | Some(KeyAlgorithm::EdDSA))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Ok(Algorithm::EdDSA)
        }
        (RSA(_) | Ec(_) | OctetKeyPair(_), Some(alg)) => Err(format!(
            "declares `alg` {alg:?}, which does not fit its key type and curve"
        )),
        _ => Err("is not an RSA, EC (P-256, P-384) or Ed25519 public key".to_owned()),
    }
}

/// Declares the bearer scheme on an operation, so the spec lists it and Swagger UI's
/// Authorize button sends the token. Verification is the admission pipeline's job (`http::pipeline`) (it runs
/// before routing, also for requests no operation matches), so extraction never fails.
pub struct BearerAuth;

impl<'a> ApiExtractor<'a> for BearerAuth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            "bearerAuth",
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "A JWT with the scope `kv:read` (data routes) or `kv:admin` (admin routes). \
                     Needed when the server runs with a JWT key; `kvserve token` mints one.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: Some("JWT"),
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec!["bearerAuth"]
    }

    async fn from_request(
        _request: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed() {
        let failures = [
            AuthFailure::Missing,
            AuthFailure::DuplicateHeader,
            AuthFailure::Invalid(String::new()),
            AuthFailure::Expired,
            AuthFailure::InsufficientScope("kv:read"),
        ];
        let reasons: Vec<_> = failures.iter().map(AuthFailure::reason).collect();
        assert_eq!(reasons, AuthFailure::REASONS);
    }

    #[test]
    fn descriptions_cannot_break_the_header() {
        assert_eq!(quote_safe("bad \"kid\" \\ é"), "bad ?kid? ? ?");
    }

    #[test]
    fn several_sources_are_refused() {
        let config = AuthConfig {
            hs256_secret: Some("x".into()),
            jwks_file: Some("k.json".into()),
            ..Default::default()
        };
        assert!(matches!(
            Authenticator::from_config(&config),
            Err(AuthConfigError::SeveralSources(_))
        ));
        assert!(Authenticator::from_config(&AuthConfig::default())
            .unwrap()
            .is_none());
    }
}
