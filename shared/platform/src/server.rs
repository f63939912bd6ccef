//! Server bootstrap, read top-down like zero2prod's `startup.rs`: [`main`] reads the
//! configuration and starts telemetry; [`Application::build`] builds the platform
//! ([`Platform::build`]: metrics, pool + migrations, auth, Redis, cache), binds (port 0 in
//! tests) and builds the server ([`run`]: middleware, health, docs, the service's
//! routes); [`Application::run_until_stopped`] serves until a signal.
//!
//! Shutdown: on SIGTERM the service's own background tasks (`ServiceDef::on_start`:
//! erasure relays and consumers) are told to stop at once, the server stops
//! accepting and lets in-flight requests finish (up to [`DRAIN`]), then the
//! platform's tasks (invalidations, revocations) are cancelled. SIGINT and SIGQUIT
//! stop without the drain (actix's meanings of the three). PostgreSQL
//! connections end with the protocol's Terminate: the pipelined lanes' as the
//! drain starts (their HTTP workers still drive them; this delays the stop
//! command by at most `CLOSE_CONNECTIONS`, a few milliseconds when no read
//! holds a lane), every other pool's once the server stopped (`Db::close`).
//!
//! Why the service's tasks stop first: they use the pools, and nothing should be
//! half-way through a write when the process ends. (Pooled connections, and the
//! combiners' batches, run on this main runtime, not on the HTTP workers':
//! `db::pool`, `redis::pool` and `db::combine` say why. Until they did, a
//! connection opened by a worker died with it, and every profile-service
//! termination logged `Connection could not be recycled` warnings from deadpool.)

use std::ffi::OsString;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_cors::Cors;
use actix_web::dev::Server;
use actix_web::middleware::{Compress, Condition, ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

use kai_http::Observe;
use kai_http::auth::{Authenticator, Gate};
use kai_http::stats::EndpointStats;
use kai_shared::cache::Cache;
use kai_shared::db::{Db, MigrationSet};
use kai_shared::metrics::Metrics;
use kai_shared::redis::{Redis, revocation};

use crate::config::{self, Settings};

pub use kai_http::auth::SessionCheck;

/// Builds a service's own per-request session check from what it may use: the
/// pool, the authenticator (whose revocation count it may watch) and the
/// service's metrics (its outcome counters are registered by then).
pub type MakeSessionCheck = fn(Db, Arc<Authenticator>, &Metrics) -> SessionCheck;

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(30);

/// How long shutdown waits for PostgreSQL connections to close properly: the
/// lanes' when it starts, every other once the server stopped.
const CLOSE_CONNECTIONS: Duration = Duration::from_secs(1);

/// What a service tells the platform about itself.
#[derive(Clone)]
pub struct ServiceDef {
    /// The service's short name: metric label, cursor key, logs.
    pub name: &'static str,
    pub default_port: u16,
    pub migrations: MigrationSet,
    /// Registers the service's routes (and its own app data).
    pub routes: Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>,
    pub openapi: utoipa::openapi::OpenApi,
    /// What the service caches (its `cache_rules.rs`): each policy's namespace is
    /// exported at zero from the start so dashboards and alerts see every series
    /// before its first event.
    pub cached: &'static [kai_shared::cache::Policy],
    /// Counters of the service's outbound calls by outcome, registered (every
    /// outcome at zero) on the service's registry at start.
    pub outcome_counters: &'static [kai_shared::metrics::OutcomeCounter],
    /// Builds an extra per-request session check.
    pub session_check: Option<MakeSessionCheck>,
    /// Starts the service's background tasks once the platform is built; they
    /// must end when the token is cancelled (when the replica starts shutting
    /// down, before its in-flight requests have drained).
    pub on_start: Option<OnStart>,
}

impl ServiceDef {
    /// The service `binary` with its migrations, routes and OpenAPI document (`D`);
    /// nothing cached, counted, checked or started until the methods below say so.
    pub fn new<D: utoipa::OpenApi>(
        binary: Binary,
        migrations: MigrationSet,
        routes: impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        let openapi = D::openapi();
        Self {
            name: binary.name,
            default_port: binary.default_port,
            migrations,
            routes: Arc::new(routes),
            openapi,
            cached: &[],
            outcome_counters: &[],
            session_check: None,
            on_start: None,
        }
    }

    /// What the service caches (its `cache_rules.rs`).
    pub fn caching(mut self, cached: &'static [kai_shared::cache::Policy]) -> Self {
        self.cached = cached;
        self
    }

    /// The counters of its outbound calls.
    pub fn counting(mut self, counters: &'static [kai_shared::metrics::OutcomeCounter]) -> Self {
        self.outcome_counters = counters;
        self
    }

    /// An extra per-request session check.
    pub fn checking_sessions(mut self, check: MakeSessionCheck) -> Self {
        self.session_check = Some(check);
        self
    }

    /// Its background tasks.
    pub fn on_start(
        mut self,
        start: impl Fn(web::Data<Platform>, CancellationToken) + Send + Sync + 'static,
    ) -> Self {
        self.on_start = Some(Arc::new(start));
        self
    }
}

/// Starts the service's consumer of account erasures (`kai_shared::erasure`) in
/// its consumer `group`: `purge(platform, user_id)` for each erased account,
/// until `stop`. `None` without Redis (no one to hear from).
pub fn consume_erasures<F, Fut>(
    p: &web::Data<Platform>,
    stop: CancellationToken,
    group: &'static str,
    purge: F,
) -> Option<kai_shared::events::Events>
where
    F: Fn(web::Data<Platform>, Uuid) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let auth = p.auth.clone();
    let verify: kai_shared::erasure::Verify =
        Arc::new(move |id: &str, payload: &str| verify_erasure(&auth, id, payload));
    kai_shared::erasure::consume(
        p.clone(),
        &p.settings.redis,
        &p.metrics,
        stop,
        group,
        verify,
        purge,
    )
}

