//! The settings groups of this crate's parts, each declared once as a `clap::Args`
//! struct whose every field names its environment variable: [`DatabaseSettings`]
//! (the pool), [`RedisSettings`] (connections, the breaker, key prefix) and
//! [`CacheSettings`] (the engine). The platform nests them in the service's
//! `Settings` (as zero2prod's `Settings { database, application, .. }`), and each
//! part is built from its own group only.
//!
//! Also here: the value parsers every group uses (each returns the message an
//! operator reads after the variable's name) and [`ConfigError`].

use std::path::Path;
use std::time::Duration;

use clap::ArgAction;
use secrecy::{ExposeSecret, SecretString};

use crate::cache::seal::CacheKey;
use crate::tls::CaBundle;

/// A configuration error: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

/// PostgreSQL's `sslmode`, with libpq's meaning (tokio-postgres itself knows only
/// the first three; the verifying modes are ours, see [`crate::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it, else plaintext; certificate not checked (libpq's default).
    Prefer,
    /// TLS or no connection; certificate not checked (checked against `DATABASE_CA_FILE` if given).
    Require,
    /// TLS; the certificate must chain to a trusted root, any host name.
    VerifyCa,
    /// TLS; trusted chain and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Takes `sslmode` out of a PostgreSQL URL (or key=value string), so that
/// tokio-postgres, which rejects the verifying modes, parses the rest.
fn split_sslmode(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((head, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let mut mode = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.strip_prefix("sslmode=") {
                Some(v) => {
                    mode = Some(v.to_owned());
                    false
                }
                None => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            head.to_owned()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        return (rest, mode);
    }
    // key=value form: remove the `sslmode=<value>` token, leave the rest as written.
    let at = url
        .match_indices("sslmode=")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || url[..i].ends_with(char::is_whitespace));
    let Some(at) = at else {
        return (url.to_owned(), None);
    };
    let value_start = at + "sslmode=".len();
    let value_end = url[value_start..]
        .find(char::is_whitespace)
        .map_or(url.len(), |n| value_start + n);
    let mode = url[value_start..value_end].trim_matches('\'').to_owned();
    (format!("{}{}", &url[..at], &url[value_end..]), Some(mode))
}

/// The PostgreSQL pool's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    #[arg(id = "database_url", long = "database-url", env = "DATABASE_URL", value_parser = postgres_url,
        help = "PostgreSQL URL; services may share one database (one schema each). \
                `sslmode=disable/prefer/require/verify-ca/verify-full` as libpq (default `prefer`); \
                use `verify-full` in production")]
    pub url: SecretString,
    /// `sslmode` of `DATABASE_URL` (libpq's default, `prefer`, when absent); set by
    /// [`DatabaseSettings::check`].
    #[arg(skip = SslMode::Prefer)]
    pub ssl_mode: SslMode,
    #[arg(id = "database_ca", long = "database-ca", env = "DATABASE_CA_FILE", value_parser = ca_file,
        help = "PEM CA bundle that signs the PostgreSQL server certificate (else the system roots); \
                like libpq's `root.crt` it also makes `require` check the chain")]
    pub ca: Option<CaBundle>,
    #[arg(id = "db_pool_size", long = "db-pool-size", env = "DB_POOL_SIZE", default_value = "20",
        value_parser = positive::<usize>, help = "PostgreSQL pool size")]
    pub pool_size: usize,
    #[arg(id = "db_pool_timeout", long = "db-pool-timeout-secs", env = "DB_POOL_TIMEOUT_SECS",
        default_value = "30", value_parser = positive_secs,
        help = "how long a request waits for a pooled connection before answering 503")]
    pub pool_timeout: Duration,
    #[arg(id = "slow_query_threshold", long = "slow-query-threshold-ms", env = "SLOW_QUERY_THRESHOLD_MS",
        default_value = "100", value_parser = millis,
        help = "slower statements are logged as `slow query` (SQL only, never parameters) and counted")]
    pub slow_query_threshold: Duration,
    #[arg(id = "database_replica_urls", long = "database-replica-urls", env = "DATABASE_REPLICA_URLS",
        default_value = "", value_parser = postgres_url_list,
        help = "comma-separated PostgreSQL URLs of streaming read replicas of DATABASE_URL's server \
                (same forms, `sslmode` and CA); reads go to one only when it has replayed past the \
                last write of what is read")]
    pub replica_urls: ::std::vec::Vec<SecretString>,
    #[arg(id = "db_pipeline_lanes", long = "db-pipeline-lanes", env = "DB_PIPELINE_LANES",
        default_value = "2", value_parser = number::<usize>,
        help = "pooled connections shared by concurrent short reads, pipelined: one per HTTP worker, \
                at most this many and half of DB_POOL_SIZE; 0: every read on a connection of its own")]
    pub pipeline_lanes: usize,
}

impl DatabaseSettings {
    /// Derives `ssl_mode` from the URL (every way of reading settings ends here).
    pub fn check(mut self) -> Result<Self, ConfigError> {
        let (_, mode) = split_sslmode(self.url.expose_secret());
        self.ssl_mode = mode
            .as_deref()
            .and_then(SslMode::parse)
            .unwrap_or(SslMode::Prefer);
        Ok(self)
    }

