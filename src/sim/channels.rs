//! Broadcast channels in the simulator (CONTRACT §7): the store, the
//! management API Apple serves on its own host and port, and the checks of a
//! broadcast request, answered with Apple's reasons.

use super::handler::{Rejection, header, reject};
use super::{Body, State, lock};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::collections::BTreeMap;

/// What Apple keeps of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// `message-storage-policy`: 0 keeps no message (a broadcast must then
    /// have expiration 0), 1 keeps the latest for devices that come back.
    pub storage: u8,
}

/// Channels by (bundle id, channel id).
pub(crate) type Store = BTreeMap<(String, String), ChannelInfo>;

/// The largest broadcast payload Apple takes.
const BROADCAST_LIMIT: usize = 5120;

/// A new channel id: 16 random bytes in base64, as Apple's look.
pub(crate) fn new_channel_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn refused(Rejection { status, reason }: Rejection) -> Response<Body> {
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        serde_json::json!({ "reason": reason }),
    )
}

/// One request on the management listener.
pub(crate) async fn manage(
    state: &State,
    connection: &super::handler::ConnectionState,
    request: http::Request<hyper::body::Incoming>,
) -> Response<Body> {
    match manage_checked(state, connection, request).await {
        Ok(response) => response,
        Err(rejection) => {
            *lock(&state.rejected)
                .entry((rejection.status, rejection.reason.to_owned()))
                .or_default() += 1;
            refused(rejection)
        }
    }
}

async fn manage_checked(
    state: &State,
    connection: &super::handler::ConnectionState,
    request: http::Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Rejection> {
    super::handler::authenticate(state, connection, request.headers())?;
    let path = request.uri().path().to_owned();
    let rest = path
        .strip_prefix("/1/apps/")
        .ok_or(reject(404, "BadPath"))?;
    let (bundle, what) = rest.split_once('/').ok_or(reject(404, "BadPath"))?;
    if bundle.is_empty() {
        return Err(reject(404, "BadPath"));
    }
    let bundle = bundle.to_owned();
    let channel = header(request.headers(), "apns-channel-id")?.map(str::to_owned);
    match (request.method().clone(), what) {
        (Method::GET, "all-channels") => {
            let channels: Vec<String> = lock(&state.channels)
                .keys()
                .filter(|(b, _)| *b == bundle)
                .map(|(_, id)| id.clone())
                .collect();
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "channels": channels }),
            ))
        }
        (Method::POST, "channels") => {
            let body = Limited::new(request.into_body(), 4096)
                .collect()
                .await
                .map_err(|_| reject(413, "PayloadTooLarge"))?
                .to_bytes();
            #[derive(serde::Deserialize)]
            struct Create {
                #[serde(rename = "message-storage-policy")]
                storage: u8,
                #[serde(rename = "push-type")]
                push_type: String,
            }
            let create: Create =
                serde_json::from_slice(&body).map_err(|_| reject(400, "BadRequestPayload"))?;
            if create.storage > 1 {
                return Err(reject(400, "BadRequestParams"));
            }
            if create.push_type != "LiveActivity" {
                return Err(reject(400, "InvalidPushType"));
            }
            let id = new_channel_id();
            lock(&state.channels).insert(
                (bundle, id.clone()),
                ChannelInfo {
                    storage: create.storage,
                },
            );
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::CREATED;
            if let Ok(value) = http::HeaderValue::from_str(&id) {
                response.headers_mut().insert("apns-channel-id", value);
            }
            Ok(response)
        }
        (method @ (Method::GET | Method::DELETE), "channels") => {
            let channel = channel.ok_or(reject(400, "MissingChannelId"))?;
            let key = (bundle, channel);
            let mut channels = lock(&state.channels);
            let info = if method == Method::DELETE {
                channels.remove(&key)
            } else {
                channels.get(&key).copied()
            };
            let info = info.ok_or(reject(404, "ChannelNotRegistered"))?;
            if method == Method::DELETE {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                return Ok(response);
            }
            Ok(json(
                StatusCode::OK,
                serde_json::json!({
                    "message-storage-policy": info.storage,
                    "push-type": "LiveActivity",
                }),
            ))
        }
        (Method::GET | Method::POST | Method::DELETE, _) => Err(reject(404, "BadPath")),
        _ => Err(reject(405, "MethodNotAllowed")),
    }
}

/// A broadcast the simulator accepted: its channel and what it carried.
pub(crate) struct Broadcast {
    pub channel: String,
    pub priority: Option<String>,
    pub expiration: Option<String>,
    pub payload: Bytes,
}

/// Checks one broadcast as Apple does, after the provider token was
/// accepted. `bundle` is the path's last segment.
pub(crate) async fn check_broadcast(
    state: &State,
    bundle: &str,
    request: http::Request<hyper::body::Incoming>,
) -> Result<Broadcast, Rejection> {
    let headers = request.headers();
    if header(headers, "apns-push-type")? != Some("liveactivity") {
        return Err(reject(400, "InvalidPushType"));
    }
    let channel = header(headers, "apns-channel-id")?
        .ok_or(reject(400, "MissingChannelId"))?
        .to_owned();
    let decodes = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&channel)
            .is_ok()
    };
    if !decodes {
        return Err(reject(400, "BadChannelId"));
    }
    let priority = header(headers, "apns-priority")?.map(str::to_owned);
    if priority
        .as_deref()
        .is_some_and(|p| !matches!(p, "10" | "5" | "1"))
    {
        return Err(reject(400, "BadPriority"));
    }
    let expiration = header(headers, "apns-expiration")?.map(str::to_owned);
    let expires = match expiration.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(at)) => at,
        Some(Err(_)) => return Err(reject(400, "BadExpirationDate")),
    };
    let info = lock(&state.channels)
        .get(&(bundle.to_owned(), channel.clone()))
        .copied()
        .ok_or(reject(400, "ChannelNotRegistered"))?;
    // A channel that keeps no message cannot hold one until it expires.
    if info.storage == 0 && expires != 0 {
        return Err(reject(400, "BadExpirationDate"));
    }
    let body = Limited::new(request.into_body(), BROADCAST_LIMIT + 1)
        .collect()
        .await
        .map_err(|_| reject(413, "PayloadTooLarge"))?
        .to_bytes();
    if body.is_empty() {
        return Err(reject(400, "PayloadEmpty"));
    }
    if body.len() > BROADCAST_LIMIT {
        return Err(reject(413, "PayloadTooLarge"));
    }
    // A broadcast updates or ends a Live Activity; it cannot start one.
    let event = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("aps")?.get("event")?.as_str().map(str::to_owned));
    if !matches!(event.as_deref(), Some("update" | "end")) {
        return Err(reject(400, "BadRequestPayload"));
    }
    Ok(Broadcast {
        channel,
        priority,
        expiration,
        payload: body,
    })
}
