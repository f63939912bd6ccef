//! Cache hit path vs. serializing from structs (issue 4, point 7), plus key
//! building and problem+json rendering. Run: `cargo bench -p kai-shared --bench cache`.
//! The L2 benchmark needs Redis on 127.0.0.1:6379 (`TEST_REDIS_URL`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use kai_shared::cache::{Cache, Entry, Policy, Scope, entry::etag_of, keys};
use kai_shared::config::Settings;
use kai_shared::metrics::Metrics;
use kai_shared::{ApiError, http::errors::FieldError};
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

/// A throwaway public key (settings require one; nothing here verifies tokens).
fn bench_keys_file() -> String {
    let dir = std::env::temp_dir().join(format!("kai-bench-keys-{}", std::process::id()));
    let (_, verifying) = kai_shared::auth::keys::KeyPair::generate()
        .write_to(&dir)
        .unwrap();
    verifying.display().to_string()
}

fn settings(redis: Option<&str>) -> Settings {
    let mut env = std::collections::HashMap::from([
        (
            "DATABASE_URL".to_owned(),
            "postgres://postgres@127.0.0.1/unused".to_owned(),
        ),
        ("AUTH_VERIFYING_KEYS_FILE".to_owned(), bench_keys_file()),
    ]);
    if let Some(url) = redis {
        env.insert("REDIS_URL".into(), url.into());
    }
    let mut s = Settings::from_lookup(0, |k| env.get(k).cloned()).unwrap();
    s.cache_prefix = format!("kai-bench-{}", Uuid::new_v4().simple());
    s
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
        b.iter(|| black_box((stored.body.clone(), stored.etag.as_bytes())))
    });

    let metrics = Metrics::new("bench");
    let l1 = rt.block_on(async {
        Cache::new(
            &settings(None),
            &metrics,
            Arc::new(|_: &str| {}),
            CancellationToken::new(),
        )
        .unwrap()
    });
    let scope = Scope::user("bench", Uuid::new_v4());
    rt.block_on(l1.get_or_load(&scope, &POLICY, "page", || async {
        Ok::<_, ApiError>(Some(items.clone()))
    }))
    .unwrap();
    g.bench_function("get_or_load_l1_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                l1.get_or_load(&scope, &POLICY, "page", || async {
                    Ok::<Option<Vec<Item>>, ApiError>(None)
                })
                .await
                .unwrap(),
            )
        })
    });

    let redis = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let stop = CancellationToken::new();
    let l2 = rt.block_on(async {
        Cache::new(
            &settings(Some(&redis)),
            &Metrics::new("bench"),
            Arc::new(|_: &str| {}),
            stop.clone(),
        )
        .unwrap()
    });
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        l2.get_or_load(&scope, &POLICY, "page", || async {
            Ok::<_, ApiError>(Some(items.clone()))
        })
        .await
        .unwrap();
    });
    g.bench_function("get_or_load_l2_hit", |b| {
        b.to_async(&rt).iter(|| async {
            l2.clear_l1();
            black_box(
                l2.get_or_load(&scope, &POLICY, "page", || async {
                    Ok::<Option<Vec<Item>>, ApiError>(None)
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
    c.bench_function("problem_json_render", |b| {
        b.iter(|| {
            let e = ApiError::validation(vec![FieldError::new("mood", "must be between 1 and 10")]);
            black_box(serde_json::to_vec(&e.problem()).unwrap())
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = hit_paths, small_paths
}
criterion_main!(benches);
