//! Building the APNs payload of a job: the verbatim `payload` object, or the
//! convenience fields (`alert`, `badge`, ...) written into `aps`. The
//! convenience payload is written straight to bytes, without a
//! `serde_json::Value` in between (decoding is on every delivery's path);
//! `a2`'s builder is the reference the tests compare it with
//! (`a2_reference` below).

use super::live_activity::{Event, LiveActivity};
use super::{JobError, RawJob, typed};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Largest message body the worker reads (CONTRACT §2).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The alert dictionary, with Apple's key names (snake_case spellings accepted too).
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AlertObject {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtitle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(alias = "launch_image")]
    #[serde(skip_serializing_if = "Option::is_none")]
    launch_image: Option<String>,
    #[serde(alias = "title_loc_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    title_loc_key: Option<String>,
    #[serde(alias = "title_loc_args")]
    #[serde(skip_serializing_if = "Option::is_none")]
    title_loc_args: Option<Vec<String>>,
    #[serde(alias = "subtitle_loc_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    subtitle_loc_key: Option<String>,
    #[serde(alias = "subtitle_loc_args")]
    #[serde(skip_serializing_if = "Option::is_none")]
    subtitle_loc_args: Option<Vec<String>>,
    #[serde(alias = "loc_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    loc_key: Option<String>,
    #[serde(alias = "loc_args")]
    #[serde(skip_serializing_if = "Option::is_none")]
    loc_args: Option<Vec<String>>,
    #[serde(alias = "action_loc_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    action_loc_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AlertField {
    Text(String),
    Object(Box<AlertObject>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SoundObject {
    #[serde(default)]
    critical: CriticalFlag,
    name: Option<String>,
    volume: Option<f64>,
}

/// Apple writes `critical` as 0/1; JSON publishers often write a boolean.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum CriticalFlag {
    #[default]
    Absent,
    Bool(bool),
    Int(u8),
}

