//! The sharded work queue (CONTRACT §6) on one node: jobs published through
//! the consistent-hash exchange spread over the shards and are each
//! delivered once; jobs published the old way still arrive; retries come
//! back through the exchange; lowering the shard count deletes nothing and
//! leaves no job behind; and without the plugin the worker says which one
//! it needs and exits 2 with nothing declared.

use crate::support;

use misiva::sim::{Faults, SimConfig};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::{
    SimFixture, Worker, broker, declare_topology, delivered_all, jobs, publish, publish_routed,
    queue_exists, ready_now, recording_sim, token, unique_queue, wait_for,
};

fn shard(queue: &str, index: usize) -> String {
    if index == 0 {
        queue.to_owned()
    } else {
        format!("{queue}.{index}")
    }
}

/// Jobs keyed by their id, as the contract asks publishers to do.
fn keyed(tokens: &[String], prefix: &str) -> Vec<(String, Vec<u8>)> {
    jobs(tokens, prefix)
        .into_iter()
        .enumerate()
        .map(|(i, body)| (format!("{prefix}-{i}"), body))
        .collect()
}

/// The queues bound to `exchange`, as the broker lists them.
fn bound_to(exchange: &str) -> HashSet<String> {
    broker()
        .ctl(&["list_bindings", "source_name", "destination_name"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == exchange).then(|| f.next().map(str::to_owned))?
        })
        .collect()
}

/// 40,000 jobs through the exchange land 15–35% in each of four shards; 1,000
/// published the old way (default exchange, the work queue's name) land in
/// shard 0; the worker then delivers every one of the 41,000 exactly once,
/// consuming all four shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_share_the_jobs_and_old_publishers_still_arrive() {
    const N: usize = 4;
    let node = broker();
    let queue = unique_queue("shards");
    let declared = declare_topology(node, &queue, &[("MISIVA_SHARDS", "4")]);
    assert!(declared.status.success(), "{declared:?}");
    let exchange = format!("{queue}.shards");
    assert_eq!(
        bound_to(&exchange),
        (0..N).map(|i| shard(&queue, i)).collect::<HashSet<_>>()
    );

    let conn = node.connect().await;
    let tokens: Vec<String> = (0..40_000).map(|n| token(200_000 + n)).collect();
    for chunk in keyed(&tokens, "s").chunks(5_000) {
        publish_routed(&conn, &exchange, chunk).await;
    }
    let old: Vec<String> = (0..1_000).map(|n| token(300_000 + n)).collect();
    publish(&conn, &queue, &jobs(&old, "old")).await;
    let mut landed = Vec::new();
    for i in 0..N {
        landed.push(ready_now(&conn, &shard(&queue, i)).await);
    }
    landed[0] -= 1_000;
    println!("four shards: 40,000 jobs through the exchange landed {landed:?}");
    assert_eq!(landed.iter().sum::<u32>(), 40_000);
    for (i, n) in landed.iter().enumerate() {
        let share = f64::from(*n) / 40_000.0;
        assert!(
            (0.15..=0.35).contains(&share),
            "shard {i} took {:.1}% of the jobs: {landed:?}",
            share * 100.0
        );
    }

    let sim = recording_sim(Duration::ZERO).await;
    let mut worker = Worker::start(&sim, &queue, &[("MISIVA_SHARDS", "4")]);
    worker.ready().await;
    let expected: HashSet<String> = tokens.iter().chain(&old).cloned().collect();
    wait_for(Duration::from_secs(180), "every job delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    wait_for(Duration::from_secs(30), "every job acked", || {
        worker.metric("misiva_jobs_acked_total", &[]) >= 41_000.0
    })
    .await;
    assert_eq!(sim.sim.accepted_count(), 41_000, "each delivered once");
    let text = worker.metrics();
    for (i, n) in landed.iter().enumerate() {
        let q = shard(&queue, i);
        let received = support::metric(&text, "misiva_jobs_received_total", &[("queue", &q)]);
        let wanted = f64::from(*n) + if i == 0 { 1_000.0 } else { 0.0 };
        assert_eq!(received, wanted, "deliveries from {q}");
        // Two consumers on every shard, the default.
        assert_eq!(
            support::metric(&text, "misiva_consumers_running", &[("queue", &q)]),
            2.0
        );
    }
    for i in 0..N {
        assert_eq!(ready_now(&conn, &shard(&queue, i)).await, 0);
    }
    assert_eq!(ready_now(&conn, &format!("{queue}.dead")).await, 0);
    assert!(worker.terminate().await.success());
}

