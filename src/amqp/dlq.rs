//! The dead-letter queue, read without losing, duplicating or reordering it,
//! and changed only in ways the broker confirms.
//!
//! How a read works: consumers take the messages that were ready when it
//! began (at most the scan limit), oldest first, without acking any, in
//! chunks of [`CHUNK`] per channel, one channel after the other. Those a
//! command removes (a purge, a confirmed replay) it acks one by one; closing
//! the channels returns every other one to the queue, where a quorum queue
//! puts them back ahead of anything newer. What a read costs: each message
//! read counts one delivery (`x-delivery-count`); see `docs/operations.md`
//! for what that means on RabbitMQ 4.
//!
//! Why chunks: a quorum queue's channel sends at most 32 settlements to the
//! queue before it has seen them applied (`quorum_commands_soft_limit`); past
//! that it keeps further acks in the channel process and sends them as the
//! queue catches up. A channel closed meanwhile drops the kept acks, and the
//! letters they removed come back. On a loaded broker, a purge of 250 letters
//! on one channel removed 33 and said 250. A channel that holds at most
//! [`CHUNK`] letters never has more acks than that to send, so every ack it
//! takes leaves the channel before its close, and the queue applies it
//! before the close returns the rest.
//!
//! How a release is confirmed: the channels close in read order, each one's
//! returned letters seen back in the queue before the next closes (so they
//! keep their order); then, once no consumer of the read is left, the
//! queue's depth must be what it was minus what was removed plus what was
//! published into it. More than that is reported as unconfirmed, never as
//! done.

use super::publisher::{ConfirmChannel, PublishError};
use super::wire::Outgoing;
use super::wire::{self, short};
use super::{AmqpError, Broker, Topology};
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

/// Letters one channel of a read holds at most: half the broker's default
/// limit of 32 settlements in flight per channel and queue, so that a node
/// configured with a lower `quorum_commands_soft_limit` is covered too.
pub const CHUNK: u16 = 16;

/// Channels of the connection a read leaves to others (the control channel,
/// the republishing one).
const SPARE_CHANNELS: u16 = 8;

/// How long a release waits, in all, for the broker to settle and return
/// the letters of a read before it reports them unconfirmed.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// How often a release asks the queue whether it is there yet.
const POLL: Duration = Duration::from_millis(20);

/// A dead letter held by a read: unacked until removed or released.
pub struct Held {
    delivery: Delivery,
    /// Which channel of the read holds it.
    chunk: usize,
    pub raw: RawLetter,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("chunk", &self.chunk)
            .field("tag", &self.delivery.delivery_tag)
            .finish_non_exhaustive()
    }
}

/// One channel of a read and what became of its letters.
struct Chunk {
    channel: lapin::Channel,
    held: u32,
    removed: u32,
}

/// What the queue said of itself (a passive declare).
#[derive(Debug, Clone, Copy)]
struct Depth {
    ready: u32,
    consumers: u32,
}

/// What a release could confirm: of the letters the command removed, how
/// many the queue's depth does not account for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Acks sent for removals (purged, replayed or refreshed letters).
    pub removed: u32,
    /// Of those, how many the broker's count does not confirm.
    pub unconfirmed: u32,
}

