//! Failure paths of CONTRACT §3: a settlement that cannot be published, a
//! message that kills its consumer on every delivery, provider tokens that
//! APNs expires while jobs flow.

use crate::support;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use misiva::sim::{SimConfig, TokenEventKind};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::{
    SimFixture, Worker, broker, drain, publish, ready_now, special_token, token, unique_queue,
    wait_for,
};

fn accepted_per_token(sim: &SimFixture) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for a in sim.sim.accepted() {
        *counts.entry(a.token).or_insert(0) += 1;
    }
    counts
}

/// The feedback queue is unbound while jobs that need feedback flow, so every
/// feedback publish comes back unroutable. No token is sent twice: the
/// settlement's publishes are retried with pauses, the jobs go back to the
/// queue only after those, and their redeliveries are settled with the
/// verdict already reached, without a second push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_settlement_never_sends_a_token_twice() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("settle");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;
    let conn = broker().connect().await;
    let feedback = format!("{queue}.feedback");
    let admin = conn.create_channel().await.unwrap();
    admin
        .queue_unbind(
            feedback.as_str().into(),
            feedback.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let outage = Instant::now();

    // Half the jobs need a feedback event (410), half are plain deliveries.
    let mut bodies = Vec::new();
    let mut gone = HashSet::new();
    for i in 0..40u64 {
        let dead = special_token("ffff0410", i);
        gone.insert(dead.clone());
        bodies.push(
            json!({"id": format!("gone-{i}"), "token": dead})
                .to_string()
                .into_bytes(),
        );
        bodies.push(
            json!({"id": format!("ok-{i}"), "token": token(i)})
                .to_string()
                .into_bytes(),
        );
    }
    publish(&conn, &queue, &bodies).await;

    // Keep the exchange away past the settlement's own retries (about 11 s),
    // so that jobs go back to the queue and come again.
    wait_for(
        Duration::from_secs(30),
        "a job returned to the queue",
        || worker.metric("misiva_jobs_requeued_total", &[]) > 0.0,
    )
    .await;
    let first_requeue = outage.elapsed();
    admin
        .queue_bind(
            feedback.as_str().into(),
            feedback.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    support::wait_until(Duration::from_secs(60), "40 feedback events", || async {
        ready_now(&conn, &feedback).await >= 40
    })
    .await;
    wait_for(Duration::from_secs(30), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;

    let sent = sim.sim.requests_by_token();
    for i in 0..40u64 {
        assert_eq!(sent.get(&token(i)).copied(), Some(1), "ok-{i}");
        let dead = special_token("ffff0410", i);
        assert_eq!(sent.get(&dead).copied(), Some(1), "gone-{i} sent again");
    }
    let events = drain(&conn, &feedback).await;
    let tokens: HashSet<String> = events
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.delivery.data).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(tokens, gone);
    let requeued = worker.metric("misiva_jobs_requeued_total", &[]) as usize;
    let retried = worker.metric("misiva_settlement_retries_total", &[]) as usize;
    println!(
        "broken settlement: first requeue after {first_requeue:?}, {requeued} requeues, {retried} publish retries, {} feedback events",
        events.len()
    );
    // Back to the queue only after the pauses (100 ms doubling to 5 s, 8 tries).
    assert!(first_requeue >= Duration::from_secs(8), "{first_requeue:?}");
    assert!((1..=2 * 40).contains(&requeued), "{requeued} requeues");
    assert!(
        worker.metric("misiva_supervisor_restarts_total", &[]) == 0.0,
        "{}",
        worker.log_text()
    );
    assert!(worker.terminate().await.success());
}

/// A message that kills its consumer on every delivery is parked as poison
/// once the broker's delivery count reaches MISIVA_MAX_DELIVERIES, and the
/// jobs around it are delivered.
#[cfg(feature = "fault-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_its_consumer_is_parked_as_poison() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("poison");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_FAULT_CRASH_ON", "kills-its-consumer"),
            ("MISIVA_MAX_DELIVERIES", "3"),
            ("MISIVA_CONSUMERS", "1"),
            // Every unacked delivery of a crashing channel is returned and
            // counted; one at a time, the poison's neighbours are not.
            ("MISIVA_PREFETCH", "1"),
        ],
    );
    worker.ready().await;
    let conn = broker().connect().await;
    let poison_token = token(999);
    let mut bodies = vec![
        json!({"id": "kills-its-consumer", "token": poison_token, "alert": "x"})
            .to_string()
            .into_bytes(),
    ];
    for i in 0..20u64 {
        bodies.push(
            json!({"token": token(i), "alert": "x"})
                .to_string()
                .into_bytes(),
        );
    }
    publish(&conn, &queue, &bodies).await;
    let dead_queue = format!("{queue}.dead");
    support::wait_until(Duration::from_secs(60), "the dead letter", || async {
        ready_now(&conn, &dead_queue).await >= 1
    })
    .await;
    wait_for(Duration::from_secs(30), "the normal jobs", || {
        sim.sim.accepted_count() >= 20
    })
    .await;
    let dead = drain(&conn, &dead_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        support::header(&dead[0], "x-misiva-reason").as_deref(),
        Some("poison"),
        "{:?}\n{}",
        dead[0].delivery.properties.headers(),
        worker.log_text()
    );
    let detail = support::header(&dead[0], "x-misiva-detail").unwrap();
    assert!(detail.contains("4 times"), "{detail}");
    assert_eq!(sim.sim.requests_by_token().get(&poison_token), None);
    assert_eq!(accepted_per_token(&sim).len(), 20);
    let crashes = worker.metric("misiva_supervisor_restarts_total", &[]) as usize;
    println!("poison: parked after {crashes} consumer crashes");
    // Delivered three times (each killing its consumer), parked on the fourth.
    assert_eq!(crashes, 3, "{}", worker.log_text());
    assert!(worker.running(), "{}", worker.log_text());
    assert!(worker.terminate().await.success());
}