/// An erasure event as published: signed by the token-issuing service, its
/// body `<event id> <user id>` naming the stream entry's own event id (a signed
/// event copied under another event's id is refused).
fn verify_erasure(auth: &Authenticator, id: &str, payload: &str) -> Result<Uuid, &'static str> {
    use kai_http::auth::control::Kind;
    let control = auth
        .verify_control(payload, &[Kind::AccountErased])
        .map_err(|e| match e {
            kai_http::auth::control::Refused::Malformed => "malformed",
            kai_http::auth::control::Refused::UnknownKey => "unknown signing key",
            kai_http::auth::control::Refused::BadSignature => "bad signature",
            kai_http::auth::control::Refused::WrongAudience => "not a control message",
            kai_http::auth::control::Refused::WrongKind => "unexpected kind",
        })?;
    let (event, user) = control.body.split_once(' ').ok_or("malformed")?;
    if event != id {
        return Err("signed for another event");
    }
    user.parse().map_err(|_| "malformed")
}

/// What the subscriber does with revocations: each one is verified (signed by
/// the token-issuing service) before it is applied; one that does not verify is
/// dropped, counted in `kai_events_rejected_total{stream="revocations"}` and
/// logged at WARN (never the message: it names a user). After each read of the
/// revoked set, a service that relies on it (no session check of its own)
/// knows every revocation only if the set held the verified marker.
fn revocation_listeners(
    auth: &Arc<Authenticator>,
    metrics: &Metrics,
    relies: bool,
) -> (
    kai_shared::cache::OnRevoked,
    Option<kai_shared::cache::OnLoaded>,
) {
    use kai_http::auth::control::Kind;
    let rejected = metrics.events_rejected.with_label_values(&["revocations"]);
    let on_revoked = {
        let (auth, rejected) = (auth.clone(), rejected.clone());
        Arc::new(
            move |message: &str| match auth.verify_control(message, &[Kind::Revocation]) {
                Ok(control) => auth.apply_revocation(&control.body),
                Err(why) => {
                    rejected.inc();
                    tracing::warn!(reason = %why, "revocation rejected: it did not verify; dropped");
                }
            },
        ) as kai_shared::cache::OnRevoked
    };
    let auth = auth.clone();
    let on_loaded = Arc::new(move |members: &[String]| {
        let (mut complete, mut refused) = (false, 0u64);
        let now = chrono::Utc::now().timestamp();
        for member in members {
            match auth.verify_control(member, &[Kind::Revocation, Kind::Complete]) {
                Ok(control) if control.kind == Kind::Complete => complete = true,
                Ok(control) => {
                    if control.exp.is_none_or(|exp| exp >= now) {
                        auth.apply_revocation(&control.body);
                    }
                }
                Err(_) => refused += 1,
            }
        }
        if refused > 0 {
            rejected.inc_by(refused);
            tracing::warn!(
                refused,
                "revoked set: members that did not verify were dropped"
            );
        }
        if relies {
            auth.set_revocations_known(complete);
        }
        complete
    }) as kai_shared::cache::OnLoaded;
    (on_revoked, Some(on_loaded))
}

