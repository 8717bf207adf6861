//! Apps at runtime (CONTRACT §8). `misiva apps check DIR`: a directory of
//! app files checked offline, every problem listed, exit 2; a clean
//! directory exits 0. The worker with `MISIVA_APPS_DIR`: apps added,
//! rotated (a key through the app file, a certificate file in place) and
//! removed while jobs flow, broken files refused, idle apps closed; a
//! Kubernetes volume's symlink swap; conflicts at start.

use crate::support;

use std::path::Path;
use std::process::Command;

fn apps_check(dir: &Path) -> (i32, String, String) {
    support::output_of(
        Command::new(env!("CARGO_BIN_EXE_misiva"))
            .args(["apps", "check"])
            .arg(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default()),
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const TOKEN: &str =
    "key_file = \"keys/good.p8\"\nkey_id = \"KEY1234567\"\nteam_id = \"TEAM123456\"\n";
/// A password that must never be printed.
const PASSWORD: &str = "never-print-this-pw";

#[test]
fn every_kind_of_mistake_is_listed_and_the_exit_code_is_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/good.p8"), misiva::jwt::generate_p8()).unwrap();
    std::fs::write(d.join("keys/garbage.p8"), "not a key").unwrap();
    std::fs::write(d.join("keys/garbage.pem"), "not a certificate").unwrap();
    // Two good apps: relative paths are relative to the directory.
    write(
        d,
        "good.toml",
        &format!("{TOKEN}topic = \"com.example.good\"\n"),
    );
    write(
        d,
        "sandboxed.toml",
        &format!("{TOKEN}endpoint = \"sandbox\"\n"),
    );
    // Not app files: skipped, not problems.
    write(d, "README", "apps live here");
    std::fs::create_dir(d.join("..data")).unwrap();
    write(d, ".hidden.toml", "garbage [");
    // Every kind of mistake, one file each: (file, words its problem says).
    let mistakes: [(&str, &str, &str); 11] = [
        ("broken.toml", "key_file = \"keys/good.p8\n", "not valid"),
        (
            "unknown-key.toml",
            &format!("{TOKEN}colour = \"red\"\n"),
            "colour",
        ),
        (
            "no-credentials.toml",
            "topic = \"com.example.x\"\n",
            "no credentials",
        ),
        (
            "both.toml",
            &format!("{TOKEN}cert_file = \"keys/garbage.pem\"\n"),
            "choose one",
        ),
        (
            "no-team.toml",
            "key_file = \"keys/good.p8\"\nkey_id = \"KEY1234567\"\n",
            "team id",
        ),
        (
            "missing-key.toml",
            "key_file = \"keys/absent.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n",
            "absent.p8",
        ),
        (
            "bad-key.toml",
            "key_file = \"keys/garbage.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n",
            "garbage.p8",
        ),
        (
            "bad-cert.toml",
            &format!("cert_file = \"keys/garbage.pem\"\ncert_password = \"{PASSWORD}\"\n"),
            "garbage.pem",
        ),
        (
            "bad-endpoint.toml",
            &format!("{TOKEN}endpoint = \"http://plain.example\"\n"),
            "endpoint",
        ),
        (
            "range.toml",
            &format!("{TOKEN}connections = 0\n"),
            "connections",
        ),
        ("bad name.toml", TOKEN, "file name"),
    ];
    for (file, text, _) in &mistakes {
        write(d, file, text);
    }

    let (code, out, err) = apps_check(d);
    println!("{out}{err}");
    assert_eq!(code, 2, "{out}{err}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem")).collect();
    assert_eq!(problems.len(), mistakes.len(), "{out}");
    for (file, _, says) in &mistakes {
        let line = problems
            .iter()
            .find(|l| l.contains(&format!("/{file}: ")))
            .unwrap_or_else(|| panic!("no problem listed for {file}: {out}"));
        assert!(line.contains(says), "{file}: {line}");
    }
    let ok: Vec<&str> = out.lines().filter(|l| l.starts_with("ok")).collect();
    assert_eq!(ok.len(), 2, "{out}");
    assert!(
        ok[0].contains("good") && ok[0].contains("token auth, key KEY1234567"),
        "{out}"
    );
    assert!(
        ok[1].contains("sandboxed") && ok[1].contains("sandbox"),
        "{out}"
    );
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "a password was printed"
    );
    assert!(err.contains("2 app(s) ok, 11 problem(s)"), "{err}");

    // Without the mistakes, the same directory passes.
    for (file, _, _) in &mistakes {
        std::fs::remove_file(d.join(file)).unwrap();
    }
    let (code, out, err) = apps_check(d);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("problem"), "{out}");
}

