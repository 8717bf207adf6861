//! Many apps (CONTRACT §8): a worker watching a directory of `--apps`
//! (10,000) app files, each with a key of its own, of which `--active` (20)
//! get jobs. It prints the start time (spawn to `/readyz` 200), the resident
//! memory idle, while the active apps send and after they went idle, and the
//! memory an idle app costs (against a worker with an empty directory), and
//! how long after the last job every connection was closed
//! (`MISIVA_APP_IDLE`, `--idle-secs`, 5).
//!
//! `cargo bench --bench apps` (options after `--`: `--apps 10000 --active 20
//! --jobs 200 --idle-secs 5 --runtime-threads 1`). A private RabbitMQ node
//! (port 5695, like the e2e bench), the simulator in this process, the
//! release worker.

mod common;

use common::{arg, build_worker, peak_rss_mib, rss_mib};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use misiva::sim::{SimConfig, SimKey, Simulator};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 5695;

fn broker(command: &str) {
    common::broker(PORT, command);
}

fn url() -> String {
    format!("amqp://guest:guest@127.0.0.1:{PORT}/%2f")
}

/// A bare HTTP/1.0 GET on the worker's admin port; the body on 200.
fn get(port: u16, path: &str) -> Option<String> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    answer
        .starts_with("HTTP/1.0 200")
        .then(|| answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))?
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Worker {
    child: Child,
    pid: String,
    admin: u16,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(&self.pid).status();
        let _ = self.child.wait();
    }
}

/// Starts the worker on `apps_dir`; returns it once `/readyz` says 200, and
/// the time that took.
fn start(binary: &Path, apps_dir: &Path, queue: &str, log: &Path) -> (Worker, Duration) {
    let admin = free_port();
    let began = Instant::now();
    let mut command = Command::new(binary);
    let threads = arg("--runtime-threads", 1);
    let child = command
        .arg("run")
        .env_clear()
        .env("MISIVA_RUNTIME_THREADS", threads.to_string())
        .env("MISIVA_AMQP_URL", url())
        .env("MISIVA_QUEUE", queue)
        .env("MISIVA_APPS_DIR", apps_dir)
        .env("MISIVA_APP_IDLE", format!("{}s", arg("--idle-secs", 5)))
        .env("MISIVA_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("MISIVA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let worker = Worker {
        pid: child.id().to_string(),
        child,
        admin,
    };
    while get(admin, "/readyz").is_none() {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "the worker did not get ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (worker, began.elapsed())
}

/// The sum of the samples of `name` in the worker's `/metrics`.
fn metric(worker: &Worker, name: &str) -> f64 {
    let text = get(worker.admin, "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let apps = arg("--apps", 10_000);
    let active = arg("--active", 20).min(apps);
    let jobs = arg("--jobs", 200);
    let binary = build_worker("");
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("apps");
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::create_dir_all(&empty_dir).unwrap();

    let sim = Simulator::start(SimConfig {
        record: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem()).unwrap();
    // Every app a key and team of its own; the simulator knows the active ones'.
    let made = Instant::now();
    let mut sim_keys = Vec::new();
    for i in 0..apps {
        let key_id = format!("K{i:09}");
        let team = format!("T{i:09}");
        let key = keys_dir.join(format!("app{i}.p8"));
        std::fs::write(&key, misiva::jwt::generate_p8()).unwrap();
        std::fs::write(
            keys_dir.join(format!("app{i}.toml")),
            format!(
                "endpoint = \"{}\"\nca_file = \"{}\"\nkey_file = \"app{i}.p8\"\nkey_id = \"{key_id}\"\nteam_id = \"{team}\"\ntopic = \"com.example.app{i}\"\n",
                sim.endpoint(),
                ca.display()
            ),
        )
        .unwrap();
        if i < active {
            sim_keys.push(SimKey::from_file(&key_id, &team, &key).unwrap());
        }
    }
    sim.set_keys(sim_keys);
    println!(
        "many apps: {apps} app files ({:.1} s to write), {active} active, {jobs} jobs each, one runtime thread",
        made.elapsed().as_secs_f64()
    );

    broker("start");
    let (baseline, baseline_start) = start(
        &binary,
        &empty_dir,
        "bench.apps.empty",
        &dir.path().join("empty.log"),
    );
    let baseline_rss = rss_mib(&baseline.pid);
    drop(baseline);
    let queue = format!("bench.apps.{}", std::process::id());
    let (worker, started) = start(&binary, &keys_dir, &queue, &dir.path().join("worker.log"));
    let idle_rss = rss_mib(&worker.pid);
    println!(
        "start: {:.2} s with {apps} apps ({:.2} s with none); resident memory {idle_rss:.1} MiB ({baseline_rss:.1} MiB with none): {:.1} KiB per idle app",
        started.as_secs_f64(),
        baseline_start.as_secs_f64(),
        (idle_rss - baseline_rss) * 1024.0 / apps as f64
    );

    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let sending = Instant::now();
    let mut pending = Vec::new();
    for n in 0..jobs {
        for i in 0..active {
            let body = format!(
                "{{\"app\":\"app{i}\",\"token\":\"{:064x}\",\"alert\":\"many apps\"}}",
                n * active + i + 1
            );
            pending.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap(),
            );
        }
    }
    for confirm in pending {
        confirm.await.unwrap();
    }
    let total = (jobs * active) as u64;
    while sim.accepted_count() < total {
        assert!(
            sending.elapsed() < Duration::from_secs(300),
            "only {} of {total} delivered",
            sim.accepted_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent_at = Instant::now();
    let connections = metric(&worker, "misiva_apns_connections");
    println!(
        "{total} notifications for {active} apps in {:.2} s; {connections} connection actors; resident memory {:.1} MiB now, peak {:.1} MiB",
        sending.elapsed().as_secs_f64(),
        rss_mib(&worker.pid),
        peak_rss_mib(&worker.pid)
    );
    while metric(&worker, "misiva_apns_connections") > 0.0 {
        assert!(
            sent_at.elapsed() < Duration::from_secs(120),
            "connections still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "idle: every connection closed {:.1} s after the last job; resident memory {:.1} MiB",
        sent_at.elapsed().as_secs_f64(),
        rss_mib(&worker.pid)
    );
    drop(worker);
    broker("stop");
}
