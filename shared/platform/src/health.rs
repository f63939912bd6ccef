//! `/health` (liveness and the startup probe: the process serves; touches
//! nothing), `/health/ready` (PostgreSQL answers and this binary's migrations are
//! applied; Redis never fails readiness — but a service that learns revocations
//! only from Redis is not ready until it knows every one, see
//! `kai_http::auth::Authenticator::revocations_known`) and `/health/detailed` (the operator's
//! view: dependencies, pool, cache, per-route timings, slow queries).
//!
//! **Readiness is bounded and never waits on the serving pool.** It asks
//! PostgreSQL on a connection of its own (`readiness::Readiness`: a one-connection pool,
//! `PROBE_TIMEOUT` to connect and to answer), so a saturated serving pool —
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
use kai_shared::db::{PoolStatus, SlowQuery};
use kai_shared::figures::millis;
use kai_shared::redis::RedisHealth;

use crate::readiness::{Readiness, Ready};
use std::sync::Arc;
use std::time::Instant;

use kai_http::stats::EndpointStats;
use kai_shared::cache::Cache;
use kai_shared::db::Db;
use kai_shared::redis::Redis;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/health/detailed", web::get().to(detailed));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// What the health routes read (app data of its own: they need no more of the
/// platform).
pub struct Health {
    pub service: &'static str,
    /// Not ready while it does not know every revocation (see
    /// `Authenticator::revocations_known`).
    pub auth: Arc<kai_http::auth::Authenticator>,
    pub started: Instant,
    pub db: Db,
    pub cache: Cache,
    pub redis: Option<Arc<Redis>>,
    pub stats: Arc<EndpointStats>,
    pub readiness: Readiness,
}

async fn ready(platform: web::Data<Health>) -> Result<HttpResponse, ApiError> {
    if !platform.auth.revocations_known() {
        return Err(ApiError::NotReady(
            "revocations are not known yet: the revoked set is missing its marker".into(),
        ));
    }
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
    /// Each read replica (`DATABASE_REPLICA_URLS`) with its state and lag;
    /// absent without replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<Vec<kai_shared::db::ReplicaHealth>>,
}

#[derive(Serialize)]
struct Performance {
    endpoints: HashMap<String, EndpointSummary>,
    slow_query_count: u64,
    slow_queries: Vec<SlowQuery>,
}

async fn detailed(platform: web::Data<Health>) -> HttpResponse {
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
            replicas: platform.db.replicas().map(|r| r.health()),
        },
        Err(_) => DatabaseHealth {
            status: "unhealthy",
            response_time_ms: None,
            pool: platform.db.status(),
            replicas: platform.db.replicas().map(|r| r.health()),
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
