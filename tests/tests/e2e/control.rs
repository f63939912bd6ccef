//! The control plane (issue 29 items 3 and 4), against a private Redis: forged
//! erasure events, revocations and acknowledgements act on nothing (and are
//! counted); revocations outlive Redis — FLUSHALL, a restart without data,
//! eviction — for replicas started afterwards, and a replica that cannot know
//! them refuses authenticated requests and is not ready until profile-service
//! has restored the revoked set. Every wait is a bounded poll for a condition.

use std::time::{Duration, Instant};

use base64::Engine;
use kai_http::auth::control::Kind;
use kai_testing::{self as testing, PrivateRedis, TestApp, TestDb};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::system::call;

const PASSWORD: &str = "control-plane-password";

struct Stack {
    db: TestDb,
    redis: PrivateRedis,
    prefix: String,
}

impl Stack {
    async fn new(redis: PrivateRedis) -> Self {
        Self {
            db: TestDb::create().await,
            redis,
            prefix: format!("kai-test-{}", Uuid::new_v4().simple()),
        }
    }

    fn settings(&self) -> kai_platform::config::Settings {
        testing::settings(&self.db.url, Some(&self.redis.url()), &self.prefix, &[])
    }

    /// profile-service, which writes the revoked set and its marker itself.
    async fn profile(&self) -> TestApp {
        TestApp::start_as_is(profile_service::service(), self.settings()).await
    }

    /// A journal replica, started without touching the revoked set.
    async fn journal(&self) -> TestApp {
        TestApp::start_as_is(journal_service::service(), self.settings()).await
    }

    async fn conversation(&self) -> TestApp {
        let def = conversation_service::service(&testing::service_settings(&[]));
        TestApp::start_as_is(def, self.settings()).await
    }

    fn redis(&self) -> redis::Connection {
        self.redis.connection()
    }

    fn stream(&self) -> String {
        format!("{}:{{events:account-erased}}", self.prefix)
    }
}

