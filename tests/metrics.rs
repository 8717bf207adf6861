//! Observability through the real broker and the simulator: a known workload
//! gives exactly the expected counters on `/metrics`, labels stay bounded, a
//! job's trace id appears in its log lines and on its retry, and no secret
//! appears in any log line, metric or error.

use crate::support;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use misiva::sim::{Faults, SimConfig};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{
    SimFixture, Worker, broker, drain, header, metric, publish_with, samples, special_token, token,
    unique_queue, wait_for,
};

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stamped() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(now_s())
}

fn single(id: &str, token: &str) -> Vec<u8> {
    support::single_job(id, token, "hi")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_gives_exactly_its_counts() {
    let sim = SimFixture::start(SimConfig::default()).await;
    let queue = unique_queue("metrics");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_RETRY_DELAYS", "100ms,200ms"),
            ("MISIVA_MAX_ATTEMPTS", "2"),
            ("MISIVA_FAULT_CRASHES", "1"),
        ],
    );
    worker.ready().await;
    let conn = broker().connect().await;

    // A forced consumer restart first, alone, so the counts stay exact: the
    // first delivery crashes its consumer, the supervisor starts a new one,
    // and the broker delivers the job again.
    publish_with(&conn, &queue, &[single("warm-up", &token(0))], stamped()).await;
    wait_for(Duration::from_secs(30), "the warm-up job", || {
        worker.metric("misiva_jobs_acked_total", &[]) == 1.0
    })
    .await;
    assert_eq!(worker.metric("misiva_supervisor_restarts_total", &[]), 1.0);

    const N: usize = 40; // delivered
    const M: usize = 5; // fed back (410 Unregistered)
    const INVALID: usize = 3; // dead-lettered: invalid_job
    const REFUSED: usize = 2; // dead-lettered: topic_disallowed
    const R: usize = 4; // retried once (503), then retries_exhausted
    let mut bodies = Vec::new();
    for n in 0..N {
        bodies.push(single(&format!("ok-{n}"), &token(n as u64 + 1)));
    }
    for n in 0..M {
        bodies.push(single(
            &format!("gone-{n}"),
            &special_token("ffff0410", n as u64),
        ));
    }
    for n in 0..INVALID {
        bodies.push(format!("{{\"id\":\"bad-{n}\",\"tokn\":1}}").into_bytes());
    }
    for n in 0..REFUSED {
        bodies.push(single(
            &format!("refused-{n}"),
            &special_token("ffff0402", n as u64),
        ));
    }
    for n in 0..R {
        bodies.push(single(
            &format!("flaky-{n}"),
            &special_token("ffff0503", n as u64),
        ));
    }
    // A job naming an app that is not configured: its label is `unknown`.
    bodies.push(
        json!({"id": "stranger", "app": "an-app-nobody-configured", "token": token(999), "alert": "x"})
            .to_string()
            .into_bytes(),
    );
    publish_with(&conn, &queue, &bodies, stamped()).await;

    // Every job acked once on its first delivery, the flaky ones once more.
    let acked = 1 + N + M + INVALID + REFUSED + R + 1 + R;
    wait_for(Duration::from_secs(60), "every job to settle", || {
        worker.metric("misiva_jobs_acked_total", &[]) == acked as f64
    })
    .await;
    let text = worker.metrics();
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    let app = ("app", "default");

    // Deliveries: every first delivery, the redelivery after the crash, the
    // retried jobs coming back from their tier.
    assert_eq!(
        m("misiva_jobs_received_total", &[]),
        (acked + 1) as f64,
        "{text}"
    );
    assert_eq!(m("misiva_jobs_acked_total", &[app]), (acked - 1) as f64);
    assert_eq!(
        m("misiva_jobs_acked_total", &[("app", "unknown")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        m("misiva_jobs_retried_total", &[app, ("tier", "0")]),
        R as f64
    );
    assert_eq!(m("misiva_jobs_retried_total", &[]), R as f64);
    for (reason, count) in [
        ("invalid_job", INVALID),
        ("topic_disallowed", REFUSED),
        ("retries_exhausted", R),
    ] {
        assert_eq!(
            m(
                "misiva_jobs_dead_lettered_total",
                &[app, ("reason", reason)]
            ),
            count as f64,
            "{reason}\n{text}"
        );
    }
    assert_eq!(
        m(
            "misiva_jobs_dead_lettered_total",
            &[("app", "unknown"), ("reason", "unknown_app")]
        ),
        1.0
    );
    assert_eq!(
        m("misiva_jobs_dead_lettered_total", &[]),
        (INVALID + REFUSED + R + 1) as f64
    );
    assert_eq!(
        m(
            "misiva_feedback_events_total",
            &[app, ("reason", "Unregistered")]
        ),
        M as f64
    );
    assert_eq!(m("misiva_feedback_events_total", &[]), M as f64);

    // Answers by status and reason; one request per token and attempt.
    let delivered = N + 1;
    let answers = [
        ("200", "none", delivered),
        ("410", "Unregistered", M),
        ("400", "TopicDisallowed", REFUSED),
        ("503", "ServiceUnavailable", 2 * R),
    ];
    for (status, reason, count) in answers {
        assert_eq!(
            m(
                "misiva_notifications_total",
                &[app, ("status", status), ("reason", reason)]
            ),
            count as f64,
            "{status} {reason}\n{text}"
        );
    }
    let requests: usize = answers.iter().map(|(_, _, c)| c).sum();
    assert_eq!(m("misiva_notifications_total", &[]), requests as f64);
    assert_eq!(
        m("misiva_apns_request_duration_seconds_count", &[app]),
        requests as f64
    );
    assert_eq!(
        m(
            "misiva_apns_request_duration_seconds_bucket",
            &[app, ("le", "+Inf")]
        ),
        requests as f64
    );
    // Every job carried a timestamp, and so did each retried copy.
    assert_eq!(
        m("misiva_job_latency_seconds_count", &[]),
        acked as f64,
        "{text}"
    );
    assert_eq!(m("misiva_notifications_in_flight", &[app]), 0.0);
    assert_eq!(
        m(
            "misiva_supervisor_restarts_total",
            &[("child", "consumer-0")]
        ) + m(
            "misiva_supervisor_restarts_total",
            &[("child", "consumer-1")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(m("misiva_broker_connected", &[]), 1.0);
    assert_eq!(m("misiva_broker_blocked", &[]), 0.0);
    // The crashed consumer comes back after the supervisor's backoff, which
    // may end after the last job settled: wait for it, not for a moment.
    wait_for(
        Duration::from_secs(10),
        "both normal consumers back",
        || worker.metric("misiva_consumers_running", &[("lane", "normal")]) == 2.0,
    )
    .await;
    assert_eq!(
        worker.metric("misiva_consumers_running", &[("lane", "urgent")]),
        1.0
    );
    assert_eq!(
        m("misiva_apns_connections", &[app, ("state", "ready")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        m(
            "misiva_provider_token_renewals_total",
            &[app, ("cause", "scheduled")]
        ),
        1.0
    );
    assert_eq!(m("misiva_breaker_open", &[app]), 0.0);
    assert!(text.contains("misiva_build_info{version=\""), "{text}");

    // Labels are bounded: apps from the configuration (or `unknown`), never
    // a token, a job id or an apns-id.
    for (name, labels, _) in samples(&text) {
        for (key, value) in labels {
            if key == "app" {
                assert!(
                    value == "default" || value == "unknown",
                    "{name}: app {value}"
                );
            }
            assert!(value.len() <= 40, "{name}: {key}={value}");
            assert!(
                !value.contains("ok-") && !value.contains("stranger"),
                "{name}: {key}={value}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_id_follows_the_job_into_its_logs_and_its_retry() {
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            error_status: 503,
            latency: Duration::ZERO,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let queue = unique_queue("trace");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_LOG_FORMAT", "json"),
            ("MISIVA_RETRY_DELAYS", "1h"),
            ("MISIVA_MAX_ATTEMPTS", "5"),
        ],
    );
    worker.ready().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent.as_bytes())),
    );
    let conn = broker().connect().await;
    publish_with(
        &conn,
        &queue,
        &[single("traced-job", &token(1))],
        stamped().with_headers(headers),
    )
    .await;
    wait_for(Duration::from_secs(30), "the retry", || {
        worker.metric("misiva_jobs_retried_total", &[]) == 1.0
    })
    .await;
    let lines = worker.log_lines("traced-job");
    assert!(!lines.is_empty(), "{}", worker.log_text());
    let retry_line = lines
        .iter()
        .find(|l| l.contains("scheduled for retry"))
        .unwrap_or_else(|| panic!("{}", worker.log_text()));
    let parsed: serde_json::Value = serde_json::from_str(retry_line).unwrap();
    assert_eq!(parsed["span"]["trace_id"], trace_id, "{retry_line}");
    assert_eq!(parsed["span"]["job_id"], "traced-job", "{retry_line}");
    assert_eq!(parsed["span"]["parent_span_id"], "00f067aa0ba902b7");
    // The retry copy carries the header on, for the next delivery's span.
    let retried = drain(&conn, &format!("{queue}.retry.1h")).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(header(&retried[0], "traceparent"), Some(traceparent));
    worker.terminate().await;
}

/// Secrets given to the worker never appear in its logs, its metrics or its
/// errors, whatever fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_nowhere() {
    let sim = SimFixture::start(SimConfig::default()).await;
    let b = broker();
    let user = format!("secretive{}", fastrand::u32(..));
    let password = format!("Br0kerPw{}", fastrand::u64(..));
    b.ctl(&["add_user", &user, &password]);
    b.ctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
    let url = format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", b.port);
    let key_text = std::fs::read_to_string(&sim.key_file).unwrap();
    let key_body: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    let cert_password = format!("CertPw{}", fastrand::u64(..));

    // A worker with the broker password, the key, and a second app whose
    // certificate cannot be read with its password: a configuration error.
    let queue = unique_queue("secrets");
    let config = sim.dir.path().join("secrets.toml");
    std::fs::write(
        &config,
        format!(
            "feedback_exchange = \"{queue}.feedback\"\nfeedback_queue = \"{queue}.feedback\"\n\
             [apps.certs]\nendpoint = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\ncert_password = \"{cert_password}\"\ntopic = \"x.y\"\n",
            sim.sim.endpoint(),
            sim.ca_file.display(),
            sim.key_file.display(),
        ),
    )
    .unwrap();
    let mut failing = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_AMQP_URL", &url),
            ("MISIVA_CONFIG", config.to_str().unwrap()),
            ("MISIVA_LOG", "trace"),
        ],
    );
    let status = failing.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", failing.log_text());
    let mut logs = failing.log_text();

    // A working worker with the broker password, driven through delivered,
    // fed back, dead-lettered and retried jobs, and a broker restart.
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_AMQP_URL", &url),
            ("MISIVA_LOG", "trace"),
            ("MISIVA_RETRY_DELAYS", "100ms"),
            ("MISIVA_MAX_ATTEMPTS", "2"),
        ],
    );
    worker.ready().await;
    let conn = b.connect().await;
    let bodies = vec![
        single("s-ok", &token(5)),
        single("s-gone", &special_token("ffff0410", 1)),
        single("s-flaky", &special_token("ffff0503", 1)),
        b"{not json".to_vec(),
    ];
    publish_with(&conn, &queue, &bodies, stamped()).await;
    wait_for(Duration::from_secs(30), "the jobs to settle", || {
        worker.metric("misiva_jobs_acked_total", &[]) == 5.0
    })
    .await;
    // The broker drops the worker's connection: reconnect paths log too.
    assert!(b.close_connection_of(&queue));
    worker.ready().await;
    let metrics = worker.metrics();
    worker.terminate().await;
    logs.push_str(&worker.log_text());

    // Wrong broker credentials: an error that must not echo the password.
    let wrong = format!("amqp://{user}:{password}x@127.0.0.1:{}/%2f", b.port);
    let refused = Worker::start(&sim, &queue, &[("MISIVA_AMQP_URL", &wrong)]);
    wait_for(Duration::from_secs(30), "the refused login", || {
        refused.log_text().contains("not reachable yet")
    })
    .await;
    logs.push_str(&refused.log_text());
    drop(refused);
    b.ctl(&["delete_user", &user]);

    assert!(logs.contains("s-flaky"), "the logs were captured");
    for (what, secret) in [
        ("broker password", password.as_str()),
        ("certificate password", cert_password.as_str()),
    ]
    .into_iter()
    .chain(key_body.iter().map(|l| ("key material", *l)))
    {
        assert!(!logs.contains(secret), "the {what} is in a log line");
        assert!(!metrics.contains(secret), "the {what} is in a metric");
    }
}
