use super::*;
use serde_json::{Value, json};

const T1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const T2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn ok(body: Value) -> Job {
    decode(body.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{body} rejected: {e}"))
}

fn err(body: &str) -> JobError {
    match decode(body.as_bytes(), None) {
        Ok(job) => panic!("{body} accepted as {job:?}"),
        Err(e) => e,
    }
}

fn payload_of(job: &Job) -> Value {
    serde_json::from_slice(&job.payload).unwrap()
}

#[test]
fn minimal_job_takes_the_defaults() {
    let job = ok(json!({"token": T1, "alert": "hi"}));
    assert_eq!(job.app.as_str(), "default");
    assert_eq!(job.tokens, vec![DeviceToken::parse("token", T1).unwrap()]);
    assert_eq!(job.push_type, PushType::Alert);
    assert_eq!(job.topic, None);
    assert_eq!(job.priority, None);
    assert!(
        uuid::Uuid::parse_str(job.id.as_str()).is_ok(),
        "generated id is a uuid"
    );
    assert_eq!(payload_of(&job), json!({"aps": {"alert": "hi"}}));
}

#[test]
fn every_field_is_read() {
    let job = ok(json!({
        "v": 1, "id": "job-1", "app": "shop_eu", "token": T1.to_uppercase(), "topic": "com.example.app",
        "push_type": "background", "priority": 5, "expiration": 0, "collapse_id": "c1",
        "apns_id": "123e4567-e89b-12d3-a456-4266554400a0", "content_available": true
    }));
    assert_eq!(job.id.as_str(), "job-1");
    assert_eq!(job.app.as_str(), "shop_eu");
    assert_eq!(job.tokens[0].as_str(), T1, "tokens are lower-cased");
    assert_eq!(
        job.topic.as_ref().map(Topic::as_str),
        Some("com.example.app")
    );
    assert_eq!(job.push_type, PushType::Background);
    assert_eq!(job.priority, Some(Priority::ConservePower));
    assert_eq!(job.expiration, Some(0));
    assert_eq!(job.collapse_id.as_ref().map(CollapseId::as_str), Some("c1"));
    assert_eq!(
        job.apns_id.map(ApnsId::to_header).as_deref(),
        Some("123e4567-e89b-12d3-a456-4266554400a0")
    );
    assert_eq!(payload_of(&job), json!({"aps": {"content-available": 1}}));
}

#[test]
fn message_id_is_the_id_unless_the_body_has_one() {
    let body = json!({"token": T1}).to_string();
    assert_eq!(
        decode(body.as_bytes(), Some("m-7")).unwrap().id.as_str(),
        "m-7"
    );
    let body = json!({"id": "b-1", "token": T1}).to_string();
    assert_eq!(
        decode(body.as_bytes(), Some("m-7")).unwrap().id.as_str(),
        "b-1"
    );
}

#[test]
fn every_push_type_and_priority_is_accepted() {
    for p in PushType::ALL {
        let job = ok(json!({"token": T1, "push_type": p.as_str()}));
        assert_eq!(job.push_type, p);
    }
    for (n, p) in [
        (10, Priority::Immediate),
        (5, Priority::ConservePower),
        (1, Priority::Low),
    ] {
        assert_eq!(ok(json!({"token": T1, "priority": n})).priority, Some(p));
    }
}

#[test]
fn fan_out_keeps_order_and_the_limit_is_ten_thousand() {
    let job = ok(json!({"tokens": [T2, T1]}));
    assert_eq!(job.tokens.len(), 2);
    assert_eq!(job.tokens[0].as_str(), T2);
    let many: Vec<String> = (0..MAX_TOKENS).map(|i| format!("{i:064x}")).collect();
    assert_eq!(ok(json!({"tokens": many})).tokens.len(), MAX_TOKENS);
}

#[test]
fn payload_is_sent_verbatim() {
    let body = format!(r#"{{"token":"{T1}","payload":{{"aps":{{"alert":"x"}},  "z":1,"a":[2]}}}}"#);
    let job = decode(body.as_bytes(), None).unwrap();
    assert_eq!(
        &job.payload[..],
        br#"{"aps":{"alert":"x"},  "z":1,"a":[2]}"#
    );
}

#[test]
fn convenience_fields_build_aps() {
    let job = ok(json!({
        "token": T1,
        "alert": {"title": "T", "subtitle": "S", "body": "B", "loc-key": "K", "loc_args": ["a"],
                  "subtitle-loc-key": "SK", "action": "open"},
        "badge": 3, "sound": {"critical": 1, "name": "ping.caf", "volume": 0.5},
        "category": "cat", "thread_id": "th", "mutable_content": true, "content_available": true,
        "data": {"order": 42, "nested": {"x": true}}
    }));
    assert_eq!(
        payload_of(&job),
        json!({
            "aps": {
                "alert": {"title": "T", "subtitle": "S", "body": "B", "loc-key": "K", "loc-args": ["a"],
                          "subtitle-loc-key": "SK", "action": "open"},
                "badge": 3, "sound": {"critical": 1, "name": "ping.caf", "volume": 0.5},
                "category": "cat", "thread-id": "th", "mutable-content": 1, "content-available": 1
            },
            "order": 42, "nested": {"x": true}
        })
    );
    let job = ok(json!({"token": T1, "sound": "default", "badge": 0}));
    assert_eq!(
        payload_of(&job),
        json!({"aps": {"sound": "default", "badge": 0}})
    );
}

#[test]
fn voip_may_use_5120_bytes_and_others_4096() {
    let text = "x".repeat(4200);
    let voip = ok(json!({"token": T1, "push_type": "voip", "data": {"d": text}}));
    assert!(voip.payload.len() > 4096 && voip.payload.len() <= 5120);
    let e = err(&json!({"token": T1, "data": {"d": text}}).to_string());
    assert!(
        matches!(e, JobError::PayloadTooLarge { limit: 4096, .. }),
        "{e}"
    );
    let fits = "x".repeat(4096 - r#"{"aps":{},"d":""}"#.len());
    assert_eq!(
        ok(json!({"token": T1, "data": {"d": fits}})).payload.len(),
        4096
    );
}

/// Each rejected body, and a fragment its error message must contain.
#[test]
fn every_rule_rejects_with_a_clear_error() {
    let long_token = "ab".repeat(101);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not valid JSON"),
        ("[1,2]".into(), "JSON object"),
        (
            format!(r#"{{"token":"{T1}","alrt":"typo"}}"#),
            "unknown field: \"alrt\"",
        ),
        (
            r#"{"alert":"no token"}"#.into(),
            "exactly one of `token`, `tokens` and `channel`",
        ),
        (
            format!(r#"{{"token":"{T1}","tokens":["{T2}"]}}"#),
            "exactly one of",
        ),
        (r#"{"token":"abc"}"#.into(), "even length from 16 to 200"),
        (r#"{"token":"0123456789abcdef0"}"#.into(), "even length"),
        (format!(r#"{{"token":"{long_token}"}}"#), "202 characters"),
        (r#"{"token":"zz23456789abcdef"}"#.into(), "not hexadecimal"),
        (r#"{"token":123}"#.into(), "field `token` must be a string"),
        (r#"{"tokens":[]}"#.into(), "1 to 10000"),
        (
            format!(r#"{{"tokens":["{T1}","{}"]}}"#, T1.to_uppercase()),
            "more than once",
        ),
        (format!(r#"{{"v":2,"token":"{T1}"}}"#), "version 1"),
        (format!(r#"{{"id":"","token":"{T1}"}}"#), "field `id`"),
        (
            format!(r#"{{"id":"{}","token":"{T1}"}}"#, "i".repeat(129)),
            "129 characters",
        ),
        (format!(r#"{{"app":"a.b","token":"{T1}"}}"#), "field `app`"),
        (format!(r#"{{"topic":"","token":"{T1}"}}"#), "field `topic`"),
        (
            format!(r#"{{"topic":"a b","token":"{T1}"}}"#),
            "field `topic`",
        ),
        (
            format!(r#"{{"push_type":"pager","token":"{T1}"}}"#),
            "expected one of alert",
        ),
        (
            format!(r#"{{"priority":7,"token":"{T1}"}}"#),
            "expected 10, 5 or 1",
        ),
        (
            format!(r#"{{"expiration":-1,"token":"{T1}"}}"#),
            "field `expiration`",
        ),
        (
            format!(r#"{{"collapse_id":"{}","token":"{T1}"}}"#, "c".repeat(65)),
            "65 bytes",
        ),
        (
            format!(r#"{{"apns_id":"nope","token":"{T1}"}}"#),
            "expected a UUID",
        ),
        (
            format!(r#"{{"apns_id":"123e4567e89b12d3a4564266554400a0","token":"{T1}"}}"#),
            "expected a UUID",
        ),
        (
            format!(r#"{{"apns_id":"123e4567-e89b-12d3-a456-4266554400a0","tokens":["{T1}"]}}"#),
            "only allowed with a single",
        ),
        (
            format!(r#"{{"token":"{T1}","payload":{{"alert":"x"}}}}"#),
            "`aps` object",
        ),
        (
            format!(r#"{{"token":"{T1}","payload":"x"}}"#),
            "must be a JSON object",
        ),
        (
            format!(r#"{{"token":"{T1}","payload":{{"aps":{{}}}},"alert":"x"}}"#),
            "convenience field `alert`",
        ),
        (
            format!(r#"{{"token":"{T1}","data":{{"aps":{{}}}}}}"#),
            "may not hold `aps`",
        ),
        (
            format!(r#"{{"token":"{T1}","alert":{{"titel":"x"}}}}"#),
            "field `alert`",
        ),
        (format!(r#"{{"token":"{T1}","badge":-1}}"#), "field `badge`"),
        (
            format!(r#"{{"token":"{T1}","content_available":1}}"#),
            "must be a boolean",
        ),
    ];
    for (body, fragment) in cases {
        let message = err(&body).to_string();
        assert!(
            message.contains(fragment),
            "{body}: {message:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn oversized_and_non_utf8_bodies_are_rejected() {
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    assert_eq!(
        decode(&big, None),
        Err(JobError::BodyTooLarge(MAX_BODY_BYTES + 1))
    );
    assert!(matches!(
        decode(&[0xff, 0xfe], None),
        Err(JobError::NotJson(_))
    ));
}

#[test]
fn dead_letter_bodies_keep_only_the_given_tokens() {
    let body = json!({"tokens": [T1, T2], "alert": "x"}).to_string();
    let t2 = DeviceToken::parse("t", T2).unwrap();
    let out: Value = serde_json::from_slice(&body_with_tokens(body.as_bytes(), &[t2])).unwrap();
    assert_eq!(out, json!({"tokens": [T2], "alert": "x"}));
    let single = json!({"token": T1}).to_string();
    assert_eq!(body_with_tokens(single.as_bytes(), &[]), single.as_bytes());
}

/// Everything but the `tokens` value stays byte for byte: key order, spacing,
/// number spellings and a verbatim `payload` (CONTRACT §3).
#[test]
fn republished_bodies_change_only_the_token_list() {
    let t2 = DeviceToken::parse("t", T2).unwrap();
    let body = format!(
        r#"{{ "z":1,"tokens" : ["{T1}", "{T2}"],
  "payload":{{"aps":{{"alert":"x"}},"n":1.50,"big":123456789012345678901234567890,"tokens":["keep"]}} }}"#
    );
    let out = String::from_utf8(body_with_tokens(body.as_bytes(), &[t2])).unwrap();
    let expected = format!(
        r#"{{ "z":1,"tokens" : ["{T2}"],
  "payload":{{"aps":{{"alert":"x"}},"n":1.50,"big":123456789012345678901234567890,"tokens":["keep"]}} }}"#
    );
    assert_eq!(out, expected);
    // Bodies that are not jobs come back unchanged.
    // `[6]` was found by `cargo fuzz run splice`: an array was read as a struct.
    for odd in [
        &b"not json"[..],
        b"[1,2]",
        b"[6]",
        b"{\"tokens\":",
        &[0xff, 0x00],
    ] {
        assert_eq!(body_with_tokens(odd, &[]), odd);
    }
}

#[test]
fn echoed_values_are_bounded() {
    let long = "x".repeat(200_000);
    let cases = [
        format!(r#"{{"{long}":1}}"#),
        format!(r#"{{"token":"{T1}","push_type":"{long}"}}"#),
        format!(r#"{{"token":"{T1}","app":"{long}"}}"#),
        format!(r#"{{"token":"{T1}","apns_id":"{long}"}}"#),
        format!(r#"{{"token":"{T1}","topic":"a b{long}"}}"#),
        format!(r#"{{"token":"zz{long}"}}"#),
        "[".repeat(100_000),
    ];
    for body in cases {
        let error = decode(body.as_bytes(), None).unwrap_err().to_string();
        assert!(
            error.len() <= 600,
            "{} bytes: {}",
            error.len(),
            &error[..200]
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const FIELDS: [&str; 22] = [
        "v",
        "id",
        "app",
        "token",
        "tokens",
        "topic",
        "push_type",
        "priority",
        "expiration",
        "collapse_id",
        "apns_id",
        "payload",
        "alert",
        "badge",
        "sound",
        "category",
        "thread_id",
        "content_available",
        "mutable_content",
        "data",
        "aps",
        "unknown",
    ];

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,80}".prop_map(Value::from),
            "[0-9a-f]{16,70}".prop_map(Value::from),
            Just(Value::from("x".repeat(5_000))),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_job() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            (
                prop_oneof![
                    proptest::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
                    ".{0,300}"
                ],
                any_json(),
            ),
            0..8,
        )
        .prop_map(|fields| {
            let object: serde_json::Map<String, Value> = fields.into_iter().collect();
            Value::Object(object).to_string().into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the body, decoding never panics and its error is short
        /// enough to become a dead letter's detail as is.
        #[test]
        fn decoding_never_panics_and_errors_are_bounded(body in any_job(), message_id in proptest::option::of(".{0,200}")) {
            if let Err(e) = decode(&body, message_id.as_deref()) {
                prop_assert!(e.to_string().len() <= 600, "{} bytes", e.to_string().len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Err(e) = decode(&body, None) {
                prop_assert!(e.to_string().len() <= 600);
            }
        }

        /// A fan-out body keeps every byte but the `tokens` value.
        #[test]
        fn token_splicing_keeps_everything_else(prefix in any_json(), keep in 1usize..3) {
            let list: Vec<String> = (0..3u8).map(|n| format!("{n:02x}").repeat(32)).collect();
            let mut object = serde_json::Map::new();
            object.insert("payload".into(), prefix.clone());
            object.insert("tokens".into(), Value::from(list.clone()));
            let body = Value::Object(object).to_string();
            let tokens: Vec<DeviceToken> = list[..keep].iter().map(|t| DeviceToken::parse("t", t).unwrap()).collect();
            let out = String::from_utf8(body_with_tokens(body.as_bytes(), &tokens)).unwrap();
            let old_list = serde_json::to_string(&list).unwrap();
            let new_list = serde_json::to_string(&list[..keep]).unwrap();
            prop_assert_eq!(out, body.replacen(&old_list, &new_list, 1));
        }
    }
}
