//! Events of the broker connection, the consumers and the supervision tree.

use super::InternalEvent;
use super::registry::{ChildLabel, QueueLabel, metrics};
use crate::lane::Lane;
use std::sync::Arc;

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

/// The RabbitMQ connection came up, came up again after a loss, or went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerLink {
    Connected,
    Reconnected,
    Lost,
}

impl InternalEvent for BrokerLink {
    fn emit(self) {
        let m = metrics();
        match self {
            BrokerLink::Connected => {
                m.broker_connected.set(1);
            }
            BrokerLink::Reconnected => {
                tracing::info!("connected to RabbitMQ again");
                m.broker_connected.set(1);
                m.broker_reconnects.inc();
            }
            BrokerLink::Lost => {
                m.broker_connected.set(0);
                m.broker_blocked.set(0);
            }
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

/// RabbitMQ could not be reached yet; the worker tries again in a second (a
/// broker that starts a little after the worker is normal).
#[derive(Debug)]
pub struct BrokerUnreachable<'a> {
    pub attempt: u32,
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for BrokerUnreachable<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, attempt = self.attempt, "RabbitMQ not reachable yet; retrying");
    }
}

/// Closing the RabbitMQ connection failed (it was closing anyway).
#[derive(Debug)]
pub struct BrokerCloseFailed<'a> {
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for BrokerCloseFailed<'_> {
    fn emit(self) {
        tracing::debug!(error = %self.error, "closing the RabbitMQ connection");
    }
}

/// The channel that publishes settlements closed and was opened again.
#[derive(Debug)]
pub struct SettlementChannelReopened;

impl InternalEvent for SettlementChannelReopened {
    fn emit(self) {
        tracing::info!("settlement channel reopened");
    }
}

/// A consumer actor began consuming its queue.
#[derive(Debug)]
pub struct ConsumerStarted<'a> {
    pub consumer: usize,
    pub queue: &'a str,
    pub prefetch: u16,
}

impl InternalEvent for ConsumerStarted<'_> {
    fn emit(self) {
        tracing::info!(consumer = self.consumer, queue = %self.queue, prefetch = self.prefetch, "consuming");
    }
}

/// A stopping consumer's `basic.cancel` failed; the channel's close ends
/// the consumption anyway.
#[derive(Debug)]
pub struct CancelFailed<'a> {
    pub consumer: usize,
    pub error: &'a dyn super::Cause,
}

impl InternalEvent for CancelFailed<'_> {
    fn emit(self) {
        tracing::warn!(consumer = self.consumer, error = %self.error, "basic.cancel failed");
    }
}

/// A stopping consumer's grace ran out with deliveries unsettled; the
/// broker returns them to the queue.
#[derive(Debug)]
pub struct GraceOver {
    pub consumer: usize,
    pub left: usize,
}

impl InternalEvent for GraceOver {
    fn emit(self) {
        tracing::warn!(
            consumer = self.consumer,
            left = self.left,
            "grace period over; unsettled deliveries return to the queue"
        );
    }
}

/// `misiva topology` found a shard beyond `MISIVA_SHARDS`.
#[derive(Debug)]
pub struct RetiredShardFound<'a> {
    pub queue: &'a str,
    pub shards: usize,
}

impl InternalEvent for RetiredShardFound<'_> {
    fn emit(self) {
        tracing::warn!(
            queue = %self.queue,
            shards = self.shards,
            "this shard is beyond MISIVA_SHARDS: it is out of the shard exchange; workers consume it until it is empty"
        );
    }
}

/// A queue declared by an earlier version lacks arguments this version
/// declares; it keeps working, and the operator is told how to migrate it.
#[derive(Debug)]
pub enum EarlierQueue<'a> {
    /// A retry tier that is a classic queue.
    ClassicRetryTier { queue: &'a str },
    /// The work queue without broker-side dead-lettering.
    WorkQueueWithoutNet { queue: &'a str, missing: &'a str },
}

impl InternalEvent for EarlierQueue<'_> {
    fn emit(self) {
        match self {
            EarlierQueue::ClassicRetryTier { queue } => tracing::warn!(
                %queue,
                "this retry tier is a classic queue from an earlier version: it lives on one node and \
                 moves jobs back to the work queue at most once. Migrate it when it is empty \
                 (docs/operations.md, \"Migrating the retry tiers\")"
            ),
            EarlierQueue::WorkQueueWithoutNet { queue, missing } => tracing::warn!(
                %queue,
                %missing,
                "the work queue was declared by an earlier version without broker-side dead-lettering; \
                 a message that crashes workers before they can park it may be dropped by RabbitMQ 4 \
                 after 20 deliveries. Add the arguments with a policy (see docs/operations.md, \
                 \"Migrating the work queue\")"
            ),
        }
    }
}
