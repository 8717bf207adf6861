//! The fault suite: a mixed workload (two apps, single tokens, fan-outs, dead
//! tokens, invalid jobs) flows through a private broker node, the simulator
//! (which also rejects provider tokens as expired, once per run) and the worker while faults hit
//! at moments drawn from a printed seed; an accounting pass then shows where every job ended. A failing seed
//! replays the same schedule (`MISIVA_FAULT_SEED=…`).
//!
//! CI runs a modest size. A long soak:
//! `MISIVA_FAULT_JOBS=200000 MISIVA_FAULT_COUNT=50 cargo test --release --features fault-hooks --test suite -- --nocapture faults::`

use crate::support;

use misiva::sim::{Faults, SimConfig};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::{
    Broker, SimFixture, Worker, drain, publish, ready_now, special_token, token, unique_queue,
    wait_for,
};

/// The suite's own broker node, so that restarting it disturbs no other test.
const PORT: u16 = 5694;
/// Two consumers × prefetch 20 deliveries can be in flight, of at most
/// FANOUT tokens each: what one fault may send twice.
const PREFETCH: u64 = 20;
const FANOUT: u64 = 5;
const IN_FLIGHT_TOKENS: u64 = 2 * PREFETCH * FANOUT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillWorker,
    StopWorker,
    CloseConnection,
    RestartBroker,
    Errors503,
    Errors429,
    GoAway,
    Resets,
    Stalls,
    ApnsOutage,
    /// APNs rejects every provider token as expired for two seconds.
    TokenExpiry,
}

