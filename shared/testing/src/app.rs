//! A service under test: its settings and a running [`TestApp`].

use std::time::{Duration, Instant};

use kai_platform::config::Settings;
use kai_platform::server::{Application, RunOptions, ServiceDef};

use super::auth_env;

/// Settings for a test: port 0, quiet pool timeouts, a private cache prefix.
pub fn settings(
    database_url: &str,
    redis_url: Option<&str>,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Settings {
    let mut env: std::collections::HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("DB_POOL_SIZE", "8"),
        ("DB_POOL_TIMEOUT_SECS", "5"),
        ("REDIS_TIMEOUT_MS", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(auth_env().map(|(k, v)| (k.to_owned(), v)))
    .collect();
    if let Some(url) = redis_url {
        env.insert("REDIS_URL".into(), url.into());
    }
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let mut s = Settings::from_lookup(0, |k| env.get(k).cloned()).expect("valid test settings");
    s.redis.prefix = prefix.to_owned();
    s
}

/// A service's own settings (`S`, e.g. conversation's `LlmSettings`) from `pairs`.
pub fn service_settings<S: clap::Args>(pairs: &[(&str, &str)]) -> S {
    kai_platform::config::args_from_lookup(kai_platform::config::command::<S>(), |k| {
        pairs
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("valid test service settings")
}

/// One running service under test.
pub struct TestApp {
    pub address: String,
    pub platform: actix_web::web::Data<kai_platform::Platform>,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl TestApp {
    /// Builds and starts `def` with `settings` (migrations applied) on a free port;
    /// on a [`super::TestDb`], migrated as the service's migration role and served
    /// as its serving role ([`super::roles`]). With Redis, the revoked set is
    /// first marked complete (signed with the test key, as profile-service would:
    /// see [`crate::mark_revocations_complete`]) unless it already is, so journal
    /// and conversation started without profile-service become ready.
    pub async fn start(def: ServiceDef, settings: Settings) -> Self {
        crate::mark_revocations_complete(&settings).await;
        Self::start_as_is(def, settings).await
    }

    /// [`TestApp::start`] without touching the revoked set (a test of a
    /// replica that starts while the set is missing its marker).
    pub async fn start_as_is(def: ServiceDef, settings: Settings) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = super::roles::serve_as_roles(settings, def.name, def.migrations).await;
        let app = Application::build(
            settings,
            def,
            RunOptions {
                handle_signals: false,
                workers: Some(2),
            },
        )
        .await
        .expect("application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let platform = app.platform();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let me = Self {
            address,
            platform,
            client,
            handle,
        };
        me.wait_for_redis_subscription().await;
        me
    }

    /// With Redis, waits until the invalidation subscription is up, so a test's
    /// first cross-replica write is heard.
    async fn wait_for_redis_subscription(&self) {
        if self.platform.cache.redis_available().is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.platform.cache.l1_trusted() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) until this replica knows every revocation; true if it does.
    pub async fn wait_revocations_known(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.platform.auth.revocations_known() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Statements this service has run so far.
    pub fn statements(&self) -> u64 {
        self.platform.db.statements_executed()
    }

    /// GET `path` as the holder of `token`: the response, unread.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// GET `path` as the holder of `token`: status, `X-Cache` (empty if absent)
    /// and the JSON body (`Null` if none).
    pub async fn read(&self, token: &str, path: &str) -> (u16, String, serde_json::Value) {
        let res = self.get(token, path).await;
        let status = res.status().as_u16();
        let cache = res
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default();
        (
            status,
            cache,
            res.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Follows `next_cursor` from `first` (a list path with `limit=`) to the last
    /// page, checking `has_more` agrees on every page; returns each item of
    /// `items` as (`time_field`, id) in the order served, and the page count.
    pub async fn walk_cursor_pages(
        &self,
        token: &str,
        first: &str,
        items: &str,
        time_field: &str,
    ) -> (Vec<(chrono::DateTime<chrono::Utc>, String)>, usize) {
        let (mut seen, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
        loop {
            let path = match &cursor {
                None => first.to_owned(),
                Some(c) => format!("{first}&cursor={c}"),
            };
            let (status, _, page) = self.read(token, &path).await;
            assert_eq!(status, 200, "{path}: {page}");
            pages += 1;
            for item in page[items].as_array().expect("items array") {
                let at = item[time_field]
                    .as_str()
                    .expect("timestamp")
                    .parse()
                    .expect("RFC 3339");
                seen.push((at, item["id"].as_str().expect("id").to_owned()));
            }
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(page["has_more"], true, "{page}");
                    cursor = Some(c.to_owned());
                }
                None => {
                    assert_eq!(page["has_more"], false, "{page}");
                    return (seen, pages);
                }
            }
            assert!(pages < 1000, "paging does not terminate");
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("metrics text")
    }

    /// GET `path` without credentials; the status code (health probes).
    pub async fn status(&self, path: &str) -> u16 {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    }

    /// GET `path` without credentials and parse the JSON answer (health, docs).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON body")
    }

    /// Asserts that `/openapi.json` is an OpenAPI 3 document listing `paths` and
    /// the bearer scheme; returns it.
    pub async fn assert_openapi_documents(&self, paths: &[&str]) -> serde_json::Value {
        let doc = self.get_json("/openapi.json").await;
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{doc}"
        );
        for path in paths {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from /openapi.json"
            );
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        doc
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}