impl CriticalFlag {
    fn is_set(&self) -> bool {
        matches!(self, CriticalFlag::Bool(true) | CriticalFlag::Int(1..))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SoundField {
    Name(String),
    Object(SoundObject),
}

/// A job's APNs payload, and the Live Activity event it carries (from
/// `live_activity`, or `aps.event` of a verbatim payload), which decides
/// whether it may go to a channel.
pub(super) struct Built {
    pub bytes: Bytes,
    pub event: Option<Event>,
}

pub(super) fn build(wire: &RawJob<'_>, now: u64) -> Result<Built, JobError> {
    let convenience = [
        ("alert", wire.alert),
        ("badge", wire.badge),
        ("sound", wire.sound),
        ("category", wire.category),
        ("thread_id", wire.thread_id),
        ("content_available", wire.content_available),
        ("mutable_content", wire.mutable_content),
        ("data", wire.data),
        ("live_activity", wire.live_activity),
    ];
    match wire.payload.filter(|raw| raw.get() != "null") {
        Some(raw) => {
            if let Some((name, _)) = convenience.iter().find(|(_, v)| v.is_some()) {
                return Err(JobError::PayloadAndConvenience(name));
            }
            verbatim(raw.get())
        }
        None => convenience_payload(wire, now),
    }
}

fn verbatim(raw: &str) -> Result<Built, JobError> {
    let object: Map<String, Value> = serde_json::from_str(raw)
        .map_err(|_| JobError::field("payload", "must be a JSON object"))?;
    match object.get("aps") {
        Some(Value::Object(aps)) => Ok(Built {
            bytes: Bytes::copy_from_slice(raw.as_bytes()),
            event: aps
                .get("event")
                .and_then(Value::as_str)
                .and_then(Event::parse),
        }),
        _ => Err(JobError::field("payload", "must hold an `aps` object")),
    }
}

fn convenience_payload(wire: &RawJob<'_>, now: u64) -> Result<Built, JobError> {
    let live = wire
        .live_activity
        .filter(|raw| raw.get() != "null")
        .map(|raw| LiveActivity::parse(raw, now))
        .transpose()?;
    if live.is_some() {
        // A Live Activity's `aps` holds its own keys, an alert and a sound:
        // Apple ignores the others there, so they are refused, not dropped.
        let beside = [
            ("badge", wire.badge),
            ("category", wire.category),
            ("thread_id", wire.thread_id),
            ("content_available", wire.content_available),
            ("mutable_content", wire.mutable_content),
        ];
        if let Some((name, _)) = beside.iter().find(|(_, v)| v.is_some()) {
            return Err(JobError::field(
                "live_activity",
                format!(
                    "cannot be combined with `{name}`; only `alert`, `sound` and `data` go beside it"
                ),
            ));
        }
    }
    let alert = text_or(
        "alert",
        wire.alert,
        "a string or an alert object with Apple's keys (title, subtitle, body, loc-key, ...)",
    )?
    .map(|field| match field {
        TextOr::Text(text) => AlertField::Text(text),
        TextOr::Object(object) => AlertField::Object(object),
    });
    let badge = typed::<u32>("badge", wire.badge, "a non-negative integer")?;
    let sound = text_or(
        "sound",
        wire.sound,
        "a sound name or an object {critical, name, volume}",
    )?
    .map(|field| match field {
        TextOr::Text(name) => SoundField::Name(name),
        TextOr::Object(object) => SoundField::Object(*object),
    });
    let category = typed::<String>("category", wire.category, "a string")?;
    let thread_id = typed::<String>("thread_id", wire.thread_id, "a string")?;
    let content_available =
        typed::<bool>("content_available", wire.content_available, "a boolean")?;
    let mutable_content = typed::<bool>("mutable_content", wire.mutable_content, "a boolean")?;
    // Keys in order and each once (the last wins, as in any JSON object
    // reader); the values stay unparsed.
    let data = typed::<BTreeMap<Key<'_>, &RawValue>>("data", wire.data, "a JSON object")?;
    if data
        .as_ref()
        .is_some_and(|d| d.keys().any(|k| k.0 == "aps"))
    {
        return Err(JobError::field(
            "data",
            "may not hold `aps`; use `payload` for a hand-made aps",
        ));
    }

    let aps = Aps {
        alert: alert.as_ref().and_then(AlertOut::of),
        badge,
        sound: match &sound {
            Some(SoundField::Name(name)) => Some(SoundOut::Name(name)),
            // A critical sound is a dictionary; a sound object that is not
            // critical is just its name (its volume only applies to critical ones).
            Some(SoundField::Object(s)) if s.critical.is_set() => Some(SoundOut::Critical {
                critical: 1,
                name: s.name.as_deref(),
                volume: s.volume,
            }),
            Some(SoundField::Object(s)) => s.name.as_deref().map(SoundOut::Name),
            None => None,
        },
        content_available: (content_available == Some(true)).then_some(1),
        category: category.as_deref(),
        mutable_content: (mutable_content == Some(true)).then_some(1),
        thread_id: thread_id.as_deref(),
        live: live.as_ref().map(|(live, _)| live),
    };
    let mut out = Vec::with_capacity(256 + wire.data.map_or(0, |d| d.get().len()));
    out.extend_from_slice(b"{\"aps\":");
    serde_json::to_writer(&mut out, &aps)
        .map_err(|e| JobError::field("alert", format!("could not be serialized: {e}")))?;
    // The custom keys go beside `aps`, each value as the publisher wrote it
    // (numbers keep their spelling), without the whitespace between tokens.
    for (key, value) in data.iter().flatten() {
        out.push(b',');
        serde_json::to_writer(&mut out, &key.0)
            .map_err(|e| JobError::field("data", format!("could not be serialized: {e}")))?;
        out.push(b':');
        minified(value.get(), &mut out);
    }
    out.push(b'}');
    Ok(Built {
        bytes: Bytes::from(out),
        event: live.map(|(_, event)| event),
    })
}

/// A key of `data`, borrowed from the message body unless it has escapes.
#[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// A field that is either a string or an object.
enum TextOr<T> {
    Text(String),
    Object(Box<T>),
}

/// Reads a string-or-object field by its first byte. Cheaper than serde's
/// untagged enums, which buffer the value and build an error for every
/// variant that does not match.
fn text_or<'a, T: Deserialize<'a>>(
    field: &'static str,
    raw: Option<&'a RawValue>,
    expected: &str,
) -> Result<Option<TextOr<T>>, JobError> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Ok(None);
    };
    let parsed = if raw.get().starts_with('"') {
        serde_json::from_str(raw.get()).map(TextOr::Text)
    } else {
        serde_json::from_str(raw.get()).map(TextOr::Object)
    };
    parsed
        .map(Some)
        .map_err(|_| JobError::field(field, format!("must be {expected}")))
}

