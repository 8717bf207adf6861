//! Dead letters as operators see them: what one says (reason, detail,
//! attempts, app, first seen, failed at, tokens, a payload summary), which
//! ones a filter selects, counts by reason, app and age, and how they print.
//! Pure: the AMQP shell (`amqp::dlq`) reads the queue and hands in
//! [`RawLetter`]s; `ops` runs the commands.

use crate::bounded;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A header value as the shell read it (other AMQP types are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Text(String),
    Int(i64),
}

/// One message of the dead-letter queue, without AMQP types.
#[derive(Debug, Clone, Default)]
pub struct RawLetter {
    pub message_id: Option<String>,
    pub headers: Vec<(String, HeaderValue)>,
    pub body: Vec<u8>,
}

impl RawLetter {
    fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.header(name)? {
            HeaderValue::Text(t) => Some(bounded::detail(t)),
            HeaderValue::Int(n) => Some(n.to_string()),
        }
    }

    fn count(&self, name: &str) -> Option<u64> {
        match self.header(name)? {
            HeaderValue::Int(n) => u64::try_from(*n).ok(),
            HeaderValue::Text(t) => t.trim().parse().ok(),
        }
    }
}

/// Headers the worker writes on a dead letter (CONTRACT §3).
pub const REASON: &str = "x-misiva-reason";
pub const DETAIL: &str = "x-misiva-detail";
pub const ATTEMPTS: &str = "x-misiva-attempts";
pub const APP: &str = "x-misiva-app";
pub const FIRST_SEEN: &str = "x-misiva-first-seen";
pub const FAILED_AT: &str = "x-misiva-failed-at";
/// `urgent` on a dead letter of the urgent lane (CONTRACT §9).
pub const LANE: &str = "x-misiva-lane";
/// Times the dead letter was replayed before (set by `misiva dlq replay`).
pub const REPLAYED: &str = "x-misiva-replayed";
/// Set by quorum queues: earlier deliveries of this message (reads included).
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// A dead letter, read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Letter {
    /// Its place in the queue when read, from 1 (the oldest).
    pub position: usize,
    pub job_id: Option<String>,
    pub message_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub attempts: Option<u64>,
    pub app: Option<String>,
    /// The lane it came by, `normal` or `urgent`; a replay goes back to it.
    pub lane: &'static str,
    pub first_seen: Option<String>,
    pub failed_at: Option<String>,
    /// Device tokens in the body (`None` when the body is not a job, or is
    /// a channel job).
    pub tokens: Option<usize>,
    /// A channel job's channel (CONTRACT §7).
    pub channel: Option<String>,
    /// The alert's title and body, or the start of the body.
    pub summary: String,
    pub bytes: usize,
    /// Times it was replayed before it came back here.
    pub replayed: u64,
    /// Times the broker delivered it before this read (each read counts).
    pub deliveries: u64,
}

/// The reason of a message in the dead-letter queue without one: something
/// other than the worker put it there.
pub const NO_REASON: &str = "unknown";

impl Letter {
    pub fn read(position: usize, raw: &RawLetter) -> Letter {
        let body: Option<serde_json::Value> = serde_json::from_slice(&raw.body).ok();
        let job_id = body
            .as_ref()
            .and_then(|b| b.get("id"))
            .and_then(|v| v.as_str())
            .map(|id| bounded::cut(id, bounded::SHORT_STRING_BYTES).to_owned())
            .or_else(|| raw.message_id.clone());
        let tokens = body
            .as_ref()
            .and_then(|b| match (b.get("token"), b.get("tokens")) {
                (Some(serde_json::Value::String(_)), None) => Some(1),
                (None, Some(serde_json::Value::Array(list))) => Some(list.len()),
                _ => None,
            });
        let channel = body
            .as_ref()
            .and_then(|b| b.get("channel"))
            .and_then(|v| v.as_str())
            .map(|c| bounded::cut(c, bounded::SHORT_STRING_BYTES).to_owned());
        Letter {
            position,
            channel,
            job_id,
            message_id: raw.message_id.clone(),
            reason: raw.text(REASON).unwrap_or_else(|| NO_REASON.to_owned()),
            detail: raw.text(DETAIL).unwrap_or_default(),
            attempts: raw.count(ATTEMPTS),
            app: raw.text(APP),
            lane: crate::lane::Lane::from_header(&raw.text(LANE).unwrap_or_default()).as_str(),
            first_seen: raw.text(FIRST_SEEN),
            failed_at: raw.text(FAILED_AT),
            tokens,
            summary: summary(body.as_ref(), &raw.body),
            bytes: raw.body.len(),
            replayed: raw.count(REPLAYED).unwrap_or(0),
            deliveries: raw.count(DELIVERY_COUNT).unwrap_or(0),
        }
    }