/// See [`ServiceDef::on_start`].
pub type OnStart = Arc<dyn Fn(web::Data<Platform>, CancellationToken) + Send + Sync>;

/// Shared state every handler can reach (`web::Data<Platform>`): the parts, each
/// built from its own settings group. The parts the HTTP layer's extractors and
/// middleware need are also app data of their own ([`Gate`], [`Observe`],
/// [`HttpSettings`]), so nothing below this crate knows `Platform`.
pub struct Platform {
    pub service: &'static str,
    pub settings: Settings,
    pub db: Db,
    pub cache: Cache,
    pub auth: Arc<Authenticator>,
    pub metrics: Metrics,
    pub stats: Arc<EndpointStats>,
    pub started: Instant,
    pub limiter: kai_shared::ratelimit::RateLimiter,
    /// The service's Redis (none without `REDIS_URL`/`REDIS_CLUSTER_NODES`).
    pub redis: Option<Arc<Redis>>,
    /// The list cursors' key, derived from the settings once.
    pub cursor_key: kai_http::cursor::CursorKey,
    /// What the `AuthUser` extractor uses.
    pub gate: web::Data<Gate>,
    /// What the request stamp records into.
    pub observe: web::Data<Observe>,
    /// What the health routes read (readiness: a connection of its own).
    pub health: web::Data<crate::health::Health>,
}

impl Platform {
    /// Ends a session everywhere: this replica at once, every other replica of
    /// every service through Redis pub/sub.
    pub async fn revoke_session(&self, session_id: Uuid, expires_at: i64) {
        self.auth.mark_revoked(session_id);
        let Some(announced) = self.sign_revocation(session_id.to_string(), expires_at) else {
            return;
        };
        if !revocation::announce(self.redis.as_ref(), &announced, expires_at).await {
            tracing::warn!(
                "logout could not be announced through Redis; other services learn it when it answers"
            );
        }
    }
}

impl Platform {
    /// Ends every session of a user created before now — except `keep`, if given —
    /// everywhere: this replica at once, every other replica of every service
    /// through Redis pub/sub, as one user-wide watermark (not one message per
    /// session). The caller has already recorded it in the sessions table.
    pub async fn revoke_user_sessions(&self, user_id: Uuid, keep: Option<Uuid>) {
        let watermark = kai_http::auth::Watermark {
            before_ms: chrono::Utc::now().timestamp_millis(),
            keep,
        };
        self.auth.mark_user_revoked(user_id, watermark);
        // Kept in Redis as long as a token issued just now could live.
        let expires_at = chrono::Utc::now().timestamp() + self.auth.ttl().as_secs() as i64 + 60;
        let announced = kai_http::auth::user_revocation(user_id, watermark);
        let Some(announced) = self.sign_revocation(announced, expires_at) else {
            return;
        };
        if !revocation::announce(self.redis.as_ref(), &announced, expires_at).await {
            tracing::warn!(
                "revocation could not be announced through Redis; other services learn it when it answers"
            );
        }
    }
}

