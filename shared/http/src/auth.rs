//! Access tokens: EdDSA (Ed25519) JWTs carrying the user id (`sub`) and a session
//! id (`sid`), signed by the service that issues tokens with the private key only it holds and
//! verified by every service with public keys selected by the token's `kid`
//! ([`keys`]). Any other algorithm (HS256 included), a `crit` header, an `nbf` or
//! `iat` in the future (beyond [`CLOCK_SKEW_SECS`]) and a lifetime above
//! `AUTH_TOKEN_TTL_SECS` are refused.
//!
//! An Ed25519 verification costs tens of microseconds, more than a cached read, so
//! verified tokens are remembered in a bounded in-process cache keyed by the
//! SHA-256 of the token (never the token itself), each entry expiring at the
//! token's `exp`. Revocation is checked on every request, hit or miss, and a
//! revoked session's cached tokens are dropped.
//!
//! Revocation costs no database round trip: a logout is announced on Redis pub/sub
//! and remembered in a sorted set (loaded when a replica subscribes); each replica
//! keeps the revoked session ids in memory until the tokens would have expired
//! anyway. The service that owns the sessions table additionally checks it
//! ([`Gate::session_check`]), after [`Authenticator::verify`]: a revocation this
//! replica knows is refused before that check (or any memo it keeps) is asked.
//! Every revocation through Redis is a signed
//! control message ([`control`]): one that does not verify is dropped. A
//! service that learns revocations from Redis only refuses authenticated
//! requests (503) until it knows them all ([`Authenticator::revocations_known`]).
//!
//! "Every session of a user" (log out everywhere, password change, account
//! deletion) travels the same way as one message, not one per session: a per-user
//! *watermark* — "sessions created before T are revoked, except possibly this
//! one" — so a check stays one O(1) lookup whatever the user's session count.
//! Session ids are UUIDv7, so a token carries its creation time to the
//! millisecond (tokens with another kind of session id fall back to `iat`).

pub mod control;
pub mod keys;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::{Either, LocalBoxFuture, Ready, ready};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::errors::ApiError;
use futures_util::future::BoxFuture;
use kai_shared::settings::{ConfigError, positive_secs, read_file};
use keys::{SigningMaterial, VerifyingKeys};

/// The token settings: who verifies with what, who signs, for how long.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthSettings {
    /// Public keys every token is verified with, by `kid`.
    #[arg(id = "auth_verifying_keys", long = "auth-verifying-keys-file", env = "AUTH_VERIFYING_KEYS_FILE",
        value_parser = verifying_keys,
        help = "PEM file of one or more Ed25519 public keys; a token is verified with the key its \
                `kid` names (rotation: add a key, switch the signing key, remove the old key)")]
    pub verifying_keys: VerifyingKeys,
    /// The private signing key: the token-issuing service only (see [`AuthSettings::require_signing_key`]).
    #[arg(id = "auth_signing_key", long = "auth-signing-key-file", env = "AUTH_SIGNING_KEY_FILE",
        value_parser = signing_key,
        help = "PKCS#8 PEM Ed25519 private key that signs access tokens (EdDSA); required by \
                the service that issues tokens (`serve`), held by no other service")]
    pub signing_key: Option<SigningMaterial>,
    #[arg(id = "auth_token_ttl", long = "auth-token-ttl-secs", env = "AUTH_TOKEN_TTL_SECS",
        default_value = "3600", value_parser = positive_secs, help = "access-token lifetime")]
    pub token_ttl: Duration,
}

impl AuthSettings {
    /// A signing key whose public half nobody verifies with is a mistake.
    pub fn check(self) -> Result<Self, ConfigError> {
        if let Some(key) = &self.signing_key
            && !self.verifying_keys.contains(&key.kid)
        {
            return Err(ConfigError {
                var: "AUTH_SIGNING_KEY_FILE".into(),
                message: format!(
                    "its public key (kid {}) is not in AUTH_VERIFYING_KEYS_FILE",
                    key.kid
                ),
            });
        }
        Ok(self)
    }

    /// The service that signs tokens: without `AUTH_SIGNING_KEY_FILE` it must not serve.
    pub fn require_signing_key(&self) -> Result<(), ConfigError> {
        match self.signing_key {
            Some(_) => Ok(()),
            None => Err(ConfigError {
                var: "AUTH_SIGNING_KEY_FILE".into(),
                message: "required by the service that issues tokens: the PKCS#8 PEM \
                          Ed25519 private key that signs them"
                    .into(),
            }),
        }
    }
}