/// A read of the dead-letter queue in progress.
pub struct DeadLetterQueue {
    broker: Broker,
    /// Declares and counts; the letters are held on the chunks' channels.
    control: lapin::Channel,
    queue: String,
    tag: String,
    republish: Option<ConfirmChannel>,
    frame_max: u32,
    chunks: Vec<Chunk>,
    /// The queue before the read, when one was made.
    before: Option<Depth>,
    /// Copies confirmed into this very queue (refreshed letters).
    published_here: u32,
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
            control: broker.channel().await?,
            queue: queue.to_owned(),
            tag: format!("misiva-dlq-{}", std::process::id()),
            republish: None,
            frame_max: broker.frame_max(),
            chunks: Vec::new(),
            before: None,
            published_here: 0,
        })
    }

    /// Takes the messages ready now, oldest first, at most `limit`, and holds
    /// them (unacked), [`CHUNK`] to a channel.
    pub async fn read(&mut self, limit: u16) -> Result<Vec<Held>, AmqpError> {
        let before = depth(&self.control, &self.queue).await?;
        self.before = Some(before);
        let wanted = usize::try_from(before.ready)
            .unwrap_or(usize::MAX)
            .min(usize::from(limit));
        let chunks = wanted.div_ceil(usize::from(CHUNK));
        let channels = usize::from(self.broker.channel_max().saturating_sub(SPARE_CHANNELS));
        if chunks > channels {
            return Err(AmqpError::TooManyChannels {
                letters: wanted,
                chunk: CHUNK,
                channels,
            });
        }
        let mut held = Vec::with_capacity(wanted);
        while held.len() < wanted {
            let take = (wanted - held.len()).min(usize::from(CHUNK));
            let index = self.chunks.len();
            let channel = self.broker.channel().await?;
            // The chunk's own record exists before anything can fail, so
            // that a release closes its channel whatever happens next.
            self.chunks.push(Chunk {
                channel: channel.clone(),
                held: 0,
                removed: 0,
            });
            // The prefetch is the chunk: the broker sends no more than this.
            channel
                .basic_qos(
                    u16::try_from(take).unwrap_or(CHUNK),
                    BasicQosOptions::default(),
                )
                .await
                .map_err(AmqpError::Channel)?;
            let tag = format!("{}-{index}", self.tag);
            let mut consumer = channel
                .basic_consume(
                    short(&self.queue),
                    short(&tag),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(AmqpError::Channel)?;
            let mut got = 0;
            while got < take {
                match tokio::time::timeout(QUIET, consumer.next()).await {
                    Ok(Some(Ok(delivery))) => {
                        let raw = raw_letter(&delivery);
                        held.push(Held {
                            delivery,
                            chunk: index,
                            raw,
                        });
                        got += 1;
                    }
                    Ok(Some(Err(e))) => return Err(AmqpError::Channel(e)),
                    // Another reader holds some, or they were removed meanwhile.
                    Ok(None) | Err(_) => break,
                }
            }
            channel
                .basic_cancel(short(&tag), BasicCancelOptions::default())
                .await
                .map_err(AmqpError::Channel)?;
            if let Some(chunk) = self.chunks.last_mut() {
                chunk.held = u32::try_from(got).unwrap_or(u32::MAX);
            }
            if got < take {
                break;
            }
        }
        Ok(held)
    }

    /// Removes one held dead letter for good (its ack is sent; the release
    /// confirms it).
    pub async fn remove(&mut self, held: &Held) -> Result<(), AmqpError> {
        let sent = held
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        // lapin answers false, sending nothing, when the delivery was
        // settled already or its channel is gone.
        if !sent {
            return Err(AmqpError::NotAcked);
        }
        if let Some(chunk) = self.chunks.get_mut(held.chunk) {
            chunk.removed += 1;
        }
        Ok(())
    }

    /// Publishes a copy of a held dead letter to the work queue, through the
    /// shard exchange when there are shards (attempts reset,
    /// `x-misiva-replayed` counted up), waits for the broker's confirm, and
    /// only then removes the dead letter. Killed in between, the dead letter
    /// stays and the job was published: at most this one is duplicated.
    pub async fn replay(&mut self, held: &Held, topology: &Topology) -> Result<(), PublishError> {
        let copy = wire::replayed(
            &held.delivery.properties,
            &held.delivery.data,
            topology,
            self.frame_max,
        );
        self.republish(copy).await?;
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
        let copy = wire::refreshed(
            &held.delivery.properties,
            &held.delivery.data,
            &self.queue,
            self.frame_max,
        );
        self.republish(copy).await?;
        self.published_here += 1;
        self.remove(held).await?;
        Ok(())
    }

    async fn republish(&mut self, copy: Outgoing) -> Result<(), PublishError> {
        let channel = match &self.republish {
            Some(channel) => channel,
            None => self
                .republish
                .insert(ConfirmChannel::open(&self.broker).await?),
        };
        channel.publish_all(std::slice::from_ref(&copy)).await
    }

    /// Ends the read: every held dead letter not removed returns to the
    /// queue, in its order, and the removals are checked against the
    /// queue's depth (see the module's comment).
    pub async fn release(self) -> Result<Released, AmqpError> {
        let DeadLetterQueue {
            control,
            queue,
            republish,
            chunks,
            before,
            published_here,
            ..
        } = self;
        if let Some(channel) = republish {
            channel.close().await;
        }
        let removed: u32 = chunks.iter().map(|c| c.removed).sum();
        let check = Check {
            control: &control,
            queue: &queue,
            deadline: tokio::time::Instant::now() + SETTLE_LIMIT,
        };
        let outcome = check.release(&chunks).await;
        let outcome = match (outcome, before) {
            (Err(e), _) => Err(e),
            (Ok(()), None) => Ok(Released::default()),
            (Ok(()), Some(before)) => {
                check
                    .confirm(before, removed, published_here)
                    .await
                    .map(|unconfirmed| Released {
                        removed,
                        unconfirmed,
                    })
            }
        };
        let _ = control.close(200, short("read done")).await;
        outcome
    }
}

