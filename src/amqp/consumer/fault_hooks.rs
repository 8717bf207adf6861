//! Faults on demand, compiled only with the `fault-hooks` feature (the test
//! suite's build), never into a release.

use std::sync::atomic::{AtomicU32, Ordering};

fn wanted(variable: &str) -> u32 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A bug in one job's processing: panics inside the job's guard,
/// `MISIVA_FAULT_PANICS` times in all.
pub(super) fn maybe_panic() {
    static INJECTED: AtomicU32 = AtomicU32::new(0);
    if INJECTED.fetch_add(1, Ordering::Relaxed) < wanted("MISIVA_FAULT_PANICS") {
        panic!("fault hook: injected job panic");
    }
}

fn marked(variable: &str, body: &[u8]) -> bool {
    std::env::var(variable).is_ok_and(|marker| {
        !marker.is_empty() && body.windows(marker.len()).any(|w| w == marker.as_bytes())
    })
}

/// A slow delivery: every delivery whose body contains
/// `MISIVA_FAULT_SLOW_ON` waits `MISIVA_FAULT_SLOW_MS` (3,000 unless
/// set) before it is dispatched.
pub(super) async fn maybe_slow(body: &[u8]) {
    if marked("MISIVA_FAULT_SLOW_ON", body) {
        let ms = match wanted("MISIVA_FAULT_SLOW_MS") {
            0 => 3000,
            ms => ms,
        };
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(ms))).await;
    }
}

/// A bug in the consumer itself: panics outside any job's guard, which
/// crashes the consumer, `MISIVA_FAULT_CRASHES` times in all, and on every
/// delivery whose body contains `MISIVA_FAULT_CRASH_ON` (a message that
/// kills its consumer each time, as a poison message does).
pub(super) fn maybe_crash(body: &[u8]) {
    static INJECTED: AtomicU32 = AtomicU32::new(0);
    if INJECTED.fetch_add(1, Ordering::Relaxed) < wanted("MISIVA_FAULT_CRASHES") {
        panic!("fault hook: injected consumer crash");
    }
    if marked("MISIVA_FAULT_CRASH_ON", body) {
        panic!("fault hook: this message crashes its consumer");
    }
}