fn verifying_keys(raw: &str) -> Result<VerifyingKeys, String> {
    keys::parse_verifying_pems(&read_file(raw)?)
}

fn signing_key(raw: &str) -> Result<SigningMaterial, String> {
    keys::parse_signing_pem(&read_file(raw)?)
}

/// A service-specific check of a session (for the service that owns the sessions table).
pub type SessionCheck = Arc<dyn Fn(Uuid) -> BoxFuture<'static, Result<(), ApiError>> + Send + Sync>;

/// What [`AuthUser`] needs, as app data: the authenticator, and the extra check
/// of the service that owns the sessions table (if it is that service).
#[derive(Clone)]
pub struct Gate {
    pub auth: Arc<Authenticator>,
    pub session_check: Option<SessionCheck>,
}

/// Issuer and audience of every Kai token.
pub const ISSUER: &str = "kai";
pub const AUDIENCE: &str = "kai-api";

/// How far in the future a token's `iat`/`nbf` may be (clocks of two pods differ).
pub const CLOCK_SKEW_SECS: i64 = 30;

/// How many verified tokens a replica remembers.
const VERIFIED_CACHE_CAPACITY: u64 = 100_000;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// Never minted; refused when in the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// Expires a cached verification at the token's own `exp`.
struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        verified: &Arc<Verified>,
        _: Instant,
    ) -> Option<Duration> {
        let left = verified
            .claims
            .exp
            .saturating_sub(chrono::Utc::now().timestamp());
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

/// A token verified before, as remembered: its claims, and the value of
/// [`Authenticator::revocations`] when they last passed the revocation check.
struct Verified {
    /// Shared, so a hit clones a pointer, not the claims' strings.
    claims: Arc<Claims>,
    passed_at: AtomicU64,
}

/// Signs (the token-issuing service only) and verifies tokens; holds the
/// revoked-session set.
pub struct Authenticator {
    signing: Option<SigningMaterial>,
    verifying: VerifyingKeys,
    validation: Validation,
    ttl: Duration,
    revoked: moka::sync::Cache<Uuid, (), kai_shared::FastHash>,
    /// Per user: sessions created before this many unix milliseconds are revoked,
    /// except the one named (the caller of a password change).
    revoked_before: moka::sync::Cache<Uuid, Watermark, kai_shared::FastHash>,
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>, kai_shared::FastHash>,
    /// How many revocations this replica has learned; raised after each is
    /// recorded. A cached token that passed the check at the current count is
    /// not checked again: nothing was revoked since (revocations only add — a
    /// remembered one is forgotten only once its tokens have expired).
    revocations: AtomicU64,
    /// Whether this replica knows every live revocation (see
    /// [`Authenticator::set_revocations_known`]); true unless told otherwise.
    known: AtomicBool,
    /// The check of a control message's signature (see [`control`]).
    control: Validation,
}

/// A user-wide revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub before_ms: i64,
    pub keep: Option<Uuid>,
}

