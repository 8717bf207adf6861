//! Live Activities, topic suffixes and channel jobs (CONTRACT §7), by table.

use super::*;
use serde_json::{Value, json};

const T1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const NOW: u64 = 1_700_000_000;
const CHANNEL: &str = "dHN0LXNyY2gtY2hubA==";

fn decoded(body: &Value) -> Result<Job, JobError> {
    decode_at(body.to_string().as_bytes(), None, NOW)
}

fn payload(body: Value) -> Value {
    let job = decoded(&body).unwrap_or_else(|e| panic!("{body} rejected: {e}"));
    serde_json::from_slice(&job.payload).unwrap()
}

/// Apple's documented Live Activity payloads ("Starting and updating Live
/// Activities with ActivityKit push notifications"), each made from the
/// convenience field: the job, and the payload Apple shows.
#[test]
fn the_convenience_field_writes_apples_payloads() {
    let cases = [
        // Start, with the attributes only a start has, and an alert.
        (
            json!({"token": T1, "live_activity": {
                "event": "start", "timestamp": 1168364460,
                "content_state": {"currentHealthLevel": 100, "eventDescription": "Adventure has begun!"},
                "attributes_type": "AdventureAttributes",
                "attributes": {"currentHealthLevel": 100, "eventDescription": "Adventure has begun!"}},
                "alert": {"title": "Adventure has begun!", "body": "Power Panda is on its way"},
                "sound": "chime.aiff"}),
            json!({"aps": {
                "timestamp": 1168364460, "event": "start",
                "content-state": {"currentHealthLevel": 100, "eventDescription": "Adventure has begun!"},
                "attributes-type": "AdventureAttributes",
                "attributes": {"currentHealthLevel": 100, "eventDescription": "Adventure has begun!"},
                "alert": {"title": "Adventure has begun!", "body": "Power Panda is on its way"},
                "sound": "chime.aiff"}}),
        ),
        // Update, with a stale date and a relevance score.
        (
            json!({"token": T1, "live_activity": {
                "event": "update", "timestamp": 1168364460, "stale_date": 1168364760,
                "relevance_score": 75.5,
                "content_state": {"currentHealthLevel": 0.941, "eventDescription": "Power Panda found a sword!"}}}),
            json!({"aps": {
                "timestamp": 1168364460, "event": "update", "stale-date": 1168364760,
                "relevance-score": 75.5,
                "content-state": {"currentHealthLevel": 0.941, "eventDescription": "Power Panda found a sword!"}}}),
        ),
        // End, with the final content and a dismissal date.
        (
            json!({"token": T1, "live_activity": {
                "event": "end", "timestamp": 1685952000, "dismissal_date": 1685959200,
                "content_state": {"currentHealthLevel": 23, "eventDescription": "Adventure over!"}}}),
            json!({"aps": {
                "timestamp": 1685952000, "event": "end", "dismissal-date": 1685959200,
                "content-state": {"currentHealthLevel": 23, "eventDescription": "Adventure over!"}}}),
        ),
        // End without content; the timestamp defaults to the build time.
        (
            json!({"token": T1, "live_activity": {"event": "end"}}),
            json!({"aps": {"timestamp": NOW, "event": "end"}}),
        ),
        // A start that asks for an update token, and one that joins a channel.
        (
            json!({"token": T1, "live_activity": {"event": "start", "content_state": {},
                "attributes_type": "A", "attributes": {}, "input_push_token": true}}),
            json!({"aps": {"timestamp": NOW, "event": "start", "content-state": {},
                "attributes-type": "A", "attributes": {}, "input-push-token": 1}}),
        ),
        (
            json!({"token": T1, "live_activity": {"event": "start", "content_state": {},
                "attributes_type": "A", "attributes": {}, "input_push_channel": CHANNEL,
                "input_push_token": false}}),
            json!({"aps": {"timestamp": NOW, "event": "start", "content-state": {},
                "attributes-type": "A", "attributes": {}, "input-push-channel": CHANNEL}}),
        ),
        // A broadcast update, with custom keys beside aps.
        (
            json!({"channel": CHANNEL, "live_activity": {"event": "update",
                "content_state": {"score": "2-1"}}, "data": {"match": 7}}),
            json!({"aps": {"timestamp": NOW, "event": "update",
                "content-state": {"score": "2-1"}}, "match": 7}),
        ),
    ];
    for (job, apple) in cases {
        assert_eq!(payload(job.clone()), apple, "{job}");
    }
}

#[test]
fn a_live_activity_defaults_to_its_push_type() {
    let update = json!({"token": T1, "live_activity": {"event": "update", "content_state": {}}});
    assert_eq!(decoded(&update).unwrap().push_type, PushType::LiveActivity);
    let channel = json!({"channel": CHANNEL, "live_activity": {"event": "end"}});
    let job = decoded(&channel).unwrap();
    assert_eq!(job.push_type, PushType::LiveActivity);
    assert_eq!(job.channel.as_ref().map(ChannelId::as_str), Some(CHANNEL));
    assert!(job.tokens.is_empty());
    // A verbatim payload with its own event may go to a channel too.
    let verbatim = json!({"channel": CHANNEL, "payload": {"aps": {"event": "update", "content-state": {}, "timestamp": 1}}});
    assert!(decoded(&verbatim).is_ok());
}

