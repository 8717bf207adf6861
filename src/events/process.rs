//! Events of the process: start, stop, the admin endpoint, the publish tool.

use super::InternalEvent;
use super::registry::{Totals, metrics};
use std::net::SocketAddr;

/// The supervision tree is running.
#[derive(Debug)]
pub struct WorkerRunning<'a> {
    pub consumers: usize,
    pub shards: usize,
    pub queue: &'a str,
}

impl InternalEvent for WorkerRunning<'_> {
    fn emit(self) {
        tracing::info!(
            consumers = self.consumers,
            shards = self.shards,
            queue = %self.queue,
            "worker running"
        );
    }
}

/// A signal asked the worker to stop.
#[derive(Debug)]
pub struct Stopping<'a> {
    pub signal: &'a str,
}

impl InternalEvent for Stopping<'_> {
    fn emit(self) {
        tracing::info!(signal = %self.signal, "stopping: no new deliveries, settling those in flight");
    }
}

/// The worker stopped: its summary line, from the totals the job and APNs
/// events kept.
#[derive(Debug)]
pub struct WorkerStopped;

impl InternalEvent for WorkerStopped {
    fn emit(self) {
        let t = &metrics().totals;
        tracing::info!(
            delivered = Totals::read(&t.delivered),
            acked = Totals::read(&t.acked),
            retried = Totals::read(&t.retried),
            dead_lettered = Totals::read(&t.dead_lettered),
            feedback = Totals::read(&t.feedback),
            "worker stopped"
        );
    }
}

/// The worker ended with an error (its exit code follows).
#[derive(Debug)]
pub struct WorkerFailed<'a> {
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for WorkerFailed<'_> {
    fn emit(self) {
        tracing::error!(error = %self.error, "misiva stopped with an error");
    }
}

/// The admin endpoint (health, readiness, metrics) is listening.
#[derive(Debug)]
pub struct AdminListening {
    pub addr: SocketAddr,
}

impl InternalEvent for AdminListening {
    fn emit(self) {
        tracing::info!(addr = %self.addr, "admin endpoint listening");
    }
}

/// The admin endpoint could not accept a connection (out of file
/// descriptors, most often); it pauses before the next.
#[derive(Debug)]
pub struct AdminAcceptFailed<'a> {
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for AdminAcceptFailed<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "admin endpoint: accept failed; pausing");
    }
}

/// `misiva publish` published and confirmed `count` jobs.
#[derive(Debug)]
pub struct JobsPublished {
    pub count: usize,
}

impl InternalEvent for JobsPublished {
    fn emit(self) {
        tracing::info!(count = self.count, "jobs published");
    }
}
