//! A three-node RabbitMQ cluster (`scripts/cluster.sh`): the worker is given
//! every node's URL, the work queue is a quorum queue replicated on all
//! three, and while jobs flow the node that leads the work queue is stopped,
//! then started again; or the node the worker is connected to is. Nothing is
//! lost; duplicates only for what was in flight; deliveries pause for
//! seconds, not for a shutdown limit. And a node that goes silent without
//! closing anything (behind a proxy that black-holes it) is left within the
//! heartbeat.

use crate::support;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use support::{
    Proxy, Worker, alerting, broker, delivered_all, jobs, longest_gap, now_us, publish, ready_now,
    recording_sim, token, unique_queue, wait_for,
};

/// First AMQP port of the cluster's three nodes.
const BASE: u16 = 5691;

fn cluster(args: &[&str]) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
        .args(args)
        .env("MISIVA_CLUSTER_PORT", BASE.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The tests that use the cluster take turns: there is one, started by the
/// first of them unless it runs already (`scripts/test.sh` starts it in the
/// background while the tests compile), and left running for the next: each
/// test leaves every node up. `scripts/test.sh` stops the cluster at the
/// end, and so does `scripts/cluster.sh stop`. Starting it takes most of a
/// minute.
static ONE_CLUSTER: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

/// The cluster, this test's alone while the guard lives.
async fn the_cluster() -> tokio::sync::MutexGuard<'static, bool> {
    let mut started = ONE_CLUSTER.lock().await;
    if !*started {
        cluster(&["ensure"]);
        *started = true;
    }
    started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queue_leader_stopped_under_load_loses_nothing() {
    let _cluster = the_cluster().await;
    let urls = cluster(&["urls"]);
    let first = support::Broker {
        port: BASE,
        url: urls.clone(),
    };
    let sim = recording_sim(Duration::from_millis(50)).await;
    let queue = unique_queue("cluster");
    // Two consumers × prefetch 10: what can be in flight, and so sent twice.
    const IN_FLIGHT: u64 = 2 * 10;
    let mut worker = Worker::start_on(&first, &sim, &queue, &[("MISIVA_PREFETCH", "10")]);
    worker.ready().await;

    // Publish through the second node: the first is the one that will go.
    let second = support::Broker::private(BASE + 1);
    let conn = second.connect().await;
    let tokens: Vec<String> = (0..3000).map(|n| token(50_000 + n)).collect();
    publish(&conn, &queue, &jobs(&tokens, "c")).await;
    let members = second.ctl(&["list_queues", "name", "members"]);
    let line = members
        .lines()
        .find(|l| l.starts_with(queue.as_str()))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        line.matches("misiva-").count(),
        3,
        "replicated on all three: {line}"
    );

    wait_for(Duration::from_secs(60), "deliveries under way", || {
        sim.sim.accepted_count() >= 300
    })
    .await;
    let leader: u16 = cluster(&["leader", &queue]).parse().unwrap();
    let at_stop = sim.sim.accepted_count();
    cluster(&["stop-node", &leader.to_string()]);
    assert!(at_stop < 2500, "the fault came too late to test anything");

    let expected: HashSet<String> = tokens.iter().cloned().collect();
    wait_for(Duration::from_secs(180), "every job delivered", || {
        let accepted: HashSet<String> = sim.sim.accepted().into_iter().map(|a| a.token).collect();
        accepted == expected
    })
    .await;
    let duplicates = sim.sim.accepted_count() - expected.len() as u64;
    println!(
        "cluster: node {leader} (the work queue's leader) stopped after {at_stop} deliveries; 3000 delivered, {duplicates} duplicates"
    );
    assert!(
        duplicates <= IN_FLIGHT,
        "{duplicates} duplicates; only the {IN_FLIGHT} in flight may be sent twice"
    );
    assert!(worker.running(), "{}", worker.log_text());
    if leader == BASE {
        // The worker's own node went: it moved to another one.
        assert!(worker.metric("misiva_broker_reconnects_total", &[]) >= 1.0);
    }

    // The node comes back and rejoins; the queue ends empty, nothing dead.
    cluster(&["start-node", &leader.to_string()]);
    let conn = second.connect().await;
    wait_for(Duration::from_secs(30), "the queue drained", || {
        worker.metric("misiva_jobs_acked_total", &[]) >= 3000.0
    })
    .await;
    assert_eq!(ready_now(&conn, &queue).await, 0);
    assert_eq!(ready_now(&conn, &format!("{queue}.dead")).await, 0);
    assert!(worker.terminate().await.success());
}

