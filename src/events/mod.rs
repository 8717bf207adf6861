//! Internal events: one type per thing that happens in the worker, each
//! emitting its log line and its metric from one place (the shape Vector
//! uses). Code elsewhere says *what happened* with [`emit`]; how it is logged
//! and counted is decided here, so that the log and the metric never disagree
//! and tests read counters from `/metrics` instead of parsing log text.
//!
//! Every label value is bounded by construction: app names come from the
//! configuration (anything else is `unknown`), APNs statuses and reasons from
//! Apple's documented lists (anything else is `other`), dead-letter reasons
//! from the contract's codes, tiers from the configured delays, children from
//! the supervision tree. Never a token, a job id or an `apns-id`.
//!
//! The registry (`registry`) holds every metric with private fields, so
//! that moving a metric anywhere else does not compile; the events are
//! grouped by where they happen. Tidy checks that no log line is written
//! outside this module, except by the generic supervisor (`supervisor`,
//! which knows nothing of Misiva and logs its own restarts) and the APNs
//! simulator (`sim`, a separate program whose log is its product).

mod apns;
mod apps;
mod broker;
mod jobs;
mod process;
mod registry;

pub use apns::*;
pub use apps::*;
pub use broker::*;
pub use jobs::*;
pub use process::*;
pub use registry::{
    AppMetrics, GaugeUnit, Metrics, OwnedGaugeUnit, UNKNOWN_APP, UnitGauge, metrics,
};

/// Something that happened, which logs itself and counts itself.
pub trait InternalEvent {
    fn emit(self);
}

/// An error as an event carries it: written with `Display` into the log line.
pub trait Cause: std::fmt::Display + std::fmt::Debug {}

impl<T: std::fmt::Display + std::fmt::Debug + ?Sized> Cause for T {}

/// Reports `event`: its log line and its metrics.
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::Lane;
    use crate::outcome::ApnsAnswer;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn unknown_apps_share_one_label() {
        let m = metrics();
        m.set_apps(["configured-app"]);
        assert_eq!(&*m.app("configured-app"), "configured-app");
        assert_eq!(&*m.app("a-job-invented-this"), UNKNOWN_APP);
    }

    #[test]
    fn exposition_has_conventional_names() {
        emit(JobReceived {
            queue: &Arc::from("misiva.jobs"),
            lane: Lane::Normal,
        });
        let text = metrics().encode();
        assert!(text.contains("misiva_build_info{version=\""), "{text}");
        assert!(
            text.contains("misiva_jobs_received_total{queue=\"misiva.jobs\",lane=\"normal\"} "),
            "{text}"
        );
        assert!(text.contains("# TYPE misiva_apns_request_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn answers_from_anything_but_apple_stay_bounded() {
        let app = AppMetrics::new("bounded-app");
        for reason in ["Made Up", "X".repeat(64).as_str(), "Unregistered"] {
            emit(NotificationAnswered {
                app: &app,
                target: "token",
                answer: &ApnsAnswer::Status {
                    code: 799,
                    reason: Some(reason.to_owned()),
                    timestamp_ms: None,
                },
                elapsed: Duration::from_millis(3),
            });
        }
        let text = metrics().encode();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("misiva_notifications_total{app=\"bounded-app\""))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.contains("status=\"other\"")));
        assert!(lines.iter().any(|l| l.contains("reason=\"other\"} 2")));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("reason=\"Unregistered\"} 1"))
        );
    }
}
