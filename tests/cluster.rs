//! A three-node RabbitMQ cluster (`scripts/cluster.sh`): the worker is given
//! every node's URL, the work queue is a quorum queue replicated on all
//! three, and while jobs flow the node that leads the work queue is stopped,
//! then started again. Nothing is lost; duplicates only for what was in
//! flight.

mod support;

use misiva::sim::{Faults, SimConfig};
use serde_json::json;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use support::{SimFixture, Worker, publish, ready_now, token, unique_queue, wait_for};

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

/// Stops the cluster when the test ends, whatever happened.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
            .arg("stop")
            .env("MISIVA_CLUSTER_PORT", BASE.to_string())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queue_leader_stopped_under_load_loses_nothing() {
    cluster(&["start"]);
    let _cluster = Cluster;
    let urls = cluster(&["urls"]);
    let first = support::Broker {
        port: BASE,
        url: urls.clone(),
    };
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(50),
            ..Faults::default()
        },
        record: true,
        ..Default::default()
    })
    .await;
    let queue = unique_queue("cluster");
    // Two consumers × prefetch 10: what can be in flight, and so sent twice.
    const IN_FLIGHT: u64 = 2 * 10;
    let mut worker = Worker::start_on(&first, &sim, &queue, &[("MISIVA_PREFETCH", "10")]);
    worker.ready().await;

    // Publish through the second node: the first is the one that will go.
    let second = support::Broker::private(BASE + 1);
    let conn = second.connect().await;
    let tokens: Vec<String> = (0..3000).map(|n| token(50_000 + n)).collect();
    let bodies: Vec<Vec<u8>> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": format!("c-{i}"), "token": t, "alert": "x"})
                .to_string()
                .into_bytes()
        })
        .collect();
    publish(&conn, &queue, &bodies).await;
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
