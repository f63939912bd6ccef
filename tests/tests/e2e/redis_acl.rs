//! The shipped Redis ACL file (`docker/redis/users.acl`): it loads as a
//! server's `aclfile`, and each service's user may touch its own keys and
//! channels only, read (never write) the revocations, consume (never append to,
//! trim or move) the erasure stream and acknowledge for itself only — and run no
//! dangerous command. The services running end to end under these users:
//! `erasure::every_service_runs_under_its_own_redis_acl_user_with_no_denial`.

use kai_testing::{PrivateRedis, redis_acl};
use uuid::Uuid;

/// The shipped file as a server's `aclfile`: every user loads, the default user
/// may PING (health checks) and nothing else, the administrator everything.
#[test]
fn the_shipped_acl_file_loads_and_the_default_user_can_only_ping() {
    let dir = std::env::temp_dir().join(format!("kai-acl-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.acl");
    std::fs::write(&file, redis_acl::ACL_FILE).unwrap();
    let redis = PrivateRedis::start_with(
        kai_testing::free_port(),
        vec!["--aclfile".into(), file.display().to_string()],
        None,
    );
    let mut default = redis.connection();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut default).unwrap(),
        "PONG"
    );
    let denied = redis::cmd("GET")
        .arg("kai:revoked-sessions")
        .query::<Option<String>>(&mut default)
        .unwrap_err();
    assert_eq!(denied.code(), Some("NOPERM"), "{denied}");

    let admin = redis::Client::open(redis_acl::url_as(&redis.url(), "kai-admin")).unwrap();
    let mut admin = admin.get_connection().unwrap();
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query(&mut admin).unwrap();
    assert_eq!(
        users,
        [
            "default",
            "kai-admin",
            "kai-conversation",
            "kai-journal",
            "kai-profile"
        ]
    );
    // The dev overlay's Redis loads the same file.
    let dev = include_str!("../../../k8s/overlays/dev/redis/users.acl");
    assert_eq!(
        dev,
        redis_acl::ACL_FILE,
        "the dev overlay's copy is identical"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection to `redis` as the shipped `user`.
fn as_user(redis: &PrivateRedis, user: &str) -> redis::Connection {
    redis::Client::open(redis_acl::url_as(&redis.url(), user))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Runs `args` as one command: `Ok` or the error's code.
fn run(conn: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<redis::Value>(conn)
        .map_err(|e| e.code().unwrap_or("OTHER").to_owned() + ": " + &e.to_string())
}

fn denied(conn: &mut redis::Connection, args: &[&str]) {
    match run(conn, args) {
        Err(e)
            if e.starts_with("NOPERM")
                || e.contains("can't access")
                || e.contains("can't publish") => {}
        other => panic!("{args:?} was not refused: {other:?}"),
    }
}

fn allowed(conn: &mut redis::Connection, args: &[&str]) {
    if let Err(e) = run(conn, args) {
        panic!("{args:?} was refused: {e}");
    }
}

#[test]
fn each_service_user_may_touch_its_own_keys_and_channels_only() {
    let redis = PrivateRedis::start();
    // The file rendered for a prefix of this test's own.
    let p = format!("kai-test-{}", Uuid::new_v4().simple());
    redis_acl::apply(&mut redis.connection(), &p);
    let stream = format!("{p}:{{events:account-erased}}");
    let user = Uuid::new_v4();
    let (own, conversations) = (
        format!("{p}:{{journal:{user}}}:gen"),
        format!("{p}:{{conversation:{user}}}:gen"),
    );
    // The stream exists (profile's first XADD), with conversation's group.
    let mut profile = as_user(&redis, "kai-profile");
    allowed(
        &mut profile,
        &[
            "XADD", &stream, "*", "id", "e1", "payload", "u", "to", "journal",
        ],
    );
    allowed(
        &mut profile,
        &["XGROUP", "CREATE", &stream, "conversation", "0"],
    );

    let mut journal = as_user(&redis, "kai-journal");
    // Its own cache, rate limits and invalidation channel.
    allowed(&mut journal, &["SET", &own, "1"]);
    allowed(&mut journal, &["GET", &own]);
    allowed(
        &mut journal,
        &["EVAL", "return redis.call('GET', ARGV[1])", "0", &own],
    );
    allowed(
        &mut journal,
        &[
            "HSET",
            &format!("{p}:ratelimit:journal:search-user:x"),
            "tokens",
            "1",
        ],
    );
    allowed(
        &mut journal,
        &["PUBLISH", &format!("{p}:invalidations:journal"), "x 1"],
    );
    allowed(
        &mut journal,
        &[
            "SCAN",
            "0",
            "MATCH",
            &format!("{p}:{{journal:*"),
            "COUNT",
            "10",
        ],
    );
    // Another service's cache, by command or from a script; its limits and channel.
    denied(&mut journal, &["GET", &conversations]);
    denied(&mut journal, &["SET", &conversations, "1"]);
    denied(
        &mut journal,
        &[
            "EVAL",
            "return redis.call('GET', ARGV[1])",
            "0",
            &conversations,
        ],
    );
    denied(
        &mut journal,
        &["DEL", &format!("{p}:ratelimit:profile:login-device:x")],
    );
    denied(
        &mut journal,
        &["PUBLISH", &format!("{p}:invalidations:conversation"), "x 1"],
    );
    // Revocations: read, never written or announced.
    allowed(
        &mut journal,
        &["ZRANGE", &format!("{p}:revoked-sessions"), "0", "-1"],
    );
    allowed(
        &mut journal,
        &["GET", &format!("{p}:revocations:watermark")],
    );
    denied(
        &mut journal,
        &["PUBLISH", &format!("{p}:revocations"), "session"],
    );
    denied(
        &mut journal,
        &[
            "EVAL",
            "return redis.call('PUBLISH', ARGV[1], 'x')",
            "0",
            &format!("{p}:revocations"),
        ],
    );
    denied(
        &mut journal,
        &["ZADD", &format!("{p}:revoked-sessions"), "1", "s"],
    );
    denied(
        &mut journal,
        &[
            "ZREMRANGEBYSCORE",
            &format!("{p}:revoked-sessions"),
            "-inf",
            "+inf",
        ],
    );
    denied(&mut journal, &["DEL", &format!("{p}:revoked-sessions")]);
    denied(
        &mut journal,
        &["SET", &format!("{p}:revocations:watermark"), "0"],
    );
    // The erasure stream: consumed, never appended to, trimmed or moved.
    allowed(
        &mut journal,
        &["XGROUP", "CREATE", &stream, "journal", "0", "MKSTREAM"],
    );
    allowed(
        &mut journal,
        &[
            "XREADGROUP",
            "GROUP",
            "journal",
            "j-1",
            "COUNT",
            "1",
            "STREAMS",
            &stream,
            ">",
        ],
    );
    allowed(
        &mut journal,
        &["XAUTOCLAIM", &stream, "journal", "j-1", "0", "0-0"],
    );
    allowed(&mut journal, &["XACK", &stream, "journal", "0-1"]);
    denied(
        &mut journal,
        &["XADD", &stream, "*", "id", "forged", "payload", "victim"],
    );
    denied(&mut journal, &["XTRIM", &stream, "MAXLEN", "0"]);
    denied(&mut journal, &["XDEL", &stream, "0-1"]);
    denied(
        &mut journal,
        &["XGROUP", "SETID", &stream, "conversation", "$"],
    );
    denied(
        &mut journal,
        &["XGROUP", "DESTROY", &stream, "conversation"],
    );
    denied(&mut journal, &["DEL", &stream]);
    // Acknowledgements: its own only.
    allowed(
        &mut journal,
        &["SADD", &format!("{stream}:acks:journal"), "e1"],
    );
    denied(
        &mut journal,
        &["SADD", &format!("{stream}:acks:conversation"), "e1"],
    );
    denied(&mut journal, &["SPOP", &format!("{stream}:acks:journal")]);
    // Nothing dangerous.
    for args in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["CONFIG", "GET", "maxmemory"],
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
        &["KEYS", "*"],
        &["ACL", "WHOAMI"],
        &["ACL", "SETUSER", "kai-journal", "+@all"],
        &["SCRIPT", "FLUSH"],
        &["CLIENT", "LIST"],
        &["SHUTDOWN"],
        &["MONITOR"],
        &["INFO"],
        &["SAVE"],
        &["MIGRATE", "127.0.0.1", "1", &own, "0", "1"],
    ] {
        denied(&mut journal, args);
    }

    // DEBUG is refused before the ACL is asked (enable-debug-command): ask it.
    let verdict: String = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg("kai-journal")
        .arg("DEBUG")
        .arg("SLEEP")
        .arg("0")
        .query(&mut redis.connection())
        .unwrap();
    assert!(verdict.contains("no permissions"), "{verdict}");

    // conversation: the same shape, its own keys (AI replies included).
    let mut conversation = as_user(&redis, "kai-conversation");
    allowed(&mut conversation, &["SET", &conversations, "1"]);
    allowed(
        &mut conversation,
        &["SET", &format!("{p}:{{conversation:ai:{user}}}:gen"), "1"],
    );
    allowed(
        &mut conversation,
        &["SADD", &format!("{stream}:acks:conversation"), "e1"],
    );
    denied(&mut conversation, &["GET", &own]);
    denied(
        &mut conversation,
        &["SADD", &format!("{stream}:acks:journal"), "e1"],
    );
    denied(
        &mut conversation,
        &["PUBLISH", &format!("{p}:revocations"), "session"],
    );

    // profile: the one writer of revocations and the stream, reader of every ack.
    allowed(
        &mut profile,
        &["ZADD", &format!("{p}:revoked-sessions"), "1", "s"],
    );
    allowed(
        &mut profile,
        &["SET", &format!("{p}:revocations:watermark"), "1"],
    );
    allowed(
        &mut profile,
        &["PUBLISH", &format!("{p}:revocations"), "session"],
    );
    allowed(&mut profile, &["XINFO", "GROUPS", &stream]);
    allowed(
        &mut profile,
        &["SPOP", &format!("{stream}:acks:journal"), "10"],
    );
    allowed(
        &mut profile,
        &["DEL", &format!("{stream}:acks:conversation")],
    );
    denied(&mut profile, &["GET", &own]);
    denied(&mut profile, &["FLUSHALL"]);
    denied(&mut profile, &["KEYS", "*"]);
}
