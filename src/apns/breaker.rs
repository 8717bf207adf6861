//! A circuit breaker per app. When APNs (or the way to it) fails every request
//! transiently, sending more only cycles jobs through the retry tiers and burns
//! CPU. The breaker opens instead: new requests of the app wait, their
//! deliveries stay unacked, the consumer's prefetch fills, and the broker stops
//! delivering. After a pause one probe request goes through; if it gets a real
//! answer the breaker closes and everything waiting proceeds, otherwise the
//! pause doubles (up to a ceiling).
//!
//! The rule: [`OPEN_AFTER`] consecutive transient failures open it; any answer
//! that is not transient (delivered, feedback, a permanent rejection) resets the
//! count. So a partial outage (say 20% of 503s) never opens it.

use crate::events;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Consecutive transient failures that open the breaker.
pub const OPEN_AFTER: u32 = 20;
/// First pause before a probe, and its ceiling.
pub const FIRST_PAUSE: Duration = Duration::from_millis(500);
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        pause: Duration,
    },
    /// One probe is out; everyone else waits for its answer.
    HalfOpen {
        pause: Duration,
    },
}

/// What a caller was let through as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    Probe,
}

/// Permission to send one request, to be answered with [`Ticket::record`].
/// A probe's ticket dropped without a record (its task cancelled or
/// panicking) counts as a failed probe: the breaker opens again and the next
/// probe is scheduled, instead of every later request waiting for an answer
/// that never comes.
#[derive(Debug)]
#[must_use = "record how the request ended"]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    pass: Pass,
    recorded: bool,
}

impl Ticket<'_> {
    pub fn pass(&self) -> Pass {
        self.pass
    }

    /// Records how the request ended: `failed` when it counts against the app.
    pub fn record(mut self, failed: bool) {
        self.recorded = true;
        self.breaker.record(self.pass, failed);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.pass == Pass::Probe {
            events::emit(events::BreakerChanged::ProbeAbandoned {
                app: &self.breaker.app,
            });
            self.breaker.record(Pass::Probe, true);
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    app: Arc<str>,
    /// The state; held only to read or change it, never across an await.
    state: Mutex<State>,
    /// Wakes the waiting requests when the breaker closes or a probe ends.
    changed: Notify,
}

impl Breaker {
    pub fn new(app: &str) -> Breaker {
        Breaker {
            app: crate::events::metrics().app(app),
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // One small Copy value: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Waits until a request may be sent.
    pub async fn ticket(&self) -> Ticket<'_> {
        let pass = self.pass().await;
        Ticket {
            breaker: self,
            pass,
            recorded: false,
        }
    }

    /// Waits until a request may be sent; the caller must [`Breaker::record`].
    async fn pass(&self) -> Pass {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register for wake-ups before reading the state, so none is missed.
            notified.as_mut().enable();
            let wait_until = {
                let mut state = self.lock();
                match *state {
                    State::Closed { .. } => return Pass::Normal,
                    State::Open { until, pause } if Instant::now() >= until => {
                        *state = State::HalfOpen { pause };
                        return Pass::Probe;
                    }
                    State::Open { until, .. } => Some(until),
                    State::HalfOpen { .. } => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Records how a request that was let through as `pass` ended.
    fn record(&self, pass: Pass, transient: bool) {
        let mut state = self.lock();
        match (pass, *state) {
            (Pass::Probe, State::HalfOpen { pause }) => {
                if transient {
                    let pause = (pause * 2).min(MAX_PAUSE);
                    *state = State::Open {
                        until: Instant::now() + pause,
                        pause,
                    };
                    events::emit(events::BreakerChanged::ProbeFailed {
                        app: &self.app,
                        pause,
                    });
                } else {
                    *state = State::Closed { failures: 0 };
                    events::emit(events::BreakerChanged::Closed { app: &self.app });
                }
                drop(state);
                self.changed.notify_waiters();
            }
            (Pass::Normal, State::Closed { failures }) => {
                if !transient {
                    *state = State::Closed { failures: 0 };
                } else if failures + 1 >= OPEN_AFTER {
                    *state = State::Open {
                        until: Instant::now() + FIRST_PAUSE,
                        pause: FIRST_PAUSE,
                    };
                    events::emit(events::BreakerChanged::Opened {
                        app: &self.app,
                        failures: failures + 1,
                    });
                } else {
                    *state = State::Closed {
                        failures: failures + 1,
                    };
                }
            }
            // Answers to requests sent before the breaker opened change nothing.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_and_closes() {
        let b = Arc::new(Breaker::new("app"));
        for _ in 0..OPEN_AFTER - 1 {
            assert_eq!(b.pass().await, Pass::Normal);
            b.record(Pass::Normal, true);
        }
        // A success resets the count.
        b.record(Pass::Normal, false);
        for _ in 0..OPEN_AFTER {
            b.record(Pass::Normal, true);
        }
        assert!(b.is_open());

        // Waiters block until the pause ends; the first becomes the probe.
        let started = Instant::now();
        assert_eq!(b.pass().await, Pass::Probe);
        assert_eq!(started.elapsed(), FIRST_PAUSE);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.pass().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "others wait while the probe is out");

        // The probe fails: open again for twice the pause.
        b.record(Pass::Probe, true);
        let probe_again = Instant::now();
        assert_eq!(waiter.await.unwrap(), Pass::Probe);
        assert_eq!(probe_again.elapsed(), FIRST_PAUSE * 2);

        // The probe succeeds: closed, everyone passes.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.pass().await }
        });
        tokio::task::yield_now().await;
        b.record(Pass::Probe, false);
        assert_eq!(waiter.await.unwrap(), Pass::Normal);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_is_capped() {
        let b = Breaker::new("app");
        for _ in 0..OPEN_AFTER {
            b.record(Pass::Normal, true);
        }
        for _ in 0..10 {
            assert_eq!(b.pass().await, Pass::Probe);
            b.record(Pass::Probe, true);
        }
        let started = Instant::now();
        b.pass().await;
        assert_eq!(started.elapsed(), MAX_PAUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_counts_as_failed_and_the_next_one_comes() {
        let b = Arc::new(Breaker::new("app"));
        for _ in 0..OPEN_AFTER {
            b.record(Pass::Normal, true);
        }
        // The probe's task is cancelled while its request is out.
        let probe = tokio::spawn({
            let b = b.clone();
            async move {
                let ticket = b.ticket().await;
                assert_eq!(ticket.pass(), Pass::Probe);
                std::future::pending::<()>().await;
                ticket.record(false);
            }
        });
        tokio::time::sleep(FIRST_PAUSE * 2).await;
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.ticket().await.pass() }
        });
        tokio::task::yield_now().await;
        probe.abort();
        let _ = probe.await;
        // Open again for twice the pause; then a new probe goes out. Bounded,
        // so that a breaker left half-open fails the test instead of hanging it.
        let started = Instant::now();
        let next = tokio::time::timeout(MAX_PAUSE * 4, waiter)
            .await
            .expect("no probe came after the abandoned one");
        assert_eq!(next.unwrap(), Pass::Probe);
        assert_eq!(started.elapsed(), FIRST_PAUSE * 2);
        let ticket = b.ticket().await;
        assert_eq!(ticket.pass(), Pass::Probe);
        ticket.record(false);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_outage_does_not_open_it() {
        let b = Breaker::new("app");
        for i in 0..1000 {
            b.record(Pass::Normal, i % 5 == 0);
        }
        assert!(!b.is_open());
    }
}
