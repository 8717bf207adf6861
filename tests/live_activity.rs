//! Live Activities end to end (CONTRACT §7): topic suffixes against a strict
//! simulator, invalid combinations, channel management with `misiva
//! channels`, broadcasts mixed with device pushes, channel feedback, and
//! broadcasts retried after GOAWAY and 503.

use crate::support;

use misiva::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::{
    SimFixture, TOPIC, Worker, broker, drain, header, publish, token, unique_queue, wait_for,
};

/// A simulator that checks topics strictly and serves channel management.
async fn channel_sim(faults: Faults) -> SimFixture {
    SimFixture::start(SimConfig {
        strict_topics: true,
        channels_listen: Some("127.0.0.1:0".parse().unwrap()),
        faults,
        ..Default::default()
    })
    .await
}

fn channels_endpoint(sim: &SimFixture) -> String {
    sim.sim
        .channels_endpoint()
        .expect("channel management listens")
}

/// `misiva channels ARGS` with the test app's credentials.
fn channels(sim: &SimFixture, args: &[&str]) -> (i32, String, String) {
    support::misiva_channels(sim, args)
}

fn create(sim: &SimFixture, storage: &str) -> String {
    support::create_channel(sim, storage)
}

fn start_worker(sim: &SimFixture, queue: &str) -> Worker {
    Worker::start(
        sim,
        queue,
        &[
            ("MISIVA_APNS_CHANNELS_ENDPOINT", &channels_endpoint(sim)),
            ("MISIVA_RETRY_DELAYS", "100ms,200ms,400ms"),
        ],
    )
}

