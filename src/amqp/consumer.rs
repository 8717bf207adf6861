//! A consumer actor: one channel, one `basic.consume` with manual acks and a
//! prefetch; the deliveries in flight run concurrently inside the consumer's
//! own task. Each delivery is handed to the [`Dispatcher`] and its
//! settlement carried out here, in this order: feedback
//! and dead letters published and confirmed, then the delivery handed to the
//! consumer's ack task, which acks in order and in batches (or nacks it back to
//! the queue). Nothing is acked before its outcome is settled.

use super::acks::{AckWindow, Frame, Settled};
use super::publisher::{SettleError, SettlementChannel};
use super::wire::{self, short};
use super::{AmqpError, Broker, Topology};
use crate::bounded;
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

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

impl ConsumerExit {
    /// Whether the broker refused the consumption because the queue does not
    /// exist (404 NOT_FOUND).
    pub fn queue_not_found(&self) -> bool {
        matches!(self, ConsumerExit::Amqp(AmqpError::Channel(e)) if e.to_string().contains("NOT_FOUND"))
    }
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
    /// The queue it consumes: the work queue, one of its shards, or a
    /// retired shard.
    pub queue: Arc<str>,
    /// The lane that queue belongs to.
    pub lane: Lane,
    pub prefetch: u16,
    pub topology: Arc<Topology>,
    pub dispatcher: Arc<Dispatcher>,
    pub counters: Arc<Counters>,
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
    ) -> Result<ConsumerExit, ConsumerExit> {
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
        tracing::info!(consumer = this.index, queue = %this.queue, prefetch = this.prefetch, "consuming");
        on_ready();

        // Settled deliveries go to one ack task, which sends their acks in
        // order, batched (see `acks`).
        let (acks, settled) = mpsc::channel(usize::from(this.prefetch) + 1);
        let ack_task = tokio::spawn(ack_loop(settled, this.counters.clone(), this.index));
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
                        break ConsumerExit::Stopped(this.index);
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
                            break ConsumerExit::Crashed { index: this.index, detail };
                        }
                        Ok(Err(detail)) => break ConsumerExit::Lost { index: this.index, detail },
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
                    Some(Err(e)) => break ConsumerExit::Lost { index: this.index, detail: e.to_string() },
                    None => break ConsumerExit::Lost { index: this.index, detail: "consumer cancelled".into() },
                },
            }
        };

        // From here on, nothing awaits a dead connection: every step that
        // talks to the broker gives up as soon as the connection is known
        // lost, because the broker has requeued what is unacked already.
        if let ConsumerExit::Stopped(_) = exit {
            // Stop new deliveries first, then let the ones in flight settle.
            let cancel = channel.basic_cancel(short(&tag), BasicCancelOptions::default());
            if let Some(Err(e)) = broker.unless_lost(cancel).await {
                tracing::warn!(consumer = this.index, error = %e, "basic.cancel failed");
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
                tracing::warn!(
                    consumer = this.index,
                    left = in_flight.len(),
                    "grace period over; unsettled deliveries return to the queue"
                );
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
            ConsumerExit::Stopped(_) => Ok(exit),
            lost => Err(lost),
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
        acks: mpsc::Sender<Done>,
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
                span.in_scope(|| tracing::error!(consumer = self.index, panic = %bounded::detail(&text), "processing a job panicked; dead-lettering it as worker_panic"));
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
    ) -> (Result<(), String>, Option<Settled>, Option<Verdict>) {
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
                        return (Ok(()), Some(Settled::Nack), None);
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
        let counters = &self.counters;
        counters
            .delivered
            .fetch_add(verdict.delivered as u64, Ordering::Relaxed);
        counters
            .feedback
            .fetch_add(settlement.feedback.len() as u64, Ordering::Relaxed);
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
        counters
            .dead_lettered
            .fetch_add(settlement.dead_letters.len() as u64, Ordering::Relaxed);
        if let Some(retry) = &settlement.retry {
            counters.retried.fetch_add(1, Ordering::Relaxed);
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
        (Ok(()), Some(Settled::Ack), Some(verdict))
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

/// A delivery whose settlement is decided and confirmed: its acker, its tag
/// and how to settle it with the broker.
type Done = (Acker, u64, Settled);

/// Acks waiting before a `multiple` ack goes out at once; below this, they
/// go out when no settlement arrived for [`ACK_DELAY`].
const ACK_BATCH: u64 = 64;
const ACK_DELAY: Duration = Duration::from_millis(1);
/// How long the lowest unsettled delivery may hold back the acks of the ones
/// after it. Past this it is a slow delivery (a large fan-out, a held job),
/// not the ordinary disorder of a drain, and the deliveries done behind it
/// are acked one by one, so the prefetch window keeps moving.
const STUCK_AFTER: Duration = Duration::from_millis(100);

/// The consumer's ack task: the only sender of acks and nacks on its channel,
/// so that frames go out in order. Under load, one `multiple` ack covers many
/// deliveries; when the flow pauses, what is pending goes out within
/// [`ACK_DELAY`]. Ends, after sending what is left, when every sender is gone.
async fn ack_loop(mut done: mpsc::Receiver<Done>, counters: Arc<Counters>, index: usize) {
    let mut window = AckWindow::default();
    // The ackers of acked deliveries not covered by a sent ack yet; the
    // `multiple` ack is sent with the one of the highest tag.
    let mut ackers = std::collections::BTreeMap::new();
    // When the lowest unsettled tag last moved.
    let mut frontier = (window.frontier(), tokio::time::Instant::now());
    loop {
        let stuck = |frontier: &(u64, tokio::time::Instant)| frontier.1.elapsed() >= STUCK_AFTER;
        let wait = if window.unsent() > 0 {
            Some(ACK_DELAY)
        } else if window.held_back() > 0 {
            Some(
                STUCK_AFTER
                    .saturating_sub(frontier.1.elapsed())
                    .max(ACK_DELAY),
            )
        } else {
            None
        };
        let next = match wait {
            Some(wait) => match tokio::time::timeout(wait, done.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    flush(&mut window, &mut ackers, &counters, index, stuck(&frontier)).await;
                    continue;
                }
            },
            None => done.recv().await,
        };
        let Some(first) = next else { break };
        let mut item = Some(first);
        while let Some((acker, tag, how)) = item {
            match window.settle(tag, how) {
                Some(Frame::Nack(_)) => {
                    // A reject, not a nack: the same on RabbitMQ 3.x to 4.2,
                    // and still counted toward the delivery limit on 4.3,
                    // which stopped counting nacks. So a settlement that can
                    // never be published ends as poison, never requeued
                    // forever (docs/operations.md).
                    if let Err(e) = acker.reject(BasicRejectOptions { requeue: true }).await {
                        tracing::debug!(consumer = index, error = %e, "reject failed; the channel returns the delivery");
                    }
                }
                _ if how == Settled::Ack => {
                    ackers.insert(tag, acker);
                }
                _ => {}
            }
            item = done.try_recv().ok();
        }
        if window.frontier() != frontier.0 {
            frontier = (window.frontier(), tokio::time::Instant::now());
        }
        if window.unsent() >= ACK_BATCH || (window.held_back() > 0 && stuck(&frontier)) {
            flush(&mut window, &mut ackers, &counters, index, stuck(&frontier)).await;
        }
    }
    flush(&mut window, &mut ackers, &counters, index, false).await;
}

async fn flush(
    window: &mut AckWindow,
    ackers: &mut std::collections::BTreeMap<u64, Acker>,
    counters: &Counters,
    index: usize,
    stuck: bool,
) {
    let stragglers = if stuck {
        window.stragglers()
    } else {
        Vec::new()
    };
    for tag in stragglers {
        let Some(acker) = ackers.remove(&tag) else {
            continue;
        };
        match acker.ack(BasicAckOptions { multiple: false }).await {
            Ok(_) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(consumer = index, error = %e, "ack failed; the channel returns the delivery");
            }
        }
    }
    let Some(Frame::AckUpTo { tag, count }) = window.flush() else {
        return;
    };
    // Everything up to `tag` is covered by this ack.
    let rest = ackers.split_off(&(tag + 1));
    let covered = std::mem::replace(ackers, rest);
    let Some(acker) = covered.get(&tag) else {
        return;
    };
    match acker.ack(BasicAckOptions { multiple: true }).await {
        Ok(_) => {
            counters.acked.fetch_add(count, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::debug!(consumer = index, error = %e, "ack failed; the channel returns the deliveries");
        }
    }
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

/// Identifies a message across its redeliveries: its body and message id.
fn memo_key(delivery: &Delivery) -> u64 {
    let message_id = delivery.properties.message_id().as_ref();
    memo_key_of(&delivery.data, message_id.map(|m| m.as_str()))
}

fn memo_key_of(body: &[u8], message_id: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    message_id.hash(&mut hasher);
    hasher.finish()
}

/// Verdicts whose settlement could not be published, kept until the message
/// comes back, shared by every consumer of the process. Bounded: past
/// [`Unsettled::CAPACITY`] a verdict is not kept, and that job is sent again
/// on redelivery (at least once, as ever).
///
/// It also knows the deliveries of lost connections still finishing their
/// APNs work: the redelivery of such a message waits for its first delivery
/// to finish and looks for the verdict then, so that a job is not sent a
/// second time beside its first sending. Other redeliveries do not wait.
#[derive(Debug)]
pub struct Unsettled {
    verdicts: std::sync::Mutex<std::collections::HashMap<u64, Verdict>>,
    /// Memo keys of deliveries finishing, with how many of each.
    finishing: std::sync::Mutex<std::collections::HashMap<u64, usize>>,
    /// Bumped whenever one of them finishes, to wake the redeliveries.
    finished: watch::Sender<u64>,
}

impl Default for Unsettled {
    fn default() -> Self {
        Unsettled {
            verdicts: std::sync::Mutex::default(),
            finishing: std::sync::Mutex::default(),
            finished: watch::channel(0).0,
        }
    }
}

/// The deliveries of one lost connection still finishing, by tag; whatever
/// is left when it is dropped counts as finished.
struct Finishing {
    unsettled: Arc<Unsettled>,
    keys: std::collections::HashMap<u64, u64>,
}

impl Finishing {
    fn done(&mut self, tag: u64) {
        if let Some(key) = self.keys.remove(&tag) {
            self.unsettled.end(std::iter::once(key));
        }
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.unsettled.end(self.keys.drain().map(|(_, key)| key));
    }
}

impl Unsettled {
    const CAPACITY: usize = 10_000;

    /// The longest a redelivered message waits for its first delivery to
    /// finish (that one has the shutdown grace; this bound is for a bug,
    /// never the expected wait).
    const FINISH_WAIT: Duration = Duration::from_secs(3600);

    fn remember(&self, key: u64, verdict: Verdict) {
        let mut map = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() < Self::CAPACITY {
            map.insert(key, verdict);
        }
    }

    fn take(&self, key: u64) -> Option<Verdict> {
        self.verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
    }

    /// Counts the deliveries of `keys` (tag to memo key) as finishing.
    fn finishing(self: &Arc<Self>, keys: std::collections::HashMap<u64, u64>) -> Finishing {
        let mut map = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys.values() {
            *map.entry(*key).or_default() += 1;
        }
        drop(map);
        Finishing {
            unsettled: self.clone(),
            keys,
        }
    }

    fn end(&self, keys: impl Iterator<Item = u64>) {
        let mut map = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        drop(map);
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn is_finishing(&self, key: u64) -> bool {
        self.finishing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
    }

    /// Resolves once no delivery of `key` is finishing.
    async fn finished(&self, key: u64) {
        let wait = async {
            loop {
                // Subscribed before the look, so that an end in between
                // still wakes this.
                let mut changes = self.finished.subscribe();
                if !self.is_finishing(key) {
                    return;
                }
                let _ = changes.changed().await;
            }
        };
        let _ = tokio::time::timeout(Self::FINISH_WAIT, wait).await;
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
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

    fn wanted(variable: &str) -> u32 {
        std::env::var(variable)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// A bug in one job's processing: panics inside the job's guard,
    /// `MISIVA_FAULT_PANICS` times in all.
    pub(super) fn maybe_panic() {
        static INJECTED: AtomicU32 = AtomicU32::new(0);
        if INJECTED.fetch_add(1, Ordering::Relaxed) < wanted("MISIVA_FAULT_PANICS") {
            panic!("fault hook: injected job panic");
        }
    }

    fn marked(variable: &str, body: &[u8]) -> bool {
        std::env::var(variable).is_ok_and(|marker| {
            !marker.is_empty() && body.windows(marker.len()).any(|w| w == marker.as_bytes())
        })
    }

    /// A slow delivery: every delivery whose body contains
    /// `MISIVA_FAULT_SLOW_ON` waits `MISIVA_FAULT_SLOW_MS` (3,000 unless
    /// set) before it is dispatched.
    pub(super) async fn maybe_slow(body: &[u8]) {
        if marked("MISIVA_FAULT_SLOW_ON", body) {
            let ms = match wanted("MISIVA_FAULT_SLOW_MS") {
                0 => 3000,
                ms => ms,
            };
            tokio::time::sleep(std::time::Duration::from_millis(u64::from(ms))).await;
        }
    }

    /// A bug in the consumer itself: panics outside any job's guard, which
    /// crashes the consumer, `MISIVA_FAULT_CRASHES` times in all, and on every
    /// delivery whose body contains `MISIVA_FAULT_CRASH_ON` (a message that
    /// kills its consumer each time, as a poison message does).
    pub(super) fn maybe_crash(body: &[u8]) {
        static INJECTED: AtomicU32 = AtomicU32::new(0);
        if INJECTED.fetch_add(1, Ordering::Relaxed) < wanted("MISIVA_FAULT_CRASHES") {
            panic!("fault hook: injected consumer crash");
        }
        if marked("MISIVA_FAULT_CRASH_ON", body) {
            panic!("fault hook: this message crashes its consumer");
        }
    }
}
