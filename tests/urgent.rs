//! The urgent lane (CONTRACT §9): single-token jobs published to
//! `<queue>.urgent` while a campaign of a million notifications drains are
//! delivered at once, not behind the campaign; an urgent job's retries come
//! back to the urgent lane; its dead letters say so, and a replay sends
//! them back to it.

use crate::support;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use misiva::sim::{Faults, SimConfig};
use serde_json::json;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use support::{
    SimFixture, Worker, broker, drain, header, now_us, publish, recording_sim, special_token,
    token, unique_queue, wait_for,
};

/// Urgent jobs a second, as the contract's example (one-time codes, chat).
const RATE: u64 = 100;
/// How long they are published for.
const URGENT_SECS: u64 = 10;

/// The campaign: 1,000 jobs of 1,000 tokens.
const CAMPAIGN_JOBS: u64 = 1_000;
const FANOUT: u64 = 1_000;

fn campaign_job(j: u64) -> Vec<u8> {
    let tokens: Vec<String> = (0..FANOUT)
        .map(|k| token(1_000_000 + j * FANOUT + k))
        .collect();
    json!({"id": format!("campaign-{j}"), "tokens": tokens, "alert": "Our winter sale starts now"})
        .to_string()
        .into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index]
}

/// Publishes `count` single-token jobs to `queue` at `RATE` a second, each
/// carrying its publish time (µs) for the latency at the simulator.
async fn publish_paced(conn: &lapin::Connection, queue: &str, count: u64) -> Vec<String> {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut confirms = Vec::new();
    let mut tokens = Vec::new();
    for n in 0..count {
        tick.tick().await;
        let t = token(5_000_000 + n);
        let body = json!({"id": format!("code-{n}"), "token": t, "alert": "Your code is 123456",
                          "data": {"published_us": now_us()}})
        .to_string();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        confirms.push(confirm);
        tokens.push(t);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    tokens
}

/// A million-notification campaign is draining; single-token jobs arrive at
/// 100 a second, to the urgent lane. Every one is delivered, with a p99
/// from publish to the simulator of at most 100 ms (of which 10 ms is the
/// simulated round trip); and once the campaign has drained, every one of
/// its million tokens was delivered. The same
/// single-token jobs published to the ordinary queue behind the campaign
/// would wait for all of it (the issue measured 18 s at the median).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_jobs_are_not_held_up_by_a_campaign() {
    // APNs answers after a round trip, as Apple does (10 ms and more from a
    // cloud region): the campaign then holds every place it may take, and
    // an urgent request finds one only in the reserve.
    let sim = recording_sim(Duration::from_millis(10)).await;
    let queue = unique_queue("urgent");
    let conn = broker().connect().await;
    // Two consumers × prefetch 100: the worker holds 200 of the campaign's
    // jobs at a time, and the rest wait in the queue, ahead of anything
    // published to it later.
    let mut worker = Worker::start(&sim, &queue, &[("MISIVA_PREFETCH", "100")]);
    worker.ready().await;
    // The campaign goes in first, in batches, so that the worker is busy
    // with it while the rest is published.
    for start in (0..CAMPAIGN_JOBS).step_by(100) {
        let batch: Vec<Vec<u8>> = (start..start + 100).map(campaign_job).collect();
        publish(&conn, &queue, &batch).await;
    }
    let campaign = CAMPAIGN_JOBS * FANOUT;
    wait_for(Duration::from_secs(60), "the campaign under way", || {
        sim.sim.accepted_count() >= 20_000
    })
    .await;
    let before = sim.sim.accepted_count();
    // The premise, checked: the same kind of job published to the work queue
    // now waits behind the campaign.
    let behind = token(4_999_999);
    let control = json!({"id": "behind", "token": behind, "alert": "x",
                         "data": {"published_us": now_us()}});
    publish(&conn, &queue, &[control.to_string().into_bytes()]).await;
    let urgent = publish_paced(&conn, &format!("{queue}.urgent"), RATE * URGENT_SECS).await;
    let wanted: HashSet<&String> = urgent.iter().collect();
    wait_for(
        Duration::from_secs(30),
        "every urgent job delivered",
        || {
            let got: HashSet<String> = sim
                .sim
                .accepted()
                .into_iter()
                .filter(|a| wanted.contains(&a.token))
                .map(|a| a.token)
                .collect();
            got.len() == urgent.len()
        },
    )
    .await;
    let during = sim.sim.accepted_count() - before;
    let mut latencies: Vec<f64> = sim
        .sim
        .accepted()
        .into_iter()
        .filter(|a| wanted.contains(&a.token))
        .filter_map(|a| {
            let payload: serde_json::Value = serde_json::from_slice(&a.payload).ok()?;
            let published = payload["published_us"].as_u64()?;
            Some(a.received_at_us.saturating_sub(published) as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    assert_eq!(latencies.len(), urgent.len(), "each urgent job sent once");
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    println!(
        "urgent lane: {} urgent jobs at {RATE}/s while the campaign delivered {during} notifications: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        urgent.len(),
        latencies[latencies.len() - 1]
    );
    assert!(
        during < campaign,
        "the campaign was over before the urgent jobs: nothing was tested"
    );
    assert!(p99 <= 100.0, "urgent p99 {p99:.1} ms");
    assert!(
        !sim.sim.accepted().iter().any(|a| a.token == behind),
        "a job published to the work queue at the same time was delivered as soon: no backlog, nothing tested"
    );

    // The campaign loses nothing.
    let expected = campaign + urgent.len() as u64 + 1;
    wait_for(Duration::from_secs(600), "the campaign delivered", || {
        sim.sim.accepted_count() >= expected
    })
    .await;
    let accepted: HashSet<String> = sim.sim.accepted().into_iter().map(|a| a.token).collect();
    assert_eq!(accepted.len() as u64, expected, "every token delivered");
    assert_eq!(
        worker.metric("misiva_jobs_acked_total", &[("lane", "urgent")]),
        urgent.len() as f64
    );
    assert!(worker.terminate().await.success());
}

/// An urgent job answered 503 goes to the urgent lane's own retry tiers and
/// comes back to the urgent lane, never to the work queue; when its
/// attempts run out, its dead letter says `urgent`, `misiva dlq list` shows
/// it, and a replay sends it back to the urgent lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_retry_comes_back_to_the_urgent_lane() {
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            latency: Duration::ZERO,
            ..Faults::default()
        },
        record: true,
        ..Default::default()
    })
    .await;
    let queue = unique_queue("urgent-retry");
    let urgent_queue = format!("{queue}.urgent");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_RETRY_DELAYS", "100ms,200ms"),
            ("MISIVA_MAX_ATTEMPTS", "3"),
        ],
    );
    worker.ready().await;
    let conn = broker().connect().await;
    let flaky = special_token("ffff0503", 1);
    let body = json!({"id": "otp-1", "token": flaky, "alert": "Your code is 654321"});
    publish(&conn, &urgent_queue, &[body.to_string().into_bytes()]).await;
    wait_for(Duration::from_secs(30), "the job dead-lettered", || {
        worker.metric("misiva_jobs_dead_lettered_total", &[]) >= 1.0
    })
    .await;
    let received = |lane: &str| worker.metric("misiva_jobs_received_total", &[("lane", lane)]);
    assert_eq!(
        received("urgent"),
        3.0,
        "three attempts, all on the urgent lane"
    );
    assert_eq!(received("normal"), 0.0, "no retry went to the work queue");
    assert_eq!(
        worker.metric("misiva_jobs_retried_total", &[]),
        2.0,
        "two retries"
    );
    // Nothing in the ordinary tiers was ever used: they are empty and the
    // urgent lane's exist.
    let exists = |name: &str| {
        broker()
            .ctl(&["list_queues", "name"])
            .lines()
            .any(|l| l.trim() == name)
    };
    assert!(exists(&format!("{urgent_queue}.retry.100ms")));
    assert!(exists(&format!("{urgent_queue}.retry.200ms")));

    // The dead letter says which lane it came by, and the DLQ tool shows it.
    let list = Command::new(env!("CARGO_BIN_EXE_misiva"))
        .args(["dlq", "list", "--json"])
        .env_clear()
        .env("MISIVA_AMQP_URL", &broker().url)
        .env("MISIVA_QUEUE", &queue)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert!(text.contains("\"lane\":\"urgent\""), "{text}");

    // Replayed, it goes back to the urgent lane (and fails again: the
    // token still answers 503).
    let replay = Command::new(env!("CARGO_BIN_EXE_misiva"))
        .args(["dlq", "replay", "--json"])
        .env_clear()
        .env("MISIVA_AMQP_URL", &broker().url)
        .env("MISIVA_QUEUE", &queue)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{replay:?}");
    wait_for(Duration::from_secs(30), "the replayed job", || {
        received("urgent") >= 4.0
    })
    .await;
    assert_eq!(received("normal"), 0.0);
    wait_for(Duration::from_secs(30), "dead-lettered again", || {
        worker.metric("misiva_jobs_dead_lettered_total", &[]) >= 2.0
    })
    .await;
    // The replay removed the first dead letter; the second is its own.
    let letters = drain(&conn, &format!("{queue}.dead")).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        header(&letters[0], "x-misiva-lane").as_deref(),
        Some("urgent")
    );
    assert!(worker.terminate().await.success());
}