    /// When it was dead-lettered, if it says.
    pub fn failed_at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(self.failed_at.as_deref()?, &Rfc3339).ok()
    }
}

/// Longest summary, in characters.
const SUMMARY_CHARS: usize = 60;

fn summary(body: Option<&serde_json::Value>, raw: &[u8]) -> String {
    let shorten = |text: &str| -> String {
        let mut out: String = text.chars().take(SUMMARY_CHARS).collect();
        if text.chars().count() > SUMMARY_CHARS {
            out.push('…');
        }
        out.replace(['\n', '\r', '\t'], " ")
    };
    let Some(body) = body else {
        return shorten(&format!(
            "(not JSON) {}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        ));
    };
    let alert = body
        .get("alert")
        .or_else(|| body.get("payload")?.get("aps")?.get("alert"));
    match alert {
        Some(serde_json::Value::String(text)) => shorten(text),
        Some(serde_json::Value::Object(fields)) => {
            let part = |k: &str| fields.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let text = [part("title"), part("body")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            shorten(&text)
        }
        _ => shorten(&String::from_utf8_lossy(&raw[..raw.len().min(200)])),
    }
}

/// Which dead letters a command concerns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub app: Option<String>,
    /// Dead-lettered at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Dead-lettered before this instant.
    pub before: Option<OffsetDateTime>,
    /// The job id or message id.
    pub id: Option<String>,
}

impl Filter {
    pub fn matches(&self, letter: &Letter) -> bool {
        if self.reason.as_ref().is_some_and(|r| *r != letter.reason) {
            return false;
        }
        if self
            .app
            .as_ref()
            .is_some_and(|a| Some(a) != letter.app.as_ref())
        {
            return false;
        }
        if let Some(id) = &self.id
            && letter.job_id.as_ref() != Some(id)
            && letter.message_id.as_ref() != Some(id)
        {
            return false;
        }
        if self.since.is_some() || self.before.is_some() {
            let Some(at) = letter.failed_at() else {
                return false;
            };
            if self.since.is_some_and(|since| at < since) || self.before.is_some_and(|b| at >= b) {
                return false;
            }
        }
        true
    }
}

/// `--since` and `--older-than` accept an RFC 3339 time or a duration back
/// from `now` (`90s`, `15m`, `2h`, `7d`).
pub fn parse_instant(raw: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(at);
    }
    let raw = raw.trim();
    let days = raw
        .strip_suffix('d')
        .and_then(|n| n.parse::<u64>().ok())
        .map(|d| Duration::from_secs(d.saturating_mul(86_400)));
    let ago = days
        .or_else(|| crate::duration::parse_duration(raw))
        .ok_or_else(|| {
            format!(
                "{:?} is neither an RFC 3339 time nor a duration such as 30m, 2h or 7d",
                bounded::cut(raw, 64)
            )
        })?;
    Ok(now - ago)
}

/// Age buckets of `stats`, by time since dead-lettering.
pub const AGE_BUCKETS: [(&str, Duration); 4] = [
    ("under 1h", Duration::from_secs(3600)),
    ("1h to 1d", Duration::from_secs(86_400)),
    ("1d to 7d", Duration::from_secs(7 * 86_400)),
    ("over 7d", Duration::MAX),
];

fn age_bucket(letter: &Letter, now: OffsetDateTime) -> &'static str {
    let Some(at) = letter.failed_at() else {
        return "unknown";
    };
    let age = (now - at).try_into().unwrap_or(Duration::ZERO);
    AGE_BUCKETS
        .iter()
        .find(|(_, limit)| age < *limit)
        .map_or("over 7d", |(name, _)| name)
}

/// Counts of dead letters by reason, app and age.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub total: usize,
    pub by_reason: BTreeMap<String, usize>,
    pub by_app: BTreeMap<String, usize>,
    pub by_age: BTreeMap<String, usize>,
    pub oldest_failed_at: Option<String>,
    pub newest_failed_at: Option<String>,
}

