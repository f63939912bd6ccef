//! Migrations started together on an empty database: several migration Jobs of
//! one release, or pods of a deployment that still migrates at start. Each
//! migrator has its own pool (as separate processes would), they are released at
//! once by a barrier, and every one of them must succeed; each migration is
//! applied exactly once.

use std::sync::Arc;

use kai_shared::db::{Db, MigrationSet, migrate};
use kai_shared::metrics::Metrics;
use kai_testing::{self as testing, TestDb};
use tokio::sync::Barrier;

const MIGRATORS_PER_SCHEMA: usize = 6;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrators_on_an_empty_database_all_succeed_and_apply_each_migration_once() {
    let sets: [(&str, MigrationSet); 3] = [
        ("journal", journal_service::MIGRATIONS),
        ("conversation", conversation_service::MIGRATIONS),
        ("profile", profile_service::MIGRATIONS),
    ];
    for round in 0..ROUNDS {
        // A fresh, empty database each round: no schema exists yet.
        let db = TestDb::create().await;
        let barrier = Arc::new(Barrier::new(sets.len() * MIGRATORS_PER_SCHEMA));
        let mut tasks = Vec::new();
        for (service, set) in sets {
            for _ in 0..MIGRATORS_PER_SCHEMA {
                let settings = testing::settings(&db.url, None, "unused", &[("DB_POOL_SIZE", "1")]);
                let barrier = barrier.clone();
                tasks.push(tokio::spawn(async move {
                    let pool = Db::new(&settings.database, &Metrics::new(service));
                    // Connect first, so the race is between statements, not handshakes.
                    drop(pool.conn().await.expect("connect"));
                    barrier.wait().await;
                    (service, migrate(&pool, set).await)
                }));
            }
        }
        let mut applied = std::collections::HashMap::<&str, usize>::new();
        for task in tasks {
            let (service, result) = task.await.expect("migrator task");
            let n = result
                .unwrap_or_else(|e| panic!("round {round}: a {service} migrator failed: {e:#}"));
            *applied.entry(service).or_default() += n;
        }
        let check = db.connect().await;
        for (service, set) in sets {
            let embedded = (set.runner)().get_migrations().len();
            assert!(embedded > 0);
            assert_eq!(
                applied[service], embedded,
                "round {round}: {service}: every migration applied by exactly one migrator"
            );
            let rows: i64 = check
                .query_one(
                    &format!("SELECT count(*) FROM {}.refinery_history", set.schema),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(rows as usize, embedded, "round {round}: {service} history");
        }
    }
}
