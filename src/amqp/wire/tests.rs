use super::*;
use crate::job::DeviceToken;
use crate::lane::Lane;
use crate::outcome::{self, DeadLetter, Retry, Settlement};
use proptest::prelude::*;
use std::time::Duration;

fn topology() -> Topology {
    Topology {
        queue: "misiva.jobs".into(),
        shards: vec!["misiva.jobs".into()],
        shard_exchange: None,
        retry_queues: vec![
            ("misiva.jobs.retry.1s".into(), Duration::from_secs(1)),
            ("misiva.jobs.retry.5s".into(), Duration::from_secs(5)),
        ],
        retry_exchange: None,
        urgent_queue: "misiva.jobs.urgent".into(),
        urgent_retry_queues: vec![
            ("misiva.jobs.urgent.retry.1s".into(), Duration::from_secs(1)),
            ("misiva.jobs.urgent.retry.5s".into(), Duration::from_secs(5)),
        ],
        dead_letter_queue: "misiva.jobs.dead".into(),
        feedback_exchange: "misiva.feedback".into(),
        feedback_queue: "misiva.feedback".into(),
    }
}

/// The same with three shards (CONTRACT §6).
fn sharded() -> Topology {
    Topology {
        shards: vec![
            "misiva.jobs".into(),
            "misiva.jobs.1".into(),
            "misiva.jobs.2".into(),
        ],
        shard_exchange: Some("misiva.jobs.shards".into()),
        retry_queues: vec![
            ("misiva.jobs.shards.retry.1s".into(), Duration::from_secs(1)),
            ("misiva.jobs.shards.retry.5s".into(), Duration::from_secs(5)),
        ],
        retry_exchange: Some("misiva.jobs.shards.retry".into()),
        ..topology()
    }
}

/// Where retries and replays go, with and without shards: (topology, tier,
/// job id, exchange, routing key).
#[test]
fn retries_and_replays_go_through_the_shard_exchange_when_there_is_one() {
    let retry = |tier: usize| Settlement {
        attempt: 2,
        retry: Some(Retry {
            tokens: vec![token(1)],
            tier,
            detail: "503".into(),
        }),
        ..Settlement::default()
    };
    let body = format!(r#"{{"token":"{}","alert":"x"}}"#, token(1).as_str());
    let normal = Lane::Normal;
    let urgent = Lane::Urgent;
    let cases = [
        (
            topology(),
            normal,
            0,
            Some("j-1"),
            "",
            "misiva.jobs.retry.1s",
        ),
        (
            topology(),
            normal,
            7,
            Some("j-1"),
            "",
            "misiva.jobs.retry.5s",
        ),
        (
            sharded(),
            normal,
            0,
            Some("j-1"),
            "misiva.jobs.shards.retry",
            "misiva.jobs.shards.retry.1s.j-1",
        ),
        (
            sharded(),
            normal,
            7,
            Some("j-2"),
            "misiva.jobs.shards.retry",
            "misiva.jobs.shards.retry.5s.j-2",
        ),
        // The urgent lane's retries go to its own tiers, shards or not.
        (
            topology(),
            urgent,
            0,
            Some("j-3"),
            "",
            "misiva.jobs.urgent.retry.1s",
        ),
        (
            sharded(),
            urgent,
            9,
            Some("j-3"),
            "",
            "misiva.jobs.urgent.retry.5s",
        ),
    ];
    for (topology, lane, tier, id, exchange, key) in cases {
        let verdict = verdict(retry(tier), id.map(str::to_owned));
        let out = Republish {
            lane,
            topology: &topology,
            original: &BasicProperties::default(),
            body: body.as_bytes(),
            frame_max: 0,
            now: OffsetDateTime::UNIX_EPOCH,
        }
        .messages(&verdict);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].exchange.as_str(), exchange, "{key}");
        assert_eq!(out[0].routing_key.as_str(), key);
    }
    // Without a job id, retries still get keys that differ from job to job.
    let keyless = |nanos: i128| {
        let topology = sharded();
        Republish {
            lane: Lane::Normal,
            topology: &topology,
            original: &BasicProperties::default(),
            body: body.as_bytes(),
            frame_max: 0,
            now: OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap(),
        }
        .messages(&verdict(retry(0), None))[0]
            .routing_key
            .clone()
    };
    assert_ne!(keyless(1), keyless(2));

    let with_id = BasicProperties::default().with_message_id("m-9".into());
    let replay = replayed(&with_id, body.as_bytes(), &sharded(), 0);
    assert_eq!(replay.exchange.as_str(), "misiva.jobs.shards");
    assert_eq!(replay.routing_key.as_str(), "m-9");
    let replay = replayed(&with_id, body.as_bytes(), &topology(), 0);
    assert_eq!(replay.exchange.as_str(), "");
    assert_eq!(replay.routing_key.as_str(), "misiva.jobs");
    // A dead letter of the urgent lane goes back to it, shards or not.
    let mut headers = FieldTable::default();
    headers.insert(short(LANE), long("urgent"));
    let urgent_letter = with_id.clone().with_headers(headers);
    for topology in [topology(), sharded()] {
        let replay = replayed(&urgent_letter, body.as_bytes(), &topology, 0);
        assert_eq!(replay.exchange.as_str(), "");
        assert_eq!(replay.routing_key.as_str(), "misiva.jobs.urgent");
    }
}

