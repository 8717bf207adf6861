//! The end-to-end benchmark: a private RabbitMQ node, the simulator, and the
//! release `misiva` worker, all on this machine.
//!
//! 1. Ceiling: the best a bare consumer does on the same queue type and message
//!    size: several channel counts, prefetches and ack styles (each ack
//!    pipelined, or `multiple` every 64), the fastest printed with its settings.
//! 2. Drain: N jobs published first, then the worker drains them.
//! 3. Steady: jobs published at half the drain rate while the worker runs, for
//!    latency under load.
//!
//! Latency is from the publish time (carried in the job's `data.published_us`,
//! because AMQP's `timestamp` property has one-second resolution) to the
//! simulator's receipt.
//!
//! The worker is the binary users run: `cargo build --release --locked`, in a
//! target directory of its own (a binary built by `cargo bench` would carry
//! the dev-dependencies' features, tokio's test clock among them). A second
//! build with the `alloc-stats` feature counts allocations in a separate run.
//!
//! `cargo bench --bench e2e` (options after `--`: `-n 100000 --prefetch 500
//! --consumers 2 --fanout 0 --steady-secs 10 --no-allocs`). `--fanout K` sends
//! jobs of K tokens (N notifications in N/K jobs). `--runtime-threads N` sets
//! the worker's `MISIVA_RUNTIME_THREADS`; `--log FILTER` its `MISIVA_LOG`
//! (default `warn`, so that figures compare with the history; the chart runs
//! `info`, which adds each job's span). `--shards N` runs the worker with
//! `MISIVA_SHARDS=N` and publishes through the shard exchange (the ceiling
//! stays one queue's). `--channels PCT` sends that share of single-token
//! jobs as Live Activity broadcasts (channel jobs) of the same size.
//!
//! `--campaign` measures the urgent lane instead: a campaign of
//! `--campaign-jobs` (2,000) jobs of `--fanout` (1,000) tokens is queued,
//! and while it drains single-token jobs arrive at `--urgent-rate` (100/s)
//! for `--urgent-secs` (10 s). Three runs a round, `--rounds` (2) rounds:
//! the campaign alone; with the singles on the urgent lane; with them on the
//! work queue behind the campaign (no lane). It prints the singles' p50/p99
//! from publish to the simulator and the campaign's throughput;
//! `--no-work-queue` leaves out the third run.

mod common;

