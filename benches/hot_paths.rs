//! Criterion micro-benchmarks of the per-notification hot paths:
//! `cargo bench --bench hot_paths`.

use criterion::{Criterion, criterion_group, criterion_main};
use misiva::apns::{JobRequest, ProviderToken, derived_apns_id};
use misiva::job::{self, DeviceToken};
use misiva::jwt::SigningKey;
use std::hint::black_box;

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

fn decode(c: &mut Criterion) {
    let typical = typical_job();
    let verbatim = verbatim_job();
    let fan_out = fan_out_job(1000);
    c.bench_function("decode: typical 1 KB job, convenience fields", |b| {
        b.iter(|| job::decode(black_box(&typical), None).unwrap())
    });
    c.bench_function("decode: typical 1 KB job, verbatim payload", |b| {
        b.iter(|| job::decode(black_box(&verbatim), None).unwrap())
    });
    c.bench_function("decode: 1,000-token job", |b| {
        b.iter(|| job::decode(black_box(&fan_out), None).unwrap())
    });
}

fn tokens_and_headers(c: &mut Criterion) {
    let key = SigningKey::from_pem("bench", misiva::jwt::generate_p8().as_bytes()).unwrap();
    c.bench_function("jwt: sign a new provider token", |b| {
        b.iter(|| key.sign(black_box("KEYID12345"), "TEAMID1234", 1_700_000_000))
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
    c.bench_function("jwt: reuse the current provider token", |b| {
        b.iter(|| provider.header())
    });

    let job = job::decode(&typical_job(), None).unwrap();
    c.bench_function("headers: prepare a job's request parts", |b| {
        b.iter(|| JobRequest::new(black_box(&job), None))
    });
    let token = DeviceToken::parse("token", TOKEN).unwrap();
    c.bench_function("headers: derive the apns-id (UUID v5)", |b| {
        b.iter(|| derived_apns_id(black_box("order-1234-shipped"), &token))
    });
}

/// What observability adds to one single-token job: the events of its
/// delivery, its answer and its ack (metrics), and its span with a trace id
/// under the JSON subscriber the worker runs (logs go to a sink).
fn observability(c: &mut Criterion) {
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
    c.bench_function("metrics: one single-token job's events", |b| {
        b.iter(|| {
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
        })
    });
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::sink)
        .with_env_filter("info")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    c.bench_function("tracing: a job's span with its fields and trace id", |b| {
        b.iter(|| {
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
        })
    });
    c.bench_function(
        "tracing: a job's span, every field given at creation",
        |b| {
            b.iter(|| {
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
            })
        },
    );
}

criterion_group!(hot_paths, decode, tokens_and_headers, observability);
criterion_main!(hot_paths);