impl Platform {
    /// A revocation as announced: signed with the token-issuing service's key
    /// (`None`, logged, in a service without one: it issues no token to revoke).
    pub fn sign_revocation(&self, announced: String, expires_at: i64) -> Option<String> {
        match self.auth.sign_control(
            kai_http::auth::control::Kind::Revocation,
            announced,
            Some(expires_at),
        ) {
            Ok(signed) => Some(signed),
            Err(e) => {
                tracing::error!(error = %e, "a revocation cannot be signed here");
                None
            }
        }
    }
}

impl Platform {
    /// One token of a service's per-user `limit` for `user`, or a 429 with
    /// `Retry-After` counted in `refusals` under the limit's name.
    pub async fn take_per_user(
        &self,
        refusals: &kai_shared::metrics::OutcomeCounter,
        limit: &kai_shared::ratelimit::Limit,
        user: Uuid,
    ) -> Result<(), kai_http::ApiError> {
        self.limiter
            .check(limit, &user.to_string())
            .await
            .map_err(|e| {
                self.metrics.count_outcome(refusals, limit.name);
                e.into()
            })
    }

    /// A slot among `user`'s running pieces of work (`max` at once on this
    /// replica), or a 429 with `Retry-After` counted in `refusals` as `name`.
    pub fn running_slot(
        &self,
        refusals: &kai_shared::metrics::OutcomeCounter,
        running: &kai_shared::ratelimit::Running,
        name: &'static str,
        max: u32,
        user: Uuid,
    ) -> Result<kai_shared::ratelimit::Slot, kai_http::ApiError> {
        running
            .acquire(&user.to_string(), max, Duration::from_secs(2))
            .map_err(|e| {
                self.metrics.count_outcome(refusals, name);
                e.into()
            })
    }
}

