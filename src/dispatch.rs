//! One job's walk through APNs: decode the body, pick the app's client, send
//! every token (concurrently, bounded), classify each answer, and settle.
//! No AMQP here: the shell hands in the message and carries out the settlement.

use crate::apns::{Apns, JobRequest, Recipient};
use crate::job;
use crate::lane::Lane;
use crate::outcome::{self, RetryPolicy, Settlement, Verdict, classify};
use crate::trace::TraceParent;
use futures_util::StreamExt;
use std::sync::Arc;
use tracing::Instrument;

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
    /// The publisher's W3C trace context, when it sent a valid one.
    pub trace: Option<&'a TraceParent>,
    /// The lane it came by: an urgent job never waits for room or places the
    /// normal lane holds.
    pub lane: Lane,
}

/// The span of one job, every field given at once: recording fields one by
/// one later costs four times as much under the JSON formatter (measured in
/// `benches/hot_paths.rs`).
pub fn job_span(
    job_id: Option<&str>,
    app: Option<&str>,
    tokens: Option<usize>,
    trace: Option<&TraceParent>,
) -> tracing::Span {
    tracing::info_span!(
        "job",
        job_id,
        app,
        tokens,
        trace_id = trace.map(|t| t.trace_id.as_str()),
        parent_span_id = trace.map(|t| t.parent_id.as_str()),
    )
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

    /// The job's verdict, and its span (to settle it in): the span is made
    /// once the job is decoded, so that it carries the job's id, app and
    /// token count from the start.
    pub async fn handle(&self, inbound: Inbound<'_>) -> (Verdict, tracing::Span) {
        let attempt = inbound.previous_attempts.saturating_add(1);
        let job = match job::decode(inbound.body, inbound.message_id) {
            Ok(job) => job,
            Err(e) => {
                let id = inbound
                    .message_id
                    .map(|id| crate::bounded::cut(id, crate::bounded::SHORT_STRING_BYTES));
                let span = job_span(id, None, None, inbound.trace);
                return (self.invalid(attempt, inbound.message_id, e), span);
            }
        };
        let span = job_span(
            Some(job.id.as_str()),
            Some(job.app.as_str()),
            Some(job.tokens.len()),
            inbound.trace,
        );
        let client = match self.apns.client(job.app.as_str()).await {
            Some(Ok(client)) => client,
            None => {
                let verdict = Verdict {
                    app: job.app.to_string(),
                    topic: job.topic.as_ref().map(|t| Arc::from(t.as_str())),
                    ..Verdict::rejected(
                        attempt,
                        outcome::UNKNOWN_APP,
                        format!(
                            "no credentials are configured for app {:?}",
                            job.app.as_str()
                        ),
                        Some(job.id.to_string()),
                    )
                };
                return (verdict, span);
            }
            // The app's key or certificate was readable when its file was
            // loaded and is not now (changed on disk in between): the job
            // waits in a retry tier for the watcher to see the change.
            Some(Err(e)) => return (self.unavailable(job, attempt, &e), span),
        };
        let client = &client;
        // Room for a many-token job is asked first (see `ApnsClient::admit`).
        // Its wait counts toward `max_hold`, like a wait for a place or the breaker.
        let deadline = tokio::time::Instant::now() + self.max_hold;
        let lane = inbound.lane;
        let (job, admission) = match client.try_admit(lane, job.tokens.len()) {
            Ok(admission) => (job, Ok(admission)),
            Err(weight) => {
                // A waiting job keeps only its body, which the broker's
                // delivery holds anyway: the decoded tokens (several times the
                // body's size) are made again once it has room.
                drop(job);
                // Boxed: a rare path, which would otherwise add its timer and
                // semaphore wait to every delivery's future.
                let admission = Box::pin(
                    tokio::time::timeout_at(deadline, client.admit(lane, weight))
                        .instrument(span.clone()),
                )
                .await;
                match job::decode(inbound.body, inbound.message_id) {
                    Ok(job) => (job, admission),
                    // The same bytes decoded a moment ago: never taken, but
                    // a verdict rather than a panic if it ever were.
                    Err(e) => {
                        let verdict = self.invalid(attempt, inbound.message_id, e);
                        return (verdict, span);
                    }
                }
            }
        };
        let verdict = match admission {
            Ok(_room) => {
                self.send(job, client, lane, attempt, deadline)
                    .instrument(span.clone())
                    .await
            }
            Err(_) => self.held(job, client, attempt),
        };
        (verdict, span)
    }

    /// The verdict of a body that is not a valid job: dead-lettered as `invalid_job`.
    fn invalid(&self, attempt: u32, message_id: Option<&str>, e: job::JobError) -> Verdict {
        Verdict::rejected(
            attempt,
            outcome::INVALID_JOB,
            e.to_string(),
            message_id.map(str::to_owned),
        )
    }

    /// The verdict of a job that waited `max_hold` for room among its app's
    /// jobs in progress: every token goes to a retry tier, as a token held
    /// that long for a place or by the breaker does.
    fn held(&self, job: job::Job, client: &crate::apns::ApnsClient, attempt: u32) -> Verdict {
        let max_hold = self.max_hold;
        let settlement = self.unsent(&job, attempt, format!(
            "held {max_hold:?} waiting for room among the app's jobs in progress; moved to a retry tier"
        ));
        self.verdict(job, Some(client), settlement, 0)
    }

    /// The verdict of a job whose app's client cannot start now (its
    /// credentials changed on disk since they were checked): a retry tier,
    /// as for a lost request.
    fn unavailable(&self, job: job::Job, attempt: u32, why: &crate::apns::Unavailable) -> Verdict {
        let settlement = self.unsent(
            &job,
            attempt,
            format!("the app's credentials cannot be loaded now: {why}"),
        );
        self.verdict(job, None, settlement, 0)
    }

    /// The settlement of a job none of whose requests was sent: each token,
    /// or its broadcast, is given a `Transport` answer, so that `classify`
    /// decides its fate as for a lost request.
    fn unsent(&self, job: &job::Job, attempt: u32, detail: String) -> Settlement {
        let answer = crate::outcome::ApnsAnswer::Transport(detail);
        match &job.channel {
            Some(channel) => outcome::settle_broadcast(
                channel,
                outcome::classify_broadcast(&answer),
                attempt,
                self.policy,
            ),
            None => {
                let outcome = classify(&answer);
                outcome::settle(
                    job.tokens.iter().map(|token| (token, outcome.clone())),
                    attempt,
                    self.policy,
                )
            }
        }
    }

    /// The job's parts move into the verdict: no copies.
    /// `client` gives the app's default topic, when there is one to ask.
    fn verdict(
        &self,
        job: job::Job,
        client: Option<&crate::apns::ApnsClient>,
        settlement: Settlement,
        delivered: usize,
    ) -> Verdict {
        Verdict {
            settlement,
            app: job.app.into_string(),
            job_id: Some(job.id.into_string()),
            topic: match job.topic {
                Some(topic) => Some(Arc::from(topic.into_string())),
                None => client.and_then(|c| c.default_topic_name(job.push_type)),
            },
            delivered,
        }
    }

    /// Sends every token of a decoded job and settles the outcomes. An
    /// `async move` block rather than an `async fn`, so that the job is kept
    /// once in the future, not twice (see `Consumer::process`).
    fn send(
        &self,
        job: job::Job,
        client: &crate::apns::ApnsClient,
        lane: Lane,
        attempt: u32,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Verdict> {
        async move {
            // Shared, not inline: the request's ready-made headers are a few
            // hundred bytes, which would otherwise add to every delivery's future.
            let request = Arc::new(client.job_request(&job));
            if let Some(channel) = &job.channel {
                // Boxed: broadcasts are few, and their wait would otherwise
                // add to every device push's future.
                let (settlement, delivered) =
                    Box::pin(self.broadcast(client, &request, channel, lane, attempt, deadline))
                        .await;
                return self.verdict(job, Some(client), settlement, delivered);
            }
            let mut tally = Tally::default();
            if let [token] = job.tokens.as_slice() {
                // Most jobs have one token: no stream, no buffer of futures.
                let place = tokio::time::timeout_at(deadline, client.reserve(lane))
                    .await
                    .ok();
                let outcome =
                    deliver(client, &request, token, place, deadline, self.max_hold).await;
                tally.add(0, outcome);
            } else {
                self.fan_out(&job, client, lane, &request, deadline, &mut tally)
                    .await;
            }
            let delivered = tally.delivered;
            let settlement = outcome::settle(tally.undelivered(&job.tokens), attempt, self.policy);
            self.verdict(job, Some(client), settlement, delivered)
        }
    }

    /// Sends a channel job's one broadcast and settles its outcome.
    async fn broadcast(
        &self,
        client: &crate::apns::ApnsClient,
        request: &JobRequest,
        channel: &job::ChannelId,
        lane: Lane,
        attempt: u32,
        deadline: tokio::time::Instant,
    ) -> (outcome::Settlement, usize) {
        let max_hold = self.max_hold;
        let answer = match tokio::time::timeout_at(deadline, client.reserve(lane)).await {
            Ok(place) => {
                client
                    .send_reserved(request, Recipient::Channel(channel), place, deadline)
                    .await
            }
            Err(_) => None,
        };
        let answer = answer.unwrap_or_else(|| {
            crate::outcome::ApnsAnswer::Transport(format!(
                "held {max_hold:?} waiting for APNs to accept requests; moved to a retry tier"
            ))
        });
        let outcome = outcome::classify_broadcast(&answer);
        let delivered = usize::from(outcome == outcome::TokenOutcome::Delivered);
        (
            outcome::settle_broadcast(channel, outcome, attempt, self.policy),
            delivered,
        )
    }

    /// Sends a many-token job's notifications, [`FANOUT_CONCURRENCY`] at a
    /// time. The tokens stay in the job: none is copied unless its outcome
    /// needs it in the settlement.
    async fn fan_out(
        &self,
        job: &job::Job,
        client: &crate::apns::ApnsClient,
        lane: Lane,
        request: &JobRequest,
        deadline: tokio::time::Instant,
        tally: &mut Tally,
    ) {
        let max_hold = self.max_hold;
        // The stream carries the tokens' indices, not references: closures
        // taking references get higher-ranked lifetimes, which the `Send`
        // check of the consumer's spawned task cannot prove (a compiler limit).
        let sent = futures_util::stream::iter(0..job.tokens.len())
            // Reserve the app-wide place first, so that a job only builds a
            // request's future once it may run (bounded memory in big fan-outs).
            .then(|index| {
                // Owned, for the same compiler limit.
                let client = client.clone();
                async move {
                    let place = tokio::time::timeout_at(deadline, client.reserve(lane)).await;
                    (place.ok(), index)
                }
            })
            .map(|(place, index)| {
                let token = job.tokens.get(index);
                // The request's future is made inside the block, not passed
                // in: a future a block takes and then awaits is kept twice in
                // it. `token` is always `Some`: the index comes from the job.
                async move {
                    let outcome = match token {
                        Some(token) => {
                            Some(deliver(client, request, token, place, deadline, max_hold).await)
                        }
                        None => None,
                    };
                    (index, outcome)
                }
            })
            .buffer_unordered(FANOUT_CONCURRENCY);
        let mut sent = std::pin::pin!(sent);
        while let Some((index, outcome)) = sent.next().await {
            if let Some(outcome) = outcome {
                tally.add(index, outcome);
            }
        }
    }
}

/// A job's outcomes as they come, by the token's index in the job: delivered
/// tokens counted, the others kept for the settlement, so that a fan-out of a
/// thousand delivered tokens keeps a number, not a thousand entries.
#[derive(Debug, Default)]
struct Tally {
    delivered: usize,
    undelivered: Vec<(usize, outcome::TokenOutcome)>,
}

impl Tally {
    fn add(&mut self, index: usize, outcome: outcome::TokenOutcome) {
        if outcome == outcome::TokenOutcome::Delivered {
            self.delivered += 1;
        } else {
            self.undelivered.push((index, outcome));
        }
    }

    /// The undelivered tokens with their outcomes, for [`outcome::settle`].
    fn undelivered(
        self,
        tokens: &[job::DeviceToken],
    ) -> impl Iterator<Item = (&job::DeviceToken, outcome::TokenOutcome)> {
        self.undelivered
            .into_iter()
            .filter_map(|(index, outcome)| Some((tokens.get(index)?, outcome)))
    }
}

/// One token's outcome, given its place among the app's requests in flight
/// (`None`: it waited past `deadline` for one, like a request the app's
/// breaker held that long: both go to a retry tier).
fn deliver(
    client: &crate::apns::ApnsClient,
    request: &JobRequest,
    token: &job::DeviceToken,
    place: Option<crate::apns::Place>,
    deadline: tokio::time::Instant,
    max_hold: std::time::Duration,
) -> impl Future<Output = outcome::TokenOutcome> {
    async move {
        let answer = match place {
            Some(place) => {
                client
                    .send_reserved(request, Recipient::Device(token), place, deadline)
                    .await
            }
            None => None,
        };
        let answer = answer.unwrap_or_else(|| {
            crate::outcome::ApnsAnswer::Transport(format!(
                "held {max_hold:?} waiting for APNs to accept requests; moved to a retry tier"
            ))
        });
        classify(&answer)
    }
}
