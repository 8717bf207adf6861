//! The metrics registry: every metric the worker exports, its name and help
//! written once, beside its field. The fields are private to `events`, so
//! that no code outside that module moves a metric without an event; the
//! notification path gets its per-app handles as [`AppMetrics`], whose
//! gauges move only by holding a [`GaugeUnit`].

use crate::outcome::{self, ApnsAnswer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

/// The label of a job, connection or request of an app that is not
/// configured here (a job naming an app we have no credentials for).
pub const UNKNOWN_APP: &str = "unknown";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppLabel {
    pub(super) app: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppReason {
    pub(super) app: Arc<str>,
    pub(super) reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppTier {
    pub(super) app: Arc<str>,
    pub(super) tier: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Answered {
    pub(super) app: Arc<str>,
    /// `token` (a device push) or `channel` (a broadcast).
    pub(super) target: &'static str,
    pub(super) status: &'static str,
    pub(super) reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppState {
    pub(super) app: Arc<str>,
    pub(super) state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppChange {
    pub(super) app: Arc<str>,
    /// `added`, `changed` or `removed`.
    pub(super) change: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppCause {
    pub(super) app: Arc<str>,
    pub(super) cause: &'static str,
}

/// A queue the worker consumes: the work queue, a shard, or a retired
/// shard. Its values come from the topology only (at most
/// [`crate::config::MAX_SHARDS`] names), never from a message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueLabel {
    pub(super) queue: Arc<str>,
    /// `normal` or `urgent` (CONTRACT §9).
    pub(super) lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AppLane {
    pub(super) app: Arc<str>,
    pub(super) lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ChildLabel {
    pub(super) child: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
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

/// Declares [`Metrics`]: each metric's field, type, constructor, exported
/// name and help in one row, so that adding a metric is one line and the
/// three can never disagree.
macro_rules! metrics {
    ($( $field:ident : $ty:ty = $init:expr => $name:literal, $help:literal; )*) => {
        /// Every metric the worker exports, registered once per process.
        #[derive(Debug)]
        pub struct Metrics {
            registry: Registry,
            /// Configured app names, interned: the only values the `app`
            /// label takes besides [`UNKNOWN_APP`].
            apps: RwLock<HashMap<String, Arc<str>>>,
            unknown: Arc<str>,
            pub(super) totals: Totals,
            $( pub(super) $field: $ty, )*
        }

        impl Metrics {
            fn new() -> Metrics {
                let mut registry = Registry::with_prefix("misiva");
                registry.register(
                    "build",
                    "Misiva's version; always 1",
                    Info::new(VersionLabel {
                        version: env!("CARGO_PKG_VERSION"),
                    }),
                );
                $(
                    let $field: $ty = $init;
                    registry.register($name, $help, $field.clone());
                )*
                Metrics {
                    registry,
                    apps: RwLock::new(HashMap::new()),
                    unknown: Arc::from(UNKNOWN_APP),
                    totals: Totals::default(),
                    $( $field, )*
                }
            }
        }
    };
}

metrics! {
    jobs_received: Family<QueueLabel, Counter> = Family::default()
        => "jobs_received", "Deliveries taken from the work queue";
    jobs_acked: Family<AppLane, Counter> = Family::default()
        => "jobs_acked", "Jobs settled and acked (delivered, fed back, retried or dead-lettered)";
    jobs_requeued: Counter = Counter::default()
        => "jobs_requeued", "Deliveries returned to the queue because their settlement could not be published";
    jobs_retried: Family<AppTier, Counter> = Family::default()
        => "jobs_retried", "Jobs republished to a delayed retry tier";
    jobs_dead_lettered: Family<AppReason, Counter> = Family::default()
        => "jobs_dead_lettered", "Dead letters published, by reason (poison and worker_panic included)";
    job_latency: Family<AppLane, Histogram, fn() -> Histogram> = Family::new_with_constructor(job_buckets)
        => "job_latency_seconds", "Time from the job's AMQP timestamp to its settlement (jobs with a timestamp only)";
    notifications: Family<Answered, Counter> = Family::default()
        => "notifications", "APNs answers, by HTTP status and reason (status \"transport\": no answer)";
    notifications_resent: Family<AppLabel, Counter> = Family::default()
        => "notifications_resent", "Requests APNs did not process (GOAWAY, refused stream) sent again on another connection";
    notifications_in_flight: Family<AppLabel, Gauge> = Family::default()
        => "notifications_in_flight", "Notifications holding a place among the app's requests in flight";
    jobs_waiting_for_room: Family<AppLabel, Gauge> = Family::default()
        => "jobs_waiting_for_room", "Many-token jobs decoded and waiting for room among the app's jobs in progress";
    request_duration: Family<AppLabel, Histogram, fn() -> Histogram> = Family::new_with_constructor(request_buckets)
        => "apns_request_duration_seconds", "APNs round trip of one notification, from the pool to the answer";
    feedback_events: Family<AppReason, Counter> = Family::default()
        => "feedback_events", "Token feedback events published, by APNs reason";
    app_changes: Family<AppChange, Counter> = Family::default()
        => "app_changes", "Apps of the apps directory added, changed (a new client for the next job) or removed";
    app_config_errors: Family<AppLabel, Counter> = Family::default()
        => "app_config_errors", "Files of the apps directory refused (the app keeps its last good configuration)";
    certificate_expiry: Family<AppLabel, Gauge> = Family::default()
        => "apns_certificate_expiry_timestamp_seconds", "The notAfter of the app's APNs client certificate, seconds since the epoch";
    connections: Family<AppState, Gauge> = Family::default()
        => "apns_connections", "APNs connection actors by state";
    connections_opened: Family<AppLabel, Counter> = Family::default()
        => "apns_connections_opened", "APNs HTTP/2 connections established";
    connections_closed: Family<AppCause, Counter> = Family::default()
        => "apns_connections_closed", "APNs HTTP/2 connections ended, by cause";
    streams_in_use: Family<AppLabel, Gauge> = Family::default()
        => "apns_streams_in_use", "HTTP/2 streams open on the app's APNs connections";
    token_renewals: Family<AppCause, Counter> = Family::default()
        => "provider_token_renewals", "APNs provider tokens signed, by cause (scheduled or rejected)";
    breaker_open: Family<AppLabel, Gauge> = Family::default()
        => "breaker_open", "1 while the app's circuit breaker holds its requests";
    breaker_opened: Family<AppLabel, Counter> = Family::default()
        => "breaker_opened", "Times the app's circuit breaker opened";
    restarts: Family<ChildLabel, Counter> = Family::default()
        => "supervisor_restarts", "Children restarted by the supervision tree";
    broker_connected: Gauge = Gauge::default()
        => "broker_connected", "1 while the RabbitMQ connection is up";
    broker_blocked: Gauge = Gauge::default()
        => "broker_blocked", "1 while RabbitMQ blocks publishing (a memory or disk alarm)";
    broker_reconnects: Counter = Counter::default()
        => "broker_reconnects", "Times the RabbitMQ connection was made again after it was lost";
    shards_retired: Family<QueueLabel, Gauge> = Family::default()
        => "shards_retired", "1 for a shard beyond MISIVA_SHARDS that still exists and is consumed so that it empties";
    consumers_running: Family<QueueLabel, Gauge> = Family::default()
        => "consumers_running", "Consumer actors currently consuming";
    settlement_retries: Counter = Counter::default()
        => "settlement_retries", "Settlement publishes that failed and were tried again";
}

/// Totals across every app and lane, for the summary line the worker logs
/// when it stops (the labelled families cannot be summed back cheaply).
/// Moved only by the events that move the matching metrics.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub(super) delivered: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) feedback: AtomicU64,
}

impl Totals {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Metrics {
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

    /// The app's connection actors with a connection ready now.
    pub fn connections_ready(&self, app: &str) -> i64 {
        self.connections
            .get_or_create(&AppState {
                app: self.app(app),
                state: "ready",
            })
            .get()
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
pub(super) fn status_label(answer: &ApnsAnswer) -> &'static str {
    match answer {
        ApnsAnswer::Transport(_) => "transport",
        ApnsAnswer::Status { code, .. } => outcome::status_label(*code),
    }
}

/// A gauge that code outside `events` moves only by holding a unit of it:
/// the unit counts down when it is dropped, so that a caller giving up (a
/// stopping consumer drops its deliveries) never leaves the gauge drifting.
#[derive(Debug, Clone)]
pub struct UnitGauge(Gauge);

impl UnitGauge {
    /// One unit for as long as the borrow lives (a stream, a wait).
    pub fn hold(&self) -> GaugeUnit<'_> {
        self.0.inc();
        GaugeUnit(&self.0)
    }

    /// One unit owned by a value that outlives the borrow (a place among the
    /// requests in flight, handed from the reservation to the request).
    pub fn hold_owned(&self) -> OwnedGaugeUnit {
        self.0.inc();
        OwnedGaugeUnit(self.0.clone())
    }
}

/// One unit on a [`UnitGauge`], counted down on drop.
#[derive(Debug)]
pub struct GaugeUnit<'a>(&'a Gauge);

impl Drop for GaugeUnit<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One unit on a [`UnitGauge`] that owns its handle, counted down on drop.
#[derive(Debug)]
pub struct OwnedGaugeUnit(Gauge);

impl Drop for OwnedGaugeUnit {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Per-app handles to the metrics on the notification path, resolved once per
/// app so that a notification pays no label lookup for them.
#[derive(Debug, Clone)]
pub struct AppMetrics {
    pub(super) app: Arc<str>,
    pub(super) request_duration: Histogram,
    pub(super) resent: Counter,
    in_flight: UnitGauge,
    waiting_for_room: UnitGauge,
    streams: UnitGauge,
}

impl AppMetrics {
    pub fn new(app: &str) -> AppMetrics {
        let m = metrics();
        m.set_apps([app]);
        let label = AppLabel { app: m.app(app) };
        AppMetrics {
            request_duration: m.request_duration.get_or_create_owned(&label),
            in_flight: UnitGauge(m.notifications_in_flight.get_or_create_owned(&label)),
            waiting_for_room: UnitGauge(m.jobs_waiting_for_room.get_or_create_owned(&label)),
            streams: UnitGauge(m.streams_in_use.get_or_create_owned(&label)),
            resent: m.notifications_resent.get_or_create_owned(&label),
            app: label.app,
        }
    }

    /// The app's label: its configured name.
    pub fn app(&self) -> &Arc<str> {
        &self.app
    }

    /// Notifications holding a place among the app's requests in flight.
    pub fn in_flight(&self) -> &UnitGauge {
        &self.in_flight
    }

    /// Many-token jobs waiting for room among the app's jobs in progress.
    pub fn waiting_for_room(&self) -> &UnitGauge {
        &self.waiting_for_room
    }

    /// HTTP/2 streams open on the app's connections.
    pub fn streams(&self) -> &UnitGauge {
        &self.streams
    }
}
