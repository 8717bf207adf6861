//! Events of the APNs side: answers, connections, provider tokens, the breaker.

use super::InternalEvent;
use super::registry::{
    Answered, AppCause, AppLabel, AppMetrics, AppState, Totals, metrics, status_label,
};
use crate::outcome::{self, ApnsAnswer};
use std::sync::Arc;
use std::time::Duration;

/// APNs answered one notification (or the request ended without an answer).
#[derive(Debug)]
pub struct NotificationAnswered<'a> {
    pub app: &'a AppMetrics,
    /// `token` or `channel`: the target kind's label, from a fixed set.
    pub target: &'static str,
    pub answer: &'a ApnsAnswer,
    pub elapsed: Duration,
}

impl InternalEvent for NotificationAnswered<'_> {
    fn emit(self) {
        let reason = match self.answer {
            ApnsAnswer::Status { reason, .. } => outcome::reason_label(reason.as_deref()),
            ApnsAnswer::Transport(_) => "none",
        };
        if let ApnsAnswer::Transport(detail) = self.answer {
            tracing::debug!(app = %self.app.app, %detail, "no answer from APNs");
        }
        if matches!(self.answer, ApnsAnswer::Status { code: 200, .. }) {
            Totals::add(&metrics().totals.delivered, 1);
        }
        self.app
            .request_duration
            .observe(self.elapsed.as_secs_f64());
        metrics()
            .notifications
            .get_or_create(&Answered {
                app: self.app.app.clone(),
                target: self.target,
                status: status_label(self.answer),
                reason,
            })
            .inc();
    }
}

/// APNs answered a broadcast and named it with `apns-unique-id`. Logged
/// inside the job's span, so the line carries the job id, which is how an
/// operator finds the broadcast in Apple's delivery logs (CONTRACT §7).
#[derive(Debug)]
pub struct BroadcastAnswered<'a> {
    pub unique_id: &'a str,
    pub status: u16,
}

impl InternalEvent for BroadcastAnswered<'_> {
    fn emit(self) {
        tracing::info!(apns_unique_id = %self.unique_id, status = self.status, "broadcast answered");
    }
}

/// A request APNs did not process was sent again on another connection.
#[derive(Debug)]
pub struct NotificationResent<'a> {
    pub app: &'a AppMetrics,
    pub why: &'a str,
}

impl InternalEvent for NotificationResent<'_> {
    fn emit(self) {
        tracing::debug!(app = %self.app.app, why = %self.why, "request not processed; sending it on another connection");
        self.app.resent.inc();
    }
}

/// A connection actor changed state (`from` is `None` for a new actor).
/// The states come as their labels, made by the connection actor
/// (`apns::State::label`), so that this module knows none of its types;
/// `None` for `to` is a stopped actor, which no longer counts anywhere.
#[derive(Debug)]
pub struct ConnectionState<'a> {
    pub app: &'a Arc<str>,
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
}

impl InternalEvent for ConnectionState<'_> {
    fn emit(self) {
        let m = metrics();
        if let Some(from) = self.from {
            m.connections
                .get_or_create(&AppState {
                    app: self.app.clone(),
                    state: from,
                })
                .dec();
        }
        if let Some(to) = self.to {
            m.connections
                .get_or_create(&AppState {
                    app: self.app.clone(),
                    state: to,
                })
                .inc();
        }
    }
}

/// An HTTP/2 connection to APNs was established.
#[derive(Debug)]
pub struct ConnectionOpened<'a> {
    pub app: &'a Arc<str>,
    pub addr: &'a str,
}

impl InternalEvent for ConnectionOpened<'_> {
    fn emit(self) {
        tracing::info!(app = %self.app, addr = %self.addr, "APNs connection ready");
        metrics()
            .connections_opened
            .get_or_create(&AppLabel {
                app: self.app.clone(),
            })
            .inc();
    }
}

/// An HTTP/2 connection to APNs ended: closed cleanly (GOAWAY, idle) or failed.
#[derive(Debug)]
pub struct ConnectionClosed<'a> {
    pub app: &'a Arc<str>,
    pub addr: &'a str,
    pub error: Option<&'a str>,
}

