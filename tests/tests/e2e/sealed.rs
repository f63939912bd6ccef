//! Sealed cache entries (SPEC §6): what journal-service stores in Redis is
//! encrypted and bound to its key name, so Redis holds no journal text and an
//! entry copied under another user's key, altered, or built by hand is refused
//! — counted in `kai_cache_rejected_total{namespace,reason}` and answered from
//! PostgreSQL (`X-Cache: MISS`) with the reader's own data.

use kai_testing::{self as testing, TestApp, TestDb, TestPrefix};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::system::call;

const LIST: &str = "/api/journal/entries";

struct Journal {
    app: TestApp,
    redis: redis::Connection,
    prefix: TestPrefix,
    _db: TestDb,
}

async fn journal() -> Journal {
    let db = TestDb::create().await;
    let prefix = TestPrefix::new(&testing::redis_url());
    let settings = testing::settings(&db.url, Some(&prefix.url), &prefix.prefix, &[]);
    let app = TestApp::start(journal_service::service(), settings).await;
    let redis = redis::Client::open(prefix.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    Journal {
        app,
        redis,
        prefix,
        _db: db,
    }
}

impl Journal {
    /// A user with one entry of `text`, their list read once (stored in Redis).
    async fn user_with(&self, text: &str) -> (Uuid, String) {
        let id = Uuid::new_v4();
        let token = testing::token(id);
        let (status, _) = call(
            &self.app,
            Method::POST,
            LIST,
            Some(&token),
            Some(json!({"content": text})),
        )
        .await;
        assert_eq!(status, 201);
        let (status, cache, _) = self.app.read(&token, LIST).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"));
        (id, token)
    }

    /// The Redis key of `user`'s first list page (the one entry key of the
    /// user's scope whose logical key is a list).
    fn list_key(&mut self, user: Uuid) -> String {
        let pattern = format!("{}:{{journal:{user}}}:*", self.prefix.prefix);
        let keys: Vec<String> =
            redis::TypedCommands::scan_match::<_, String>(&mut self.redis, pattern)
                .unwrap()
                .filter_map(Result::ok)
                .filter(|k| k.contains(":journal:list:"))
                .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.into_iter().next().unwrap()
    }

    fn get(&mut self, key: &str) -> Vec<u8> {
        redis::cmd("GET").arg(key).query(&mut self.redis).unwrap()
    }

    fn set(&mut self, key: &str, value: &[u8]) {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("KEEPTTL")
            .query::<()>(&mut self.redis)
            .unwrap();
    }

    /// `user`'s list, read past this replica's memory: from Redis, or PostgreSQL.
    async fn read_from_l2(&self, token: &str) -> (u16, String, serde_json::Value) {
        self.app.platform.cache.clear_l1();
        self.app.read(token, LIST).await
    }

    async fn rejected(&self, reason: &str) -> u64 {
        let reason = format!("reason=\"{reason}\"");
        let metrics = self.app.metrics().await;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("kai_cache_rejected_total{")
                    && l.contains("namespace=\"journal_list\"")
                    && l.contains(&reason)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the counter is exported: {metrics}"))
    }
}

/// The only content in `list`.
fn contents(list: &serde_json::Value) -> Vec<String> {
    list["entries"]
        .as_array()
        .expect("a page of entries")
        .iter()
        .map(|e| e["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_page_copied_under_another_users_key_is_refused_and_counted() {
    let mut j = journal().await;
    let (alice, _) = j.user_with("alice's secret words").await;
    let (bob, bob_token) = j.user_with("bob's own words").await;
    // An L2 hit first: bob's sealed page opens under bob's key.
    let (status, cache, list) = j.read_from_l2(&bob_token).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(contents(&list), ["bob's own words"]);

    let (alice_key, bob_key) = (j.list_key(alice), j.list_key(bob));
    let alices_page = j.get(&alice_key);
    j.set(&bob_key, &alices_page);
    let before = j.rejected("forged").await;
    let (status, cache, list) = j.read_from_l2(&bob_token).await;
    assert_eq!(
        (status, cache.as_str()),
        (200, "MISS"),
        "the moved page is not served"
    );
    assert_eq!(
        contents(&list),
        ["bob's own words"],
        "bob's data, from PostgreSQL"
    );
    assert_eq!(j.rejected("forged").await, before + 1);
}

#[tokio::test]
async fn an_altered_byte_or_a_hand_built_frame_is_a_counted_miss() {
    let mut j = journal().await;
    let (bob, token) = j.user_with("bob's own words").await;
    let key = j.list_key(bob);

    // One bit flipped in the ciphertext.
    let mut sealed = j.get(&key);
    let middle = sealed.len() / 2;
    sealed[middle] ^= 0x01;
    j.set(&key, &sealed);
    let before = j.rejected("forged").await;
    let (status, cache, list) = j.read_from_l2(&token).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert_eq!(contents(&list), ["bob's own words"]);
    assert_eq!(j.rejected("forged").await, before + 1);

    // A well-formed plain frame of the engine's own format, with a phishing text.
    let key = j.list_key(bob);
    let body = json!({"entries": [{"content": "your account is locked, log in at evil.example"}]});
    let forged =
        kai_shared::cache::Entry::found(body.to_string().into_bytes().into(), u64::MAX / 2, 1);
    j.set(&key, &forged.encode());
    let before = j.rejected("malformed").await;
    let (status, cache, list) = j.read_from_l2(&token).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert_eq!(contents(&list), ["bob's own words"]);
    assert_eq!(j.rejected("malformed").await, before + 1);
}

#[tokio::test]
async fn redis_holds_no_journal_text_in_clear() {
    let mut j = journal().await;
    let text = "a very private sentence about the night of the storm";
    let id = Uuid::new_v4();
    let token = testing::token(id);
    let (status, entry) = call(
        &j.app,
        Method::POST,
        LIST,
        Some(&token),
        Some(json!({"content": text})),
    )
    .await;
    assert_eq!(status, 201);
    let entry_id = entry["id"].as_str().unwrap().to_owned();
    for path in [LIST.to_owned(), format!("{LIST}/{entry_id}")] {
        for expected in ["MISS", "HIT"] {
            let (status, cache, _) = j.app.read(&token, &path).await;
            assert_eq!((status, cache.as_str()), (200, expected), "{path}");
        }
    }
    let pattern = format!("{}:{{journal:{id}}}:*", j.prefix.prefix);
    let keys: Vec<String> = redis::TypedCommands::scan_match::<_, String>(&mut j.redis, pattern)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|k| !k.ends_with(":gen"))
        .collect();
    assert!(
        keys.iter()
            .any(|k| k.contains(&format!("journal:entry:{entry_id}"))),
        "the entry is cached: {keys:?}"
    );
    for key in keys {
        let stored = j.get(&key);
        for word in ["private sentence", "storm", "content"] {
            assert!(
                !stored.windows(word.len()).any(|w| w == word.as_bytes()),
                "{key} holds {word:?} in clear"
            );
        }
    }
}