#[test]
fn a_directory_that_cannot_be_read_exits_2() {
    let (code, _, err) = apps_check(Path::new("/nonexistent/misiva-apps"));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the directory"), "{err}");
}

// ---------- the worker with MISIVA_APPS_DIR (CONTRACT §8) ----------

use misiva::sim::SimKey;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Worker, admin_get, broker, token, unique_queue, wait_for};

/// Writes `name` in `dir` as a writer of configuration should: to a
/// temporary file, then renamed over the old one in one step.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A token-auth app file for the simulator, with its own key and team.
fn token_app(sim: &support::SimFixture, key_file: &str, key_id: &str, team: &str) -> String {
    format!(
        "endpoint = \"{}\"\nca_file = \"{}\"\nkey_file = \"{key_file}\"\nkey_id = \"{key_id}\"\nteam_id = \"{team}\"\ntopic = \"{}\"\n",
        sim.sim.endpoint(),
        sim.ca_file.display(),
        support::TOPIC,
    )
}

/// A fresh `.p8` at `path`, and the simulator's key for it.
fn new_key(path: &Path, key_id: &str, team: &str) -> SimKey {
    std::fs::write(path, misiva::jwt::generate_p8()).unwrap();
    SimKey::from_file(key_id, team, path).unwrap()
}

/// The worker's `GET /apps`, by app name.
fn apps_view(worker: &Worker) -> BTreeMap<String, Value> {
    let Some((200, body)) = worker.admin_port().and_then(|p| admin_get(p, "/apps")) else {
        return BTreeMap::new();
    };
    let body: Value = serde_json::from_str(&body).unwrap();
    body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_owned(), a.clone()))
        .collect()
}

/// Publishes one single-token job for each app of `apps` every 20 ms until
/// `stop`, keeping what it published: (app, token), in order.
struct Load {
    apps: Arc<Mutex<Vec<String>>>,
    published: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    async fn start(queue: &str, apps: &[&str]) -> Load {
        let conn = broker().connect().await;
        let apps = Arc::new(Mutex::new(
            apps.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
        ));
        let published = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (apps, published, stop) = (apps.clone(), published.clone(), stop.clone());
            let queue = queue.to_owned();
            async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let now: Vec<String> = apps.lock().unwrap().clone();
                    let mut bodies = Vec::new();
                    let mut sent = Vec::new();
                    for app in now {
                        n += 1;
                        let t = token(700_000 + n);
                        bodies.push(
                            json!({"id": format!("{app}-{n}"), "app": app, "token": t, "alert": "x"})
                                .to_string()
                                .into_bytes(),
                        );
                        sent.push((app, t));
                    }
                    support::publish(&conn, &queue, &bodies).await;
                    published.lock().unwrap().extend(sent);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Load {
            apps,
            published,
            stop,
            task,
        }
    }

    fn set_apps(&self, apps: &[&str]) {
        *self.apps.lock().unwrap() = apps.iter().map(|a| (*a).to_owned()).collect();
    }

    async fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        self.published.lock().unwrap().clone()
    }
}

/// Every token accepted, with how many times.
fn accepted_counts(sim: &support::SimFixture) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for a in sim.sim.accepted() {
        *counts.entry(a.token).or_default() += 1;
    }
    counts
}

