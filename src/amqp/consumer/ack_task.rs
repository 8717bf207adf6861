//! The consumer's ack task: acks in order and in batches, never past an
//! unsettled delivery (the rule is `amqp::acks`; this task carries it out).

use super::*;

/// A delivery whose settlement is decided and confirmed: its acker, its tag
/// and how to settle it with the broker.
pub(super) type AckRequest = (Acker, u64, Disposition);

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
pub(super) async fn ack_loop(mut done: mpsc::Receiver<AckRequest>, index: usize) {
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
                    flush(&mut window, &mut ackers, index, stuck(&frontier)).await;
                    continue;
                }
            },
            None => done.recv().await,
        };
        let Some(first) = next else { break };
        let mut item = Some(first);
        while let Some((acker, tag, how)) = item {
            match window.settle(tag, how) {
                Some(Frame::Reject(_)) => {
                    // A reject, not a nack: the same on RabbitMQ 3.x to 4.2,
                    // and still counted toward the delivery limit on 4.3,
                    // which stopped counting nacks. So a settlement that can
                    // never be published ends as poison, never requeued
                    // forever (docs/operations.md).
                    if let Err(e) = acker.reject(BasicRejectOptions { requeue: true }).await {
                        events::emit(events::AckFailed {
                            consumer: index,
                            frame: "reject",
                            deliveries: 1,
                            error: &e,
                        });
                    }
                }
                _ if how == Disposition::Ack => {
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
            flush(&mut window, &mut ackers, index, stuck(&frontier)).await;
        }
    }
    flush(&mut window, &mut ackers, index, false).await;
}

async fn flush(
    window: &mut AckWindow,
    ackers: &mut std::collections::BTreeMap<u64, Acker>,
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
            Ok(_) => events::emit(events::AcksSent { count: 1 }),
            Err(e) => events::emit(events::AckFailed {
                consumer: index,
                frame: "ack",
                deliveries: 1,
                error: &e,
            }),
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
        Ok(_) => events::emit(events::AcksSent { count }),
        Err(e) => events::emit(events::AckFailed {
            consumer: index,
            frame: "ack",
            deliveries: count,
            error: &e,
        }),
    }
}
