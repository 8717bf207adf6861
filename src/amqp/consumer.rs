//! A consumer actor: one channel, one `basic.consume` with manual acks and a
//! prefetch; the deliveries in flight run concurrently inside the consumer's
//! own task. Each delivery is handed to the [`Dispatcher`] and its
//! settlement carried out here, in this order: feedback
//! and dead letters published and confirmed, then the delivery handed to the
//! consumer's ack task, which acks in order and in batches (or nacks it back to
//! the queue). Nothing is acked before its outcome is settled.

use super::acks::{AckWindow, Disposition, Frame};
use super::publisher::{SettleError, SettlementChannel};
use super::wire::{self, short};
use super::{AmqpError, Broker, Topology};
use crate::dispatch::{Dispatcher, Inbound, job_span};
use crate::events;
use crate::lane::Lane;
use crate::outcome;
use crate::outcome::Verdict;
use crate::trace::TraceParent;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

mod ack_task;
#[cfg(feature = "fault-hooks")]
mod fault_hooks;
mod memo;

use ack_task::{AckRequest, ack_loop};
pub use memo::Unsettled;
use memo::{memo_key, memo_key_of};

/// Why a consumer ended other than on request.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerFailed {
    #[error("consumer {index}: the broker ended the consumption ({detail})")]
    Lost { index: usize, detail: String },
    #[error("consumer {index} crashed while processing a delivery: {detail}")]
    Crashed { index: usize, detail: String },
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

impl ConsumerFailed {
    /// Whether the broker refused the consumption because the queue does not
    /// exist (404 NOT_FOUND).
    pub fn queue_not_found(&self) -> bool {
        matches!(self, ConsumerFailed::Amqp(AmqpError::Channel(e)) if e.to_string().contains("NOT_FOUND"))
    }
}

/// One consumer's settings and shared parts.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub index: usize,
    /// The queue it consumes: the work queue, one of its shards, or a
    /// retired shard.
    pub queue: Arc<str>,
    /// The lane that queue belongs to.
    pub lane: Lane,
    pub prefetch: u16,
    pub topology: Arc<Topology>,
    pub dispatcher: Arc<Dispatcher>,
    /// Deliveries of one message before it is dead-lettered as poison.
    pub max_deliveries: u32,
    /// Verdicts waiting for their settlement to go through.
    pub unsettled: Arc<Unsettled>,
}

