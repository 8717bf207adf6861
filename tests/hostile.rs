//! One bad message must never take down a worker (CONTRACT §3): a corpus of
//! hostile messages, published into a normal workload on the real broker,
//! each ends in the dead-letter queue exactly once with a bounded detail,
//! while every normal job is delivered once and the worker never restarts.

use crate::support;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use support::{SimFixture, Worker, broker, drain, ready_now, special_token, token, unique_queue};

/// One message of the corpus: its body, properties, and the dead-letter
/// reason it must get (`None`: it is a valid job and must be delivered once).
struct Case {
    name: &'static str,
    body: Vec<u8>,
    properties: BasicProperties,
    reason: Option<&'static str>,
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

fn headers(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(ShortString::try_new(k).unwrap(), v);
    }
    table
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, reason: Option<&'static str>) -> Case {
    Case {
        name,
        body: body.into(),
        properties: BasicProperties::default(),
        reason,
    }
}

fn corpus(queue: &str) -> (Vec<Case>, Vec<String>) {
    let long = "x".repeat(200_000);
    let t = |n: u64| token(100_000 + n);
    let mut nested = text("leaf");
    for _ in 0..2_000 {
        nested = AMQPValue::FieldArray(vec![nested].into());
    }
    let mut cases = vec![
        case(
            "unknown-field-200k",
            format!(r#"{{"{long}":1}}"#),
            Some("invalid_job"),
        ),
        case(
            "push-type-200k",
            format!(r#"{{"token":"{}","push_type":"{long}"}}"#, t(1)),
            Some("invalid_job"),
        ),
        case(
            "apns-id-200k",
            format!(r#"{{"token":"{}","apns_id":"{long}"}}"#, t(2)),
            Some("invalid_job"),
        ),
        // 128 characters of two bytes: a valid id of 256 bytes, over a short string.
        case(
            "multibyte-id-unknown-app",
            json!({"id": "é".repeat(128), "app": "nosuchapp", "token": t(3), "alert": "x"})
                .to_string(),
            Some("unknown_app"),
        ),
        // 128 characters of three bytes, dead-lettered by APNs' answer.
        case(
            "cjk-id-rejected",
            json!({"id": "日".repeat(128), "token": special_token("ffff0402", 1), "alert": "x"})
                .to_string(),
            Some("topic_disallowed"),
        ),
        case(
            "id-over-128-chars",
            json!({"id": "é".repeat(129), "token": t(4)}).to_string(),
            Some("invalid_job"),
        ),
        case("body-over-1mib", vec![b' '; 1_100_000], Some("invalid_job")),
        case(
            "nested-json",
            format!(r#"{{"payload":{}}}"#, "[".repeat(500_000)),
            Some("invalid_job"),
        ),
        case(
            "control-characters",
            "{\"id\":\"a\\u0000b\\nc\",\"token\":\"zz\\u0007\",\"x\\ny\":1}",
            Some("invalid_job"),
        ),
        case("not-utf8", vec![0xff, 0xfe, b'{'], Some("invalid_job")),
        case("not-an-object", "[1,2,3]", Some("invalid_job")),
    ];
    let mut with = |name, body: String, reason, properties: BasicProperties| {
        let mut c = case(name, body, reason);
        c.properties = properties;
        cases.push(c);
    };
    // Routing headers: copied onto the dead letter, they would route it back
    // to the work queue for ever.
    let cc = AMQPValue::FieldArray(vec![text(queue)].into());
    with(
        "cc-header",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default().with_headers(headers(vec![("CC", cc.clone())])),
    );
    with(
        "bcc-header",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default().with_headers(headers(vec![("BCC", cc)])),
    );
    // A TTL copied onto the dead letter would expire it: lost.
    with(
        "expiration",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default().with_expiration("1500".into()),
    );
    with(
        "user-id-reply-to-priority",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default()
            .with_user_id("guest".into())
            .with_reply_to("nowhere".into())
            .with_priority(9),
    );
    with(
        "nested-header-table",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default().with_headers(headers(vec![("deep", nested)])),
    );
    with(
        "header-near-frame-size",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default().with_headers(headers(vec![("big", text(&"h".repeat(120_000)))])),
    );
    with(
        "attempts-wrong-type-invalid",
        "{}".into(),
        Some("invalid_job"),
        BasicProperties::default().with_headers(headers(vec![(
            "x-misiva-attempts",
            AMQPValue::FieldTable(FieldTable::default()),
        )])),
    );
    // Delivered more often than MISIVA_MAX_DELIVERIES, by its own word:
    // parked as poison, never sent.
    let poison_token = t(5);
    with(
        "delivery-count-over-limit",
        json!({"token": poison_token, "alert": "never sent"}).to_string(),
        Some("poison"),
        BasicProperties::default().with_headers(headers(vec![(
            "x-delivery-count",
            AMQPValue::LongLongInt(1_000),
        )])),
    );
    // Valid jobs with odd counters: delivered once, as any other.
    let odd = [
        ("x-misiva-attempts", text("abc")),
        ("x-misiva-attempts", AMQPValue::LongLongInt(-7)),
        ("x-misiva-attempts", AMQPValue::LongLongInt(1 << 40)),
        ("x-delivery-count", text("many")),
        ("x-delivery-count", AMQPValue::LongLongInt(-1)),
        ("x-misiva-first-seen", text(&"z".repeat(5_000))),
    ];
    let mut valid_tokens = Vec::new();
    for (i, (name, value)) in odd.into_iter().enumerate() {
        let tok = t(10 + i as u64);
        valid_tokens.push(tok.clone());
        with(
            "odd-counter-valid-job",
            json!({"token": tok, "alert": "odd counter"}).to_string(),
            None,
            BasicProperties::default().with_headers(headers(vec![(name, value)])),
        );
    }
    (cases, valid_tokens)
}

async fn publish_case(channel: &lapin::Channel, queue: &str, case: &Case) {
    let properties = case
        .properties
        .clone()
        .with_correlation_id(case.name.into())
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &case.body,
            properties,
        )
        .await
        .expect("publish");
    assert!(
        confirm.await.expect("confirm").is_ack(),
        "broker refused {}",
        case.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_each_dead_lettered_once_and_the_worker_never_restarts() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("hostile");
    let mut worker = Worker::start(&sim, &queue, &[("MISIVA_PREFETCH", "50")]);
    worker.ready().await;

    let (cases, odd_tokens) = corpus(&queue);
    let conn = broker().connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // The normal workload, with the hostile messages spread through it.
    let normal = 300u64;
    let mut hostile = cases.iter();
    for i in 0..normal {
        let body = json!({"token": token(i), "alert": format!("normal {i}")}).to_string();
        let c = case("normal", body, None);
        publish_case(&channel, &queue, &c).await;
        if i % 10 == 0
            && let Some(c) = hostile.next()
        {
            publish_case(&channel, &queue, c).await;
        }
    }
    for c in hostile {
        publish_case(&channel, &queue, c).await;
    }

    let dead_queue = format!("{queue}.dead");
    let expected_dead = cases.iter().filter(|c| c.reason.is_some()).count() as u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = ready_now(&conn, &dead_queue).await >= expected_dead
            && ready_now(&conn, &queue).await == 0
            && sim.sim.accepted_count() >= normal + odd_tokens.len() as u64;
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {} dead letters of {expected_dead}, {} accepted\n{}",
            ready_now(&conn, &dead_queue).await,
            sim.sim.accepted_count(),
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for a loop to show (a CC copy comes back at once), and for
    // the 1.5 s TTL of the `expiration` case to pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dead = drain(&conn, &dead_queue).await;
    let mut by_case: HashMap<String, Vec<&lapin::message::BasicGetMessage>> = HashMap::new();
    for m in &dead {
        let name = m
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        by_case.entry(name).or_default().push(m);
    }
    for c in cases.iter().filter(|c| c.reason.is_some()) {
        let found = by_case.get(c.name).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(found.len(), 1, "{}: {} dead letters", c.name, found.len());
        let m = found[0];
        let reason = support::header(m, "x-misiva-reason");
        assert_eq!(reason.as_deref(), c.reason, "{}", c.name);
        let detail = support::header(m, "x-misiva-detail").unwrap_or_default();
        assert!(
            !detail.is_empty() && detail.len() <= 1024,
            "{}: a detail of {} bytes",
            c.name,
            detail.len()
        );
        let p = &m.delivery.properties;
        assert!(p.expiration().is_none() && p.user_id().is_none() && p.reply_to().is_none());
        let table = p.headers().clone().unwrap_or_default();
        // (`x-delivery-count` cannot be checked here: the dead-letter queue,
        // a quorum queue, sets its own on delivery. The unit tests check it.)
        for gone in ["CC", "BCC"] {
            assert!(!table.contains_key(gone), "{}: {gone} was copied", c.name);
        }
        // The body is kept byte for byte.
        assert_eq!(m.delivery.data, c.body, "{}: body changed", c.name);
    }
    assert_eq!(
        dead.len(),
        expected_dead as usize,
        "unexpected dead letters: {:?}",
        by_case.keys().collect::<Vec<_>>()
    );

    // Every normal job once, the poison one never.
    let sent = sim.sim.requests_by_token();
    for i in 0..normal {
        assert_eq!(sent.get(&token(i)).copied(), Some(1), "normal job {i}");
    }
    for tok in &odd_tokens {
        assert_eq!(sent.get(tok).copied(), Some(1), "odd-counter job {tok}");
    }
    assert_eq!(sent.get(&token(100_005)), None, "the poison job was sent");
    assert_eq!(ready_now(&conn, &queue).await, 0);

    // The worker never restarted anything and is still ready.
    let log = worker.log_text();
    assert!(worker.running(), "{log}");
    assert_eq!(worker.readyz(), Some(200));
    assert_eq!(
        worker.metric("misiva_supervisor_restarts_total", &[]),
        0.0,
        "{log}"
    );
    assert_eq!(
        worker.metric(
            "misiva_jobs_dead_lettered_total",
            &[("reason", "worker_panic")]
        ),
        0.0,
        "{log}"
    );
    assert!(worker.terminate().await.success());
}
