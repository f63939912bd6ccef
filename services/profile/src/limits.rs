//! profile-service's abuse limits (token buckets, `kai_shared::ratelimit`) and
//! the client address they are keyed by; the routes and the account routes
//! both check them.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::HttpRequest;
use kai_platform::Platform;
use kai_shared::ratelimit::Limit;

// Brute force without lockout (SPEC §4, device-bound throttling): attempts are
// limited per (e-mail, client address), per client address (IPv6 by /64) and,
// for clients without a valid device token of the account (`crate::device`), per
// account — many addresses guessing one account are bounded. A login that
// presents the account's device token is limited only by that device's bucket,
// so guesses from elsewhere never lock the owner's devices out.

/// 10 attempts at once per account (canonical e-mail) from clients without one
/// of its device tokens, then 10 per 15 minutes (one every 90 s).
pub const LOGIN_PER_ACCOUNT_UNKNOWN_DEVICES: Limit = Limit {
    name: "login-account-unknown-devices",
    capacity: 10,
    per_second: 10.0 / 900.0,
};
/// 5 attempts at once per device (a valid device token of the account), then
/// one every 12 s: the only bucket such a login draws on.
pub const LOGIN_PER_DEVICE: Limit = Limit {
    name: "login-device",
    capacity: 5,
    per_second: 1.0 / 12.0,
};

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

/// The client's address as the limits key it (`X-Forwarded-For` only through
/// `TRUSTED_PROXIES`): an IPv4 address, or an IPv6 address's /64 — one
/// subscriber's allocation, in which an attacker has 2^64 addresses to rotate.
pub fn client_address(req: &HttpRequest, p: &Platform) -> String {
    kai_http::client_ip(req, &p.settings.http.trusted_proxies)
        .map(address_key)
        .unwrap_or_else(|| "unknown".into())
}

/// The bucket key of one address: IPv4 (IPv4-mapped IPv6 too) as is, IPv6 by /64.
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let prefix = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{prefix}/64")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_share_their_64_and_ipv4_stays_whole() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    }
}