impl Stats {
    pub fn of<'a>(letters: impl IntoIterator<Item = &'a Letter>, now: OffsetDateTime) -> Stats {
        let mut stats = Stats::default();
        let mut oldest: Option<OffsetDateTime> = None;
        let mut newest: Option<OffsetDateTime> = None;
        for letter in letters {
            stats.total += 1;
            *stats.by_reason.entry(letter.reason.clone()).or_default() += 1;
            let app = letter.app.clone().unwrap_or_else(|| "-".into());
            *stats.by_app.entry(app).or_default() += 1;
            *stats
                .by_age
                .entry(age_bucket(letter, now).to_owned())
                .or_default() += 1;
            if let Some(at) = letter.failed_at() {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
                newest = Some(newest.map_or(at, |n| n.max(at)));
            }
        }
        let stamp = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
        stats.oldest_failed_at = stamp(oldest);
        stats.newest_failed_at = stamp(newest);
        stats
    }

    /// The table for people.
    pub fn render(&self, queue: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} dead letters in {queue}", self.total);
        if let (Some(old), Some(new)) = (&self.oldest_failed_at, &self.newest_failed_at) {
            let _ = writeln!(out, "failed between {old} and {new}");
        }
        for (title, counts) in [
            ("reason", &self.by_reason),
            ("app", &self.by_app),
            ("age", &self.by_age),
        ] {
            if counts.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\nby {title}:");
            let width = counts.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            let mut rows: Vec<_> = counts.iter().collect();
            if title == "age" {
                rows.sort_by_key(|(k, _)| {
                    AGE_BUCKETS
                        .iter()
                        .position(|(name, _)| name == k)
                        .unwrap_or(usize::MAX)
                });
            } else {
                rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            }
            for (key, count) in rows {
                let _ = writeln!(out, "  {key:<width$}  {count:>7}");
            }
        }
        out
    }
}

fn cell(text: &str, width: usize) -> String {
    let mut out: String = text.chars().take(width).collect();
    if text.chars().count() > width {
        out.pop();
        out.push('…');
    }
    out
}

/// The `list` table for people: one line per dead letter.
pub fn render_list(letters: &[Letter]) -> String {
    let mut out = format!(
        "{:>5}  {:<20}  {:<22}  {:<10}  {:<6}  {:>3}  {:>6}  {:<24}  {}\n",
        "POS", "FAILED AT", "REASON", "APP", "LANE", "ATT", "TOKENS", "JOB ID", "SUMMARY"
    );
    for l in letters {
        let failed = l
            .failed_at
            .as_deref()
            .map(|t| t.chars().take(19).collect::<String>())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:>5}  {:<20}  {:<22}  {:<10}  {:<6}  {:>3}  {:>6}  {:<24}  {}",
            l.position,
            failed,
            cell(&l.reason, 22),
            cell(l.app.as_deref().unwrap_or("-"), 10),
            l.lane,
            l.attempts.map_or("-".into(), |a| a.to_string()),
            match (&l.channel, l.tokens) {
                (Some(_), _) => "chan".to_owned(),
                (None, tokens) => tokens.map_or("-".into(), |t| t.to_string()),
            },
            cell(l.job_id.as_deref().unwrap_or("-"), 24),
            l.summary
        );
    }
    out
}

