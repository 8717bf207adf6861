//! Micro-benchmarks of the per-notification hot paths:
//! `cargo bench --bench hot_paths [-- FILTER]`. Each prints the median time
//! per call over batches of about a millisecond, run for two seconds, with
//! the 10th and 90th percentiles beside it to show the machine's noise.
//!
//! The harness is the few lines below rather than Criterion: these figures
//! need a median and a spread, not a statistics engine, and Criterion and
//! its dependencies were a fifth of what a fresh test build compiled beyond
//! the worker's own.

mod common;

use misiva::apns::{JobRequest, ProviderToken, derived_apns_id};
use misiva::job::{self, DeviceToken};
use misiva::jwt::SigningKey;
use std::hint::black_box;
use std::time::{Duration, Instant};

const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn typical_job() -> Vec<u8> {
    serde_json::json!({
        "id": "order-1234-shipped", "token": TOKEN,
        "alert": {"title": "Your order has shipped", "body": "Order 1234 left the warehouse and arrives on Friday."},
        "badge": 1, "sound": "default", "thread_id": "orders",
        "data": {"order": 1234, "note": "x".repeat(600)},
    })
    .to_string()
    .into_bytes()
}

fn verbatim_job() -> Vec<u8> {
    serde_json::json!({
        "id": "order-1234-shipped", "token": TOKEN,
        "payload": {"aps": {"alert": {"title": "Your order has shipped", "body": "Order 1234 left the warehouse."}, "badge": 1},
                    "order": 1234, "note": "x".repeat(600)},
    })
    .to_string()
    .into_bytes()
}

fn fan_out_job(tokens: usize) -> Vec<u8> {
    let list: Vec<String> = (0..tokens).map(|i| format!("{:064x}", i + 1)).collect();
    serde_json::json!({"tokens": list, "alert": "Flash sale"})
        .to_string()
        .into_bytes()
}

fn decode(c: &Bench) {
    let typical = typical_job();
    let verbatim = verbatim_job();
    let fan_out = fan_out_job(1000);
    c.run("decode: typical 1 KB job, convenience fields", || {
        job::decode(black_box(&typical), None).unwrap()
    });
    c.run("decode: typical 1 KB job, verbatim payload", || {
        job::decode(black_box(&verbatim), None).unwrap()
    });
    c.run("decode: 1,000-token job", || {
        job::decode(black_box(&fan_out), None).unwrap()
    });
}

fn tokens_and_headers(c: &Bench) {
    let key = SigningKey::from_pem("bench", misiva::jwt::generate_p8().as_bytes()).unwrap();
    c.run("jwt: sign a new provider token", || {
        key.sign(black_box("KEYID12345"), "TEAMID1234", 1_700_000_000)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let provider = ProviderToken::new(
        "bench",
        SigningKey::from_pem("bench", misiva::jwt::generate_p8().as_bytes()).unwrap(),
        "KEYID12345".into(),
        "TEAMID1234".into(),
    );
    let _guard = runtime.enter();
    c.run("jwt: reuse the current provider token", || {
        provider.header()
    });

    let job = job::decode(&typical_job(), None).unwrap();
    c.run("headers: prepare a job's request parts", || {
        JobRequest::new(black_box(&job), None)
    });
    let token = DeviceToken::parse("token", TOKEN).unwrap();
    c.run("headers: derive the apns-id (UUID v5)", || {
        derived_apns_id(black_box("order-1234-shipped"), &token)
    });
}

/// What observability adds to one single-token job: the events of its
/// delivery, its answer and its ack (metrics), and its span with a trace id
/// under the JSON subscriber the worker runs (logs go to a sink).
fn observability(c: &Bench) {
    use misiva::events::{self, emit};
    use misiva::outcome::ApnsAnswer;
    use std::time::Duration;
    let app = events::AppMetrics::new("bench");
    let ok = ApnsAnswer::Status {
        code: 200,
        reason: None,
        timestamp_ms: None,
    };
    let queue: std::sync::Arc<str> = std::sync::Arc::from("misiva.jobs");
    c.run("metrics: one single-token job's events", || {
        emit(events::JobReceived {
            queue: &queue,
            lane: misiva::lane::Lane::Normal,
        });
        let place = app.in_flight().hold();
        emit(events::NotificationAnswered {
            target: "token",
            app: &app,
            answer: black_box(&ok),
            elapsed: Duration::from_micros(800),
        });
        drop(place);
        emit(events::JobAcked {
            app: black_box("bench"),
            lane: misiva::lane::Lane::Normal,
            age: Some(Duration::from_secs(1)),
        });
    });
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::sink)
        .with_env_filter("info")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    c.run("tracing: a job's span with its fields and trace id", || {
        let span = tracing::info_span!(
            "job",
            consumer = 0,
            job_id = tracing::field::Empty,
            app = tracing::field::Empty,
            tokens = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        span.record("trace_id", black_box("4bf92f3577b34da6a3ce929d0e0e4736"));
        span.record("parent_span_id", "00f067aa0ba902b7");
        span.record("job_id", "order-1234-shipped");
        span.record("app", "bench");
        span.record("tokens", 1usize);
        let _entered = span.enter();
    });
    c.run(
        "tracing: a job's span, every field given at creation",
        || {
            let span = tracing::info_span!(
                "job",
                consumer = 0,
                job_id = black_box("order-1234-shipped"),
                app = "bench",
                tokens = 1usize,
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                parent_span_id = "00f067aa0ba902b7",
            );
            let _entered = span.enter();
        },
    );
}

/// The harness: a substring of a benchmark's name given on the command line
/// runs only the benchmarks that contain it.
struct Bench {
    filter: Option<String>,
    run_for: Duration,
}

impl Bench {
    fn run<R>(&self, name: &str, mut f: impl FnMut() -> R) {
        if self
            .filter
            .as_deref()
            .is_some_and(|want| !name.contains(want))
        {
            return;
        }
        // A batch long enough (about 1 ms) that reading the clock is noise;
        // sizing it also warms the caches and the allocator.
        let mut batch: u32 = 1;
        loop {
            let start = Instant::now();
            for _ in 0..batch {
                black_box(f());
            }
            if start.elapsed() >= Duration::from_millis(1) || batch >= 1 << 24 {
                break;
            }
            batch *= 2;
        }
        let mut per_call = Vec::new();
        let until = Instant::now() + self.run_for;
        while Instant::now() < until || per_call.len() < 20 {
            let start = Instant::now();
            for _ in 0..batch {
                black_box(f());
            }
            per_call.push(start.elapsed().as_secs_f64() / f64::from(batch));
        }
        per_call.sort_by(f64::total_cmp);
        let at = |p: f64| human(common::percentile(&per_call, p));
        println!(
            "{name:<56} {:>9}   p10 {:>9}, p90 {:>9}   ({} batches of {batch})",
            at(50.0),
            at(10.0),
            at(90.0),
            per_call.len()
        );
    }
}

/// Seconds as ns, µs or ms with three significant figures.
fn human(seconds: f64) -> String {
    let ns = seconds * 1e9;
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a word that is neither a flag nor
    // `--secs`'s value is a filter.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "--secs"))
        .map(|(_, a)| a.clone());
    let bench = Bench {
        filter,
        run_for: Duration::from_secs(common::arg("--secs", 2) as u64),
    };
    decode(&bench);
    tokens_and_headers(&bench);
    observability(&bench);
}
