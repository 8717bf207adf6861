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

    /// Publishes `mandatory`, so that a message no queue takes is an error,
    /// not a silent loss, and waits for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(PublishError::Send)?
            .await
            .map_err(PublishError::Send)?;
        if confirm.is_nack() {
            return Err(PublishError::Nacked);
        }
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable(routing_key.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn close(&self) {
        let _ = self.channel.close(200, "bye".into()).await;
    }
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

    /// Publishes one job body, persistent, and waits for the confirm.
    pub async fn publish(&self, body: &[u8]) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.channel
            .publish("", &self.queue, body, properties)
            .await
    }

    /// Publishes many bodies pipelined (all sent, then all confirms awaited).
    pub async fn publish_many<'a>(
        &self,
        bodies: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, PublishError> {
        let mut pending = Vec::new();
        for body in bodies {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let confirm = self
                .channel
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await
                .map_err(PublishError::Send)?;
            pending.push(confirm);
        }
        let count = pending.len();
        for confirm in pending {
            let confirm = confirm.await.map_err(PublishError::Send)?;
            if confirm.is_nack() {
                return Err(PublishError::Nacked);
            }
            if confirm.take_message().is_some() {
                return Err(PublishError::Unroutable(self.queue.clone()));
            }
        }
        Ok(count)
    }

    pub async fn close(&self) {
        self.channel.close().await;
    }
}
