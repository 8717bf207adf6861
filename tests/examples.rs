//! The publisher examples in `examples/` run against the real broker, and the
//! worker delivers their jobs to the simulator: Python (pika), Node.js
//! (amqplib) and the shell (amqp-tools). `scripts/test.sh` installs pika into
//! `target/py`, amqplib into `target/node` and Debian's amqp-tools.

use crate::support;

use misiva::sim::SimConfig;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{SimFixture, Worker, broker, root, token, unique_queue, wait_for};

/// Runs one example with the broker, queue and token in its environment;
/// returns the job id it printed.
fn run(
    program: &Path,
    args: &[&Path],
    queue: &str,
    token: &str,
    extra: &[(&str, String)],
) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("MISIVA_AMQP_URL", &broker().url)
        .env("MISIVA_QUEUE", queue)
        .env("TOKEN", token);
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/test.sh installs it): {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success(),
        "{}: {stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_node_and_shell_publishers_reach_apns() {
    let sim = SimFixture::start(SimConfig {
        record: true,
        ..Default::default()
    })
    .await;
    let queue = unique_queue("examples");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;

    let python = root().join("target/py/bin/python3");
    let node_modules = root().join("target/node/node_modules");
    let examples = root().join("examples");
    let cases = [
        (
            "python",
            run(
                &python,
                &[&examples.join("python/publish.py")],
                &queue,
                &token(1),
                &[],
            ),
        ),
        (
            "node",
            run(
                Path::new("node"),
                &[&examples.join("node/publish.js")],
                &queue,
                &token(2),
                &[("NODE_PATH", node_modules.display().to_string())],
            ),
        ),
        (
            "shell",
            run(
                &examples.join("shell/publish.sh"),
                &[],
                &queue,
                &token(3),
                &[],
            ),
        ),
    ];
    for (name, id) in &cases {
        assert!(id.len() > 8, "{name} printed no job id: {id:?}");
    }
    wait_for(
        Duration::from_secs(30),
        "every example's job delivered",
        || {
            let accepted: Vec<String> = sim.sim.accepted().into_iter().map(|a| a.token).collect();
            (1..=3).all(|n| accepted.contains(&token(n)))
        },
    )
    .await;
    // Each job arrived once, with the alert its example wrote.
    let accepted = sim.sim.accepted();
    for n in 1..=3 {
        let got: Vec<_> = accepted.iter().filter(|a| a.token == token(n)).collect();
        assert_eq!(got.len(), 1, "token {n}");
        let payload: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
        assert!(payload["aps"]["alert"].is_object() || payload["aps"]["alert"].is_string());
    }
    assert_eq!(worker.metric("misiva_jobs_dead_lettered_total", &[]), 0.0);
    worker.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_broadcast_example_updates_a_channel() {
    let sim = SimFixture::start(SimConfig {
        record: true,
        channels_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let channel = support::create_channel(&sim, "latest");
    let queue = unique_queue("broadcast-example");
    let mut worker = Worker::start(&sim, &queue, &[]);
    worker.ready().await;
    let id = run(
        &root().join("target/py/bin/python3"),
        &[&root().join("examples/python/broadcast.py")],
        &queue,
        "",
        &[("CHANNEL", channel.clone())],
    );
    assert!(id.starts_with("py-broadcast-"), "{id}");
    wait_for(Duration::from_secs(30), "the broadcast accepted", || {
        sim.sim.accepted_count() == 1
    })
    .await;
    let accepted = sim.sim.accepted();
    assert_eq!(accepted[0].channel.as_deref(), Some(channel.as_str()));
    let payload: serde_json::Value = serde_json::from_slice(&accepted[0].payload).unwrap();
    assert_eq!(payload["aps"]["event"], "update");
    assert_eq!(payload["aps"]["content-state"]["home"], 2);
    assert_eq!(payload["aps"]["alert"]["title"], "Goal!");
    assert_eq!(worker.metric("misiva_jobs_dead_lettered_total", &[]), 0.0);
    worker.terminate().await;
}