/// Waits until the simulator accepted every token of `expected`.
async fn wait_delivered(sim: &support::SimFixture, expected: &HashSet<String>, what: &str) {
    wait_for(Duration::from_secs(30), what, || {
        let counts = accepted_counts(sim);
        expected.iter().all(|t| counts.contains_key(t))
    })
    .await;
}

/// No token was accepted twice.
fn assert_none_twice(sim: &support::SimFixture) {
    let counts = accepted_counts(sim);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
}

/// Two apps added, one key rotated (the old key refused 2 s later), one app
/// removed and a broken file dropped in, all while jobs flow: every job of a
/// live app is delivered once, the rotated app signs only with its new key
/// after the grace, the removed app's later jobs are `unknown_app`, the
/// broken files are counted and change nothing else; idle, every app's
/// connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_come_rotate_and_go_under_load_with_token_auth() {
    let sim = support::recording_sim(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("keys")).unwrap();
    let fixture_key = SimKey::from_file(support::KEY_ID, support::TEAM_ID, &sim.key_file).unwrap();
    let alpha1 = new_key(&d.join("keys/alpha-1.p8"), "ALPHAKEY01", "ALPHATEAM1");
    let alpha2_path = d.join("keys/alpha-2.p8");
    let alpha2 = new_key(&alpha2_path, "ALPHAKEY02", "ALPHATEAM1");
    let delta = new_key(&d.join("keys/delta.p8"), "DELTAKEY01", "DELTATEAM1");
    let beta = new_key(&d.join("keys/beta.p8"), "BETAKEY001", "BETATEAM01");
    let gamma = new_key(&d.join("keys/gamma.p8"), "GAMMAKEY01", "GAMMATEAM1");
    sim.sim.set_keys(vec![
        fixture_key.clone(),
        alpha1.clone(),
        alpha2.clone(),
        delta.clone(),
        beta.clone(),
        gamma.clone(),
    ]);
    replace(
        d,
        "alpha.toml",
        &token_app(&sim, "keys/alpha-1.p8", "ALPHAKEY01", "ALPHATEAM1"),
    );
    replace(
        d,
        "delta.toml",
        &token_app(&sim, "keys/delta.p8", "DELTAKEY01", "DELTATEAM1"),
    );

    let queue = unique_queue("apps-runtime");
    let dir_env = d.display().to_string();
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_APPS_DIR", dir_env.as_str()),
            ("MISIVA_APP_IDLE", "3s"),
        ],
    );
    worker.ready().await;
    let view = apps_view(&worker);
    assert_eq!(view["alpha"]["source"], "dir", "{view:?}");
    assert_eq!(view["alpha"]["key_id"], "ALPHAKEY01", "{view:?}");
    assert_eq!(view["default"]["source"], "config", "{view:?}");
    let load = Load::start(&queue, &["default", "alpha", "delta"]).await;
    wait_for(Duration::from_secs(20), "alpha's first deliveries", || {
        sim.sim.accepted().iter().any(|a| a.key_id == "ALPHAKEY01")
    })
    .await;

    // Two apps added.
    replace(
        d,
        "beta.toml",
        &token_app(&sim, "keys/beta.p8", "BETAKEY001", "BETATEAM01"),
    );
    replace(
        d,
        "gamma.toml",
        &token_app(&sim, "keys/gamma.p8", "GAMMAKEY01", "GAMMATEAM1"),
    );
    wait_for(
        Duration::from_secs(5),
        "beta and gamma in GET /apps",
        || {
            let view = apps_view(&worker);
            view.contains_key("beta") && view.contains_key("gamma")
        },
    )
    .await;
    load.set_apps(&["default", "alpha", "delta", "beta", "gamma"]);

    // alpha's key rotated: the new key file first, then the app file.
    replace(
        d,
        "alpha.toml",
        &token_app(&sim, "keys/alpha-2.p8", "ALPHAKEY02", "ALPHATEAM1"),
    );
    wait_for(
        Duration::from_secs(5),
        "alpha's new key id in GET /apps",
        || apps_view(&worker)["alpha"]["key_id"] == "ALPHAKEY02",
    )
    .await;
    // The scenario's grace, then APNs forgets the old key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_key_refused_from = support::now_us();
    sim.sim.set_keys(vec![
        fixture_key.clone(),
        alpha2.clone(),
        delta.clone(),
        beta.clone(),
        gamma.clone(),
    ]);

    // delta removed: its jobs published until now are delivered or, when
    // consumed after the removal, dead-lettered `unknown_app`.
    load.set_apps(&["default", "alpha", "beta", "gamma"]);
    std::fs::remove_file(d.join("delta.toml")).unwrap();
    wait_for(Duration::from_secs(5), "delta gone from GET /apps", || {
        !apps_view(&worker).contains_key("delta")
    })
    .await;
    let conn = broker().connect().await;
    let late: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            json!({"id": format!("late-delta-{i}"), "app": "delta", "token": token(790_000 + i), "alert": "x"})
                .to_string()
                .into_bytes()
        })
        .collect();
    support::publish(&conn, &queue, &late).await;

    // A broken file dropped in, and beta's file broken: beta keeps its last
    // good configuration; nothing else is disturbed.
    replace(d, "broken.toml", "key_file = \"keys/beta.p8\n");
    replace(d, "beta.toml", "endpoint = [not toml");
    wait_for(Duration::from_secs(5), "both errors counted", || {
        worker.metric("misiva_app_config_errors_total", &[("app", "broken")]) == 1.0
            && worker.metric("misiva_app_config_errors_total", &[("app", "beta")]) == 1.0
    })
    .await;
    let view = apps_view(&worker);
    assert!(
        view["beta"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{view:?}"
    );
    assert_eq!(
        view["beta"]["key_id"], "BETAKEY001",
        "beta keeps its last good configuration"
    );
    assert!(!view["broken"]["last_error"].is_null(), "{view:?}");
    assert_eq!(
        worker.readyz(),
        Some(200),
        "a bad app file changes no readiness"
    );
    // Passes go on (every 2 s, and on inotify's word); an error is counted
    // once per change of the file, not once per pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = load.finish().await;
    assert_eq!(
        worker.metric("misiva_app_config_errors_total", &[("app", "beta")]),
        1.0
    );
    assert!(worker.running(), "the worker runs on");

    // Every job of a live app delivered, each once.
    let live: HashSet<&str> = ["default", "alpha", "beta", "gamma"].into();
    let expected: HashSet<String> = published
        .iter()
        .filter(|(app, _)| live.contains(app.as_str()))
        .map(|(_, t)| t.clone())
        .collect();
    assert!(expected.len() > 500, "a steady load: {}", expected.len());
    wait_delivered(&sim, &expected, "every live app's job delivered").await;
    let dead_queue = format!("{queue}.dead");
    let delta_published = published.iter().filter(|(app, _)| app == "delta").count();
    let counts = accepted_counts(&sim);
    let delta_delivered = published
        .iter()
        .filter(|(app, t)| app == "delta" && counts.contains_key(t))
        .count();
    // delta's steady jobs not delivered, and the ten late ones: dead letters.
    let delta_dead = delta_published - delta_delivered + late.len();
    wait_for(Duration::from_secs(20), "delta's dead letters", || {
        broker()
            .counts(&dead_queue)
            .is_some_and(|(ready, _)| ready as usize == delta_dead)
    })
    .await;
    let dead = support::drain(&conn, &dead_queue).await;
    for letter in &dead {
        assert_eq!(
            support::header(letter, "x-misiva-reason").as_deref(),
            Some("unknown_app")
        );
        assert_eq!(
            support::header(letter, "x-misiva-app").as_deref(),
            Some("delta")
        );
    }
    assert_none_twice(&sim);

    // After the grace only the new key signs for alpha, and none was refused.
    let accepted = sim.sim.accepted();
    let alpha_keys_after: HashSet<&str> = accepted
        .iter()
        .filter(|a| a.received_at_us >= old_key_refused_from && a.key_id.starts_with("ALPHA"))
        .map(|a| a.key_id.as_str())
        .collect();
    assert_eq!(alpha_keys_after, HashSet::from(["ALPHAKEY02"]));
    assert!(
        accepted.iter().any(|a| a.key_id == "ALPHAKEY01"),
        "alpha signed with its first key before"
    );
    let rejected = sim.sim.rejected();
    assert!(rejected.is_empty(), "APNs refused requests: {rejected:?}");

    // Idle for MISIVA_APP_IDLE: every app's connections close.
    wait_for(Duration::from_secs(20), "every connection closed", || {
        let text = worker.metrics();
        ["default", "alpha", "beta", "gamma"]
            .iter()
            .all(|app| support::metric(&text, "misiva_apns_connections", &[("app", app)]) == 0.0)
            && !text.is_empty()
    })
    .await;
    assert!(
        apps_view(&worker)
            .values()
            .all(|a| a["connections_open"] == 0)
    );
    // The next job starts alpha's client again.
    let again = token(799_999);
    support::publish(
        &conn,
        &queue,
        &[
            json!({"id": "again", "app": "alpha", "token": again, "alert": "x"})
                .to_string()
                .into_bytes(),
        ],
    )
    .await;
    wait_for(Duration::from_secs(20), "alpha's job after idle", || {
        accepted_counts(&sim).contains_key(&again)
    })
    .await;
    assert!(worker.terminate().await.success());
}

