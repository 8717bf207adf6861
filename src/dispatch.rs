//! One job's walk through APNs: decode the body, pick the app's client, send
//! every token (concurrently, bounded), classify each answer, and settle.
//! No AMQP here: the shell hands in the message and carries out the settlement.

use crate::apns::{Apns, JobRequest};
use crate::job;
use crate::outcome::{self, RetryPolicy, Settlement, classify};
use futures_util::StreamExt;
use std::sync::Arc;

/// Requests of one job in flight at once. A 10,000-token job therefore holds at
/// most this many requests (and their futures) in memory; the connection's
/// stream limit and the actor's bounded queue push back beyond it.
pub const FANOUT_CONCURRENCY: usize = 256;

/// What the shell knows of one delivery, without AMQP types.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    /// Deliveries of this job before this one (the `x-misiva-attempts` header).
    pub previous_attempts: u32,
}

/// The settlement of one delivery and what its dead letters and feedback
/// events must say about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub settlement: Settlement,
    pub app: String,
    pub job_id: Option<String>,
    pub topic: Option<String>,
    /// Notifications APNs accepted for this delivery.
    pub delivered: usize,
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    apns: Apns,
    policy: RetryPolicy,
    /// Longest a job's tokens may wait for a place or for the app's breaker.
    max_hold: std::time::Duration,
}

impl Dispatcher {
    /// `max_hold` must stay under the broker's `consumer_timeout` (30 minutes
    /// by default): a delivery held longer makes the broker close the channel
    /// and redeliver everything on it, which counts toward the poison limit.
    pub fn new(apns: Apns, policy: RetryPolicy, max_hold: std::time::Duration) -> Self {
        Dispatcher {
            apns,
            policy,
            max_hold,
        }
    }

    pub async fn handle(&self, inbound: Inbound<'_>) -> Verdict {
        let attempt = inbound.previous_attempts.saturating_add(1);
        let span = tracing::Span::current();
        let job = match job::decode(inbound.body, inbound.message_id) {
            Ok(job) => job,
            Err(e) => {
                if let Some(id) = inbound.message_id {
                    span.record(
                        "job_id",
                        crate::bounded::cut(id, crate::bounded::SHORT_STRING_BYTES),
                    );
                }
                return Verdict {
                    settlement: outcome::reject_job(attempt, outcome::INVALID_JOB, e.to_string()),
                    app: job::AppName::default().to_string(),
                    job_id: inbound.message_id.map(str::to_owned),
                    topic: None,
                    delivered: 0,
                };
            }
        };
        span.record("job_id", job.id.as_str());
        span.record("app", job.app.as_str());
        span.record("tokens", job.tokens.len());
        let Some(client) = self.apns.client(job.app.as_str()) else {
            return Verdict {
                settlement: outcome::reject_job(
                    attempt,
                    outcome::UNKNOWN_APP,
                    format!(
                        "no credentials are configured for app {:?}",
                        job.app.as_str()
                    ),
                ),
                app: job.app.to_string(),
                job_id: Some(job.id.to_string()),
                topic: job.topic.as_ref().map(ToString::to_string),
                delivered: 0,
            };
        };
        // Owned parts per request: the futures run inside a spawned task, where
        // borrowed closures hit the compiler's higher-ranked lifetime limits.
        let request = Arc::new(JobRequest::new(&job, client.default_topic()));
        // Past this instant no token of the job waits any longer: the ones
        // still waiting (an open breaker, a saturated app) go to a retry tier.
        let deadline = tokio::time::Instant::now() + self.max_hold;
        let held = |token| {
            let answer = crate::outcome::ApnsAnswer::Transport(format!(
                "held {:?} waiting for APNs to accept requests; moved to a retry tier",
                self.max_hold
            ));
            (token, classify(&answer))
        };
        let outcomes: Vec<_> = futures_util::stream::iter(job.tokens.clone())
            // Reserve the app-wide place first, so that a job only builds a
            // request's future once it may run (bounded memory in big fan-outs).
            .then(|token| {
                let client = client.clone();
                async move {
                    let slot = tokio::time::timeout_at(deadline, client.reserve()).await;
                    (slot.ok(), token)
                }
            })
            .map(|(slot, token)| {
                let request = request.clone();
                let client = client.clone();
                async move {
                    let Some(slot) = slot else {
                        return held(token);
                    };
                    match client.send_reserved(&request, &token, slot, deadline).await {
                        Some(answer) => (token, classify(&answer)),
                        None => held(token),
                    }
                }
            })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .collect()
            .await;
        let delivered = outcomes
            .iter()
            .filter(|(_, o)| *o == outcome::TokenOutcome::Delivered)
            .count();
        Verdict {
            settlement: outcome::settle(outcomes, attempt, self.policy),
            app: job.app.to_string(),
            job_id: Some(job.id.to_string()),
            topic: job
                .topic
                .as_ref()
                .or(client.default_topic())
                .map(ToString::to_string),
            delivered,
        }
    }
}