/// Each invalid combination, and a fragment of its error.
#[test]
fn invalid_combinations_are_refused_before_any_request() {
    let la = |extra: Value| {
        let mut job =
            json!({"token": T1, "live_activity": {"event": "update", "content_state": {}}});
        for (k, v) in extra.as_object().unwrap() {
            job["live_activity"][k] = v.clone();
        }
        job
    };
    let cases = [
        (json!({"token": T1, "live_activity": {}}), "needs `event`"),
        (
            json!({"token": T1, "live_activity": {"event": "pause"}}),
            "expected start, update or end",
        ),
        (
            json!({"token": T1, "live_activity": "update"}),
            "must be an object",
        ),
        (
            json!({"token": T1, "live_activity": {"event": "update"}}),
            "needs `content_state` for an update",
        ),
        (
            json!({"token": T1, "live_activity": {"event": "start", "content_state": {}}}),
            "needs both `attributes_type` and `attributes`",
        ),
        (
            la(json!({"attributes": {}})),
            "only for a start, not for an update",
        ),
        (la(json!({"attributes_type": "A"})), "only for a start"),
        (
            la(json!({"input_push_token": true})),
            "`input_push_token` and `input_push_channel` only for a start",
        ),
        (
            la(json!({"content_state": [1]})),
            "`content_state` must be an object",
        ),
        (
            la(json!({"contentState": {}})),
            "unknown key \"contentState\"",
        ),
        (
            json!({"token": T1, "push_type": "alert", "live_activity": {"event": "end"}}),
            "needs push_type liveactivity",
        ),
        (
            json!({"token": T1, "badge": 1, "live_activity": {"event": "end"}}),
            "cannot be combined with `badge`",
        ),
        (
            json!({"token": T1, "payload": {"aps": {}}, "live_activity": {"event": "end"}}),
            "`live_activity`",
        ),
        // Channel jobs.
        (
            json!({"channel": CHANNEL, "live_activity": {"event": "start", "content_state": {}, "attributes_type": "A", "attributes": {}}}),
            "cannot start a Live Activity",
        ),
        (
            json!({"channel": CHANNEL, "alert": "hi"}),
            "must be a Live Activity update or end",
        ),
        (
            json!({"channel": CHANNEL, "tokens": [T1], "live_activity": {"event": "end"}}),
            "exactly one of `token`, `tokens` and `channel`",
        ),
        (
            json!({"channel": CHANNEL, "token": T1, "live_activity": {"event": "end"}}),
            "exactly one of",
        ),
        (
            json!({"channel": CHANNEL, "collapse_id": "c", "live_activity": {"event": "end"}}),
            "cannot have `collapse_id`",
        ),
        (
            json!({"channel": CHANNEL, "apns_id": "123e4567-e89b-12d3-a456-4266554400a0", "live_activity": {"event": "end"}}),
            "cannot have `apns_id`",
        ),
        (
            json!({"channel": CHANNEL, "push_type": "alert", "payload": {"aps": {"event": "end"}}}),
            "push_type can only be liveactivity",
        ),
        (
            json!({"channel": "", "live_activity": {"event": "end"}}),
            "field `channel`",
        ),
        (
            json!({"channel": "a b", "live_activity": {"event": "end"}}),
            "field `channel`",
        ),
        (
            json!({"channel": "c".repeat(65), "live_activity": {"event": "end"}}),
            "a channel id has 1 to 64",
        ),
    ];
    for (job, fragment) in cases {
        match decoded(&job) {
            Ok(ok) => panic!("{job} accepted as {ok:?}"),
            Err(e) => assert!(
                e.to_string().contains(fragment),
                "{job}: {e:?} lacks {fragment:?}"
            ),
        }
    }
}

#[test]
fn a_broadcast_may_carry_5120_bytes() {
    let fill = |n: usize| json!({"channel": CHANNEL, "live_activity": {"event": "update", "content_state": {"s": "x".repeat(n)}}});
    let size = |n| decoded(&fill(n)).map(|j| j.payload.len());
    let base = size(0).unwrap();
    assert_eq!(size(5120 - base).unwrap(), 5120);
    assert!(matches!(
        decoded(&fill(5121 - base)),
        Err(JobError::PayloadTooLarge { limit: 5120, .. })
    ));
}

/// Every push type's topic, made from the app's bundle id when the job names
/// none: Apple's suffix, never doubled.
#[test]
fn every_push_type_gets_apples_suffix_once() {
    let expected = [
        (PushType::Alert, "com.example.app"),
        (PushType::Background, "com.example.app"),
        (PushType::Voip, "com.example.app.voip"),
        (PushType::Complication, "com.example.app.complication"),
        (
            PushType::FileProvider,
            "com.example.app.pushkit.fileprovider",
        ),
        (PushType::Mdm, "com.example.app"),
        (
            PushType::LiveActivity,
            "com.example.app.push-type.liveactivity",
        ),
        (PushType::Location, "com.example.app.location-query"),
        (PushType::PushToTalk, "com.example.app.voip-ptt"),
        (PushType::Widgets, "com.example.app.push-type.widgets"),
        (PushType::Controls, "com.example.app.push-type.controls"),
    ];
    assert_eq!(expected.len(), PushType::ALL.len());
    let bundle = Topic::parse("com.example.app".into()).unwrap();
    for (push_type, topic) in expected {
        let made = bundle.for_push_type(push_type);
        assert_eq!(made.as_str(), topic, "{push_type}");
        // Already suffixed: kept as it is.
        assert_eq!(made.for_push_type(push_type).as_str(), topic, "{push_type}");
        // And the bundle id comes back from it, for the broadcast path.
        assert_eq!(made.bundle_id(), "com.example.app", "{push_type}");
    }
}
