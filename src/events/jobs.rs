//! Events of a job's life: received, settled, retried, dead-lettered, fed back.

use super::InternalEvent;
use super::registry::{AppLane, AppReason, AppTier, QueueLabel, Totals, metrics};
use crate::lane::Lane;
use crate::outcome;
use std::sync::Arc;
use std::time::Duration;

/// A delivery arrived from the work queue or one of its shards.
#[derive(Debug)]
pub struct JobReceived<'a> {
    pub queue: &'a Arc<str>,
    pub lane: Lane,
}

impl InternalEvent for JobReceived<'_> {
    fn emit(self) {
        metrics()
            .jobs_received
            .get_or_create(&QueueLabel {
                queue: self.queue.clone(),
                lane: self.lane.as_str(),
            })
            .inc();
    }
}

/// A job's settlement was published and confirmed; its ack is on its way.
#[derive(Debug)]
pub struct JobAcked<'a> {
    pub app: &'a str,
    pub lane: Lane,
    /// Since the job's AMQP `timestamp`, when it had one.
    pub age: Option<Duration>,
}

impl InternalEvent for JobAcked<'_> {
    fn emit(self) {
        let m = metrics();
        let app = AppLane {
            app: m.app(self.app),
            lane: self.lane.as_str(),
        };
        if let Some(age) = self.age {
            m.job_latency.get_or_create(&app).observe(age.as_secs_f64());
        }
        m.jobs_acked.get_or_create(&app).inc();
    }
}

/// Tokens of a job went to a delayed retry tier.
#[derive(Debug)]
pub struct JobRetried<'a> {
    pub app: &'a str,
    pub job_id: Option<&'a str>,
    pub attempt: u32,
    pub tier: usize,
    pub tokens: usize,
    pub detail: &'a str,
}

impl InternalEvent for JobRetried<'_> {
    fn emit(self) {
        tracing::info!(job_id = self.job_id.unwrap_or("-"), attempt = self.attempt, tokens = self.tokens, tier = self.tier, detail = %crate::bounded::detail(self.detail), "transient failure; job scheduled for retry");
        let m = metrics();
        Totals::add(&m.totals.retried, 1);
        // Tiers are a handful of configured delays; their index is bounded.
        let tier: Arc<str> = Arc::from(self.tier.to_string());
        m.jobs_retried
            .get_or_create(&AppTier {
                app: m.app(self.app),
                tier,
            })
            .inc();
    }
}

/// A dead letter was published.
#[derive(Debug)]
pub struct JobDeadLettered<'a> {
    pub app: &'a str,
    pub job_id: Option<&'a str>,
    pub reason: &'a str,
    pub detail: &'a str,
}

impl InternalEvent for JobDeadLettered<'_> {
    fn emit(self) {
        tracing::warn!(job_id = self.job_id.unwrap_or("-"), reason = %self.reason, detail = %crate::bounded::detail(self.detail), "job dead-lettered");
        let m = metrics();
        Totals::add(&m.totals.dead_lettered, 1);
        m.jobs_dead_lettered
            .get_or_create(&AppReason {
                app: m.app(self.app),
                reason: outcome::dead_letter_label(self.reason),
            })
            .inc();
    }
}

/// A token feedback event was published.
#[derive(Debug)]
pub struct FeedbackPublished<'a> {
    pub app: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for FeedbackPublished<'_> {
    fn emit(self) {
        tracing::debug!(app = %self.app, reason = %self.reason, "token feedback published");
        let m = metrics();
        Totals::add(&m.totals.feedback, 1);
        m.feedback_events
            .get_or_create(&AppReason {
                app: m.app(self.app),
                reason: outcome::reason_label(Some(self.reason)),
            })
            .inc();
    }
}

/// A settlement publish failed and will be tried again.
#[derive(Debug)]
pub struct SettlementRetried<'a> {
    pub consumer: usize,
    pub job_id: Option<&'a str>,
    pub failures: u32,
    pub pause: Duration,
    pub error: &'a str,
}

impl InternalEvent for SettlementRetried<'_> {
    fn emit(self) {
        tracing::warn!(consumer = self.consumer, job_id = ?self.job_id, error = %self.error, failures = self.failures, pause = ?self.pause, "settlement publish failed; trying again");
        metrics().settlement_retries.inc();
    }
}

/// A delivery went back to the queue because its settlement could not be
/// published; its verdict is remembered.
#[derive(Debug)]
pub struct JobRequeued<'a> {
    pub consumer: usize,
    pub job_id: Option<&'a str>,
    pub failures: u32,
    pub error: &'a str,
}

impl InternalEvent for JobRequeued<'_> {
    fn emit(self) {
        tracing::warn!(consumer = self.consumer, job_id = ?self.job_id, error = %self.error, failures = self.failures, "settlement failed; returning the job to the queue, its verdict kept");
        metrics().jobs_requeued.inc();
    }
}

/// Processing a job panicked: the panic is caught in the job's guard and the
/// job dead-lettered as `worker_panic` (its dead letter is a
/// [`JobDeadLettered`] of its own). Emitted inside the job's span.
#[derive(Debug)]
pub struct JobPanicked<'a> {
    pub consumer: usize,
    pub panic: &'a str,
}

impl InternalEvent for JobPanicked<'_> {
    fn emit(self) {
        tracing::error!(consumer = self.consumer, panic = %crate::bounded::detail(self.panic), "processing a job panicked; dead-lettering it as worker_panic");
    }
}

/// A consumer sent acks for `count` deliveries (one frame, possibly
/// `multiple`).
#[derive(Debug)]
pub struct AcksSent {
    pub count: u64,
}

impl InternalEvent for AcksSent {
    fn emit(self) {
        Totals::add(&metrics().totals.acked, self.count);
    }
}

/// An ack or reject could not be sent: the channel is closing, and the
/// broker returns its unsettled deliveries to the queue.
#[derive(Debug)]
pub struct AckFailed<'a> {
    pub consumer: usize,
    /// `ack` or `reject`.
    pub frame: &'static str,
    pub deliveries: u64,
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for AckFailed<'_> {
    fn emit(self) {
        tracing::debug!(consumer = self.consumer, frame = self.frame, deliveries = self.deliveries, error = %self.error, "ack failed; the channel returns the deliveries");
    }
}
