//! Publishing with publisher confirms: a publish counts only once the broker
//! has confirmed it, so the original delivery can be acked without risk.

use super::wire::Outgoing;
use super::wire::short;
use super::{AmqpError, Broker, Topology};
use crate::lane::Lane;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex as AsyncMutex;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish failed: {0}")]
    Send(lapin::Error),
    #[error("the broker refused the publish (nack)")]
    Nacked,
    #[error("the message was unroutable: no queue is bound for {0:?}")]
    Unroutable(String),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// A channel in confirm mode.
#[derive(Clone)]
pub(crate) struct ConfirmChannel {
    channel: lapin::Channel,
}

impl std::fmt::Debug for ConfirmChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmChannel")
            .field("id", &self.channel.id())
            .finish()
    }
}

impl ConfirmChannel {
    pub(crate) async fn open(broker: &Broker) -> Result<Self, AmqpError> {
        let channel = broker.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        Ok(ConfirmChannel { channel })
    }

    /// Publishes every message `mandatory` (a message no queue takes is an
    /// error, not a silent loss), then waits for all their confirms: one round
    /// trip for a whole settlement instead of one per message.
    pub(crate) async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let confirm = self
                .channel
                .basic_publish(
                    m.exchange.clone(),
                    m.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.body,
                    m.properties.clone(),
                )
                .await
                .map_err(PublishError::Send)?;
            pending.push((confirm, &m.routing_key));
        }
        for (confirm, routing_key) in pending {
            let confirm = confirm.await.map_err(PublishError::Send)?;
            if confirm.is_nack() {
                return Err(PublishError::Nacked);
            }
            if confirm.take_message().is_some() {
                return Err(PublishError::Unroutable(routing_key.to_string()));
            }
        }
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    pub(crate) async fn close(&self) {
        let _ = self.channel.close(200, short("bye")).await;
    }
}

/// The confirm channel a consumer settles on, reopened when the broker closed
/// it (a publish to a deleted exchange, for one, closes the channel). Deliveries
/// settle concurrently on one channel; only a reopening is serialised.
pub(crate) struct SettlementChannel {
    broker: Broker,
    current: std::sync::Mutex<ConfirmChannel>,
    reopening: AsyncMutex<()>,
}

impl std::fmt::Debug for SettlementChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlementChannel").finish_non_exhaustive()
    }
}

impl SettlementChannel {
    pub(crate) async fn open(broker: &Broker) -> Result<Self, AmqpError> {
        Ok(SettlementChannel {
            broker: broker.clone(),
            current: std::sync::Mutex::new(ConfirmChannel::open(broker).await?),
            reopening: AsyncMutex::new(()),
        })
    }

    /// Whether its connection is still up.
    pub(crate) fn is_connected(&self) -> bool {
        self.broker.is_connected()
    }

    /// The frame size its connection negotiated (0 = no limit): a
    /// republish's header table must fit in one frame.
    pub(crate) fn frame_max(&self) -> u32 {
        self.broker.frame_max()
    }

    fn channel(&self) -> ConfirmChannel {
        // Held only to clone a handle: a panic elsewhere cannot leave it half-written.
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes and confirms `messages`. After a failure that closed the
    /// channel, a fresh one is opened for the next attempt; an error from
    /// that reopening means the connection itself is gone.
    pub(crate) async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), SettleError> {
        let channel = self.channel();
        let Err(error) = channel.publish_all(messages).await else {
            return Ok(());
        };
        if !channel.is_open() {
            let _one_at_a_time = self.reopening.lock().await;
            if !self.channel().is_open() {
                let fresh = ConfirmChannel::open(&self.broker)
                    .await
                    .map_err(SettleError::Reopen)?;
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                crate::events::emit(crate::events::SettlementChannelReopened);
            }
        }
        Err(SettleError::Publish(error))
    }

    pub(crate) async fn close(&self) {
        self.channel().close().await;
    }
}

/// Why a settlement's publishes did not go through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettleError {
    /// Worth another try after a pause.
    #[error(transparent)]
    Publish(PublishError),
    /// The channel could not be reopened: the consumer must end.
    #[error("cannot reopen the settlement channel: {0}")]
    Reopen(AmqpError),
}

/// Publishes jobs to the work queue with confirms: `misiva publish`, the demo,
/// and any Rust program that wants to enqueue pushes. With shards it
/// publishes through the shard exchange (CONTRACT §6).
#[derive(Debug, Clone)]
pub struct JobPublisher {
    channel: ConfirmChannel,
    topology: Arc<Topology>,
    lane: Lane,
    /// Routing keys for jobs published without an id of their own: a
    /// counter from a random start, so that the shard exchange spreads them
    /// evenly and two publishers do not follow the same sequence.
    next_key: Arc<AtomicU64>,
}

impl JobPublisher {
    /// Publishes to `lane`: the urgent lane's queue, or the work queue (its
    /// shard exchange when there are shards).
    pub async fn open(broker: &Broker, topology: &Topology, lane: Lane) -> Result<Self, AmqpError> {
        Ok(JobPublisher {
            channel: ConfirmChannel::open(broker).await?,
            topology: Arc::new(topology.clone()),
            lane,
            next_key: Arc::new(AtomicU64::new(u64::from(
                uuid::Uuid::new_v4().as_fields().0,
            ))),
        })
    }

    /// Publishes job bodies, persistent, pipelined: all sent, then all
    /// confirms awaited. Returns how many were published.
    pub async fn publish_many<'a>(
        &self,
        bodies: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, PublishError> {
        let messages: Vec<Outgoing> = bodies
            .into_iter()
            .map(|body| {
                let key = self.next_key.fetch_add(1, Ordering::Relaxed).to_string();
                let (exchange, routing_key) = self.topology.job_destination(self.lane, &key);
                Outgoing {
                    exchange,
                    routing_key,
                    body: body.to_vec(),
                    properties: BasicProperties::default()
                        .with_content_type(short("application/json"))
                        .with_delivery_mode(2),
                }
            })
            .collect();
        let count = messages.len();
        self.channel.publish_all(&messages).await?;
        Ok(count)
    }

    /// Publishes one job with `message_id` (the job id when the body names
    /// none), persistent, and waits for its confirm.
    pub async fn publish_one(&self, body: &[u8], message_id: &str) -> Result<(), PublishError> {
        let (exchange, routing_key) = self.topology.job_destination(self.lane, message_id);
        let message = Outgoing {
            exchange,
            routing_key,
            body: body.to_vec(),
            properties: BasicProperties::default()
                .with_content_type(short("application/json"))
                .with_delivery_mode(2)
                .with_message_id(short(message_id)),
        };
        self.channel.publish_all(&[message]).await
    }

    pub async fn close(&self) {
        self.channel.close().await;
    }
}
