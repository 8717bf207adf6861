//! A consumer actor: one channel, one `basic.consume` with manual acks and a
//! prefetch, one task per delivery in flight. Each delivery is handed to the
//! [`Dispatcher`] and its settlement carried out here, in this order: feedback
//! and dead letters published and confirmed, then the delivery acked (or nacked
//! back to the queue). Nothing is acked before its outcome is settled.

use super::publisher::{ConfirmChannel, Outgoing, PublishError, header_string, headers};
use super::{AmqpError, Broker, Topology};
use crate::dispatch::{Dispatcher, Inbound, Verdict};
use crate::job;
use crate::outcome::Feedback;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerExit {
    #[error("consumer {0} stopped on request")]
    Stopped(usize),
    #[error("consumer {index}: the broker ended the consumption ({detail})")]
    Lost { index: usize, detail: String },
    #[error("consumer {index} crashed while processing a delivery: {detail}")]
    Crashed { index: usize, detail: String },
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Counters shared by every consumer, for logs now and metrics later.
#[derive(Debug, Default)]
pub struct Counters {
    pub acked: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub feedback: AtomicU64,
    pub delivered: AtomicU64,
}

/// One consumer's settings and shared parts.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub index: usize,
    pub prefetch: u16,
    pub topology: Arc<Topology>,
    pub dispatcher: Arc<Dispatcher>,
    pub counters: Arc<Counters>,
}

impl Consumer {
    /// Consumes until `stop` turns true (then cancels, finishes what is in
    /// flight within `grace`, and returns `Stopped`), the broker ends it, or a
    /// delivery's processing panics. `on_ready` runs once consumption started.
    pub async fn run(
        self,
        broker: &Broker,
        mut stop: watch::Receiver<bool>,
        grace: Duration,
        on_ready: impl FnOnce(),
    ) -> Result<ConsumerExit, ConsumerExit> {
        let channel = broker.channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        // Feedback and dead letters go out on their own confirm channel, so the
        // confirms never interleave with the deliveries' acks.
        let publisher = ConfirmChannel::open(broker).await?;
        let tag = format!("misiva-{}-{}", std::process::id(), self.index);
        let mut deliveries = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::Channel)?;
        tracing::info!(consumer = self.index, queue = %self.topology.queue, prefetch = self.prefetch, "consuming");
        on_ready();