impl Authenticator {
    /// `signing` is `None` in every service but the one that issues tokens.
    pub fn new(signing: Option<SigningMaterial>, verifying: VerifyingKeys, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Self {
            signing,
            verifying,
            validation,
            ttl,
            // A revoked token is forgotten once it would have expired anyway.
            revoked: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl + Duration::from_secs(60))
                .build_with_hasher(kai_shared::FastHash::default()),
            revoked_before: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl + Duration::from_secs(60))
                .build_with_hasher(kai_shared::FastHash::default()),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE_CAPACITY)
                .expire_after(UntilExp)
                .support_invalidation_closures()
                .build_with_hasher(kai_shared::FastHash::default()),
            revocations: AtomicU64::new(0),
            known: AtomicBool::new(true),
            control: control::validation(),
        }
    }

    /// Whether this replica knows every live revocation. A service without its
    /// own session check refuses authenticated requests (503, `Retry-After`)
    /// and is not ready while it does not: with Redis, from its start until it
    /// read the revoked set with profile-service's signed completeness marker,
    /// and again whenever it reads the set without one (Redis lost it) until
    /// profile-service has restored it from PostgreSQL.
    pub fn revocations_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    pub fn set_revocations_known(&self, known: bool) {
        self.known.store(known, Ordering::Release);
    }

    /// How many revocations this replica has recorded — its own and those it
    /// heard or loaded — raised after each one is recorded. A caller that reads
    /// it before some work and again after learns whether a revocation was
    /// recorded meanwhile (profile-service's memo of live sessions keeps nothing
    /// a check overlapping a revocation found).
    pub fn revocations_recorded(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Signs a control message (the token-issuing service only; see [`control`]).
    pub fn sign_control(
        &self,
        kind: control::Kind,
        body: String,
        exp: Option<i64>,
    ) -> anyhow::Result<String> {
        let signing = self.signing.as_ref().ok_or_else(|| {
            anyhow::anyhow!("this service holds no signing key (AUTH_SIGNING_KEY_FILE)")
        })?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid.clone());
        header.typ = Some("kai-control".into());
        let claims = control::Claims::new(kind, body, exp);
        Ok(jsonwebtoken::encode(&header, &claims, &signing.key)?)
    }

    /// Verifies a control message signed by the token-issuing service, of one
    /// of the `expected` kinds.
    pub fn verify_control(
        &self,
        message: &str,
        expected: &[control::Kind],
    ) -> Result<control::Control, control::Refused> {
        control::verify(message, &self.verifying, &self.control, expected)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mints a token for a user's session (the token-issuing service: the only holder of a
    /// signing key).
    pub fn mint(&self, user_id: Uuid, session_id: Uuid) -> Result<(String, Claims), ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            iat: now,
            exp: now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: None,
        };
        let token = self.sign(&claims)?;
        Ok((token, claims))
    }

    /// Signs arbitrary claims (tests use it to forge edge cases).
    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let signing = self.signing.as_ref().ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "this service holds no signing key (AUTH_SIGNING_KEY_FILE)"
            ))
        })?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid.clone());
        jsonwebtoken::encode(&header, claims, &signing.key).map_err(ApiError::internal)
    }

    /// Verifies algorithm, key, signature, expiry, issuer, audience, lifetime and
    /// revocation; a token verified before is answered from the cache.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, ApiError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Read before the check: a revocation recorded after this load raises
        // the count, so the next hit checks again (`mark_*` record, then raise).
        let revocations = self.revocations.load(Ordering::Acquire);
        match self.verified.get(&digest) {
            // moka may hand out an entry in the same second it expires.
            Some(v) if v.claims.exp > chrono::Utc::now().timestamp() => {
                if v.passed_at.load(Ordering::Relaxed) != revocations {
                    self.check_revocation(&v.claims)?;
                    v.passed_at.store(revocations, Ordering::Relaxed);
                }
                Ok(v.claims.clone())
            }
            _ => {
                let claims = Arc::new(self.verify_uncached(token)?);
                self.check_revocation(&claims)?;
                let verified = Verified {
                    claims: claims.clone(),
                    passed_at: AtomicU64::new(revocations),
                };
                self.verified.insert(digest, Arc::new(verified));
                Ok(claims)
            }
        }
    }

    /// Session revoked, or created before its user's watermark (and not kept).
    fn check_revocation(&self, claims: &Claims) -> Result<(), ApiError> {
        let ended = || ApiError::Unauthorized("the session has ended".into());
        if self.revoked.contains_key(&claims.sid) {
            return Err(ended());
        }
        if let Some(w) = self.revoked_before.get(&claims.sub)
            && created_ms(claims) < w.before_ms
            && w.keep != Some(claims.sid)
        {
            return Err(ended());
        }
        Ok(())
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid = |why: &str| ApiError::Unauthorized(format!("invalid access token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(reason(&e)))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("unsupported algorithm"));
        }
        if header.crit.is_some() {
            return Err(invalid("unsupported critical header"));
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or_else(|| invalid("unknown signing key"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| invalid(reason(&e)))?;
        let claims = data.claims;
        check_times(&claims, chrono::Utc::now().timestamp(), self.ttl).map_err(invalid)?;
        Ok(claims)
    }

    /// Remembers a revoked session on this replica and drops its cached tokens.
    pub fn mark_revoked(&self, session_id: Uuid) {
        self.revoked.insert(session_id, ());
        self.revocations.fetch_add(1, Ordering::Release);
        // Only fails when closures are unsupported, which the builder enables.
        let _ = self
            .verified
            .invalidate_entries_if(move |_, v| v.claims.sid == session_id);
    }

    /// Remembers a user-wide revocation on this replica; the newest watermark wins
    /// (an older one arriving late changes nothing). The user's cached
    /// verifications are dropped (and every cached token is checked again on its
    /// next use: the revocation count moved).
    pub fn mark_user_revoked(&self, user_id: Uuid, watermark: Watermark) {
        self.revoked_before.entry(user_id).and_upsert_with(|old| {
            match old.map(|e| e.into_value()) {
                Some(old) if old.before_ms >= watermark.before_ms => old,
                _ => watermark,
            }
        });
        self.revocations.fetch_add(1, Ordering::Release);
        let _ = self
            .verified
            .invalidate_entries_if(move |_, v| v.claims.sub == user_id);
    }

    /// Applies a revocation as announced between replicas: a session id, or
    /// `user <user id> <before ms> <kept session id or ->` (see [`user_revocation`]).
    /// Anything else is ignored.
    pub fn apply_revocation(&self, announced: &str) {
        if let Some(rest) = announced.strip_prefix("user ") {
            let mut parts = rest.split(' ');
            if let (Some(Ok(user)), Some(Ok(before_ms)), Some(keep)) = (
                parts.next().map(str::parse::<Uuid>),
                parts.next().map(str::parse::<i64>),
                parts.next(),
            ) {
                let keep = keep.parse().ok();
                self.mark_user_revoked(user, Watermark { before_ms, keep });
            }
        } else if let Ok(sid) = announced.parse() {
            self.mark_revoked(sid);
        }
    }

    /// True when this token's verification is cached here (tests).
    pub fn is_cached(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.verified.get(&digest).is_some()
    }

    /// How many verified tokens this replica remembers (tests).
    pub fn cached_verifications(&self) -> u64 {
        self.verified.run_pending_tasks();
        self.verified.entry_count()
    }
}

/// How a user-wide revocation is announced (and kept in Redis) — the form
/// [`Authenticator::apply_revocation`] reads.
pub fn user_revocation(user_id: Uuid, watermark: Watermark) -> String {
    let keep = watermark
        .keep
        .map_or_else(|| "-".to_owned(), |k| k.to_string());
    format!("user {user_id} {} {keep}", watermark.before_ms)
}

/// When the token's session was created, in unix milliseconds: from its UUIDv7
/// session id, else (another kind of id) from `iat`.
fn created_ms(claims: &Claims) -> i64 {
    match claims.sid.get_timestamp() {
        Some(ts) => {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        }
        None => claims.iat.saturating_mul(1000),
    }
}

/// The time claims against `now`, in checked arithmetic (a signed token is still
/// bounded: `iat = -1, exp = i64::MAX` must not wrap into a short lifetime).
/// `iat` lies within [now - ttl - skew, now + skew], `exp` after now, `exp - iat`
/// within [0, ttl] (so `exp` is at most now + skew + ttl), `nbf` not past now + skew.
fn check_times(claims: &Claims, now: i64, ttl: Duration) -> Result<(), &'static str> {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let window = ttl.saturating_add(CLOCK_SKEW_SECS);
    if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err("issued in the future");
    }
    if claims.iat < now.saturating_sub(window) {
        return Err("issued too long ago");
    }
    if claims.exp <= now {
        return Err("expired");
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECS))
    {
        return Err("not yet valid");
    }
    match claims.exp.checked_sub(claims.iat) {
        Some(lifetime) if (0..=ttl).contains(&lifetime) => Ok(()),
        _ => Err("lifetime above the allowed maximum"),
    }
}

fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not yet valid",
        K::InvalidSignature => "bad signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "unsupported algorithm",
        K::InvalidIssuer | K::InvalidAudience => "not issued for this API",
        _ => "malformed",
    }
}

/// The authenticated caller, taken from `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// Expiry of the token (unix seconds).
    pub expires_at: i64,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    /// Ready at once unless the service checks sessions itself (no allocation).
    type Future =
        Either<Ready<Result<Self, ApiError>>, LocalBoxFuture<'static, Result<Self, ApiError>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(gate) = req.app_data::<web::Data<Gate>>() else {
            return Either::Left(ready(Err(ApiError::internal(anyhow::anyhow!(
                "authentication state missing"
            )))));
        };
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))
            .and_then(|header| {
                // What HeaderValue::to_str accepts (a header value holds no
                // control byte but tab), checked a word at a time, not a byte.
                Some(header.as_bytes())
                    .filter(|b| b.is_ascii())
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|h| {
                        h.strip_prefix("Bearer ")
                            .or_else(|| h.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into())
                    })
            });
        // A service that cannot know every revocation refuses, rather than
        // serve a token that may have ended (see `revocations_known`).
        let token = token.and_then(|token| {
            if gate.session_check.is_none() && !gate.auth.revocations_known() {
                return Err(ApiError::NotReady(
                    "revocations are not known yet; retry shortly".into(),
                ));
            }
            Ok(token)
        });
        let user = token
            .and_then(|token| gate.auth.verify(token))
            .map(|claims| {
                // Every later line of the request names the user (`telemetry`).
                crate::telemetry::set_user(claims.sub);
                AuthUser {
                    user_id: claims.sub,
                    session_id: claims.sid,
                    expires_at: claims.exp,
                }
            });
        match (user, gate.session_check.clone()) {
            (Err(e), _) => Either::Left(ready(Err(e))),
            (Ok(user), None) => Either::Left(ready(Ok(user))),
            // The service that owns the sessions adds its own check, after
            // `verify` refused every revocation this replica knows.
            (Ok(user), Some(check)) => Either::Right(Box::pin(async move {
                check(user.session_id).await?;
                Ok(user)
            })),
        }
    }
}

