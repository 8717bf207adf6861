//! One request to the simulator, answered as APNs would.

use super::{Body, State, lock};
use crate::jwt::{VerifyError, decode_unverified, verify_signature};
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A notification the simulator answered 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The device token; empty for a broadcast.
    pub token: String,
    /// The channel of a broadcast.
    pub channel: Option<String>,
    pub apns_id: String,
    pub topic: String,
    pub push_type: Option<String>,
    pub priority: Option<String>,
    pub expiration: Option<String>,
    pub collapse_id: Option<String>,
    pub key_id: String,
    pub payload: Bytes,
    /// When the simulator accepted it, in microseconds since the Unix epoch.
    pub received_at_us: u64,
}

/// Token prefixes with a fixed answer, so tests and staging can produce every
/// outcome on purpose. Real tokens practically never start with `ffff0`.
pub const PREFIXES: [(&str, u16, &str); 8] = [
    ("ffff0410", 410, "Unregistered"),
    ("ffff0411", 410, "ExpiredToken"),
    ("ffff0400", 400, "BadDeviceToken"),
    ("ffff0401", 400, "DeviceTokenNotForTopic"),
    ("ffff0402", 400, "TopicDisallowed"),
    ("ffff0429", 429, "TooManyRequests"),
    ("ffff0500", 500, "InternalServerError"),
    ("ffff0503", 503, "ServiceUnavailable"),
];

const PUSH_TYPES: [&str; 11] = [
    "alert",
    "background",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "location",
    "pushtotalk",
    "widgets",
    "controls",
];

/// Apple refuses provider tokens older than an hour.
/// Apple refuses a new provider token on a connection within 20 minutes of the last.
const TOKEN_MIN_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// What the simulator knows of one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    /// The last token that verified on this connection and when it was first seen,
    /// so that repeated requests skip the signature check (as APNs does) and a
    /// too-early change is caught.
    verified: Mutex<Option<(String, Instant)>>,
    /// Requests received on this connection so far.
    requests: AtomicU64,
    /// Requests being handled now, and the most there ever were at once.
    in_flight: AtomicUsize,
    pub(crate) max_in_flight: AtomicUsize,
    /// Key ids of the provider tokens seen on this connection.
    pub(crate) key_ids: Mutex<HashSet<String>>,
    /// The common name of the client certificate, in certificate-auth mode.
    pub(crate) certificate: Mutex<Option<String>>,
    /// Asks the connection's task to send GOAWAY (graceful) or to drop the
    /// connection at once (reset).
    pub(crate) goaway: Notify,
    pub(crate) reset: Notify,
}

/// Counts a request as in flight on its connection while it lives.
struct InFlight<'a>(&'a ConnectionState);

