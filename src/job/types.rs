//! Domain types of the job contract. Each is built only through its `parse`, so
//! holding one proves the rule it stands for.

use super::JobError;
use std::fmt;

/// An APNs device token: hexadecimal, even length, 16 to 200 characters.
/// Stored in lower case so that "AB.." and "ab.." are recognised as the same device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, JobError> {
        let len = raw.len();
        if !(16..=200).contains(&len) || !len.is_multiple_of(2) {
            return Err(JobError::field(
                field,
                format!(
                    "has a token of {len} characters; a device token has an even length from 16 to 200"
                ),
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JobError::field(
                field,
                format!(
                    "has a token that is not hexadecimal: {}",
                    crate::bounded::quote(raw)
                ),
            ));
        }
        Ok(DeviceToken(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An `apns-topic`: usually the app's bundle id, with a suffix for some push types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic(String);

impl Topic {
    pub fn parse(raw: String) -> Result<Self, JobError> {
        if raw.is_empty() || raw.len() > 255 {
            return Err(JobError::field("topic", "must hold 1 to 255 characters"));
        }
        // The topic travels as an HTTP header value: no spaces or control characters.
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(JobError::field(
                "topic",
                format!(
                    "{} has characters a bundle id cannot have",
                    crate::bounded::quote(&raw)
                ),
            ));
        }
        Ok(Topic(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The topic a job of `push_type` is sent to when it names none: this
    /// one (the app's bundle id) with the suffix Apple requires for that push
    /// type, unless it already ends with it (CONTRACT §7).
    pub fn for_push_type(&self, push_type: PushType) -> Topic {
        match push_type.topic_suffix() {
            Some(suffix) if !self.0.ends_with(suffix) => Topic(format!("{}{suffix}", self.0)),
            _ => self.clone(),
        }
    }

    /// The bundle id: this topic without any push type's suffix, for the
    /// broadcast path `/4/broadcasts/apps/<bundle id>`.
    pub fn bundle_id(&self) -> &str {
        PushType::ALL
            .iter()
            .filter_map(|p| p.topic_suffix())
            .find_map(|suffix| self.0.strip_suffix(suffix).filter(|b| !b.is_empty()))
            .unwrap_or(&self.0)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `apns-push-type`. Our own enum: `a2` 0.10 lacks complication, widgets and controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushType {
    Alert,
    Background,
    Voip,
    Complication,
    FileProvider,
    Mdm,
    LiveActivity,
    Location,
    PushToTalk,
    Widgets,
    Controls,
}

impl PushType {
    pub const ALL: [PushType; 11] = [
        PushType::Alert,
        PushType::Background,
        PushType::Voip,
        PushType::Complication,
        PushType::FileProvider,
        PushType::Mdm,
        PushType::LiveActivity,
        PushType::Location,
        PushType::PushToTalk,
        PushType::Widgets,
        PushType::Controls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Voip => "voip",
            PushType::Complication => "complication",
            PushType::FileProvider => "fileprovider",
            PushType::Mdm => "mdm",
            PushType::LiveActivity => "liveactivity",
            PushType::Location => "location",
            PushType::PushToTalk => "pushtotalk",
            PushType::Widgets => "widgets",
            PushType::Controls => "controls",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, JobError> {
        PushType::ALL
            .into_iter()
            .find(|p| p.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<_> = PushType::ALL.iter().map(|p| p.as_str()).collect();
                JobError::field(
                    "push_type",
                    format!(
                        "is {}; expected one of {}",
                        crate::bounded::quote(raw),
                        names.join(", ")
                    ),
                )
            })
    }

    /// Its place in [`PushType::ALL`], for tables made per push type.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The suffix Apple requires on the bundle id for this push type's
    /// `apns-topic`; `None` where the bare bundle id is the topic.
    pub fn topic_suffix(self) -> Option<&'static str> {
        match self {
            PushType::Alert | PushType::Background | PushType::Mdm => None,
            PushType::Voip => Some(".voip"),
            PushType::Complication => Some(".complication"),
            PushType::FileProvider => Some(".pushkit.fileprovider"),
            PushType::LiveActivity => Some(".push-type.liveactivity"),
            PushType::Location => Some(".location-query"),
            PushType::PushToTalk => Some(".voip-ptt"),
            PushType::Widgets => Some(".push-type.widgets"),
            PushType::Controls => Some(".push-type.controls"),
        }
    }

    /// APNs' payload limit in bytes: 5120 for VoIP, 4096 for everything else.
    pub fn payload_limit(self) -> usize {
        match self {
            PushType::Voip => 5120,
            _ => 4096,
        }
    }
}

impl fmt::Display for PushType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `apns-priority`. Our own enum: `a2` 0.10 has no priority 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// 10: deliver immediately.
    Immediate,
    /// 5: deliver considering the device's power.
    ConservePower,
    /// 1: prioritise the device's power over all else.
    Low,
}

impl Priority {
    pub fn parse(raw: i64) -> Result<Self, JobError> {
        match raw {
            10 => Ok(Priority::Immediate),
            5 => Ok(Priority::ConservePower),
            1 => Ok(Priority::Low),
            other => Err(JobError::field(
                "priority",
                format!("is {other}; expected 10, 5 or 1"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Immediate => "10",
            Priority::ConservePower => "5",
            Priority::Low => "1",
        }
    }
}

/// The job's id: from the body, else the AMQP `message_id`, else generated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    pub fn parse(raw: String) -> Result<Self, JobError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > 128 {
            return Err(JobError::field(
                "id",
                format!("has {chars} characters; 1 to 128 are allowed"),
            ));
        }
        Ok(JobId(raw))
    }

    pub fn generate() -> Self {
        JobId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The credentials profile a job is sent with. It becomes the first word of the
/// feedback routing key `<app>.<reason>`, so it may not contain dots or wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppName(String);

impl AppName {
    pub fn parse(raw: String) -> Result<Self, JobError> {
        let ok_len = (1..=64).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_len || !ok_chars {
            return Err(JobError::field(
                "app",
                format!(
                    "is {}; use 1 to 64 letters, digits, '_' or '-'",
                    crate::bounded::quote(&raw)
                ),
            ));
        }
        Ok(AppName(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Default for AppName {
    fn default() -> Self {
        AppName("default".to_owned())
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `apns-collapse-id`: at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollapseId(String);

impl CollapseId {
    pub fn parse(raw: String) -> Result<Self, JobError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(JobError::field(
                "collapse_id",
                format!("is {} bytes; 1 to 64 are allowed", raw.len()),
            ));
        }
        if raw.bytes().any(|b| b.is_ascii_control()) {
            return Err(JobError::field("collapse_id", "has control characters"));
        }
        Ok(CollapseId(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `apns-id`: a canonical UUID, 8-4-4-4-12 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApnsId(uuid::Uuid);

impl ApnsId {
    pub fn parse(raw: &str) -> Result<Self, JobError> {
        let canonical = raw.len() == 36
            && raw
                .char_indices()
                .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
        match uuid::Uuid::try_parse(raw) {
            Ok(id) if canonical => Ok(ApnsId(id)),
            _ => Err(JobError::field(
                "apns_id",
                format!(
                    "is {}; expected a UUID like 123e4567-e89b-12d3-a456-4266554400a0",
                    crate::bounded::quote(raw)
                ),
            )),
        }
    }

    /// Lower-case hyphenated form, as APNs echoes it.
    pub fn to_header(self) -> String {
        self.0.hyphenated().to_string()
    }
}

/// A broadcast channel's id, exactly as APNs returned it in `apns-channel-id`
/// (base64 text): 1 to 64 bytes, each a printable character that may travel
/// in a header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelId(String);

impl ChannelId {
    pub fn parse(raw: String) -> Result<Self, JobError> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(JobError::field(
                "channel",
                format!("is {} bytes; a channel id has 1 to 64", raw.len()),
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(JobError::field(
                "channel",
                format!(
                    "is {}; a channel id is printable text without spaces",
                    crate::bounded::quote(&raw)
                ),
            ));
        }
        Ok(ChannelId(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