impl Consumer {
    /// Consumes until `stop` turns true (then cancels, finishes what is in
    /// flight within `grace`, and returns `Stopped`), the broker ends it, its
    /// settlement channel cannot be reopened, or the consumer itself panics
    /// outside a job's guard. `on_ready` runs once consumption started.
    pub async fn run(
        self,
        broker: &Broker,
        mut stop: watch::Receiver<bool>,
        grace: Duration,
        on_ready: impl FnOnce(),
    ) -> Result<(), ConsumerFailed> {
        // Shared with every delivery in flight: on a lost connection they
        // are handed to a task of their own and outlive this call.
        let this = Arc::new(self);
        let channel = broker.channel().await?;
        channel
            .basic_qos(this.prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        // Feedback and dead letters go out on their own confirm channel, so the
        // confirms never interleave with the deliveries' acks.
        let publisher = Arc::new(SettlementChannel::open(broker).await?);
        let tag = format!("misiva-{}-{}", std::process::id(), this.index);
        let mut deliveries = channel
            .basic_consume(
                short(&this.queue),
                short(&tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::Channel)?;
        events::emit(events::ConsumerStarted {
            consumer: this.index,
            queue: &this.queue,
            prefetch: this.prefetch,
        });
        on_ready();

        // Disposition deliveries go to one ack task, which sends their acks in
        // order, batched (see `acks`).
        let (acks, settled) = mpsc::channel(usize::from(this.prefetch) + 1);
        let ack_task = tokio::spawn(ack_loop(settled, this.index));
        // The deliveries in flight, at most `prefetch` of them, run inside
        // this task rather than one task each: no task to allocate, register
        // and join per delivery. Each holds the consumer's parts by `Arc`, so
        // that on a lost connection they can be handed to a task of their own
        // (below). A panic outside a job's guard is caught per delivery and
        // ends the consumer, as a crashed task would.
        let mut in_flight = FuturesUnordered::new();
        // The memo key of each delivery in flight, by tag: if the connection
        // is lost, their redeliveries must know to wait for them.
        let mut keys = std::collections::HashMap::with_capacity(usize::from(this.prefetch));
        let exit = loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break None;
                    }
                }
                Some((tag, ended)) = in_flight.next() => {
                    keys.remove(&tag);
                    match ended {
                        // A job's own panic is caught and dead-lettered inside
                        // its guard; a panic here is the consumer's, outside
                        // any job: crash, so the channel closes, the broker
                        // requeues what is unsettled, and the supervisor
                        // starts a fresh consumer.
                        Err(panic) => {
                            // Named, because `select!` hides the type from inference.
                            let panic: Box<dyn std::any::Any + Send> = panic;
                            let detail = panic_message(panic.as_ref());
                            break Some(ConsumerFailed::Crashed { index: this.index, detail });
                        }
                        Ok(Err(detail)) => break Some(ConsumerFailed::Lost { index: this.index, detail }),
                        Ok(Ok(())) => {}
                    }
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let tag = delivery.delivery_tag;
                        keys.insert(tag, memo_key(&delivery));
                        let process = this.clone().process(delivery, publisher.clone(), acks.clone());
                        in_flight.push(std::panic::AssertUnwindSafe(process).catch_unwind().map(move |ended| (tag, ended)));
                    }
                    Some(Err(e)) => break Some(ConsumerFailed::Lost { index: this.index, detail: e.to_string() }),
                    None => break Some(ConsumerFailed::Lost { index: this.index, detail: "consumer cancelled".into() }),
                },
            }
        };

        // From here on, nothing awaits a dead connection: every step that
        // talks to the broker gives up as soon as the connection is known
        // lost, because the broker has requeued what is unacked already.
        if exit.is_none() {
            // Stop new deliveries first, then let the ones in flight settle.
            let cancel = channel.basic_cancel(short(&tag), BasicCancelOptions::default());
            if let Some(Err(e)) = broker.unless_lost(cancel).await {
                events::emit(events::CancelFailed {
                    consumer: this.index,
                    error: &e,
                });
            }
        }
        // With the connection gone, the deliveries in flight can settle
        // nothing, and the reconnection waits for this consumer to stop. So
        // they are handed to a task of their own, which lets them finish
        // their APNs work (within the grace): their verdicts are remembered
        // for the redelivery, which waits for them (see `Unsettled`), and
        // no token is sent twice because the connection was lost.
        if broker.is_connected() {
            let drained =
                tokio::time::timeout(grace, async { while in_flight.next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                events::emit(events::GraceOver {
                    consumer: this.index,
                    left: in_flight.len(),
                });
            }
            // Whatever is left is dropped unsettled.
            drop(in_flight);
        } else if !in_flight.is_empty() {
            // No ack can reach the broker now: with the ack task gone first,
            // a delivery that finishes keeps its verdict instead of handing
            // it to an ack that would be lost.
            ack_task.abort();
            let mut finishing = this.unsettled.finishing(keys);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(grace, async {
                    while let Some((tag, _)) = in_flight.next().await {
                        finishing.done(tag);
                    }
                })
                .await;
            });
        }
        // Every task has ended: the ack task sends what is left, then ends;
        // on a lost connection its acks can go nowhere, and it is aborted.
        drop(acks);
        let abort = ack_task.abort_handle();
        if broker.unless_lost(ack_task).await.is_none() {
            abort.abort();
        }
        if broker.unless_lost(publisher.close()).await.is_some() {
            // Closing the channel returns every unacked delivery to the queue.
            let _ = broker.unless_lost(channel.close(200, short("bye"))).await;
        }
        match exit {
            None => Ok(()),
            Some(failed) => Err(failed),
        }
    }

    /// Decides the delivery's settlement once, then carries it out. Returns an
    /// error only when the consumer must end (its settlement channel is gone).
    ///
    /// A plain function returning an `async move` block, not an `async fn`:
    /// an `async fn` keeps its by-value arguments twice in its future (as
    /// they were passed, and as the body's own binding), and this future is
    /// allocated and moved once per delivery.
    fn process(
        self: Arc<Self>,
        delivery: Delivery,
        publisher: Arc<SettlementChannel>,
        acks: mpsc::Sender<AckRequest>,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        async move {
            events::emit(events::JobReceived {
                queue: &self.queue,
                lane: self.lane,
            });
            // One span per job, made by the dispatcher once the body is decoded
            // (here for jobs it never sees); the publisher's trace context, when
            // it sent one, ties every line of the job to the request behind it.
            let trace = wire::trace_parent(delivery.properties.headers().as_ref());
            let (verdict, span) = match self.remembered(&delivery).await {
                Some(verdict) => {
                    let span = job_span(
                        verdict.job_id.as_deref(),
                        Some(&verdict.app),
                        None,
                        trace.as_ref(),
                    );
                    (verdict, span)
                }
                None => self.decide(&delivery, trace.as_ref()).await,
            };
            let (result, how, verdict) = self
                .settle(&delivery, verdict, &publisher)
                .instrument(span)
                .await;
            if let Some(how) = how {
                // The ack task outlives every delivery of a running consumer,
                // so the send fails only when the consumer ended on a lost
                // connection: the broker requeues the delivery, and its
                // redelivery is settled with this verdict, not sent again.
                // On a lost connection the ack could only be lost as well.
                let sent = if publisher.is_connected() {
                    acks.send((delivery.acker, delivery.delivery_tag, how))
                        .await
                        .is_ok()
                } else {
                    false
                };
                if let (false, Some(verdict)) = (sent, verdict) {
                    let message_id = delivery.properties.message_id().as_ref();
                    let key = memo_key_of(&delivery.data, message_id.map(|m| m.as_str()));
                    self.unsettled.remember(key, verdict);
                }
            }
            result
        }
    }

    /// A verdict computed on an earlier delivery of this message, whose
    /// settlement could not be published: the job is not sent to APNs again.
    /// Only redelivered messages are looked up, so the common path pays nothing.
    async fn remembered(&self, delivery: &Delivery) -> Option<Verdict> {
        if !delivery.redelivered {
            return None;
        }
        let key = memo_key(delivery);
        self.unsettled.finished(key).await;
        self.unsettled.take(key)
    }

    /// The verdict of a fresh delivery: poison when the broker delivered it too
    /// often, else the dispatcher's, with a panic confined to this one job.
    async fn decide(
        &self,
        delivery: &Delivery,
        trace: Option<&TraceParent>,
    ) -> (Verdict, tracing::Span) {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str());
        let headers = delivery.properties.headers().as_ref();
        let previous_attempts = wire::count_header(headers, wire::ATTEMPTS)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
        let attempt = previous_attempts.saturating_add(1);
        let earlier_deliveries = wire::count_header(headers, wire::DELIVERY_COUNT).unwrap_or(0);
        let own_span = || job_span(message_id, None, None, trace);
        if earlier_deliveries >= u64::from(self.max_deliveries) {
            let verdict = Verdict::rejected(
                attempt,
                outcome::POISON,
                format!(
                    "the broker delivered this message {} times without it being settled; the limit is {} (MISIVA_MAX_DELIVERIES)",
                    earlier_deliveries.saturating_add(1),
                    self.max_deliveries
                ),
                message_id.map(str::to_owned),
            );
            return (verdict, own_span());
        }
        #[cfg(feature = "fault-hooks")]
        fault_hooks::maybe_crash(&delivery.data);
        #[cfg(feature = "fault-hooks")]
        fault_hooks::maybe_slow(&delivery.data).await;
        let handled = std::panic::AssertUnwindSafe(async {
            #[cfg(feature = "fault-hooks")]
            fault_hooks::maybe_panic();
            self.dispatcher
                .handle(Inbound {
                    body: &delivery.data,
                    message_id,
                    previous_attempts,
                    trace,
                    lane: self.lane,
                })
                .await
        })
        .catch_unwind()
        .await;
        match handled {
            Ok(decided) => decided,
            Err(panic) => {
                let span = own_span();
                let text = panic_message(panic.as_ref());
                span.in_scope(|| {
                    events::emit(events::JobPanicked {
                        consumer: self.index,
                        panic: &text,
                    })
                });
                let verdict = Verdict::rejected(
                    attempt,
                    outcome::WORKER_PANIC,
                    format!("processing this job panicked: {text}"),
                    message_id.map(str::to_owned),
                );
                (verdict, span)
            }
        }
    }

    /// Carries out the settlement: every publish it needs, confirmed, then the
    /// ack. A failed publish is tried again with growing pauses; only after
    /// [`SETTLE_TRIES`] failures does the job go back to the queue, with its
    /// verdict remembered so that the redelivery is not sent to APNs again.
    /// Returns how the delivery is to be settled with the broker (`None`:
    /// left unsettled, the consumer ends and its channel returns it).
    async fn settle(
        &self,
        delivery: &Delivery,
        verdict: Verdict,
        publisher: &SettlementChannel,
    ) -> (Result<(), String>, Option<Disposition>, Option<Verdict>) {
        let outgoing = wire::Republish {
            topology: &self.topology,
            lane: self.lane,
            original: &delivery.properties,
            body: &delivery.data,
            frame_max: publisher.frame_max(),
            now: OffsetDateTime::now_utc(),
        }
        .messages(&verdict);
        let mut failures = 0u32;
        while !outgoing.is_empty() {
            // Boxed: only dead letters, feedback and retries publish, and
            // this future is large; inline, it would be part of every
            // delivery's future.
            match Box::pin(publisher.publish_all(&outgoing)).await {
                Ok(()) => break,
                Err(SettleError::Reopen(e)) => {
                    self.unsettled.remember(memo_key(delivery), verdict);
                    return (Err(e.to_string()), None, None);
                }
                // A lost connection settles nothing: the delivery is back in
                // the queue on the broker's side, and trying again would only
                // hold up the consumer's stop.
                Err(SettleError::Publish(e)) if !publisher.is_connected() => {
                    self.unsettled.remember(memo_key(delivery), verdict);
                    return (
                        Err(format!("the RabbitMQ connection was lost: {e}")),
                        None,
                        None,
                    );
                }
                Err(SettleError::Publish(e)) => {
                    failures += 1;
                    if failures >= SETTLE_TRIES {
                        events::emit(events::JobRequeued {
                            consumer: self.index,
                            job_id: verdict.job_id.as_deref(),
                            failures,
                            error: &e.to_string(),
                        });
                        self.unsettled.remember(memo_key(delivery), verdict);
                        return (Ok(()), Some(Disposition::Requeue), None);
                    }
                    let pause = settle_backoff(failures);
                    events::emit(events::SettlementRetried {
                        consumer: self.index,
                        job_id: verdict.job_id.as_deref(),
                        failures,
                        pause,
                        error: &e.to_string(),
                    });
                    tokio::time::sleep(pause).await;
                }
            }
        }

        let settlement = &verdict.settlement;
        let job_id = verdict.job_id.as_deref();
        for feedback in &settlement.feedback {
            events::emit(events::FeedbackPublished {
                app: &verdict.app,
                reason: &feedback.reason,
            });
        }
        for dead in &settlement.dead_letters {
            events::emit(events::JobDeadLettered {
                app: &verdict.app,
                job_id,
                reason: &dead.reason,
                detail: &dead.detail,
            });
        }
        if let Some(retry) = &settlement.retry {
            events::emit(events::JobRetried {
                app: &verdict.app,
                job_id,
                attempt: settlement.attempt,
                tier: retry.tier,
                tokens: retry.tokens.len(),
                detail: &retry.detail,
            });
        }
        events::emit(events::JobAcked {
            app: &verdict.app,
            lane: self.lane,
            age: job_age(delivery.properties.timestamp()),
        });
        (Ok(()), Some(Disposition::Ack), Some(verdict))
    }
}

/// How long ago the job was published, from its AMQP `timestamp` (seconds).
fn job_age(timestamp: &Option<u64>) -> Option<Duration> {
    let published = (*timestamp)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(now.saturating_sub(Duration::from_secs(published)))
}

/// Publishes of one settlement tried before the job goes back to the queue.
const SETTLE_TRIES: u32 = 8;

/// The pause after the `failures`-th failed settlement publish: 100 ms,
/// doubling, at most 5 s (about 11 s over [`SETTLE_TRIES`]).
fn settle_backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(Duration::from_secs(5))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}