impl Platform {
    /// The `limit` and `cursor` of a cursor-mode list, for `user`, bound to this
    /// service (a 400 naming the parameter at fault).
    pub fn cursor_query(
        &self,
        user: Uuid,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<kai_http::cursor::CursorQuery, kai_http::ApiError> {
        kai_http::cursor::CursorQuery::parse(&self.cursor_key, self.service, user, limit, cursor)
    }
}

impl Platform {
    /// Metrics, the pool (and migrations), auth, Redis and the cache: everything a
    /// handler reaches through `web::Data<Platform>`. Background tasks stop with `stop`.
    pub async fn build(
        settings: Settings,
        def: &ServiceDef,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let metrics = service_metrics(def)?;
        let db = database(&settings, def, &metrics).await?;
        db.attach_replicas(&settings.database, stop.clone());
        let auth = Arc::new(Authenticator::new(
            settings.auth.signing_key.clone(),
            settings.auth.verifying_keys.clone(),
            settings.auth.token_ttl,
        ));
        let redis = redis(&settings, &metrics).await?;
        // A service without a session check of its own (journal, conversation)
        // learns revocations from Redis only: with Redis, it knows none until it
        // has read the complete revoked set. Without Redis it is one process,
        // and every revocation is its own (in-process).
        let relies = def.session_check.is_none();
        if redis.is_some() && relies {
            auth.set_revocations_known(false);
        }
        let cache = Cache::with_redis(
            def.name,
            &settings.cache,
            &settings.redis,
            redis.clone(),
            &metrics,
            revocation_listeners(&auth, &metrics, relies),
            stop,
        )
        .context("configuring the cache")?;
        if let Some(replicas) = db.replicas() {
            cache.track_positions(replicas.clone());
        }
        let stats = Arc::new(EndpointStats::default());
        let gate = web::Data::new(Gate {
            auth: auth.clone(),
            session_check: def
                .session_check
                .map(|make| make(db.clone(), auth.clone(), &metrics)),
        });
        let observe = web::Data::new(Observe {
            stats: stats.clone(),
            slow_request_threshold: settings.http.slow_request_threshold,
            access_log_sample: settings.http.access_log_sample,
        });
        let readiness = crate::readiness::Readiness::new(
            &settings.database,
            settings.server.readiness_grace,
            def.migrations,
            def.name,
        );
        let health = web::Data::new(crate::health::Health {
            service: def.name,
            auth: auth.clone(),
            started: Instant::now(),
            db: db.clone(),
            cache: cache.clone(),
            redis: redis.clone(),
            stats: stats.clone(),
            readiness,
        });
        Ok(Platform {
            health,
            service: def.name,
            limiter: kai_shared::ratelimit::RateLimiter::new(redis.clone(), def.name),
            redis,
            cursor_key: kai_http::cursor::CursorKey::from_database_url(&settings.database.url),
            settings,
            db,
            cache,
            auth,
            metrics,
            stats,
            gate,
            observe,
            started: Instant::now(),
        })
    }
}

/// The service's registry: the platform's metrics, its cache namespaces and
/// outcome counters exported at zero.
fn service_metrics(def: &ServiceDef) -> anyhow::Result<Metrics> {
    let metrics = Metrics::new(def.name)
        .with_outcome_counters(def.outcome_counters)
        .context("registering the service's metrics")?;
    for ns in def.cached.iter().map(|policy| policy.namespace) {
        metrics.cache_hits.with_label_values(&[ns]);
        metrics.cache_misses.with_label_values(&[ns]);
        metrics.cache_errors.with_label_values(&[ns]);
        for reason in ["forged", "unknown_key", "malformed"] {
            metrics.cache_rejected.with_label_values(&[ns, reason]);
        }
    }
    Ok(metrics)
}

/// The pool, its TLS checked, migrations applied unless `RUN_MIGRATIONS=false`.
async fn database(settings: &Settings, def: &ServiceDef, metrics: &Metrics) -> anyhow::Result<Db> {
    let db = Db::new(&settings.database, metrics);
    db.check_tls(&settings.database).await?;
    if settings.server.run_migrations {
        kai_shared::db::migrate(&db, def.migrations).await?;
    }
    Ok(db)
}

/// Redis, if configured; a configuration Redis refuses (password, TLS trust)
/// stops the start, an unreachable Redis does not.
async fn redis(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Option<Arc<Redis>>> {
    let redis = Redis::from_settings(&settings.redis, metrics)?;
    if let Some(redis) = &redis {
        redis.check_configuration_at_start().await?;
        redis.preload_scripts(kai_shared::lua_scripts()).await;
    }
    Ok(redis)
}

/// The HTTP server on `listener`: the platform's middleware around the service's
/// routes, health, metrics and docs.
pub fn run(
    listener: TcpListener,
    platform: web::Data<Platform>,
    def: ServiceDef,
    opts: RunOptions,
) -> anyhow::Result<Server> {
    // The served document (see `http::openapi::complete`) and, from it, the
    // methods of each route: the `Allow` of a 405 and what a preflight may ask.
    let document = kai_http::openapi::complete(&def.openapi);
    let operations = web::Data::new(kai_http::openapi::Operations::from_document(&document));
    let http_settings = web::Data::new(platform.settings.http.clone());
    let http_metrics = kai_http::prometheus_middleware(&platform.metrics)?;
    let mut server = HttpServer::new(move || {
        // No origin allowed (the default): no cross-origin request can succeed,
        // so the CORS middleware (and its per-route preflight check) is left out
        // of every request's path.
        let origins = &platform.settings.http.cors_allowed_origins;
        let cors_on = !origins.is_empty();
        let cors = Condition::new(cors_on, cors(origins, &operations));
        let preflight = Condition::new(cors_on, from_fn(kai_http::cors::preflight_per_route));
        let (routes, document) = (def.routes.clone(), document.clone());
        App::new()
            .app_data(platform.clone())
            .app_data(platform.gate.clone())
            .app_data(platform.observe.clone())
            .app_data(platform.health.clone())
            .app_data(http_settings.clone())
            .app_data(operations.clone())
            .app_data(kai_http::query_config())
            .app_data(kai_http::path_config())
            .app_data(kai_http::payload_config())
            .wrap(ErrorHandlers::new().handler(
                actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                kai_http::method_not_allowed,
            ))
            .wrap(from_fn(kai_http::skip_small_bodies))
            .wrap(Compress::default())
            .wrap(cors)
            .wrap(preflight)
            // Inside `stamp`, which bounds the method before this labels it.
            .wrap(http_metrics.clone())
            .wrap(from_fn(kai_http::stamp))
            .configure(crate::health::routes)
            .route("/metrics", web::get().to(metrics_endpoint))
            // The service's routes before the docs: actix tries resources in this
            // order, and the docs' `/docs/{_:.*}` is a regex every API request
            // would otherwise run first (the paths never overlap).
            .configure(|cfg| routes(cfg))
            .configure(|cfg| docs(cfg, document))
            .default_service(web::to(kai_http::not_found))
    })
    .listen(listener)?
    .shutdown_timeout(DRAIN.as_secs())
    .client_request_timeout(Duration::from_secs(10))
    .client_disconnect_timeout(Duration::from_secs(5))
    .max_connection_rate(1024);
    // Signals are [`Application::run_until_stopped`]'s (see the module's docs).
    server = server.disable_signals();
    if let Some(workers) = opts.workers {
        server = server.workers(workers);
    }
    Ok(server.run())
}

/// `GET /metrics`: the registry in Prometheus' text format.
async fn metrics_endpoint(platform: web::Data<Platform>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(platform.metrics.render())
}

fn cors(allowed_origins: &[String], operations: &kai_http::openapi::Operations) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(operations.all_methods().iter().map(String::as_str))
        .allowed_headers(kai_http::cors::ALLOWED_HEADERS)
        .expose_headers(kai_http::cors::EXPOSED_HEADERS)
        .max_age(3600);
    for origin in allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// `/openapi.json` and the bundled Swagger UI; `/docs` (SPEC §4) leads to `/docs/`.
fn docs(cfg: &mut web::ServiceConfig, document: serde_json::Value) {
    cfg.route(
        "/docs",
        web::get().to(|| async {
            actix_web::HttpResponse::PermanentRedirect()
                .insert_header(("location", "/docs/"))
                .finish()
        }),
    )
    .service(
        SwaggerUi::new(kai_http::DOCS_ASSETS).external_url_unchecked("/openapi.json", document),
    );
}

/// How the server runs: signals and workers differ between a binary and a test.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub handle_signals: bool,
    pub workers: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            handle_signals: true,
            workers: None,
        }
    }
}

