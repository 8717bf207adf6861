//! The `live_activity` convenience field (CONTRACT §7): the rules of a Live
//! Activity's start, update and end, and the `aps` keys Apple names for them.
//! Every rule is checked here, before any request, so that a job Apple would
//! refuse is dead-lettered as `invalid_job` with a detail that names the rule.

use super::JobError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What a Live Activity push does to the activity (`aps.event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Update,
    End,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Update => "update",
            Event::End => "end",
        }
    }

    pub fn parse(raw: &str) -> Option<Event> {
        [Event::Start, Event::Update, Event::End]
            .into_iter()
            .find(|e| e.as_str() == raw)
    }
}

/// The field as the publisher writes it: snake_case keys, unknown keys refused
/// (a typo must not silently drop a key Apple needs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    event: Option<String>,
    #[serde(borrow, default)]
    content_state: Option<&'a RawValue>,
    timestamp: Option<u64>,
    stale_date: Option<u64>,
    dismissal_date: Option<u64>,
    relevance_score: Option<f64>,
    attributes_type: Option<String>,
    #[serde(borrow, default)]
    attributes: Option<&'a RawValue>,
    input_push_token: Option<bool>,
    input_push_channel: Option<String>,
}

/// The `aps` keys of a Live Activity, with Apple's names, ready to be written
/// beside the alert and sound. Objects are kept as the publisher wrote them,
/// without the whitespace between tokens.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LiveActivity {
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_state: Option<Box<RawValue>>,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_date: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dismissal_date: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relevance_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_push_token: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_push_channel: Option<String>,
}

const FIELD: &str = "live_activity";

fn problem(text: impl Into<String>) -> JobError {
    JobError::field(FIELD, text)
}

impl LiveActivity {
    /// Reads and checks the field. `now` (unix seconds) is the `timestamp`
    /// when the job gives none: Apple ignores an update older than the last
    /// one it showed, so the time the request is built is the right default.
    pub fn parse(raw: &RawValue, now: u64) -> Result<(LiveActivity, Event), JobError> {
        if !raw.get().trim_start().starts_with('{') {
            return Err(problem("must be an object with at least `event`"));
        }
        let fields: Fields<'_> = serde_json::from_str(raw.get()).map_err(|e| {
            let text = e.to_string();
            match text
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
            {
                Some(name) => problem(format!(
                    "has an unknown key {}",
                    crate::bounded::quote(name)
                )),
                None => problem(format!(
                    "is not valid: {}",
                    crate::bounded::cut(&text, crate::bounded::DETAIL_BYTES / 2)
                )),
            }
        })?;
        let event = match fields.event.as_deref() {
            None => return Err(problem("needs `event`: start, update or end")),
            Some(raw) => Event::parse(raw).ok_or_else(|| {
                problem(format!(
                    "has event {}; expected start, update or end",
                    crate::bounded::quote(raw)
                ))
            })?,
        };
        let object = |name: &str, value: Option<&RawValue>| match value {
            Some(v) if !v.get().trim_start().starts_with('{') => {
                Err(problem(format!("`{name}` must be an object")))
            }
            Some(v) => Ok(Some(minified(v))),
            None => Ok(None),
        };
        let content_state = object("content_state", fields.content_state)?;
        if content_state.is_none() && event != Event::End {
            return Err(problem(format!(
                "needs `content_state` for a{} {}",
                if event == Event::Update { "n" } else { "" },
                event.as_str()
            )));
        }
        let attributes = object("attributes", fields.attributes)?;
        match (event, &fields.attributes_type, &attributes) {
            (Event::Start, Some(_), Some(_)) => {}
            (Event::Start, _, _) => {
                return Err(problem(
                    "needs both `attributes_type` and `attributes` for a start",
                ));
            }
            (_, None, None) => {}
            (other, _, _) => {
                return Err(problem(format!(
                    "may have `attributes_type` and `attributes` only for a start, not for an {}",
                    other.as_str()
                )));
            }
        }
        if event != Event::Start
            && (fields.input_push_token.is_some() || fields.input_push_channel.is_some())
        {
            return Err(problem(format!(
                "may have `input_push_token` and `input_push_channel` only for a start, not for an {}",
                event.as_str()
            )));
        }
        if let Some(channel) = &fields.input_push_channel {
            super::ChannelId::parse(channel.clone()).map_err(|_| {
                problem("`input_push_channel` must be a channel id (1 to 64 printable characters)")
            })?;
        }
        if fields.relevance_score.is_some_and(|s| !s.is_finite()) {
            return Err(problem("`relevance_score` must be a number"));
        }
        Ok((
            LiveActivity {
                event: event.as_str(),
                content_state,
                timestamp: fields.timestamp.unwrap_or(now),
                stale_date: fields.stale_date,
                dismissal_date: fields.dismissal_date,
                relevance_score: fields.relevance_score,
                attributes_type: fields.attributes_type,
                attributes,
                input_push_token: (fields.input_push_token == Some(true)).then_some(1),
                input_push_channel: fields.input_push_channel,
            },
            event,
        ))
    }
}

/// The object without the whitespace between its tokens, as raw JSON again.
fn minified(raw: &RawValue) -> Box<RawValue> {
    let mut out = Vec::with_capacity(raw.get().len());
    super::payload::minified(raw.get(), &mut out);
    // Minifying valid JSON leaves valid JSON; the original is the fallback
    // all the same, so that this can never fail.
    String::from_utf8(out)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .unwrap_or_else(|| raw.to_owned())
}