/// The `aps` dictionary the convenience fields make, with Apple's key names.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<AlertOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<SoundOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_available: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutable_content: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    /// A Live Activity's keys, beside the others in `aps`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    live: Option<&'a LiveActivity>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum AlertOut<'a> {
    /// An alert with only a body is written as a plain string.
    Body(&'a str),
    Dictionary(&'a AlertObject),
}

impl<'a> AlertOut<'a> {
    fn of(alert: &'a AlertField) -> Option<AlertOut<'a>> {
        match alert {
            AlertField::Text(body) => Some(AlertOut::Body(body)),
            AlertField::Object(o) => {
                let only_body = o.title.is_none()
                    && o.subtitle.is_none()
                    && o.launch_image.is_none()
                    && o.title_loc_key.is_none()
                    && o.title_loc_args.is_none()
                    && o.subtitle_loc_key.is_none()
                    && o.subtitle_loc_args.is_none()
                    && o.loc_key.is_none()
                    && o.loc_args.is_none()
                    && o.action_loc_key.is_none()
                    && o.action.is_none();
                match (&o.body, only_body) {
                    (Some(body), true) => Some(AlertOut::Body(body)),
                    (None, true) => None,
                    (_, false) => Some(AlertOut::Dictionary(o)),
                }
            }
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum SoundOut<'a> {
    Name(&'a str),
    Critical {
        critical: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        volume: Option<f64>,
    },
}

/// Appends `json` (valid JSON, as `serde_json` checked it) without the
/// whitespace between its tokens; strings are copied as they are.
pub(super) fn minified(json: &str, out: &mut Vec<u8>) {
    let json = json.trim_matches([' ', '\t', '\n', '\r']);
    // A string, number or literal is one token: there is no whitespace to
    // take out of it (inside a string it is content), so it is one copy, and
    // most `data` values are such tokens.
    if !json.starts_with(['{', '[']) {
        out.extend_from_slice(json.as_bytes());
        return;
    }
    // Runs between whitespace are copied whole: a value without whitespace
    // is one copy.
    let bytes = json.as_bytes();
    let (mut run, mut at, mut in_string) = (0, 0, false);
    while at < bytes.len() {
        match (in_string, bytes[at]) {
            // The escaped byte is skipped with its backslash.
            (true, b'\\') => at += 1,
            (true, b'"') => in_string = false,
            (false, b'"') => in_string = true,
            (false, b' ' | b'\t' | b'\n' | b'\r') => {
                out.extend_from_slice(&bytes[run..at]);
                run = at + 1;
            }
            _ => {}
        }
        at += 1;
    }
    out.extend_from_slice(&bytes[run.min(bytes.len())..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use a2::request::notification::{DefaultNotificationBuilder, NotificationBuilder};
    use proptest::prelude::*;

    /// The convenience payload as `a2`'s builder makes it, plus the keys
    /// a2 0.10 lacks: an independent writer of Apple's format to compare ours
    /// with.
    fn a2_reference(body: &str) -> Value {
        let wire: RawJob<'_> = serde_json::from_str(body).unwrap();
        let alert = typed::<AlertField>("alert", wire.alert, "").unwrap();
        let sound = typed::<SoundField>("sound", wire.sound, "").unwrap();
        let badge = typed::<u32>("badge", wire.badge, "").unwrap();
        let category = typed::<String>("category", wire.category, "").unwrap();
        let thread_id = typed::<String>("thread_id", wire.thread_id, "").unwrap();
        let content_available = typed::<bool>("c", wire.content_available, "").unwrap();
        let mutable_content = typed::<bool>("m", wire.mutable_content, "").unwrap();
        let data = typed::<Map<String, Value>>("data", wire.data, "").unwrap();
        let mut builder = DefaultNotificationBuilder::new();
        let object = match &alert {
            Some(AlertField::Text(body)) => {
                builder = builder.set_body(body);
                None
            }
            Some(AlertField::Object(o)) => Some(o),
            None => None,
        };
        if let Some(o) = object {
            if let Some(v) = &o.title {
                builder = builder.set_title(v);
            }
            if let Some(v) = &o.subtitle {
                builder = builder.set_subtitle(v);
            }
            if let Some(v) = &o.body {
                builder = builder.set_body(v);
            }
            if let Some(v) = &o.launch_image {
                builder = builder.set_launch_image(v);
            }
            if let Some(v) = &o.title_loc_key {
                builder = builder.set_title_loc_key(v);
            }
            if let Some(v) = &o.title_loc_args {
                builder = builder.set_title_loc_args(v);
            }
            if let Some(v) = &o.loc_key {
                builder = builder.set_loc_key(v);
            }
            if let Some(v) = &o.loc_args {
                builder = builder.set_loc_args(v);
            }
            if let Some(v) = &o.action_loc_key {
                builder = builder.set_action_loc_key(v);
            }
        }
        if let Some(badge) = badge {
            builder = builder.set_badge(badge);
        }
        match &sound {
            Some(SoundField::Name(name)) => builder = builder.set_sound(name),
            Some(SoundField::Object(s)) => {
                if let Some(name) = &s.name {
                    builder = builder.set_sound(name);
                }
                builder = builder.set_critical(s.critical.is_set(), s.volume);
            }
            None => {}
        }
        if let Some(category) = &category {
            builder = builder.set_category(category);
        }
        if mutable_content == Some(true) {
            builder = builder.set_mutable_content();
        }
        if content_available == Some(true) {
            builder = builder.set_content_available();
        }
        let mut root = match serde_json::to_value(builder.build("", Default::default())) {
            Ok(Value::Object(root)) => root,
            other => panic!("{other:?}"),
        };
        let Some(Value::Object(aps)) = root.get_mut("aps") else {
            panic!("no aps")
        };
        if aps.get("mutable-content") == Some(&Value::from(0)) {
            aps.remove("mutable-content");
        }
        if let Some(thread_id) = thread_id {
            aps.insert("thread-id".into(), Value::String(thread_id));
        }
        if let Some(o) = object {
            let extra = [
                (
                    "subtitle-loc-key",
                    o.subtitle_loc_key.clone().map(Value::from),
                ),
                (
                    "subtitle-loc-args",
                    o.subtitle_loc_args.clone().map(Value::from),
                ),
                ("action", o.action.clone().map(Value::from)),
            ];
            if extra.iter().any(|(_, v)| v.is_some()) {
                let entry = aps
                    .entry("alert")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::String(body) = entry {
                    let body = std::mem::take(body);
                    *entry =
                        Value::Object(Map::from_iter([("body".to_owned(), Value::String(body))]));
                }
                if let Value::Object(dict) = entry {
                    for (key, value) in extra.into_iter() {
                        if let Some(value) = value {
                            dict.insert(key.to_owned(), value);
                        }
                    }
                }
            }
        }
        if let Some(data) = data {
            root.extend(data);
        }
        Value::Object(root)
    }

    fn written(body: &str) -> Value {
        let wire: RawJob<'_> = serde_json::from_str(body).unwrap();
        let bytes = convenience_payload(&wire, 0).unwrap().bytes;
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_written_payload_is_a2s() {
        let cases = [
            r#"{"alert":"hi"}"#,
            r#"{"alert":{"body":"only a body"}}"#,
            r#"{"alert":{}}"#,
            r#"{"alert":{"title":"t","body":"b"},"badge":3,"sound":"default"}"#,
            r#"{"alert":{"title-loc-key":"K","title-loc-args":["a","b"],"loc-key":"L","loc-args":[]}}"#,
            r#"{"alert":{"subtitle":"s","launch-image":"i.png","action-loc-key":"A"}}"#,
            r#"{"alert":{"body":"b","subtitle-loc-key":"S"}}"#,
            r#"{"alert":{"action":"open"}}"#,
            r#"{"alert":{"subtitle_loc_args":["x"],"title":"t"}}"#,
            r#"{"sound":{"critical":1,"name":"alarm.caf","volume":0.5}}"#,
            r#"{"sound":{"critical":true}}"#,
            r#"{"sound":{"critical":0,"name":"soft.caf","volume":0.5}}"#,
            r#"{"sound":{"volume":1.0}}"#,
            r#"{"content_available":true,"mutable_content":false}"#,
            r#"{"content_available":false,"mutable_content":true,"category":"C","thread_id":"T"}"#,
            r#"{"badge":0,"data":{"z":1,"a":{"n":1.50,"big":123456789012345678901234567890},"s":"é \"q\" \\ x"}}"#,
            r#"{"data":{"k":1,"k":2}}"#,
            r#"{"data":{"k\"e\u0079":1,"ключ":{"x":[1, 2]}}}"#,
            r#"{"data":{}}"#,
            r#"{}"#,
        ];
        for case in cases {
            assert_eq!(written(case), a2_reference(case), "{case}");
        }
    }

    #[test]
    fn alert_and_sound_of_the_wrong_shape_are_named() {
        for (body, field) in [
            (r#"{"alert":5}"#, "alert"),
            (r#"{"alert":["x"]}"#, "alert"),
            (r#"{"alert":{"tittle":"x"}}"#, "alert"),
            (r#"{"sound":5}"#, "sound"),
            (r#"{"sound":{"name":"a","loud":true}}"#, "sound"),
            (r#"{"data":["aps"]}"#, "data"),
            (r#"{"data":{"aps":{}}}"#, "data"),
        ] {
            let wire: RawJob<'_> = serde_json::from_str(body).unwrap();
            match convenience_payload(&wire, 0).map(|b| b.bytes) {
                Err(JobError::Field { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn data_values_keep_their_spelling_without_whitespace() {
        let body = r#"{"data": { "n" : 1.50 , "list" : [ 1 , "a b" , { "x" : null } ] , "big": 123456789012345678901234567890 }}"#;
        let wire: RawJob<'_> = serde_json::from_str(body).unwrap();
        let bytes = convenience_payload(&wire, 0).unwrap().bytes;
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"aps":{},"big":123456789012345678901234567890,"list":[1,"a b",{"x":null}],"n":1.50}"#
        );
    }

    fn maybe(
        key: &'static str,
        value: impl Strategy<Value = String>,
    ) -> impl Strategy<Value = Option<String>> {
        proptest::option::of(value.prop_map(move |v| format!("\"{key}\":{v}")))
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 é\"\\\\]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap())
    }

    fn texts() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z]{0,4}", 0..3)
            .prop_map(|v| serde_json::to_string(&v).unwrap())
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[ a-z\"\\\\\t\n/é]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[ a-z\"]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn minified_values_by_kind() {
        let cases = [
            // Tokens are copied whole, whitespace inside strings included.
            (r#""a  b""#, r#""a  b""#),
            ("1.50", "1.50"),
            ("true", "true"),
            // Whitespace around a value is never part of it.
            (" \n\t\"x\" ", r#""x""#),
            (" { \"k\" : [ 1 , \" s \" ] } ", r#"{"k":[1," s "]}"#),
            ("[ ]", "[]"),
        ];
        for (json, want) in cases {
            let mut out = Vec::new();
            minified(json, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{json:?}");
        }
    }

    proptest! {
        /// Minifying pretty-printed JSON gives its compact form.
        #[test]
        fn minified_is_compact(value in json_value()) {
            let mut out = Vec::new();
            minified(&serde_json::to_string_pretty(&value).unwrap(), &mut out);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&value).unwrap());
        }

        /// Any mix of the convenience fields: the same payload as a2's.
        #[test]
        fn any_convenience_fields_give_a2s_payload(
            alert_keys in proptest::collection::vec(prop_oneof![
                maybe("title", text()), maybe("subtitle", text()), maybe("body", text()),
                maybe("launch-image", text()), maybe("title-loc-key", text()),
                maybe("title-loc-args", texts()), maybe("subtitle-loc-key", text()),
                maybe("subtitle-loc-args", texts()), maybe("loc-key", text()),
                maybe("loc-args", texts()), maybe("action-loc-key", text()), maybe("action", text()),
            ], 0..5),
            alert_text in proptest::option::of(text()),
            badge in proptest::option::of(0u32..100),
            sound in proptest::option::of(prop_oneof![
                text(),
                (proptest::option::of(prop_oneof![Just("true"), Just("false"), Just("0"), Just("1")]),
                 proptest::option::of(text()), proptest::option::of(0.0f64..1.0))
                    .prop_map(|(c, n, v)| {
                        let mut parts = Vec::new();
                        if let Some(c) = c { parts.push(format!("\"critical\":{c}")); }
                        if let Some(n) = n { parts.push(format!("\"name\":{n}")); }
                        if let Some(v) = v { parts.push(format!("\"volume\":{v}")); }
                        format!("{{{}}}", parts.join(","))
                    }),
            ]),
            flags in (proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>())),
            category in proptest::option::of(text()),
            thread_id in proptest::option::of(text()),
            data in proptest::option::of(proptest::collection::btree_map("[a-z]{1,3}", text(), 0..4)),
        ) {
            let mut fields = Vec::new();
            // Distinct alert keys only: a repeated key is not what is tested here.
            let mut seen = std::collections::HashSet::new();
            let keys: Vec<String> = alert_keys.into_iter().flatten()
                .filter(|k| seen.insert(k.split(':').next().unwrap_or_default().to_owned()))
                .collect();
            match alert_text {
                Some(text) if keys.is_empty() => fields.push(format!("\"alert\":{text}")),
                _ if !keys.is_empty() => fields.push(format!("\"alert\":{{{}}}", keys.join(","))),
                _ => {}
            }
            if let Some(b) = badge { fields.push(format!("\"badge\":{b}")); }
            if let Some(s) = sound { fields.push(format!("\"sound\":{s}")); }
            if let Some(c) = flags.0 { fields.push(format!("\"content_available\":{c}")); }
            if let Some(m) = flags.1 { fields.push(format!("\"mutable_content\":{m}")); }
            if let Some(c) = category { fields.push(format!("\"category\":{c}")); }
            if let Some(t) = thread_id { fields.push(format!("\"thread_id\":{t}")); }
            if let Some(d) = data {
                let members: Vec<String> = d.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                fields.push(format!("\"data\":{{{}}}", members.join(" , ")));
            }
            let body = format!("{{{}}}", fields.join(","));
            prop_assert_eq!(written(&body), a2_reference(&body), "{}", body);
        }
    }
}