/// APNs expires provider tokens after 11 s here (an hour in production):
/// each rejected token is replaced at once, the rejected notifications are
/// sent again with the new one, and every job is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_expired_by_apns_are_renewed_at_once() {
    let sim = SimFixture::start(SimConfig {
        token_max_age: Duration::from_secs(11),
        ..Default::default()
    })
    .await;
    let queue = unique_queue("expiry");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;
    let conn = broker().connect().await;
    let rounds = 120u64;
    for round in 0..rounds {
        let bodies: Vec<Vec<u8>> = (0..10)
            .map(|k| {
                json!({"token": token(round * 10 + k), "alert": "x"})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        publish(&conn, &queue, &bodies).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let total = (rounds * 10) as usize;
    wait_for(Duration::from_secs(60), "every job", || {
        accepted_per_token(&sim).len() == total
    })
    .await;
    assert!(accepted_per_token(&sim).values().all(|n| *n == 1));

    // For every token APNs refused as expired, the first acceptance of a
    // newer one followed within a second.
    let events = sim.sim.token_events();
    let mut first_expired: Vec<(u64, Duration)> = Vec::new();
    for e in &events {
        if e.kind == TokenEventKind::Expired && !first_expired.iter().any(|(t, _)| *t == e.token) {
            first_expired.push((e.token, e.at));
        }
    }
    assert!(
        first_expired.len() >= 2,
        "expected at least two expiries in {:?}",
        events.len()
    );
    for (expired, at) in &first_expired {
        let renewed = events
            .iter()
            .find(|e| e.kind == TokenEventKind::Accepted && e.token != *expired && e.at >= *at)
            .unwrap_or_else(|| panic!("no token accepted after the expiry at {at:?}"));
        let delay = renewed.at - *at;
        println!("token expired at {at:?}, a new one accepted {delay:?} later");
        assert!(delay < Duration::from_secs(1), "renewal took {delay:?}");
    }
    assert!(
        worker.metric("misiva_jobs_retried_total", &[]) == 0.0,
        "a renewal should not need a retry tier:\n{}",
        worker.log_text()
    );
    assert!(worker.terminate().await.success());
}

/// While APNs fails everything, the app's breaker holds deliveries; none is
/// held past MISIVA_MAX_HOLD (so never near the broker's consumer_timeout):
/// the held tokens go to a retry tier, and everything is delivered once APNs
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_by_an_open_breaker_move_to_a_retry_tier() {
    let sim = SimFixture::start(SimConfig {
        faults: misiva::sim::Faults {
            error_rate: 1.0,
            error_status: 503,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let queue = unique_queue("hold");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_MAX_HOLD", "2s"),
            ("MISIVA_RETRY_DELAYS", "1s"),
            ("MISIVA_MAX_ATTEMPTS", "100"),
        ],
    );
    worker.ready().await;
    let conn = broker().connect().await;
    let bodies: Vec<Vec<u8>> = (0..60u64)
        .map(|i| {
            json!({"token": token(i), "alert": "x"})
                .to_string()
                .into_bytes()
        })
        .collect();
    publish(&conn, &queue, &bodies).await;
    wait_for(
        Duration::from_secs(20),
        "held jobs moved to a retry tier",
        || {
            worker
                .log_lines("scheduled for retry")
                .iter()
                .any(|l| l.contains("held 2s"))
        },
    )
    .await;
    sim.sim.set_faults(Default::default());
    wait_for(Duration::from_secs(60), "every job", || {
        accepted_per_token(&sim).len() == 60
    })
    .await;
    wait_for(Duration::from_secs(30), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    assert!(accepted_per_token(&sim).values().all(|n| *n == 1));
    assert!(worker.terminate().await.success());
}

/// Acks are batched (`multiple`), but never over a delivery still in flight:
/// with a slow delivery between fast ones, the fast ones before it are acked,
/// the slow one is not, and those after it are acked one by one once it has
/// held them back for 100 ms (so the prefetch window keeps moving). A crash at
/// that moment loses nothing and resends only what the broker still held.
#[cfg(feature = "fault-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_delivery_is_never_acked_by_a_later_batched_ack() {
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("batched");
    let env = [
        ("MISIVA_CONSUMERS", "1"),
        ("MISIVA_PREFETCH", "300"),
        ("MISIVA_FAULT_SLOW_ON", "slow-delivery"),
        // Longer than the test waits: the slow delivery is still in flight
        // when the worker is killed, however slow the machine.
        ("MISIVA_FAULT_SLOW_MS", "120000"),
    ];
    let mut worker = Worker::start(&sim, &queue, &env);
    worker.ready().await;
    let conn = broker().connect().await;
    let job = |i: u64| {
        json!({"token": token(i), "alert": "x"})
            .to_string()
            .into_bytes()
    };
    let mut bodies: Vec<Vec<u8>> = (0..200).map(job).collect();
    bodies.push(
        json!({"id": "slow-delivery", "token": token(999), "alert": "x"})
            .to_string()
            .into_bytes(),
    );
    bodies.extend((200..450).map(job));
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(20), "the fast jobs", || {
        sim.sim.accepted_count() >= 450
    })
    .await;
    // Every fast job's ack has reached the broker: only the slow delivery
    // is unacked (the ack task acks the deliveries done behind it one by
    // one after 100 ms).
    wait_for(
        Duration::from_secs(20),
        "only the slow delivery unacked",
        || broker().counts(&queue) == Some((0, 1)),
    )
    .await;
    assert_eq!(sim.sim.requests_by_token().get(&token(999)), None);
    worker.kill9();

    let mut worker = Worker::start(&sim, &queue, &[("MISIVA_CONSUMERS", "1")]);
    worker.ready().await;
    wait_for(
        Duration::from_secs(20),
        "the slow job after the crash",
        || sim.sim.requests_by_token().get(&token(999)) == Some(&1),
    )
    .await;
    wait_for(Duration::from_secs(20), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let sent = sim.sim.requests_by_token();
    for i in 0..200 {
        assert_eq!(
            sent.get(&token(i)),
            Some(&1),
            "job {i} was acked before the crash"
        );
    }
    let resent = (200..450)
        .filter(|i| sent.get(&token(*i)) == Some(&2))
        .count();
    println!(
        "batched acks: 200 acked before the slow one, {resent} of the 250 after it sent again"
    );
    assert!((200..450).all(|i| sent.get(&token(i)).is_some_and(|n| (1..=2).contains(n))));
    assert!(
        resent <= 150,
        "{resent} deliveries were held back behind the slow one"
    );
    assert!(worker.terminate().await.success());
}