/// Dead letters of the urgent lane say so; those of the normal lane carry
/// no lane header (as before the lane existed).
#[test]
fn urgent_dead_letters_carry_their_lane() {
    let body = format!(r#"{{"token":"{}","alert":"x"}}"#, token(1).as_str());
    for (lane, header_value) in [(Lane::Urgent, Some(long("urgent"))), (Lane::Normal, None)] {
        let topology = topology();
        let out = Republish {
            topology: &topology,
            lane,
            original: &BasicProperties::default(),
            body: body.as_bytes(),
            frame_max: 0,
            now: OffsetDateTime::UNIX_EPOCH,
        }
        .messages(&verdict(dead("bad".into()), Some("j".into())));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].routing_key.as_str(), "misiva.jobs.dead");
        assert_eq!(header(&out[0].properties, LANE), header_value.as_ref());
    }
}

fn token(n: u8) -> DeviceToken {
    DeviceToken::parse("token", &format!("{n:02x}").repeat(32)).unwrap()
}

fn verdict(settlement: Settlement, job_id: Option<String>) -> Verdict {
    Verdict {
        settlement,
        app: "default".into(),
        job_id,
        topic: None,
        delivered: 0,
    }
}

fn dead(detail: String) -> Settlement {
    outcome::reject_job(1, outcome::INVALID_JOB, detail)
}

/// The messages of `verdict` for a delivery with `original` properties and `body`.
fn messages(original: &BasicProperties, body: &[u8], verdict: &Verdict) -> Vec<Outgoing> {
    Republish {
        lane: Lane::Normal,
        topology: &topology(),
        original,
        body,
        frame_max: DEFAULT_FRAME_MAX,
        now: OffsetDateTime::UNIX_EPOCH,
    }
    .messages(verdict)
}

fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    p.headers().as_ref()?.inner().get(name)
}

fn hostile_original() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        short("CC"),
        AMQPValue::FieldArray(vec![long("misiva.jobs")].into()),
    );
    headers.insert(short("BCC"), long("misiva.jobs"));
    headers.insert(short("x-death"), long("x"));
    headers.insert(short("x-first-death-queue"), long("x"));
    headers.insert(short("x-delivery-count"), AMQPValue::LongLongInt(3));
    headers.insert(short("x-misiva-attempts"), AMQPValue::LongLongInt(99));
    headers.insert(short("trace-id"), long("abc"));
    BasicProperties::default()
        .with_expiration(short("1500"))
        .with_user_id(short("someone"))
        .with_reply_to(short("amq.rabbitmq.reply-to"))
        .with_priority(9)
        .with_correlation_id(short("corr"))
        .with_app_id(short("app"))
        .with_content_type(short("application/json"))
        .with_headers(headers)
}

