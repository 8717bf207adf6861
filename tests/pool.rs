//! The APNs connection pool against the simulator: stream limits, GOAWAY,
//! resets, stalls, PING keepalive and one pool per app.

use crate::support;

use futures_util::StreamExt;
use misiva::apns::{Apns, ApnsClient, JobRequest};
use misiva::config::{AppConfig, Auth};
use misiva::job::{self, DeviceToken};
use misiva::outcome::ApnsAnswer;
use misiva::sim::{Faults, SimConfig, SimKey};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::{SimFixture, token};

fn ok() -> ApnsAnswer {
    ApnsAnswer::Status {
        code: 200,
        reason: None,
        timestamp_ms: None,
    }
}

fn request(client: &ApnsClient, id: &str) -> JobRequest {
    let job = job::decode(
        format!(r#"{{"id":"{id}","token":"{}","alert":"x"}}"#, token(0)).as_bytes(),
        None,
    )
    .unwrap();
    JobRequest::new(&job, client.default_topic())
}

fn tokens(count: u64, offset: u64) -> Vec<DeviceToken> {
    (0..count)
        .map(|i| DeviceToken::parse("token", &token(offset + i)).unwrap())
        .collect()
}

/// Sends to every token, `concurrency` at a time; a transient answer is tried
/// again (what the retry tiers do), up to five times. Returns the final answers.
async fn send_all(
    client: &ApnsClient,
    job: &JobRequest,
    tokens: &[DeviceToken],
    concurrency: usize,
) -> Vec<ApnsAnswer> {
    send_all_counting(client, job, tokens, concurrency).await.0
}

/// [`send_all`], and how many requests the test itself sent again after an
/// answer that left their fate unknown (no answer, or a 5xx), as the
/// worker's retry tiers would.
async fn send_all_counting(
    client: &ApnsClient,
    job: &JobRequest,
    tokens: &[DeviceToken],
    concurrency: usize,
) -> (Vec<ApnsAnswer>, usize) {
    let resent = std::sync::atomic::AtomicUsize::new(0);
    let resent_ref = &resent;
    let answers = futures_util::stream::iter(tokens)
        .map(|t| async move {
            let mut answer = client.send(job, t).await;
            for _ in 0..5 {
                if matches!(answer, ApnsAnswer::Transport(_))
                    || matches!(
                        answer,
                        ApnsAnswer::Status {
                            code: 500..=599,
                            ..
                        }
                    )
                {
                    resent_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    answer = client.send(job, t).await;
                }
            }
            answer
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (answers, resent.into_inner())
}

/// The simulator with per-connection faults, answering after 2 ms.
async fn sim_with(faults: Faults) -> SimFixture {
    SimFixture::start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(2),
            ..faults
        },
        ..Default::default()
    })
    .await
}

/// How many notifications the simulator accepted, and the distinct tokens among them.
fn accepted_and_unique(sim: &SimFixture) -> (usize, HashSet<String>) {
    let accepted = sim.sim.accepted();
    let unique = accepted.iter().map(|a| a.token.clone()).collect();
    (accepted.len(), unique)
}