/// A bound, ready-to-run service.
pub struct Application {
    port: u16,
    server: Server,
    platform: web::Data<Platform>,
    stop: CancellationToken,
    /// Cancelled when shutdown starts (a child of `stop`): the service's tasks.
    draining: CancellationToken,
    handle_signals: bool,
}

impl Application {
    /// Builds the platform (connects, migrates unless `RUN_MIGRATIONS=false`),
    /// binds, and builds the server around the service's routes.
    pub async fn build(
        settings: Settings,
        def: ServiceDef,
        opts: RunOptions,
    ) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let draining = stop.child_token();
        let (host, port) = (settings.server.host, settings.server.port);
        let platform = web::Data::new(Platform::build(settings, &def, stop.clone()).await?);
        if let Some(start) = &def.on_start {
            start(platform.clone(), draining.clone());
        }
        let listener =
            TcpListener::bind((host, port)).with_context(|| format!("binding {host}:{port}"))?;
        let port = listener.local_addr()?.port();
        let server = run(listener, platform.clone(), def, opts)?;
        Ok(Self {
            port,
            server,
            platform,
            stop,
            draining,
            handle_signals: opts.handle_signals,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests read counters from it).
    pub fn platform(&self) -> web::Data<Platform> {
        self.platform.clone()
    }

    /// A handle to stop the server gracefully (tests).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until a signal (or the handle) stops the server and in-flight
    /// requests have finished.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        if self.handle_signals {
            tokio::spawn(stop_on_signal(
                self.server.handle(),
                self.draining.clone(),
                self.platform.db.clone(),
            ));
        }
        let result = self.server.await;
        self.stop.cancel();
        // Every connection says goodbye to PostgreSQL (Terminate) instead of
        // being reset when the process ends.
        tokio::join!(
            self.platform.db.close(CLOSE_CONNECTIONS),
            self.platform.health.readiness.close(CLOSE_CONNECTIONS),
        );
        result
    }
}

