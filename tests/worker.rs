//! The worker end to end: a real RabbitMQ node, the `misiva` binary, and the
//! APNs simulator over HTTP/2 + TLS.

use crate::support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{SimFixture, Worker, broker, drain, header, publish, token, unique_queue, wait_for};

/// What the simulator must have received for one token.
struct Expected {
    push_type: &'static str,
    priority: Option<&'static str>,
    payload: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_are_each_delivered_once_and_acked() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("thousand");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;

    // Mixed jobs: single and fan-out (2 to 5 tokens), alert and background.
    let mut bodies = Vec::new();
    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut next_token = 0;
    for i in 0..1000u64 {
        let count = if i % 3 == 0 { 2 + i % 4 } else { 1 };
        let tokens: Vec<String> = (0..count).map(|k| token(next_token + k)).collect();
        next_token += count;
        let background = i % 4 == 1;
        let mut job = if background {
            json!({"push_type": "background", "priority": 5, "content_available": true, "data": {"n": i}})
        } else {
            json!({"alert": {"title": format!("job {i}"), "body": "hello"}, "badge": i % 10})
        };
        if tokens.len() == 1 {
            job["token"] = json!(tokens[0]);
        } else {
            job["tokens"] = json!(tokens);
        }
        job["id"] = json!(format!("job-{i}"));
        let payload = if background {
            json!({"aps": {"content-available": 1}, "n": i})
        } else {
            json!({"aps": {"alert": {"title": format!("job {i}"), "body": "hello"}, "badge": i % 10}})
        };
        for t in tokens {
            expected.insert(
                t,
                Expected {
                    push_type: if background { "background" } else { "alert" },
                    priority: background.then_some("5"),
                    payload: payload.clone(),
                },
            );
        }
        bodies.push(job.to_string().into_bytes());
    }
    let total = expected.len() as u64;

