//! profile-service's abuse limits (token buckets, `kai_shared::ratelimit`) and
//! the client address they are keyed by; the routes and the account routes
//! both check them.

use actix_web::HttpRequest;
use kai_platform::Platform;
use kai_shared::ratelimit::Limit;

// Brute force without lockout: attempts are limited per (e-mail, client address)
// and per client address, never per e-mail alone — guesses from elsewhere cannot
// lock the owner out, and a guesser's own buckets run dry instead.

/// 5 attempts at once per (e-mail, client address), then one every 12 s.
pub const LOGIN_PER_EMAIL_AND_CLIENT: Limit = Limit {
    name: "login-email-client",
    capacity: 5,
    per_second: 1.0 / 12.0,
};
/// 20 attempts at once per client address, then one a second.
pub const LOGIN_PER_CLIENT: Limit = Limit {
    name: "login-client",
    capacity: 20,
    per_second: 1.0,
};
/// 10 registrations at once per client address, then one a minute: each costs an
/// argon2 hash and answers "is this e-mail taken".
pub const REGISTER_PER_CLIENT: Limit = Limit {
    name: "register-client",
    capacity: 10,
    per_second: 1.0 / 60.0,
};

/// The client's address (`X-Forwarded-For` only through `TRUSTED_PROXIES`).
pub fn client_address(req: &HttpRequest, p: &Platform) -> String {
    kai_http::client_ip(req, &p.settings.http.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Re-entering a password (password change, account deletion): 5 attempts at
/// once per session, then one every 12 s. Per session, not per account: a
/// stolen token drains its own session's bucket only, never the owner's, so
/// the owner can still change the password (which ends the thief's session) or
/// delete the account. Guessing through the thief's session stays bounded.
pub const REAUTH_PER_SESSION: Limit = Limit {
    name: "reauth-session",
    capacity: 5,
    per_second: 1.0 / 12.0,
};