    /// The pipelined lanes the pool keeps: `DB_PIPELINE_LANES`, at most half of
    /// `DB_POOL_SIZE` (the rest serve writes, transactions and long reads).
    pub fn lanes(&self) -> usize {
        self.pipeline_lanes.min(self.pool_size / 2)
    }

    /// The settings of each read replica: this group with the replica's URL (its
    /// own `sslmode`; the same CA, pool size and thresholds).
    pub fn replica_settings(&self) -> Vec<DatabaseSettings> {
        self.replica_urls
            .iter()
            .map(|url| {
                let (_, mode) = split_sslmode(url.expose_secret());
                DatabaseSettings {
                    url: url.clone(),
                    ssl_mode: mode
                        .as_deref()
                        .and_then(SslMode::parse)
                        .unwrap_or(SslMode::Prefer),
                    replica_urls: Vec::new(),
                    ..self.clone()
                }
            })
            .collect()
    }

    /// The PostgreSQL configuration (already validated when parsed).
    /// `sslmode` is applied as tokio-postgres knows it (the verifying modes as
    /// `require`; what they verify is the TLS connector's job, see `db::pool`).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let (url, _) = split_sslmode(self.url.expose_secret());
        let mut config: tokio_postgres::Config =
            url.parse().expect("DATABASE_URL validated at start");
        config.ssl_mode(match self.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        config
    }
}

/// Redis: where it is, how it is trusted, how many connections, how long a
/// command may take, and the prefix of every key and channel.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    #[arg(id = "redis_url", long = "redis-url", env = "REDIS_URL", value_parser = redis_url,
        help = "Redis URL; `rediss://` = TLS, `redis[s]://user:password@host:port` = ACL auth; \
                unset = in-process cache only (one replica)")]
    pub url: Option<SecretString>,
    #[arg(id = "redis_ca", long = "redis-ca", env = "REDIS_CA_FILE", value_parser = ca_file,
        help = "PEM CA bundle that signs the Redis server certificate (else the system roots)")]
    pub ca: Option<CaBundle>,
    /// Seed nodes of a Redis Cluster; non-empty = cluster mode (then `url` is unset).
    #[arg(id = "redis_cluster_nodes", long = "redis-cluster-nodes", env = "REDIS_CLUSTER_NODES",
        default_value = "", value_parser = redis_url_list,
        help = "comma-separated seed URLs of a Redis Cluster (same URL forms), instead of \
                `REDIS_URL` (setting both is refused)")]
    pub cluster_nodes: ::std::vec::Vec<SecretString>,
    #[arg(id = "redis_pool_size", long = "redis-pool-size", env = "REDIS_POOL_SIZE",
        default_value = "50", value_parser = positive::<u32>, help = "Redis pool size")]
    pub pool_size: u32,
    #[arg(id = "redis_timeout", long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS",
        default_value = "100", value_parser = positive_millis,
        help = "per-command Redis timeout (then the circuit breaker opens)")]
    pub timeout: Duration,
    /// Prefix of every Redis key and channel; tests give each test its own.
    #[arg(skip = String::from("kai"))]
    pub prefix: String,
}

impl RedisSettings {
    /// One node or a cluster, not both.
    pub fn check(self) -> Result<Self, ConfigError> {
        if self.url.is_some() && !self.cluster_nodes.is_empty() {
            return Err(ConfigError {
                var: "REDIS_CLUSTER_NODES".into(),
                message:
                    "set either REDIS_URL (one node) or REDIS_CLUSTER_NODES (a cluster), not both"
                        .into(),
            });
        }
        Ok(self)
    }

    /// Whether a Redis is configured at all.
    pub fn configured(&self) -> bool {
        self.url.is_some() || !self.cluster_nodes.is_empty()
    }
}

/// The cache engine.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheSettings {
    #[arg(id = "cache_enabled", long = "cache-enabled", env = "CACHE_ENABLED", default_value = "true",
        value_parser = boolean, action = ArgAction::Set,
        help = "false: every cacheable read goes to PostgreSQL (`X-Cache: BYPASS`)")]
    pub enabled: bool,
    #[arg(id = "cache_l1_max_mb", long = "cache-l1-max-mb", env = "CACHE_L1_MAX_MB", default_value = "32",
        value_parser = positive::<u64>,
        help = "in-process L1 cache bound (MiB of entries): the hot set, since L1 holds \
                live generations only")]
    pub l1_max_mb: u64,
    #[arg(id = "cache_encryption_key", long = "cache-encryption-key", env = "CACHE_ENCRYPTION_KEY",
        value_parser = cache_key,
        help = "32 bytes, base64: the service's own key for its Redis cache entries (AES-256-GCM, \
                bound to each entry's key name; a Secret). Unset = derived from the service name \
                and `DATABASE_URL` (rotating the database password then empties the Redis cache)")]
    pub encryption_key: Option<CacheKey>,
    #[arg(id = "cache_encryption_keys", long = "cache-encryption-keys", env = "CACHE_ENCRYPTION_KEYS",
        default_value = "", value_parser = cache_key_list,
        help = "comma-separated older keys (base64), still accepted for reading Redis cache \
                entries during a key rotation; `CACHE_ENCRYPTION_KEY` alone seals")]
    pub older_keys: ::std::vec::Vec<CacheKey>,
    /// What the default key is derived from when `encryption_key` is unset: the
    /// service's `DATABASE_URL`, set by the platform's settings check.
    #[arg(skip)]
    pub key_seed: Option<SecretString>,
}

