//! Retries through the delay tiers, dead letters, token feedback, the circuit
//! breaker, and fan-out — against the real broker and the simulator, with an
//! accounting check: every token ends as exactly one of delivered, feedback or
//! dead-lettered.

use crate::support;

use misiva::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::{
    SimFixture, Worker, broker, drain, header, publish, special_token, token, unique_queue,
    wait_for,
};

/// Short tiers so that tests take seconds, not minutes; one tier for each
/// attempt below the limit, so that a retry's tier is its attempt less one
/// (see [`retries_by_attempt`]).
const FAST_RETRIES: [(&str, &str); 2] = [
    (
        "MISIVA_RETRY_DELAYS",
        "100ms,150ms,200ms,250ms,300ms,350ms,400ms",
    ),
    ("MISIVA_MAX_ATTEMPTS", "8"),
];

fn faults(rate: f64, status: u16) -> Faults {
    Faults {
        error_rate: rate,
        error_status: status,
        latency: Duration::ZERO,
        ..Faults::default()
    }
}

/// Retries the worker scheduled, by the attempt that failed, read from
/// `misiva_jobs_retried_total`: a retry after attempt `a` goes to tier
/// `a - 1` while there are tiers enough, which the tests' settings provide.
fn retries_by_attempt(worker: &Worker) -> std::collections::BTreeMap<u64, u64> {
    let text = worker.metrics();
    (0..20u64)
        .map(|tier| {
            let n = support::metric(
                &text,
                "misiva_jobs_retried_total",
                &[("tier", &tier.to_string())],
            );
            (tier + 1, n as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_in_five_503s_every_token_accounted_for() {
    let sim = SimFixture::start(SimConfig {
        faults: faults(0.2, 503),
        ..Default::default()
    })
    .await;
    let queue = unique_queue("flaky");
    let mut worker = Worker::start(&sim, &queue, &FAST_RETRIES);
    worker.ready().await;

    // 300 jobs of 1 to 3 tokens; one token in ten is dead (410) or bad (400).
    let mut bodies = Vec::new();
    let mut good = HashSet::new();
    let mut dead_tokens = HashMap::new();
    let mut n = 0;
    for j in 0..300u64 {
        let mut tokens = Vec::new();
        for _ in 0..1 + j % 3 {
            n += 1;
            let t = match n % 10 {
                3 => special_token("ffff0410", n),
                7 => special_token("ffff0400", n),
                _ => token(n),
            };
            match n % 10 {
                3 => drop(dead_tokens.insert(t.clone(), "Unregistered")),
                7 => drop(dead_tokens.insert(t.clone(), "BadDeviceToken")),
                _ => drop(good.insert(t.clone())),
            }
            tokens.push(t);
        }
        bodies.push(
            json!({"id": format!("flaky-{j}"), "tokens": tokens, "alert": "hi"})
                .to_string()
                .into_bytes(),
        );
    }
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;

    let feedback_queue = format!("{queue}.feedback");
    wait_for(
        Duration::from_secs(60),
        "every good token delivered",
        || sim.sim.accepted_count() as usize >= good.len(),
    )
    .await;
    wait_for(Duration::from_secs(30), "every feedback event", || {
        broker()
            .counts(&feedback_queue)
            .is_some_and(|(ready, _)| ready as usize == dead_tokens.len())
    })
    .await;
    wait_for(Duration::from_secs(30), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;

    // Accounting: delivered once each, feedback once each, nothing dead-lettered.
    let accepted = sim.sim.accepted();
    let delivered: HashSet<_> = accepted.iter().map(|a| a.token.clone()).collect();
    assert_eq!(
        accepted.len(),
        delivered.len(),
        "a delivered token was sent again"
    );
    assert_eq!(delivered, good);
    let events = drain(&conn, &feedback_queue).await;
    let mut feedback = HashMap::new();
    for e in &events {
        let body: Value = serde_json::from_slice(&e.delivery.data).unwrap();
        let t = body["token"].as_str().unwrap().to_owned();
        let reason = body["reason"].as_str().unwrap().to_owned();
        assert_eq!(e.delivery.routing_key.as_str(), format!("default.{reason}"));
        assert!(
            feedback.insert(t, reason).is_none(),
            "two events for one token"
        );
    }
    assert_eq!(feedback.len(), dead_tokens.len());
    for (t, reason) in &dead_tokens {
        assert_eq!(feedback.get(t).map(String::as_str), Some(*reason));
    }
    let dead_letters = support::ready_now(&conn, &format!("{queue}.dead")).await;
    assert_eq!(dead_letters, 0);

    // Retries happened, through the tiers, never past the limit.
    let attempts = retries_by_attempt(&worker);
    let requests = sim.sim.requests_by_token();
    let max_requests = requests.values().copied().max().unwrap();
    println!(
        "accounting: {} tokens = {} delivered + {} feedback + {dead_letters} dead-lettered; {} retries scheduled, highest attempt {:?}, most requests for one token {max_requests}",
        good.len() + dead_tokens.len(),
        delivered.len(),
        feedback.len(),
        attempts.values().sum::<u64>(),
        attempts.keys().max()
    );
    // Exact: every 503 answer sent its token once more, and nothing else did.
    let answered_503 = sim
        .sim
        .rejected()
        .get(&(503, "ServiceUnavailable".into()))
        .copied()
        .unwrap_or(0);
    let extra_requests: u64 = requests.values().map(|&n| u64::from(n) - 1).sum();
    assert!(answered_503 > 0, "20% errors must cause retries");
    assert_eq!(
        extra_requests, answered_503,
        "one more request per 503, no more and no fewer"
    );
    assert_eq!(
        worker.metric("misiva_notifications_total", &[("status", "503")]),
        answered_503 as f64
    );
    assert!(!attempts.is_empty(), "{attempts:?}");
    assert!(
        attempts.keys().any(|&a| a >= 2),
        "some job reached a second tier: {attempts:?}"
    );
    assert!(attempts.keys().all(|&a| a < 8), "{attempts:?}");
    assert!(max_requests <= 8);
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_consumption_instead_of_burning_attempts() {
    let sim = SimFixture::start(SimConfig {
        faults: faults(1.0, 503),
        ..Default::default()
    })
    .await;
    let queue = unique_queue("outage");
    let env = [
        FAST_RETRIES[0],
        FAST_RETRIES[1],
        ("MISIVA_PREFETCH", "10"),
        ("MISIVA_CONSUMERS", "1"),
    ];
    let mut worker = Worker::start(&sim, &queue, &env);
    worker.ready().await;
    let bodies: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            json!({"id": format!("o-{i}"), "token": token(i), "alert": "x"})
                .to_string()
                .into_bytes()
        })
        .collect();
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;

    // Without the breaker, 100+200+400×5 ms of tiers would exhaust 8 attempts
    // in under 3 s. First the breaker must open; then the outage lasts four
    // seconds in all (the duration of the scenario, not a wait for a state).
    let outage = std::time::Instant::now();
    wait_for(Duration::from_secs(10), "the breaker to open", || {
        worker.metric("misiva_breaker_open", &[]) == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(outage.elapsed())).await;
    assert_eq!(
        worker.metric("misiva_breaker_open", &[]),
        1.0,
        "the breaker stays open while APNs fails"
    );
    let ready = support::ready_now(&conn, &queue).await;
    let requests: u32 = sim.sim.requests_by_token().values().sum();
    println!(
        "during the outage: {ready} jobs waiting in the queue, {requests} requests reached the simulator"
    );
    assert!(
        ready >= 150,
        "consumption paused: {ready} jobs still in the queue"
    );
    assert!(
        requests < 100,
        "{requests} requests: the worker kept hammering"
    );
    assert_eq!(support::ready_now(&conn, &format!("{queue}.dead")).await, 0);

    sim.sim.set_faults(Faults::default());
    wait_for(
        Duration::from_secs(60),
        "recovery and every job delivered",
        || sim.sim.accepted_count() == 200,
    )
    .await;
    wait_for(Duration::from_secs(20), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let attempts = retries_by_attempt(&worker);
    println!(
        "after recovery: {} retries scheduled, by attempt {attempts:?}",
        attempts.values().sum::<u64>(),
    );
    assert!(
        attempts.keys().all(|&a| a <= 3),
        "attempt counts stay low: {attempts:?}"
    );
    assert_eq!(support::ready_now(&conn, &format!("{queue}.dead")).await, 0);
    assert_eq!(sim.sim.accepted().len(), 200);
    assert!(
        worker.metric("misiva_breaker_opened_total", &[("app", "default")]) >= 1.0,
        "the breaker opened during the outage"
    );
    assert_eq!(
        worker.metric("misiva_breaker_open", &[("app", "default")]),
        0.0,
        "and closed after it"
    );
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_fails_is_dead_lettered_after_exactly_max_attempts() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("exhausted");
    let env = [
        ("MISIVA_RETRY_DELAYS", "50ms,100ms,150ms"),
        ("MISIVA_MAX_ATTEMPTS", "4"),
    ];
    let mut worker = Worker::start(&sim, &queue, &env);
    worker.ready().await;
    let doomed = special_token("ffff0500", 1);
    let conn = broker().connect().await;
    publish(
        &conn,
        &queue,
        &[
            json!({"id": "doomed", "tokens": [doomed, token(1)], "alert": "x"})
                .to_string()
                .into_bytes(),
        ],
    )
    .await;

    let dead_queue = format!("{queue}.dead");
    wait_for(Duration::from_secs(30), "the dead letter", || {
        broker()
            .counts(&dead_queue)
            .is_some_and(|(ready, _)| ready == 1)
    })
    .await;
    let dead = drain(&conn, &dead_queue).await;
    assert_eq!(
        header(&dead[0], "x-misiva-reason").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(header(&dead[0], "x-misiva-attempts").as_deref(), Some("4"));
    let detail = header(&dead[0], "x-misiva-detail").unwrap();
    assert!(detail.contains("InternalServerError"), "{detail}");
    let body: Value = serde_json::from_slice(&dead[0].delivery.data).unwrap();
    assert_eq!(
        body["tokens"],
        json!([doomed]),
        "the delivered token is not in the dead letter"
    );
    assert_eq!(body["id"], json!("doomed"));
    let requests = sim.sim.requests_by_token();
    assert_eq!(requests.get(&doomed), Some(&4), "exactly four attempts");
    assert_eq!(
        requests.get(&token(1)),
        Some(&1),
        "delivered once, never re-sent"
    );
    assert_eq!(
        retries_by_attempt(&worker),
        [(1, 1), (2, 1), (3, 1)].into(),
        "one retry after each of the first three attempts"
    );
    assert!(worker.terminate().await.success());
}

fn fan_out_job(id: &str, count: u64, dead_every: u64) -> (Vec<u8>, Vec<String>, Vec<String>) {
    let mut good = Vec::new();
    let mut dead = Vec::new();
    let tokens: Vec<String> = (0..count)
        .map(|i| {
            if dead_every > 0 && i % dead_every == 0 {
                let t = special_token("ffff0410", i);
                dead.push(t.clone());
                t
            } else {
                let t = token(1_000_000 + i);
                good.push(t.clone());
                t
            }
        })
        .collect();
    let body = json!({"id": id, "tokens": tokens, "alert": "big news"})
        .to_string()
        .into_bytes();
    (body, good, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tokens_with_one_percent_dead() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("fanout");
    let mut worker = Worker::start(&sim, &queue, &FAST_RETRIES);
    worker.ready().await;
    let (body, good, dead) = fan_out_job("fan-1", 10_000, 100);
    assert_eq!((good.len(), dead.len()), (9_900, 100));
    let conn = broker().connect().await;
    let started = std::time::Instant::now();
    publish(&conn, &queue, &[body]).await;
    let feedback_queue = format!("{queue}.feedback");
    wait_for(Duration::from_secs(120), "the job to settle", || {
        broker().counts(&queue) == Some((0, 0))
            && broker()
                .counts(&feedback_queue)
                .is_some_and(|(r, _)| r == 100)
    })
    .await;
    println!(
        "10,000-token job settled in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let accepted = sim.sim.accepted();
    let delivered: HashSet<_> = accepted.iter().map(|a| a.token.clone()).collect();
    assert_eq!(accepted.len(), 9_900, "each delivered exactly once");
    assert_eq!(delivered, good.into_iter().collect());
    let events = drain(&conn, &feedback_queue).await;
    let reported: HashSet<String> = events
        .iter()
        .map(|e| {
            serde_json::from_slice::<Value>(&e.delivery.data).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reported, dead.into_iter().collect());
    // Stable apns-ids: one per token, derived from the job id.
    let ids: HashSet<_> = accepted.iter().map(|a| a.apns_id.clone()).collect();
    assert_eq!(ids.len(), 9_900);
    assert!(worker.terminate().await.success());
}

/// A backlog of big fan-outs: with one connection, an app's room holds four
/// jobs of 10,000 tokens; the others wait as bodies and start only when an
/// earlier job has finished. Each token is delivered once. (Before, every
/// delivery started at once and each took a place in turn, so all finished
/// at the end, with all their tokens decoded in memory together.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_big_fan_outs_runs_a_few_jobs_at_a_time() {
    const JOBS: u64 = 6;
    const TOKENS: u64 = 10_000;
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("room");
    let mut worker = Worker::start(&sim, &queue, &FAST_RETRIES);
    worker.ready().await;
    let bodies: Vec<Vec<u8>> = (0..JOBS)
        .map(|j| {
            let tokens: Vec<String> = (0..TOKENS).map(|i| token(j * 1_000_000 + i)).collect();
            json!({"id": format!("room-{j}"), "tokens": tokens, "alert": "big news"})
                .to_string()
                .into_bytes()
        })
        .collect();
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(60), "two jobs waiting for room", || {
        worker.metric("misiva_jobs_waiting_for_room", &[("app", "default")]) == 2.0
    })
    .await;
    // The broker's counts lag (they are sampled): APNs' count comes first.
    wait_for(Duration::from_secs(180), "every token delivered", || {
        sim.sim.accepted_count() >= JOBS * TOKENS
    })
    .await;
    wait_for(Duration::from_secs(60), "every job settled", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let accepted = sim.sim.accepted();
    assert_eq!(accepted.len() as u64, JOBS * TOKENS, "each delivered once");
    let unique: HashSet<_> = accepted.iter().map(|a| a.token.clone()).collect();
    assert_eq!(unique.len() as u64, JOBS * TOKENS);
    // When each job's first and last notification reached APNs.
    let mut spans: HashMap<u64, (u64, u64)> = HashMap::new();
    for a in &accepted {
        let n = u64::from_str_radix(&a.token, 16).unwrap() - 1;
        let span = spans
            .entry(n / 1_000_000)
            .or_insert((a.received_at_us, a.received_at_us));
        span.0 = span.0.min(a.received_at_us);
        span.1 = span.1.max(a.received_at_us);
    }
    let first_finished = spans.values().map(|s| s.1).min().unwrap();
    let mut starts: Vec<u64> = spans.values().map(|s| s.0).collect();
    starts.sort_unstable();
    for (i, start) in starts.iter().enumerate().skip(4) {
        assert!(
            *start >= first_finished,
            "job {} by start began {} ms before any job had finished",
            i + 1,
            (first_finished - start) / 1000
        );
    }
    assert_eq!(
        worker.metric("misiva_jobs_waiting_for_room", &[("app", "default")]),
        0.0
    );
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_fan_out_loses_nothing() {
    // Slow answers so that the kill lands in the middle of the job.
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(20),
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let queue = unique_queue("killed");
    let mut worker = Worker::start(&sim, &queue, &FAST_RETRIES);
    worker.ready().await;
    let (body, good, _) = fan_out_job("kill-1", 10_000, 0);
    let conn = broker().connect().await;
    publish(&conn, &queue, &[body]).await;
    wait_for(
        Duration::from_secs(60),
        "the fan-out to be under way",
        || sim.sim.accepted_count() >= 1_000,
    )
    .await;
    worker.kill9();
    let at_kill = sim.sim.accepted_count();
    assert!(at_kill < 10_000, "the kill came too late to test anything");

    let mut second = Worker::start(&sim, &queue, &FAST_RETRIES);
    second.ready().await;
    let good: HashSet<String> = good.into_iter().collect();
    wait_for(Duration::from_secs(120), "every token delivered", || {
        sim.sim
            .accepted()
            .iter()
            .map(|a| a.token.clone())
            .collect::<HashSet<_>>()
            == good
    })
    .await;
    wait_for(Duration::from_secs(30), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let total = sim.sim.accepted_count();
    println!(
        "killed after {at_kill} of 10000 deliveries; after restart: {total} accepted, {} duplicates (all from the first run's work)",
        total - 10_000
    );
    assert!(
        total - 10_000 <= at_kill + 256,
        "duplicates only for work done before the kill"
    );
    assert!(second.terminate().await.success());
}