/// SIGTERM: the service's tasks stop, then the server drains and stops. SIGINT,
/// SIGQUIT: the same without waiting for in-flight requests. A second signal while
/// the first is being carried out ends the process at once (exit status 1): once
/// listened for, a signal no longer terminates the process by itself, and actix
/// handles one stop at a time, so a second Ctrl-C would otherwise wait out the
/// drain.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    draining: CancellationToken,
    db: kai_shared::db::Db,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) else {
        tracing::error!("cannot listen for signals: stop the process with SIGKILL");
        return;
    };
    let mut stopping = false;
    loop {
        let (name, graceful) = tokio::select! {
            _ = term.recv() => ("SIGTERM", true),
            _ = int.recv() => ("SIGINT", false),
            _ = quit.recv() => ("SIGQUIT", false),
        };
        if stopping {
            tracing::info!(signal = name, "second signal: exiting without waiting");
            std::process::exit(1);
        }
        stopping = true;
        tracing::info!(signal = name, graceful, "shutting down");
        draining.cancel();
        // The lanes' connections are driven by the HTTP workers: closed while
        // those still run (later reads take a connection of their own).
        db.close_lanes(CLOSE_CONNECTIONS).await;
        // The command is sent now; the server's own future ends when it is done.
        drop(server.stop(graceful));
    }
}

/// The command line every binary shares: a subcommand, the platform's settings and
/// the service's own (`S`), each a flag that is also read from its variable.
#[derive(Parser)]
#[command(
    version,
    about = "A Kai service: `serve` (the default) or `migrate`; every setting below is a flag and a variable.",
    after_help = "Every setting is read from the environment variable shown (a .env file in the \
                  working directory is read too; real environment wins). A flag wins over its variable."
)]
struct Cli<S: clap::Args> {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    service: S,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (unless RUN_MIGRATIONS=false), then serve HTTP (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
}

/// What a service's binary tells [`main`] before anything is read.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The short name (`<name>-service` is the binary).
    pub name: &'static str,
    pub default_port: u16,
    /// Whether the service issues access tokens: serving, it alone needs (and
    /// holds) `AUTH_SIGNING_KEY_FILE`; `migrate` never signs, so a migration Job
    /// never holds it.
    pub signs_tokens: bool,
}

impl Binary {
    /// `<name>-service`, listening on `default_port` unless `PORT` says otherwise.
    pub const fn new(name: &'static str, default_port: u16) -> Self {
        Self {
            name,
            default_port,
            signs_tokens: false,
        }
    }

    /// The binary of the service that issues access tokens.
    pub const fn signing_tokens(self) -> Self {
        Self {
            signs_tokens: true,
            ..self
        }
    }
}

/// The whole of a service's `main`: read and validate the configuration (one clear
/// line and exit code 2 on a bad value), start telemetry, then serve or migrate.
/// `service` turns the service's own settings (`S`) into its [`ServiceDef`].
pub fn main<S: clap::Args>(
    binary: Binary,
    service: impl FnOnce(S) -> anyhow::Result<ServiceDef>,
) -> ExitCode {
    let name = binary.name;
    with_allocator_settings(name);
    let cli = match read_cli::<S>(binary) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    kai_http::telemetry::init(&cli.settings.log.rust_log, cli.settings.log.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}-service: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let def = service(cli.service)?;
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => migrate(&cli.settings, &def).await,
            Command::Serve => serve(cli.settings, def).await,
        }
    });
    exit_code(name, result)
}

