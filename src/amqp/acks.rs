//! Which acks to send, as settlements finish in any order: one `multiple` ack
//! covers a run of settled deliveries, but only once the lowest unsettled
//! delivery tag has moved past them. A slow delivery therefore holds back the
//! acks of the faster ones after it (they wait, unacked, in the prefetch
//! window), and is never acked by them. Pure bookkeeping, no I/O: the
//! consumer's ack task sends what this decides.

use std::collections::BTreeMap;

/// How one delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Everything its settlement needed is confirmed: to be acked.
    Ack,
    /// Returned to the queue: nacked on its own, at once.
    Nack,
}

/// A frame to send, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `basic.nack` of this tag alone, with requeue.
    Nack(u64),
    /// `basic.ack` with `multiple` up to and including this tag, which is a
    /// delivery to ack; `count` deliveries are acked by it.
    AckUpTo { tag: u64, count: u64 },
}

/// The settled deliveries of one channel, by delivery tag.
#[derive(Debug)]
pub(crate) struct AckWindow {
    /// Every tag below this is settled, and its frame decided.
    next_unsettled: u64,
    /// Settled tags at or above `next_unsettled`.
    settled: BTreeMap<u64, Settled>,
    /// Acks covered by the frontier but not sent yet: the highest such tag,
    /// and how many there are.
    unsent: Option<(u64, u64)>,
}

impl Default for AckWindow {
    fn default() -> Self {
        // AMQP delivery tags start at 1 on every channel.
        AckWindow {
            next_unsettled: 1,
            settled: BTreeMap::new(),
            unsent: None,
        }
    }
}

impl AckWindow {
    /// Records a settlement; returns the frame to send at once, if any (a
    /// nack is never delayed: the broker redelivers it sooner).
    pub(crate) fn settle(&mut self, tag: u64, how: Settled) -> Option<Frame> {
        if tag < self.next_unsettled {
            return None;
        }
        self.settled.insert(tag, how);
        while let Some(how) = self.settled.remove(&self.next_unsettled) {
            if how == Settled::Ack {
                let count = self.unsent.map_or(0, |(_, n)| n);
                self.unsent = Some((self.next_unsettled, count + 1));
            }
            self.next_unsettled += 1;
        }
        (how == Settled::Nack).then_some(Frame::Nack(tag))
    }

    /// The `multiple` ack for everything acked and below the frontier, once.
    pub(crate) fn flush(&mut self) -> Option<Frame> {
        self.unsent
            .take()
            .map(|(tag, count)| Frame::AckUpTo { tag, count })
    }

    /// Acks covered by the frontier and not sent yet.
    pub(crate) fn unsent(&self) -> u64 {
        self.unsent.map_or(0, |(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slow_delivery_holds_back_the_acks_after_it() {
        let mut w = AckWindow::default();
        // 1 is slow; 2 and 3 finish first.
        assert_eq!(w.settle(2, Settled::Ack), None);
        assert_eq!(w.settle(3, Settled::Ack), None);
        assert_eq!(w.flush(), None, "nothing may be acked while 1 is unsettled");
        assert_eq!(w.settle(1, Settled::Ack), None);
        assert_eq!(w.flush(), Some(Frame::AckUpTo { tag: 3, count: 3 }));
        assert_eq!(w.flush(), None);
    }

    #[test]
    fn a_multiple_ack_never_names_a_nacked_tag() {
        let mut w = AckWindow::default();
        assert_eq!(w.settle(1, Settled::Ack), None);
        assert_eq!(w.settle(3, Settled::Nack), Some(Frame::Nack(3)));
        assert_eq!(w.settle(2, Settled::Ack), None);
        // Tags 1–3 are settled; the last one to ack is 2.
        assert_eq!(w.flush(), Some(Frame::AckUpTo { tag: 2, count: 2 }));
        assert_eq!(w.settle(4, Settled::Nack), Some(Frame::Nack(4)));
        assert_eq!(w.flush(), None, "only nacks since the last ack");
    }

    proptest! {
        /// Whatever the order of settlements and flushes: every tag is settled
        /// before an ack covers it, a multiple ack names an acked tag, acks go
        /// out in increasing order, and every ack is sent exactly once.
        #[test]
        fn acks_cover_only_settled_deliveries(
            order in Just((1..=60u64).collect::<Vec<_>>()).prop_shuffle(),
            nacks in proptest::collection::hash_set(1..=60u64, 0..10),
            flushes in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut w = AckWindow::default();
            let mut settled = std::collections::HashSet::new();
            let mut last_ack = 0;
            let mut acked = 0;
            let mut check = |frame: Frame, settled: &std::collections::HashSet<u64>| -> Result<(), TestCaseError> {
                if let Frame::AckUpTo { tag, count } = frame {
                    prop_assert!(tag > last_ack);
                    prop_assert!(!nacks.contains(&tag));
                    for t in 1..=tag {
                        prop_assert!(settled.contains(&t), "tag {} acked before it was settled", t);
                    }
                    last_ack = tag;
                    acked += count;
                }
                Ok(())
            };
            for (i, tag) in order.iter().enumerate() {
                let how = if nacks.contains(tag) { Settled::Nack } else { Settled::Ack };
                settled.insert(*tag);
                if let Some(frame) = w.settle(*tag, how) {
                    check(frame, &settled)?;
                }
                if flushes[i] {
                    if let Some(frame) = w.flush() {
                        check(frame, &settled)?;
                    }
                }
            }
            if let Some(frame) = w.flush() {
                check(frame, &settled)?;
            }
            prop_assert_eq!(acked, 60 - nacks.len() as u64);
            prop_assert_eq!(w.unsent(), 0);
        }
    }
}