/// `show`: every field of one dead letter, the detail in full.
pub fn render_one(l: &Letter) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<u64>| v.map_or("-".into(), |n| n.to_string());
    let mut out = String::new();
    for (name, value) in [
        ("position", l.position.to_string()),
        ("job id", opt(&l.job_id)),
        ("message id", opt(&l.message_id)),
        ("reason", l.reason.clone()),
        ("app", opt(&l.app)),
        ("lane", l.lane.to_owned()),
        ("attempts", num(l.attempts)),
        ("first seen", opt(&l.first_seen)),
        ("failed at", opt(&l.failed_at)),
        ("tokens", l.tokens.map_or("-".into(), |t| t.to_string())),
        ("channel", opt(&l.channel)),
        ("bytes", l.bytes.to_string()),
        ("replayed", l.replayed.to_string()),
        ("reads", l.deliveries.to_string()),
        ("summary", l.summary.clone()),
        ("detail", l.detail.clone()),
    ] {
        let _ = writeln!(out, "{name:>11}: {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(reason: &str, app: &str, failed_at: &str, body: &str) -> RawLetter {
        RawLetter {
            message_id: Some("m-1".into()),
            headers: vec![
                (REASON.into(), HeaderValue::Text(reason.into())),
                (DETAIL.into(), HeaderValue::Text("why".into())),
                (ATTEMPTS.into(), HeaderValue::Int(3)),
                (APP.into(), HeaderValue::Text(app.into())),
                (FAILED_AT.into(), HeaderValue::Text(failed_at.into())),
                (DELIVERY_COUNT.into(), HeaderValue::Int(2)),
            ],
            body: body.as_bytes().to_vec(),
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn a_letter_says_what_its_headers_and_body_say() {
        let cases: &[(&str, Option<&str>, Option<usize>, &str)] = &[
            (
                r#"{"id":"j1","tokens":["aa","bb"],"alert":{"title":"Hi","body":"there"}}"#,
                Some("j1"),
                Some(2),
                "Hi: there",
            ),
            (
                r#"{"token":"aa","payload":{"aps":{"alert":"plain"}}}"#,
                Some("m-1"),
                Some(1),
                "plain",
            ),
            ("{not json", Some("m-1"), None, "(not JSON) {not json"),
            (
                r#"{"id":"j2","token":"aa","alert":"x"}"#,
                Some("j2"),
                Some(1),
                "x",
            ),
        ];
        for (body, id, tokens, summary) in cases {
            let l = Letter::read(4, &raw("bad_topic", "shop", "2026-11-25T10:00:00Z", body));
            assert_eq!(l.job_id.as_deref(), *id, "{body}");
            assert_eq!(l.tokens, *tokens, "{body}");
            assert_eq!(l.summary, *summary, "{body}");
            assert_eq!(l.reason, "bad_topic");
            assert_eq!(l.attempts, Some(3));
            assert_eq!(l.deliveries, 2);
            assert_eq!(l.position, 4);
        }
        let bare = Letter::read(1, &RawLetter::default());
        assert_eq!(bare.reason, NO_REASON);
        assert_eq!(bare.attempts, None);
    }

    #[test]
    fn filters_select_by_reason_app_id_and_time() {
        let now = at("2026-11-25T12:00:00Z");
        let l = Letter::read(1, &raw("poison", "shop", "2026-11-25T10:00:00Z", "{}"));
        let f = |reason: Option<&str>,
                 app: Option<&str>,
                 since: Option<&str>,
                 older: Option<&str>| Filter {
            reason: reason.map(Into::into),
            app: app.map(Into::into),
            since: since.map(|s| parse_instant(s, now).unwrap()),
            before: older.map(|s| parse_instant(s, now).unwrap()),
            id: None,
        };
        let cases = [
            (f(None, None, None, None), true),
            (f(Some("poison"), None, None, None), true),
            (f(Some("invalid_job"), None, None, None), false),
            (f(None, Some("shop"), None, None), true),
            (f(None, Some("other"), None, None), false),
            (f(None, None, Some("3h"), None), true),
            (f(None, None, Some("1h"), None), false),
            (f(None, None, None, Some("1h")), true),
            (f(None, None, None, Some("3h")), false),
            (f(None, None, Some("2026-11-25T10:00:00Z"), None), true),
            (f(None, None, Some("2026-11-25T10:00:01Z"), None), false),
            (
                f(Some("poison"), Some("shop"), Some("1d"), Some("30m")),
                true,
            ),
        ];
        for (i, (filter, expected)) in cases.iter().enumerate() {
            assert_eq!(filter.matches(&l), *expected, "case {i}: {filter:?}");
        }
        let by_id = Filter {
            id: Some("m-1".into()),
            ..Filter::default()
        };
        assert!(by_id.matches(&l));
        // A time filter never matches a letter without a time.
        let timeless = Letter::read(1, &RawLetter::default());
        assert!(!f(None, None, Some("100d"), None).matches(&timeless));
        assert!(parse_instant("yesterday", now).is_err());
        assert_eq!(
            parse_instant("7d", now).unwrap(),
            at("2026-11-18T12:00:00Z")
        );
    }

    #[test]
    fn stats_count_by_reason_app_and_age() {
        let now = at("2026-11-25T12:00:00Z");
        let letters: Vec<Letter> = [
            ("poison", "shop", "2026-11-25T11:30:00Z"),
            ("poison", "news", "2026-11-24T11:30:00Z"),
            ("bad_topic", "shop", "2026-11-20T11:30:00Z"),
            ("bad_topic", "shop", "2026-10-01T00:00:00Z"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (r, a, t))| Letter::read(i + 1, &raw(r, a, t, "{}")))
        .collect();
        let stats = Stats::of(&letters, now);
        assert_eq!(stats.total, 4);
        assert_eq!(stats.by_reason["poison"], 2);
        assert_eq!(stats.by_reason["bad_topic"], 2);
        assert_eq!(stats.by_app["shop"], 3);
        assert_eq!(stats.by_age["under 1h"], 1);
        assert_eq!(stats.by_age["1d to 7d"], 2, "25 hours and 5 days old");
        assert_eq!(stats.by_age["over 7d"], 1);
        assert_eq!(stats.by_age.get("1h to 1d"), None);
        assert_eq!(
            stats.oldest_failed_at.as_deref(),
            Some("2026-10-01T00:00:00Z")
        );
        let table = stats.render("q");
        assert!(table.starts_with("4 dead letters in q\n"), "{table}");
        assert!(render_list(&letters).lines().count() == 5);
    }
}