impl<'a> InFlight<'a> {
    fn enter(connection: &'a ConnectionState) -> Self {
        let now = connection.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        connection.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(connection)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Rejection {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

pub(crate) const fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

pub(crate) async fn handle(
    state: &State,
    connection: &ConnectionState,
    request: http::Request<hyper::body::Incoming>,
) -> Response<Body> {
    let apns_id = request
        .headers()
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _in_flight = InFlight::enter(connection);
    let number = connection.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let faults = state.faults.borrow().clone();
    if faults.stall_after.is_some_and(|n| number > n) {
        // A stall: the request is never answered (the client's deadline decides).
        std::future::pending::<()>().await;
    }
    if faults.goaway_after == Some(number) {
        // Answer this one, then GOAWAY: streams after it are refused.
        connection.goaway.notify_one();
    }
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let echo_id = apns_id
        .clone()
        .filter(|id| uuid::Uuid::try_parse(id).is_ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    match check(state, connection, request, apns_id, &faults).await {
        Ok(mut accepted) => {
            accepted.apns_id = echo_id.clone();
            let accepted_broadcast = accepted.channel.is_some();
            state.accepted_count.fetch_add(1, Ordering::Relaxed);
            if state.log_deliveries {
                tracing::info!(
                    token = %accepted.token,
                    channel = accepted.channel.as_deref().unwrap_or("-"),
                    topic = %accepted.topic,
                    push_type = accepted.push_type.as_deref().unwrap_or("-"),
                    payload = %String::from_utf8_lossy(&accepted.payload),
                    "delivered"
                );
            }
            if state.record {
                lock(&state.accepted).push(accepted);
            }
            if faults.reset_after == Some(number) {
                // Accepted, but the answer is lost with the connection.
                connection.reset.notify_one();
                std::future::pending::<()>().await;
            }
            let mut response = respond(StatusCode::OK, &echo_id, Bytes::new());
            if accepted_broadcast {
                // Apple names each broadcast it accepts.
                if let Ok(v) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
                    response.headers_mut().insert("apns-unique-id", v);
                }
            }
            response
        }
        Err(Rejection { status, reason }) => {
            *lock(&state.rejected)
                .entry((status, reason.to_owned()))
                .or_default() += 1;
            let body = if status == 410 {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or_default();
                serde_json::json!({"reason": reason, "timestamp": now_ms})
            } else {
                serde_json::json!({"reason": reason})
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            respond(status, &echo_id, Bytes::from(body.to_string()))
        }
    }
}

fn respond(status: StatusCode, apns_id: &str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(apns_id) {
        response.headers_mut().insert("apns-id", v);
    }
    if status != StatusCode::OK {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    response
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Rejection> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(reject(400, "DuplicateHeaders")),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| reject(400, "BadPath")),
    }
}

async fn check(
    state: &State,
    connection: &ConnectionState,
    request: http::Request<hyper::body::Incoming>,
    apns_id: Option<String>,
    faults: &super::Faults,
) -> Result<Accepted, Rejection> {
    if request.method() != Method::POST {
        return Err(reject(405, "MethodNotAllowed"));
    }
    if let Some(bundle) = request.uri().path().strip_prefix("/4/broadcasts/apps/") {
        if bundle.is_empty() || bundle.contains('/') {
            return Err(reject(404, "BadPath"));
        }
        let bundle = bundle.to_owned();
        let key_id = authenticate(state, connection, request.headers())?;
        let broadcast = super::channels::check_broadcast(state, &bundle, request).await?;
        if state.record {
            *lock(&state.requests)
                .entry(format!("channel:{}", broadcast.channel))
                .or_default() += 1;
        }
        injected_error(faults)?;
        return Ok(Accepted {
            token: String::new(),
            channel: Some(broadcast.channel),
            apns_id: String::new(),
            topic: bundle,
            push_type: Some("liveactivity".to_owned()),
            priority: broadcast.priority,
            expiration: broadcast.expiration,
            collapse_id: None,
            key_id,
            payload: broadcast.payload,
            received_at_us: now_us(),
        });
    }
    let token = match request.uri().path().strip_prefix("/3/device/") {
        Some("") => return Err(reject(400, "MissingDeviceToken")),
        Some(token) if !token.contains('/') => token.to_owned(),
        _ => return Err(reject(404, "BadPath")),
    };
    let headers = request.headers();
    let key_id = authenticate(state, connection, headers)?;

    let topic = header(headers, "apns-topic")?.ok_or(reject(400, "MissingTopic"))?;
    let push_type = header(headers, "apns-push-type")?;
    if push_type.is_some_and(|p| !PUSH_TYPES.contains(&p)) {
        return Err(reject(400, "InvalidPushType"));
    }
    if state.strict_topics && !topic_fits(topic, push_type.unwrap_or("alert")) {
        return Err(reject(400, "BadTopic"));
    }
    let priority = header(headers, "apns-priority")?;
    if priority.is_some_and(|p| !matches!(p, "10" | "5" | "1")) {
        return Err(reject(400, "BadPriority"));
    }
    let expiration = header(headers, "apns-expiration")?;
    if expiration.is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err(reject(400, "BadExpirationDate"));
    }
    let collapse_id = header(headers, "apns-collapse-id")?;
    if collapse_id.is_some_and(|c| c.len() > 64) {
        return Err(reject(400, "BadCollapseId"));
    }
    if apns_id
        .as_deref()
        .is_some_and(|id| uuid::Uuid::try_parse(id).is_err())
    {
        return Err(reject(400, "BadMessageId"));
    }
    let valid_token = (16..=200).contains(&token.len())
        && token.len() % 2 == 0
        && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_token {
        return Err(reject(400, "BadDeviceToken"));
    }
    let limit = if push_type == Some("voip") {
        5120
    } else {
        4096
    };
    let accepted = Accepted {
        token: token.clone(),
        channel: None,
        apns_id: String::new(),
        topic: topic.to_owned(),
        push_type: push_type.map(str::to_owned),
        priority: priority.map(str::to_owned),
        expiration: expiration.map(str::to_owned),
        collapse_id: collapse_id.map(str::to_owned),
        key_id,
        payload: Bytes::new(),
        received_at_us: 0,
    };

    // Read at most one byte past the limit: enough to know it is too large.
    let body = Limited::new(request.into_body(), limit + 1)
        .collect()
        .await
        .map_err(|_| reject(413, "PayloadTooLarge"))?
        .to_bytes();
    if body.is_empty() {
        return Err(reject(400, "PayloadEmpty"));
    }
    if body.len() > limit {
        return Err(reject(413, "PayloadTooLarge"));
    }
    let lower = token.to_ascii_lowercase();
    if state.record {
        *lock(&state.requests).entry(lower.clone()).or_default() += 1;
    }
    if let Some((_, status, reason)) = PREFIXES.iter().find(|(p, _, _)| lower.starts_with(p)) {
        return Err(reject(*status, reason));
    }
    injected_error(faults)?;
    Ok(Accepted {
        payload: body,
        received_at_us: now_us(),
        ..accepted
    })
}

/// The injected error of an otherwise valid request, at the configured rate.
fn injected_error(faults: &super::Faults) -> Result<(), Rejection> {
    if faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate {
        return Err(match faults.error_status {
            500 => reject(500, "InternalServerError"),
            429 => reject(429, "TooManyRequests"),
            _ => reject(503, "ServiceUnavailable"),
        });
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Apple's rule for `apns-topic` (checked when the simulator is strict): a
/// push type with a suffix needs a topic ending with it; the others need
/// one ending with none of them. Written out here, not taken from
/// `job::PushType`: the simulator stands for Apple, and a wrong suffix in the
/// worker's table must not pass because both sides read the same one.
fn topic_fits(topic: &str, push_type: &str) -> bool {
    let suffix = |p: &str| match p {
        "voip" => Some(".voip"),
        "complication" => Some(".complication"),
        "fileprovider" => Some(".pushkit.fileprovider"),
        "liveactivity" => Some(".push-type.liveactivity"),
        "location" => Some(".location-query"),
        "pushtotalk" => Some(".voip-ptt"),
        "widgets" => Some(".push-type.widgets"),
        "controls" => Some(".push-type.controls"),
        _ => None,
    };
    match suffix(push_type) {
        Some(wanted) => topic.ends_with(wanted),
        None => !PUSH_TYPES
            .iter()
            .filter_map(|p| suffix(p))
            .any(|s| topic.ends_with(s)),
    }
}

/// Checks the provider token; returns its key id.
pub(crate) fn authenticate(
    state: &State,
    connection: &ConnectionState,
    headers: &HeaderMap,
) -> Result<String, Rejection> {
    if state.certificate_auth {
        // The TLS handshake already verified the client certificate; its
        // common name stands for the key id, so that tests see which
        // certificate a request came with.
        let name = lock(&connection.certificate).clone().unwrap_or_default();
        if lock(&state.revoked).contains(&name) {
            return Err(reject(403, "BadCertificate"));
        }
        let id = format!("certificate:{name}");
        lock(&connection.key_ids).insert(id.clone());
        return Ok(id);
    }
    let bearer = header(headers, "authorization")?
        .and_then(|v| {
            v.strip_prefix("bearer ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .ok_or(reject(403, "MissingProviderToken"))?;
    let (jwt_header, claims) =
        decode_unverified(bearer).map_err(|_| reject(403, "InvalidProviderToken"))?;
    let keys = state.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
    let key = keys
        .iter()
        .find(|k| k.key_id == jwt_header.kid)
        .ok_or(reject(403, "InvalidProviderToken"))?;
    if key.team_id != claims.iss {
        return Err(reject(403, "InvalidProviderToken"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Apple refuses tokens issued in the future; a little skew is tolerated.
    if claims.iat > now.saturating_add(60) {
        return Err(reject(403, "InvalidProviderToken"));
    }
    let mut verified = lock(&connection.verified);
    let max_age = state
        .token_max_age
        .load(std::sync::atomic::Ordering::Relaxed);
    if claims.iat.saturating_add(max_age) < now {
        // The provider must replace it now: its next token is not counted as
        // a too-frequent update.
        *verified = None;
        state.token_event(bearer, super::TokenEventKind::Expired);
        return Err(reject(403, "ExpiredProviderToken"));
    }
    match &*verified {
        Some((known, _)) if known == bearer => {}
        previous => {
            verify_signature(bearer, &key.public_key).map_err(|e| match e {
                VerifyError::Malformed | VerifyError::BadSignature => {
                    reject(403, "InvalidProviderToken")
                }
            })?;
            if previous
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() < TOKEN_MIN_INTERVAL)
            {
                return Err(reject(429, "TooManyProviderTokenUpdates"));
            }
            *verified = Some((bearer.to_owned(), Instant::now()));
            state.token_event(bearer, super::TokenEventKind::Accepted);
        }
    }
    lock(&connection.key_ids).insert(jwt_header.kid.clone());
    Ok(jwt_header.kid)
}
