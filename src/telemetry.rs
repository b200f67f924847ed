//! Logging set-up. Logs go to stderr so stdout stays free for command output
//! (`verify` summaries, `openapi`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[error("invalid --log-level `{filter}`: {source}")]
pub struct LogFilterError {
    filter: String,
    source: tracing_subscriber::filter::ParseError,
}

pub fn init_logging(filter: &str) -> Result<(), LogFilterError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|source| LogFilterError {
        filter: filter.to_owned(),
        source,
    })?;
    // A second initialisation (tests calling this twice) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        // Colour codes only for people: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}
