//! The async runtime's shape: how many threads, and the builder for them.

use super::{ConfigError, invalid};

/// The async runtime for `threads` threads: one is a current-thread runtime
/// (the requests and their connections share the thread), more a
/// multi-threaded one with that many workers, 0 tokio's default (one per CPU).
/// The worker and the pool benchmark both build theirs here.
pub fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder
}

/// Threads of the async runtime: `MISIVA_RUNTIME_THREADS`, else the CPUs the
/// process may use (which counts a container's CPU limit). With one, the
/// worker runs a single-threaded runtime: no work stealing and no wake-ups
/// across threads, the least CPU per notification (see
/// `docs/benchmarks.md`); with more, one worker thread each.
/// `raw` is the variable's value, if set.
pub fn runtime_threads(raw: Option<std::ffi::OsString>) -> Result<usize, ConfigError> {
    const NAME: &str = "MISIVA_RUNTIME_THREADS";
    match raw.map(std::ffi::OsString::into_string) {
        None => Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get)),
        Some(Err(_)) => Err(invalid(NAME, "?", "not UTF-8")),
        Some(Ok(raw)) => raw
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                invalid(
                    NAME,
                    crate::bounded::cut(&raw, 64),
                    "expected a number of threads from 1 to 1024",
                )
            }),
    }
}