use common::{
    arg, build_worker, context_switches, cpu_seconds, flag, peak_rss_mib, percentile, text_arg,
    write_syscalls,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use misiva::sim::{SimConfig, SimKey, Simulator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PORT: u16 = 5695;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn broker(command: &str) {
    common::broker(PORT, command);
}

fn broker_pid() -> String {
    std::fs::read_to_string(root().join(format!("target/broker-{PORT}/node.pid")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn url() -> String {
    format!("amqp://guest:guest@127.0.0.1:{PORT}/%2f")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The broadcast channel of `--channels PCT` runs, made in the simulator.
static CHANNEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Per cent of single-token jobs sent as channel jobs (`--channels PCT`).
fn channel_share() -> usize {
    arg("--channels", 0).min(100)
}

/// A job of about 1 KB: an alert and some custom data, like a typical app's.
/// With `--channels PCT`, that share of single-token jobs are Live Activity
/// broadcasts of the same size instead.
fn job(index: usize, fanout: usize) -> Vec<u8> {
    if fanout == 0
        && index % 100 < channel_share()
        && let Some(channel) = CHANNEL.get()
    {
        return serde_json::json!({
            "id": format!("bench-{index}"),
            "channel": channel,
            "live_activity": {"event": "update", "content_state": {"order": index, "status": "shipped"}},
            "alert": {"title": "Your order has shipped", "body": "Order 1234 left the warehouse and arrives on Friday."},
            "data": {"published_us": now_us(), "order": index, "note": "x".repeat(700)},
        })
        .to_string()
        .into_bytes();
    }
    let padding = "x".repeat(700);
    let tokens: Vec<String> = (0..fanout.max(1))
        .map(|k| format!("{:064x}", index * fanout.max(1) + k + 1))
        .collect();
    let mut body = serde_json::json!({
        "id": format!("bench-{index}"),
        "alert": {"title": "Your order has shipped", "body": "Order 1234 left the warehouse and arrives on Friday."},
        "badge": 1, "sound": "default",
        "data": {"published_us": now_us(), "order": index, "note": padding},
    });
    if fanout == 0 {
        body["token"] = serde_json::json!(tokens[0]);
    } else {
        body["tokens"] = serde_json::json!(tokens);
    }
    body.to_string().into_bytes()
}

/// Work-queue shards (`--shards N`, default 1).
fn shards() -> usize {
    arg("--shards", 1).max(1)
}

/// Publishes to `queue`, or with `sharded` through its shard exchange, each
/// job with a routing key of its own.
async fn publish(
    conn: &Connection,
    queue: &str,
    sharded: bool,
    bodies: impl Iterator<Item = Vec<u8>>,
) {
    let exchange = if sharded {
        format!("{queue}.shards")
    } else {
        String::new()
    };
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for (i, body) in bodies.enumerate() {
        let key = if sharded {
            format!("{}-{i}", now_us())
        } else {
            queue.to_owned()
        };
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 2000 {
            for c in pending.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in pending {
        c.await.unwrap();
    }
    let _ = channel.close(200, "done".into()).await;
}

/// Declares a fresh durable quorum queue named after `prefix`; returns its
/// name and the channel that declared it.
async fn quorum_queue(conn: &Connection, prefix: &str) -> (String, lapin::Channel) {
    let queue = format!("{prefix}.{}", now_us());
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, args)
        .await
        .unwrap();
    (queue, channel)
}

/// Publishes `total` jobs at `rate` per second, in 10 ms batches.
async fn publish_paced(
    conn: &Connection,
    queue: &str,
    sharded: bool,
    rate: f64,
    total: usize,
    offset: usize,
) {
    let per_tick = ((rate / 100.0).ceil() as usize).max(1);
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    while sent < total {
        interval.tick().await;
        let end = (sent + per_tick).min(total);
        publish(
            conn,
            queue,
            sharded,
            (sent..end).map(|i| job(offset + i, 0)),
        )
        .await;
        sent = end;
    }
}

/// The broker's own publish-to-delivery latency (ms, sorted) at `rate`: a
/// minimal consumer on a quorum queue, the same paced publisher as the
/// worker's steady run.
async fn broker_latency(conn: &Connection, rate: f64, secs: usize, prefetch: u16) -> Vec<f64> {
    let (queue, channel) = quorum_queue(conn, "bench.latency").await;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let total = (rate * secs as f64) as usize;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let received = now_us();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            let body: serde_json::Value =
                serde_json::from_slice(&delivery.data).unwrap_or_default();
            if let Some(published) = body["data"]["published_us"].as_u64() {
                latencies.push(received.saturating_sub(published) as f64 / 1000.0);
            }
        }
        latencies
    });
    publish_paced(conn, &queue, false, rate, total, 2_000_000).await;
    let mut latencies = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .unwrap()
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// How a bare consumer acks.
#[derive(Debug, Clone, Copy)]
enum Acks {
    /// One ack per delivery, not waited for before the next delivery.
    Pipelined,
    /// One `multiple` ack every this many deliveries.
    Multiple(usize),
}

/// One bare consume-and-ack run: messages per second.
async fn ceiling_run(
    conn: &Connection,
    n: usize,
    prefetch: u16,
    channels: usize,
    acks: Acks,
) -> f64 {
    let (queue, _declarer) = quorum_queue(conn, "bench.ceiling").await;
    publish(conn, &queue, false, (0..n).map(|i| job(i, 0))).await;
    let started = Instant::now();
    // The channels count their deliveries together: the broker shares the
    // messages between them by free prefetch, not evenly, so no channel
    // knows its own share in advance. (A fixed share each, as before, left a
    // probe waiting forever now and then: one channel took more than its
    // share and the other waited for messages that never came.)
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (all_in, _) = tokio::sync::watch::channel(false);
    let all_in = std::sync::Arc::new(all_in);
    let mut tasks = Vec::new();
    for c in 0..channels {
        let channel = conn.create_channel().await.unwrap();
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("ceiling-{c}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let seen = seen.clone();
        let all_in = all_in.clone();
        let mut everything_in = all_in.subscribe();
        tasks.push(tokio::spawn(async move {
            // One closure, so every ack future has the same type.
            let ack = |acker: lapin::Acker, multiple: bool| async move {
                let acked: lapin::Result<bool> = acker.ack(BasicAckOptions { multiple }).await;
                acked
            };
            // Acks in flight, polled alongside the next delivery: none is
            // waited for before taking the next one.
            let mut pending = futures_util::stream::FuturesUnordered::new();
            // With `multiple` acks: this channel's deliveries not acked yet,
            // and the acker of the latest of them.
            let mut unacked = 0;
            let mut latest = None;
            loop {
                // Everything may be in before this channel's consumer even
                // started: on a busy connection the first channel can drain
                // the whole queue while the second is still being set up,
                // and `changed()` alone would then wait forever. Reading the
                // value marks it seen, so a later change still wakes us.
                if *everything_in.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    Some(result) = pending.next(), if !pending.is_empty() => {
                        let acked: lapin::Result<bool> = result;
                        acked.unwrap();
                    }
                    // It only ever turns true (see the check above).
                    _ = everything_in.changed() => break,
                    next = consumer.next() => {
                        let delivery = match next {
                            Some(Ok(delivery)) => delivery,
                            other => panic!("the ceiling consumer stopped: {other:?}"),
                        };
                        match acks {
                            Acks::Pipelined => pending.push(ack(delivery.acker, false)),
                            Acks::Multiple(every) => {
                                unacked += 1;
                                if unacked == every {
                                    // In order: a `multiple` ack sent after a
                                    // later one names a tag the broker forgot.
                                    let acked: lapin::Result<bool> = ack(delivery.acker, true).await;
                                    acked.unwrap();
                                    unacked = 0;
                                    latest = None;
                                } else {
                                    latest = Some(delivery.acker);
                                }
                            }
                        }
                        if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= n {
                            all_in.send_replace(true);
                            break;
                        }
                    }
                }
            }
            if let Some(acker) = latest {
                let acked: lapin::Result<bool> = ack(acker, true).await;
                acked.unwrap();
            }
            while let Some(result) = pending.next().await {
                let acked: lapin::Result<bool> = result;
                acked.unwrap();
            }
            let _ = channel.close(200, "done".into()).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The broker's consume-and-ack ceiling: the fastest bare consumer found over
/// channel counts, prefetches and ack styles; returns the rate and its settings.
async fn ceiling(n: usize) -> (f64, String) {
    let mut best = (0.0, String::new());
    for channels in [1, 2] {
        for prefetch in [500u16, 1000, 2000] {
            for acks in [Acks::Pipelined, Acks::Multiple(64)] {
                // A connection per probe, as a bare consumer process would have.
                let conn = Connection::connect(&url(), ConnectionProperties::default())
                    .await
                    .unwrap();
                let rate = ceiling_run(&conn, n, prefetch, channels, acks).await;
                // The close is a courtesy, bounded: lapin's now and then
                // never completes, which hung whole runs after a probe whose
                // every message was consumed and acked.
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), conn.close(200, "done".into()))
                        .await;
                let settings = format!("{channels} channel(s), prefetch {prefetch}, acks {acks:?}");
                println!("  ceiling probe: {rate:>8.0} messages/s  ({settings})");
                if rate > best.0 {
                    best = (rate, settings);
                }
            }
        }
    }
    best
}

struct Worker {
    child: Child,
    pid: String,
    log: PathBuf,
}

fn start_worker(
    binary: &Path,
    dir: &Path,
    queue: &str,
    sim: &Simulator,
    prefetch: usize,
    consumers: usize,
) -> Worker {
    let log = dir.join(format!("{queue}.log"));
    let mut command = Command::new(binary);
    // `--runtime-threads N`: the worker's MISIVA_RUNTIME_THREADS (default: its CPUs).
    let threads = arg("--runtime-threads", 0);
    if threads > 0 {
        command.env("MISIVA_RUNTIME_THREADS", threads.to_string());
    }
    let child = command
        .arg("run")
        .env("MISIVA_AMQP_URL", url())
        .env("MISIVA_QUEUE", queue)
        .env("MISIVA_SHARDS", shards().to_string())
        .env("MISIVA_PREFETCH", prefetch.to_string())
        .env("MISIVA_CONSUMERS", consumers.to_string())
        .env("MISIVA_APNS_ENDPOINT", sim.endpoint())
        .env("MISIVA_APNS_CA_FILE", dir.join("ca.pem"))
        .env("MISIVA_APNS_KEY_FILE", dir.join("key.p8"))
        .env("MISIVA_APNS_KEY_ID", "BENCH00001")
        .env("MISIVA_APNS_TEAM_ID", "BENCHTEAM1")
        .env("MISIVA_APNS_TOPIC", "com.example.bench")
        .env("MISIVA_ADMIN_ADDR", "127.0.0.1:0")
        .env(
            "MISIVA_LOG",
            text_arg("--log").unwrap_or_else(|| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Worker {
        pid: child.id().to_string(),
        child,
        log,
    }
}

/// Stops the worker; returns the allocations it printed at exit, if it counts them.
fn stop_worker(mut worker: Worker) -> Option<u64> {
    let _ = Command::new("kill").arg("-TERM").arg(&worker.pid).status();
    let _ = worker.child.wait();
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("misiva: allocations="))
        .and_then(|n| n.trim().parse().ok())
}

fn topology(binary: &Path, queue: &str) {
    let ok = Command::new(binary)
        .arg("topology")
        .env("MISIVA_AMQP_URL", url())
        .env("MISIVA_QUEUE", queue)
        .env("MISIVA_SHARDS", shards().to_string())
        .env("MISIVA_APNS_KEY_FILE", "/dev/null")
        .env("MISIVA_APNS_KEY_ID", "x")
        .env("MISIVA_APNS_TEAM_ID", "x")
        .env("MISIVA_LOG", "warn")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "misiva topology failed");
}

/// Latencies (ms) of notifications accepted after index `from`.
fn latencies(sim: &Simulator, from: usize) -> Vec<f64> {
    sorted_latencies(sim.accepted()[from..].iter())
}

/// From publish (the job's `data.published_us`) to the simulator, in ms,
/// sorted; notifications without the field are left out.
fn sorted_latencies<'a>(accepted: impl Iterator<Item = &'a misiva::sim::Accepted>) -> Vec<f64> {
    let mut v: Vec<f64> = accepted
        .filter_map(|a| {
            let payload: serde_json::Value = serde_json::from_slice(&a.payload).ok()?;
            let published = payload["published_us"].as_u64()?;
            Some(a.received_at_us.saturating_sub(published) as f64 / 1000.0)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[tokio::main]
async fn main() {
    let n = arg("-n", 100_000);
    let prefetch = arg("--prefetch", 500);
    let consumers = arg("--consumers", 2);
    let fanout = arg("--fanout", 0);
    let steady_secs = arg("--steady-secs", 10);
    let jobs = n.checked_div(fanout).unwrap_or(n);
    let notifications = if fanout == 0 { n } else { jobs * fanout };
    let dir = tempfile::tempdir().unwrap();
    let binary = build_worker("");
    let counting = (!flag("--no-allocs")).then(|| build_worker("-alloc-stats"));

    // A fresh node each run: queues left by earlier runs (each quorum queue
    // is a Raft server of its own, and a node had gathered 1,788 of them and
    // 4.6 GB) made the broker's CPU per message vary threefold between runs.
    broker("wipe");
    broker("start");
    let key = dir.path().join("key.p8");
    std::fs::write(&key, misiva::jwt::generate_p8()).unwrap();
    let sim = Simulator::start(SimConfig {
        keys: vec![SimKey::from_file("BENCH00001", "BENCHTEAM1", &key).unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(dir.path().join("ca.pem"), sim.ca_pem()).unwrap();
    if channel_share() > 0 {
        let _ = CHANNEL.set(sim.create_channel("com.example.bench", 0));
    }
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    if flag("--campaign") {
        drop(sim);
        campaign(&binary, dir.path(), &key, &conn, prefetch, consumers).await;
        broker("stop");
        return;
    }

    println!(
        "end-to-end benchmark: {jobs} jobs, {notifications} notifications (fan-out {fanout}, {}% of single-token jobs broadcasts), {} shard(s), prefetch {prefetch} × {consumers} consumers, ~1 KB jobs, worker log filter {}",
        if fanout == 0 { channel_share() } else { 0 },
        shards(),
        text_arg("--log").unwrap_or_else(|| "warn".into())
    );
    let (ceiling, ceiling_settings) = ceiling(jobs.clamp(1000, 20_000)).await;
    if flag("--ceiling-only") {
        broker("stop");
        return;
    }
    println!("ceiling (consume + ack only): {ceiling:.0} messages/s with {ceiling_settings}");

    // Drain: everything published first.
    let queue = format!("bench.drain.{}", now_us());
    topology(&binary, &queue);
    publish(
        &conn,
        &queue,
        shards() > 1,
        (0..jobs).map(|i| job(i, fanout)),
    )
    .await;
    let self_before = cpu_seconds("self");
    let broker_before = cpu_seconds(&broker_pid());
    let self_switches_before = context_switches("self");
    let broker_switches_before = context_switches(&broker_pid());
    let worker = start_worker(&binary, dir.path(), &queue, &sim, prefetch, consumers);
    let started = Instant::now();
    while (sim.accepted_count() as usize) < notifications {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the worker did not drain the queue"
        );
    }
    let accepted = sim.accepted();
    let first = accepted.iter().map(|a| a.received_at_us).min().unwrap_or(0);
    let last = accepted.iter().map(|a| a.received_at_us).max().unwrap_or(0);
    let rate = notifications as f64 / ((last - first).max(1) as f64 / 1e6);
    let worker_cpu = cpu_seconds(&worker.pid);
    let rss = peak_rss_mib(&worker.pid);
    let broker_cpu = cpu_seconds(&broker_pid()) - broker_before;
    let sim_cpu = cpu_seconds("self") - self_before;
    let worker_switches = context_switches(&worker.pid);
    let worker_syscalls = write_syscalls(&worker.pid);
    let broker_switches = {
        let (v, i) = context_switches(&broker_pid());
        (
            v - broker_switches_before.0.min(v),
            i - broker_switches_before.1.min(i),
        )
    };
    let sim_switches = {
        let (v, i) = context_switches("self");
        (
            v - self_switches_before.0.min(v),
            i - self_switches_before.1.min(i),
        )
    };
    let drain_latency = latencies(&sim, 0);
    stop_worker(worker);
    let per = |cpu: f64| cpu * 1e6 / notifications as f64;
    let switches = |(v, i): (u64, u64)| {
        format!(
            "{:.2} / {:.2}",
            v as f64 / notifications as f64,
            i as f64 / notifications as f64
        )
    };

    // Allocations: the counting build, idle (start, wait, stop) and draining
    // the same jobs; the difference over the notifications.
    let allocations = match &counting {
        None => None,
        Some(counting) => {
            let idle_queue = format!("bench.idle.{}", now_us());
            topology(counting, &idle_queue);
            let idle = start_worker(counting, dir.path(), &idle_queue, &sim, prefetch, consumers);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let idle = stop_worker(idle);
            let queue = format!("bench.allocs.{}", now_us());
            topology(counting, &queue);
            publish(
                &conn,
                &queue,
                shards() > 1,
                (0..jobs).map(|i| job(3_000_000 + i, fanout)),
            )
            .await;
            let before = sim.accepted_count() as usize;
            let worker = start_worker(counting, dir.path(), &queue, &sim, prefetch, consumers);
            let started = Instant::now();
            while (sim.accepted_count() as usize) < before + notifications
                && started.elapsed() < Duration::from_secs(600)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let busy = stop_worker(worker);
            idle.zip(busy)
                .map(|(idle, busy)| busy.saturating_sub(idle) as f64 / notifications as f64)
        }
    };

    // Steady: half the drain rate, while the worker runs.
    let steady_rate = (rate / 2.0).max(100.0);
    let queue = format!("bench.steady.{}", now_us());
    topology(&binary, &queue);
    let before_steady = sim.accepted_count() as usize;
    let worker = start_worker(&binary, dir.path(), &queue, &sim, prefetch, consumers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = before_steady;
    let steady_total = (steady_rate * steady_secs as f64) as usize;
    let started = Instant::now();
    publish_paced(
        &conn,
        &queue,
        shards() > 1,
        steady_rate,
        steady_total,
        1_000_000,
    )
    .await;
    while (sim.accepted_count() as usize) < before + steady_total
        && started.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let steady = latencies(&sim, before);
    let steady_rss = peak_rss_mib(&worker.pid);
    stop_worker(worker);
    let broker_only = broker_latency(&conn, steady_rate, steady_secs, prefetch as u16).await;
    broker("stop");

    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| notifications/s (drain) | {rate:.0} |");
    println!("| consume-and-ack ceiling, messages/s ({ceiling_settings}) | {ceiling:.0} |");
    if fanout == 0 {
        println!("| worker throughput ÷ ceiling | {:.2} |", rate / ceiling);
    } else {
        println!("| worker throughput ÷ ceiling | n/a: {fanout} notifications a message |");
    }
    println!("| worker CPU µs/notification | {:.1} |", per(worker_cpu));
    println!("| broker CPU µs/notification | {:.1} |", per(broker_cpu));
    println!("| simulator CPU µs/notification | {:.1} |", per(sim_cpu));
    println!(
        "| context switches/notification, voluntary / involuntary: worker | {} |",
        switches(worker_switches)
    );
    println!(
        "| context switches/notification: broker | {} |",
        switches(broker_switches)
    );
    println!(
        "| context switches/notification: simulator and publisher | {} |",
        switches(sim_switches)
    );
    println!(
        "| worker write system calls/notification (write, writev) | {:.2} |",
        worker_syscalls as f64 / notifications as f64
    );
    match allocations {
        Some(a) => println!("| worker allocations/notification | {a:.1} |"),
        None => println!("| worker allocations/notification | not measured (--no-allocs) |"),
    }
    println!("| worker peak RSS, MiB | {rss:.1} (steady run: {steady_rss:.1}) |");
    println!(
        "| notifications accepted by the simulator | {} of {notifications} |",
        accepted.len()
    );
    println!(
        "| drain latency p50 / p99, ms (includes queueing) | {:.1} / {:.1} |",
        percentile(&drain_latency, 50.0),
        percentile(&drain_latency, 99.0)
    );
    println!(
        "| steady {steady_rate:.0}/s latency p50 / p99, ms | {:.2} / {:.2} |",
        percentile(&steady, 50.0),
        percentile(&steady, 99.0)
    );
    println!(
        "| same rate, broker alone (publish to a minimal consumer) p50 / p99, ms | {:.2} / {:.2} |",
        percentile(&broker_only, 50.0),
        percentile(&broker_only, 99.0)
    );
}

/// How the singles of a `--campaign` run are published.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Singles {
    None,
    UrgentLane,
    WorkQueue,
}

/// One `--campaign` run: (campaign notifications/s, singles' latencies in
/// ms, sorted).
async fn campaign_run(
    binary: &Path,
    dir: &Path,
    key: &Path,
    conn: &Connection,
    prefetch: usize,
    consumers: usize,
    singles: Singles,
) -> (f64, Vec<f64>) {
    let jobs = arg("--campaign-jobs", 2_000);
    let fanout = arg("--fanout", 1_000).max(1);
    let rate = arg("--urgent-rate", 100) as f64;
    let secs = arg("--urgent-secs", 10);
    // A fresh simulator per run: it keeps every notification it accepted.
    let sim = Simulator::start(SimConfig {
        keys: vec![SimKey::from_file("BENCH00001", "BENCHTEAM1", key).unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(dir.join("ca.pem"), sim.ca_pem()).unwrap();
    let queue = format!("bench.campaign.{}", now_us());
    topology(binary, &queue);
    publish(conn, &queue, false, (0..jobs).map(|i| job(i, fanout))).await;
    let campaign = jobs * fanout;
    let worker = start_worker(binary, dir, &queue, &sim, prefetch, consumers);
    let started = Instant::now();
    while sim.accepted_count() < 20_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(started.elapsed() < Duration::from_secs(120), "no campaign");
    }
    // Singles' tokens start far above the campaign's.
    const FIRST_SINGLE: usize = 100_000_000;
    let total = (rate * secs as f64) as usize;
    let target = match singles {
        Singles::None => None,
        Singles::UrgentLane => Some(format!("{queue}.urgent")),
        Singles::WorkQueue => Some(queue.clone()),
    };
    let publisher = target.clone().map(|target| {
        let url = url();
        tokio::spawn(async move {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap();
            publish_paced(&conn, &target, false, rate, total, FIRST_SINGLE).await;
        })
    });
    if let Some(publisher) = publisher {
        publisher.await.unwrap();
    }
    let expected = campaign + if target.is_some() { total } else { 0 };
    while (sim.accepted_count() as usize) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the campaign did not drain"
        );
    }
    stop_worker(worker);
    let single_token = |a: &misiva::sim::Accepted| {
        usize::from_str_radix(&a.token, 16).is_ok_and(|n| n > FIRST_SINGLE)
    };
    let accepted = sim.accepted();
    let campaign_times: Vec<u64> = accepted
        .iter()
        .filter(|a| !single_token(a))
        .map(|a| a.received_at_us)
        .collect();
    let first = campaign_times.iter().min().copied().unwrap_or(0);
    let last = campaign_times.iter().max().copied().unwrap_or(0);
    let throughput = campaign_times.len() as f64 / ((last - first).max(1) as f64 / 1e6);
    let latencies = sorted_latencies(accepted.iter().filter(|a| single_token(a)));
    (throughput, latencies)
}

/// One mode's figures over the rounds: campaign throughputs, singles' (p50, p99).
type ModeFigures = (Singles, Vec<f64>, Vec<(f64, f64)>);

/// `--campaign`: the urgent lane against a campaign, runs alternated.
async fn campaign(
    binary: &Path,
    dir: &Path,
    key: &Path,
    conn: &Connection,
    prefetch: usize,
    consumers: usize,
) {
    let rounds = arg("--rounds", 2);
    println!(
        "urgent-lane benchmark: a campaign of {} jobs × {} tokens; singles at {}/s for {} s; prefetch {prefetch} × {consumers} consumers",
        arg("--campaign-jobs", 2_000),
        arg("--fanout", 1_000),
        arg("--urgent-rate", 100),
        arg("--urgent-secs", 10)
    );
    println!();
    println!("| round | singles | campaign notifications/s | singles p50 / p99, ms |");
    println!("|---|---|---:|---:|");
    let mut by_mode: Vec<ModeFigures> = Vec::new();
    for mode in [Singles::None, Singles::UrgentLane, Singles::WorkQueue] {
        // `--no-work-queue`: only the campaign alone and with the lane,
        // for more rounds of the throughput comparison in the same time.
        if mode == Singles::WorkQueue && flag("--no-work-queue") {
            continue;
        }
        by_mode.push((mode, Vec::new(), Vec::new()));
    }
    for round in 1..=rounds {
        for (mode, throughputs, latencies) in &mut by_mode {
            let (throughput, singles) =
                campaign_run(binary, dir, key, conn, prefetch, consumers, *mode).await;
            let cell = if singles.is_empty() {
                "-".to_owned()
            } else {
                let pair = (percentile(&singles, 50.0), percentile(&singles, 99.0));
                latencies.push(pair);
                format!("{:.1} / {:.1}", pair.0, pair.1)
            };
            println!("| {round} | {mode:?} | {throughput:.0} | {cell} |");
            throughputs.push(throughput);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!("| singles | median campaign notifications/s | median singles p50 / p99, ms |");
    println!("|---|---:|---:|");
    for (mode, throughputs, latencies) in &mut by_mode {
        let mut p50: Vec<f64> = latencies.iter().map(|l| l.0).collect();
        let mut p99: Vec<f64> = latencies.iter().map(|l| l.1).collect();
        let cell = if p50.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1} / {:.1}", median(&mut p50), median(&mut p99))
        };
        println!("| {mode:?} | {:.0} | {cell} |", median(throughputs));
    }
}
