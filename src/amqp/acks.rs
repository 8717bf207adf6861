//! Which acks to send, as settlements finish in any order: one `multiple` ack
//! covers a run of settled deliveries, but only once the lowest unsettled
//! delivery tag has moved past them. A slow delivery therefore holds back the
//! acks of the faster ones after it, and is never acked by them. So that a
//! slow delivery (a large fan-out, say) cannot fill the prefetch window with
//! deliveries that are done but held back, and stall the channel, the ack task
//! acks those one by one ([`AckWindow::stragglers`]) once the frontier has not
//! moved for a while. Pure bookkeeping, no I/O: the consumer's ack task sends
//! what this decides.

use std::collections::BTreeMap;

/// How one delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Everything its settlement needed is confirmed: to be acked.
    Ack,
    /// Returned to the queue: rejected with requeue on its own, at once
    /// (a reject rather than a nack, which RabbitMQ 4.3 no longer counts
    /// as a delivery).
    Requeue,
}

/// A frame to send, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `basic.reject` of this tag, with requeue.
    Reject(u64),
    /// `basic.ack` with `multiple` up to and including this tag, which is a
    /// delivery to ack; `count` deliveries are acked by it.
    AckUpTo { tag: u64, count: u64 },
}

/// A settled delivery above the frontier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// To be acked, not acked yet.
    Ack,
    /// Acked on its own already (a straggler): never named again.
    Sent,
    /// To be rejected with requeue.
    Requeue,
}

/// The settled deliveries of one channel, by delivery tag.
#[derive(Debug)]
pub(crate) struct AckWindow {
    /// Every tag below this is settled, and its frame decided.
    next_unsettled: u64,
    /// Disposition tags at or above `next_unsettled`.
    settled: BTreeMap<u64, Pending>,
    /// Acks covered by the frontier but not sent yet: the highest such tag,
    /// and how many there are.
    unsent: Option<(u64, u64)>,
    /// Deliveries to ack held back above the frontier (`Pending::Ack` entries).
    held_back: usize,
}

impl Default for AckWindow {
    fn default() -> Self {
        // AMQP delivery tags start at 1 on every channel.
        AckWindow {
            next_unsettled: 1,
            settled: BTreeMap::new(),
            unsent: None,
            held_back: 0,
        }
    }
}

impl AckWindow {
    /// Records a settlement; returns the frame to send at once, if any (a
    /// nack is never delayed: the broker redelivers it sooner).
    pub(crate) fn settle(&mut self, tag: u64, how: Disposition) -> Option<Frame> {
        if tag < self.next_unsettled {
            return None;
        }
        let held = match how {
            Disposition::Ack => Pending::Ack,
            Disposition::Requeue => Pending::Requeue,
        };
        if self.settled.insert(tag, held).is_none() && held == Pending::Ack {
            self.held_back += 1;
        }
        while let Some(held) = self.settled.remove(&self.next_unsettled) {
            if held == Pending::Ack {
                self.held_back -= 1;
                let count = self.unsent.map_or(0, |(_, n)| n);
                self.unsent = Some((self.next_unsettled, count + 1));
            }
            self.next_unsettled += 1;
        }
        (how == Disposition::Requeue).then_some(Frame::Reject(tag))
    }

    /// The deliveries done but held back behind an unsettled one: the tags
    /// to ack one by one now (and never again).
    pub(crate) fn stragglers(&mut self) -> Vec<u64> {
        if self.held_back == 0 {
            return Vec::new();
        }
        let mut tags = Vec::with_capacity(self.held_back);
        self.held_back = 0;
        for (tag, held) in &mut self.settled {
            if *held == Pending::Ack {
                *held = Pending::Sent;
                tags.push(*tag);
            }
        }
        tags
    }

    /// The `multiple` ack for everything acked and below the frontier, once.
    pub(crate) fn flush(&mut self) -> Option<Frame> {
        self.unsent
            .take()
            .map(|(tag, count)| Frame::AckUpTo { tag, count })
    }

    /// The lowest unsettled delivery tag.
    pub(crate) fn frontier(&self) -> u64 {
        self.next_unsettled
    }

