//! The job contract, version 1 (CONTRACT §2): decoding an AMQP message body into
//! a [`Job`] whose every field already satisfies the contract's rules.
//!
//! This module does no I/O. A `Job` can only be built by [`decode`], so code that
//! holds one never re-checks a token, a topic or the payload size.

mod live_activity;
mod payload;
mod types;

pub use live_activity::Event;
pub use payload::MAX_BODY_BYTES;
pub use types::{
    ApnsId, AppName, ChannelId, CollapseId, DeviceToken, JobId, Priority, PushType, Topic,
};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;

/// Most tokens one job may carry (CONTRACT §2, `tokens`).
pub const MAX_TOKENS: usize = 10_000;

/// A push job that passed every rule of the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub app: AppName,
    /// Distinct device tokens, in the order the publisher gave them; empty
    /// for a channel job.
    pub tokens: Vec<DeviceToken>,
    /// The broadcast channel of a channel job (CONTRACT §7), which names no
    /// token: one request to the channel reaches its subscribers.
    pub channel: Option<ChannelId>,
    /// `None` means "the app's configured default topic".
    pub topic: Option<Topic>,
    pub push_type: PushType,
    pub priority: Option<Priority>,
    pub expiration: Option<u64>,
    pub collapse_id: Option<CollapseId>,
    pub apns_id: Option<ApnsId>,
    /// The serialized APNs payload, shared by every token's request.
    pub payload: Bytes,
}

/// Why a message body is not a valid job. Each variant names the rule it broke;
/// the `Display` text becomes the dead letter's `x-misiva-detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job body is {0} bytes; the limit is 1 MiB")]
    BodyTooLarge(usize),
    #[error("job body is not valid JSON: {0}")]
    NotJson(String),
    #[error("job has an unknown field: {0}")]
    UnknownField(String),
    #[error("field `{field}` {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("exactly one of `token`, `tokens` and `channel` is required")]
    TokenCount,
    #[error("a channel job {0}")]
    Channel(&'static str),
    #[error("`payload` cannot be combined with the convenience field `{0}`")]
    PayloadAndConvenience(&'static str),
    #[error("`apns_id` is only allowed with a single `token`")]
    ApnsIdWithTokens,
    #[error("the APNs payload is {size} bytes; the limit for push type {push_type} is {limit}")]
    PayloadTooLarge {
        size: usize,
        limit: usize,
        push_type: PushType,
    },
}

impl JobError {
    pub(crate) fn field(field: &'static str, problem: impl Into<String>) -> Self {
        JobError::Field {
            field,
            problem: problem.into(),
        }
    }
}

/// The wire shape: every field kept as raw JSON so that each rule can give its
/// own error, and `payload` can be sent byte for byte as the publisher wrote it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob<'a> {
    #[serde(borrow, default)]
    v: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    app: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default)]
    push_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    priority: Option<&'a RawValue>,
    #[serde(borrow, default)]
    expiration: Option<&'a RawValue>,
    #[serde(borrow, default)]
    collapse_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    apns_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    alert: Option<&'a RawValue>,
    #[serde(borrow, default)]
    badge: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sound: Option<&'a RawValue>,
    #[serde(borrow, default)]
    category: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thread_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content_available: Option<&'a RawValue>,
    #[serde(borrow, default)]
    mutable_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    live_activity: Option<&'a RawValue>,
}

/// Reads one field's raw JSON as `T`, naming the field when it has the wrong type.
fn typed<'a, T: Deserialize<'a>>(
    field: &'static str,
    raw: Option<&'a RawValue>,
    expected: &str,
) -> Result<Option<T>, JobError> {
    match raw {
        // An explicit `null` counts as absent, as most JSON publishers expect.
        Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| JobError::field(field, format!("must be {expected}"))),
        _ => Ok(None),
    }
}

/// Decodes and validates one message body. `message_id` is the AMQP property,
/// which becomes the job id when the body has none.
pub fn decode(body: &[u8], message_id: Option<&str>) -> Result<Job, JobError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    decode_at(body, message_id, now)
}

