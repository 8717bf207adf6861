//! The provider token of one signing key, shared by every request of the app:
//! reused while it is young, renewed before APNs' 60-minute limit, and never
//! renewed more often than once in 20 minutes (APNs answers
//! `TooManyProviderTokenUpdates` to providers that do).

use crate::jwt::SigningKey;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Age at which a token is replaced before use. APNs rejects tokens older than
/// 60 minutes; 50 leaves room for clock skew and requests in flight.
pub const RENEW_AFTER: Duration = Duration::from_secs(50 * 60);
/// Youngest age at which a token may be replaced, even after a rejection.
pub const MIN_LIFETIME: Duration = Duration::from_secs(20 * 60);

#[derive(Debug)]
pub struct ProviderToken {
    key: SigningKey,
    key_id: String,
    team_id: String,
    /// The token in use and when it was signed (tokio's clock, so tests can pause it).
    /// A plain mutex: it is held only to read or swap the pair, and to sign once
    /// every 50 minutes.
    current: Mutex<Option<Issued>>,
}

#[derive(Debug, Clone)]
struct Issued {
    /// The full `authorization` header value, `bearer <jwt>`.
    header: Arc<str>,
    at: Instant,
}

impl ProviderToken {
    pub fn new(key: SigningKey, key_id: String, team_id: String) -> Self {
        ProviderToken {
            key,
            key_id,
            team_id,
            current: Mutex::new(None),
        }
    }

    /// The `authorization` header value to send now.
    pub fn header(&self) -> Arc<str> {
        let mut current = self.lock();
        match &*current {
            Some(issued) if issued.at.elapsed() < RENEW_AFTER => issued.header.clone(),
            _ => self.issue(&mut current),
        }
    }

    /// Called after APNs answered `ExpiredProviderToken` to a request sent with
    /// `rejected`. Returns the header to retry with, or `None` when the token is
    /// too young to be replaced (APNs would count it as a too-frequent update).
    pub fn renew_after_rejection(&self, rejected: &str) -> Option<Arc<str>> {
        let mut current = self.lock();
        match &*current {
            // Another request already renewed it: use the new one.
            Some(issued) if &*issued.header != rejected => Some(issued.header.clone()),
            Some(issued) if issued.at.elapsed() < MIN_LIFETIME => None,
            _ => Some(self.issue(&mut current)),
        }
    }

    fn issue(&self, slot: &mut Option<Issued>) -> Arc<str> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let jwt = self.key.sign(&self.key_id, &self.team_id, iat);
        let header: Arc<str> = Arc::from(format!("bearer {jwt}"));
        tracing::info!(key_id = %self.key_id, "signed a new APNs provider token");
        *slot = Some(Issued {
            header: header.clone(),
            at: Instant::now(),
        });
        header
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Issued>> {
        // A panic while holding this lock cannot leave it inconsistent (it holds
        // one Option), so a poisoned lock is still usable.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ProviderToken {
        let key = SigningKey::from_pem("k", crate::jwt::generate_p8().as_bytes()).unwrap();
        ProviderToken::new(key, "KEY".into(), "TEAM".into())
    }

    #[tokio::test(start_paused = true)]
    async fn reused_until_fifty_minutes_then_renewed() {
        let t = token();
        let first = t.header();
        tokio::time::advance(Duration::from_secs(49 * 60)).await;
        assert_eq!(t.header(), first);
        tokio::time::advance(Duration::from_secs(60)).await;
        let second = t.header();
        assert_ne!(second, first);
        assert_eq!(t.header(), second);
    }

    #[tokio::test(start_paused = true)]
    async fn rejection_renews_at_most_once_in_twenty_minutes() {
        let t = token();
        let first = t.header();
        tokio::time::advance(Duration::from_secs(19 * 60)).await;
        assert_eq!(
            t.renew_after_rejection(&first),
            None,
            "too young to replace"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let second = t.renew_after_rejection(&first).unwrap();
        assert_ne!(second, first);
        // A second request rejected with the old token gets the new one, no re-sign.
        assert_eq!(t.renew_after_rejection(&first), Some(second.clone()));
        assert_eq!(t.renew_after_rejection(&second), None);
    }
}
