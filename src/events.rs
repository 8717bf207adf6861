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

use crate::lane::Lane;
use crate::outcome::{self, ApnsAnswer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// Something that happened, which logs itself and counts itself.
pub trait InternalEvent {
    fn emit(self);
}

/// Reports `event`: its log line and its metrics.
pub fn emit(event: impl InternalEvent) {
    event.emit();
}

/// The label of a job, connection or request of an app that is not
/// configured here (a job naming an app we have no credentials for).
pub const UNKNOWN_APP: &str = "unknown";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppReason {
    pub app: Arc<str>,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppTier {
    pub app: Arc<str>,
    pub tier: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answered {
    pub app: Arc<str>,
    /// `token` (a device push) or `channel` (a broadcast).
    pub target: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppState {
    pub app: Arc<str>,
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppCause {
    pub app: Arc<str>,
    pub cause: &'static str,
}

/// A queue the worker consumes: the work queue, a shard, or a retired
/// shard. Its values come from the topology only (at most
/// [`crate::config::MAX_SHARDS`] names), never from a message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: Arc<str>,
    /// `normal` or `urgent` (CONTRACT §9).
    pub lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLane {
    pub app: Arc<str>,
    pub lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChildLabel {
    pub child: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// Buckets of the APNs round trip: 1 ms to about 16 s.
fn request_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// Buckets of a job's time from publish to settlement: the AMQP timestamp
/// has one-second resolution, so these start at 0.5 s and reach about 4.5 h
/// (retry tiers add minutes).
fn job_buckets() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 16200.0,
    ])
}

/// Every metric the worker exports, registered once per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Configured app names, interned: the only values the `app` label takes
    /// besides [`UNKNOWN_APP`].
    apps: RwLock<HashMap<String, Arc<str>>>,
    unknown: Arc<str>,
    pub jobs_received: Family<QueueLabel, Counter>,
    pub jobs_acked: Family<AppLane, Counter>,
    pub jobs_requeued: Counter,
    pub jobs_retried: Family<AppTier, Counter>,
    pub jobs_dead_lettered: Family<AppReason, Counter>,
    pub job_latency: Family<AppLane, Histogram, fn() -> Histogram>,
    pub notifications: Family<Answered, Counter>,
    pub notifications_resent: Family<AppLabel, Counter>,
    pub notifications_in_flight: Family<AppLabel, Gauge>,
    pub jobs_waiting_for_room: Family<AppLabel, Gauge>,
    pub request_duration: Family<AppLabel, Histogram, fn() -> Histogram>,
    pub feedback_events: Family<AppReason, Counter>,
    pub connections: Family<AppState, Gauge>,
    pub connections_opened: Family<AppLabel, Counter>,
    pub connections_closed: Family<AppCause, Counter>,
    pub streams_in_use: Family<AppLabel, Gauge>,
    pub token_renewals: Family<AppCause, Counter>,
    pub breaker_open: Family<AppLabel, Gauge>,
    pub breaker_opened: Family<AppLabel, Counter>,
    pub restarts: Family<ChildLabel, Counter>,
    pub broker_connected: Gauge,
    pub broker_blocked: Gauge,
    pub broker_reconnects: Counter,
    pub consumers_running: Family<QueueLabel, Gauge>,
    pub shards_retired: Family<QueueLabel, Gauge>,
    pub settlement_retries: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("misiva");
        let m = Metrics {
            registry: Registry::default(),
            apps: RwLock::new(HashMap::new()),
            unknown: Arc::from(UNKNOWN_APP),
            jobs_received: Family::default(),
            jobs_acked: Family::default(),
            jobs_requeued: Counter::default(),
            jobs_retried: Family::default(),
            jobs_dead_lettered: Family::default(),
            job_latency: Family::new_with_constructor(job_buckets),
            notifications: Family::default(),
            notifications_resent: Family::default(),
            notifications_in_flight: Family::default(),
            jobs_waiting_for_room: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            feedback_events: Family::default(),
            connections: Family::default(),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            streams_in_use: Family::default(),
            token_renewals: Family::default(),
            breaker_open: Family::default(),
            breaker_opened: Family::default(),
            restarts: Family::default(),
            broker_connected: Gauge::default(),
            broker_blocked: Gauge::default(),
            broker_reconnects: Counter::default(),
            consumers_running: Family::default(),
            shards_retired: Family::default(),
            settlement_retries: Counter::default(),
        };
        registry.register(
            "build",
            "Misiva's version; always 1",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let r = &mut registry;
        r.register(
            "jobs_received",
            "Deliveries taken from the work queue",
            m.jobs_received.clone(),
        );
        r.register(
            "jobs_acked",
            "Jobs settled and acked (delivered, fed back, retried or dead-lettered)",
            m.jobs_acked.clone(),
        );
        r.register(
            "jobs_requeued",
            "Deliveries returned to the queue because their settlement could not be published",
            m.jobs_requeued.clone(),
        );
        r.register(
            "jobs_retried",
            "Jobs republished to a delayed retry tier",
            m.jobs_retried.clone(),
        );
        r.register(
            "jobs_dead_lettered",
            "Dead letters published, by reason (poison and worker_panic included)",
            m.jobs_dead_lettered.clone(),
        );
        r.register(
            "job_latency_seconds",
            "Time from the job's AMQP timestamp to its settlement (jobs with a timestamp only)",
            m.job_latency.clone(),
        );
        r.register(
            "notifications",
            "APNs answers, by HTTP status and reason (status \"transport\": no answer)",
            m.notifications.clone(),
        );
        r.register(
            "notifications_resent",
            "Requests APNs did not process (GOAWAY, refused stream) sent again on another connection",
            m.notifications_resent.clone(),
        );
        r.register(
            "notifications_in_flight",
            "Notifications holding a place among the app's requests in flight",
            m.notifications_in_flight.clone(),
        );
        r.register(
            "jobs_waiting_for_room",
            "Many-token jobs decoded and waiting for room among the app's jobs in progress",
            m.jobs_waiting_for_room.clone(),
        );
        r.register(
            "apns_request_duration_seconds",
            "APNs round trip of one notification, from the pool to the answer",
            m.request_duration.clone(),
        );
        r.register(
            "feedback_events",
            "Token feedback events published, by APNs reason",
            m.feedback_events.clone(),
        );
        r.register(
            "apns_connections",
            "APNs connection actors by state",
            m.connections.clone(),
        );
        r.register(
            "apns_connections_opened",
            "APNs HTTP/2 connections established",
            m.connections_opened.clone(),
        );
        r.register(
            "apns_connections_closed",
            "APNs HTTP/2 connections ended, by cause",
            m.connections_closed.clone(),
        );
        r.register(
            "apns_streams_in_use",
            "HTTP/2 streams open on the app's APNs connections",
            m.streams_in_use.clone(),
        );
        r.register(
            "provider_token_renewals",
            "APNs provider tokens signed, by cause (scheduled or rejected)",
            m.token_renewals.clone(),
        );
        r.register(
            "breaker_open",
            "1 while the app's circuit breaker holds its requests",
            m.breaker_open.clone(),
        );
        r.register(
            "breaker_opened",
            "Times the app's circuit breaker opened",
            m.breaker_opened.clone(),
        );
        r.register(
            "supervisor_restarts",
            "Children restarted by the supervision tree",
            m.restarts.clone(),
        );
        r.register(
            "broker_connected",
            "1 while the RabbitMQ connection is up",
            m.broker_connected.clone(),
        );
        r.register(
            "broker_blocked",
            "1 while RabbitMQ blocks publishing (a memory or disk alarm)",
            m.broker_blocked.clone(),
        );
        r.register(
            "broker_reconnects",
            "Times the RabbitMQ connection was made again after it was lost",
            m.broker_reconnects.clone(),
        );
        r.register(
            "shards_retired",
            "1 for a shard beyond MISIVA_SHARDS that still exists and is consumed so that it empties",
            m.shards_retired.clone(),
        );
        r.register(
            "consumers_running",
            "Consumer actors currently consuming",
            m.consumers_running.clone(),
        );
        r.register(
            "settlement_retries",
            "Settlement publishes that failed and were tried again",
            m.settlement_retries.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Declares the configured apps: the `app` label takes only these names.
    pub fn set_apps<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        for name in names {
            apps.entry(name.to_owned())
                .or_insert_with(|| Arc::from(name));
        }
    }

    /// The `app` label of `name`: itself when configured, else [`UNKNOWN_APP`].
    pub fn app(&self, name: &str) -> Arc<str> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        apps.get(name)
            .cloned()
            .unwrap_or_else(|| self.unknown.clone())
    }

    /// The exposition text for `/metrics` (OpenMetrics text format, which
    /// Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The `status` label of an APNs answer.
pub fn status_label(answer: &ApnsAnswer) -> &'static str {
    match answer {
        ApnsAnswer::Transport(_) => "transport",
        ApnsAnswer::Status { code, .. } => outcome::status_label(*code),
    }
}

// ---------------------------------------------------------------------------
// Jobs

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

// ---------------------------------------------------------------------------
// APNs

/// Per-app handles to the metrics on the notification path, resolved once per
/// app so that a notification pays no label lookup for them.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    pub app: Arc<str>,
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    pub waiting_for_room: Gauge,
    pub streams: Gauge,
    pub resent: Counter,
}

impl AppMetrics {
    pub fn new(app: &str) -> AppMetrics {
        let m = metrics();
        m.set_apps([app]);
        let label = AppLabel { app: m.app(app) };
        AppMetrics {
            request_duration: m.request_duration.get_or_create_owned(&label),
            in_flight: m.notifications_in_flight.get_or_create_owned(&label),
            waiting_for_room: m.jobs_waiting_for_room.get_or_create_owned(&label),
            streams: m.streams_in_use.get_or_create_owned(&label),
            resent: m.notifications_resent.get_or_create_owned(&label),
            app: label.app,
        }
    }
}

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
pub enum Breaker<'a> {
    Opened { app: &'a Arc<str>, failures: u32 },
    ProbeFailed { app: &'a Arc<str>, pause: Duration },
    ProbeAbandoned { app: &'a Arc<str> },
    Closed { app: &'a Arc<str> },
}

impl InternalEvent for Breaker<'_> {
    fn emit(self) {
        let m = metrics();
        let (app, open) = match self {
            Breaker::Opened { app, failures } => {
                tracing::warn!(%app, failures, "APNs fails every request; circuit open, pausing this app's deliveries");
                m.breaker_opened
                    .get_or_create(&AppLabel { app: app.clone() })
                    .inc();
                (app, 1)
            }
            Breaker::ProbeFailed { app, pause } => {
                tracing::warn!(%app, ?pause, "APNs probe failed; circuit stays open");
                (app, 1)
            }
            Breaker::ProbeAbandoned { app } => {
                tracing::warn!(%app, "APNs probe abandoned before its answer; counted as failed");
                (app, 1)
            }
            Breaker::Closed { app } => {
                tracing::info!(%app, "APNs answers again; circuit closed");
                (app, 0)
            }
        };
        m.breaker_open
            .get_or_create(&AppLabel { app: app.clone() })
            .set(open);
    }
}

// ---------------------------------------------------------------------------
// Supervision and the broker

/// The supervision tree restarted a child that ended.
#[derive(Debug)]
pub struct ChildRestarted<'a> {
    pub supervisor: &'a str,
    pub child: &'a str,
    pub reason: &'a str,
}

impl InternalEvent for ChildRestarted<'_> {
    fn emit(self) {
        tracing::warn!(supervisor = %self.supervisor, child = %self.child, reason = %self.reason, "child ended; restarting");
        metrics()
            .restarts
            .get_or_create(&ChildLabel {
                child: Arc::from(self.child),
            })
            .inc();
    }
}

/// The RabbitMQ connection came up or went down.
#[derive(Debug)]
pub struct BrokerConnection {
    pub up: bool,
    /// Whether this is a reconnection after a loss.
    pub again: bool,
}

impl InternalEvent for BrokerConnection {
    fn emit(self) {
        let m = metrics();
        m.broker_connected.set(i64::from(self.up));
        if self.up && self.again {
            tracing::info!("connected to RabbitMQ again");
            m.broker_reconnects.inc();
        }
        if !self.up {
            m.broker_blocked.set(0);
        }
    }
}

/// RabbitMQ blocked or unblocked this connection's publishing.
#[derive(Debug)]
pub struct BrokerBlocked {
    pub blocked: bool,
}

impl InternalEvent for BrokerBlocked {
    fn emit(self) {
        if self.blocked {
            tracing::warn!("RabbitMQ blocks publishing (a resource alarm); settlements wait");
        } else {
            tracing::info!("RabbitMQ unblocked publishing");
        }
        metrics().broker_blocked.set(i64::from(self.blocked));
    }
}

/// A consumer started or stopped consuming.
#[derive(Debug)]
pub struct Consuming<'a> {
    pub running: bool,
    pub queue: &'a Arc<str>,
    pub lane: Lane,
}

impl InternalEvent for Consuming<'_> {
    fn emit(self) {
        let gauge = metrics().consumers_running.get_or_create(&QueueLabel {
            queue: self.queue.clone(),
            lane: self.lane.as_str(),
        });
        if self.running {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }
}

/// A shard beyond `MISIVA_SHARDS` still exists: it is consumed until it is
/// empty (`consumed`), or its consumer found it gone.
#[derive(Debug)]
pub struct RetiredShard<'a> {
    pub queue: &'a Arc<str>,
    pub shards: usize,
    pub consumed: bool,
}

impl InternalEvent for RetiredShard<'_> {
    fn emit(self) {
        if self.consumed {
            tracing::warn!(
                queue = %self.queue,
                shards = self.shards,
                "this shard is beyond MISIVA_SHARDS: it is out of the shard exchange, and \
                 consumed so that it empties; delete it once it is empty \
                 (docs/operations.md, \"Scaling past one queue\")"
            );
        } else {
            tracing::info!(queue = %self.queue, "the retired shard is gone; its consumer stops");
        }
        metrics()
            .shards_retired
            .get_or_create(&QueueLabel {
                queue: self.queue.clone(),
                lane: Lane::Normal.as_str(),
            })
            .set(i64::from(self.consumed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