/// The settings of the services' global allocator (mimalloc, declared in each
/// service's `main.rs`: an allocator belongs to a binary, so tools, tests and
/// benches choose their own) that return memory
/// to the system as soon as it is freed, instead of mimalloc's defaults, which
/// commit whole arenas up front and purge freed pages only later, on the thread
/// that freed them: an idle service that hashes passwords held 37 MiB and 82 MiB
/// after 100 logins (argon2id's 19 MiB per hash stayed with the blocking thread that ran it
/// until the thread exited); with these, 19 and 20 MiB (docs/PERFORMANCE.md).
/// An operator's own value of either variable wins.
pub const ALLOCATOR_SETTINGS: &[(&str, &str)] = &[
    // Commit arena memory as it is used, not the whole arena at once.
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    // Give freed pages back at once (madvise), not after a delay that only
    // elapses when the freeing thread allocates again.
    ("MIMALLOC_PURGE_DELAY", "0"),
];

/// mimalloc reads its settings from the environment once, before `main`, so
/// they are applied by re-executing the binary (same pid, same arguments) with
/// them in its environment; it happens once, before anything else runs. When
/// the re-execution is impossible, the process carries on with mimalloc's
/// defaults and says so.
fn with_allocator_settings(name: &str) {
    use std::os::unix::process::CommandExt;
    let missing: Vec<&(&str, &str)> = ALLOCATOR_SETTINGS
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args);
    for (k, v) in missing {
        cmd.env(k, v);
    }
    // Only returns on failure.
    let err = cmd.exec();
    eprintln!(
        "{name}-service: running with the allocator's default settings (re-executing with {} failed: {err})",
        ALLOCATOR_SETTINGS
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Reads `.env`, then the environment and the command line; prints the help, the
/// version or the error itself (exit code 2 for an error).
fn read_cli<S: clap::Args>(binary: Binary) -> Result<Cli<S>, ExitCode> {
    let Binary {
        name,
        default_port,
        signs_tokens,
    } = binary;
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("{name}-service: configuration error: .env: {e}");
        return Err(ExitCode::from(2));
    }
    let cmd = config::with_port_default(Cli::<S>::command(), default_port)
        .name(Box::leak(format!("{name}-service").into_boxed_str()) as &str)
        .mut_args(|a| a.hide_env_values(true));
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let parsed = config::parse::<Cli<S>>(cmd.clone(), |k| std::env::var(k).ok(), argv.clone())
        .and_then(|mut cli| {
            cli.settings = cli.settings.check()?;
            if signs_tokens && matches!(cli.command, None | Some(Command::Serve)) {
                cli.settings.auth.require_signing_key()?;
            }
            Ok(cli)
        });
    match parsed {
        Ok(cli) => Ok(cli),
        Err(e) if e.var == config::COMMAND_LINE => {
            // `--help`, `--version` or an unknown flag: clap says it best (and exits).
            let bin = OsString::from(format!("{name}-service"));
            let _ = cmd.get_matches_from(std::iter::once(bin).chain(argv));
            eprintln!("{name}-service: {e}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("{name}-service: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// `migrate`: apply pending migrations and stop.
async fn migrate(settings: &Settings, def: &ServiceDef) -> anyhow::Result<()> {
    let db = Db::new(&settings.database, &Metrics::new(def.name));
    db.check_tls(&settings.database).await?;
    let applied = kai_shared::db::migrate(&db, def.migrations).await?;
    tracing::info!(applied, "migrations up to date");
    Ok(())
}

/// `serve`: build the application, then run it until a signal.
async fn serve(settings: Settings, def: ServiceDef) -> anyhow::Result<()> {
    let name = def.name;
    let app = Application::build(settings, def, RunOptions::default()).await?;
    tracing::info!(port = app.port(), "{name}-service listening");
    app.run_until_stopped().await.context("serving")
}

fn exit_code(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "{name}-service stopped with an error"
            );
            eprintln!("{name}-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}