const FAULTS: [Fault; 11] = [
    Fault::KillWorker,
    Fault::StopWorker,
    Fault::CloseConnection,
    Fault::RestartBroker,
    Fault::Errors503,
    Fault::Errors429,
    Fault::GoAway,
    Fault::Resets,
    Fault::Stalls,
    Fault::ApnsOutage,
    Fault::TokenExpiry,
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the fault can send a notification twice (the worker or its
/// connection goes while deliveries are in flight).
fn may_duplicate(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::KillWorker
            | Fault::CloseConnection
            | Fault::RestartBroker
            | Fault::Stalls
            | Fault::Resets
    )
}

struct Workload {
    bodies: Vec<Vec<u8>>,
    /// Tokens that must reach APNs.
    live: HashSet<String>,
    /// Tokens APNs reports dead: a feedback event each.
    dead: HashSet<String>,
    /// Job ids that are invalid: dead-lettered as invalid_job.
    invalid: HashSet<String>,
}

fn workload(jobs: u64, rng: &mut fastrand::Rng) -> Workload {
    let mut w = Workload {
        bodies: Vec::new(),
        live: HashSet::new(),
        dead: HashSet::new(),
        invalid: HashSet::new(),
    };
    let mut next = 0u64;
    let mut fresh = |dead: bool| {
        next += 1;
        if dead {
            special_token("ffff0410", next)
        } else {
            token(1_000_000 + next)
        }
    };
    for j in 0..jobs {
        let id = format!("f-{j}");
        let kind = rng.u32(0..100);
        let body = if kind < 3 {
            w.invalid.insert(id.clone());
            json!({"id": id, "tokn": 1})
        } else if kind < 13 {
            let tokens: Vec<String> = (0..FANOUT).map(|i| fresh(i == 0 && kind < 5)).collect();
            for t in &tokens {
                if t.starts_with("ffff") {
                    w.dead.insert(t.clone());
                } else {
                    w.live.insert(t.clone());
                }
            }
            json!({"id": id, "tokens": tokens, "alert": "fan-out"})
        } else if kind < 18 {
            let t = fresh(true);
            w.dead.insert(t.clone());
            json!({"id": id, "token": t, "alert": "gone"})
        } else if kind < 30 {
            // The second app: its own connections and provider token.
            let t = fresh(false);
            w.live.insert(t.clone());
            json!({"id": id, "app": "news", "token": t, "alert": "breaking"})
        } else {
            let t = fresh(false);
            w.live.insert(t.clone());
            json!({"id": id, "token": t, "alert": {"title": "t", "body": "b"}, "badge": j % 10})
        };
        w.bodies.push(body.to_string().into_bytes());
    }
    w
}

const WORKER_ENV: [(&str, &str); 4] = [
    ("MISIVA_PREFETCH", "20"),
    ("MISIVA_RETRY_DELAYS", "200ms,500ms,1s"),
    // Faults must never exhaust a job's attempts: every valid token arrives.
    ("MISIVA_MAX_ATTEMPTS", "1000"),
    ("MISIVA_SHUTDOWN_GRACE", "10"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_accounted_for_under_random_faults() {
    let seed = env_number("MISIVA_FAULT_SEED", fastrand::u64(..));
    let jobs = env_number("MISIVA_FAULT_JOBS", 5000);
    let count = env_number("MISIVA_FAULT_COUNT", 5) as usize;
    println!(
        "fault suite: seed {seed}, {jobs} jobs, {count} faults (MISIVA_FAULT_SEED={seed} replays it)"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let w = workload(jobs, &mut rng);
    // Tokens expire once in every run, whatever else the seed draws.
    let schedule: Vec<Fault> = std::iter::once(Fault::TokenExpiry)
        .chain((1..count).map(|_| FAULTS[rng.usize(..FAULTS.len())]))
        .collect();
    println!("schedule: {schedule:?}");

    let node = Broker::private(PORT);
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(2),
            ..Faults::default()
        },
        record: true,
        ..Default::default()
    })
    .await;
    let queue = unique_queue("faults");
    // Two apps: `default` from the environment, `news` from the file.
    let config = sim.dir.path().join("faults.toml");
    std::fs::write(
        &config,
        format!(
            "feedback_exchange = \"{queue}.feedback\"\nfeedback_queue = \"{queue}.feedback\"\n\
             [apps.news]\nendpoint = \"{}\"\nca_file = {:?}\nkey_file = {:?}\nkey_id = \"{}\"\nteam_id = \"{}\"\ntopic = \"com.example.news\"\n",
            sim.sim.endpoint(),
            sim.ca_file.display().to_string(),
            sim.key_file.display().to_string(),
            support::KEY_ID,
            support::TEAM_ID,
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let env: Vec<(&str, &str)> = WORKER_ENV
        .iter()
        .copied()
        .chain([("MISIVA_CONFIG", config.as_str())])
        .collect();
    let mut worker = Worker::start_on(&node, &sim, &queue, &env);
    worker.ready().await;
    let conn = node.connect().await;
    publish(&conn, &queue, &w.bodies).await;
    drop(conn);

    let started = Instant::now();
    let mut duplicating = 0u64;
    let settled_tokens = (w.live.len() + w.dead.len()) as u64;
    for (k, fault) in schedule.iter().enumerate() {
        // Fault k hits once about (k+1)/(count+1) of the notifications went out.
        let at = settled_tokens * (k as u64 + 1) / (count as u64 + 1);
        wait_for(Duration::from_secs(600), "the next fault's moment", || {
            sim.sim.accepted_count() + sim.sim.rejected().values().sum::<u64>() >= at
        })
        .await;
        println!(
            "{:>7.1}s fault {k}: {fault:?}",
            started.elapsed().as_secs_f64()
        );
        if may_duplicate(*fault) {
            duplicating += 1;
        }
        match fault {
            Fault::KillWorker => {
                worker.kill9();
                worker = Worker::start_on(&node, &sim, &queue, &env);
                worker.ready().await;
            }
            Fault::StopWorker => {
                assert!(worker.terminate().await.success(), "{}", worker.log_text());
                worker = Worker::start_on(&node, &sim, &queue, &env);
                worker.ready().await;
            }
            Fault::CloseConnection => {
                node.close_connection_of(&queue);
            }
            Fault::RestartBroker => {
                node.stop();
                node.start();
                wait_for(Duration::from_secs(60), "the worker back", || {
                    worker.readyz() == Some(200)
                })
                .await;
            }
            Fault::GoAway => sim.sim.goaway_all(),
            Fault::TokenExpiry => {
                sim.sim.set_token_max_age(Duration::ZERO);
                tokio::time::sleep(Duration::from_secs(2)).await;
                sim.sim.set_token_max_age(Duration::from_secs(3600));
            }
            other => {
                let faults = match other {
                    Fault::Errors503 => Faults {
                        error_rate: 1.0,
                        error_status: 503,
                        ..Faults::default()
                    },
                    Fault::Errors429 => Faults {
                        error_rate: 0.5,
                        error_status: 429,
                        ..Faults::default()
                    },
                    Fault::Resets => Faults {
                        reset_after: Some(20),
                        ..Faults::default()
                    },
                    Fault::Stalls => Faults {
                        stall_after: Some(20),
                        ..Faults::default()
                    },
                    _ => Faults {
                        error_rate: 1.0,
                        error_status: 500,
                        latency: Duration::from_millis(200),
                        ..Faults::default()
                    },
                };
                sim.sim.set_faults(faults);
                let length = if *other == Fault::ApnsOutage { 4 } else { 1 };
                tokio::time::sleep(Duration::from_secs(length)).await;
                sim.sim.set_faults(Faults {
                    latency: Duration::from_millis(2),
                    ..Faults::default()
                });
            }
        }
    }

    // Accounting: every live token delivered, every dead one fed back, every
    // invalid job dead-lettered, nothing left in any queue.
    wait_for(
        Duration::from_secs(900),
        "every live token delivered",
        || {
            let accepted: HashSet<String> =
                sim.sim.accepted().into_iter().map(|a| a.token).collect();
            w.live.is_subset(&accepted)
        },
    )
    .await;
    let conn = node.connect().await;
    let feedback_queue = format!("{queue}.feedback");
    // Then the queues settle: nothing waits in the work queue or a tier, and
    // every dead token's event is in the feedback queue.
    let tiers = ["200ms", "500ms", "1s"].map(|t| format!("{queue}.retry.{t}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut waiting = u64::from(ready_now(&conn, &queue).await);
        for tier in &tiers {
            waiting += u64::from(ready_now(&conn, tier).await);
        }
        let events = u64::from(ready_now(&conn, &feedback_queue).await);
        if waiting == 0
            && events >= w.dead.len() as u64
            && worker.metric("misiva_notifications_in_flight", &[]) == 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queues did not settle: {waiting} waiting, {events} events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker.terminate().await.success(), "{}", worker.log_text());
    assert_eq!(
        ready_now(&conn, &queue).await,
        0,
        "jobs left in the work queue"
    );
    for tier in ["200ms", "500ms", "1s"] {
        assert_eq!(
            ready_now(&conn, &format!("{queue}.retry.{tier}")).await,
            0,
            "jobs left in {tier}"
        );
    }
    let accepted = sim.sim.accepted();
    let mut per_token: HashMap<String, u64> = HashMap::new();
    for a in &accepted {
        *per_token.entry(a.token.clone()).or_default() += 1;
    }
    let delivered = per_token.len() as u64;
    let duplicated: u64 = per_token.values().map(|n| n - 1).sum();
    let expired = sim
        .sim
        .token_events()
        .iter()
        .filter(|e| e.kind == misiva::sim::TokenEventKind::Expired)
        .count();
    assert!(expired > 0, "no provider token expired during the run");
    let news = accepted
        .iter()
        .filter(|a| a.topic == "com.example.news")
        .count();
    assert!(news > 0, "the second app delivered nothing");
    let unexpected: Vec<&String> = per_token.keys().filter(|t| !w.live.contains(*t)).collect();
    assert!(
        unexpected.is_empty(),
        "tokens nobody asked for: {unexpected:?}"
    );

    let fed_back: HashSet<String> = drain(&conn, &feedback_queue)
        .await
        .iter()
        .map(|m| {
            let event: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            event["token"].as_str().unwrap().to_owned()
        })
        .collect();
    let dead_letters = drain(&conn, &format!("{queue}.dead")).await;
    let mut dead_by_reason: HashMap<String, HashSet<String>> = HashMap::new();
    for m in &dead_letters {
        let reason = support::header(m, "x-misiva-reason").unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap_or_default();
        let id = body["id"].as_str().unwrap_or("?").to_owned();
        dead_by_reason.entry(reason).or_default().insert(id);
    }
    let lost = w.live.len() as u64 - delivered;
    println!(
        "provider tokens answered ExpiredProviderToken {expired} times; the second app delivered {news}"
    );
    println!(
        "| published jobs | live tokens | delivered | duplicated | dead tokens fed back | invalid jobs dead-lettered | lost |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {delivered} | {duplicated} | {} of {} | {} of {} | {lost} |",
        w.bodies.len(),
        w.live.len(),
        fed_back.len(),
        w.dead.len(),
        dead_by_reason.get("invalid_job").map_or(0, HashSet::len),
        w.invalid.len(),
    );
    assert_eq!(lost, 0);
    assert_eq!(fed_back, w.dead, "every dead token fed back");
    assert_eq!(
        dead_by_reason
            .get("invalid_job")
            .cloned()
            .unwrap_or_default(),
        w.invalid,
        "every invalid job dead-lettered"
    );
    assert_eq!(
        dead_by_reason
            .keys()
            .filter(|r| *r != "invalid_job")
            .count(),
        0,
        "no other dead letters: {:?}",
        dead_by_reason.keys()
    );
    assert!(
        duplicated <= duplicating * IN_FLIGHT_TOKENS,
        "{duplicated} duplicates after {duplicating} faults that may duplicate (at most {IN_FLIGHT_TOKENS} each)"
    );
    node.stop();
}
