//! The operator commands against the real broker and a running worker:
//! dead letters of every reason are listed and counted with their fields,
//! reading changes nothing, a filtered replay brings back exactly its subset
//! (and the worker delivers it), a purge removes exactly its subset, an
//! interrupted replay loses nothing, and `send` and `topology` need no APNs
//! credentials.

use crate::support;

use misiva::sim::{Faults, SimConfig};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{
    SimFixture, Worker, broker, drain, publish, ready_now, special_token, token, unique_queue,
    wait_for,
};

/// Runs `misiva ARGS` with only a broker URL and queue name: no credentials.
fn misiva(queue: &str, args: &[&str]) -> (i32, String, String) {
    support::misiva_broker_only(queue, args)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn list(queue: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["dlq", "list", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = misiva(queue, &args);
    assert_eq!(code, 0, "{err}");
    json_lines(&out)
}

fn ids(letters: &[Value]) -> Vec<String> {
    letters
        .iter()
        .map(|l| l["job_id"].as_str().unwrap_or("-").to_owned())
        .collect()
}

fn single(id: &str, token: &str) -> Vec<u8> {
    support::single_job(id, token, "hello")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_inspected_replayed_and_purged_without_loss() {
    let sim = SimFixture::start(SimConfig {
        // Every ordinary token fails at first: those jobs run out of attempts.
        faults: Faults {
            error_rate: 1.0,
            error_status: 503,
            latency: Duration::ZERO,
            ..Faults::default()
        },
        record: true,
        ..Default::default()
    })
    .await;
    let queue = unique_queue("dlq");
    let dead = format!("{queue}.dead");
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_MAX_ATTEMPTS", "1"),
            ("MISIVA_FAULT_CRASH_ON", "kills-its-consumer"),
            ("MISIVA_MAX_DELIVERIES", "2"),
        ],
    );
    worker.ready().await;
    let conn = broker().connect().await;

    // Dead letters of every reason: retries exhausted (503), invalid jobs, a
    // permanent APNs reason, and a poison message that kills its consumer.
    let exhausted: Vec<String> = (0..3).map(|n| token(100 + n)).collect();
    let bodies: Vec<Vec<u8>> = exhausted
        .iter()
        .enumerate()
        .map(|(n, t)| single(&format!("late-{n}"), t))
        .collect();
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(30), "3 exhausted jobs", || {
        worker.metric("misiva_jobs_dead_lettered_total", &[]) == 3.0
    })
    .await;
    sim.sim.set_faults(Faults::default());
    let mut bodies = Vec::new();
    for n in 0..3 {
        bodies.push(format!("{{\"id\":\"inv-{n}\",\"tokn\":1}}").into_bytes());
    }
    for n in 0..2 {
        bodies.push(single(
            &format!("refused-{n}"),
            &special_token("ffff0402", n),
        ));
    }
    bodies.push(
        json!({"id": "poison-0", "token": token(7), "alert": "kills-its-consumer"})
            .to_string()
            .into_bytes(),
    );
    publish(&conn, &queue, &bodies).await;
    wait_for(Duration::from_secs(60), "9 dead letters", || {
        worker.metric("misiva_jobs_dead_lettered_total", &[]) == 9.0
    })
    .await;
    assert_eq!(ready_now(&conn, &dead).await, 9);

    // stats: exact counts by reason and app.
    let (code, out, err) = misiva(&queue, &["dlq", "stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(stats["total"], 9, "{stats}");
    let reasons: BTreeMap<String, u64> =
        serde_json::from_value(stats["by_reason"].clone()).unwrap();
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("invalid_job".into(), 3),
            ("poison".into(), 1),
            ("retries_exhausted".into(), 3),
            ("topic_disallowed".into(), 2),
        ])
    );
    assert_eq!(stats["by_app"]["default"], 9);
    assert_eq!(stats["by_age"]["under 1h"], 9);
    let (code, table, _) = misiva(&queue, &["dlq", "stats"]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&format!("9 dead letters in {dead}")),
        "{table}"
    );

    // list: the fields, and reading twice gives the same letters in the same order.
    let first = list(&queue, &[]);
    let second = list(&queue, &[]);
    assert_eq!(first.len(), 9);
    assert_eq!(ids(&first), ids(&second), "a read reordered the queue");
    assert_eq!(ready_now(&conn, &dead).await, 9, "a read lost messages");
    let by_id: BTreeMap<String, &Value> = first
        .iter()
        .map(|l| (l["job_id"].as_str().unwrap().to_owned(), l))
        .collect();
    for (id, reason, attempts, tokens) in [
        ("late-0", "retries_exhausted", 1, Some(1)),
        ("inv-1", "invalid_job", 1, None),
        ("refused-1", "topic_disallowed", 1, Some(1)),
        ("poison-0", "poison", 1, Some(1)),
    ] {
        let l = by_id[id];
        assert_eq!(l["reason"], reason, "{l}");
        assert_eq!(l["attempts"], attempts, "{l}");
        assert_eq!(l["app"], "default", "{l}");
        assert_eq!(l["tokens"], json!(tokens), "{l}");
        assert!(l["failed_at"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(l["first_seen"].is_string(), "{l}");
        assert!(!l["detail"].as_str().unwrap().is_empty(), "{l}");
    }
    assert_eq!(by_id["late-0"]["summary"], "hello");
    let (code, shown, _) = misiva(&queue, &["dlq", "show", "refused-0"]);
    assert_eq!(code, 0);
    assert!(shown.contains("reason: topic_disallowed"), "{shown}");
    assert!(
        shown.contains("TopicDisallowed"),
        "the detail in full: {shown}"
    );
    assert_eq!(misiva(&queue, &["dlq", "show", "no-such-job"]).0, 1);
    let filtered = list(&queue, &["--reason", "invalid_job", "--limit", "2"]);
    // The worker dead-letters concurrently: the queue's order is whatever it
    // was, and every read must show that same order.
    let invalid_in_order: Vec<String> = ids(&first)
        .into_iter()
        .filter(|id| id.starts_with("inv-"))
        .collect();
    assert_eq!(ids(&filtered), invalid_in_order[..2]);
    assert!(list(&queue, &["--app", "other"]).is_empty());
    assert_eq!(list(&queue, &["--since", "1h"]).len(), 9);
    assert!(list(&queue, &["--older-than", "1h"]).is_empty());
    assert_eq!(misiva(&queue, &["dlq", "list", "--since", "soon"]).0, 2);

    // replay: exactly the subset comes back, and the worker delivers it.
    let (code, out, err) = misiva(
        &queue,
        &["dlq", "replay", "--reason", "retries_exhausted", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4, "three letters and the summary: {out}");
    assert_eq!(lines[3]["done"], 3);
    wait_for(
        Duration::from_secs(30),
        "the replayed jobs delivered",
        || {
            let accepted: HashSet<String> =
                sim.sim.accepted().into_iter().map(|a| a.token).collect();
            exhausted.iter().all(|t| accepted.contains(t))
        },
    )
    .await;
    let after = list(&queue, &[]);
    let expected: Vec<String> = ids(&first)
        .into_iter()
        .filter(|id| !id.starts_with("late-"))
        .collect();
    assert_eq!(ids(&after), expected, "the others stay, in their order");

    // purge: exactly the subset goes; without --yes and no terminal, nothing.
    let (code, _, err) = misiva(&queue, &["dlq", "purge", "--reason", "topic_disallowed"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(ready_now(&conn, &dead).await, 6);
    let (code, out, err) = misiva(
        &queue,
        &["dlq", "purge", "--reason", "topic_disallowed", "--yes"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 of 2 matching dead letters deleted"),
        "{out}"
    );
    let left = list(&queue, &[]);
    let kept: Vec<String> = ids(&first)
        .into_iter()
        .filter(|id| id.starts_with("inv-") || id.starts_with("poison-"))
        .collect();
    assert_eq!(ids(&left), kept, "{left:?}");

    // send: validated by the worker's decoder, delivered, no credentials needed.
    let sent_token = token(4242);
    let (code, id, err) = misiva(
        &queue,
        &[
            "send",
            "--token",
            &sent_token,
            "--title",
            "Hi",
            "--alert",
            "from the CLI",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(id.trim().len(), 36, "a UUID: {id}");
    wait_for(Duration::from_secs(30), "the sent job delivered", || {
        sim.sim.accepted().iter().any(|a| a.token == sent_token)
    })
    .await;
    let (code, out, err) = misiva(&queue, &["send", "--token", "not-hex", "--alert", "x"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("invalid"), "{err}");
    worker.terminate().await;

    // An interrupted replay loses nothing and duplicates at most one: the
    // worker is stopped, so replayed jobs stay in the work queue.
    let mut replay = Command::new(env!("CARGO_BIN_EXE_misiva"))
        .args(["dlq", "replay", "--rate", "2", "--json"])
        .env("MISIVA_AMQP_URL", &broker().url)
        .env("MISIVA_QUEUE", &queue)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Each replayed letter is one JSON line, printed once it is confirmed
    // and removed.
    let printed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stdout = replay.stdout.take().unwrap();
    let counter = printed.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for _ in std::io::BufReader::new(stdout).lines() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    wait_for(Duration::from_secs(20), "two replays", || {
        printed.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    let _ = replay.kill();
    let _ = replay.wait();
    let back = drain(&conn, &queue).await;
    let still_dead = ready_now(&conn, &dead).await as usize;
    let mut seen: Vec<String> = back
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert!(
        back.len() + still_dead == 4 || back.len() + still_dead == 5,
        "{} replayed, {still_dead} still dead",
        back.len()
    );
    assert!(back.len() >= 2 && back.len() < 4 + 1, "{}", back.len());
    let replayed: HashSet<&str> = seen.iter().map(String::as_str).collect();
    let remaining = list(&queue, &[]);
    for id in ["inv-0", "inv-1", "inv-2", "poison-0"] {
        assert!(
            replayed.contains(id) || ids(&remaining).iter().any(|r| r == id),
            "{id} was lost"
        );
    }
    for message in &back {
        assert_eq!(
            support::header(message, "x-misiva-replayed").as_deref(),
            Some("1")
        );
        assert_eq!(support::header(message, "x-misiva-attempts"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_needs_only_the_broker() {
    let queue = unique_queue("topo");
    let (code, out, err) = misiva(&queue, &["topology"]);
    assert_eq!(code, 0, "{out}{err}");
    let conn = broker().connect().await;
    assert_eq!(ready_now(&conn, &format!("{queue}.dead")).await, 0);
}

/// Every read counts one delivery; a dead letter read ten times is published
/// again at the back (confirmed, then the old copy removed), so that RabbitMQ
/// 4.0–4.2's delivery limit of 20 never drops it (measured on 4.0.5: without
/// this, a dead letter read 21 times was gone). Nothing is lost, the letters
/// keep their order and their headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_read_over_and_over_are_never_dropped() {
    let queue = unique_queue("reads");
    let dead = format!("{queue}.dead");
    assert_eq!(misiva(&queue, &["topology"]).0, 0);
    let conn = broker().connect().await;
    let mut headers = lapin::types::FieldTable::default();
    for (k, v) in [
        ("x-misiva-reason", "invalid_job"),
        ("x-misiva-detail", "the body is not JSON"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        headers.insert(
            k.into(),
            lapin::types::AMQPValue::LongString(v.as_bytes().into()),
        );
    }
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|n| format!("{{\"id\":\"r-{n}\"}}").into_bytes())
        .collect();
    support::publish_with(
        &conn,
        &dead,
        &bodies,
        lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .await;
    let mut refreshed = 0;
    let mut last = Vec::new();
    for _ in 0..25 {
        let (code, out, err) = misiva(&queue, &["dlq", "list", "--json"]);
        assert_eq!(code, 0, "{err}");
        if err.contains("moved to the back") {
            refreshed += 1;
        }
        last = json_lines(&out);
        assert_eq!(
            ids(&last),
            ["r-0", "r-1", "r-2"],
            "nothing lost or reordered"
        );
    }
    assert!(refreshed >= 2, "refreshed {refreshed} times in 25 reads");
    for letter in &last {
        assert!(letter["deliveries"].as_u64().unwrap() < 10, "{letter}");
        assert_eq!(letter["reason"], "invalid_job");
        assert_eq!(letter["detail"], "the body is not JSON");
    }
    let held = drain(&conn, &dead).await;
    assert_eq!(held.len(), 3);
    assert_eq!(
        support::header(&held[0], "traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "the publisher's headers stay too"
    );
}

/// Keeps every core busy until dropped, as a loaded node would be: the broker
/// then applies acknowledgements late, which is when a command that exits
/// right after sending them used to report removals that never happened.
struct Busy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start() -> Busy {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        Busy { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `n` dead letters straight into the dead-letter queue, every other one with
/// reason `a` and the rest `b`, so that a filtered purge removes every other.
async fn fill_dead(conn: &lapin::Connection, dead: &str, run: usize, n: usize) {
    for (reason, parity) in [("a", 0), ("b", 1)] {
        let bodies: Vec<Vec<u8>> = (0..n)
            .filter(|i| i % 2 == parity)
            .map(|i| single(&format!("r{run}-{i}"), &token(i as u64)))
            .collect();
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "x-misiva-reason".into(),
            lapin::types::AMQPValue::LongString(reason.into()),
        );
        let properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        support::publish_with(conn, dead, &bodies, properties).await;
    }
}

fn summary_line(out: &str) -> Value {
    json_lines(out)
        .into_iter()
        .last()
        .unwrap_or_else(|| panic!("no summary in {out:?}"))
}

/// Runs a `dlq` command (with `--json`) on `queue`'s dead letters, which
/// numbered `before`, and checks that it succeeded and that the queue now
/// holds `before` minus what it reported done. Returns its summary and that
/// count.
async fn run_and_check_depth(
    conn: &lapin::Connection,
    queue: &str,
    args: &[&str],
    before: u32,
    run: usize,
) -> (Value, u64) {
    let (code, out, err) = misiva(queue, args);
    let s = summary_line(&out);
    let done = s["done"].as_u64().unwrap_or(u64::MAX);
    let after = ready_now(conn, &format!("{queue}.dead")).await;
    assert_eq!(
        u64::from(after),
        u64::from(before) - done,
        "{args:?} run {run}: {before} before, {done} reported done, {after} after (exit {code}; {err})"
    );
    assert_eq!(code, 0, "{args:?} run {run}: {err}");
    (s, done)
}

/// Purge and replay, 20 times each, against 100 to 1,000 dead letters while
/// every core is busy: after each run the queue holds exactly what it held
/// before minus what the command reported, and a replayed letter is never
/// found in the dead-letter queue again. Then `publish` and `send` under the
/// same load: what they confirmed is in the work queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_replay_report_only_what_the_broker_did() {
    let queue = unique_queue("dlq-load");
    let dead = format!("{queue}.dead");
    assert_eq!(misiva(&queue, &["topology"]).0, 0);
    let conn = broker().connect().await;
    let sizes = [100, 1000, 300, 700, 150, 500, 1000, 250, 850, 400];
    let _busy = Busy::start();
    for run in 0..20 {
        let n = sizes[run % sizes.len()];
        fill_dead(&conn, &dead, run, n).await;
        let before = ready_now(&conn, &dead).await;
        // Every other run purges only reason `a`: every other letter.
        let mut args = vec!["dlq", "purge", "--yes", "--json"];
        if run % 2 == 1 {
            args.extend(["--reason", "a"]);
        }
        let (s, done) = run_and_check_depth(&conn, &queue, &args, before, run).await;
        let expected = if run % 2 == 1 { n / 2 } else { n };
        assert_eq!(done, expected as u64, "purge run {run}: {s}");
        purge_queue(&conn, &dead).await;
    }
    for run in 20..40 {
        let n = sizes[run % sizes.len()];
        fill_dead(&conn, &dead, run, n).await;
        let before = ready_now(&conn, &dead).await;
        let work_before = ready_now(&conn, &queue).await;
        let args = ["dlq", "replay", "--json"];
        let (s, done) = run_and_check_depth(&conn, &queue, &args, before, run).await;
        assert_eq!(done, n as u64, "replay run {run}: {s}");
        assert_eq!(
            ready_now(&conn, &queue).await - work_before,
            n as u32,
            "replay run {run}: one copy per replayed letter in the work queue"
        );
        // Nothing replayed is left to be sent twice.
        let (code, out, err) = misiva(&queue, &["dlq", "replay", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            summary_line(&out)["done"],
            0,
            "replay run {run}: a second replay sent again"
        );
        purge_queue(&conn, &queue).await;
    }
    // publish and send, under the same load: an exit 0 means every job is in
    // the work queue.
    let file = std::env::temp_dir().join(format!("{queue}.jobs"));
    let jobs: String = (0..1000)
        .map(|i| {
            format!(
                "{}\n",
                String::from_utf8_lossy(&single(&format!("p{i}"), &token(i)))
            )
        })
        .collect();
    std::fs::write(&file, jobs).unwrap();
    let (code, _, err) = misiva(&queue, &["publish", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ready_now(&conn, &queue).await, 1000);
    for i in 0..5 {
        let (code, _, err) = misiva(&queue, &["send", "--token", &token(i), "--alert", "hi"]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(ready_now(&conn, &queue).await, 1005);
}

/// Empties a queue between runs in one request.
async fn purge_queue(conn: &lapin::Connection, queue: &str) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_purge(queue.into(), Default::default())
        .await
        .unwrap();
    let _ = channel.close(200, "done".into()).await;
}
