//! Building the APNs payload of a job: the verbatim `payload` object, or the
//! convenience fields (`alert`, `badge`, ...) built into `aps` with `a2`'s builder.

use super::{JobError, Wire, typed};
use a2::request::notification::{DefaultNotificationBuilder, NotificationBuilder};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest message body the worker reads (CONTRACT §2).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The alert dictionary, with Apple's key names (snake_case spellings accepted too).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AlertObject {
    title: Option<String>,
    subtitle: Option<String>,
    body: Option<String>,
    #[serde(alias = "launch_image")]
    launch_image: Option<String>,
    #[serde(alias = "title_loc_key")]
    title_loc_key: Option<String>,
    #[serde(alias = "title_loc_args")]
    title_loc_args: Option<Vec<String>>,
    #[serde(alias = "subtitle_loc_key")]
    subtitle_loc_key: Option<String>,
    #[serde(alias = "subtitle_loc_args")]
    subtitle_loc_args: Option<Vec<String>>,
    #[serde(alias = "loc_key")]
    loc_key: Option<String>,
    #[serde(alias = "loc_args")]
    loc_args: Option<Vec<String>>,
    #[serde(alias = "action_loc_key")]
    action_loc_key: Option<String>,
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

pub(super) fn build(wire: &Wire<'_>) -> Result<Bytes, JobError> {
    let convenience = [
        ("alert", wire.alert),
        ("badge", wire.badge),
        ("sound", wire.sound),
        ("category", wire.category),
        ("thread_id", wire.thread_id),
        ("content_available", wire.content_available),
        ("mutable_content", wire.mutable_content),
        ("data", wire.data),
    ];
    match wire.payload.filter(|raw| raw.get() != "null") {
        Some(raw) => {
            if let Some((name, _)) = convenience.iter().find(|(_, v)| v.is_some()) {
                return Err(JobError::PayloadAndConvenience(name));
            }
            verbatim(raw.get())
        }
        None => convenience_payload(wire),
    }
}

fn verbatim(raw: &str) -> Result<Bytes, JobError> {
    let object: Map<String, Value> = serde_json::from_str(raw)
        .map_err(|_| JobError::field("payload", "must be a JSON object"))?;
    match object.get("aps") {
        Some(Value::Object(_)) => Ok(Bytes::copy_from_slice(raw.as_bytes())),
        _ => Err(JobError::field("payload", "must hold an `aps` object")),
    }
}

fn convenience_payload(wire: &Wire<'_>) -> Result<Bytes, JobError> {
    let alert = typed::<AlertField>(
        "alert",
        wire.alert,
        "a string or an alert object with Apple's keys (title, subtitle, body, loc-key, ...)",
    )?;
    let badge = typed::<u32>("badge", wire.badge, "a non-negative integer")?;
    let sound = typed::<SoundField>(
        "sound",
        wire.sound,
        "a sound name or an object {critical, name, volume}",
    )?;
    let category = typed::<String>("category", wire.category, "a string")?;
    let thread_id = typed::<String>("thread_id", wire.thread_id, "a string")?;
    let content_available =
        typed::<bool>("content_available", wire.content_available, "a boolean")?;
    let mutable_content = typed::<bool>("mutable_content", wire.mutable_content, "a boolean")?;
    let data = typed::<Map<String, Value>>("data", wire.data, "a JSON object")?;
    if data.as_ref().is_some_and(|d| d.contains_key("aps")) {
        return Err(JobError::field(
            "data",
            "may not hold `aps`; use `payload` for a hand-made aps",
        ));
    }

    // a2 models the classic alert, badge, sound, category and the two flags.
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
        _ => return Err(JobError::field("alert", "could not be serialized")),
    };
    let Some(Value::Object(aps)) = root.get_mut("aps") else {
        return Err(JobError::field("alert", "could not be serialized"));
    };
    // a2 always writes `"mutable-content": 0`; the device treats absent as 0, so
    // we drop it to send exactly what the publisher asked for.
    if aps.get("mutable-content") == Some(&Value::from(0)) {
        aps.remove("mutable-content");
    }
    // What a2 0.10 lacks: thread-id, the subtitle loc keys and the alert's `action`.
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
            // A body-only alert was written as a string; widen it to a dictionary.
            if let Value::String(body) = entry {
                let body = std::mem::take(body);
                *entry = Value::Object(Map::from_iter([("body".to_owned(), Value::String(body))]));
            }
            if let Value::Object(dict) = entry {
                for (key, value) in extra {
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
    serde_json::to_vec(&root)
        .map(Bytes::from)
        .map_err(|e| JobError::field("data", format!("could not be serialized: {e}")))
}
