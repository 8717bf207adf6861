//! Faults the supervision tree must survive, against a real broker and the
//! simulator, each with a few thousand jobs in flight. Every test prints what it
//! counted: delivered, duplicated, requeued.

use crate::support;

use misiva::sim::{Faults, SimConfig};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{Broker, SimFixture, Worker, broker, publish, token, unique_queue, wait_for};

fn jobs(count: u64, offset: u64) -> (Vec<Vec<u8>>, HashSet<String>) {
    let tokens: Vec<String> = (0..count).map(|i| token(offset + i)).collect();
    let bodies = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": format!("j-{}", offset + i as u64), "token": t, "alert": "x"})
                .to_string()
                .into_bytes()
        })
        .collect();
    (bodies, tokens.into_iter().collect())
}

/// 50 ms answers and 2 × 10 deliveries in flight: about 400 jobs a second, so
/// a fault lands in the middle of a run of a few thousand.
const THROTTLED: [(&str, &str); 1] = [("MISIVA_PREFETCH", "10")];
/// What can be in flight under THROTTLED: two consumers (the default) ×
/// prefetch 10, one token each. A fault duplicates at most these.
const IN_FLIGHT: u64 = 2 * 10;

fn slow_sim() -> SimConfig {
    SimConfig {
        faults: Faults {
            latency: Duration::from_millis(50),
            ..Faults::default()
        },
        ..Default::default()
    }
}

/// Waits until every token was delivered at least once; returns the duplicates.
async fn all_delivered(sim: &SimFixture, expected: &HashSet<String>, limit: Duration) -> u64 {
    wait_for(limit, "every job delivered", || {
        sim.sim.accepted_count() as usize >= expected.len()
            && sim
                .sim
                .accepted()
                .iter()
                .map(|a| a.token.clone())
                .collect::<HashSet<_>>()
                == *expected
    })
    .await;
    sim.sim.accepted_count() - expected.len() as u64
}

