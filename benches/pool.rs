//! The APNs connection pool alone against the simulator on loopback:
//! notifications per second, CPU time per notification (this process, and the
//! simulator's separately), and the most concurrent streams each connection
//! carried, for 1, 2 and 4 connections. Each configuration runs three times;
//! the table shows medians.
//!
//! `cargo bench --bench pool` (options after `--`: `-n 100000 -c 2000`;
//! `--runtime-threads 1` drives the client on one thread, as the worker does
//! with the chart's default `MISIVA_RUNTIME_THREADS=1`; by default tokio's
//! multi-threaded runtime with one thread per CPU, as in the history).

mod common;

use common::{arg, cpu_seconds, median};
use futures_util::StreamExt;
use misiva::apns::{ApnsClient, JobRequest};
use misiva::config::{AppConfig, Auth, Endpoint};
use misiva::job::{self, DeviceToken};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Run {
    rate: f64,
    client_us: f64,
    sim_us: f64,
    streams: String,
}

async fn run(connections: usize, total: usize, concurrency: usize, dir: &std::path::Path) -> Run {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = dir.join(format!("ca-{port}.pem"));
    let key = dir.join("AuthKey_BENCH00001.p8");
    let log = dir.join(format!("sim-{port}.log"));
    let mut sim = Command::new(env!("CARGO_BIN_EXE_misiva"))
        .args([
            "apns-sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--max-streams",
            "1000",
        ])
        .arg("--ca-out")
        .arg(&ca)
        .arg("--key-file")
        .arg(&key)
        .args(["--key-id", "BENCH00001", "--team-id", "BENCHTEAM1"])
        .env("MISIVA_LOG", "info")
        // Text lines: the stream counts are read from the last one.
        .env("MISIVA_LOG_FORMAT", "text")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config = AppConfig {
        endpoint: Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
        broadcast_endpoint: None,
        channels_endpoint: Endpoint::parse_channels("production").unwrap(),
        ca_file: Some(ca),
        auth: Auth::Token {
            key_file: key,
            key_id: "BENCH00001".into(),
            team_id: "BENCHTEAM1".into(),
        },
        topic: Some("com.example.bench".into()),
        connections,
        request_timeout: Duration::from_secs(30),
        keepalive: Duration::from_secs(60),
    };
    let client = ApnsClient::new("bench", &config).await.unwrap();
    let body = br#"{"id":"bench","token":"00000000000000000000000000000000","alert":{"title":"Benchmark","body":"A notification of typical size, with a title and a body."},"badge":1,"sound":"default"}"#;
    let job = job::decode(body, None).unwrap();
    let request = JobRequest::new(&job, client.default_topic());
    let tokens: Vec<DeviceToken> = (0..total)
        .map(|i| DeviceToken::parse("token", &format!("{:064x}", i + 1)).unwrap())
        .collect();
    // Warm up: connections made, token signed, allocator settled.
    let _: Vec<_> = futures_util::stream::iter(&tokens[..2000.min(total)])
        .map(|t| client.send(&request, t))
        .buffer_unordered(concurrency)
        .collect()
        .await;

    let sim_pid = sim.id().to_string();
    let (client_before, sim_before) = (cpu_seconds("self"), cpu_seconds(&sim_pid));
    let started = Instant::now();
    let answers: Vec<_> = futures_util::stream::iter(&tokens)
        .map(|t| client.send(&request, t))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let (client_cpu, sim_cpu) = (
        cpu_seconds("self") - client_before,
        cpu_seconds(&sim_pid) - sim_before,
    );
    let failed = answers
        .iter()
        .filter(|a| !matches!(a, misiva::outcome::ApnsAnswer::Status { code: 200, .. }))
        .count();
    assert_eq!(failed, 0, "{failed} notifications failed");

    let _ = Command::new("kill").arg("-INT").arg(&sim_pid).status();
    let _ = sim.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let streams = text
        .lines()
        .find(|l| l.contains("simulator stopped"))
        .and_then(|l| l.split("max_streams_per_connection=").nth(1))
        .and_then(|s| s.split_once(']').map(|(list, _)| format!("{list}]")))
        .unwrap_or_else(|| "?".into());
    Run {
        rate: total as f64 / elapsed,
        client_us: client_cpu * 1e6 / total as f64,
        sim_us: sim_cpu * 1e6 / total as f64,
        streams,
    }
}

fn main() {
    // The worker's own rule (`config::runtime_builder`).
    let threads = arg("--runtime-threads", 0);
    let runtime = misiva::config::runtime_builder(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(threads));
}

async fn bench(threads: usize) {
    let total = arg("-n", 100_000);
    let concurrency = arg("-c", 2000);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "pool benchmark: {total} notifications, {concurrency} in flight, client runtime threads {}, simulator in its own process, 3 runs each (medians)",
        if threads == 0 {
            "= CPUs".to_string()
        } else {
            threads.to_string()
        }
    );
    println!(
        "| connections | notifications/s | client CPU µs/notification | simulator CPU µs/notification | max concurrent streams per connection (last run) |"
    );
    println!("|---:|---:|---:|---:|---|");
    for connections in [1, 2, 4] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(run(connections, total, concurrency, dir.path()).await);
        }
        let streams = runs.last().map(|r| r.streams.clone()).unwrap_or_default();
        println!(
            "| {connections} | {:.0} | {:.1} | {:.1} | {streams} |",
            median(runs.iter().map(|r| r.rate).collect()),
            median(runs.iter().map(|r| r.client_us).collect()),
            median(runs.iter().map(|r| r.sim_us).collect()),
        );
    }
}