        // The tasks of the deliveries in flight; at most `prefetch` of them.
        let mut in_flight = JoinSet::new();
        let exit = loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break ConsumerExit::Stopped(self.index);
                    }
                }
                Some(joined) = in_flight.join_next() => {
                    // A panic while processing leaves that delivery unsettled on
                    // this channel: crash, so the channel closes, the broker
                    // requeues it, and the supervisor starts a fresh consumer.
                    if let Err(e) = joined {
                        if e.is_panic() {
                            break ConsumerExit::Crashed { index: self.index, detail: panic_text(e) };
                        }
                    }
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let worker = self.clone();
                        let publisher = publisher.clone();
                        in_flight.spawn(async move { worker.process(delivery, &publisher).await });
                    }
                    Some(Err(e)) => break ConsumerExit::Lost { index: self.index, detail: e.to_string() },
                    None => break ConsumerExit::Lost { index: self.index, detail: "consumer cancelled".into() },
                },
            }
        };

        if let ConsumerExit::Stopped(_) = exit {
            // Stop new deliveries first, then let the ones in flight settle.
            if let Err(e) = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(consumer = self.index, error = %e, "basic.cancel failed");
            }
        }
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                consumer = self.index,
                left = in_flight.len(),
                "grace period over; unsettled deliveries return to the queue"
            );
            in_flight.abort_all();
        }
        publisher.close().await;
        // Closing the channel returns every unacked delivery to the queue.
        let _ = channel.close(200, "bye".into()).await;
        match exit {
            ConsumerExit::Stopped(_) => Ok(exit),
            lost => Err(lost),
        }
    }

    async fn process(&self, delivery: Delivery, publisher: &ConfirmChannel) {
        #[cfg(feature = "fault-hooks")]
        fault_hooks::maybe_panic();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned());
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let verdict = self
            .dispatcher
            .handle(Inbound {
                body: &delivery.data,
                message_id: message_id.as_deref(),
                previous_attempts: int_header(&headers, ATTEMPTS).unwrap_or(0),
            })
            .await;
        self.counters
            .delivered
            .fetch_add(verdict.delivered as u64, Ordering::Relaxed);
        if let Err(e) = self.settle(&delivery, &verdict, publisher).await {
            // Whatever failed, the delivery is not acked: the broker redelivers
            // it when the channel closes, or now if the nack goes through.
            tracing::warn!(consumer = self.index, job_id = ?verdict.job_id, error = %e, "settlement failed; returning the job to the queue");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
    }

    /// Carries out the settlement: every publish it needs, confirmed, then the ack.
    async fn settle(
        &self,
        delivery: &Delivery,
        verdict: &Verdict,
        publisher: &ConfirmChannel,
    ) -> Result<(), PublishError> {
        let settlement = &verdict.settlement;
        // Only republished copies (dead letters, retries) carry the stamps; a
        // plain ack, the common case, skips reading headers and formatting times.
        let republishes = !settlement.dead_letters.is_empty() || settlement.retry.is_some();
        let stamps =
            republishes.then(|| Stamps::read(&delivery.properties, settlement.attempt, verdict));
        let stamp = |extra| match &stamps {
            Some(stamps) => stamps.apply(&delivery.properties, extra),
            None => delivery.properties.clone(),
        };
        let mut outgoing = Vec::new();
        for event in &settlement.feedback {
            outgoing.push(Outgoing {
                exchange: self.topology.feedback_exchange.clone(),
                routing_key: format!("{}.{}", verdict.app, event.reason),
                body: feedback_body(event, verdict),
                properties: BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            });
        }
        for dead in &settlement.dead_letters {
            let body = match &dead.tokens {
                Some(tokens) => job::body_with_tokens(&delivery.data, tokens),
                None => delivery.data.clone(),
            };
            outgoing.push(Outgoing {
                exchange: String::new(),
                routing_key: self.topology.dead_letter_queue.clone(),
                body,
                properties: stamp(vec![
                    (REASON, header_string(&dead.reason)),
                    (DETAIL, header_string(&dead.detail)),
                    (FAILED_AT, header_string(&now_rfc3339())),
                ]),
            });
        }
        if let Some(retry) = &settlement.retry {
            let (queue, delay) = &self.topology.retry_queues[retry.tier];
            outgoing.push(Outgoing {
                exchange: String::new(),
                routing_key: queue.clone(),
                body: job::body_with_tokens(&delivery.data, &retry.tokens),
                properties: stamp(vec![(LAST_ERROR, header_string(&retry.detail))]),
            });
            tracing::info!(job_id = ?verdict.job_id, attempt = settlement.attempt, tokens = retry.tokens.len(), ?delay, detail = %retry.detail, "transient failure; job scheduled for retry");
        }
        publisher.publish_all(outgoing).await?;

        let counters = &self.counters;
        counters
            .feedback
            .fetch_add(settlement.feedback.len() as u64, Ordering::Relaxed);
        for dead in &settlement.dead_letters {
            tracing::warn!(job_id = ?verdict.job_id, reason = %dead.reason, detail = %dead.detail, "job dead-lettered");
        }
        counters
            .dead_lettered
            .fetch_add(settlement.dead_letters.len() as u64, Ordering::Relaxed);
        if settlement.retry.is_some() {
            counters.retried.fetch_add(1, Ordering::Relaxed);
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(PublishError::Send)?;
        counters.acked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn panic_text(error: tokio::task::JoinError) -> String {
    let panic = error.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Faults on demand, compiled only with the `fault-hooks` feature (the test
/// suite's build), never into a release.
#[cfg(feature = "fault-hooks")]
mod fault_hooks {
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Panics already injected in this process.
    static INJECTED: AtomicU32 = AtomicU32::new(0);

    /// Panics while processing a delivery, `MISIVA_FAULT_PANICS` times in all.
    pub(super) fn maybe_panic() {
        let wanted: u32 = std::env::var("MISIVA_FAULT_PANICS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if INJECTED.fetch_add(1, Ordering::Relaxed) < wanted {
            panic!("fault hook: injected consumer panic");
        }
    }
}

const ATTEMPTS: &str = "x-misiva-attempts";
const FIRST_SEEN: &str = "x-misiva-first-seen";
const APP: &str = "x-misiva-app";
const REASON: &str = "x-misiva-reason";
const DETAIL: &str = "x-misiva-detail";
const FAILED_AT: &str = "x-misiva-failed-at";
const LAST_ERROR: &str = "x-misiva-last-error";

/// Reads an integer header whatever integer type the publisher used.
fn int_header(headers: &FieldTable, name: &str) -> Option<u32> {
    let value = match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongString(s) => s.to_string().parse().ok()?,
        _ => return None,
    };
    u32::try_from(value).ok()
}

/// The headers every republished copy of a job carries (retry or dead letter).
struct Stamps {
    attempt: u32,
    first_seen: String,
    app: String,
    job_id: Option<String>,
}

impl Stamps {
    fn read(original: &BasicProperties, attempt: u32, verdict: &Verdict) -> Stamps {
        let first_seen = match original
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(FIRST_SEEN))
        {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            _ => now_rfc3339(),
        };
        Stamps {
            attempt,
            first_seen,
            app: verdict.app.clone(),
            job_id: verdict.job_id.clone(),
        }
    }

    /// The original properties, with our headers added (and `extra`), persistent,
    /// and the job id as `message_id` so a generated id survives the republish.
    fn apply(&self, original: &BasicProperties, extra: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let mut table = original.headers().clone().unwrap_or_default();
        let mut ours = vec![
            (ATTEMPTS, AMQPValue::LongLongInt(i64::from(self.attempt))),
            (FIRST_SEEN, header_string(&self.first_seen)),
            (APP, header_string(&self.app)),
        ];
        ours.extend(extra);
        for (k, v) in headers(ours).inner() {
            table.insert(k.clone(), v.clone());
        }
        let mut properties = original.clone().with_headers(table).with_delivery_mode(2);
        if properties.message_id().is_none() {
            if let Some(id) = &self.job_id {
                properties = properties.with_message_id(id.as_str().into());
            }
        }
        properties
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn feedback_body(event: &Feedback, verdict: &Verdict) -> Vec<u8> {
    let timestamp = event
        .timestamp_ms
        .unwrap_or_else(|| (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64);
    serde_json::json!({
        "token": event.token.as_str(),
        "app": verdict.app,
        "topic": verdict.topic,
        "reason": event.reason,
        "timestamp": timestamp,
        "job_id": verdict.job_id,
    })
    .to_string()
    .into_bytes()
}