impl CacheSettings {
    /// The service's sealing key (configured, or derived — see
    /// [`CacheKey::derived`]) and the older keys that still open entries.
    pub fn keys(&self, service: &str) -> Result<(CacheKey, Vec<CacheKey>), ConfigError> {
        let current = match (&self.encryption_key, &self.key_seed) {
            (Some(key), _) => key.clone(),
            (None, Some(seed)) => CacheKey::derived(service, seed.expose_secret().as_bytes()),
            (None, None) => {
                return Err(ConfigError {
                    var: "CACHE_ENCRYPTION_KEY".into(),
                    message: "required when Redis is configured (32 bytes, base64)".into(),
                });
            }
        };
        Ok((current, self.older_keys.clone()))
    }
}

// ---- value parsers: each returns the message an operator reads after the name ----

/// Any `FromStr` value: `cannot parse "twenty": invalid digit found in string`.
pub fn number<T: std::str::FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    raw.parse()
        .map_err(|e| format!("cannot parse {raw:?}: {e}"))
}

/// A number greater than zero.
pub fn positive<T: std::str::FromStr + PartialOrd + Default>(raw: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value: T = number(raw)?;
    if value <= T::default() {
        return Err("must be greater than 0".into());
    }
    Ok(value)
}

pub fn millis(raw: &str) -> Result<Duration, String> {
    number(raw).map(Duration::from_millis)
}

pub fn positive_millis(raw: &str) -> Result<Duration, String> {
    positive(raw).map(Duration::from_millis)
}

pub fn positive_secs(raw: &str) -> Result<Duration, String> {
    positive(raw).map(Duration::from_secs)
}

/// A share between 0 and 1 (`0.01` = 1 %).
pub fn fraction(raw: &str) -> Result<f64, String> {
    let value: f64 = number(raw)?;
    if !(0.0..=1.0).contains(&value) {
        return Err("must be between 0 and 1".into());
    }
    Ok(value)
}

pub fn boolean(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// A secret kept as it is (never printed).
pub fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw.to_owned()))
}

/// An `http://` or `https://` URL.
pub fn http_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("http://") || raw.starts_with("https://") {
        Ok(raw.to_owned())
    } else {
        Err("must start with http:// or https://".into())
    }
}

/// Comma-separated values, trimmed, empty ones dropped.
pub fn comma_list(raw: &str) -> Result<Vec<String>, String> {
    Ok(raw
        .split(',')
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect())
}

/// A file's whole text.
pub fn read_file(raw: &str) -> Result<String, String> {
    std::fs::read_to_string(raw).map_err(|e| format!("cannot read {raw:?}: {e}"))
}

fn postgres_url(raw: &str) -> Result<SecretString, String> {
    let (without_mode, mode) = split_sslmode(raw);
    if let Some(m) = mode
        && SslMode::parse(&m).is_none()
    {
        return Err(format!(
            "sslmode {m:?} is not one of disable, prefer, require, verify-ca, verify-full"
        ));
    }
    without_mode
        .parse::<tokio_postgres::Config>()
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    secret(raw)
}

/// Comma-separated PostgreSQL URLs (`DATABASE_REPLICA_URLS`), each checked as
/// `DATABASE_URL` is; empty = none.
fn postgres_url_list(raw: &str) -> Result<Vec<SecretString>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(postgres_url)
        .collect()
}

/// A URL is checked for its form only; the password in it never reaches a message.
fn redis_url(raw: &str) -> Result<SecretString, String> {
    redis::IntoConnectionInfo::into_connection_info(raw)
        .map_err(|e| format!("not a Redis URL: {e}"))?;
    secret(raw)
}

fn redis_url_list(raw: &str) -> Result<Vec<SecretString>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(redis_url)
        .collect()
}

/// 32 bytes in standard base64 (`openssl rand -base64 32`).
pub fn cache_key(raw: &str) -> Result<CacheKey, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|_| "not base64 (make one with `openssl rand -base64 32`)".to_owned())?;
    let bytes: [u8; crate::cache::seal::KEY_LEN] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes; a key is 32 bytes", b.len()))?;
    Ok(CacheKey::from_bytes(bytes))
}

fn cache_key_list(raw: &str) -> Result<Vec<CacheKey>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(cache_key)
        .collect()
}

fn ca_file(raw: &str) -> Result<CaBundle, String> {
    CaBundle::load(Path::new(raw))
}