    let conn = broker().connect().await;
    let started = Instant::now();
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(60), "every notification", || {
        sim.sim.accepted_count() >= total
    })
    .await;
    let elapsed = started.elapsed();
    println!(
        "1000 jobs, {total} notifications: {:.2} s, {:.0} notifications/s (publish included)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    // Settled in the broker: nothing ready, nothing unacked.
    wait_for(Duration::from_secs(20), "the queue to be empty", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;

    let accepted = sim.sim.accepted();
    assert_eq!(accepted.len() as u64, total, "no notification twice");
    let mut seen = HashMap::new();
    for n in &accepted {
        *seen.entry(n.token.clone()).or_insert(0) += 1;
        let want = expected
            .get(&n.token)
            .unwrap_or_else(|| panic!("unexpected token {}", n.token));
        assert_eq!(n.topic, support::TOPIC);
        assert_eq!(n.push_type.as_deref(), Some(want.push_type));
        assert_eq!(n.priority.as_deref(), want.priority);
        assert_eq!(n.key_id, support::KEY_ID);
        let body: Value = serde_json::from_slice(&n.payload).unwrap();
        assert_eq!(body, want.payload, "payload of {}", n.token);
    }
    assert!(seen.values().all(|&c| c == 1));
    assert_eq!(seen.len(), expected.len());

    wait_for(Duration::from_secs(20), "every job acked", || {
        worker.metric("misiva_jobs_acked_total", &[]) == 1000.0
    })
    .await;
    assert_eq!(worker.metric("misiva_jobs_retried_total", &[]), 0.0);
    assert_eq!(
        worker.metric("misiva_notifications_total", &[("status", "200")]),
        total as f64
    );
    let status = worker.terminate().await;
    assert!(status.success(), "exit {status:?}\n{}", worker.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_jobs_are_dead_lettered_with_a_reason_and_the_worker_keeps_going() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("malformed");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;

    let t = token(1);
    let big = "x".repeat(5000);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not valid JSON"),
        (
            json!({"token": t, "alrt": "typo"}).to_string().into_bytes(),
            "unknown field: \"alrt\"",
        ),
        (
            json!({"token": "xyz", "alert": "a"})
                .to_string()
                .into_bytes(),
            "field `token`",
        ),
        (
            json!({"token": t, "data": {"big": big}})
                .to_string()
                .into_bytes(),
            "the limit for push type alert is 4096",
        ),
        (
            json!({"token": t, "alert": "a", "payload": {"aps": {}}})
                .to_string()
                .into_bytes(),
            "cannot be combined",
        ),
    ];
    let bodies: Vec<Vec<u8>> = cases.iter().map(|(b, _)| b.clone()).collect();
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    // A good job after the bad ones: the consumer is still alive and delivering.
    publish(
        &conn,
        &queue,
        &[json!({"token": token(2), "alert": "still here"})
            .to_string()
            .into_bytes()],
    )
    .await;

    wait_for(Duration::from_secs(20), "the good job", || {
        sim.sim.accepted_count() == 1
    })
    .await;
    let dead_queue = format!("{queue}.dead");
    wait_for(Duration::from_secs(20), "five dead letters", || {
        broker()
            .counts(&dead_queue)
            .is_some_and(|(ready, _)| ready == 5)
    })
    .await;
    let dead = drain(&conn, &dead_queue).await;
    assert_eq!(dead.len(), 5);
    for (body, fragment) in &cases {
        let letter = dead
            .iter()
            .find(|m| &m.delivery.data == body)
            .unwrap_or_else(|| panic!("no dead letter for {}", String::from_utf8_lossy(body)));
        assert_eq!(
            header(letter, "x-misiva-reason").as_deref(),
            Some("invalid_job")
        );
        let detail = header(letter, "x-misiva-detail").unwrap();
        assert!(detail.contains(fragment), "{detail:?} lacks {fragment:?}");
        assert_eq!(header(letter, "x-misiva-app").as_deref(), Some("default"));
        assert_eq!(header(letter, "x-misiva-attempts").as_deref(), Some("1"));
        for stamp in ["x-misiva-first-seen", "x-misiva-failed-at"] {
            let value = header(letter, stamp).unwrap();
            assert!(
                time::OffsetDateTime::parse(&value, &time::format_description::well_known::Rfc3339)
                    .is_ok(),
                "{stamp} = {value:?}"
            );
        }
    }
    assert!(worker.running(), "worker died:\n{}", worker.log_text());
    wait_for(Duration::from_secs(20), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_token_is_settled_with_feedback_and_not_retried() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("gone");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;

    let gone = support::special_token("ffff0410", 7);
    let conn = broker().connect().await;
    let job = json!({"id": "gone-1", "tokens": [gone, token(3)], "alert": "bye"});
    publish(&conn, &queue, &[job.to_string().into_bytes()]).await;

    let feedback_queue = format!("{queue}.feedback");
    wait_for(Duration::from_secs(20), "one feedback event", || {
        broker()
            .counts(&feedback_queue)
            .is_some_and(|(ready, _)| ready == 1)
    })
    .await;
    wait_for(Duration::from_secs(20), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    // A retry or a requeue would be published (confirmed) before the ack:
    // once the job is acked, it shows in the counters and the tier queues.
    wait_for(Duration::from_secs(20), "the job acked", || {
        worker.metric("misiva_jobs_acked_total", &[]) == 1.0
    })
    .await;
    assert_eq!(worker.metric("misiva_jobs_retried_total", &[]), 0.0);
    assert_eq!(worker.metric("misiva_jobs_requeued_total", &[]), 0.0);
    for tier in ["1s", "5s", "30s", "2m", "10m"] {
        assert_eq!(
            support::ready_now(&conn, &format!("{queue}.retry.{tier}")).await,
            0,
            "nothing in the {tier} tier"
        );
    }
    assert_eq!(support::ready_now(&conn, &queue).await, 0);
    assert_eq!(
        sim.sim.rejected().get(&(410, "Unregistered".into())),
        Some(&1),
        "sent once, never retried"
    );
    assert_eq!(sim.sim.accepted_count(), 1);

    let events = drain(&conn, &feedback_queue).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].delivery.routing_key.as_str(),
        "default.Unregistered"
    );
    let event: Value = serde_json::from_slice(&events[0].delivery.data).unwrap();
    assert_eq!(event["token"], json!(gone));
    assert_eq!(event["app"], json!("default"));
    assert_eq!(event["topic"], json!(support::TOPIC));
    assert_eq!(event["reason"], json!("Unregistered"));
    assert_eq!(event["job_id"], json!("gone-1"));
    assert!(event["timestamp"].as_u64().unwrap() > 1_600_000_000_000);

    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_apns_rejection_dead_letters_only_the_rejected_tokens() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("permanent");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;

    // The simulator answers 400 TopicDisallowed to tokens with this prefix.
    let refused = support::special_token("ffff0402", 1);
    let conn = broker().connect().await;
    let job = json!({"id": "p-1", "tokens": [token(10), refused, token(11)], "alert": "x"});
    // An app with no credentials here: dead-lettered as unknown_app, never sent.
    let unknown = json!({"id": "p-2", "app": "nosuchapp", "token": token(12), "alert": "x"});
    publish(
        &conn,
        &queue,
        &[
            job.to_string().into_bytes(),
            unknown.to_string().into_bytes(),
        ],
    )
    .await;
    let dead_queue = format!("{queue}.dead");
    wait_for(Duration::from_secs(20), "two dead letters", || {
        broker()
            .counts(&dead_queue)
            .is_some_and(|(ready, _)| ready == 2)
    })
    .await;
    let dead = drain(&conn, &dead_queue).await;
    let by_id = |id: &str| {
        dead.iter()
            .find(|m| serde_json::from_slice::<Value>(&m.delivery.data).unwrap()["id"] == json!(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    let partial = by_id("p-1");
    assert_eq!(
        header(partial, "x-misiva-reason").as_deref(),
        Some("topic_disallowed")
    );
    // Byte for byte: only the token list changed (CONTRACT §3); a parse
    // would not see reordered keys or reformatting.
    let original = job.to_string();
    let expected = original.replace(
        &format!("[\"{}\",\"{refused}\",\"{}\"]", token(10), token(11)),
        &format!("[\"{refused}\"]"),
    );
    assert_ne!(expected, original);
    assert_eq!(
        String::from_utf8_lossy(&partial.delivery.data),
        expected,
        "only the refused token is kept, everything else byte for byte"
    );
    let unknown = by_id("p-2");
    assert_eq!(
        header(unknown, "x-misiva-reason").as_deref(),
        Some("unknown_app")
    );
    assert_eq!(
        header(unknown, "x-misiva-app").as_deref(),
        Some("nosuchapp")
    );

    let delivered: Vec<String> = sim.sim.accepted().into_iter().map(|a| a.token).collect();
    assert_eq!(delivered.len(), 2);
    assert!(delivered.contains(&token(10)) && delivered.contains(&token(11)));
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_declares_idempotently_and_names_a_conflicting_argument() {
    let sim = SimFixture::start(Default::default()).await;
    let conn = broker().connect().await;
    let run_topology = |queue: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_misiva"))
            .arg("topology")
            .env("MISIVA_AMQP_URL", &broker().url)
            .env("MISIVA_QUEUE", queue)
            .env("MISIVA_APNS_KEY_FILE", &sim.key_file)
            .env("MISIVA_APNS_KEY_ID", support::KEY_ID)
            .env("MISIVA_APNS_TEAM_ID", support::TEAM_ID)
            .env("MISIVA_LOG_FORMAT", "text")
            .output()
            .unwrap()
    };

    let fresh = unique_queue("topology");
    for _ in 0..2 {
        let out = run_topology(&fresh);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = broker().ctl(&["list_queues", "name", "type"]);
    for name in [
        fresh.clone(),
        format!("{fresh}.dead"),
        format!("{fresh}.retry.1s"),
        format!("{fresh}.retry.10m"),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [name.as_str(), "quorum"]),
            "{name} is not a quorum queue:\n{listed}"
        );
    }

    // The work queue carries the broker's own safety net.
    let arguments = broker().ctl(&["list_queues", "name", "arguments"]);
    let line = arguments
        .lines()
        .find(|l| l.split_whitespace().next() == Some(fresh.as_str()))
        .unwrap_or_default();
    for wanted in [
        "x-delivery-limit",
        "x-dead-letter-strategy",
        "at-least-once",
        "reject-publish",
        &format!("{fresh}.dead"),
    ] {
        assert!(line.contains(wanted), "{wanted} missing: {line}");
    }

    // A classic retry tier an earlier version declared keeps working, with
    // a warning; the others are created as quorum queues beside it.
    let older = unique_queue("oldtier");
    let mut classic = lapin::types::FieldTable::default();
    classic.insert(
        "x-message-ttl".into(),
        lapin::types::AMQPValue::LongLongInt(1000),
    );
    classic.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString("".into()),
    );
    classic.insert(
        "x-dead-letter-routing-key".into(),
        lapin::types::AMQPValue::LongString(older.as_str().into()),
    );
    let tier_channel = conn.create_channel().await.unwrap();
    tier_channel
        .queue_declare(
            format!("{older}.retry.1s").as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            classic,
        )
        .await
        .unwrap();
    let out = run_topology(&older);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("classic queue from an earlier version"),
        "{stderr}"
    );

    // A work queue an earlier version declared (quorum, no safety net) keeps
    // working, with a warning that says how to migrate.
    let old = unique_queue("old");
    let mut quorum = lapin::types::FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            old.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await
        .unwrap();
    let out = run_topology(&old);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&old)
            && stderr.contains("x-delivery-limit")
            && stderr.contains("docs/operations.md"),
        "{stderr}"
    );

    // A classic queue already holds the name: the error says which queue and which argument.
    let taken = unique_queue("conflict");
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            taken.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let out = run_topology(&taken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&taken) && stderr.contains("x-queue-type"),
        "{stderr}"
    );
}