/// Declares the contract's queues for `queue` through `node`: a quorum
/// queue's leader is the node it was declared on.
fn declare_through(node: &support::Broker, queue: &str) {
    let declared = support::declare_topology(node, queue, &[]);
    assert!(declared.status.success(), "{declared:?}");
}

/// How long the slow jobs of the next test hold their delivery before they
/// are sent: longer than any pause the test allows.
const SLOW_MS: &str = "12000";

/// The node the worker is connected to stops while the work queue is led by
/// another one, and two jobs are in flight that take 12 s to send (a fault
/// hook holds them): the consumers stop without waiting for them or for the
/// dead connection, the worker moves to the next node, and deliveries pause
/// for less than 5 s. The two slow jobs finish in the background and their
/// redeliveries are settled with their verdicts: each is sent once. Nothing is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connected_node_stopped_under_load_pauses_deliveries_briefly() {
    let _cluster = the_cluster().await;
    let urls = cluster(&["urls"]);
    let second = support::Broker::private(BASE + 1);
    let queue = unique_queue("conn-node");
    declare_through(&second, &queue);
    assert_eq!(cluster(&["leader", &queue]), (BASE + 1).to_string());

    let sim = recording_sim(Duration::from_millis(20)).await;
    // Node 1 first in the list: the worker connects there.
    let all = support::Broker {
        port: BASE,
        url: urls,
    };
    const IN_FLIGHT: u64 = 2 * 50;
    let mut worker = Worker::start_on(
        &all,
        &sim,
        &queue,
        &[
            ("MISIVA_PREFETCH", "50"),
            ("MISIVA_FAULT_SLOW_ON", "slow-job"),
            ("MISIVA_FAULT_SLOW_MS", SLOW_MS),
        ],
    );
    worker.ready().await;
    let conn = second.connect().await;
    let tokens: Vec<String> = (0..2000).map(|n| token(70_000 + n)).collect();
    publish(&conn, &queue, &jobs(&tokens, "n")).await;
    wait_for(Duration::from_secs(60), "deliveries under way", || {
        sim.sim.accepted_count() >= 500
    })
    .await;
    // Two slow jobs, then more ordinary ones: once a hundred of those are
    // in, the slow ones are held by the worker.
    let slow: Vec<String> = (0..2).map(|n| token(80_000 + n)).collect();
    let slow_jobs = alerting(&slow, "slow", "slow-job");
    let more: Vec<String> = (0..4000).map(|n| token(72_000 + n)).collect();
    publish(&conn, &queue, &slow_jobs).await;
    let before = sim.sim.accepted_count();
    publish(&conn, &queue, &jobs(&more, "m")).await;
    wait_for(Duration::from_secs(60), "the slow jobs held", || {
        sim.sim.accepted_count() >= before + 100
    })
    .await;
    let at = now_us();
    cluster(&["stop-app", &BASE.to_string()]);
    let expected: HashSet<String> = tokens.iter().chain(&more).chain(&slow).cloned().collect();
    wait_for(Duration::from_secs(180), "every job delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    let accepted = sim.sim.accepted();
    // The pause is measured on the ordinary jobs: the slow ones arrive 12 s
    // after they were taken, on purpose, often after the rest.
    let ordinary: Vec<_> = accepted
        .iter()
        .filter(|a| !slow.contains(&a.token))
        .cloned()
        .collect();
    let gap = longest_gap(&ordinary, at);
    let duplicates = accepted.len() as u64 - expected.len() as u64;
    let slow_sent = accepted.iter().filter(|a| slow.contains(&a.token)).count();
    println!(
        "cluster: the worker's node stopped; longest pause in deliveries {gap:?}, {duplicates} duplicates, the slow jobs sent {slow_sent} times"
    );
    assert!(
        gap < Duration::from_secs(5),
        "deliveries paused for {gap:?}: {}",
        worker.log_text()
    );
    assert_eq!(slow_sent, 2, "each slow job sent once");
    assert!(duplicates <= IN_FLIGHT, "{duplicates} duplicates");
    assert!(worker.metric("misiva_broker_reconnects_total", &[]) >= 1.0);
    assert!(worker.running(), "{}", worker.log_text());
    cluster(&["start-app", &BASE.to_string()]);
    assert!(worker.terminate().await.success());
}

