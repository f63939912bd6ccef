//! `/health` (liveness: touches nothing), `/health/ready` (PostgreSQL answers and
//! this binary's migrations are applied; Redis never fails readiness) and
//! `/health/detailed` (the operator's view: dependencies, pool, cache, per-route
//! timings, slow queries).

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use kai_http::errors::ApiError;
use kai_http::stats::EndpointSummary;
use kai_shared::cache::CacheTotals;
use kai_shared::db::{PoolStatus, SlowQuery};
use kai_shared::figures::millis;
use kai_shared::redis::RedisHealth;

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
    match kai_shared::db::is_current(
        &platform.db,
        platform.migrations.schema,
        platform.migration_version,
    )
    .await
    {
        Ok(true) => Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))),
        Ok(false) => Err(ApiError::Unavailable(anyhow::anyhow!("migrations pending"))),
        Err(e) => Err(ApiError::Unavailable(e.into())),
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
