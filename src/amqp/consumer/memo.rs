//! Verdicts kept across redeliveries, by the message's identity, so that a
//! job whose settlement could not be published is not sent again.

use super::*;

/// Identifies a message across its redeliveries: its body and message id.
pub(super) fn memo_key(delivery: &Delivery) -> u64 {
    let message_id = delivery.properties.message_id().as_ref();
    memo_key_of(&delivery.data, message_id.map(|m| m.as_str()))
}

pub(super) fn memo_key_of(body: &[u8], message_id: Option<&str>) -> u64 {
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
pub(super) struct Finishing {
    unsettled: Arc<Unsettled>,
    keys: std::collections::HashMap<u64, u64>,
}

impl Finishing {
    pub(super) fn done(&mut self, tag: u64) {
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

    pub(super) fn remember(&self, key: u64, verdict: Verdict) {
        let mut map = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() < Self::CAPACITY {
            map.insert(key, verdict);
        }
    }

    pub(super) fn take(&self, key: u64) -> Option<Verdict> {
        self.verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
    }

    /// Counts the deliveries of `keys` (tag to memo key) as finishing.
    pub(super) fn finishing(
        self: &Arc<Self>,
        keys: std::collections::HashMap<u64, u64>,
    ) -> Finishing {
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
    pub(super) async fn finished(&self, key: u64) {
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
