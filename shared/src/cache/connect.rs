//! How a Redis client is made from the configuration, and which start-up failures
//! are configuration errors.
//!
//! `rediss://` is TLS (rustls, ring), verified against `REDIS_CA_FILE` or the
//! system roots; `redis://user:password@host` is ACL auth, which the redis crate
//! sends as `AUTH user password` on every new connection.
//!
//! A wrong password or a certificate that does not verify never heals by itself,
//! so it stops the process at start with one line naming the variable (never the
//! URL, which holds the password). A Redis that is merely unreachable at start is
//! an outage, not a mistake: the service starts degraded, as it always has.

use crate::tls::CaBundle;

/// A client for one Redis node.
pub fn client(url: &str, ca: Option<&CaBundle>) -> Result<redis::Client, String> {
    match ca {
        None => redis::Client::open(url).map_err(|e| e.to_string()),
        Some(ca) => {
            let pem = ca
                .pem()
                .map_err(|e| format!("REDIS_CA_FILE {}: {e}", ca.path.display()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| e.to_string())
        }
    }
}

/// True when `e` says the configuration is wrong (credentials, TLS trust), as
/// opposed to Redis being unreachable.
pub fn is_configuration_error(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return true;
    }
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
        return true;
    }
    // rustls failures arrive as I/O errors: the handshake's words say which.
    let text = e.to_string();
    [
        "invalid peer certificate",
        "UnknownIssuer",
        "not valid for name",
        "InvalidContentType",
        "CorruptMessage",
    ]
    .iter()
    .any(|w| text.contains(w))
}
