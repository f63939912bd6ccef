//! kai-load and kai-verify: Kai's load-test and deployment-verification commands.
//! See docs/PERFORMANCE.md for how to run them and what the numbers mean.

pub mod costs;
pub mod load;
pub mod metrics;
pub mod replica;
pub mod report;
pub mod scenarios;
pub mod seed;
pub mod soak;
pub mod spawn;
pub mod text;
pub mod verify;

use std::path::Path;
use std::time::Duration;

use kai_http::auth::Authenticator;
use kai_http::auth::keys::{KeyPair, VerifyingKeys, parse_signing_pem};

/// The development key pair of services kai-load spawns: derived from a fixed
/// seed (development only, never a deployment's key), written once under the
/// temp directory. Returns the pair and the (signing, verifying) file paths.
pub fn dev_keys() -> &'static (KeyPair, String, String) {
    static KEYS: std::sync::OnceLock<(KeyPair, String, String)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut seed = [0u8; 32];
        let label = b"kai-load development key, never in production";
        for (i, b) in label.iter().enumerate() {
            seed[i % 32] ^= *b;
        }
        let pair = KeyPair::from_seed(seed);
        let dir = std::env::temp_dir().join(format!("kai-load-keys-{}", pair.kid));
        let (s, v) = pair
            .write_to(&dir)
            .expect("writing the development key pair");
        (pair, s.display().to_string(), v.display().to_string())
    })
}

/// The auth environment of services kai-load spawns (development key files).
pub fn dev_auth_env() -> Vec<(String, String)> {
    let (_, signing, verifying) = dev_keys();
    vec![
        ("AUTH_SIGNING_KEY_FILE".to_owned(), signing.clone()),
        ("AUTH_VERIFYING_KEYS_FILE".to_owned(), verifying.clone()),
    ]
}

/// An authenticator that mints tokens with a deployment's signing key (PKCS#8
/// PEM file), or with the development key when none is given. `ttl` must not
/// exceed the services' `AUTH_TOKEN_TTL_SECS` (longer tokens are refused).
pub fn minting_authenticator(
    signing_key_file: Option<&Path>,
    ttl: Duration,
) -> anyhow::Result<Authenticator> {
    let pem = match signing_key_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
        None => dev_keys().0.private_pem.clone(),
    };
    let signing = parse_signing_pem(&pem).map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
    Ok(Authenticator::new(
        Some(signing),
        VerifyingKeys::default(),
        ttl,
    ))
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            super::parse_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(super::parse_duration("3h").is_err());
        assert!(super::parse_duration("x").is_err());
    }
}
