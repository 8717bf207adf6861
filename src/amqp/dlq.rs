//! The dead-letter queue, read without losing, duplicating or reordering it.
//!
//! How a read works: one consumer takes the messages that were ready when it
//! began (at most the scan limit) without acking any, then cancels. Those it
//! removes (a purge, a confirmed replay) it acks one by one; closing the
//! channel returns every other one to the queue, where a quorum queue puts
//! them back ahead of anything newer, in their order. What a read costs: each
//! message read counts one delivery (`x-delivery-count`); see
//! `docs/operations.md` for what that means on RabbitMQ 4.

use super::publisher::{ConfirmChannel, PublishError};
use super::wire::{self, short};
use super::{AmqpError, Broker};
use crate::dlq::{HeaderValue, RawLetter};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

/// How long a read waits for the next message before it counts the queue
/// as read: the broker sends a snapshot's messages back to back.
const QUIET: Duration = Duration::from_secs(2);

/// A dead letter held by a read: unacked until removed or released.
pub struct Held {
    delivery: Delivery,
    pub raw: RawLetter,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("tag", &self.delivery.delivery_tag)
            .finish_non_exhaustive()
    }
}

/// A read of the dead-letter queue in progress.
pub struct DeadLetterQueue {
    broker: Broker,
    channel: lapin::Channel,
    queue: String,
    tag: String,
    republish: Option<ConfirmChannel>,
    frame_max: u32,
}

impl std::fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl DeadLetterQueue {
    pub async fn open(broker: &Broker, queue: &str) -> Result<Self, AmqpError> {
        Ok(DeadLetterQueue {
            broker: broker.clone(),
            channel: broker.channel().await?,
            queue: queue.to_owned(),
            tag: format!("misiva-dlq-{}", std::process::id()),
            republish: None,
            frame_max: broker.frame_max(),
        })
    }

    /// Messages ready in the queue now, asked of the queue itself.
    pub async fn ready(&self) -> Result<u32, AmqpError> {
        let declared = self
            .channel
            .queue_declare(
                short(&self.queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::Channel)?;
        Ok(declared.message_count())
    }

    /// Takes the messages ready now, oldest first, at most `limit`, and holds
    /// them (unacked).
    pub async fn read(&mut self, limit: u16) -> Result<Vec<Held>, AmqpError> {
        let ready = self.ready().await?;
        let wanted = usize::try_from(ready)
            .unwrap_or(usize::MAX)
            .min(usize::from(limit));
        if wanted == 0 {
            return Ok(Vec::new());
        }
        // The prefetch is the snapshot: the broker sends no more than this.
        let prefetch = u16::try_from(wanted).unwrap_or(u16::MAX);
        self.channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        let mut consumer = self
            .channel
            .basic_consume(
                short(&self.queue),
                short(&self.tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::Channel)?;
        let mut held = Vec::with_capacity(wanted);
        while held.len() < wanted {
            match tokio::time::timeout(QUIET, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    let raw = raw_letter(&delivery);
                    held.push(Held { delivery, raw });
                }
                Ok(Some(Err(e))) => return Err(AmqpError::Channel(e)),
                // Another reader holds some, or they were removed meanwhile.
                Ok(None) | Err(_) => break,
            }
        }
        self.channel
            .basic_cancel(short(&self.tag), BasicCancelOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        Ok(held)
    }

    /// Removes one held dead letter for good.
    pub async fn remove(&self, held: &Held) -> Result<(), AmqpError> {
        held.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        Ok(())
    }

    /// Publishes a copy of a held dead letter to `work_queue` (attempts reset,
    /// `x-misiva-replayed` counted up), waits for the broker's confirm, and
    /// only then removes the dead letter. Killed in between, the dead letter
    /// stays and the job was published: at most this one is duplicated.
    pub async fn replay(&mut self, held: &Held, work_queue: &str) -> Result<(), PublishError> {
        if self.republish.is_none() {
            self.republish = Some(ConfirmChannel::open(&self.broker).await?);
        }
        let copy = wire::replayed(
            &held.delivery.properties,
            &held.delivery.data,
            work_queue,
            self.frame_max,
        );
        if let Some(channel) = &self.republish {
            channel.publish_all(std::slice::from_ref(&copy)).await?;
        }
        self.remove(held).await?;
        Ok(())
    }

    /// Publishes a held dead letter again at the back of its own queue
    /// (confirmed), then removes the held copy: its delivery count starts
    /// over. RabbitMQ 4.0 to 4.2 drop a quorum queue's message past its
    /// delivery limit (20 by default) when the queue has no dead-letter
    /// exchange, and every read counts as a delivery; measured on 4.0.5, a
    /// dead letter read 21 times was gone. Interrupted between the two
    /// steps, the letter is there twice, never lost.
    pub async fn refresh(&mut self, held: &Held) -> Result<(), PublishError> {
        if self.republish.is_none() {
            self.republish = Some(ConfirmChannel::open(&self.broker).await?);
        }
        let copy = wire::refreshed(
            &held.delivery.properties,
            &held.delivery.data,
            &self.queue,
            self.frame_max,
        );
        if let Some(channel) = &self.republish {
            channel.publish_all(std::slice::from_ref(&copy)).await?;
        }
        self.remove(held).await?;
        Ok(())
    }

    /// Ends the read: every held dead letter not removed returns to the queue.
    pub async fn release(self) {
        if let Some(channel) = self.republish {
            channel.close().await;
        }
        let _ = self.channel.close(200, short("read done")).await;
    }
}

fn raw_letter(delivery: &Delivery) -> RawLetter {
    let p = &delivery.properties;
    let headers = p
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(k, v)| header_value(v).map(|v| (k.to_string(), v)))
                .collect()
        })
        .unwrap_or_default();
    RawLetter {
        message_id: p.message_id().as_ref().map(|m| m.to_string()),
        headers,
        body: delivery.data.clone(),
    }
}

fn header_value(value: &AMQPValue) -> Option<HeaderValue> {
    Some(match value {
        AMQPValue::LongString(s) => {
            HeaderValue::Text(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => HeaderValue::Text(s.to_string()),
        AMQPValue::ShortShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
        _ => return None,
    })
}
