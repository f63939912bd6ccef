//! Account erasure across the three services (SPEC §4 "Erasure"): a user with
//! data in every service and warm caches on two journal replicas deletes their
//! account; every token is refused within 1 s; within 30 s PostgreSQL holds no
//! row of theirs and Redis no key — also when conversation-service was down at
//! the time, and when Redis lost all its data between the deletion and the purge;
//! and on a Redis Cluster, where the stream, its consumer groups, the revocations
//! and the cache keys are spread over three primaries.

use std::time::{Duration, Instant};

use kai_testing::{self as testing, PrivateCluster, PrivateRedis, TestApp, TestDb};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::system::call;

const PASSWORD: &str = "erase-me-entirely-please";

/// Where the services' Redis is: one redis-server, or a cluster of 3 + 3.
enum Redis {
    Node(PrivateRedis),
    Cluster(PrivateCluster),
}

/// What is running: its own PostgreSQL database and its own Redis.
struct Stack {
    db: TestDb,
    redis: Redis,
    prefix: String,
    profile: Option<TestApp>,
    journal: Vec<TestApp>,
    conversation: Option<TestApp>,
    /// Each service connects as its own user of the shipped ACL file.
    acl: bool,
}

impl Stack {
    /// The settings of `service` (connecting as `kai-<service>` under `acl`).
    fn settings_of(&self, service: &str) -> kai_platform::config::Settings {
        match &self.redis {
            Redis::Node(r) if self.acl => {
                let url = testing::redis_acl::url_as(&r.url(), &format!("kai-{service}"));
                testing::settings(&self.db.url, Some(&url), &self.prefix, &[])
            }
            _ => self.settings(),
        }
    }

    fn settings(&self) -> kai_platform::config::Settings {
        match &self.redis {
            Redis::Node(r) => testing::settings(&self.db.url, Some(&r.url()), &self.prefix, &[]),
            Redis::Cluster(c) => testing::settings(
                &self.db.url,
                None,
                &self.prefix,
                &[("REDIS_CLUSTER_NODES", &c.seeds())],
            ),
        }
    }

    async fn start() -> Self {
        Self::start_on(Redis::Node(PrivateRedis::start())).await
    }

    async fn start_on(redis: Redis) -> Self {
        Self::start_as(redis, false).await
    }

    /// With `acl`, the shipped ACL file's users are created (for this test's
    /// prefix) and each service connects as its own.
    async fn start_as(redis: Redis, acl: bool) -> Self {
        let db = TestDb::create().await;
        let prefix = format!("kai-test-{}", Uuid::new_v4().simple());
        if acl {
            let Redis::Node(node) = &redis else {
                panic!("ACL users on one redis-server")
            };
            testing::redis_acl::apply(&mut node.connection(), &prefix);
        }
        let mut me = Self {
            db,
            redis,
            prefix,
            profile: None,
            journal: Vec::new(),
            conversation: None,
            acl,
        };
        me.profile =
            Some(TestApp::start(profile_service::service(), me.settings_of("profile")).await);
        me.start_journal_and_conversation().await;
        me
    }

    fn profile(&self) -> &TestApp {
        self.profile.as_ref().expect("profile-service runs")
    }

    fn node(&self) -> &PrivateRedis {
        match &self.redis {
            Redis::Node(r) => r,
            Redis::Cluster(_) => panic!("a single redis-server test"),
        }
    }

