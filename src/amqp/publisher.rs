//! Publishing with publisher confirms: a publish counts only once the broker
//! has confirmed it, so the original delivery can be acked without risk.

use super::{AmqpError, Broker};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

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
    pub(crate) async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let confirm = self
                .channel
                .basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.body,
                    m.properties,
                )
                .await
                .map_err(PublishError::Send)?;
            pending.push((confirm, m.routing_key));
        }
        for (confirm, routing_key) in pending {
            let confirm = confirm.await.map_err(PublishError::Send)?;
            if confirm.is_nack() {
                return Err(PublishError::Nacked);
            }
            if confirm.take_message().is_some() {
                return Err(PublishError::Unroutable(routing_key));
            }
        }
        Ok(())
    }

    pub(crate) async fn close(&self) {
        let _ = self.channel.close(200, "bye".into()).await;
    }
}

/// One message of a settlement.
pub(crate) struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

pub(crate) fn header_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

pub(crate) fn headers(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(ShortString::from(k), v);
    }
    table
}

/// Publishes jobs to the work queue with confirms: `misiva publish`, the demo,
/// and any Rust program that wants to enqueue pushes.
#[derive(Debug, Clone)]
pub struct JobPublisher {
    channel: ConfirmChannel,
    queue: String,
}

impl JobPublisher {
    pub async fn open(broker: &Broker, queue: &str) -> Result<Self, AmqpError> {
        Ok(JobPublisher {
            channel: ConfirmChannel::open(broker).await?,
            queue: queue.to_owned(),
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
            .map(|body| Outgoing {
                exchange: String::new(),
                routing_key: self.queue.clone(),
                body: body.to_vec(),
                properties: BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            })
            .collect();
        let count = messages.len();
        self.channel.publish_all(messages).await?;
        Ok(count)
    }

    pub async fn close(&self) {
        self.channel.close().await;
    }
}
