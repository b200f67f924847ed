//! kvserve's black-box tests, in one binary: one module per feature, sharing
//! `common` (the `TestServer` harness and small data files).
//!
//! One binary instead of one per file, because each integration-test binary links
//! the whole crate and its dependencies again: twelve links cost minutes of CI on a
//! 2-core machine, and cargo runs test binaries one after another, so the slow
//! modules (protect, faults, loading) now run in parallel with the rest instead of
//! after it.
//!
//! The modules share one process, so a test must not change process-wide state
//! (environment, working directory, signal dispositions, a global tracing
//! subscriber). Servers that need such state run as the real binary in a child
//! process (`common::spawn_binary_with_env`), as `traces` does for its OTLP exporter.
//!
//! Run one module with `cargo test --test it protect::`, one test with
//! `cargo test --test it protect::every_answer_says_nosniff`. A filter matches anywhere
//! in a test's path, so no module name ends with another's (`spec`, not `openapi`, which
//! `api::` would select too; `architecture::a_module_filter_selects_one_module`).

mod common;

/// The fuzz targets' checks and reference model, shared by `fuzz_seeds` and
/// `properties`; the fuzz crate includes the same file.
#[path = "../../fuzz/src/lib.rs"]
mod fuzz_checks;

mod api;
mod architecture;
mod budgets;
mod clients;
mod compression;
mod differential;
mod docs;
mod fast_path;
mod faults;
mod fuzz_seeds;
mod legacy;
mod lifecycle;
mod loading;
mod operate;
mod properties;
mod protect;
mod shard;
mod spec;
mod tls;
mod traces;