/// The queue as it says of itself (a passive declare).
async fn depth(channel: &lapin::Channel, queue: &str) -> Result<Depth, AmqpError> {
    let declared = channel
        .queue_declare(
            short(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(AmqpError::Channel)?;
    Ok(Depth {
        ready: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

/// The checks of a release, on the control channel.
struct Check<'a> {
    control: &'a lapin::Channel,
    queue: &'a str,
    deadline: tokio::time::Instant,
}

impl Check<'_> {
    async fn depth(&self) -> Result<Depth, AmqpError> {
        depth(self.control, self.queue).await
    }

    /// Polls the queue until `done` holds or the deadline passes; false then.
    async fn until(&self, done: impl Fn(Depth) -> bool) -> Result<bool, AmqpError> {
        loop {
            if done(self.depth().await?) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= self.deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Closes the chunks' channels in read order. A chunk that returns
    /// letters is seen back in the queue before the next one closes: the
    /// broker returns each channel's letters in their order, and this keeps
    /// the chunks in theirs.
    async fn release(&self, chunks: &[Chunk]) -> Result<(), AmqpError> {
        let mut ready = None;
        for chunk in chunks {
            let kept = chunk.held.saturating_sub(chunk.removed);
            if kept > 0 && ready.is_none() {
                ready = Some(self.depth().await?.ready);
            }
            chunk
                .channel
                .close(200, short("read done"))
                .await
                .map_err(AmqpError::Channel)?;
            if let Some(was) = ready.as_mut()
                && kept > 0
            {
                let target = was.saturating_add(kept);
                // Past the deadline, order is no longer waited for; the
                // confirmation below still is.
                let _ = self.until(|d| d.ready >= target).await?;
                *was = target;
            }
        }
        Ok(())
    }

    /// Once the read's consumers are gone (every letter settled or
    /// returned), how many of `removed` the queue's depth does not account
    /// for. Letters dead-lettered meanwhile count against the removals: a
    /// removal is reported only when the depth proves it.
    async fn confirm(&self, before: Depth, removed: u32, published: u32) -> Result<u32, AmqpError> {
        if !self.until(|d| d.consumers <= before.consumers).await? {
            // Another reader's consumers, or ours not yet gone: the depth
            // proves nothing then.
            return Ok(removed);
        }
        let expected = before
            .ready
            .saturating_add(published)
            .saturating_sub(removed);
        let now = self.depth().await?.ready;
        Ok(now.saturating_sub(expected).min(removed))
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