/// One of the caller's resources, by the `{id}` in the path: the authenticated
/// user and the id. Routes under an id look the resource up by both, so another
/// user's resource is a 404, never a 403 that confirms it exists. The token is
/// checked first: without one, a malformed id is still a 401.
#[derive(Debug, Clone, Copy)]
pub struct Owned {
    pub user_id: Uuid,
    pub id: Uuid,
}

impl FromRequest for Owned {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let user = AuthUser::from_request(req, payload);
        let id = web::Path::<Uuid>::from_request(req, payload);
        Box::pin(async move {
            let user = user.await?;
            Ok(Owned {
                user_id: user.user_id,
                id: id.await?.into_inner(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::keys::{KeyPair, parse_signing_pem, parse_verifying_pems};
    use super::*;
    use base64::Engine;

    fn auth_with(pair: &KeyPair, ttl: u64) -> Authenticator {
        Authenticator::new(
            Some(parse_signing_pem(&pair.private_pem).unwrap()),
            parse_verifying_pems(&pair.public_pem).unwrap(),
            Duration::from_secs(ttl),
        )
    }

    fn auth() -> Authenticator {
        auth_with(&KeyPair::generate(), 60)
    }

    fn claims(iat: i64, exp: i64) -> Claims {
        Claims {
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            iat,
            exp,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            nbf: None,
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn minted_tokens_verify_and_name_their_key() {
        let a = auth();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, _) = a.mint(user, session).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert!(header.kid.is_some());
        let claims = a.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, session));
    }

    #[test]
    fn a_verifier_without_the_signing_key_verifies_but_cannot_mint() {
        let pair = KeyPair::generate();
        let (token, _) = auth_with(&pair, 60)
            .mint(Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        let verifier = Authenticator::new(
            None,
            parse_verifying_pems(&pair.public_pem).unwrap(),
            Duration::from_secs(60),
        );
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.mint(Uuid::new_v4(), Uuid::new_v4()).is_err());
    }

    #[test]
    fn rotation_verifies_tokens_of_every_listed_key() {
        let (old, new) = (KeyPair::generate(), KeyPair::generate());
        let (old_token, _) = auth_with(&old, 60)
            .mint(Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        let both = parse_verifying_pems(&format!("{}{}", old.public_pem, new.public_pem)).unwrap();
        let rotated = Authenticator::new(
            Some(parse_signing_pem(&new.private_pem).unwrap()),
            both,
            Duration::from_secs(60),
        );
        let (new_token, _) = rotated.mint(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        assert!(rotated.verify(&old_token).is_ok());
        assert!(rotated.verify(&new_token).is_ok());
        // Old key removed: its tokens are refused.
        assert!(auth_with(&new, 60).verify(&old_token).is_err());
    }

    #[test]
    fn tampered_foreign_and_revoked_tokens_are_refused() {
        let a = auth();
        let (token, claims) = a.mint(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(a.verify(&tampered).is_err());
        assert!(auth().verify(&token).is_err(), "another key pair");
        assert!(a.verify(&token).is_ok());
        assert!(a.is_cached(&token));
        a.mark_revoked(claims.sid);
        assert!(
            !a.is_cached(&token),
            "revocation drops the cached verification"
        );
        assert!(matches!(a.verify(&token), Err(ApiError::Unauthorized(_))));
    }

    /// A cached token skips the revocation check only while nothing was revoked
    /// since it last passed: a revocation recorded while other threads are
    /// serving hits of the same token refuses every use that starts after it,
    /// on every thread, and the other sessions stay valid.
    #[test]
    fn a_revocation_recorded_while_hits_are_served_refuses_every_later_use() {
        use std::sync::atomic::AtomicBool;
        let a = auth();
        let (bystander, _) = a.mint(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        for round in 0..50 {
            let (token, claims) = a.mint(Uuid::new_v4(), Uuid::new_v4()).unwrap();
            a.verify(&token).unwrap();
            let revoked = AtomicBool::new(false);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        loop {
                            let after = revoked.load(Ordering::SeqCst);
                            let ok = a.verify(&token).is_ok();
                            assert!(!(after && ok), "round {round}: used after its revocation");
                            assert!(a.verify(&bystander).is_ok());
                            if after {
                                break;
                            }
                        }
                    });
                }
                std::thread::sleep(Duration::from_micros(200));
                if round % 2 == 0 {
                    a.mark_revoked(claims.sid);
                } else {
                    a.mark_user_revoked(
                        claims.sub,
                        Watermark {
                            before_ms: chrono::Utc::now().timestamp_millis() + 1,
                            keep: None,
                        },
                    );
                }
                revoked.store(true, Ordering::SeqCst);
            });
            assert!(a.verify(&token).is_err());
        }
    }

    #[test]
    fn a_user_watermark_revokes_older_sessions_but_the_kept_one_and_newer_ones() {
        let a = auth();
        let user = Uuid::new_v4();
        let (old, _) = a.mint(user, Uuid::now_v7()).unwrap();
        let kept_sid = Uuid::now_v7();
        let (kept, _) = a.mint(user, kept_sid).unwrap();
        let (other_user, _) = a.mint(Uuid::new_v4(), Uuid::now_v7()).unwrap();
        // Verified (and cached) before the watermark: the cache must not save them.
        assert!(a.verify(&old).is_ok() && a.is_cached(&old));
        std::thread::sleep(Duration::from_millis(2));
        let before_ms = chrono::Utc::now().timestamp_millis();
        let announced = user_revocation(
            user,
            Watermark {
                before_ms,
                keep: Some(kept_sid),
            },
        );
        a.apply_revocation(&announced);
        assert!(a.verify(&old).is_err());
        assert!(a.verify(&kept).is_ok());
        assert!(a.verify(&other_user).is_ok());
        std::thread::sleep(Duration::from_millis(2));
        let (newer, _) = a.mint(user, Uuid::now_v7()).unwrap();
        assert!(
            a.verify(&newer).is_ok(),
            "a login after the watermark works"
        );
        // An older announcement arriving late does not undo a newer one.
        a.apply_revocation(&user_revocation(
            user,
            Watermark {
                before_ms: chrono::Utc::now().timestamp_millis() + 1,
                keep: None,
            },
        ));
        a.apply_revocation(&announced);
        assert!(a.verify(&kept).is_err() && a.verify(&newer).is_err());
        a.apply_revocation("user garbage");
        a.apply_revocation("not a uuid");
    }

    #[test]
    fn a_cache_hit_is_a_previously_verified_token_only() {
        let a = auth();
        let (token, _) = a.mint(Uuid::new_v4(), Uuid::new_v4()).unwrap();
        for _ in 0..100 {
            a.verify(&token).unwrap();
        }
        assert_eq!(a.cached_verifications(), 1);
        let mut forged = token.clone();
        forged.pop();
        assert!(a.verify(&forged).is_err());
        assert_eq!(a.cached_verifications(), 1, "failures are not cached");
    }

    #[test]
    fn hs256_and_alg_none_are_refused() {
        let a = auth();
        let body = b64(serde_json::to_string(&claims(now(), now() + 30))
            .unwrap()
            .as_bytes());
        let none = b64(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(a.verify(&format!("{none}.{body}.")).is_err());
        // HS256 signed with the (public) verifying key bytes: the classic confusion.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(now(), now() + 30),
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let err = a.verify(&hs).unwrap_err();
        assert!(err.to_string().contains("unsupported algorithm"), "{err}");
    }

    #[test]
    fn crit_headers_and_unknown_kids_are_refused() {
        let pair = KeyPair::generate();
        let a = auth_with(&pair, 60);
        let signing = parse_signing_pem(&pair.private_pem).unwrap();
        let c = claims(now(), now() + 30);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid.clone());
        header.crit = Some(vec!["exp".into()]);
        let token = jsonwebtoken::encode(&header, &c, &signing.key).unwrap();
        assert!(
            a.verify(&token)
                .unwrap_err()
                .to_string()
                .contains("critical")
        );
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("0000000000000000".into());
        let token = jsonwebtoken::encode(&header, &c, &signing.key).unwrap();
        assert!(
            a.verify(&token)
                .unwrap_err()
                .to_string()
                .contains("unknown signing key")
        );
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &c, &signing.key).unwrap();
        assert!(a.verify(&token).is_err(), "no kid");
    }

    #[test]
    fn expired_future_and_overlong_tokens_are_refused() {
        let a = auth();
        let t = now();
        let cases = [
            (claims(t - 120, t - 60), "expired"),
            (claims(t + 600, t + 620), "future"),
            (claims(t, t + 3600 * 24 * 365 * 10), "lifetime"),
            (
                Claims {
                    nbf: Some(t + 600),
                    ..claims(t, t + 30)
                },
                "not yet valid",
            ),
        ];
        for (c, why) in cases {
            let err = a.verify(&a.sign(&c).unwrap()).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        // A small skew is tolerated.
        assert!(a.verify(&a.sign(&claims(t + 5, t + 35)).unwrap()).is_ok());
    }

    /// Signed tokens with extreme times: none wraps into a short lifetime, none
    /// panics (debug builds check overflow), each is a 401.
    #[test]
    fn extreme_times_are_refused_without_overflow() {
        let a = auth();
        let t = now();
        let cases = [
            (claims(-1, i64::MAX), "too long ago"),
            (claims(i64::MIN, i64::MAX), "too long ago"),
            (claims(i64::MIN, t + 30), "too long ago"),
            (claims(0, t + 30), "too long ago"),
            (claims(t, i64::MAX), "lifetime"),
            (claims(t + CLOCK_SKEW_SECS, i64::MAX), "lifetime"),
            (claims(t, t + 61), "lifetime"),
            (claims(i64::MAX, i64::MAX), "future"),
            (claims(i64::MAX, t + 30), "future"),
            // Issued 70 s ago with a 60 s TTL and skew 30: inside the iat window, but
            // a lifetime of 100 s is above the TTL.
            (claims(t - 70, t + 30), "lifetime"),
            // Expires before it was issued.
            (claims(t, t - 1), "expired"),
            (claims(t + 20, t + 10), "lifetime"),
            (
                Claims {
                    nbf: Some(i64::MAX),
                    ..claims(t, t + 30)
                },
                "not yet valid",
            ),
        ];
        for (c, why) in cases {
            let (iat, exp) = (c.iat, c.exp);
            let err = a.verify(&a.sign(&c).unwrap()).unwrap_err();
            assert!(
                matches!(err, ApiError::Unauthorized(_)),
                "{iat}/{exp}: {err}"
            );
            assert!(err.to_string().contains(why), "{iat}/{exp} {why}: {err}");
        }
        // The bounds themselves, in the pure check (no signature needed).
        let ttl = Duration::from_secs(60);
        assert_eq!(check_times(&claims(t - 60, t), t, ttl), Err("expired"));
        assert_eq!(check_times(&claims(t - 59, t + 1), t, ttl), Ok(()));
        assert_eq!(check_times(&claims(t + 30, t + 90), t, ttl), Ok(()));
        assert_eq!(
            check_times(&claims(t + 31, t + 90), t, ttl),
            Err("issued in the future")
        );
        assert_eq!(
            check_times(&claims(t - 91, t + 1), t, ttl),
            Err("issued too long ago")
        );
        // An extreme TTL setting does not overflow either.
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(check_times(&claims(0, i64::MAX), t, forever), Ok(()));
        assert_eq!(
            check_times(&claims(-1, i64::MAX), t, forever),
            Err("lifetime above the allowed maximum")
        );
        assert_eq!(
            check_times(&claims(i64::MIN, i64::MAX), t, forever),
            Err("issued too long ago")
        );
    }
}