impl InternalEvent for ConnectionClosed<'_> {
    fn emit(self) {
        let cause = match self.error {
            None => {
                tracing::info!(app = %self.app, addr = %self.addr, "APNs connection closed");
                "closed"
            }
            Some(e) => {
                tracing::warn!(app = %self.app, addr = %self.addr, error = %e, "APNs connection failed");
                "failed"
            }
        };
        metrics()
            .connections_closed
            .get_or_create(&AppCause {
                app: self.app.clone(),
                cause,
            })
            .inc();
    }
}

/// Connecting to APNs failed; the actor tries again after `retry_in`.
#[derive(Debug)]
pub struct ConnectFailed<'a> {
    pub app: &'a Arc<str>,
    pub error: &'a str,
    pub retry_in: Duration,
}

impl InternalEvent for ConnectFailed<'_> {
    fn emit(self) {
        tracing::warn!(app = %self.app, error = %self.error, retry_in = ?self.retry_in, "cannot connect to APNs");
        metrics()
            .connections_closed
            .get_or_create(&AppCause {
                app: self.app.clone(),
                cause: "connect_failed",
            })
            .inc();
    }
}

/// A provider token was signed: on schedule, or because APNs rejected the
/// previous one as expired.
#[derive(Debug)]
pub struct ProviderTokenRenewed<'a> {
    pub app: &'a Arc<str>,
    pub key_id: &'a str,
    pub rejected: bool,
}

impl InternalEvent for ProviderTokenRenewed<'_> {
    fn emit(self) {
        let cause = if self.rejected {
            tracing::info!(app = %self.app, key_id = %self.key_id, "APNs rejected the provider token as expired; renewing it now");
            "rejected"
        } else {
            tracing::info!(app = %self.app, key_id = %self.key_id, "signed a new APNs provider token");
            "scheduled"
        };
        metrics()
            .token_renewals
            .get_or_create(&AppCause {
                app: self.app.clone(),
                cause,
            })
            .inc();
    }
}

/// The app's circuit breaker opened, stayed open after a failed probe, or closed.
#[derive(Debug)]
pub enum BreakerChanged<'a> {
    Opened { app: &'a Arc<str>, failures: u32 },
    ProbeFailed { app: &'a Arc<str>, pause: Duration },
    ProbeAbandoned { app: &'a Arc<str> },
    Closed { app: &'a Arc<str> },
}

impl InternalEvent for BreakerChanged<'_> {
    fn emit(self) {
        let m = metrics();
        let (app, open) = match self {
            BreakerChanged::Opened { app, failures } => {
                tracing::warn!(%app, failures, "APNs fails every request; circuit open, pausing this app's deliveries");
                m.breaker_opened
                    .get_or_create(&AppLabel { app: app.clone() })
                    .inc();
                (app, 1)
            }
            BreakerChanged::ProbeFailed { app, pause } => {
                tracing::warn!(%app, ?pause, "APNs probe failed; circuit stays open");
                (app, 1)
            }
            BreakerChanged::ProbeAbandoned { app } => {
                tracing::warn!(%app, "APNs probe abandoned before its answer; counted as failed");
                (app, 1)
            }
            BreakerChanged::Closed { app } => {
                tracing::info!(%app, "APNs answers again; circuit closed");
                (app, 0)
            }
        };
        m.breaker_open
            .get_or_create(&AppLabel { app: app.clone() })
            .set(open);
    }
}

/// A request on a connection got no answer in time: the connection is
/// replaced (its requests in flight are answered as transport failures).
#[derive(Debug)]
pub struct ConnectionStalled<'a> {
    pub app: &'a Arc<str>,
    pub host: &'a str,
}

impl InternalEvent for ConnectionStalled<'_> {
    fn emit(self) {
        tracing::warn!(app = %self.app, host = %self.host, "an APNs request got no answer in time; replacing the connection");
    }
}

/// The check of an app's APNs endpoint at start failed. Not fatal (APNs may
/// come back), but a wrong CA or endpoint shows here early.
#[derive(Debug)]
pub struct ApnsProbeFailed<'a> {
    pub app: &'a str,
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for ApnsProbeFailed<'_> {
    fn emit(self) {
        tracing::warn!(app = %self.app, error = %self.error, "APNs endpoint check failed");
    }
}
