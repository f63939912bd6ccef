use kai_testing::{self as testing, TestApp, TestDb, TestPrefix};
use reqwest::Response;
use serde_json::{Value, json};
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";

/// A running profile-service with its own database and Redis prefix.
pub struct Profiles {
    pub app: TestApp,
    pub db: TestDb,
    pub prefix: TestPrefix,
    redis: Option<String>,
}

/// A registered, logged-in user.
#[derive(Clone)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

pub async fn spawn() -> Profiles {
    spawn_with(Some(&testing::redis_url())).await
}

pub async fn spawn_with(redis: Option<&str>) -> Profiles {
    spawn_with_env(redis, &[]).await
}

/// A profile-service behind a "proxy" on loopback: `X-Forwarded-For` from the
/// test client is believed, so a test can act as many client addresses.
pub async fn spawn_behind_proxy() -> Profiles {
    spawn_with_env(
        Some(&testing::redis_url()),
        &[("TRUSTED_PROXIES", "127.0.0.0/8, ::1/128")],
    )
    .await
}

pub async fn spawn_with_env(redis: Option<&str>, extra: &[(&str, &str)]) -> Profiles {
    spawn_service(profile_service::service(), redis, extra).await
}

/// A profile-service whose memo of live sessions keeps each answer for an hour
/// (`sessions::remembering_for`): whether a check is answered from the memo
/// then depends on the order of events only, not on the machine's speed.
pub async fn spawn_remembering_for_an_hour(redis: Option<&str>) -> Profiles {
    let def = profile_service::service().checking_sessions(|db, auth, metrics| {
        profile_service::sessions::remembering_for(
            std::time::Duration::from_secs(3600),
            db,
            auth,
            metrics,
        )
    });
    spawn_service(def, redis, &[]).await
}

async fn spawn_service(
    def: kai_platform::ServiceDef,
    redis: Option<&str>,
    extra: &[(&str, &str)],
) -> Profiles {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(redis.unwrap_or(&testing::redis_url()));
    let settings = testing::settings(&db.url, redis, &prefix.prefix, extra);
    let app = TestApp::start(def, settings).await;
    Profiles {
        app,
        db,
        prefix,
        redis: redis.map(str::to_owned),
    }
}

/// A unique, valid e-mail address.
pub fn email() -> String {
    format!("user-{}@example.org", Uuid::new_v4().simple())
}

impl Profiles {
    fn settings(&self) -> kai_platform::config::Settings {
        testing::settings(
            &self.db.url,
            self.redis.as_deref(),
            &self.prefix.prefix,
            &[],
        )
    }

    /// Another replica on the same database and Redis prefix.
    pub async fn replica(&self) -> TestApp {
        TestApp::start(profile_service::service(), self.settings()).await
    }

    /// Another service on the same database and Redis prefix that only
    /// verifies profile's tokens, as journal and conversation do (this crate
    /// depends on no other service): `GET /api/journal/entries` behind `AuthUser`.
    pub async fn journal(&self) -> TestApp {
        #[derive(utoipa::OpenApi)]
        struct NoDocument;
        let def = kai_platform::ServiceDef::new::<NoDocument>(
            kai_platform::server::Binary::new("verifier", 0),
            profile_service::MIGRATIONS,
            |cfg| {
                cfg.route(
                    "/api/journal/entries",
                    actix_web::web::get().to(|_: kai_http::auth::AuthUser| async {
                        actix_web::HttpResponse::Ok().json(serde_json::json!({ "entries": [] }))
                    }),
                );
            },
        );
        TestApp::start(def, self.settings()).await
    }

    pub async fn register(&self, body: Value) -> Response {
        self.app
            .client
            .post(self.app.url("/api/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.app
            .client
            .post(self.app.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn logout(&self, token: &str) -> Response {
        self.app
            .client
            .post(self.app.url("/api/auth/logout"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, token: &str, body: Value) -> Response {
        self.app
            .client
            .patch(self.app.url("/api/profile"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Registers a fresh user and logs them in.
    pub async fn account(&self) -> Account {
        let email = email();
        let res = self
            .register(json!({"email": email, "password": PASSWORD}))
            .await;
        assert_eq!(res.status(), 201);
        let res = self.login(&email, PASSWORD).await;
        assert_eq!(res.status(), 200);
        let token: Value = res.json().await.unwrap();
        Account {
            id: token["user_id"].as_str().unwrap().parse().unwrap(),
            email,
            token: token["access_token"].as_str().unwrap().to_owned(),
        }
    }
}

/// GETs on `app` and returns status, X-Cache and JSON body.
pub async fn read(app: &TestApp, token: &str, path: &str) -> (u16, String, Value) {
    app.read(token, path).await
}

pub use kai_testing::assert_problem;

/// argon2id verifications this service ran so far (its own registry's
/// `kai_password_verifications_total`, every outcome).
pub async fn verifications(p: &Profiles) -> u64 {
    p.app
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("kai_password_verifications_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Session checks `app` ran so far (`kai_session_checks_total`): answered from
/// its memo of live sessions, and by PostgreSQL (one `SESSION_LIVE` each).
pub async fn session_checks(app: &TestApp) -> (u64, u64) {
    let text = app.metrics().await;
    let count = |outcome: &str| {
        let series = format!("kai_session_checks_total{{outcome=\"{outcome}\",");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} exported")) as u64
    };
    (count("memo"), count("db"))
}