/// The worker's node goes silent: a proxy in front of it stops forwarding
/// and closes nothing, so no reset or close ever arrives. The heartbeat
/// (5 s, silence noticed after two intervals) ends the connection, and the
/// worker connects to the next node in the list within the heartbeat's
/// 10 s plus 5; every job is delivered, the ones the silent connection held
/// once the broker's side of the heartbeat gives them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_node_is_left_within_the_heartbeat() {
    let direct = broker();
    let proxy = Proxy::start(direct.port).await;
    let via = support::Broker {
        port: proxy.port,
        url: format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f,{}",
            proxy.port, direct.url
        ),
    };
    let sim = recording_sim(Duration::from_millis(100)).await;
    let queue = unique_queue("black-hole");
    let mut worker = Worker::start_on(&via, &sim, &queue, &[("MISIVA_PREFETCH", "10")]);
    worker.ready().await;
    let conn = direct.connect().await;
    let tokens: Vec<String> = (0..3000).map(|n| token(90_000 + n)).collect();
    publish(&conn, &queue, &jobs(&tokens, "b")).await;
    wait_for(Duration::from_secs(60), "deliveries under way", || {
        sim.sim.accepted_count() >= 300
    })
    .await;
    proxy.black_hole();
    let silent = std::time::Instant::now();
    wait_for(
        Duration::from_secs(60),
        "a connection to the next node",
        || worker.metric("misiva_broker_reconnects_total", &[]) >= 1.0,
    )
    .await;
    let took = silent.elapsed();
    let expected: HashSet<String> = tokens.iter().cloned().collect();
    wait_for(Duration::from_secs(120), "every job delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    println!("black hole: connected to the next node {took:?} after the first went silent");
    assert!(
        took <= Duration::from_secs(15),
        "the silent node was left after {took:?}"
    );
    assert!(worker.running(), "{}", worker.log_text());
    assert!(worker.terminate().await.success());
}

/// A rolling restart, as an upgrade does it: each of the three nodes has its
/// RabbitMQ stopped and started again in turn, while a backlog drains. The
/// worker starts on node 1 and the queue is led by node 2, so the first step
/// takes the worker's node; the second, the queue's leader and the worker's
/// node at once (the worker moved to node 2); the third, the worker's node
/// again (it moved to node 3) while the leadership moved on. Nothing is lost,
/// and deliveries never pause for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_cluster_never_pauses_deliveries_for_long() {
    let _cluster = the_cluster().await;
    let urls = cluster(&["urls"]);
    let second = support::Broker::private(BASE + 1);
    let third = support::Broker::private(BASE + 2);
    let queue = unique_queue("rolling");
    declare_through(&second, &queue);
    let sim = recording_sim(Duration::from_millis(50)).await;
    let all = support::Broker {
        port: BASE,
        url: urls,
    };
    const IN_FLIGHT: u64 = 2 * 20;
    let mut worker = Worker::start_on(&all, &sim, &queue, &[("MISIVA_PREFETCH", "20")]);
    worker.ready().await;
    let tokens: Vec<String> = (0..40_000).map(|n| token(200_000 + n)).collect();
    publish(&third.connect().await, &queue, &jobs(&tokens, "r")).await;
    wait_for(Duration::from_secs(60), "deliveries under way", || {
        sim.sim.accepted_count() >= 1000
    })
    .await;
    let at = now_us();
    for node in [BASE, BASE + 1, BASE + 2] {
        let leader = cluster(&["leader", &queue]);
        cluster(&["stop-app", &node.to_string()]);
        let moving = sim.sim.accepted_count();
        wait_for(Duration::from_secs(30), "deliveries going on", || {
            sim.sim.accepted_count() >= moving + 200
        })
        .await;
        cluster(&["start-app", &node.to_string()]);
        println!("rolling: node {node} restarted (the queue's leader was {leader})");
    }
    let after = sim.sim.accepted_count();
    assert!(
        after < tokens.len() as u64,
        "the backlog ran out before the last restart: nothing was under load"
    );
    let expected: HashSet<String> = tokens.iter().cloned().collect();
    wait_for(Duration::from_secs(240), "every job delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    let accepted = sim.sim.accepted();
    let gap = longest_gap(&accepted, at);
    let duplicates = accepted.len() as u64 - expected.len() as u64;
    println!(
        "rolling: 3 nodes restarted in turn; longest pause in deliveries {gap:?}, {duplicates} duplicates, {} reconnections",
        worker.metric("misiva_broker_reconnects_total", &[])
    );
    assert!(
        gap < Duration::from_secs(5),
        "deliveries paused for {gap:?}: {}",
        worker.log_text()
    );
    assert!(duplicates <= 3 * IN_FLIGHT, "{duplicates} duplicates");
    assert!(worker.running(), "{}", worker.log_text());
    assert!(worker.terminate().await.success());
}