/// Jobs all published the old way, into shard 0, and answered 503 half of
/// the time: their retries go back through the shard exchange, so the other
/// shards deliver some of them, and every token is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_come_back_through_the_shard_exchange() {
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            error_rate: 0.5,
            error_status: 503,
            latency: Duration::ZERO,
            ..Faults::default()
        },
        record: true,
        ..Default::default()
    })
    .await;
    let queue = unique_queue("shard-retry");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_SHARDS", "3"),
            ("MISIVA_RETRY_DELAYS", "100ms,200ms"),
            ("MISIVA_MAX_ATTEMPTS", "30"),
        ],
    );
    worker.ready().await;
    let conn = broker().connect().await;
    let tokens: Vec<String> = (0..300).map(|n| token(400_000 + n)).collect();
    publish(&conn, &queue, &jobs(&tokens, "r")).await;
    let expected: HashSet<String> = tokens.iter().cloned().collect();
    wait_for(Duration::from_secs(120), "every token delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    wait_for(Duration::from_secs(30), "every delivery acked", || {
        let t = worker.metrics();
        support::metric(&t, "misiva_jobs_acked_total", &[])
            == support::metric(&t, "misiva_jobs_received_total", &[])
    })
    .await;
    let text = worker.metrics();
    let retried = support::metric(&text, "misiva_jobs_retried_total", &[]);
    let received: HashMap<usize, f64> = (0..3)
        .map(|i| {
            let q = shard(&queue, i);
            (
                i,
                support::metric(&text, "misiva_jobs_received_total", &[("queue", &q)]),
            )
        })
        .collect();
    println!("shard retries: {retried} retries; deliveries by shard {received:?}");
    assert!(retried >= 100.0, "{retried} retries");
    assert_eq!(received.values().sum::<f64>(), 300.0 + retried);
    // Only retries reach shards 1 and 2; a third of them each, give or take.
    for i in [1, 2] {
        assert!(
            received[&i] >= retried / 6.0,
            "shard {i} took {} of {retried} retries",
            received[&i]
        );
    }
    // The sharded tiers, not the single-queue ones, are in use.
    assert!(queue_exists(&conn, &format!("{queue}.shards.retry.100ms")).await);
    assert!(!queue_exists(&conn, &format!("{queue}.retry.100ms")).await);
    assert_eq!(ready_now(&conn, &format!("{queue}.dead")).await, 0);
    assert!(worker.terminate().await.success());
}

/// From one queue to four shards and down to two: jobs wait in the plain
/// work queue and in all four shards when a worker configured for two
/// starts. Shards 2 and 3 are taken out of the exchange but not deleted;
/// the worker consumes them until they are empty; every job is delivered,
/// and jobs published afterwards land only in shards 0 and 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_from_four_shards_to_two_deletes_nothing_and_loses_nothing() {
    let node = broker();
    let queue = unique_queue("shrink");
    let exchange = format!("{queue}.shards");
    let conn = node.connect().await;
    // One queue first, with a publisher of the old kind.
    let declared = declare_topology(node, &queue, &[]);
    assert!(declared.status.success(), "{declared:?}");
    let old: Vec<String> = (0..500).map(|n| token(500_000 + n)).collect();
    publish(&conn, &queue, &jobs(&old, "old")).await;
    // Then four shards, and jobs through the exchange.
    let declared = declare_topology(node, &queue, &[("MISIVA_SHARDS", "4")]);
    assert!(declared.status.success(), "{declared:?}");
    let tokens: Vec<String> = (0..4_000).map(|n| token(510_000 + n)).collect();
    publish_routed(&conn, &exchange, &keyed(&tokens, "four")).await;
    let mut left_in_retired = 0;
    for i in [2, 3] {
        left_in_retired += ready_now(&conn, &shard(&queue, i)).await;
    }
    assert!(left_in_retired >= 1_000, "{left_in_retired} in shards 2-3");

    let sim = recording_sim(Duration::from_millis(1)).await;
    let mut worker = Worker::start(&sim, &queue, &[("MISIVA_SHARDS", "2")]);
    worker.ready().await;
    let expected: HashSet<String> = tokens.iter().chain(&old).cloned().collect();
    wait_for(Duration::from_secs(120), "every job delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    let text = worker.metrics();
    for i in [2, 3] {
        let q = shard(&queue, i);
        assert!(queue_exists(&conn, &q).await, "{q} was deleted");
        assert_eq!(ready_now(&conn, &q).await, 0, "{q} still holds jobs");
        assert_eq!(
            support::metric(&text, "misiva_shards_retired", &[("queue", &q)]),
            1.0,
            "{text}"
        );
    }
    assert_eq!(
        bound_to(&exchange),
        [shard(&queue, 0), shard(&queue, 1)].into_iter().collect()
    );
    // What is published now lands in the two shards that remain.
    let later: Vec<String> = (0..500).map(|n| token(520_000 + n)).collect();
    publish_routed(&conn, &exchange, &keyed(&later, "two")).await;
    let expected: HashSet<String> = expected.into_iter().chain(later).collect();
    wait_for(Duration::from_secs(60), "the later jobs delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    let text = worker.metrics();
    let from_retired: f64 = [2, 3]
        .iter()
        .map(|&i| {
            support::metric(
                &text,
                "misiva_jobs_received_total",
                &[("queue", &shard(&queue, i))],
            )
        })
        .sum();
    assert_eq!(from_retired, f64::from(left_in_retired));
    assert_eq!(ready_now(&conn, &format!("{queue}.dead")).await, 0);
    assert!(worker.terminate().await.success());
}

/// A node without `rabbitmq_consistent_hash_exchange`: `misiva topology` and
/// `misiva run` with shards exit 2, name the plugin and the command that
/// enables it, and declare nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_plugin_shards_exit_2_naming_it() {
    let node = support::Broker::private_without_plugins(5689);
    let queue = unique_queue("no-plugin");
    let out = declare_topology(&node, &queue, &[("MISIVA_SHARDS", "3")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"),
        "{stderr}"
    );

    let sim = recording_sim(Duration::ZERO).await;
    let mut worker = Worker::start_on(&node, &sim, &queue, &[("MISIVA_SHARDS", "3")]);
    let status = worker.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(2), "{}", worker.log_text());
    assert!(
        worker
            .log_text()
            .contains("plugin rabbitmq_consistent_hash_exchange"),
        "{}",
        worker.log_text()
    );
    let queues = node.ctl(&["list_queues", "name"]);
    assert!(!queues.contains(queue.as_str()), "declared: {queues}");
    // With one shard the plugin is not needed.
    let out = declare_topology(&node, &queue, &[]);
    assert!(out.status.success(), "{out:?}");
}