fn config(sim: &SimFixture, connections: usize) -> AppConfig {
    AppConfig {
        connections,
        ..sim.app_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reach_the_advertised_limit_and_never_exceed_it() {
    let sim = SimFixture::start(SimConfig {
        max_streams: 10,
        faults: Faults {
            latency: Duration::from_millis(30),
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let client = ApnsClient::new("default", &config(&sim, 2)).await.unwrap();
    let job = request(&client, "streams");
    let answers = send_all(&client, &job, &tokens(600, 0), 200).await;
    assert!(answers.iter().all(|a| *a == ok()));
    let per_connection = sim.sim.max_concurrent_streams();
    println!("max concurrent streams per connection (limit 10): {per_connection:?}");
    assert_eq!(
        per_connection,
        vec![10, 10],
        "two connections, each filled to the limit and no further"
    );
    assert_eq!(sim.sim.accepted_count(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_goaway_every_notification_is_delivered_exactly_once() {
    let sim = sim_with(Faults {
        goaway_after: Some(150),
        ..Faults::default()
    })
    .await;
    let client = ApnsClient::new("default", &config(&sim, 2)).await.unwrap();
    let job = request(&client, "goaway");
    let all = tokens(2000, 10_000);
    // No retries here: a request refused by GOAWAY must be re-sent by the pool itself.
    let answers: Vec<ApnsAnswer> = futures_util::stream::iter(&all)
        .map(|t| client.send(&job, t))
        .buffer_unordered(200)
        .collect()
        .await;
    let failed: Vec<_> = answers.iter().filter(|a| **a != ok()).collect();
    assert!(
        failed.is_empty(),
        "reported as failed: {:?}",
        &failed[..failed.len().min(3)]
    );
    let (accepted, unique) = accepted_and_unique(&sim);
    println!(
        "GOAWAY every 150 streams: {} connections, {accepted} accepted, {} unique",
        sim.sim.connections(),
        unique.len()
    );
    assert_eq!(unique.len(), 2000);
    assert_eq!(accepted, 2000, "no notification twice");
    assert!(sim.sim.connections() >= 10, "GOAWAY forced new connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_resets_the_pool_recovers_and_delivers_everything() {
    let sim = sim_with(Faults {
        reset_after: Some(200),
        ..Faults::default()
    })
    .await;
    let client = ApnsClient::new("default", &config(&sim, 2)).await.unwrap();
    let job = request(&client, "reset");
    let all = tokens(2000, 20_000);
    let (answers, resent) = send_all_counting(&client, &job, &all, 100).await;
    assert!(
        answers.iter().all(|a| *a == ok()),
        "{:?}",
        answers.iter().find(|a| **a != ok())
    );
    let (accepted, unique) = accepted_and_unique(&sim);
    let duplicates = accepted - unique.len();
    println!(
        "reset every 200 streams: {} connections, {accepted} accepted, {duplicates} duplicates",
        sim.sim.connections()
    );
    assert_eq!(unique.len(), 2000);
    // A notification is accepted twice only when it was sent twice. The
    // pool itself sends again only what APNs certainly did not process
    // (GOAWAY, a refused stream), so every duplicate is one the test sent
    // again after its answer was lost with a reset connection: no more
    // duplicates than those resends, and at least one reset lost an answer.
    println!("duplicates {duplicates} ≤ resent by the test after a lost answer {resent}");
    assert!(
        duplicates > 0,
        "resets with requests in flight must cost some duplicates"
    );
    assert!(
        duplicates <= resent,
        "{duplicates} duplicates but only {resent} requests were sent again by the caller: \
         the pool sent again a request APNs may have processed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stall_the_pool_replaces_the_connection() {
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            stall_after: Some(100),
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let mut app = config(&sim, 2);
    app.request_timeout = Duration::from_millis(500);
    let client = ApnsClient::new("default", &app).await.unwrap();
    let job = request(&client, "stall");
    let all = tokens(1000, 30_000);
    let answers = send_all(&client, &job, &all, 50).await;
    assert!(
        answers.iter().all(|a| *a == ok()),
        "{:?}",
        answers.iter().find(|a| **a != ok())
    );
    let (accepted, unique) = accepted_and_unique(&sim);
    println!(
        "stall after 100 streams: {} connections, {accepted} accepted, {} duplicates",
        sim.sim.connections(),
        accepted - unique.len()
    );
    assert_eq!(unique.len(), 1000);
    assert_eq!(
        accepted, 1000,
        "stalled requests were never accepted, so nothing twice"
    );
    assert!(sim.sim.connections() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_an_idle_connection_open() {
    let sim = SimFixture::start(SimConfig {
        idle_timeout: Some(Duration::from_millis(1000)),
        ..Default::default()
    })
    .await;
    let one = tokens(2, 40_000);

    // With a PING every 250 ms, 2.5 idle seconds (the simulator's idle
    // limit two and a half times over) do not close the connection.
    let mut app = config(&sim, 1);
    app.keepalive = Duration::from_millis(250);
    let client = ApnsClient::new("default", &app).await.unwrap();
    let job = request(&client, "ping");
    assert_eq!(client.send(&job, &one[0]).await, ok());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(client.send(&job, &one[1]).await, ok());
    assert_eq!(sim.sim.connections(), 1, "the idle connection was kept");

    // Without PINGs in that time, the simulator closes it and a new one is made.
    let mut app = config(&sim, 1);
    app.keepalive = Duration::from_secs(60);
    let client = ApnsClient::new("default", &app).await.unwrap();
    assert_eq!(client.send(&job, &one[0]).await, ok());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(client.send(&job, &one[1]).await, ok());
    assert_eq!(
        sim.sim.connections(),
        3,
        "the quiet connection was closed and replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_with_different_keys_never_share_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    let mut files = Vec::new();
    for (kid, team) in [("KEYAAAAAAA", "TEAMAAAAAA"), ("KEYBBBBBBB", "TEAMBBBBBB")] {
        let path = dir.path().join(format!("{kid}.p8"));
        std::fs::write(&path, misiva::jwt::generate_p8()).unwrap();
        keys.push(SimKey::from_file(kid, team, &path).unwrap());
        files.push((kid, team, path));
    }
    let mut sim = SimFixture::start(Default::default()).await;
    // Restart the simulator with both teams' keys.
    sim.sim = misiva::sim::Simulator::start(SimConfig {
        keys,
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(&sim.ca_file, sim.sim.ca_pem()).unwrap();

    let mut env = HashMap::new();
    env.insert(
        "MISIVA_APNS_KEY_FILE".to_owned(),
        files[0].2.display().to_string(),
    );
    env.insert("MISIVA_APNS_KEY_ID".to_owned(), files[0].0.to_owned());
    env.insert("MISIVA_APNS_TEAM_ID".to_owned(), files[0].1.to_owned());
    let mut config = misiva::config::Config::from_env_map(&env).unwrap();
    let base = AppConfig {
        connections: 2,
        ..sim.app_config()
    };
    let app = |(kid, team, path): &(&str, &str, std::path::PathBuf)| AppConfig {
        auth: Auth::Token {
            key_file: path.clone(),
            key_id: (*kid).into(),
            team_id: (*team).into(),
        },
        ..base.clone()
    };
    config.apps.insert("default".into(), app(&files[0]));
    config.apps.insert("other".into(), app(&files[1]));
    let apns = Apns::from_config(&config).await.unwrap();

    let a = &apns.client("default").await.unwrap().unwrap();
    let b = &apns.client("other").await.unwrap().unwrap();
    let (ja, jb) = (request(a, "a"), request(b, "b"));
    let all = tokens(400, 50_000);
    let answers: Vec<ApnsAnswer> = futures_util::stream::iter(all.iter().enumerate())
        .map(|(i, t)| {
            let (client, job) = if i % 2 == 0 { (a, &ja) } else { (b, &jb) };
            client.send(job, t)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(answers.iter().all(|x| *x == ok()));
    let per_connection = sim.sim.key_ids_per_connection();
    println!("key ids per connection: {per_connection:?}");
    assert!(
        per_connection.iter().all(|ids| ids.len() == 1),
        "a connection carried two teams' tokens"
    );
    let seen: HashSet<_> = per_connection.into_iter().flatten().collect();
    assert_eq!(seen.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_works_with_pem_and_pkcs12() {
    let sim = SimFixture::start(SimConfig {
        certificate_auth: true,
        ..Default::default()
    })
    .await;
    let issued = sim
        .sim
        .issue_client_certificate(support::TOPIC, "s3cret")
        .unwrap();
    let pem = sim.dir.path().join("client.pem");
    let p12 = sim.dir.path().join("client.p12");
    std::fs::write(&pem, &issued.pem).unwrap();
    std::fs::write(&p12, &issued.p12).unwrap();
    let with = |file: &std::path::Path, password: Option<&str>| AppConfig {
        auth: Auth::Certificate {
            cert_file: file.to_owned(),
            password: password.map(|p| misiva::config::Secret::new(p.to_owned())),
        },
        ..sim.app_config()
    };
    let all = tokens(2, 60_000);
    for (i, config) in [with(&pem, None), with(&p12, Some("s3cret"))]
        .iter()
        .enumerate()
    {
        let client = ApnsClient::new("default", config).await.unwrap();
        let job = request(&client, "cert");
        assert_eq!(client.send(&job, &all[i]).await, ok());
    }
    let accepted = sim.sim.accepted();
    assert_eq!(accepted.len(), 2);
    assert!(
        accepted
            .iter()
            .all(|a| a.key_id.starts_with("certificate:"))
    );

    // A wrong PKCS#12 password is a configuration error that does not show it.
    let err = ApnsClient::new("default", &with(&p12, Some("wrong")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("client.p12") && !err.contains("wrong"),
        "{err}"
    );
    // Without a client certificate the server refuses the connection (with
    // TLS 1.3 the client learns it only when it uses it).
    let token_client = ApnsClient::new("default", &sim.app_config()).await.unwrap();
    let job = request(&token_client, "no-cert");
    let answer = token_client.send(&job, &all[0]).await;
    assert!(matches!(answer, ApnsAnswer::Transport(_)), "{answer:?}");
    assert_eq!(sim.sim.accepted_count(), 2);
}

/// An app's places for requests in flight are held until each answer comes:
/// with every place taken by a request APNs has not answered yet, no other
/// request may start. (A place freed early once let a fan-out build a future
/// for every token at once: twice the memory, and more CPU per notification.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_in_flight_is_held_until_its_answer() {
    use futures_util::FutureExt;
    let sim = SimFixture::start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(600),
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let client = ApnsClient::new("default", &config(&sim, 1)).await.unwrap();
    let job = request(&client, "places");
    // Unconstrained: tokio's cooperative budget would make the semaphore
    // answer "not now" after 128 places in one go, full or not.
    let try_reserve =
        || tokio::task::unconstrained(client.reserve(misiva::lane::Lane::Normal)).now_or_never();
    let mut slots = Vec::new();
    while let Some(slot) = try_reserve() {
        slots.push(slot);
    }
    let places = slots.len();
    assert!(places > 0, "the app has places for requests in flight");
    let far = tokio::time::Instant::now() + Duration::from_secs(60);
    let all = tokens(places as u64, 0);
    let sends: futures_util::stream::FuturesUnordered<_> = slots
        .into_iter()
        .zip(&all)
        .map(|(slot, token)| {
            client.send_reserved(&job, misiva::apns::Recipient::Device(token), slot, far)
        })
        .collect();
    let full_while_in_flight = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        try_reserve().is_none()
    };
    let (answers, full) = tokio::join!(sends.collect::<Vec<_>>(), full_while_in_flight);
    assert!(
        full,
        "a place was free while all {places} requests waited for APNs"
    );
    assert!(
        answers.iter().all(|a| *a == Some(ok())),
        "{:?}",
        answers.first()
    );
    assert!(
        try_reserve().is_some(),
        "every place is free again once the answers came"
    );
}

/// A many-token job waits for room among its app's jobs in progress, in
/// arrival order, at most `max_hold`: then every token goes to a retry tier,
/// unsent. With room free again, the same job is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_room_at_most_max_hold() {
    use misiva::dispatch::{Dispatcher, Inbound};
    let sim = SimFixture::start(Default::default()).await;
    let mut env = HashMap::new();
    env.insert(
        "MISIVA_APNS_KEY_FILE".to_owned(),
        sim.key_file.display().to_string(),
    );
    env.insert("MISIVA_APNS_KEY_ID".to_owned(), support::KEY_ID.to_owned());
    env.insert(
        "MISIVA_APNS_TEAM_ID".to_owned(),
        support::TEAM_ID.to_owned(),
    );
    let mut worker = misiva::config::Config::from_env_map(&env).unwrap();
    worker.apps.insert("default".into(), config(&sim, 1));
    let apns = Apns::from_config(&worker).await.unwrap();
    let client = apns.client("default").await.unwrap().unwrap();
    let max_hold = Duration::from_millis(300);
    let dispatcher = Dispatcher::new(apns, Default::default(), max_hold);

    // Other jobs in progress take all the room, 10,000 tokens at a time.
    let mut taken = Vec::new();
    while let Ok(room) = client.try_admit(misiva::lane::Lane::Normal, job::MAX_TOKENS) {
        taken.push(room);
        assert!(taken.len() <= 64, "an app's room is bounded");
    }
    assert!(!taken.is_empty(), "an app has room for jobs");
    assert!(
        client.try_admit(misiva::lane::Lane::Normal, 1).is_ok(),
        "a single-token job needs no room"
    );
    let body = format!(
        r#"{{"id":"waits","tokens":["{}","{}"],"alert":"x"}}"#,
        token(1),
        token(2)
    );
    let inbound = Inbound {
        body: body.as_bytes(),
        message_id: None,
        previous_attempts: 0,
        trace: None,
        lane: misiva::lane::Lane::Normal,
    };
    let started = std::time::Instant::now();
    let (held, _span) = dispatcher.handle(inbound).await;
    let waited = started.elapsed();
    assert!(
        waited >= max_hold && waited < max_hold + Duration::from_secs(2),
        "it waited for room, max_hold and no longer: {waited:?}"
    );
    assert_eq!(held.delivered, 0);
    let retry = held.settlement.retry.expect("a retry of every token");
    assert_eq!(retry.tokens.len(), 2);
    assert!(retry.detail.contains("room"), "{}", retry.detail);
    assert_eq!(sim.sim.accepted_count(), 0, "nothing was sent");

    // Room freed while it waits: the job is admitted and delivered.
    let mut waiting = std::pin::pin!(dispatcher.handle(inbound));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), waiting.as_mut())
            .await
            .is_err(),
        "it waits while there is no room"
    );
    taken.pop();
    let (sent, _span) = waiting.await;
    assert_eq!(sent.delivered, 2);
    assert_eq!(sent.settlement.retry, None);
    assert_eq!(sim.sim.accepted_count(), 2);
}

/// The urgent lane's reserve (CONTRACT §9): with the normal lane holding
/// every place it may take (90% by default), urgent requests still find
/// places at once, and only the reserve's worth of them; an urgent
/// many-token job finds room while the normal lane's room is all taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_urgent_lane_keeps_its_share_of_places_and_its_own_room() {
    use futures_util::FutureExt;
    use misiva::lane::Lane;
    let sim = SimFixture::start(Default::default()).await;
    let client = ApnsClient::with_reserve("default", &config(&sim, 1), 10)
        .await
        .unwrap();
    // Unconstrained: tokio's cooperative budget would make the semaphore
    // answer "not now" after 128 places in one go, full or not.
    let try_reserve = |lane| tokio::task::unconstrained(client.reserve(lane)).now_or_never();
    let mut normal = Vec::new();
    while let Some(slot) = try_reserve(Lane::Normal) {
        normal.push(slot);
    }
    let mut urgent = Vec::new();
    while let Some(slot) = try_reserve(Lane::Urgent) {
        urgent.push(slot);
    }
    println!(
        "places: {} for the normal lane, {} more for urgent requests",
        normal.len(),
        urgent.len()
    );
    assert_eq!(normal.len() + urgent.len(), 1000, "one connection's places");
    assert_eq!(urgent.len(), 100, "10% kept for the urgent lane");
    // With every place taken, a normal request waits, and so does an urgent one.
    assert!(try_reserve(Lane::Urgent).is_none());
    drop(urgent.pop());
    assert!(
        try_reserve(Lane::Normal).is_none(),
        "a place the urgent lane freed is not the normal lane's"
    );
    assert!(try_reserve(Lane::Urgent).is_some());

    let mut rooms = Vec::new();
    while let Ok(room) = client.try_admit(Lane::Normal, job::MAX_TOKENS) {
        rooms.push(room);
    }
    assert!(client.try_admit(Lane::Normal, 2).is_err());
    assert!(
        client.try_admit(Lane::Urgent, job::MAX_TOKENS).is_ok(),
        "urgent jobs have room of their own"
    );
}