#[cfg(feature = "fault-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_consumer_is_restarted_and_every_job_delivered() {
    let sim = SimFixture::start(slow_sim()).await;
    let queue = unique_queue("panics");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[("MISIVA_FAULT_CRASHES", "3"), ("MISIVA_PREFETCH", "100")],
    );
    worker.ready().await;
    let (bodies, expected) = jobs(2000, 0);
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    let duplicates = all_delivered(&sim, &expected, Duration::from_secs(90)).await;
    wait_for(Duration::from_secs(20), "the queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let restarts = worker.metric("misiva_supervisor_restarts_total", &[]) as usize;
    println!(
        "consumer panics: 2000 jobs, {} delivered, {duplicates} duplicates, {restarts} restarts",
        expected.len()
    );
    // Three panics: each crashes its consumer, unless two land in one consumer
    // before it stops (then that one restart covers both).
    assert!((1..=3).contains(&restarts), "{}", worker.log_text());
    assert!(worker.running());
    // After the restarts every consumer runs with the configured prefetch.
    let consumers = broker().ctl(&["list_consumers", "queue_name", "prefetch_count"]);
    let ours: Vec<&str> = consumers
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(queue.as_str()))
        .collect();
    assert_eq!(ours.len(), 2, "{consumers}");
    assert!(ours.iter().all(|l| l.ends_with("100")), "{consumers}");
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_closing_the_connection_is_survived() {
    let sim = SimFixture::start(slow_sim()).await;
    let queue = unique_queue("closed");
    let mut worker = Worker::start(&sim, &queue, &THROTTLED);
    worker.ready().await;
    let (bodies, expected) = jobs(3000, 10_000);
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(30), "deliveries under way", || {
        sim.sim.accepted_count() >= 300
    })
    .await;
    assert!(
        broker().close_connection_of(&queue),
        "no connection of the worker found"
    );
    let at_close = sim.sim.accepted_count();
    assert!(at_close < 2500, "the fault came too late to test anything");
    let duplicates = all_delivered(&sim, &expected, Duration::from_secs(90)).await;
    wait_for(Duration::from_secs(20), "the queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    println!(
        "connection closed by the broker after {at_close} deliveries: 3000 delivered, {duplicates} duplicates (in flight at the close)"
    );
    assert!(
        worker.metric("misiva_broker_reconnects_total", &[]) >= 1.0,
        "the worker counted its reconnection"
    );
    assert!(
        duplicates <= IN_FLIGHT,
        "{duplicates} duplicates; only the {IN_FLIGHT} deliveries in flight may be sent twice"
    );
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_broker_restart_is_survived() {
    let node = Broker::private(5697);
    let sim = SimFixture::start(slow_sim()).await;
    let queue = unique_queue("restart");
    let mut worker = Worker::start_on(&node, &sim, &queue, &THROTTLED);
    worker.ready().await;
    let (bodies, expected) = jobs(3000, 20_000);
    let conn = node.connect().await;
    publish(&conn, &queue, &bodies).await;
    drop(conn);
    wait_for(Duration::from_secs(30), "deliveries under way", || {
        sim.sim.accepted_count() >= 300
    })
    .await;
    let at_stop = sim.sim.accepted_count();
    node.stop();
    assert!(at_stop < 2500, "the fault came too late to test anything");
    wait_for(
        Duration::from_secs(10),
        "/readyz to report the outage",
        || worker.readyz() == Some(503),
    )
    .await;
    // Alive all along: the orchestrator must not kill a worker waiting for its broker.
    assert_eq!(
        support::admin_get(worker.admin_port().unwrap(), "/healthz").map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(worker.metric("misiva_broker_connected", &[]), 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.start();
    wait_for(Duration::from_secs(60), "/readyz to recover", || {
        worker.readyz() == Some(200)
    })
    .await;
    assert_eq!(
        support::admin_get(worker.admin_port().unwrap(), "/healthz").map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(worker.metric("misiva_broker_connected", &[]), 1.0);
    assert!(worker.metric("misiva_broker_reconnects_total", &[]) >= 1.0);
    let duplicates = all_delivered(&sim, &expected, Duration::from_secs(120)).await;
    wait_for(Duration::from_secs(30), "the queue to settle", || {
        node.counts(&queue) == Some((0, 0))
    })
    .await;
    println!(
        "broker restarted after {at_stop} deliveries: 3000 delivered, {duplicates} duplicates"
    );
    assert!(worker.running(), "{}", worker.log_text());
    assert!(
        duplicates <= IN_FLIGHT,
        "{duplicates} duplicates; only the {IN_FLIGHT} deliveries in flight may be sent twice"
    );
    assert!(
        worker.metric("misiva_broker_reconnects_total", &[]) >= 1.0,
        "the worker counted its reconnection"
    );
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stays_down_makes_the_worker_exit_non_zero() {
    let node = Broker::private(5696);
    let sim = SimFixture::start(Default::default()).await;
    let queue = unique_queue("gone");
    let mut worker = Worker::start_on(
        &node,
        &sim,
        &queue,
        &[("MISIVA_RESTART_INTENSITY", "3/30s")],
    );
    worker.ready().await;
    node.stop();
    let started = Instant::now();
    let status = worker.wait_exit(Duration::from_secs(90)).await;
    let log = worker.log_text();
    println!(
        "worker exited with {status:?} {:.1} s after the broker stopped",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("restart intensity exceeded"), "{log}");
    assert!(log.contains("supervision gave up"), "{log}");
    node.start();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_duplicates_nothing() {
    let sim = SimFixture::start(slow_sim()).await;
    let queue = unique_queue("sigterm");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[THROTTLED[0], ("MISIVA_SHUTDOWN_GRACE", "10")],
    );
    worker.ready().await;
    let (bodies, expected) = jobs(3000, 30_000);
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(30), "deliveries under way", || {
        sim.sim.accepted_count() >= 500
    })
    .await;
    let stopping = Instant::now();
    let status = worker.terminate().await;
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}\n{}", worker.log_text());
    assert!(
        took < Duration::from_secs(10),
        "stopped in {took:?}, beyond the grace period"
    );

    // Nothing unacked is left behind, and what was delivered is not in the queue:
    // delivered + back in the queue = published, exactly.
    wait_for(Duration::from_secs(10), "the broker to count", || {
        broker()
            .counts(&queue)
            .is_some_and(|(_, unacked)| unacked == 0)
    })
    .await;
    let requeued = u64::from(support::ready_now(&conn, &queue).await);
    let delivered_first = sim.sim.accepted_count();
    println!(
        "SIGTERM mid-run: first worker delivered {delivered_first}, {requeued} back in the queue, exit in {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(
        delivered_first + requeued,
        3000,
        "an acked job came back, or a job vanished"
    );

    let mut second = Worker::start(&sim, &queue, &[]);
    second.ready().await;
    let duplicates = all_delivered(&sim, &expected, Duration::from_secs(60)).await;
    println!("after a second worker: 3000 delivered, {duplicates} duplicates");
    assert_eq!(duplicates, 0);
    assert!(second.terminate().await.success());
}
