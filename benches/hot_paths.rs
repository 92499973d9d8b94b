//! Pure hot paths, no I/O: signing both schemes, subscription matching,
//! outcome classification. `cargo bench --bench hot_paths`.
use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};

use smartdrop_webhooks::delivery::outcome::classify;
use smartdrop_webhooks::delivery::sender::{Response, SendError};
use smartdrop_webhooks::delivery::signing::{Signer, sign};
use smartdrop_webhooks::domain::event_pattern::EventPattern;
use smartdrop_webhooks::domain::secret::WebhookSecret;
use smartdrop_webhooks::queue::retry::RetryPolicy;

fn body() -> Vec<u8> {
    format!(
        r#"{{"event":"pool.assets_locked","event_id":"evt_0123456789abcdef0123456789abcdef","occurred_at":"2026-06-25T12:00:00.000Z","data":{{"pool_id":"p1","amount":"12.5","pad":"{}"}}}}"#,
        "x".repeat(150)
    )
    .into_bytes()
}

fn signing(c: &mut Criterion) {
    let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let body = body();
    c.bench_function("sign both schemes (keys derived per call)", |b| {
        b.iter(|| {
            sign(
                black_box(&secret),
                "dlv_0123456789abcdef0123456789abcdef",
                1_614_265_330,
                black_box(&body),
            )
        })
    });
    let signer = Signer::new(&secret);
    c.bench_function("sign both schemes (keys reused)", |b| {
        b.iter(|| {
            signer.sign(
                "dlv_0123456789abcdef0123456789abcdef",
                1_614_265_330,
                black_box(&body),
            )
        })
    });
}

fn matching(c: &mut Criterion) {
    let catalogue: Vec<String> = [
        "pool.created",
        "pool.assets_locked",
        "pool.closed",
        "price.alert",
    ]
    .map(String::from)
    .to_vec();
    let patterns: Vec<EventPattern> = ["price.alert", "pool.*", "*"]
        .iter()
        .map(|p| EventPattern::parse(p, &catalogue).unwrap())
        .collect();
    c.bench_function("match an event type against 3 patterns", |b| {
        b.iter(|| {
            patterns
                .iter()
                .any(|p| p.matches(black_box("pool.assets_locked")))
        })
    });
    c.bench_function("parse and validate a pattern", |b| {
        b.iter(|| EventPattern::parse(black_box("pool.*"), &catalogue))
    });
}

fn classification(c: &mut Criterion) {
    let policy = RetryPolicy {
        max_attempts: 5,
        base_ms: 30_000,
        factor: 2.0,
        max_ms: 3_600_000,
        jitter: true,
    };
    let now = Utc::now();
    let ok: Result<Response, SendError> = Ok(Response {
        status: 200,
        retry_after: None,
        excerpt: String::new(),
    });
    let limited: Result<Response, SendError> = Ok(Response {
        status: 429,
        retry_after: Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
        excerpt: String::new(),
    });
    let timeout: Result<Response, SendError> = Err(SendError::Timeout(5000));
    c.bench_function("classify 200", |b| {
        b.iter(|| classify(black_box(&ok), 1, &policy, now, 0.5))
    });
    c.bench_function("classify 429 with an HTTP-date Retry-After", |b| {
        b.iter(|| classify(black_box(&limited), 2, &policy, now, 0.5))
    });
    c.bench_function("classify timeout", |b| {
        b.iter(|| classify(black_box(&timeout), 3, &policy, now, 0.5))
    });
}

criterion_group!(benches, signing, matching, classification);
criterion_main!(benches);
