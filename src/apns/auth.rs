//! The provider token of one signing key, shared by every request of the app:
//! reused while it is young and renewed before APNs' 60-minute limit; proactive
//! renewals keep Apple's 20-minute floor (APNs answers
//! `TooManyProviderTokenUpdates` to providers that renew more often). A token
//! APNs rejects as expired is replaced at once whatever its age (CONTRACT §3):
//! a clock that disagrees with Apple's must not stop an app for 20 minutes.
//! Such reactive renewals are limited to one per key every 10 seconds.

use crate::jwt::SigningKey;
use http::HeaderValue;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Age at which a token is replaced before use. APNs rejects tokens older than
/// 60 minutes; 50 leaves room for clock skew and requests in flight.
pub const RENEW_AFTER: Duration = Duration::from_secs(50 * 60);
/// Shortest interval between two renewals forced by `ExpiredProviderToken`.
pub const REACTIVE_INTERVAL: Duration = Duration::from_secs(10);

pub struct ProviderToken {
    /// The app's metric label.
    app: Arc<str>,
    key: SigningKey,
    key_id: String,
    team_id: String,
    /// The token in use and when it was signed (tokio's clock, so tests can pause it).
    /// A plain mutex: it is held only to read or swap the pair, and to sign once
    /// every 50 minutes.
    current: Mutex<Option<Issued>>,
    /// When APNs' last `ExpiredProviderToken` forced a renewal.
    last_reactive: Mutex<Option<Instant>>,
}

/// The token is a credential: never printed, even in debug output.
impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Issued {
    /// The full `authorization` header value, `bearer <jwt>`, built once: every
    /// request clones it (a reference count), none copies or validates it again.
    /// Marked sensitive, so that debug output never shows it.
    header: HeaderValue,
    at: Instant,
}

impl ProviderToken {
    pub fn new(app: &str, key: SigningKey, key_id: String, team_id: String) -> Self {
        ProviderToken {
            app: crate::events::metrics().app(app),
            key,
            key_id,
            team_id,
            current: Mutex::new(None),
            last_reactive: Mutex::new(None),
        }
    }

    /// The `authorization` header value to send now.
    pub fn header(&self) -> HeaderValue {
        let mut current = self.lock();
        match &*current {
            Some(issued) if issued.at.elapsed() < RENEW_AFTER => issued.header.clone(),
            _ => self.issue(&mut current, false),
        }
    }

    /// Called after APNs answered `ExpiredProviderToken` to a request sent with
    /// `rejected`. Returns the header to retry with: the token another request
    /// already renewed, else a new one, unless a reactive renewal of this key
    /// happened less than `REACTIVE_INTERVAL` (10 s) ago (then `None`).
    pub fn renew_after_rejection(&self, rejected: &HeaderValue) -> Option<HeaderValue> {
        let mut current = self.lock();
        if let Some(issued) = &*current
            && issued.header != rejected
        {
            return Some(issued.header.clone());
        }
        let mut last = self.last_reactive.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < REACTIVE_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.issue(&mut current, true))
    }

    fn issue(&self, slot: &mut Option<Issued>, rejected: bool) -> HeaderValue {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let jwt = self.key.sign(&self.key_id, &self.team_id, iat);
        // A JWT is base64url and dots, always a valid header value; the
        // fallback only keeps this total.
        let mut header = HeaderValue::try_from(format!("bearer {jwt}"))
            .unwrap_or_else(|_| HeaderValue::from_static("bearer"));
        header.set_sensitive(true);
        crate::events::emit(crate::events::ProviderTokenRenewed {
            app: &self.app,
            key_id: &self.key_id,
            rejected,
        });
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
        ProviderToken::new("app", key, "KEY".into(), "TEAM".into())
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
    async fn a_rejected_token_is_replaced_at_once_at_most_every_ten_seconds() {
        let t = token();
        let first = t.header();
        tokio::time::advance(Duration::from_secs(1)).await;
        // A one-second-old token, rejected as expired: replaced at once.
        let second = t.renew_after_rejection(&first).unwrap();
        assert_ne!(second, first);
        // Another request rejected with the old token gets the new one, no re-sign.
        assert_eq!(t.renew_after_rejection(&first), Some(second.clone()));
        // The new one rejected too, within ten seconds: no third token.
        tokio::time::advance(REACTIVE_INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(t.renew_after_rejection(&second), None);
        assert_eq!(t.header(), second);
        tokio::time::advance(Duration::from_millis(1)).await;
        let third = t.renew_after_rejection(&second).unwrap();
        assert_ne!(third, second);
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let t = token();
        let header = t.header();
        let jwt = &header.to_str().unwrap()[7..];
        for printed in [format!("{t:?}"), format!("{header:?}")] {
            assert!(!printed.contains(jwt), "{printed}");
        }
        let printed = format!("{t:?}");
        assert!(printed.contains("KEY"));
    }
}
