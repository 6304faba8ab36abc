//! The cost of the audit log per recorded response, on the bench's `/` (7 `Set-Cookie` headers,
//! consent to necessary cookies only: 3 kept, 4 dropped).
//!
//! - `facts_7`: what the request path builds and hands to the queue, as the proxy builds it: a
//!   `ResponseDraft` with the head, the consent (its digest computed from the `Cookie` header)
//!   and the 7 headers' names, categories and verdicts.
//! - `seal_7`: what the writer thread does with it besides `write(2)`: stamp, serialize
//!   canonically (its own serializer, from the draft), hash and seal one line onto the batch.
//! - `seal_7_repeat`: `seal_7` as the writer does it (`ResponseWriter`) when the record repeats
//!   the previous one's fields (the same page under the same consent): they are copied, not
//!   serialized again.
//! - `seal_7_serde`: the same record through serde_json (`canonical_event` + `seal`), the
//!   reference serialization `seal_7` must equal (and what the writer did before).
//! - `record_7_queue`: building the draft and `Sink::response` into a queue the writer drains to
//!   a file (the request side; the writer runs on its own thread as in production, on the same
//!   cores: when it falls behind, some iterations take the cheaper "queue full" path).
//!
//! Compare with `decision`'s `filter_7_necessary_only` (the filter itself) and with the load
//! harness (`AUDIT=1 bash bench/run.sh`) for the whole request. Run:
//! `cargo bench --bench audit -- --quick`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use consent_gateway::audit::compact::{canonical_response, ResponseWriter, TimeText};
use consent_gateway::audit::record::{canonical_event, seal, seal_onto, Stamp};
use consent_gateway::audit::{
    Audit, ConsentFacts, CookieFacts, Event, ResponseDraft, ResponseFacts, ResponseHead,
};
use consent_gateway::config::{AuditConfig, AuditPath};
use consent_gateway::metrics::Metrics;
use consent_gateway::policy::consent::{Consent, ConsentSpec, Format};
use consent_gateway::policy::decide::{Reason, Verdict};

const COOKIES: [(&str, &str, Verdict, Reason); 7] = [
    ("sessionid", "necessary", Verdict::Keep, Reason::Necessary),
    ("csrftoken", "necessary", Verdict::Keep, Reason::Necessary),
    (
        "django_language",
        "necessary",
        Verdict::Keep,
        Reason::Necessary,
    ),
    ("_ga", "statistical", Verdict::Drop, Reason::NotGranted),
    ("_gid", "statistical", Verdict::Drop, Reason::NotGranted),
    (
        "_ga_ABC123",
        "statistical",
        Verdict::Drop,
        Reason::NotGranted,
    ),
    ("ads_id", "marketing", Verdict::Drop, Reason::NotGranted),
];

const PREFS: &str =
    "%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%2C%22marketing%22%3Afalse%7D";

/// The same record as owned facts (the serde reference).
fn facts(cookie_headers: &[http::HeaderValue], spec: &ConsentSpec, consent: &Consent) -> Event {
    Event::Response(Box::new(ResponseFacts {
        time_ms: 1_764_583_200_123,
        host: "bench.test".to_owned(),
        generation: 1,
        registry_digest: REGISTRY_DIGEST.to_owned(),
        mode: "enforce",
        consent: ConsentFacts::new(spec, cookie_headers, consent),
        method: "GET".to_owned(),
        path: "/".to_owned(),
        status: 200,
        set_cookies: COOKIES
            .iter()
            .map(|(n, c, v, r)| CookieFacts {
                name: (*n).to_owned(),
                category: (*c).to_owned(),
                verdict: *v,
                reason: *r,
            })
            .collect(),
        stripped: Vec::new(),
        purged: Vec::new(),
    }))
}

const REGISTRY_DIGEST: &str = "5d41402abc4b2a76b9719d911017c592aaf0c3b9f3a8d2e5cd2b3e9d7f1a0c4e";

/// The draft the proxy builds for one response of the bench's `/`.
fn draft(
    cookie_headers: &[http::HeaderValue],
    spec: &ConsentSpec,
    consent: &Consent,
) -> ResponseDraft {
    let mut d = ResponseDraft::new();
    for (n, c, v, r) in COOKIES {
        d.set_cookie(n.as_bytes(), c, v, r);
    }
    d.head(&ResponseHead {
        time_ms: 1_764_583_200_123,
        host: "bench.test",
        generation: 1,
        registry_digest: REGISTRY_DIGEST,
        mode: "enforce",
        method: "GET",
        path: "/",
        status: 200,
    });
    d.consent(spec, cookie_headers, consent);
    d
}

fn bench(c: &mut Criterion) {
    let spec = ConsentSpec::new("cookies_preferences", Format::Json);
    let headers =
        [
            http::HeaderValue::from_str(&format!("cookies_preferences={PREFS}; sessionid=abc"))
                .unwrap_or(http::HeaderValue::from_static("a=b")),
        ];
    let mut map = http::HeaderMap::new();
    map.insert(http::header::COOKIE, headers[0].clone());
    let consent = consent_gateway::policy::consent::from_request_headers(&spec, &map);
    c.bench_function("facts_7", |b| {
        b.iter(|| black_box(draft(black_box(&headers), &spec, &consent)))
    });
    let stamp = Stamp {
        seq: 42,
        time_ms: 1_764_583_200_123,
        replica: "gateway-7d9f-x2k4",
    };
    let prev = "a".repeat(64);
    let d = draft(&headers, &spec, &consent);
    let mut time = TimeText::default();
    let (mut canonical, mut batch) = (Vec::new(), Vec::new());
    c.bench_function("seal_7", |b| {
        b.iter(|| {
            canonical.clear();
            canonical_response(stamp, black_box(d.bytes()), &mut time, &mut canonical);
            if batch.len() > 1 << 20 {
                batch.clear();
            }
            black_box(seal_onto(&mut batch, prev.as_bytes(), &canonical))
        })
    });
    let mut writer = ResponseWriter::default();
    c.bench_function("seal_7_repeat", |b| {
        b.iter(|| {
            canonical.clear();
            writer.write(stamp, black_box(d.bytes()), &mut canonical);
            if batch.len() > 1 << 20 {
                batch.clear();
            }
            black_box(seal_onto(&mut batch, prev.as_bytes(), &canonical))
        })
    });
    let event = facts(&headers, &spec, &consent);
    c.bench_function("seal_7_serde", |b| {
        b.iter(|| {
            let c = canonical_event(stamp, black_box(&event));
            black_box(seal(&prev, &c))
        })
    });
    // The two serializations agree (else the figures compare different work).
    canonical.clear();
    canonical_response(stamp, d.bytes(), &mut time, &mut canonical);
    assert_eq!(
        canonical,
        canonical_event(stamp, &event),
        "seal_7 and seal_7_serde differ"
    );
    let mut repeated = Vec::new();
    writer.write(stamp, d.bytes(), &mut repeated);
    assert_eq!(repeated, canonical, "seal_7_repeat and seal_7 differ");
    let dir = std::env::temp_dir().join(format!(
        "consent-gateway-bench-audit-{}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let cfg = AuditConfig {
        path: AuditPath::File(dir.join("audit.jsonl")),
        max_bytes: 64 << 20,
        keep: 1,
        queue: 8192,
    };
    if let Ok(audit) = Audit::start(&cfg, Arc::new(Metrics::new()), 1, "d") {
        let sink = audit.sink();
        c.bench_function("record_7_queue", |b| {
            b.iter(|| sink.response(&draft(black_box(&headers), &spec, &consent)))
        });
        drop(audit);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
