use kai_testing::{self as testing, TestApp, TestDb, TestPrefix};
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};

/// A running journal-service with its own database and Redis prefix.
pub struct Journal {
    pub app: TestApp,
    pub db: TestDb,
    pub prefix: TestPrefix,
}

/// A user of the service: an id and a token for it.
pub use kai_testing::TestUser as User;

pub async fn spawn() -> Journal {
    spawn_with(Some(&testing::redis_url()), &[]).await
}

pub async fn spawn_with(redis: Option<&str>, extra: &[(&str, &str)]) -> Journal {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(redis.unwrap_or(&testing::redis_url()));
    let settings = testing::settings(&db.url, redis, &prefix.prefix, extra);
    let app = TestApp::start(journal_service::service(), settings).await;
    Journal { app, db, prefix }
}

/// A journal-service with some of its own settings (`JOURNAL_*`) set.
pub async fn spawn_limited(env: &[(&str, &str)]) -> Journal {
    let db = TestDb::create().await;
    let redis = testing::redis_url();
    let prefix = TestPrefix::new(&redis);
    let settings = testing::settings(&db.url, Some(&redis), &prefix.prefix, env);
    let service = journal_service::service_with(&testing::service_settings(env));
    let app = TestApp::start(service, settings).await;
    Journal { app, db, prefix }
}

impl Journal {
    /// Another replica on the same database and Redis prefix.
    pub async fn replica(&self) -> TestApp {
        let settings = testing::settings(
            &self.db.url,
            Some(&self.prefix.url),
            &self.prefix.prefix,
            &[],
        );
        TestApp::start(journal_service::service(), settings).await
    }

    pub fn get(&self, user: &User, path: &str) -> RequestBuilder {
        self.app
            .client
            .get(self.app.url(path))
            .bearer_auth(&user.token)
    }

    pub async fn create(&self, user: &User, body: Value) -> Response {
        self.app
            .client
            .post(self.app.url("/api/journal/entries"))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates an entry and returns its JSON.
    pub async fn entry(&self, user: &User, content: &str) -> Value {
        let res = self.create(user, json!({ "content": content })).await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub async fn patch(&self, user: &User, id: &str, body: Value) -> Response {
        self.app
            .client
            .patch(self.app.url(&format!("/api/journal/entries/{id}")))
            .bearer_auth(&user.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, user: &User, id: &str) -> Response {
        self.app
            .client
            .delete(self.app.url(&format!("/api/journal/entries/{id}")))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }
}

/// GETs on `app` and returns status, X-Cache and JSON body.
pub async fn read(app: &TestApp, user: &User, path: &str) -> (u16, String, Value) {
    app.read(&user.token, path).await
}

pub use kai_testing::assert_problem;