/// [`decode`] at `now` (unix seconds): a Live Activity's default `timestamp`.
pub fn decode_at(body: &[u8], message_id: Option<&str>, now: u64) -> Result<Job, JobError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(JobError::BodyTooLarge(body.len()));
    }
    let text =
        std::str::from_utf8(body).map_err(|e| JobError::NotJson(format!("not UTF-8 ({e})")))?;
    // serde would also read a struct from a JSON array, positionally; a job is an object.
    if !text.trim_start().starts_with('{') {
        return Err(JobError::NotJson(
            "the body must be a JSON object".to_owned(),
        ));
    }
    let wire: RawJob<'_> = serde_json::from_str(text).map_err(wire_error)?;

    if let Some(v) = typed::<u64>("v", wire.v, "the integer 1")?
        && v != 1
    {
        return Err(JobError::field(
            "v",
            format!("is {v}; this worker reads version 1"),
        ));
    }
    let id = match typed::<String>("id", wire.id, "a string")? {
        Some(id) => JobId::parse(id)?,
        None => match message_id.filter(|m| !m.is_empty()) {
            Some(m) => JobId::parse(m.to_owned())?,
            None => JobId::generate(),
        },
    };
    let app = match typed::<String>("app", wire.app, "a string")? {
        Some(app) => AppName::parse(app)?,
        None => AppName::default(),
    };
    let (tokens, channel) = match (
        typed::<String>("token", wire.token, "a string")?,
        typed::<Vec<String>>("tokens", wire.tokens, "an array of strings")?,
        typed::<String>("channel", wire.channel, "a string")?,
    ) {
        (Some(token), None, None) => (vec![DeviceToken::parse("token", &token)?], None),
        (None, Some(list), None) => (parse_tokens(&list)?, None),
        (None, None, Some(channel)) => (Vec::new(), Some(ChannelId::parse(channel)?)),
        _ => return Err(JobError::TokenCount),
    };
    let live_activity = wire.live_activity.is_some_and(|raw| raw.get() != "null");
    let topic = typed::<String>("topic", wire.topic, "a string")?
        .map(Topic::parse)
        .transpose()?;
    let push_type = typed::<String>("push_type", wire.push_type, "a string")?
        .map(|p| PushType::parse(&p))
        .transpose()?
        // A Live Activity, or a broadcast (which is always one), unless the
        // job says otherwise, which the rules below then refuse.
        .unwrap_or(if live_activity || channel.is_some() {
            PushType::LiveActivity
        } else {
            PushType::Alert
        });
    if live_activity && push_type != PushType::LiveActivity {
        return Err(JobError::field(
            "live_activity",
            format!("needs push_type liveactivity, not {push_type}"),
        ));
    }
    let priority = typed::<i64>("priority", wire.priority, "an integer")?
        .map(Priority::parse)
        .transpose()?;
    let expiration = typed::<u64>(
        "expiration",
        wire.expiration,
        "a non-negative integer (unix seconds)",
    )?;
    let collapse_id = typed::<String>("collapse_id", wire.collapse_id, "a string")?
        .map(CollapseId::parse)
        .transpose()?;
    let apns_id = typed::<String>("apns_id", wire.apns_id, "a string")?
        .map(|s| ApnsId::parse(&s))
        .transpose()?;
    if apns_id.is_some() && wire.tokens.is_some() {
        return Err(JobError::ApnsIdWithTokens);
    }

    let built = payload::build(&wire, now)?;
    let payload = built.bytes;
    let limit = match &channel {
        Some(_) => {
            channel_rules(push_type, &collapse_id, apns_id.is_some(), built.event)?;
            BROADCAST_PAYLOAD_LIMIT
        }
        None => push_type.payload_limit(),
    };
    if payload.len() > limit {
        return Err(JobError::PayloadTooLarge {
            size: payload.len(),
            limit,
            push_type,
        });
    }

    Ok(Job {
        id,
        app,
        tokens,
        channel,
        topic,
        push_type,
        priority,
        expiration,
        collapse_id,
        apns_id,
        payload,
    })
}

