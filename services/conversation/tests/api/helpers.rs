use kai_testing::{self as testing, TestApp, TestDb, TestPrefix};
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fake_llm::FakeLlm;

/// A running conversation-service with its own database, Redis prefix and
/// (unless offline) fake LLM.
pub struct Service {
    pub app: TestApp,
    pub db: TestDb,
    pub prefix: TestPrefix,
    pub llm: Option<FakeLlm>,
}

/// A user of the service: an id and a token for it.
pub use kai_testing::TestUser as User;

/// With Redis and a fake LLM.
pub async fn spawn() -> Service {
    spawn_with(Some(&testing::redis_url()), true, &[]).await
}

/// With Redis and no `LLM_BASE_URL` (the offline responder answers).
pub async fn spawn_offline() -> Service {
    spawn_with(Some(&testing::redis_url()), false, &[]).await
}

pub async fn spawn_with(redis: Option<&str>, fake_llm: bool, extra: &[(&str, &str)]) -> Service {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(redis.unwrap_or(&testing::redis_url()));
    let llm = fake_llm.then(FakeLlm::start);
    let mut env: Vec<(&str, &str)> = extra.to_vec();
    if let Some(llm) = &llm {
        env.push(("LLM_BASE_URL", &llm.base_url));
        env.push(("LLM_API_KEY", "test-key"));
    }
    let settings = testing::settings(&db.url, redis, &prefix.prefix, &env);
    let service = conversation_service::service(&testing::service_settings(&env));
    let app = TestApp::start(service, settings).await;
    Service {
        app,
        db,
        prefix,
        llm,
    }
}

impl Service {
    pub fn llm(&self) -> &FakeLlm {
        self.llm.as_ref().expect("this service has a fake LLM")
    }

    /// Another replica on the same database, Redis prefix and LLM.
    pub async fn replica(&self) -> TestApp {
        let mut env = Vec::new();
        if let Some(llm) = &self.llm {
            env.push(("LLM_BASE_URL", llm.base_url.as_str()));
        }
        let settings = testing::settings(
            &self.db.url,
            Some(&self.prefix.url),
            &self.prefix.prefix,
            &env,
        );
        let service = conversation_service::service(&testing::service_settings(&env));
        TestApp::start(service, settings).await
    }

    pub fn get(&self, user: &User, path: &str) -> RequestBuilder {
        self.app
            .client
            .get(self.app.url(path))
            .bearer_auth(&user.token)
    }

    pub fn post(&self, user: &User, path: &str, body: &Value) -> RequestBuilder {
        self.app
            .client
            .post(self.app.url(path))
            .bearer_auth(&user.token)
            .json(body)
    }

    /// Creates a conversation and returns its id.
    pub async fn conversation(&self, user: &User, title: &str) -> String {
        let res = self
            .post(user, "/api/conversations", &json!({ "title": title }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn send(&self, user: &User, conversation: &str, body: Value) -> Response {
        self.post(
            user,
            &format!("/api/conversations/{conversation}/messages"),
            &body,
        )
        .send()
        .await
        .unwrap()
    }

    /// Sends a message that must succeed; returns the exchange.
    pub async fn say(&self, user: &User, conversation: &str, content: &str) -> Value {
        let res = self
            .send(user, conversation, json!({ "content": content }))
            .await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub async fn batch(&self, user: &User, conversation: &str, messages: Value) -> Response {
        self.post(
            user,
            &format!("/api/conversations/{conversation}/messages/batch"),
            &json!({ "messages": messages }),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn delete(&self, user: &User, conversation: &str) -> Response {
        self.app
            .client
            .delete(self.app.url(&format!("/api/conversations/{conversation}")))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap()
    }

    /// The conversation's messages, straight from PostgreSQL.
    pub async fn stored_messages(&self, conversation: &str) -> Vec<(String, String)> {
        let conn = self.db.connect().await;
        let id = Uuid::parse_str(conversation).unwrap();
        conn.query("SELECT role, content FROM conversation.messages WHERE conversation_id = $1 ORDER BY created_at, id", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

/// `n` short batch messages.
pub fn batch_of(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({ "role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("m{i}") })).collect())
}

/// GETs on `app` and returns status, X-Cache and JSON body.
pub async fn read(app: &TestApp, user: &User, path: &str) -> (u16, String, Value) {
    app.read(&user.token, path).await
}

pub use kai_testing::assert_problem;
