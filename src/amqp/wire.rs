//! What goes onto the wire for a settlement, decided without I/O: the feedback
//! events, dead letters and retry of one [`Verdict`], as [`Outgoing`] messages.
//!
//! This is the one place that writes values into AMQP types, and every value
//! is bounded here by construction (CONTRACT §3): short strings are cut to 255
//! bytes on a character boundary, details to 1,024 bytes, and a republish's
//! whole header table is kept under the negotiated frame size. Republished
//! copies carry an allow-list of the original's properties and headers, so a
//! publisher's `CC`, `expiration` or `user_id` can never route, expire or
//! break them.

use super::names::Topology;
use crate::bounded;
use crate::job;
use crate::lane::Lane;
use crate::outcome::{Feedback, Recipient, Verdict};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub(crate) const ATTEMPTS: &str = "x-misiva-attempts";
pub(crate) const FIRST_SEEN: &str = "x-misiva-first-seen";
pub(crate) const APP: &str = "x-misiva-app";
pub(crate) const REASON: &str = "x-misiva-reason";
pub(crate) const DETAIL: &str = "x-misiva-detail";
pub(crate) const FAILED_AT: &str = "x-misiva-failed-at";
pub(crate) const LAST_ERROR: &str = "x-misiva-last-error";
/// On a dead letter of the urgent lane: `urgent` (absent for the normal
/// lane), so that `misiva dlq` shows it and a replay goes back to it.
pub(crate) const LANE: &str = "x-misiva-lane";
/// How many of the original's headers did not fit under the frame size.
pub(crate) const HEADERS_DROPPED: &str = "x-misiva-headers-dropped";
/// Set by quorum queues on redelivery: earlier deliveries of this message.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers the broker interprets or owns: never copied onto a republish.
/// `CC`/`BCC` would route the copy to more queues (a dead letter routed back
/// to the work queue loops forever); the death and delivery counts belong to
/// the message the broker delivered, not to the new one.
const BROKER_HEADERS: [&str; 4] = ["CC", "BCC", "x-death", DELIVERY_COUNT];
const BROKER_PREFIXES: [&str; 2] = ["x-first-death-", "x-last-death-"];

/// Nesting deeper than this in a header value is not copied: it is far past
/// what applications use, and walking it costs stack.
const MAX_HEADER_DEPTH: usize = 8;

/// Room left in a frame for everything but the header table: the frame and
/// content-header framing, and the other properties (seven short strings at
/// most, 255 bytes each).
const FRAME_RESERVE: usize = 4096;

/// The frame size to assume when the broker negotiated none (0 = no limit):
/// RabbitMQ's default.
pub(crate) const DEFAULT_FRAME_MAX: u32 = 131_072;

/// A short string that always fits: cut to 255 bytes on a character boundary.
pub(crate) fn short(text: &str) -> ShortString {
    ShortString::try_new(bounded::cut(text, bounded::SHORT_STRING_BYTES)).unwrap_or_default()
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes()))
}

/// Reads a counter header whatever type the publisher gave it. Negative,
/// fractional and non-numeric values count as absent; huge ones saturate.
pub(crate) fn count_header(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    let value = match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    };
    u64::try_from(value).ok()
}

/// W3C trace context header a publisher may set.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The job's `traceparent`, when it has a valid one (a long or short string).
pub(crate) fn trace_parent(headers: Option<&FieldTable>) -> Option<crate::trace::TraceParent> {
    let text = match headers?.inner().get(TRACEPARENT)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?,
        AMQPValue::ShortString(s) => s.as_str(),
        _ => return None,
    };
    crate::trace::TraceParent::parse(text)
}

/// The encoded size of a field value (type octet excluded), or `None` when it
/// nests deeper than `depth` allows.
fn value_len(value: &AMQPValue, depth: usize) -> Option<usize> {
    Some(match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.len(),
        AMQPValue::ByteArray(b) => 4 + b.len(),
        AMQPValue::Void => 0,
        AMQPValue::FieldArray(items) => {
            let depth = depth.checked_sub(1)?;
            let mut total = 4usize;
            for item in items.as_slice() {
                total = total.saturating_add(1 + value_len(item, depth)?);
            }
            total
        }
        AMQPValue::FieldTable(table) => 4 + table_len(table, depth.checked_sub(1)?)?,
    })
}