    /// Every key of this test on every primary (a cluster's replicas hold copies).
    fn all_keys(&self) -> Vec<String> {
        let nodes: Vec<&PrivateRedis> = match &self.redis {
            Redis::Node(r) => vec![r],
            Redis::Cluster(c) => c
                .nodes
                .iter()
                .filter(|n| {
                    redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut n.connection())
                        .is_ok_and(|info| info.contains("role:master"))
                })
                .collect(),
        };
        let mut keys = Vec::new();
        for node in nodes {
            let mut conn = node.connection();
            keys.extend(
                redis::TypedCommands::scan_match(&mut conn, format!("{}:*", self.prefix))
                    .unwrap()
                    .filter_map(Result::ok),
            );
        }
        keys
    }

    async fn start_journal_and_conversation(&mut self) {
        for _ in 0..2 {
            self.journal.push(
                TestApp::start(journal_service::service(), self.settings_of("journal")).await,
            );
        }
        self.start_conversation().await;
    }

    async fn start_conversation(&mut self) {
        let s = self.settings_of("conversation");
        self.conversation = Some(
            TestApp::start(
                conversation_service::service(&testing::service_settings(&[])),
                s,
            )
            .await,
        );
    }

    async fn stop_conversation(&mut self) {
        if let Some(c) = self.conversation.take() {
            c.stop().await;
        }
    }

    async fn stop_journal_and_conversation(&mut self) {
        for j in self.journal.drain(..) {
            j.stop().await;
        }
        self.stop_conversation().await;
    }

    fn conversation(&self) -> &TestApp {
        self.conversation
            .as_ref()
            .expect("conversation-service runs")
    }

    /// Keys in this test's Redis that name `user`.
    fn redis_keys_of(&self, user: Uuid) -> Vec<String> {
        self.all_keys()
            .into_iter()
            .filter(|k| k.contains(&user.to_string()))
            .collect()
    }

    /// Rows of `user` left in the three schemas.
    async fn rows_of(&self, user: Uuid, conversations: &[Uuid]) -> Vec<(&'static str, i64)> {
        let db = self.db.connect().await;
        let mut out = Vec::new();
        for (what, sql) in [
            ("users", "SELECT count(*) FROM profile.users WHERE id = $1"),
            (
                "profiles",
                "SELECT count(*) FROM profile.profiles WHERE user_id = $1",
            ),
            (
                "sessions",
                "SELECT count(*) FROM profile.sessions WHERE user_id = $1",
            ),
            (
                "journal entries",
                "SELECT count(*) FROM journal.journal_entries WHERE user_id = $1",
            ),
            (
                "conversations",
                "SELECT count(*) FROM conversation.conversations WHERE user_id = $1",
            ),
        ] {
            out.push((what, db.query_one(sql, &[&user]).await.unwrap().get(0)));
        }
        let messages: i64 = db
            .query_one(
                "SELECT count(*) FROM conversation.messages WHERE conversation_id = ANY($1)",
                &[&conversations],
            )
            .await
            .unwrap()
            .get(0);
        out.push(("messages", messages));
        out
    }
}

/// A user with data and warm caches everywhere: (id, token, email, entry ids,
/// conversation ids).
struct Person {
    id: Uuid,
    token: String,
    entry: String,
    conversations: Vec<Uuid>,
}