/// A password distinctive enough that finding it in a log means it leaked.
const CERT_PASSWORD: &str = "Pkcs12-Pw-5b8e1d27";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_end_to_end() {
    let sim = SimFixture::start(misiva::sim::SimConfig {
        certificate_auth: true,
        ..Default::default()
    })
    .await;
    let issued = sim
        .sim
        .issue_client_certificate(support::TOPIC, CERT_PASSWORD)
        .unwrap();
    let p12 = sim.dir.path().join("client.p12");
    std::fs::write(&p12, &issued.p12).unwrap();
    let p12 = p12.display().to_string();
    let queue = unique_queue("certauth");
    let env = [
        ("MISIVA_APNS_KEY_FILE", ""),
        ("MISIVA_APNS_CERT_FILE", p12.as_str()),
        ("MISIVA_APNS_CERT_PASSWORD", CERT_PASSWORD),
        ("MISIVA_LOG", "trace"),
    ];
    let mut worker = Worker::start(&sim, &queue, &env);
    worker.ready().await;
    let bodies: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            json!({"token": token(900 + i), "alert": "cert"})
                .to_string()
                .into_bytes()
        })
        .collect();
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(30), "50 deliveries", || {
        sim.sim.accepted_count() == 50
    })
    .await;
    assert!(
        sim.sim
            .accepted()
            .iter()
            .all(|a| a.key_id.starts_with("certificate:"))
    );
    let log = worker.log_text();
    assert!(
        log.len() > 10_000,
        "trace logging was on: {} bytes",
        log.len()
    );
    assert!(
        !log.contains(CERT_PASSWORD),
        "the password never appears in logs"
    );
    assert!(!worker.metrics().contains(CERT_PASSWORD), "nor in metrics");
    assert!(worker.terminate().await.success());
}