/// Three shards whose leaders are on three different nodes (shard 0 is
/// declared through node 1; the others are placed by
/// `x-queue-leader-locator: balanced`, and moved if they landed together).
/// The node leading one of them (never the worker's own node) is stopped
/// while all three drain: nothing is lost, and the other two shards'
/// deliveries never pause for more than a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leading_one_shard_stopped_leaves_the_others_flowing() {
    let _cluster = the_cluster().await;
    let urls = cluster(&["urls"]);
    let first = support::Broker {
        port: BASE,
        url: urls,
    };
    let queue = unique_queue("shard-node");
    let declared = support::declare_topology(&first, &queue, &[("MISIVA_SHARDS", "3")]);
    assert!(declared.status.success(), "{declared:?}");
    let shards = [queue.clone(), format!("{queue}.1"), format!("{queue}.2")];
    let leaders = place_leaders(&shards);
    println!("shards led by {leaders:?}");

    let sim = recording_sim(Duration::from_millis(20)).await;
    // Ten deliveries in flight per consumer, two consumers per shard, 20 ms
    // each: about 1,000 a second per shard, so that every shard still has
    // most of its jobs when the node is down (stopping it takes seconds).
    let mut worker = Worker::start_on(
        &first,
        &sim,
        &queue,
        &[("MISIVA_SHARDS", "3"), ("MISIVA_PREFETCH", "30")],
    );
    worker.ready().await;
    // Jobs published straight into each shard, so that each token's shard
    // is known.
    let second = support::Broker::private(BASE + 1);
    let conn = second.connect().await;
    let mut by_shard: Vec<HashSet<String>> = Vec::new();
    for (i, name) in shards.iter().enumerate() {
        let tokens: Vec<String> = (0..10_000)
            .map(|n| token(600_000 + 100_000 * i as u64 + n))
            .collect();
        publish(&conn, name, &jobs(&tokens, &format!("s{i}"))).await;
        by_shard.push(tokens.into_iter().collect());
    }
    wait_for(Duration::from_secs(60), "deliveries under way", || {
        sim.sim.accepted_count() >= 1500
    })
    .await;
    // The shard led by a node other than the worker's.
    let victim = (0..3).find(|&i| leaders[i] != BASE).unwrap();
    let at = now_us();
    cluster(&["stop-node", &leaders[victim].to_string()]);
    let stopped = now_us();
    let expected: HashSet<String> = by_shard.iter().flatten().cloned().collect();
    wait_for(Duration::from_secs(180), "every job delivered", || {
        delivered_all(&sim, &expected)
    })
    .await;
    let accepted = sim.sim.accepted();
    let mut gaps = Vec::new();
    for tokens in &by_shard {
        let own: Vec<_> = accepted
            .iter()
            .filter(|a| tokens.contains(&a.token))
            .cloned()
            .collect();
        gaps.push(longest_gap(&own, at));
    }
    println!(
        "shards: node {} (leader of shard {victim}) stopped; longest pause per shard {gaps:?}",
        leaders[victim]
    );
    // Every shard still had work once the node was down: else the test
    // tested nothing.
    for (i, tokens) in by_shard.iter().enumerate() {
        let after = accepted
            .iter()
            .filter(|a| a.received_at_us > stopped && tokens.contains(&a.token))
            .count();
        assert!(
            after >= 1000,
            "shard {i} delivered only {after} after the stop: the fault came too late"
        );
    }
    for (i, gap) in gaps.iter().enumerate() {
        if i != victim {
            assert!(
                *gap <= Duration::from_secs(1),
                "shard {i} paused for {gap:?} while shard {victim}'s leader was down"
            );
        }
    }
    assert!(worker.running(), "{}", worker.log_text());
    cluster(&["start-node", &leaders[victim].to_string()]);
    assert!(worker.terminate().await.success());
}

/// Makes the three queues' leaders three different nodes, and returns them
/// (AMQP ports). The balanced locator counts leaders of every queue the
/// earlier tests left, so it may put two shards together; RabbitMQ's own
/// leadership transfer then moves one.
fn place_leaders(queues: &[String; 3]) -> [u16; 3] {
    let leader = |q: &str| -> u16 { cluster(&["leader", q]).parse().unwrap() };
    let mut leaders = [leader(&queues[0]), leader(&queues[1]), leader(&queues[2])];
    for i in 1..3 {
        if leaders[..i].contains(&leaders[i]) {
            let free = (BASE..BASE + 3).find(|p| !leaders.contains(p)).unwrap();
            cluster(&["transfer-leader", &queues[i], &free.to_string()]);
            leaders[i] = leader(&queues[i]);
        }
    }
    let distinct: HashSet<u16> = leaders.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "leaders {leaders:?}");
    leaders
}