async fn person(s: &Stack, email: &str) -> Person {
    let (status, _) = call(
        s.profile(),
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, login) = call(
        s.profile(),
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let id: Uuid = login["user_id"].as_str().unwrap().parse().unwrap();
    let t = Some(token.as_str());
    let j = &s.journal[0];
    let mut entry = String::new();
    for i in 0..3 {
        let (status, e) = call(
            j,
            Method::POST,
            "/api/journal/entries",
            t,
            Some(json!({"content": format!("private words {i}")})),
        )
        .await;
        assert_eq!(status, 201);
        entry = e["id"].as_str().unwrap().to_owned();
    }
    // One soft-deleted entry: erasure hard-deletes it too.
    let (_, e) = call(
        j,
        Method::POST,
        "/api/journal/entries",
        t,
        Some(json!({"content": "regretted"})),
    )
    .await;
    let (status, _) = call(
        j,
        Method::DELETE,
        &format!("/api/journal/entries/{}", e["id"].as_str().unwrap()),
        t,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let c = s.conversation();
    let (_, conv) = call(
        c,
        Method::POST,
        "/api/conversations",
        t,
        Some(json!({"title": "night"})),
    )
    .await;
    let conv_id = conv["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        c,
        Method::POST,
        &format!("/api/conversations/{conv_id}/messages"),
        t,
        Some(json!({"content": "I could not sleep"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        s.profile(),
        Method::PATCH,
        "/api/profile",
        t,
        Some(json!({"communication_style": "quiet"})),
    )
    .await;
    assert_eq!(status, 200);
    // Warm every cache: both journal replicas (L1 and Redis), conversation, profile.
    for _ in 0..2 {
        for j in &s.journal {
            for path in [
                "/api/journal/entries".to_owned(),
                format!("/api/journal/entries/{entry}"),
                "/api/journal/stats".to_owned(),
            ] {
                assert_eq!(j.read(&token, &path).await.0, 200);
            }
        }
        assert_eq!(c.read(&token, "/api/conversations").await.0, 200);
        assert_eq!(
            c.read(&token, &format!("/api/conversations/{conv_id}"))
                .await
                .0,
            200
        );
        assert_eq!(s.profile().read(&token, "/api/profile").await.0, 200);
    }
    let (_, _, hit) = s.journal[1].read(&token, "/api/journal/entries").await;
    assert_eq!(hit["total"], 3);
    Person {
        id,
        token,
        entry,
        conversations: vec![conv_id.parse().unwrap()],
    }
}

/// Every route that holds the person's data, with the old token: 401.
async fn refused_everywhere_within_a_second(s: &Stack, p: &Person, started: Instant) {
    let mut routes: Vec<(&TestApp, String)> = vec![
        (s.profile(), "/api/profile".into()),
        (s.profile(), "/api/profile/export".into()),
    ];
    for j in &s.journal {
        routes.push((j, "/api/journal/entries".into()));
        routes.push((j, format!("/api/journal/entries/{}", p.entry)));
        routes.push((j, "/api/journal/export".into()));
    }
    if let Some(c) = &s.conversation {
        routes.push((c, "/api/conversations".into()));
        routes.push((c, format!("/api/conversations/{}", p.conversations[0])));
        routes.push((c, "/api/conversations/export".into()));
    }
    for (app, path) in routes {
        loop {
            let (status, _, _) = app.read(&p.token, &path).await;
            if status == 401 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{path} still answers the deleted user's token: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Within 30 s: no row and no Redis key of the person; the bystander untouched.
async fn purged_within_thirty_seconds(
    s: &Stack,
    p: &Person,
    bystander: &Person,
    started: Instant,
    bystander_cached: bool,
) {
    loop {
        let rows = s.rows_of(p.id, &p.conversations).await;
        let keys = s.redis_keys_of(p.id);
        if rows.iter().all(|(_, n)| *n == 0) && keys.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "after 30 s: rows {rows:?}, Redis keys {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("purged after {:?}", started.elapsed());
    let rows = s.rows_of(bystander.id, &bystander.conversations).await;
    assert!(
        rows.iter().all(|(_, n)| *n > 0),
        "the bystander lost data: {rows:?}"
    );
    assert!(
        !bystander_cached || !s.redis_keys_of(bystander.id).is_empty(),
        "the bystander's cache is untouched"
    );
    // A token for the same id (as if one had survived): nothing of theirs is served
    // from PostgreSQL or any cache tier — refused, or not found / empty.
    let forged = testing::token(p.id);
    for j in &s.journal {
        let (status, _, list) = j.read(&forged, "/api/journal/entries").await;
        assert!(status == 401 || list["total"] == 0, "{status} {list}");
        let (status, _, _) = j
            .read(&forged, &format!("/api/journal/entries/{}", p.entry))
            .await;
        assert!(status == 401 || status == 404, "{status}");
    }
    let c = s.conversation();
    let (status, _, _) = c
        .read(
            &forged,
            &format!("/api/conversations/{}", p.conversations[0]),
        )
        .await;
    assert!(status == 401 || status == 404, "{status}");
    // The acknowledgements travel back to the outbox (drained every second).
    loop {
        let outbox: i64 =
            s.db.connect()
                .await
                .query_one("SELECT count(*) FROM profile.outbox", &[])
                .await
                .unwrap()
                .get(0);
        if outbox == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the outbox still awaits acknowledgements"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delete_account(s: &Stack, p: &Person) {
    let (status, body) = call(
        s.profile(),
        Method::DELETE,
        "/api/account",
        Some(&p.token),
        Some(json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 204, "{body}");
}

fn purges(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("kai_account_purges_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Each consumer group purged the person once: profile, conversation, and one
/// replica of the journal group.
async fn purged_once_per_service(s: &Stack) {
    assert_eq!(purges(&s.profile().metrics().await), 1);
    assert_eq!(purges(&s.conversation().metrics().await), 1);
    let mut journal = 0;
    for j in &s.journal {
        journal += purges(&j.metrics().await);
    }
    assert_eq!(journal, 1, "one replica of the journal group purged");
}

#[tokio::test]
async fn deleting_an_account_erases_it_from_every_service_and_cache() {
    let s = Stack::start().await;
    let bystander = person(&s, "stays@example.org").await;
    let p = person(&s, "leaves@example.org").await;
    delete_account(&s, &p).await;
    let started = Instant::now();
    refused_everywhere_within_a_second(&s, &p, started).await;
    purged_within_thirty_seconds(&s, &p, &bystander, started, true).await;
    purged_once_per_service(&s).await;
}

/// The whole story of [`deleting_an_account_erases_it_from_every_service_and_cache`]
/// — registration, login, every service's writes and cached reads (L2 hits on
/// a second journal replica, an invalidation heard across the two), a profile
/// change, the deletion's revocation and erasure through the stream and its
/// acknowledgements — with each service connected as its own user of the
/// shipped ACL file (`docker/redis/users.acl`): Redis refused nothing
/// (`ACL LOG` is empty).
#[tokio::test]
async fn every_service_runs_under_its_own_redis_acl_user_with_no_denial() {
    let s = Stack::start_as(Redis::Node(PrivateRedis::start()), true).await;
    let bystander = person(&s, "stays@example.org").await;
    let p = person(&s, "leaves@example.org").await;
    // A write on one journal replica is seen by the other (its invalidation
    // channel), which answered the list from its memory before.
    let (_, _, before) = s.journal[1].read(&p.token, "/api/journal/entries").await;
    let (status, _) = call(
        &s.journal[0],
        Method::POST,
        "/api/journal/entries",
        Some(&p.token),
        Some(json!({"content": "one more"})),
    )
    .await;
    assert_eq!(status, 201);
    loop {
        let (_, _, after) = s.journal[1].read(&p.token, "/api/journal/entries").await;
        if after["total"] == before["total"].as_i64().unwrap() + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An L2 hit on the second replica (its memory emptied first): the sealed
    // entry it stored on its last miss opens.
    s.journal[1].platform.cache.clear_l1();
    let (status, cache, _) = s.journal[1].read(&p.token, "/api/journal/entries").await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));

    delete_account(&s, &p).await;
    let started = Instant::now();
    refused_everywhere_within_a_second(&s, &p, started).await;
    purged_within_thirty_seconds(&s, &p, &bystander, started, true).await;
    purged_once_per_service(&s).await;

    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut s.node().connection())
        .unwrap();
    assert!(log.is_empty(), "Redis refused a service: {log:?}");
}

#[tokio::test]
async fn a_service_down_during_the_deletion_purges_when_it_starts() {
    let mut s = Stack::start().await;
    let bystander = person(&s, "stays@example.org").await;
    let p = person(&s, "leaves@example.org").await;
    s.stop_conversation().await;
    delete_account(&s, &p).await;
    let started = Instant::now();
    refused_everywhere_within_a_second(&s, &p, started).await;
    // Wait for the running services' purge (journal's rows gone), not for a
    // fixed time; then the stopped service's rows must still be there.
    let rows = loop {
        let rows = s.rows_of(p.id, &p.conversations).await;
        if rows.contains(&("journal entries", 0)) {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "journal never purged: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        rows.contains(&("conversations", 1)),
        "nobody purged for the stopped service: {rows:?}"
    );
    s.start_conversation().await;
    refused_everywhere_within_a_second(&s, &p, Instant::now()).await;
    purged_within_thirty_seconds(&s, &p, &bystander, started, true).await;
}

#[tokio::test]
async fn an_erasure_survives_redis_losing_all_its_data() {
    let mut s = Stack::start().await;
    let bystander = person(&s, "stays@example.org").await;
    let p = person(&s, "leaves@example.org").await;
    s.stop_journal_and_conversation().await;
    delete_account(&s, &p).await;
    let started = Instant::now();
    // Sent, and profile's own part acknowledged: only journal and conversation owe.
    loop {
        let row =
            s.db.connect()
                .await
                .query_one("SELECT sends, awaiting FROM profile.outbox", &[])
                .await
                .unwrap();
        let (sends, awaiting): (i32, Vec<String>) = (row.get(0), row.get(1));
        if sends >= 1 && !awaiting.contains(&"profile".to_owned()) {
            assert_eq!(awaiting.len(), 2);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream, the consumer groups, the revocations, the acks: all gone.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut s.node().connection())
        .unwrap();
    s.start_journal_and_conversation().await;
    purged_within_thirty_seconds(&s, &p, &bystander, started, false).await;
    // Replicas that started after the loss heard the revocation again.
    refused_everywhere_within_a_second(&s, &p, Instant::now()).await;
}

#[tokio::test]
async fn an_account_is_erased_on_a_redis_cluster() {
    let s = Stack::start_on(Redis::Cluster(PrivateCluster::start())).await;
    let bystander = person(&s, "stays@example.org").await;
    let p = person(&s, "leaves@example.org").await;
    // The person's cache keys and the event stream are spread over the primaries.
    assert!(!s.redis_keys_of(p.id).is_empty());
    delete_account(&s, &p).await;
    let started = Instant::now();
    refused_everywhere_within_a_second(&s, &p, started).await;
    purged_within_thirty_seconds(&s, &p, &bystander, started, true).await;
    purged_once_per_service(&s).await;
    // The stream and its ack set share a slot (one hash tag).
    let streams: Vec<String> = s
        .all_keys()
        .into_iter()
        .filter(|k| k.contains(":{events:"))
        .collect();
    assert!(
        !streams.is_empty(),
        "the erasure travelled on a stream: {streams:?}"
    );
}
