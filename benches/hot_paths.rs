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

criterion_group!(hot_paths, decode, tokens_and_headers);
criterion_main!(hot_paths);