/// Registers `email` (once) and logs in: (user id, token, session id).
async fn login(profile: &TestApp, email: &str, register: bool) -> (Uuid, String, Uuid) {
    let creds = json!({"email": email, "password": PASSWORD});
    if register {
        let (status, _) = call(
            profile,
            Method::POST,
            "/api/auth/register",
            None,
            Some(creds.clone()),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, body) = call(profile, Method::POST, "/api/auth/login", None, Some(creds)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let claims = testing::test_authenticator().verify(&token).unwrap();
    (claims.sub, token, claims.sid)
}

/// `kai_events_rejected_total{stream}` of one service.
async fn rejected(app: &TestApp, stream: &str) -> u64 {
    let metrics = app.metrics().await;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("kai_events_rejected_total{")
                && l.contains(&format!("stream=\"{stream}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("kai_events_rejected_total exported")
}

/// Polls `cond` every 20 ms for at most `within`; panics with `what` otherwise.
async fn until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn journal_entries(db: &TestDb, user: Uuid) -> i64 {
    db.connect()
        .await
        .query_one(
            "SELECT count(*) FROM journal.journal_entries WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

async fn write_entry(journal: &TestApp, token: &str) -> u16 {
    call(
        journal,
        Method::POST,
        "/api/journal/entries",
        Some(token),
        Some(json!({"content": "a private thought"})),
    )
    .await
    .0
}

/// A control message signed by a key pair nobody trusts (its own kid).
fn signed_by_a_stranger(kind: Kind, body: String) -> String {
    let pair = kai_http::auth::keys::KeyPair::generate();
    let stranger = kai_http::auth::Authenticator::new(
        Some(kai_http::auth::keys::parse_signing_pem(&pair.private_pem).unwrap()),
        kai_http::auth::keys::parse_verifying_pems(&pair.public_pem).unwrap(),
        Duration::from_secs(3600),
    );
    stranger.sign_control(kind, body, None).unwrap()
}

/// The stranger's message under the trusted key's header (its kid): a bad signature.
fn under_the_trusted_kid(kind: Kind, body: String) -> String {
    let real = testing::test_authenticator()
        .sign_control(kind, String::new(), None)
        .unwrap();
    let forged = signed_by_a_stranger(kind, body);
    let header = real.split('.').next().unwrap();
    let rest: Vec<&str> = forged.split('.').skip(1).collect();
    format!("{header}.{}", rest.join("."))
}

/// A real signed message whose claims are altered (the signature kept).
fn altered(real: &str, from: &str, to: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = real.split('.').collect();
    let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    assert!(claims.contains(from));
    let claims = b64.encode(claims.replace(from, to));
    format!("{}.{claims}.{}", parts[0], parts[2])
}

/// A forged erasure event (a real one copied with another user id, under
/// another event id, signed by an unknown key, with a bad signature, the old
/// unsigned form, garbage without fields) purges nothing in any service and is
/// counted by each; the real erasure still completes.
#[tokio::test]
async fn forged_erasure_events_purge_nothing_and_are_counted() {
    let s = Stack::new(PrivateRedis::start()).await;
    let profile = s.profile().await;
    let journal = s.journal().await;
    let conversation = s.conversation().await;
    assert!(
        journal
            .wait_revocations_known(Duration::from_secs(10))
            .await
    );
    let (victim, victim_token, _) = login(&profile, "victim@example.org", true).await;
    let (leaver, leaver_token, _) = login(&profile, "leaver@example.org", true).await;
    for t in [&victim_token, &leaver_token] {
        assert_eq!(write_entry(&journal, t).await, 201);
    }
    let (status, _) = call(
        &profile,
        Method::DELETE,
        "/api/account",
        Some(&leaver_token),
        Some(json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 204);
    until(
        Duration::from_secs(30),
        "the real erasure purged",
        || async { journal_entries(&s.db, leaver).await == 0 },
    )
    .await;
    // The real event as it travelled.
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(s.stream())
        .arg("-")
        .arg("+")
        .query(&mut s.redis())
        .unwrap();
    let fields = &entries[0].1;
    let field = |k: &str| fields.iter().find(|(f, _)| f == k).unwrap().1.clone();
    let (real_id, real_payload) = (field("id"), field("payload"));
    let forged_id = Uuid::now_v7().to_string();
    let body = format!("{forged_id} {victim}");
    let forgeries = [
        (
            real_id.clone(),
            altered(&real_payload, &leaver.to_string(), &victim.to_string()),
        ),
        (forged_id.clone(), real_payload.clone()),
        (
            forged_id.clone(),
            signed_by_a_stranger(Kind::AccountErased, body.clone()),
        ),
        (
            forged_id.clone(),
            under_the_trusted_kid(Kind::AccountErased, body),
        ),
        (forged_id.clone(), victim.to_string()),
        (forged_id.clone(), "garbage".to_owned()),
    ];
    let mut conn = s.redis();
    for (id, payload) in &forgeries {
        let _: String = redis::cmd("XADD")
            .arg(s.stream())
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("payload")
            .arg(payload)
            .arg("to")
            .arg("conversation,journal,profile")
            .query(&mut conn)
            .unwrap();
    }
    let _: String = redis::cmd("XADD")
        .arg(s.stream())
        .arg("*")
        .arg("nonsense")
        .arg("1")
        .query(&mut conn)
        .unwrap();
    let n = forgeries.len() as u64 + 1;
    for app in [&journal, &conversation, &profile] {
        until(
            Duration::from_secs(30),
            "every forgery rejected",
            || async { rejected(app, "account-erased").await >= n },
        )
        .await;
        assert_eq!(rejected(app, "account-erased").await, n, "each once");
    }
    assert_eq!(
        journal_entries(&s.db, victim).await,
        1,
        "the victim's entry stays"
    );
    assert_eq!(
        journal.read(&victim_token, "/api/journal/entries").await.0,
        200
    );
    // Nothing is left pending for retry: each group acknowledged every entry.
    for group in ["journal", "conversation", "profile"] {
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(s.stream())
            .arg(group)
            .query(&mut conn)
            .unwrap();
        assert_eq!(pending.0, 0, "{group} has pending entries");
    }
}

/// A forged revocation published on the channel, and forged members of the
/// revoked set, lock nobody out — neither on the running replica nor on one
/// started afterwards — and are counted.
#[tokio::test]
async fn forged_revocations_lock_nobody_out() {
    let s = Stack::new(PrivateRedis::start()).await;
    let profile = s.profile().await;
    let journal = s.journal().await;
    assert!(
        journal
            .wait_revocations_known(Duration::from_secs(10))
            .await
    );
    let (user, token, sid) = login(&profile, "target@example.org", true).await;
    assert_eq!(journal.read(&token, "/api/journal/entries").await.0, 200);
    let watermark = format!("user {user} {} -", chrono_ms() + 60_000);
    let exp = chrono_ms() / 1000 + 3600;
    let forged = [
        sid.to_string(),
        watermark.clone(),
        signed_by_a_stranger(Kind::Revocation, sid.to_string()),
        under_the_trusted_kid(Kind::Revocation, watermark.clone()),
        // A real, signed completeness marker is no revocation.
        testing::test_authenticator()
            .sign_control(Kind::Complete, String::new(), None)
            .unwrap(),
    ];
    let mut conn = s.redis();
    let (channel, set) = (
        format!("{}:revocations", s.prefix),
        format!("{}:revoked-sessions", s.prefix),
    );
    for message in &forged {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message)
            .query(&mut conn)
            .unwrap();
    }
    for message in &forged[..4] {
        let _: i64 = redis::cmd("ZADD")
            .arg(&set)
            .arg(exp)
            .arg(message)
            .query(&mut conn)
            .unwrap();
    }
    until(
        Duration::from_secs(10),
        "the published forgeries rejected",
        || async { rejected(&journal, "revocations").await >= forged.len() as u64 },
    )
    .await;
    assert_eq!(journal.read(&token, "/api/journal/entries").await.0, 200);
    assert_eq!(profile.read(&token, "/api/profile").await.0, 200);
    let later = s.journal().await;
    assert!(later.wait_revocations_known(Duration::from_secs(10)).await);
    assert!(
        rejected(&later, "revocations").await >= 4,
        "the forged members counted"
    );
    assert_eq!(later.read(&token, "/api/journal/entries").await.0, 200);
    // A fresh login works too.
    let (_, fresh, _) = login(&profile, "target@example.org", false).await;
    assert_eq!(later.read(&fresh, "/api/journal/entries").await.0, 200);
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// With conversation-service down during an erasure: a forged ack (in the old
/// shared set, and in journal's own set naming conversation), conversation's
/// group moved past the event (`XGROUP SETID … $`) and a forged consumer group
/// do not complete it: the row keeps awaiting conversation, which purges when it
/// starts (the relay re-sends), and only then is the row deleted.
#[tokio::test]
async fn forged_acks_moved_and_forged_groups_do_not_complete_an_erasure_early() {
    let s = Stack::new(PrivateRedis::start()).await;
    let profile = s.profile().await;
    let journal = s.journal().await;
    let conversation = s.conversation().await;
    assert!(
        conversation
            .wait_revocations_known(Duration::from_secs(10))
            .await
    );
    let (user, token, _) = login(&profile, "leaves@example.org", true).await;
    let (status, _) = call(
        &conversation,
        Method::POST,
        "/api/conversations",
        Some(&token),
        Some(json!({"title": "t"})),
    )
    .await;
    assert_eq!(status, 201);
    conversation.stop().await;
    let (status, _) = call(
        &profile,
        Method::DELETE,
        "/api/account",
        Some(&token),
        Some(json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 204);
    let db = s.db.connect().await;
    let awaiting = || async {
        db.query_opt("SELECT id, awaiting FROM profile.outbox", &[])
            .await
            .unwrap()
            .map(|r| (r.get::<_, Uuid>(0), r.get::<_, Vec<String>>(1)))
    };
    until(
        Duration::from_secs(30),
        "journal and profile acknowledged",
        || async { awaiting().await.is_some_and(|(_, a)| a == ["conversation"]) },
    )
    .await;
    let (id, _) = awaiting().await.unwrap();
    let mut conn = s.redis();
    let acks = format!("{}:acks", s.stream());
    let _: i64 = redis::cmd("SADD")
        .arg(&acks)
        .arg(format!("conversation {id}"))
        .query(&mut conn)
        .unwrap();
    let _: i64 = redis::cmd("SADD")
        .arg(format!("{acks}:journal"))
        .arg(format!("conversation {id}"))
        .arg(id.to_string())
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(s.stream())
        .arg("conversation")
        .arg("$")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(s.stream())
        .arg("forged")
        .arg("$")
        .query(&mut conn)
        .unwrap();
    // The relay drained journal's set (so it has looked at the forged acks).
    until(
        Duration::from_secs(10),
        "the relay drained the acks",
        || async {
            let n: i64 = redis::cmd("SCARD")
                .arg(format!("{acks}:journal"))
                .query(&mut s.redis())
                .unwrap();
            n == 0
        },
    )
    .await;
    assert_eq!(
        awaiting().await.map(|(_, a)| a),
        Some(vec!["conversation".to_owned()]),
        "the row still awaits conversation"
    );
    let conversations: i64 = db
        .query_one(
            "SELECT count(*) FROM conversation.conversations WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(conversations, 1, "nobody purged for conversation");
    // The real service starts: the re-sent event reaches its moved group.
    let conversation = s.conversation().await;
    until(
        Duration::from_secs(60),
        "conversation purged and acknowledged",
        || async { awaiting().await.is_none() },
    )
    .await;
    let conversations: i64 = db
        .query_one(
            "SELECT count(*) FROM conversation.conversations WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(conversations, 0);
    drop((journal, conversation));
}

/// The four ways a session ends, each with a token that must stay refused.
struct Ended {
    /// Tokens that must be refused: logout, logout-all (2 sessions), the other
    /// session of a password change, the erased account's.
    refused: Vec<(&'static str, String)>,
    /// Tokens that must be served: the session that changed the password, a bystander.
    served: Vec<String>,
}

async fn end_sessions_every_way(profile: &TestApp, journal: &TestApp) -> Ended {
    let mut refused = Vec::new();
    let (_, t, _) = login(profile, "logout@example.org", true).await;
    let (status, _) = call(profile, Method::POST, "/api/auth/logout", Some(&t), None).await;
    assert_eq!(status, 204);
    refused.push(("logout", t));
    let (_, a, _) = login(profile, "all@example.org", true).await;
    let (_, b, _) = login(profile, "all@example.org", false).await;
    let (status, _) = call(
        profile,
        Method::POST,
        "/api/auth/logout-all",
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, 204);
    refused.push(("logout-all", a));
    refused.push(("logout-all", b));
    let (_, other, _) = login(profile, "pw@example.org", true).await;
    let (_, keeps, _) = login(profile, "pw@example.org", false).await;
    let (status, _) = call(
        profile,
        Method::POST,
        "/api/auth/password",
        Some(&keeps),
        Some(json!({"current_password": PASSWORD, "new_password": "another long passphrase"})),
    )
    .await;
    assert_eq!(status, 204);
    refused.push(("password change", other));
    let (_, erased, _) = login(profile, "erased@example.org", true).await;
    assert_eq!(write_entry(journal, &erased).await, 201);
    let (status, _) = call(
        profile,
        Method::DELETE,
        "/api/account",
        Some(&erased),
        Some(json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 204);
    refused.push(("erasure", erased));
    let (_, bystander, _) = login(profile, "stays@example.org", true).await;
    Ended {
        refused,
        served: vec![keeps, bystander],
    }
}

/// Every ended token refused on `journal` (a new entry too: a stolen token of
/// an erased account creates nothing), every live one served.
async fn holds(journal: &TestApp, ended: &Ended, when: &str) {
    for (how, token) in &ended.refused {
        until(
            Duration::from_secs(5),
            &format!("{how} refused {when}"),
            || {
                let token = token.clone();
                async move { journal.read(&token, "/api/journal/entries").await.0 == 401 }
            },
        )
        .await;
        assert_eq!(write_entry(journal, token).await, 401, "{how} {when}");
    }
    for token in &ended.served {
        assert_eq!(
            journal.read(token, "/api/journal/entries").await.0,
            200,
            "{when}"
        );
    }
}

/// Logout, logout-all, password change and erasure hold for replicas started
/// after a FLUSHALL and after a Redis restart without data: profile-service
/// re-writes the revoked set from PostgreSQL. While the set is lost and profile
/// is down, a new replica is not ready and refuses authenticated requests with
/// 503 + Retry-After; once profile restores the set, it serves again.
#[tokio::test]
async fn revocations_outlive_flushall_and_a_restart_without_data() {
    let mut s = Stack::new(PrivateRedis::start()).await;
    let profile = s.profile().await;
    let journal = s.journal().await;
    assert!(
        journal
            .wait_revocations_known(Duration::from_secs(10))
            .await
    );
    let ended = end_sessions_every_way(&profile, &journal).await;
    holds(&journal, &ended, "before any loss").await;

    let _: () = redis::cmd("FLUSHALL").query(&mut s.redis()).unwrap();
    let after_flush = s.journal().await;
    assert!(
        after_flush
            .wait_revocations_known(Duration::from_secs(10))
            .await
    );
    holds(&after_flush, &ended, "on a replica started after FLUSHALL").await;
    holds(&journal, &ended, "on the replica that was running").await;

    profile.stop().await;
    s.redis.restart();
    let blind = s.journal().await;
    assert!(
        !blind
            .wait_revocations_known(Duration::from_millis(500))
            .await
    );
    let ready = blind
        .client
        .get(blind.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let res = blind.get(&ended.served[1], "/api/journal/entries").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    for (_, token) in &ended.refused {
        assert_ne!(blind.read(token, "/api/journal/entries").await.0, 200);
    }
    // profile-service is back: it restores the set, the replica serves.
    let profile = s.profile().await;
    assert!(blind.wait_revocations_known(Duration::from_secs(15)).await);
    assert_eq!(blind.status("/health/ready").await, 200);
    holds(&blind, &ended, "after a restart without data").await;
    let late = s.journal().await;
    assert!(late.wait_revocations_known(Duration::from_secs(10)).await);
    holds(&late, &ended, "on a replica started after the restart").await;
    drop(profile);
}

/// Under the shipped policy (`volatile-lru`), a Redis full of ordinary cache
/// traffic evicts cache entries, never the revoked set: a replica started
/// afterwards knows every revocation at once.
#[tokio::test]
async fn eviction_by_cache_traffic_never_takes_the_revocations() {
    let s = Stack::new(PrivateRedis::start_with(
        testing::free_port(),
        ["--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru"]
            .map(str::to_owned)
            .to_vec(),
        None,
    ))
    .await;
    let profile = s.profile().await;
    let journal = s.journal().await;
    assert!(
        journal
            .wait_revocations_known(Duration::from_secs(10))
            .await
    );
    let ended = end_sessions_every_way(&profile, &journal).await;
    let evicted = || {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut s.redis())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("evicted_keys:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    let mut users = 0;
    while evicted() == 0 {
        users += 1;
        assert!(users <= 3000, "3000 users' pages never filled 3 MB");
        let u = testing::TestUser::new();
        let content: String = (0..40)
            .map(|_| Uuid::new_v4().simple().to_string())
            .collect();
        for _ in 0..3 {
            let (status, _) = call(
                &journal,
                Method::POST,
                "/api/journal/entries",
                Some(&u.token),
                Some(json!({ "content": content })),
            )
            .await;
            assert_eq!(status, 201);
        }
        assert_eq!(journal.read(&u.token, "/api/journal/entries").await.0, 200);
    }
    eprintln!("evictions began after {users} users");
    let set: i64 = redis::cmd("EXISTS")
        .arg(format!("{}:revoked-sessions", s.prefix))
        .query(&mut s.redis())
        .unwrap();
    assert_eq!(set, 1, "the revoked set was not evicted");
    let later = s.journal().await;
    assert!(later.wait_revocations_known(Duration::from_secs(10)).await);
    holds(&later, &ended, "on a replica started after evictions").await;
}