/// The encoded size of a table's entries (its length prefix excluded).
fn table_len(table: &FieldTable, depth: usize) -> Option<usize> {
    let mut total = 0usize;
    for (key, value) in table {
        total = total.saturating_add(entry_len(key.as_str(), value, depth)?);
    }
    Some(total)
}

fn entry_len(key: &str, value: &AMQPValue, depth: usize) -> Option<usize> {
    Some(1 + key.len() + 1 + value_len(value, depth)?)
}

/// The encoded size of a whole header table, as a content-header frame carries it.
#[cfg(test)]
pub(crate) fn headers_len(table: &FieldTable) -> usize {
    4 + table_len(table, usize::MAX).unwrap_or(usize::MAX - 4)
}

fn copied_header(key: &str) -> bool {
    !key.starts_with("x-misiva-")
        && !BROKER_HEADERS.contains(&key)
        && !BROKER_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The properties a republished copy keeps (CONTRACT §3), persistent; the
/// message id and headers are the caller's.
fn carried_properties(o: &BasicProperties) -> BasicProperties {
    let mut p = BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = o.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = o.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = o.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = o.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = o.app_id() {
        p = p.with_app_id(v.clone());
    }
    if let Some(v) = o.kind() {
        p = p.with_type(v.clone());
    }
    p
}

/// `ours`, then the original's copied application headers while the whole
/// table fits in a frame; past that the original's are left out and counted
/// in `x-misiva-headers-dropped`.
fn header_table(
    original: Option<&FieldTable>,
    ours: Vec<(&str, AMQPValue)>,
    frame_max: u32,
) -> FieldTable {
    let mut table = FieldTable::default();
    let mut ours_len = 4usize;
    for (key, value) in ours {
        ours_len += entry_len(key, &value, 0).unwrap_or(0);
        table.insert(short(key), value);
    }
    let mut theirs = Vec::new();
    let mut theirs_len = 0usize;
    let mut dropped = 0u64;
    if let Some(original) = original {
        for (key, value) in original {
            if !copied_header(key.as_str()) {
                continue;
            }
            match entry_len(key.as_str(), value, MAX_HEADER_DEPTH) {
                Some(len) => {
                    theirs_len = theirs_len.saturating_add(len);
                    theirs.push((key, value));
                }
                None => dropped += 1,
            }
        }
    }
    let frame = if frame_max == 0 {
        DEFAULT_FRAME_MAX
    } else {
        frame_max
    };
    let budget = (frame as usize).saturating_sub(FRAME_RESERVE);
    // The marker header itself needs room: 1 + 24 + 1 + 8 bytes.
    if ours_len.saturating_add(theirs_len).saturating_add(34) > budget {
        dropped += theirs.len() as u64;
        theirs.clear();
    }
    for (key, value) in theirs {
        table.insert(key.clone(), value.clone());
    }
    if dropped > 0 {
        table.insert(
            short(HEADERS_DROPPED),
            AMQPValue::LongLongInt(i64::try_from(dropped).unwrap_or(i64::MAX)),
        );
    }
    table
}

/// A dead letter published again to its own queue, as it is: body, carried
/// properties and every application header (the `x-misiva-*` ones
/// included), minus what the broker owns, so that its delivery count starts
/// over (see `amqp::dlq`).
pub(crate) fn refreshed(
    original: &BasicProperties,
    body: &[u8],
    queue: &str,
    frame_max: u32,
) -> Outgoing {
    let mut ours: Vec<(&str, AMQPValue)> = Vec::new();
    if let Some(headers) = original.headers() {
        for (key, value) in headers {
            // Ours are small (a detail is at most 1,024 bytes); anything
            // larger under our prefix was not written by the worker.
            let small = entry_len(key.as_str(), value, 0).is_some_and(|len| len <= 1_200);
            if key.as_str().starts_with("x-misiva-") && small {
                ours.push((key.as_str(), value.clone()));
            }
        }
    }
    let mut properties = carried_properties(original);
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    Outgoing {
        exchange: ShortString::default(),
        routing_key: short(queue),
        body: body.to_vec(),
        properties: properties.with_headers(header_table(
            original.headers().as_ref(),
            ours,
            frame_max,
        )),
    }
}

/// Counts the replays of a job (`misiva dlq replay`).
pub(crate) const REPLAYED: &str = "x-misiva-replayed";

/// The copy of a dead letter that `misiva dlq replay` sends back to the work
/// queue: the same body, byte for byte, the carried properties and
/// application headers, no attempt count (the job starts over), its first
/// sighting kept, and `x-misiva-replayed` one more than before.
pub(crate) fn replayed(
    original: &BasicProperties,
    body: &[u8],
    topology: &Topology,
    frame_max: u32,
) -> Outgoing {
    let headers = original.headers().as_ref();
    let before = count_header(headers, REPLAYED).unwrap_or(0);
    let mut ours = vec![(
        REPLAYED,
        AMQPValue::LongLongInt(i64::try_from(before.saturating_add(1)).unwrap_or(i64::MAX)),
    )];
    if let Some(AMQPValue::LongString(seen)) = headers.and_then(|h| h.inner().get(FIRST_SEEN)) {
        let valid = std::str::from_utf8(seen.as_bytes())
            .ok()
            .filter(|t| t.len() <= 64 && OffsetDateTime::parse(t, &Rfc3339).is_ok());
        if let Some(text) = valid {
            ours.push((FIRST_SEEN, long(text)));
        }
    }
    let mut properties = carried_properties(original);
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    // Back to its lane: the urgent queue, or through the shard exchange when
    // there are shards, keyed by the job's message id (or the letter's
    // position in time when it has none).
    let key = original.message_id().as_ref().map_or_else(
        || OffsetDateTime::now_utc().unix_timestamp_nanos().to_string(),
        |id| id.as_str().to_owned(),
    );
    let (exchange, routing_key) = topology.job_destination(lane_of(headers), &key);
    Outgoing {
        exchange,
        routing_key,
        body: body.to_vec(),
        properties: properties.with_headers(header_table(headers, ours, frame_max)),
    }
}

/// The lane a dead letter came from, by its `x-misiva-lane` header.
pub(crate) fn lane_of(headers: Option<&FieldTable>) -> Lane {
    match headers.and_then(|h| h.inner().get(LANE)) {
        Some(AMQPValue::LongString(text)) => {
            Lane::from_header(std::str::from_utf8(text.as_bytes()).unwrap_or_default())
        }
        _ => Lane::Normal,
    }
}

/// Everything one settlement publishes, in order: feedback events, dead
/// letters, the retry. Empty for the common case, a plain ack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Republish<'a> {
    pub topology: &'a Topology,
    /// The lane the delivery came by: its retries go back to it.
    pub lane: Lane,
    pub original: &'a BasicProperties,
    pub body: &'a [u8],
    /// The connection's negotiated frame size (0 = no limit).
    pub frame_max: u32,
    pub now: OffsetDateTime,
}