/// APNs' payload limit for a broadcast (CONTRACT §7).
pub const BROADCAST_PAYLOAD_LIMIT: usize = 5120;

/// What a channel job must be: a Live Activity update or end, with no
/// header that only a device push has (CONTRACT §7).
fn channel_rules(
    push_type: PushType,
    collapse_id: &Option<CollapseId>,
    apns_id: bool,
    event: Option<Event>,
) -> Result<(), JobError> {
    if push_type != PushType::LiveActivity {
        return Err(JobError::Channel(
            "is a Live Activity broadcast: its push_type can only be liveactivity",
        ));
    }
    if collapse_id.is_some() {
        return Err(JobError::Channel(
            "cannot have `collapse_id`: APNs does not collapse broadcasts",
        ));
    }
    if apns_id {
        return Err(JobError::Channel(
            "cannot have `apns_id`: it is only allowed with a single `token`",
        ));
    }
    match event {
        Some(Event::Update | Event::End) => Ok(()),
        Some(Event::Start) => Err(JobError::Channel(
            "cannot start a Live Activity: a broadcast may only update or end one",
        )),
        None => Err(JobError::Channel(
            "must be a Live Activity update or end: give `live_activity` with event update or end (or `aps.event` in `payload`)",
        )),
    }
}

/// The body of a dead letter or retry that carries only `tokens` of the job.
/// Only the value of a fan-out job's top-level `tokens` is replaced, in the
/// original text: every other byte, a verbatim `payload` included, stays as
/// the publisher wrote it (CONTRACT §3). A single-token job, or a body that is
/// not a job object, is returned unchanged.
pub fn body_with_tokens(body: &[u8], tokens: &[DeviceToken]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct TokensOnly<'a> {
        #[serde(borrow, default)]
        tokens: Option<&'a RawValue>,
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return body.to_vec();
    };
    // serde reads a struct from a JSON array too, positionally: `[6]` would
    // have its `6` taken for `tokens`. Only an object is a job.
    if !text.trim_start().starts_with('{') {
        return body.to_vec();
    }
    let Ok(TokensOnly { tokens: Some(raw) }) = serde_json::from_str::<TokensOnly<'_>>(text) else {
        return body.to_vec();
    };
    // A borrowed RawValue is a slice of `text`: its address gives its place.
    let Some(start) = (raw.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize) else {
        return body.to_vec();
    };
    let end = start + raw.get().len();
    let list: Vec<&str> = tokens.iter().map(DeviceToken::as_str).collect();
    let Ok(replacement) = serde_json::to_string(&list) else {
        return body.to_vec();
    };
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(replacement.as_bytes());
    out.extend_from_slice(&body[end..]);
    out
}

fn wire_error(e: serde_json::Error) -> JobError {
    let text = e.to_string();
    // serde reports unknown fields as "unknown field `x`, expected one of ...";
    // the field name alone is what a publisher needs to fix a typo.
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        // The name is the publisher's text: quoted and shortened, never echoed whole.
        return JobError::UnknownField(crate::bounded::quote(&rest[..end]));
    }
    JobError::NotJson(crate::bounded::cut(&text, crate::bounded::DETAIL_BYTES / 2).to_owned())
}

fn parse_tokens(list: &[String]) -> Result<Vec<DeviceToken>, JobError> {
    if list.is_empty() || list.len() > MAX_TOKENS {
        return Err(JobError::field(
            "tokens",
            format!("holds {} tokens; 1 to {MAX_TOKENS} are allowed", list.len()),
        ));
    }
    let mut seen = HashSet::with_capacity(list.len());
    let mut tokens = Vec::with_capacity(list.len());
    for raw in list {
        let token = DeviceToken::parse("tokens", raw)?;
        if !seen.insert(token.clone()) {
            return Err(JobError::field(
                "tokens",
                format!("lists {} more than once", token.as_str()),
            ));
        }
        tokens.push(token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_live;
