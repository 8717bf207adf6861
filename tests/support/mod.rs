//! The one harness every integration test uses: a private RabbitMQ node started
//! by `scripts/broker.sh` (installed from Debian's packages when missing), the
//! APNs simulator on a free port, and the `misiva` binary as a child process.
//! Each test gets its own queue names, so tests share the node safely.

#![allow(dead_code)]

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use misiva::config::{AppConfig, Auth, Endpoint};
use misiva::sim::{SimConfig, SimKey, Simulator};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const TOPIC: &str = "com.example.tests";
pub const KEY_ID: &str = "TESTKEY001";
pub const TEAM_ID: &str = "TESTTEAM01";

/// A distinct 64-hex-digit device token per `n` (never a simulator prefix).
pub fn token(n: u64) -> String {
    format!("{:064x}", n + 1)
}

/// A single-token job with a plain alert, as most tests publish.
pub fn single_job(id: &str, token: &str, alert: &str) -> Vec<u8> {
    serde_json::json!({"id": id, "token": token, "alert": alert})
        .to_string()
        .into_bytes()
}

/// A token the simulator always answers with `status`/`reason` (see sim::PREFIXES).
pub fn special_token(prefix: &str, n: u64) -> String {
    format!("{prefix}{:056x}", n)
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------- broker ----------

pub struct Broker {
    pub port: u16,
    pub url: String,
}

/// The shared test node, started once per test binary (and reused if already up).
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let port: u16 = std::env::var("MISIVA_TEST_BROKER_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(5699);
        Broker::private(port)
    })
}

impl Broker {
    /// A node of its own on `port`, for a test that stops and restarts it.
    pub fn private(port: u16) -> Broker {
        let broker = Broker {
            port,
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        };
        broker.start();
        broker
    }

    /// A node of its own on `port` with no plugin enabled.
    pub fn private_without_plugins(port: u16) -> Broker {
        let broker = Broker {
            port,
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        };
        assert!(
            broker.script_with("start", &[("MISIVA_BROKER_PLUGINS", "none")]),
            "the test broker on port {port} did not start"
        );
        broker
    }

    fn script(&self, command: &str) -> bool {
        self.script_with(command, &[])
    }

    fn script_with(&self, command: &str, env: &[(&str, &str)]) -> bool {
        Command::new(root().join("scripts/broker.sh"))
            .arg(command)
            .env("MISIVA_BROKER_PORT", self.port.to_string())
            .envs(env.iter().copied())
            .status()
            .expect("running scripts/broker.sh")
            .success()
    }

    pub fn start(&self) {
        assert!(
            self.script("start"),
            "the test broker on port {} did not start",
            self.port
        );
    }

    pub fn stop(&self) {
        assert!(
            self.script("stop"),
            "the test broker on port {} did not stop",
            self.port
        );
    }

