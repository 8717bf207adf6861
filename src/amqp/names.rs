//! Pure: the names of CONTRACT §1's queues and exchanges for one
//! configuration, and where a job or a retry is published. Declaring them
//! is `topology`'s.

use super::wire::short;
use crate::lane::Lane;
use lapin::types::ShortString;

#[derive(Debug, Clone)]
pub struct Topology {
    /// The work queue, which is also shard 0.
    pub queue: String,
    /// The configured shards (CONTRACT §6), shard 0 first; only the work
    /// queue when sharding is off.
    pub shards: Vec<String>,
    /// The consistent-hash exchange in front of the shards, when there are
    /// two or more.
    pub shard_exchange: Option<String>,
    /// The retry tiers, shortest delay first: (queue name, delay).
    pub retry_queues: Vec<(String, std::time::Duration)>,
    /// With shards, the topic exchange in front of the retry tiers: a retry
    /// is published with a routing key of its own (the tier's name, a dot,
    /// the job id), which it keeps when its tier hands it back to the shard
    /// exchange, so that retries spread over the shards as jobs do.
    pub retry_exchange: Option<String>,
    /// The urgent lane (CONTRACT §9): one queue, shards or not.
    pub urgent_queue: String,
    /// Its retry tiers, which send jobs back to it: (queue name, delay).
    pub urgent_retry_queues: Vec<(String, std::time::Duration)>,
    pub dead_letter_queue: String,
    pub feedback_exchange: String,
    pub feedback_queue: String,
}

/// The name of the shard exchange for a work queue.
pub fn shard_exchange_name(queue: &str) -> String {
    format!("{queue}.shards")
}

/// The name of shard `index` (shard 0 is the work queue itself).
pub fn shard_name(queue: &str, index: usize) -> String {
    if index == 0 {
        queue.to_owned()
    } else {
        format!("{queue}.{index}")
    }
}

impl Topology {
    /// Where a job is published (`misiva publish`, `send`, `dlq replay`):
    /// the urgent lane's queue; or the shard exchange with `key` as its
    /// routing key when there are shards; else the work queue, through the
    /// default exchange.
    pub(crate) fn job_destination(&self, lane: Lane, key: &str) -> (ShortString, ShortString) {
        match (lane, &self.shard_exchange) {
            (Lane::Urgent, _) => (ShortString::default(), short(&self.urgent_queue)),
            (Lane::Normal, Some(exchange)) => (short(exchange), short(key)),
            (Lane::Normal, None) => (ShortString::default(), short(&self.queue)),
        }
    }

    /// Where a retry for tier `tier` of `lane` is published, `key` spreading
    /// it over the shards when there are some.
    pub(crate) fn retry_destination(
        &self,
        lane: Lane,
        tier: usize,
        key: &str,
    ) -> (ShortString, ShortString) {
        let tiers = match lane {
            Lane::Normal => &self.retry_queues,
            Lane::Urgent => &self.urgent_retry_queues,
        };
        let tier = tier.min(tiers.len().saturating_sub(1));
        let Some((queue, _)) = tiers.get(tier) else {
            // No tiers configured: straight back to the lane.
            return self.job_destination(lane, key);
        };
        match (lane, &self.retry_exchange) {
            (Lane::Normal, Some(exchange)) => (short(exchange), short(&format!("{queue}.{key}"))),
            _ => (ShortString::default(), short(queue)),
        }
    }
}