impl Republish<'_> {
    pub(crate) fn messages(&self, verdict: &Verdict) -> Vec<Outgoing> {
        let settlement = &verdict.settlement;
        let mut out = Vec::new();
        for event in &settlement.feedback {
            out.push(Outgoing {
                exchange: short(&self.topology.feedback_exchange),
                routing_key: short(&format!("{}.{}", verdict.app, event.reason)),
                body: self.feedback_body(event, verdict),
                properties: BasicProperties::default()
                    .with_content_type(short("application/json"))
                    .with_delivery_mode(2),
            });
        }
        if settlement.dead_letters.is_empty() && settlement.retry.is_none() {
            return out;
        }
        let now = self.now.format(&Rfc3339).unwrap_or_default();
        let first_seen = self.first_seen().unwrap_or_else(|| now.clone());
        let stamps = |extra: Vec<(&str, AMQPValue)>| {
            let mut ours = vec![
                (
                    ATTEMPTS,
                    AMQPValue::LongLongInt(i64::from(settlement.attempt)),
                ),
                (FIRST_SEEN, long(&first_seen)),
                (APP, long(bounded::cut(&verdict.app, bounded::QUOTE_CHARS))),
            ];
            ours.extend(extra);
            self.properties(verdict, ours)
        };
        for dead in &settlement.dead_letters {
            out.push(Outgoing {
                exchange: ShortString::default(),
                routing_key: short(&self.topology.dead_letter_queue),
                body: self.body_for(dead.tokens.as_deref()),
                properties: stamps({
                    let mut ours = vec![
                        (
                            REASON,
                            long(bounded::cut(&dead.reason, bounded::QUOTE_CHARS)),
                        ),
                        (DETAIL, long(&bounded::detail(&dead.detail))),
                        (FAILED_AT, long(&now)),
                    ];
                    if self.lane == Lane::Urgent {
                        ours.push((LANE, long(Lane::Urgent.as_str())));
                    }
                    ours
                }),
            });
        }
        if let Some(retry) = &settlement.retry {
            // With shards, the key spreads retries over them as the shard
            // exchange spreads jobs: the job id, or the moment when the job
            // has none.
            let key = verdict
                .job_id
                .clone()
                .unwrap_or_else(|| self.now.unix_timestamp_nanos().to_string());
            let (exchange, routing_key) =
                self.topology.retry_destination(self.lane, retry.tier, &key);
            out.push(Outgoing {
                exchange,
                routing_key,
                body: self.body_for(Some(&retry.tokens)),
                properties: stamps(vec![(LAST_ERROR, long(&bounded::detail(&retry.detail)))]),
            });
        }
        out
    }

    fn body_for(&self, tokens: Option<&[job::DeviceToken]>) -> Vec<u8> {
        match tokens {
            Some(tokens) => job::body_with_tokens(self.body, tokens),
            None => self.body.to_vec(),
        }
    }

    /// The original's first-seen stamp when it is one of ours (an RFC 3339
    /// time); anything else a publisher put there is replaced.
    fn first_seen(&self) -> Option<String> {
        match self.original.headers().as_ref()?.inner().get(FIRST_SEEN)? {
            AMQPValue::LongString(s) if s.len() <= 64 => {
                let text = std::str::from_utf8(s.as_bytes()).ok()?;
                OffsetDateTime::parse(text, &Rfc3339).ok()?;
                Some(text.to_owned())
            }
            _ => None,
        }
    }

    /// The allow-listed properties of the original, persistent, with the
    /// original's application headers and `ours` (which win). When the whole
    /// table would not fit in a frame, the original's headers are left out
    /// and counted in `x-misiva-headers-dropped`.
    fn properties(&self, verdict: &Verdict, ours: Vec<(&str, AMQPValue)>) -> BasicProperties {
        let o = self.original;
        let mut p = carried_properties(o);
        match (o.message_id(), &verdict.job_id) {
            (Some(id), _) => p = p.with_message_id(id.clone()),
            // A generated or body-given id survives the republish as the
            // message id, when it fits in one; the body keeps it either way.
            (None, Some(id)) => {
                if let Ok(id) = ShortString::try_new(id.as_str()) {
                    p = p.with_message_id(id);
                }
            }
            (None, None) => {}
        }
        p.with_headers(header_table(o.headers().as_ref(), ours, self.frame_max))
    }

    fn feedback_body(&self, event: &Feedback, verdict: &Verdict) -> Vec<u8> {
        let timestamp = event.timestamp_ms.unwrap_or_else(|| {
            u64::try_from(self.now.unix_timestamp_nanos() / 1_000_000).unwrap_or_default()
        });
        let body = match &event.recipient {
            Recipient::Token(token) => serde_json::json!({
                "token": token.as_str(),
                "app": verdict.app,
                "topic": verdict.topic.as_deref(),
                "reason": event.reason,
                "timestamp": timestamp,
                "job_id": verdict.job_id,
            }),
            // CONTRACT §7: a channel's event names the channel, not a topic.
            Recipient::Channel(channel) => serde_json::json!({
                "channel": channel.as_str(),
                "app": verdict.app,
                "reason": event.reason,
                "timestamp": timestamp,
                "job_id": verdict.job_id,
            }),
        };
        body.to_string().into_bytes()
    }
}

/// One message of a settlement. Every name in it is a bounded short string.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

#[cfg(test)]
mod tests;
