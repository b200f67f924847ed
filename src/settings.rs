//! The effective settings of `serve`, as logged at start-up: one entry per flag, with
//! where its value came from, secrets redacted.
//!
//! Read from clap's matches rather than written out per flag, so a flag added to
//! `cli.rs` is logged without anyone remembering to: the value is the text as given
//! (`1MiB`, `30s`), which is how the README and `--help` spell it.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::cli::{Cli, ServeArgs};
use crate::redact::{redact_url, REDACTED};

/// One setting: the flag's long name, its value as given (or `unset`), and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub source: String,
}

/// Every `serve` flag and global flag, in `--help` order, from `matches` (the
/// top-level matches; a `serve` subcommand's are looked up in them), plus the settings
/// that come from elsewhere: the LRU size the storage mode chose, the per-address
/// connection cap `--max-connections` chose, and an HS256 secret
/// given in the environment (named, never shown).
pub fn effective(matches: &ArgMatches, args: &ServeArgs) -> Vec<Setting> {
    let serve = match matches.subcommand() {
        Some(("serve", sub)) => sub,
        _ => matches,
    };
    let command = Cli::command();
    let mut settings: Vec<Setting> = command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let id = arg.get_id().as_str();
            let source = match serve.try_contains_id(id) {
                Ok(true) => serve.value_source(id),
                _ => None,
            };
            let value = serve
                .get_raw(id)
                .map(|values| {
                    values
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "unset".to_owned());
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let source = match source {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => format!("env {}", env.unwrap_or_default()),
                // An unset option is its default too: off, or chosen at run time.
                _ => "default".to_owned(),
            };
            Some(Setting {
                name: long.to_owned(),
                value: redact(long, &value),
                source,
            })
        })
        .collect();
    if let Some(lru) = settings.iter_mut().find(|s| s.name == "cache-capacity") {
        if lru.value == "unset" {
            lru.value = args.cache_capacity().to_string();
            lru.source = "default for --storage".to_owned();
        }
    }
    if let Some(cap) = settings
        .iter_mut()
        .find(|s| s.name == "max-connections-per-address")
    {
        if cap.value == "unset" {
            cap.value = args.protect.connections_per_address().to_string();
            cap.source = "default for --max-connections".to_owned();
        }
    }
    if std::env::var_os("KVSERVE_JWT_HS256_SECRET").is_some_and(|s| !s.is_empty()) {
        settings.push(Setting {
            name: "jwt-hs256-secret".to_owned(),
            value: REDACTED.to_owned(),
            source: "env KVSERVE_JWT_HS256_SECRET".to_owned(),
        });
    }
    settings
}

/// `value` fit to log for the flag `name`: a flag whose name says it holds a secret
/// (not a file holding one) is redacted whole, and a URL loses its user info and query,
/// where credentials and signed tokens travel.
pub fn redact(name: &str, value: &str) -> String {
    let secret = ["secret", "password", "passphrase", "token"]
        .iter()
        .any(|word| name.contains(word));
    if secret && !name.ends_with("-file") && value != "unset" {
        return REDACTED.to_owned();
    }
    redact_url(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_named_never_shown() {
        assert_eq!(redact("jwt-hs256-secret-file", "/s/x"), "/s/x");
        assert_eq!(redact("tls-key-password", "hunter2"), REDACTED);
        assert_eq!(redact("tls-key-password", "unset"), "unset");
        assert_eq!(
            redact("jwks-url", "https://u:p@idp/jwks?sig=1"),
            "https://(redacted)@idp/jwks?(redacted)"
        );
    }
}
