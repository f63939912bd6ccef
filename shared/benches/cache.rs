//! Cache hit path vs. serializing from structs (issue 4, point 7), plus key
//! building. Run: `cargo bench -p kai-shared --features testing --bench cache`.
//! (problem+json rendering is kai-http's `errors` bench.)
//! The L2 benchmark needs Redis on 127.0.0.1:6379 (`TEST_REDIS_URL`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use kai_shared::cache::seal::{CacheKey, Sealer};
use kai_shared::cache::{Cache, Entry, Policy, Scope, entry::etag_of, keys};
use kai_shared::metrics::Metrics;
use kai_shared::settings::{CacheSettings, RedisSettings};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Serialize, Clone)]
struct Item {
    id: Uuid,
    title: Option<String>,
    content: String,
    mood: Option<i16>,
    tags: Vec<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// A realistic page: 20 entries of ~600 characters.
fn page() -> Vec<Item> {
    (0..20)
        .map(|i| Item {
            id: Uuid::new_v4(),
            title: Some(format!("Entry {i}")),
            content: "Today I walked along the river and thought about what matters. ".repeat(10),
            mood: Some(7),
            tags: vec!["walk".into(), "river".into()],
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        })
        .collect()
}

/// A loader that never fails.
type Never = std::convert::Infallible;

fn settings(redis: Option<&str>) -> (CacheSettings, RedisSettings) {
    let cache = CacheSettings {
        enabled: true,
        l1_max_mb: 32,
        encryption_key: Some(CacheKey::from_bytes([7; 32])),
        older_keys: Vec::new(),
        key_seed: None,
    };
    let redis = RedisSettings {
        url: redis.map(|u| secrecy::SecretString::from(u.to_owned())),
        ca: None,
        cluster_nodes: Vec::new(),
        pool_size: 50,
        timeout: Duration::from_millis(100),
        prefix: format!("kai-bench-{}", Uuid::new_v4().simple()),
    };
    (cache, redis)
}

const POLICY: Policy = Policy::new("bench", Duration::from_secs(3600));

fn hit_paths(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let items = page();
    let body = serde_json::to_vec(&items).unwrap();
    let stored = Arc::new(Entry::found(Bytes::from(body.clone()), u64::MAX, 1));
    println!("page body: {} bytes", body.len());

    let mut g = c.benchmark_group("list_page_20");
    g.bench_function("serialize_from_structs_plus_etag", |b| {
        b.iter(|| {
            let body = serde_json::to_vec(black_box(&items)).unwrap();
            black_box(etag_of(&body));
        })
    });
    g.bench_function("stored_bytes_hit", |b| {
        b.iter(|| black_box((stored.body.clone(), stored.etag.clone())))
    });

    // What an L2 hit does with the bytes Redis answered (a fresh Vec each
    // time), side by side: a plain frame decoded, against a sealed frame opened
    // (AES-256-GCM, the key name as associated data) and then decoded. The
    // stored form carries the gzip body too, as every list page does.
    let frame = stored.as_ref().clone().with_gzip().encode();
    let key = format!(
        "kai:{{journal:{}}}:1765000000000000:journal:list:page:1:size:20",
        Uuid::new_v4()
    );
    let sealer = Sealer::new(&CacheKey::from_bytes([7; 32]), &[]);
    let sealed = sealer.seal(key.as_bytes(), &frame);
    println!(
        "stored frame: {} bytes plain, {} sealed",
        frame.len(),
        sealed.len()
    );
    g.bench_function("l2_frame_plain_decode", |b| {
        b.iter(|| black_box(Entry::decode(Bytes::from(black_box(&frame).clone())).unwrap()))
    });
    g.bench_function("l2_frame_sealed_open_and_decode", |b| {
        b.iter(|| {
            let opened = sealer
                .open(key.as_bytes(), black_box(&sealed).clone())
                .unwrap();
            black_box(Entry::decode(Bytes::from(opened)).unwrap())
        })
    });
    g.bench_function("l2_frame_seal", |b| {
        b.iter(|| black_box(sealer.seal(key.as_bytes(), black_box(&frame))))
    });

    let metrics = Metrics::new("bench");
    let l1 = rt.block_on(async {
        let (cache, redis) = settings(None);
        Cache::new(
            "journal",
            &cache,
            &redis,
            &metrics,
            Arc::new(|_: &str| {}),
            CancellationToken::new(),
        )
        .unwrap()
    });
    let scope = Scope::user("bench", Uuid::new_v4());
    rt.block_on(l1.get_or_load(&scope, &POLICY, "page", || async {
        Ok::<_, Never>(Some(items.clone()))
    }))
    .unwrap();
    g.bench_function("get_or_load_l1_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                l1.get_or_load(&scope, &POLICY, "page", || async {
                    Ok::<Option<Vec<Item>>, Never>(None)
                })
                .await
                .unwrap(),
            )
        })
    });

    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let stop = CancellationToken::new();
    let l2 = rt.block_on(async {
        let (cache, redis) = settings(Some(&redis));
        Cache::new(
            "journal",
            &cache,
            &redis,
            &Metrics::new("bench"),
            Arc::new(|_: &str| {}),
            stop.clone(),
        )
        .unwrap()
    });
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        l2.get_or_load(&scope, &POLICY, "page", || async {
            Ok::<_, Never>(Some(items.clone()))
        })
        .await
        .unwrap();
    });
    g.bench_function("get_or_load_l2_hit", |b| {
        b.to_async(&rt).iter(|| async {
            l2.clear_l1();
            black_box(
                l2.get_or_load(&scope, &POLICY, "page", || async {
                    Ok::<Option<Vec<Item>>, Never>(None)
                })
                .await
                .unwrap(),
            )
        })
    });
    g.finish();
    stop.cancel();
}

fn small_paths(c: &mut Criterion) {
    let user = Uuid::new_v4();
    let scope = Scope::user("journal", user);
    c.bench_function("key_build_list_page", |b| {
        b.iter(|| {
            black_box(keys::entry_key(
                "kai",
                &scope,
                1_763_000_000_000_000,
                &format!("journal:list:{user}:page:3:size:20"),
            ))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = hit_paths, small_paths
}
criterion_main!(benches);