    /// Deliveries done and to be acked, held back behind an unsettled one.
    pub(crate) fn held_back(&self) -> usize {
        self.held_back
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
        assert_eq!(w.settle(2, Disposition::Ack), None);
        assert_eq!(w.settle(3, Disposition::Ack), None);
        assert_eq!(w.flush(), None, "nothing may be acked while 1 is unsettled");
        assert_eq!(w.settle(1, Disposition::Ack), None);
        assert_eq!(w.flush(), Some(Frame::AckUpTo { tag: 3, count: 3 }));
        assert_eq!(w.flush(), None);
    }

    #[test]
    fn a_multiple_ack_never_names_a_nacked_tag() {
        let mut w = AckWindow::default();
        assert_eq!(w.settle(1, Disposition::Ack), None);
        assert_eq!(w.settle(3, Disposition::Requeue), Some(Frame::Reject(3)));
        assert_eq!(w.settle(2, Disposition::Ack), None);
        // Tags 1–3 are settled; the last one to ack is 2.
        assert_eq!(w.flush(), Some(Frame::AckUpTo { tag: 2, count: 2 }));
        assert_eq!(w.settle(4, Disposition::Requeue), Some(Frame::Reject(4)));
        assert_eq!(w.flush(), None, "only nacks since the last ack");
    }

    #[test]
    fn held_back_deliveries_can_be_acked_one_by_one() {
        let mut w = AckWindow::default();
        for tag in 2..=6 {
            assert_eq!(w.settle(tag, Disposition::Ack), None);
        }
        assert_eq!(w.frontier(), 1);
        assert_eq!(w.held_back(), 5);
        assert_eq!(w.stragglers(), vec![2, 3, 4, 5, 6]);
        assert_eq!(w.stragglers(), Vec::<u64>::new(), "each only once");
        // The slow one finishes: only it is left to ack, by itself.
        assert_eq!(w.settle(1, Disposition::Ack), None);
        assert_eq!(w.flush(), Some(Frame::AckUpTo { tag: 1, count: 1 }));
        // Later deliveries are batched again.
        assert_eq!(w.settle(7, Disposition::Ack), None);
        assert_eq!(w.settle(8, Disposition::Ack), None);
        assert_eq!(w.flush(), Some(Frame::AckUpTo { tag: 8, count: 2 }));
    }

    proptest! {
        /// Whatever the order of settlements, flushes and straggler acks:
        /// every tag is settled before an ack covers it, a multiple ack names
        /// a tag that is neither nacked nor acked already, multiple acks go
        /// out in increasing order, and every ack is sent exactly once.
        #[test]
        fn acks_cover_only_settled_deliveries(
            order in Just((1..=60u64).collect::<Vec<_>>()).prop_shuffle(),
            nacks in proptest::collection::hash_set(1..=60u64, 0..10),
            flushes in proptest::collection::vec(0u8..4, 60),
        ) {
            let mut w = AckWindow::default();
            let mut settled = std::collections::HashSet::new();
            let mut acked_alone = std::collections::HashSet::new();
            let mut last_ack = 0;
            let mut acked = 0;
            for (i, tag) in order.iter().enumerate() {
                let how = if nacks.contains(tag) { Disposition::Requeue } else { Disposition::Ack };
                settled.insert(*tag);
                if let Some(frame) = w.settle(*tag, how) {
                    prop_assert_eq!(frame, Frame::Reject(*tag));
                }
                let mut frames = Vec::new();
                match flushes[i] {
                    1 => frames.extend(w.flush()),
                    2 => {
                        for t in w.stragglers() {
                            prop_assert!(settled.contains(&t) && !nacks.contains(&t));
                            prop_assert!(acked_alone.insert(t), "tag {} acked alone twice", t);
                            prop_assert!(t > last_ack);
                            acked += 1;
                        }
                    }
                    _ => {}
                }
                for frame in frames {
                    if let Frame::AckUpTo { tag, count } = frame {
                        prop_assert!(tag > last_ack);
                        prop_assert!(!nacks.contains(&tag) && !acked_alone.contains(&tag));
                        for t in 1..=tag {
                            prop_assert!(settled.contains(&t), "tag {} acked before it was settled", t);
                        }
                        last_ack = tag;
                        acked += count;
                    }
                }
            }
            if let Some(Frame::AckUpTo { tag, count }) = w.flush() {
                prop_assert!(tag > last_ack && !acked_alone.contains(&tag));
                acked += count;
            }
            prop_assert_eq!(acked, 60 - nacks.len() as u64);
            prop_assert_eq!(w.unsent(), 0);
            prop_assert_eq!(w.held_back(), 0);
        }
    }
}