/// The payload each push type is published with (no topic).
fn job_of(push_type: &str, n: u64) -> Value {
    let mut job =
        json!({"id": format!("pt-{push_type}"), "token": token(n), "push_type": push_type});
    match push_type {
        "liveactivity" => {
            job["live_activity"] = json!({"event": "update", "content_state": {"n": n}})
        }
        "background" => job["content_available"] = json!(true),
        _ => job["alert"] = json!(push_type),
    }
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_type_without_a_topic_reaches_apns_with_its_suffix() {
    let sim = channel_sim(Faults::default()).await;
    let queue = unique_queue("suffix");
    let mut worker = start_worker(&sim, &queue);
    worker.ready().await;
    let expected: HashMap<&str, String> = [
        ("alert", ""),
        ("background", ""),
        ("voip", ".voip"),
        ("complication", ".complication"),
        ("fileprovider", ".pushkit.fileprovider"),
        ("mdm", ""),
        ("liveactivity", ".push-type.liveactivity"),
        ("location", ".location-query"),
        ("pushtotalk", ".voip-ptt"),
        ("widgets", ".push-type.widgets"),
        ("controls", ".push-type.controls"),
    ]
    .into_iter()
    .map(|(push_type, suffix)| (push_type, format!("{TOPIC}{suffix}")))
    .collect();
    let mut bodies: Vec<Vec<u8>> = expected
        .keys()
        .enumerate()
        .map(|(n, push_type)| job_of(push_type, n as u64).to_string().into_bytes())
        .collect();
    // Explicit topics go as they are: one of another app, one already suffixed.
    let explicit = [
        ("alert", "com.example.other", 100),
        ("voip", "com.example.tests.voip", 101),
    ];
    for (push_type, topic, n) in explicit {
        let mut job = job_of(push_type, n);
        job["id"] = json!(format!("explicit-{push_type}"));
        job["topic"] = json!(topic);
        bodies.push(job.to_string().into_bytes());
    }
    // The simulator is strict: a voip push to the bare bundle id is refused,
    // which is what the suffixes above are for.
    let mut bare = job_of("voip", 102);
    bare["id"] = json!("bare-voip");
    bare["topic"] = json!(TOPIC);
    bodies.push(bare.to_string().into_bytes());
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;

    wait_for(Duration::from_secs(30), "13 pushes accepted", || {
        sim.sim.accepted_count() == 13
    })
    .await;
    let dead_queue = format!("{queue}.dead");
    wait_for(
        Duration::from_secs(30),
        "the bare voip push refused",
        || {
            broker()
                .counts(&dead_queue)
                .is_some_and(|(ready, _)| ready == 1)
        },
    )
    .await;
    // Every push reached APNs once, each with the topic its job should have.
    let mut want: HashMap<String, (String, String)> = expected
        .keys()
        .enumerate()
        .map(|(n, push_type)| {
            (
                token(n as u64),
                (push_type.to_string(), expected[push_type].clone()),
            )
        })
        .collect();
    for (push_type, topic, n) in explicit {
        want.insert(token(n), (push_type.to_owned(), topic.to_owned()));
    }
    let accepted = sim.sim.accepted();
    let got: HashMap<String, (String, String)> = accepted
        .iter()
        .map(|a| {
            (
                a.token.clone(),
                (a.push_type.clone().unwrap_or_default(), a.topic.clone()),
            )
        })
        .collect();
    assert_eq!(accepted.len(), 13);
    assert_eq!(got, want);
    let dead = drain(&conn, &dead_queue).await;
    assert_eq!(
        header(&dead[0], "x-misiva-reason").as_deref(),
        Some("bad_topic")
    );
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_combinations_are_dead_lettered_before_any_request() {
    let sim = channel_sim(Faults::default()).await;
    let none = create(&sim, "none");
    let queue = unique_queue("la-invalid");
    let mut worker = start_worker(&sim, &queue);
    worker.ready().await;
    let update = json!({"event": "update", "content_state": {"s": 1}});
    let cases = [
        (
            json!({"id": "start-on-channel", "channel": none, "live_activity":
                {"event": "start", "content_state": {}, "attributes_type": "A", "attributes": {}}}),
            "cannot start a Live Activity",
        ),
        (
            json!({"id": "attributes-on-update", "token": token(1), "live_activity":
                {"event": "update", "content_state": {}, "attributes_type": "A", "attributes": {}}}),
            "only for a start",
        ),
        (
            json!({"id": "channel-and-tokens", "channel": none, "tokens": [token(2)], "live_activity": update}),
            "exactly one of `token`, `tokens` and `channel`",
        ),
        (
            json!({"id": "collapse-on-channel", "channel": none, "collapse_id": "c", "live_activity": update}),
            "cannot have `collapse_id`",
        ),
    ];
    let bodies: Vec<Vec<u8>> = cases
        .iter()
        .map(|(job, _)| job.to_string().into_bytes())
        .collect();
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    // The worker cannot know a channel's storage policy: APNs refuses an
    // expiration on a channel that keeps nothing, and the job goes to the
    // dead letters with Apple's reason.
    let expiring = json!({"id": "expiring", "channel": none, "expiration": 4_000_000_000u64, "live_activity": update});
    publish(&conn, &queue, &[expiring.to_string().into_bytes()]).await;

    let dead_queue = format!("{queue}.dead");
    wait_for(Duration::from_secs(30), "five dead letters", || {
        broker()
            .counts(&dead_queue)
            .is_some_and(|(ready, _)| ready == 5)
    })
    .await;
    // No request for the four invalid jobs: the one broadcast sent is the
    // expiring one, refused.
    assert_eq!(sim.sim.accepted_count(), 0);
    assert_eq!(
        sim.sim.rejected(),
        [((400, "BadExpirationDate".to_owned()), 1)].into()
    );
    // `misiva dlq show` names the channel of a channel job.
    let (code, out, err) = support::misiva_broker_only(&queue, &["dlq", "show", "expiring"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("channel: {none}")), "{out}");
    assert!(out.contains("reason: bad_expiration_date"), "{out}");

    let dead = drain(&conn, &dead_queue).await;
    for (job, fragment) in &cases {
        let body = job.to_string().into_bytes();
        let letter = dead
            .iter()
            .find(|m| m.delivery.data == body)
            .unwrap_or_else(|| panic!("no dead letter for {job}"));
        assert_eq!(
            header(letter, "x-misiva-reason").as_deref(),
            Some("invalid_job")
        );
        let detail = header(letter, "x-misiva-detail").unwrap();
        assert!(detail.contains(fragment), "{detail:?} lacks {fragment:?}");
    }
    assert!(worker.terminate().await.success());
}

/// The `n` of a broadcast's content state, which tells the jobs apart.
fn seq(payload: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    value["aps"]["content-state"]["n"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_managed_and_broadcasts_flow_beside_device_pushes() {
    let sim = channel_sim(Faults::default()).await;
    let ids = [
        create(&sim, "none"),
        create(&sim, "none"),
        create(&sim, "latest"),
    ];
    let (code, out, err) = channels(&sim, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let listed: HashSet<&str> = listed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect());
    let (code, out, err) = channels(&sim, &["show", &ids[2], "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["storage"], "latest");
    assert_eq!(shown["channel"], json!(ids[2]));

    let queue = unique_queue("broadcast");
    let mut worker = start_worker(&sim, &queue);
    worker.ready().await;
    // 1,000 broadcasts among 10,000 single-token jobs: one after every ten.
    let mut bodies = Vec::new();
    let mut tokens = HashSet::new();
    for n in 0..10_000u64 {
        tokens.insert(token(n));
        bodies.push(
            json!({"id": format!("t-{n}"), "token": token(n), "alert": "hi"})
                .to_string()
                .into_bytes(),
        );
        if n % 10 != 9 {
            continue;
        }
        let b = n / 10;
        let channel = &ids[(b % 3) as usize];
        let mut job = json!({"id": format!("b-{b}"), "channel": channel,
            "live_activity": {"event": "update", "content_state": {"n": b}}});
        if b % 3 == 2 {
            // The channel that keeps the latest message takes an expiration.
            job["expiration"] = json!(4_000_000_000u64);
        }
        bodies.push(job.to_string().into_bytes());
    }
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(120), "11,000 pushes accepted", || {
        sim.sim.accepted_count() >= 11_000
    })
    .await;
    wait_for(Duration::from_secs(30), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let accepted = sim.sim.accepted();
    assert_eq!(accepted.len(), 11_000);
    let mut broadcasts: HashMap<u64, u32> = HashMap::new();
    for a in accepted.iter().filter(|a| a.channel.is_some()) {
        assert_eq!(a.topic, TOPIC, "the bundle id in the path");
        assert_eq!(a.push_type.as_deref(), Some("liveactivity"));
        assert_eq!(a.priority.as_deref(), Some("10"));
        *broadcasts.entry(seq(&a.payload).unwrap()).or_default() += 1;
    }
    assert_eq!(broadcasts.len(), 1000);
    assert!(broadcasts.values().all(|n| *n == 1), "each broadcast once");
    let devices: HashSet<String> = accepted
        .iter()
        .filter(|a| a.channel.is_none())
        .map(|a| a.token.clone())
        .collect();
    assert_eq!(devices, tokens);
    assert_eq!(
        worker.metric("misiva_notifications_total", &[("target", "channel")]),
        1000.0
    );
    assert_eq!(
        worker.metric("misiva_notifications_total", &[("target", "token")]),
        10_000.0
    );

    // Each accepted broadcast's apns-unique-id is logged with its job's id.
    let answered = worker.log_lines("broadcast answered");
    assert_eq!(answered.len(), 1000);
    assert!(
        answered
            .iter()
            .all(|l| l.contains("job_id=\"b-") && l.contains("apns_unique_id=")),
        "{:?}",
        answered.first()
    );

    // A channel deleted behind the worker's back: the job is settled with a
    // feedback event naming the channel and the job.
    assert!(sim.sim.delete_channel(TOPIC, &ids[0]));
    let gone = json!({"id": "gone-1", "channel": ids[0], "live_activity": {"event": "end"}});
    publish(&conn, &queue, &[gone.to_string().into_bytes()]).await;
    let feedback_queue = format!("{queue}.feedback");
    wait_for(Duration::from_secs(20), "the channel's feedback", || {
        broker()
            .counts(&feedback_queue)
            .is_some_and(|(ready, _)| ready == 1)
    })
    .await;
    let events = drain(&conn, &feedback_queue).await;
    assert_eq!(
        events[0].delivery.routing_key.as_str(),
        "default.ChannelNotRegistered"
    );
    let event: Value = serde_json::from_slice(&events[0].delivery.data).unwrap();
    assert_eq!(event["channel"], json!(ids[0]));
    assert_eq!(event["app"], "default");
    assert_eq!(event["reason"], "ChannelNotRegistered");
    assert_eq!(event["job_id"], "gone-1");
    assert!(event["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(event.get("token").is_none());

    // Delete through the command; `show` then exits 1 with Apple's reason.
    let (code, _, err) = channels(&sim, &["delete", &ids[1]]);
    assert_eq!(code, 2, "no terminal to ask, no --yes: {err}");
    let (code, out, err) = channels(&sim, &["delete", &ids[1], "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("deleted channel {}", ids[1]));
    let (code, _, err) = channels(&sim, &["show", &ids[1]]);
    assert_eq!(code, 1);
    assert!(err.contains("ChannelNotRegistered"), "{err}");
    let (_, out, _) = channels(&sim, &["list"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec![ids[2].as_str()]);
    assert!(worker.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_are_retried_after_goaway_and_503() {
    let sim = channel_sim(Faults {
        error_rate: 0.3,
        error_status: 503,
        goaway_after: Some(40),
        ..Faults::default()
    })
    .await;
    let channel = create(&sim, "none");
    let queue = unique_queue("broadcast-faults");
    let mut worker = start_worker(&sim, &queue);
    worker.ready().await;
    let bodies: Vec<Vec<u8>> = (0..300u64)
        .map(|n| {
            json!({"id": format!("b-{n}"), "channel": channel,
                "live_activity": {"event": "update", "content_state": {"n": n}}})
            .to_string()
            .into_bytes()
        })
        .collect();
    let conn = broker().connect().await;
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(60), "300 broadcasts accepted", || {
        sim.sim.accepted_count() >= 300
    })
    .await;
    wait_for(Duration::from_secs(30), "the work queue to settle", || {
        broker().counts(&queue) == Some((0, 0))
    })
    .await;
    let accepted = sim.sim.accepted();
    let seqs: HashSet<u64> = accepted.iter().filter_map(|a| seq(&a.payload)).collect();
    assert_eq!(seqs.len(), 300);
    assert_eq!(accepted.len(), 300, "none accepted twice");
    let refused = sim
        .sim
        .rejected()
        .get(&(503, "ServiceUnavailable".to_owned()))
        .copied()
        .unwrap_or_default();
    assert!(refused > 0, "the 503s happened");
    assert!(sim.sim.connections() > 1, "GOAWAY moved to new connections");
    assert!(worker.metric("misiva_jobs_retried_total", &[]) > 0.0);
    assert_eq!(broker().counts(&format!("{queue}.dead")), Some((0, 0)));
    assert!(worker.terminate().await.success());
}