    /// Closes the broker side of the worker connection whose name mentions `queue`.
    pub fn close_connection_of(&self, queue: &str) -> bool {
        let list = self.ctl(&["list_connections", "pid", "client_properties"]);
        let Some(pid) = list
            .lines()
            .find(|l| l.contains(&format!("misiva worker {queue} ")))
            .and_then(|l| l.split_whitespace().next())
        else {
            return false;
        };
        !self
            .ctl(&["close_connection", pid, "closed by a fault test"])
            .contains("Error")
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(root().join("scripts/broker.sh"))
            .arg("ctl")
            .args(args)
            .env("MISIVA_BROKER_PORT", self.port.to_string())
            .output()
            .expect("rabbitmqctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (ready, unacked) of a queue, as the broker reports them.
    pub fn counts(&self, queue: &str) -> Option<(u64, u64)> {
        let out = self.ctl(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        out.lines().find_map(|line| {
            let mut f = line.split_whitespace();
            (f.next()? == queue).then_some(())?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("test connection to RabbitMQ")
    }
}

/// Publishes bodies to the default exchange with confirms, like any application would.
pub async fn publish(conn: &Connection, queue: &str, bodies: &[Vec<u8>]) {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    publish_with(conn, queue, bodies, properties).await;
}

/// Publishes each body with `properties`, confirmed.
pub async fn publish_with(
    conn: &Connection,
    queue: &str,
    bodies: &[Vec<u8>],
    properties: BasicProperties,
) {
    let keyed = bodies.iter().map(|body| (queue, body.as_slice()));
    publish_to(conn, "", keyed, properties).await;
}

/// Publishes `(routing key, body)` pairs to `exchange`, mandatory and
/// confirmed: a message no queue takes fails the test.
async fn publish_to<'a>(
    conn: &Connection,
    exchange: &str,
    messages: impl Iterator<Item = (&'a str, &'a [u8])>,
    properties: BasicProperties,
) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for (key, body) in messages {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.clone(),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirm = confirm.await.unwrap();
        assert!(confirm.is_ack());
        assert!(
            confirm.take_message().is_none(),
            "unroutable: no queue for it through {exchange:?}"
        );
    }
    let _ = channel.close(200, "done".into()).await;
}

/// Passively declares `queue` on a channel of its own: the message count,
/// or `None` when the queue does not exist.
async fn passive(conn: &Connection, queue: &str) -> Option<u32> {
    let channel = conn.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "done".into()).await;
    declared.ok().map(|q| q.message_count())
}

/// Whether `queue` exists.
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    passive(conn, queue).await.is_some()
}

/// Messages ready in a queue, asked of the queue itself (a passive declare),
/// not of the broker's periodic statistics, which can lag behind.
pub async fn ready_now(conn: &Connection, queue: &str) -> u32 {
    passive(conn, queue)
        .await
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

/// Takes every message of a queue (acking them).
pub async fn drain(conn: &Connection, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let channel = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(message);
    }
    let _ = channel.close(200, "done".into()).await;
    out
}

pub fn header(message: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

// ---------- simulator ----------

pub struct SimFixture {
    /// The test's clock: see [`TestClock`].
    _clock: TestClock,
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl SimFixture {
    /// Starts the simulator on a free loopback port with a fresh key.
    pub async fn start(mut config: SimConfig) -> SimFixture {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("AuthKey_TESTKEY001.p8");
        std::fs::write(&key_file, misiva::jwt::generate_p8()).unwrap();
        config.keys = vec![SimKey::from_file(KEY_ID, TEAM_ID, &key_file).unwrap()];
        let sim = Simulator::start(config).await.unwrap();
        let ca_file = dir.path().join("sim-ca.pem");
        std::fs::write(&ca_file, sim.ca_pem()).unwrap();
        SimFixture {
            _clock: TestClock::start(),
            sim,
            dir,
            key_file,
            ca_file,
        }
    }

    pub fn app_config(&self) -> AppConfig {
        AppConfig {
            endpoint: Endpoint::parse(&self.sim.endpoint()).unwrap(),
            broadcast_endpoint: None,
            channels_endpoint: Endpoint::parse_channels("production").unwrap(),
            ca_file: Some(self.ca_file.clone()),
            auth: Auth::Token {
                key_file: self.key_file.clone(),
                key_id: KEY_ID.into(),
                team_id: TEAM_ID.into(),
            },
            topic: Some(TOPIC.into()),
            connections: 1,
            request_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        }
    }
}

// ---------- worker ----------

/// The `misiva run` binary as a child process, with its own queues.
pub struct Worker {
    /// The test's clock: see [`TestClock`].
    _clock: TestClock,
    child: Child,
    pub log: PathBuf,
    pub queue: String,
    /// Where its `/healthz`, `/readyz` and `/metrics` answer: the worker binds
    /// port 0 and logs the port it got (no bind-then-drop race).
    admin_port: std::sync::OnceLock<u16>,
}

/// Queue names unique to one test.
pub fn unique_queue(test: &str) -> String {
    format!("t.{test}.{}", &uuid_like()[..8])
}

fn uuid_like() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl Worker {
    pub fn start(sim: &SimFixture, queue: &str, extra_env: &[(&str, &str)]) -> Worker {
        Worker::start_on(broker(), sim, queue, extra_env)
    }

    pub fn start_on(
        broker: &Broker,
        sim: &SimFixture,
        queue: &str,
        extra_env: &[(&str, &str)],
    ) -> Worker {
        let log = sim.dir.path().join(format!("worker-{}.log", uuid_like()));
        let config = sim.dir.path().join(format!("{queue}.toml"));
        // Feedback names per test, through the config file (the env covers the rest).
        std::fs::write(
            &config,
            format!(
                "feedback_exchange = \"{queue}.feedback\"\nfeedback_queue = \"{queue}.feedback\"\n"
            ),
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_misiva"));
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MISIVA_CONFIG", &config)
            .env("MISIVA_AMQP_URL", &broker.url)
            .env("MISIVA_QUEUE", queue)
            .env("MISIVA_APNS_ENDPOINT", sim.sim.endpoint())
            .env("MISIVA_APNS_CA_FILE", &sim.ca_file)
            .env("MISIVA_APNS_KEY_FILE", &sim.key_file)
            .env("MISIVA_APNS_KEY_ID", KEY_ID)
            .env("MISIVA_APNS_TEAM_ID", TEAM_ID)
            .env("MISIVA_APNS_TOPIC", TOPIC)
            .env("MISIVA_LOG_FORMAT", "text")
            .env("MISIVA_LOG", "info")
            .env("MISIVA_ADMIN_ADDR", "127.0.0.1:0");
        // `scripts/test.sh` runs some suites again with a single-threaded worker.
        if let Some(threads) = std::env::var_os("MISIVA_RUNTIME_THREADS") {
            command.env("MISIVA_RUNTIME_THREADS", threads);
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting misiva run");
        Worker {
            _clock: TestClock::start(),
            child,
            log,
            queue: queue.to_owned(),
            admin_port: std::sync::OnceLock::new(),
        }
    }

    /// The admin port the worker reported in its log, once it has.
    pub fn admin_port(&self) -> Option<u16> {
        if let Some(port) = self.admin_port.get() {
            return Some(*port);
        }
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("admin endpoint listening"))?;
        // `addr=127.0.0.1:PORT` in text, `"addr":"127.0.0.1:PORT"` in JSON.
        let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let port = digits.parse().ok()?;
        Some(*self.admin_port.get_or_init(|| port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` says 200 (connected, every consumer consuming).
    pub async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.readyz() != Some(200) {
            assert!(self.running(), "worker exited:\n{}", self.log_text());
            assert!(
                Instant::now() < deadline,
                "worker not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status `/readyz` answers now, if it answers.
    pub fn readyz(&self) -> Option<u16> {
        readyz(self.admin_port()?)
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait_exit(Duration::from_secs(40)).await
    }

    /// Waits for the process to end by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Worker {
    /// SIGKILL: no chance to settle anything.
    /// Sends SIGHUP (an apps directory pass at once).
    pub fn hangup(&self) {
        signal(self.child.id(), "HUP");
    }

    pub fn kill9(&mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    /// Lines of the log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// The number after `name=` in a log line.
pub fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.0 GET of `path` on the admin port: the status and the body.
pub fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

impl Worker {
    /// The worker's `/metrics` text, or an empty string when it does not answer.
    pub fn metrics(&self) -> String {
        match self
            .admin_port()
            .and_then(|port| admin_get(port, "/metrics"))
        {
            Some((200, body)) => body,
            _ => String::new(),
        }
    }

    /// The sum of the samples of `name` whose labels include every `labels`
    /// pair (0 when there is none), read from `/metrics` now.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels)
    }
}

/// The sum of the samples of `name` in an exposition whose labels include
/// every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// One sample of an exposition: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Every sample of an exposition.
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = match line.rsplit_once(' ') {
            Some(pair) => pair,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once("=\"")?;
                Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
            })
            .collect();
        out.push((name.to_owned(), labels, value));
    }
    out
}

/// A bare HTTP/1.0 GET, so the tests need no HTTP client.
fn readyz(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Polls the asynchronous condition `done` every 50 ms until it holds, or
/// fails the test after `limit` (for conditions that ask the broker itself,
/// like [`ready_now`]).
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `done` every 50 ms until it holds, or fails the test after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------- a TCP proxy that can go silent ----------

/// Forwards TCP connections from a local port to `127.0.0.1:upstream` until
/// told to black-hole: from then on it forwards nothing in either direction
/// and accepts new connections without answering, but closes nothing, as a
/// node behind a dropped route or a dead switch would.
pub struct Proxy {
    pub port: u16,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = silent.clone();
        let task = tokio::spawn(async move {
            // Every socket is kept until the proxy is dropped: none is closed.
            let mut held = Vec::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(forward(cr, sw, flag.clone()));
                tokio::spawn(forward(sr, cw, flag.clone()));
            }
        });
        Proxy { port, silent, task }
    }

    /// From now on nothing passes, and nothing is closed.
    pub fn black_hole(&self) {
        self.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(std::sync::atomic::Ordering::SeqCst) {
            // Hold both halves open and forward nothing, for good.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The longest pause between two notifications the simulator accepted at or
/// after `from_us` (microseconds since the Unix epoch).
pub fn longest_gap(accepted: &[misiva::sim::Accepted], from_us: u64) -> Duration {
    let mut times: Vec<u64> = accepted.iter().map(|a| a.received_at_us).collect();
    times.sort_unstable();
    let mut longest = 0;
    let mut previous = from_us;
    for t in times.into_iter().filter(|&t| t >= from_us) {
        longest = longest.max(t - previous);
        previous = t;
    }
    Duration::from_micros(longest)
}

/// Now, in microseconds since the Unix epoch (the simulator's clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ---------- jobs and topology ----------

/// A simulator that answers after `latency` and records what it accepted.
pub async fn recording_sim(latency: Duration) -> SimFixture {
    SimFixture::start(SimConfig {
        faults: misiva::sim::Faults {
            latency,
            ..misiva::sim::Faults::default()
        },
        record: true,
        ..Default::default()
    })
    .await
}

/// One single-token job per token, ids `<prefix>-<n>`.
pub fn jobs(tokens: &[String], prefix: &str) -> Vec<Vec<u8>> {
    alerting(tokens, prefix, "x")
}

/// The same with `alert` as the alert text (a fault hook's marker, say).
pub fn alerting(tokens: &[String], prefix: &str, alert: &str) -> Vec<Vec<u8>> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": format!("{prefix}-{i}"), "token": t, "alert": alert})
                .to_string()
                .into_bytes()
        })
        .collect()
}

/// Whether the simulator accepted exactly the tokens of `expected` (each at
/// least once).
pub fn delivered_all(sim: &SimFixture, expected: &std::collections::HashSet<String>) -> bool {
    let accepted: std::collections::HashSet<String> =
        sim.sim.accepted().into_iter().map(|a| a.token).collect();
    accepted == *expected
}

/// Runs `misiva topology` for `queue` against `node`, with `extra_env`.
pub fn declare_topology(
    node: &Broker,
    queue: &str,
    extra_env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_misiva"));
    command
        .arg("topology")
        .env_clear()
        .env("MISIVA_AMQP_URL", &node.url)
        .env("MISIVA_QUEUE", queue)
        .env("MISIVA_LOG_FORMAT", "text");
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// Publishes each body to `exchange` with its routing key, confirmed and
/// mandatory (a message no queue takes fails the test).
pub async fn publish_routed(conn: &Connection, exchange: &str, messages: &[(String, Vec<u8>)]) {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let keyed = messages.iter().map(|(k, b)| (k.as_str(), b.as_slice()));
    publish_to(conn, exchange, keyed, properties).await;
}

// ---------- Live Activity channels ----------

/// The simulator's channel management address (it must have been started
/// with `channels_listen`).
pub fn channels_endpoint(sim: &SimFixture) -> String {
    sim.sim
        .channels_endpoint()
        .expect("the simulator serves channel management")
}

/// `misiva channels ARGS` with the test app's credentials: (exit code,
/// stdout, stderr).
pub fn misiva_channels(sim: &SimFixture, args: &[&str]) -> (i32, String, String) {
    output_of(
        Command::new(env!("CARGO_BIN_EXE_misiva"))
            .arg("channels")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MISIVA_AMQP_URL", &broker().url)
            .env("MISIVA_APNS_ENDPOINT", sim.sim.endpoint())
            .env("MISIVA_APNS_CHANNELS_ENDPOINT", channels_endpoint(sim))
            .env("MISIVA_APNS_CA_FILE", &sim.ca_file)
            .env("MISIVA_APNS_KEY_FILE", &sim.key_file)
            .env("MISIVA_APNS_KEY_ID", KEY_ID)
            .env("MISIVA_APNS_TEAM_ID", TEAM_ID)
            .env("MISIVA_APNS_TOPIC", TOPIC),
    )
}

/// `misiva ARGS` with only a broker URL and a queue name: no credentials.
pub fn misiva_broker_only(queue: &str, args: &[&str]) -> (i32, String, String) {
    output_of(
        Command::new(env!("CARGO_BIN_EXE_misiva"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MISIVA_AMQP_URL", &broker().url)
            .env("MISIVA_QUEUE", queue),
    )
}

/// Runs `command` to its end, with no input: (exit code, stdout, stderr).
pub fn output_of(command: &mut Command) -> (i32, String, String) {
    let output = command.stdin(Stdio::null()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Creates a channel with `misiva channels create`; returns its id, which
/// the command prints alone.
pub fn create_channel(sim: &SimFixture, storage: &str) -> String {
    let (code, out, err) = misiva_channels(sim, &["create", "--storage", storage]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    assert_eq!(out, format!("{id}\n"), "the id alone on stdout");
    id
}

/// The longest one test may run: `MISIVA_TEST_LIMIT_SECS`, else five
/// minutes. The slowest tests today take about a minute (a cluster's node
/// stopped and started again); five minutes means a hang.
pub fn test_limit() -> Duration {
    std::env::var("MISIVA_TEST_LIMIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// A per-test time limit that works under plain `cargo test`. Every
/// simulator and worker a test starts carries one, registered under the
/// test's name (libtest names each test's thread after it). A watchdog
/// thread, started once per test binary, ends the binary with exit code 101
/// and the test's name when one has run past [`test_limit`], so that a hang
/// fails CI with its name, at once, instead of at the CI's own limit. (The
/// cluster tests share one cluster started once per binary, which rules out
/// nextest's process per test.)
#[derive(Debug)]
pub struct TestClock {
    id: u64,
}

fn clocks() -> &'static std::sync::Mutex<std::collections::HashMap<u64, (String, Instant)>> {
    static CLOCKS: OnceLock<std::sync::Mutex<std::collections::HashMap<u64, (String, Instant)>>> =
        OnceLock::new();
    CLOCKS.get_or_init(|| {
        std::thread::spawn(|| {
            let limit = test_limit();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let late = clocks()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .find(|(_, started)| started.elapsed() > limit)
                    .map(|(name, _)| name.clone());
                if let Some(name) = late {
                    // Written to stderr itself: `eprintln!` in a thread a
                    // test spawned is captured with the test's output, which
                    // an exit never shows.
                    let _ = writeln!(
                        std::io::stderr(),
                        "test {name} has run for more than {} s: ending this test binary",
                        limit.as_secs()
                    );
                    std::process::exit(101);
                }
            }
        });
        std::sync::Mutex::new(std::collections::HashMap::new())
    })
}

impl TestClock {
    pub fn start() -> TestClock {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = std::thread::current().name().unwrap_or("a test").to_owned();
        clocks()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (name, Instant::now()));
        TestClock { id }
    }
}

impl Drop for TestClock {
    fn drop(&mut self) {
        clocks()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}
