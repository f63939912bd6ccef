//! Tokens: the test key pair (shared by every test process and every binary a
//! test spawns), the authenticator that mints with it, and [`TestUser`].

use std::time::Duration;
use uuid::Uuid;

/// The test key pair: derived from a fixed seed, so every test process (and every
/// binary a test spawns) shares one pair, written once under the temp directory.
pub fn test_keys() -> &'static (kai_http::auth::keys::KeyPair, String, String) {
    static KEYS: std::sync::OnceLock<(kai_http::auth::keys::KeyPair, String, String)> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        use sha2::Digest;
        let seed: [u8; 32] =
            sha2::Sha256::digest(b"kai test signing key, never in production").into();
        let pair = kai_http::auth::keys::KeyPair::from_seed(seed);
        let dir = std::env::temp_dir().join(format!("kai-test-keys-{}", pair.kid));
        let (signing, verifying) = pair.write_to(&dir).expect("write the test key pair");
        (
            pair,
            signing.display().to_string(),
            verifying.display().to_string(),
        )
    })
}

/// The key-file variables every service under test gets (profile signs with the
/// private key; all verify with the public one).
pub fn auth_env() -> [(&'static str, String); 2] {
    let (_, signing, verifying) = test_keys();
    [
        ("AUTH_SIGNING_KEY_FILE", signing.clone()),
        ("AUTH_VERIFYING_KEYS_FILE", verifying.clone()),
    ]
}

/// An authenticator holding the test signing key (mints tokens the services accept).
pub fn test_authenticator() -> &'static kai_http::auth::Authenticator {
    static AUTH: std::sync::OnceLock<kai_http::auth::Authenticator> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        let (pair, _, _) = test_keys();
        kai_http::auth::Authenticator::new(
            Some(kai_http::auth::keys::parse_signing_pem(&pair.private_pem).expect("test key")),
            kai_http::auth::keys::parse_verifying_pems(&pair.public_pem).expect("test key"),
            Duration::from_secs(3600),
        )
    })
}

/// A user as journal and conversation see one: an id and a token for it.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    pub token: String,
}

impl TestUser {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            token: token(id),
        }
    }
}

/// Mints an access token the services accept.
pub fn token(user_id: Uuid) -> String {
    test_authenticator()
        .mint(user_id, Uuid::now_v7())
        .expect("mint")
        .0
}

/// Marks the revoked set of `settings`' Redis complete, as profile-service does
/// once it has written it from PostgreSQL: its signed marker (test key), unless
/// a marker that verifies is already there. Without Redis, nothing to do; a
/// Redis that does not answer within about a second is left as it is (the
/// service under test then fails closed, as it should).
pub async fn mark_revocations_complete(settings: &kai_platform::config::Settings) {
    use kai_http::auth::control::Kind;
    use kai_shared::redis::{Redis, revocation};
    let metrics = kai_shared::metrics::Metrics::new("kai-testing");
    let Some(store) = Redis::from_settings(&settings.redis, &metrics).expect("Redis settings")
    else {
        return;
    };
    let auth = test_authenticator();
    for _ in 0..5 {
        match revocation::markers(&store).await {
            Ok(markers)
                if markers
                    .iter()
                    .any(|m| auth.verify_control(m, &[Kind::Complete]).is_ok()) =>
            {
                return;
            }
            Ok(_) => {
                let marker = auth
                    .sign_control(Kind::Complete, String::new(), None)
                    .expect("the test key signs");
                if revocation::restore(&store, &[], &marker).await.is_ok() {
                    return;
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
