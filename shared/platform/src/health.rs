//! `/health` (liveness and the startup probe: the process serves; touches
//! nothing), `/health/ready` (PostgreSQL answers and this binary's migrations are
//! applied; Redis never fails readiness) and `/health/detailed` (the operator's
//! view: dependencies, pool, cache, per-route timings, slow queries).
//!
//! **Readiness is bounded and never waits on the serving pool.** It asks
//! PostgreSQL on a connection of its own ([`Readiness`]: a one-connection pool,
//! [`PROBE_TIMEOUT`] to connect and to answer), so a saturated serving pool —
//! every connection busy, requests queueing for `DB_POOL_TIMEOUT_SECS` — does not
//! make the probe wait or fail, and does not take the pod out of the Service
//! (which would push its load onto the others and saturate them in turn).
//! A PostgreSQL that stops answering keeps the pod ready for
//! `READINESS_GRACE_MS` (10 s) after the last answer: a blip (a failover, a
//! restart) takes no pod out, while requests meanwhile get 503 with
//! `Retry-After` from the pool; an outage longer than that takes every pod out,
//! the ingress answers 503 itself, and `KaiServiceDown` pages. A binary whose
//! migrations are missing is never ready (no grace: it would serve a schema it
//! does not know).

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use kai_http::errors::ApiError;
use kai_http::stats::EndpointSummary;
use kai_shared::cache::CacheTotals;
use kai_shared::db::{Db, MigrationSet};
use kai_shared::db::{PoolStatus, SlowQuery};
use kai_shared::figures::millis;
use kai_shared::metrics::Metrics;
use kai_shared::redis::RedisHealth;
use kai_shared::settings::DatabaseSettings;

use crate::server::Platform;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/health/detailed", web::get().to(detailed));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn ready(platform: web::Data<Platform>) -> Result<HttpResponse, ApiError> {
    match platform.readiness.check().await {
        Ready::Yes => Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))),
        Ready::Unanswered { since } => Ok(HttpResponse::Ok().json(serde_json::json!({
            "status": "ready",
            "database": format!("no answer for {} ms (within READINESS_GRACE_MS)", since.as_millis()),
        }))),
        Ready::MigrationsPending => Err(ApiError::Unavailable(anyhow::anyhow!("migrations pending"))),
        Ready::No(e) => Err(ApiError::Unavailable(e)),
    }
}

/// How long the readiness probe may take to connect, and its statement to answer.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The readiness check: this binary's migrations applied, asked on a connection
/// of its own (see the module's docs).
pub struct Readiness {
    db: Db,
    migrations: MigrationSet,
    /// The newest migration this binary embeds (computed once, not per probe).
    version: i32,
    grace: std::time::Duration,
    /// When PostgreSQL last answered the probe.
    last_answer: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What [`Readiness::check`] found.
pub enum Ready {
    Yes,
    /// PostgreSQL has not answered for `since`, still within the grace.
    Unanswered {
        since: std::time::Duration,
    },
    MigrationsPending,
    No(anyhow::Error),
}

impl Readiness {
    pub fn new(
        settings: &DatabaseSettings,
        grace: std::time::Duration,
        migrations: MigrationSet,
        service: &str,
    ) -> Self {
        let probe = DatabaseSettings {
            pool_size: 1,
            pool_timeout: PROBE_TIMEOUT,
            ..settings.clone()
        };
        Self {
            // Its own registry: the probe's pool is not the serving pool, and its
            // gauges must not be read as if it were.
            db: Db::new(&probe, &Metrics::new(service)),
            migrations,
            version: migrations.latest_version(),
            grace,
            last_answer: std::sync::Mutex::new(None),
        }
    }

    pub async fn check(&self) -> Ready {
        let asked = tokio::time::timeout(
            PROBE_TIMEOUT,
            kai_shared::db::is_current(&self.db, self.migrations.schema, self.version),
        )
        .await;
        let failure = match asked {
            Ok(Ok(true)) => {
                *self.last_answer.lock().expect("readiness lock") = Some(std::time::Instant::now());
                return Ready::Yes;
            }
            Ok(Ok(false)) => return Ready::MigrationsPending,
            Ok(Err(e)) => anyhow::Error::new(e),
            Err(_) => anyhow::anyhow!("PostgreSQL did not answer within {PROBE_TIMEOUT:?}"),
        };
        let last = *self.last_answer.lock().expect("readiness lock");
        match last.map(|at| at.elapsed()) {
            Some(since) if since < self.grace => Ready::Unanswered { since },
            _ => Ready::No(failure),
        }
    }
}

#[derive(Serialize)]
struct Detailed {
    status: &'static str,
    service: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    database: DatabaseHealth,
    redis: RedisHealth,
    cache: CacheTotals,
    performance: Performance,
}

#[derive(Serialize)]
struct DatabaseHealth {
    status: &'static str,
    response_time_ms: Option<f64>,
    pool: PoolStatus,
}

#[derive(Serialize)]
struct Performance {
    endpoints: HashMap<String, EndpointSummary>,
    slow_query_count: u64,
    slow_queries: Vec<SlowQuery>,
}

async fn detailed(platform: web::Data<Platform>) -> HttpResponse {
    let redis_health = async {
        match &platform.redis {
            Some(redis) => Some(redis.health().await),
            None => None,
        }
    };
    let (db_ping, redis) = tokio::join!(platform.db.ping(), redis_health);
    let database = match db_ping {
        Ok(rtt) => DatabaseHealth {
            status: "healthy",
            response_time_ms: Some(millis(rtt)),
            pool: platform.db.status(),
        },
        Err(_) => DatabaseHealth {
            status: "unhealthy",
            response_time_ms: None,
            pool: platform.db.status(),
        },
    };
    let redis = redis.unwrap_or(RedisHealth {
        status: "disabled",
        response_time_ms: None,
    });
    let status = if database.status != "healthy" {
        "unhealthy"
    } else if redis.status == "healthy" || redis.status == "disabled" {
        "healthy"
    } else {
        "degraded"
    };
    let (slow_query_count, slow_queries) = platform.db.slow_queries();
    let body = Detailed {
        status,
        service: platform.service,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: platform.started.elapsed().as_secs(),
        database,
        redis,
        cache: platform.cache.totals(),
        performance: Performance {
            endpoints: platform.stats.summary(),
            slow_query_count,
            slow_queries,
        },
    };
    let code = if status == "unhealthy" {
        HttpResponse::ServiceUnavailable()
    } else {
        HttpResponse::Ok()
    };
    let mut res = code;
    res.json(body)
}
