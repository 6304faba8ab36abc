//! The cookie inventory's cost per request on the bench upstream's `/` (`bench/upstream.conf`):
//! a request with `Cookie: cookies_preferences=...; sessionid=abc` and a response with its 7
//! `Set-Cookie` headers, every name already known (the steady state).
//!
//! - `filter_7`: the response filter alone (`filter_set_cookies`), the work the inventory rides on.
//! - `inventory_7`: what the proxy adds per request with the inventory on: take the worker's
//!   shard, record the request's cookie names, then each `Set-Cookie`'s name and attributes and
//!   its verdict.
//! - `filter_7_with_inventory`: the two together, as the proxy runs them.
//!
//! Run: `cargo bench --bench inventory -- --quick`. The end-to-end figure (the `/` load with the
//! inventory on and off in the same run) comes from `bench/run.sh` with
//! `TARGETS="gateway gateway-noinv"`.

use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use consent_gateway::config::InventoryConfig;
use consent_gateway::inventory::Inventory;
use consent_gateway::policy::consent::Consent;
use consent_gateway::policy::decide::Verdict;
use consent_gateway::policy::filter::filter_set_cookies;
use consent_gateway::policy::registry::HostPolicy;

const SET_COOKIES: [&str; 7] = [
    "sessionid=abc123; Path=/; HttpOnly; Secure; SameSite=Lax",
    "csrftoken=tok; Path=/; Secure",
    "django_language=en; Path=/",
    "_ga=GA1.2.123.456; Path=/; Max-Age=63072000",
    "_gid=GA1.2.789; Path=/; Max-Age=86400",
    "_ga_ABC123=GS1.1.1; Path=/",
    "ads_id=x; Domain=.example.test; Path=/",
];

fn policy() -> Arc<HostPolicy> {
    let text = include_str!("../bench/gateway/hosts/bench.toml");
    Arc::new(
        consent_gateway::config::parse_host_file(Path::new("bench.toml"), text)
            .unwrap_or_else(|e| panic!("bench registry: {e}")),
    )
}

fn response() -> HeaderMap {
    let mut h = HeaderMap::new();
    for c in SET_COOKIES {
        h.append(SET_COOKIE, HeaderValue::from_static(c));
    }
    h
}

fn request() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        COOKIE,
        HeaderValue::from_static(
            "cookies_preferences=%7B%22necessary%22%3Atrue%2C%22statistical%22%3Afalse%2C%22marketing%22%3Afalse%7D; sessionid=abc",
        ),
    );
    h
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let consent = Consent::none();
    let inventory = Arc::new(Inventory::new(InventoryConfig::default()));
    let shard = inventory.shard().unwrap_or_else(|| panic!("inventory on"));
    let req = request();
    let now = 1_779_000_000;
    let url = consent_gateway::policy::jar::RequestUrl::new("127.0.0.1", "/", false);
    // Steady state: every name known.
    {
        let mut r = shard.recorder(&policy, now);
        r.request_cookies(&req);
        for v in SET_COOKIES {
            r.set_cookie(v.as_bytes());
        }
    }
    let mut g = c.benchmark_group("inventory");
    g.bench_function("filter_7", |b| {
        b.iter_batched_ref(
            response,
            |h| {
                black_box(filter_set_cookies(
                    &policy,
                    &consent,
                    h,
                    now,
                    &url,
                    |_, _| {},
                ))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("inventory_7", |b| {
        b.iter_batched_ref(
            response,
            |h| {
                shard
                    .recorder(&policy, now)
                    .request_cookies(black_box(&req));
                let mut r = shard.recorder(&policy, now);
                for v in h.get_all(SET_COOKIE) {
                    r.set_cookie(v.as_bytes());
                }
                for v in SET_COOKIES {
                    let name = &v.as_bytes()[..v.find('=').unwrap_or(0)];
                    r.verdict(name, Verdict::Keep, true);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("filter_7_with_inventory", |b| {
        b.iter_batched_ref(
            response,
            |h| {
                shard
                    .recorder(&policy, now)
                    .request_cookies(black_box(&req));
                let mut r = shard.recorder(&policy, now);
                for v in h.get_all(SET_COOKIE) {
                    r.set_cookie(v.as_bytes());
                }
                black_box(filter_set_cookies(
                    &policy,
                    &consent,
                    h,
                    now,
                    &url,
                    |sc, d| r.verdict(sc.name, d.verdict, true),
                ))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