#[test]
fn republished_copies_carry_only_the_allow_list() {
    let original = hostile_original();
    let body = b"{}";
    let out = messages(
        &original,
        body,
        &verdict(dead("bad".into()), Some("job-1".into())),
    );
    assert_eq!(out.len(), 1);
    let p = &out[0].properties;
    assert_eq!(out[0].routing_key.as_str(), "misiva.jobs.dead");
    assert_eq!(p.expiration(), &None);
    assert_eq!(p.user_id(), &None);
    assert_eq!(p.reply_to(), &None);
    assert_eq!(p.priority(), &None);
    assert_eq!(p.delivery_mode(), &Some(2));
    assert_eq!(
        p.correlation_id().as_ref().map(ShortString::as_str),
        Some("corr")
    );
    assert_eq!(p.app_id().as_ref().map(ShortString::as_str), Some("app"));
    assert_eq!(
        p.message_id().as_ref().map(ShortString::as_str),
        Some("job-1")
    );
    for gone in [
        "CC",
        "BCC",
        "x-death",
        "x-first-death-queue",
        "x-delivery-count",
    ] {
        assert_eq!(header(p, gone), None, "{gone} must not be copied");
    }
    assert_eq!(header(p, "trace-id"), Some(&long("abc")));
    assert_eq!(header(p, ATTEMPTS), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(header(p, REASON), Some(&long("invalid_job")));
    assert_eq!(header(p, HEADERS_DROPPED), None);
}

#[test]
fn the_header_table_stays_under_the_frame_size() {
    // One header value near the frame size: the original's headers give way.
    let mut headers = FieldTable::default();
    headers.insert(short("big"), long(&"x".repeat(126_500)));
    headers.insert(short("small"), long("y"));
    let original = BasicProperties::default().with_headers(headers);
    let body = b"{}";
    let out = messages(&original, body, &verdict(dead("d".repeat(100_000)), None));
    let p = &out[0].properties;
    assert!(headers_len(p.headers().as_ref().unwrap()) < DEFAULT_FRAME_MAX as usize - 4096);
    assert!(header(p, "big").is_none(), "the big header must give way");
    assert_eq!(header(p, HEADERS_DROPPED), Some(&AMQPValue::LongLongInt(2)));
    match header(p, DETAIL) {
        Some(AMQPValue::LongString(s)) => assert!(s.len() <= bounded::DETAIL_BYTES),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deeply_nested_headers_are_not_copied() {
    let mut value = long("leaf");
    for _ in 0..5_000 {
        value = AMQPValue::FieldArray(vec![value].into());
    }
    let mut headers = FieldTable::default();
    headers.insert(short("deep"), value);
    let original = BasicProperties::default().with_headers(headers);
    let body = b"{}";
    let p = &messages(&original, body, &verdict(dead("x".into()), None))[0].properties;
    assert_eq!(header(p, "deep"), None);
    assert_eq!(header(p, HEADERS_DROPPED), Some(&AMQPValue::LongLongInt(1)));
}

#[test]
fn message_ids_that_do_not_fit_are_left_out() {
    let original = BasicProperties::default();
    let body = b"{}";
    // 128 characters, 256 bytes: a valid job id, too long for a short string.
    let id = "é".repeat(128);
    let p = &messages(&original, body, &verdict(dead("x".into()), Some(id)))[0].properties;
    assert_eq!(p.message_id(), &None);
    let id = "日".repeat(85);
    let p = &messages(
        &original,
        body,
        &verdict(dead("x".into()), Some(id.clone())),
    )[0]
    .properties;
    assert_eq!(
        p.message_id().as_ref().map(ShortString::as_str),
        Some(id.as_str())
    );
}

#[test]
fn counters_of_any_type_are_read_or_ignored() {
    let table = [
        (AMQPValue::LongLongInt(3), Some(3)),
        (AMQPValue::LongInt(7), Some(7)),
        (AMQPValue::ShortShortUInt(1), Some(1)),
        (AMQPValue::LongUInt(u32::MAX), Some(u64::from(u32::MAX))),
        (AMQPValue::LongLongInt(-5), None),
        (AMQPValue::LongLongInt(i64::MAX), Some(i64::MAX as u64)),
        (long(" 12 "), Some(12)),
        (long("abc"), None),
        (
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
            None,
        ),
        (AMQPValue::Double(2.5), None),
        (AMQPValue::Boolean(true), None),
        (AMQPValue::Void, None),
    ];
    for (value, expected) in table {
        let mut headers = FieldTable::default();
        headers.insert(short(DELIVERY_COUNT), value.clone());
        assert_eq!(
            count_header(Some(&headers), DELIVERY_COUNT),
            expected,
            "{value:?}"
        );
    }
    assert_eq!(count_header(None, DELIVERY_COUNT), None);
}

#[test]
fn retries_go_to_their_tier_with_the_unsettled_tokens() {
    let body = format!(
        r#"{{"tokens":["{}","{}"],"alert":"x"}}"#,
        token(1).as_str(),
        token(2).as_str()
    );
    let original = BasicProperties::default();
    let body = body.as_bytes();
    let settlement = Settlement {
        attempt: 4,
        retry: Some(Retry {
            tokens: vec![token(2)],
            tier: 9,
            detail: "503".into(),
        }),
        ..Settlement::default()
    };
    let out = messages(&original, body, &verdict(settlement, None));
    assert_eq!(out[0].routing_key.as_str(), "misiva.jobs.retry.5s");
    assert_eq!(
        String::from_utf8(out[0].body.clone()).unwrap(),
        format!(r#"{{"tokens":["{}"],"alert":"x"}}"#, token(2).as_str())
    );
    assert_eq!(header(&out[0].properties, LAST_ERROR), Some(&long("503")));
}

/// A counter header as publishers and brokers write it: an integer of any
/// width and sign, the same as text, or any other value.
fn any_count() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i64>().prop_map(|n| long(&format!(" {n} "))),
        any::<i64>().prop_map(|n| AMQPValue::ShortString(short(&n.to_string()))),
        any_value(),
    ]
}

fn any_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<f64>().prop_map(AMQPValue::Double),
        ".{0,300}".prop_map(|s| long(&s)),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(12, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(v.into())),
            proptest::collection::btree_map(".{1,20}", inner, 0..4).prop_map(|m| {
                let mut t = FieldTable::default();
                for (k, v) in m {
                    t.insert(short(&k), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

fn any_headers() -> impl Strategy<Value = FieldTable> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("CC".to_owned()),
                Just("x-delivery-count".to_owned()),
                Just("x-misiva-first-seen".to_owned()),
                Just("x-misiva-attempts".to_owned()),
                ".{1,300}"
            ],
            any_value(),
            0usize..60_000,
        ),
        0..6,
    )
    .prop_map(|entries| {
        let mut t = FieldTable::default();
        for (k, v, pad) in entries {
            t.insert(short(&k), v);
            t.insert(short(&format!("pad-{pad}")), long(&"p".repeat(pad)));
        }
        t
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the input (properties, headers, ids, details, reasons), every
    /// outgoing message fits the AMQP limits of CONTRACT §3.
    #[test]
    fn every_output_is_bounded(
        headers in any_headers(),
        message_id in proptest::option::of(".{0,128}"),
        job_id in proptest::option::of(".{0,128}"),
        detail in ".{0,3000}",
        reason in ".{0,300}",
        app in ".{0,100}",
        frame_max in prop_oneof![Just(0u32), Just(131_072u32), 8_192u32..1_000_000],
        attempt in any::<u32>(),
    ) {
        let mut original = BasicProperties::default().with_headers(headers);
        if let Some(id) = &message_id {
            original = original.with_message_id(short(id));
        }
        let settlement = Settlement {
            attempt,
            feedback: vec![Feedback { recipient: crate::outcome::Recipient::Token(token(1)), reason: reason.clone(), timestamp_ms: None }],
            dead_letters: vec![DeadLetter { tokens: None, reason: reason.clone(), detail: detail.clone() }],
            retry: Some(Retry { tokens: vec![token(2)], tier: attempt as usize, detail }),
        };
        let verdict = Verdict { settlement, app, job_id, topic: None, delivered: 0 };
        let republish = Republish {
            lane: Lane::Normal,
            topology: &topology(),
            original: &original,
            body: b"{\"token\":\"00\"}",
            frame_max,
            now: OffsetDateTime::now_utc(),
        };
        let out = republish.messages(&verdict);
        prop_assert_eq!(out.len(), 3);
        let frame = if frame_max == 0 { DEFAULT_FRAME_MAX } else { frame_max } as usize;
        for m in &out {
            prop_assert!(m.routing_key.as_str().len() <= 255);
            prop_assert!(m.exchange.as_str().len() <= 255);
            let p = &m.properties;
            prop_assert!(p.expiration().is_none() && p.user_id().is_none());
            if let Some(id) = p.message_id() {
                prop_assert!(id.as_str().len() <= 255);
            }
            if let Some(h) = p.headers() {
                prop_assert!(headers_len(h) <= frame - FRAME_RESERVE);
                for gone in ["CC", "BCC", "x-delivery-count"] {
                    prop_assert!(h.inner().get(gone).is_none());
                }
                for name in [DETAIL, LAST_ERROR] {
                    if let Some(AMQPValue::LongString(s)) = h.inner().get(name) {
                        prop_assert!(s.len() <= bounded::DETAIL_BYTES);
                    }
                }
            }
        }
    }

    /// Counter headers never panic, whatever their type or value.
    #[test]
    fn counters_never_panic(value in any_count()) {
        let mut headers = FieldTable::default();
        headers.insert(short(ATTEMPTS), value.clone());
        let read = count_header(Some(&headers), ATTEMPTS);
        // A count is read from an integer of any width, or from text holding
        // one, when it is not negative; anything else is no count.
        let expected = match &value {
            AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().and_then(|t| t.trim().parse::<i64>().ok()).and_then(|n| u64::try_from(n).ok()),
            AMQPValue::ShortString(s) => s.as_str().trim().parse::<i64>().ok().and_then(|n| u64::try_from(n).ok()),
            _ => None,
        };
        prop_assert_eq!(read, expected, "{:?}", value);
    }
}