/// A certificate-auth app whose certificate file is replaced in place (its
/// app file unchanged) while jobs flow: new connections use the new
/// certificate, the old one is revoked 2 s later, and every job is
/// delivered once with nothing refused. The expiry gauge and `GET /apps`
/// show the certificate's `notAfter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_in_place_is_used_by_new_connections_under_load() {
    let sim = support::SimFixture::start(misiva::sim::SimConfig {
        certificate_auth: true,
        record: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("certs")).unwrap();
    let one = sim.sim.issue_client_certificate("client-one", "").unwrap();
    replace(&d.join("certs"), "client.pem", &one.pem);
    replace(
        d,
        "certapp.toml",
        &format!(
            "endpoint = \"{}\"\nca_file = \"{}\"\ncert_file = \"certs/client.pem\"\ntopic = \"{}\"\n",
            sim.sim.endpoint(),
            sim.ca_file.display(),
            support::TOPIC
        ),
    );
    let queue = unique_queue("apps-cert");
    let dir_env = d.display().to_string();
    // No app from the environment: every app comes from the directory.
    let mut worker = Worker::start(
        &sim,
        &queue,
        &[
            ("MISIVA_APPS_DIR", dir_env.as_str()),
            ("MISIVA_APNS_KEY_FILE", ""),
            ("MISIVA_APNS_KEY_ID", ""),
            ("MISIVA_APNS_TEAM_ID", ""),
        ],
    );
    worker.ready().await;
    let view = apps_view(&worker);
    assert_eq!(view.len(), 1, "{view:?}");
    assert_eq!(view["certapp"]["auth"], "certificate", "{view:?}");
    let expiry = worker.metric(
        "misiva_apns_certificate_expiry_timestamp_seconds",
        &[("app", "certapp")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "notAfter {expiry} is after now {now}");
    assert!(
        view["certapp"]["certificate_expiry"]
            .as_str()
            .unwrap()
            .len()
            >= 20,
        "{view:?}"
    );

    let load = Load::start(&queue, &["certapp"]).await;
    wait_for(
        Duration::from_secs(20),
        "deliveries with the first certificate",
        || {
            sim.sim
                .accepted()
                .iter()
                .any(|a| a.key_id == "certificate:client-one")
        },
    )
    .await;
    // The certificate file replaced; the app file stays as it was.
    let two = sim.sim.issue_client_certificate("client-two", "").unwrap();
    replace(&d.join("certs"), "client.pem", &two.pem);
    wait_for(
        Duration::from_secs(5),
        "deliveries with the new certificate",
        || {
            sim.sim
                .accepted()
                .iter()
                .any(|a| a.key_id == "certificate:client-two")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let revoked_from = support::now_us();
    sim.sim.revoke_client_certificate("client-one");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = load.finish().await;

    let expected: HashSet<String> = published.into_iter().map(|(_, t)| t).collect();
    assert!(expected.len() > 100, "a steady load: {}", expected.len());
    wait_delivered(&sim, &expected, "every job delivered").await;
    assert_none_twice(&sim);
    let after: HashSet<String> = sim
        .sim
        .accepted()
        .into_iter()
        .filter(|a| a.received_at_us >= revoked_from)
        .map(|a| a.key_id)
        .collect();
    assert_eq!(after, HashSet::from(["certificate:client-two".to_owned()]));
    let rejected = sim.sim.rejected();
    assert!(rejected.is_empty(), "APNs refused requests: {rejected:?}");
    assert_eq!(worker.metric("misiva_app_config_errors_total", &[]), 0.0);
    assert!(worker.terminate().await.success());
}

/// At start, an app both in the directory and in the environment, or a
/// directory that cannot be read, is a configuration error: exit 2.
#[tokio::test]
async fn an_app_defined_twice_or_an_unreadable_directory_stops_the_worker_at_start() {
    let sim = support::recording_sim(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    // `default` is also the environment's app.
    replace(
        dir.path(),
        "default.toml",
        &token_app(
            &sim,
            &sim.key_file.display().to_string(),
            support::KEY_ID,
            support::TEAM_ID,
        ),
    );
    let twice = dir.path().display().to_string();
    let missing = dir.path().join("missing").display().to_string();
    for (apps_dir, says) in [
        (twice.as_str(), "defined both"),
        (missing.as_str(), "cannot read MISIVA_APPS_DIR"),
    ] {
        let mut worker = Worker::start(
            &sim,
            &unique_queue("apps-start"),
            &[("MISIVA_APPS_DIR", apps_dir)],
        );
        let status = worker.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(2), "{}", worker.log_text());
        assert!(worker.log_text().contains(says), "{}", worker.log_text());
    }
}

/// The layout a Kubernetes Secret volume has: every file a symlink through
/// `..data` into a timestamped directory, updated by swapping `..data`.
/// A swap that changes one app changes only that app (the other's files
/// got new inodes, not new contents), and SIGHUP runs a pass without
/// ending the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_volume_swap_changes_only_the_app_whose_contents_changed() {
    use std::os::unix::fs::symlink;
    let sim = support::recording_sim(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture_key = SimKey::from_file(support::KEY_ID, support::TEAM_ID, &sim.key_file).unwrap();
    // One version of the volume: every app file and key in a timestamped directory.
    let version = |name: &str, alpha_key: &str, alpha_id: &str| {
        let v = d.join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("alpha.p8"), alpha_key).unwrap();
        std::fs::write(
            v.join("beta.p8"),
            std::fs::read(d.join("beta-key")).unwrap(),
        )
        .unwrap();
        std::fs::write(
            v.join("alpha.toml"),
            token_app(&sim, "alpha.p8", alpha_id, "ALPHATEAM1"),
        )
        .unwrap();
        std::fs::write(
            v.join("beta.toml"),
            token_app(&sim, "beta.p8", "BETAKEY001", "BETATEAM01"),
        )
        .unwrap();
    };
    std::fs::write(d.join("beta-key"), misiva::jwt::generate_p8()).unwrap();
    let beta = SimKey::from_file("BETAKEY001", "BETATEAM01", &d.join("beta-key")).unwrap();
    let (key1, key2) = (misiva::jwt::generate_p8(), misiva::jwt::generate_p8());
    std::fs::write(d.join("alpha-1"), &key1).unwrap();
    std::fs::write(d.join("alpha-2"), &key2).unwrap();
    let alpha1 = SimKey::from_file("ALPHAKEY01", "ALPHATEAM1", &d.join("alpha-1")).unwrap();
    let alpha2 = SimKey::from_file("ALPHAKEY02", "ALPHATEAM1", &d.join("alpha-2")).unwrap();
    sim.sim.set_keys(vec![fixture_key, alpha1, alpha2, beta]);
    let apps = d.join("apps");
    std::fs::create_dir(&apps).unwrap();
    version("apps/..2026_12_07_00_00_01", &key1, "ALPHAKEY01");
    symlink("..2026_12_07_00_00_01", apps.join("..data")).unwrap();
    for file in ["alpha.toml", "beta.toml", "alpha.p8", "beta.p8"] {
        symlink(format!("..data/{file}"), apps.join(file)).unwrap();
    }

    let queue = unique_queue("apps-volume");
    let apps_env = apps.display().to_string();
    let mut worker = Worker::start(&sim, &queue, &[("MISIVA_APPS_DIR", apps_env.as_str())]);
    worker.ready().await;
    let view = apps_view(&worker);
    assert_eq!(view["alpha"]["key_id"], "ALPHAKEY01", "{view:?}");
    assert_eq!(view["beta"]["key_id"], "BETAKEY001", "{view:?}");

    // The kubelet's update: a new directory, then `..data` swapped in one rename.
    version("apps/..2026_12_07_00_05_00", &key2, "ALPHAKEY02");
    symlink("..2026_12_07_00_05_00", apps.join("..data_tmp")).unwrap();
    std::fs::rename(apps.join("..data_tmp"), apps.join("..data")).unwrap();
    std::fs::remove_dir_all(apps.join("..2026_12_07_00_00_01")).unwrap();
    wait_for(Duration::from_secs(5), "alpha's new key", || {
        apps_view(&worker)["alpha"]["key_id"] == "ALPHAKEY02"
    })
    .await;
    // SIGHUP: a pass at once, and the worker runs on.
    worker.hangup();
    let conn = broker().connect().await;
    let (a, b) = (token(880_001), token(880_002));
    support::publish(
        &conn,
        &queue,
        &[
            json!({"id": "a", "app": "alpha", "token": a, "alert": "x"})
                .to_string()
                .into_bytes(),
            json!({"id": "b", "app": "beta", "token": b, "alert": "x"})
                .to_string()
                .into_bytes(),
        ],
    )
    .await;
    wait_for(Duration::from_secs(20), "both jobs delivered", || {
        let counts = accepted_counts(&sim);
        counts.contains_key(&a) && counts.contains_key(&b)
    })
    .await;
    let by_token: HashMap<String, String> = sim
        .sim
        .accepted()
        .into_iter()
        .map(|x| (x.token, x.key_id))
        .collect();
    assert_eq!(by_token[&a], "ALPHAKEY02");
    assert_eq!(by_token[&b], "BETAKEY001");
    assert!(worker.running(), "SIGHUP does not end the worker");
    assert_eq!(worker.readyz(), Some(200));
    let changes = |app: &str, change: &str| {
        worker.metric(
            "misiva_app_changes_total",
            &[("app", app), ("change", change)],
        )
    };
    assert_eq!(changes("alpha", "added"), 1.0);
    assert_eq!(changes("alpha", "changed"), 1.0);
    assert_eq!(changes("beta", "added"), 1.0);
    assert_eq!(
        changes("beta", "changed"),
        0.0,
        "beta's contents did not change"
    );
    assert_eq!(worker.metric("misiva_app_config_errors_total", &[]), 0.0);
    assert!(worker.terminate().await.success());
}
