//! Configuration: declared once, as clap structs whose every field names its
//! environment variable. From that one declaration come
//!
//! - the parsing and validation at start ([`parse`]): a bad value stops the process
//!   with one line naming the variable ([`ConfigError`], exit code 2), never a panic;
//! - `--help` (clap prints each flag with its `[env: …]` and default);
//! - the README's configuration table ([`markdown_rows`]; a test in `tests/` fails
//!   when README and declaration disagree).
//!
//! [`Settings`] holds what every service reads. A service's own settings are a
//! `clap::Args` struct in that service (e.g. an outbound endpoint's URL and timeout), which
//! the binary's CLI flattens next to [`Settings`]; other services never parse them.
//!
//! **Adding a variable** is one change in one place: add a field to [`Settings`]
//! (or to the service's own struct) with `#[arg(long, env = "NAME", help = "…")]`,
//! a `default_value` unless it is required or optional (`Option<T>`), and a
//! `value_parser` from the bottom of this file (or a new one returning
//! `Result<T, String>`, whose message is what the operator reads). `--help`,
//! validation and error naming follow; then regenerate the README rows
//! (`cargo nextest run -p kai-e2e -E 'test(readme)'` prints them on mismatch).
//!
//! Values come from a lookup function, not straight from `std::env`: the binary
//! passes the environment (after `.env`), tests pass a map, so unit tests exercise
//! every error without touching the process environment. Values are trimmed; an
//! empty value counts as unset. A flag on the command line wins over the variable.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, FromArgMatches};
use secrecy::{ExposeSecret, SecretString};

use crate::tls::CaBundle;

/// A configuration error: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

/// [`ConfigError::var`] of an error that concerns no variable (an unknown flag,
/// `--help`): the binary lets clap print it.
pub const COMMAND_LINE: &str = "command line";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
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

/// Everything every service is configured with. Secrets are [`SecretString`]s so a
/// `Debug` print of the settings never shows them.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Platform settings (every service)")]
pub struct Settings {
    #[arg(long, env = "DATABASE_URL", value_parser = postgres_url,
        help = "PostgreSQL URL; services may share one database (one schema each). \
                `sslmode=disable/prefer/require/verify-ca/verify-full` as libpq (default `prefer`); \
                use `verify-full` in production")]
    pub database_url: SecretString,
    /// `sslmode` of `DATABASE_URL` (libpq's default, `prefer`, when absent); set by
    /// [`Settings::check`].
    #[arg(skip = SslMode::Prefer)]
    pub database_ssl_mode: SslMode,
    #[arg(long, env = "DATABASE_CA_FILE", value_parser = ca_file,
        help = "PEM CA bundle that signs the PostgreSQL server certificate (else the system roots); \
                like libpq's `root.crt` it also makes `require` check the chain")]
    pub database_ca: Option<CaBundle>,
    #[arg(long, env = "REDIS_URL", value_parser = redis_url,
        help = "Redis URL; `rediss://` = TLS, `redis[s]://user:password@host:port` = ACL auth; \
                unset = in-process cache only (one replica)")]
    pub redis_url: Option<SecretString>,
    #[arg(long, env = "REDIS_CA_FILE", value_parser = ca_file,
        help = "PEM CA bundle that signs the Redis server certificate (else the system roots)")]
    pub redis_ca: Option<CaBundle>,
    /// Seed nodes of a Redis Cluster; non-empty = cluster mode (then `redis_url` is unset).
    #[arg(long, env = "REDIS_CLUSTER_NODES", default_value = "", value_parser = redis_url_list,
        help = "comma-separated seed URLs of a Redis Cluster (same URL forms), instead of \
                `REDIS_URL` (setting both is refused)")]
    pub redis_cluster_nodes: ::std::vec::Vec<SecretString>,
    #[arg(long, env = "HOST", default_value = "0.0.0.0", value_parser = number::<IpAddr>,
        help = "listen address")]
    pub host: IpAddr,
    /// The default is the service's own (set by [`with_port_default`]).
    #[arg(long, env = "PORT", value_parser = number::<u16>, help = "listen port")]
    pub port: u16,
    /// Public keys every token is verified with, by `kid`.
    #[arg(long = "auth-verifying-keys-file", env = "AUTH_VERIFYING_KEYS_FILE",
        value_parser = verifying_keys,
        help = "PEM file of one or more Ed25519 public keys; a token is verified with the key its \
                `kid` names (rotation: add a key, switch the signing key, remove the old key)")]
    pub auth_verifying_keys: crate::auth::keys::VerifyingKeys,
    /// The private signing key: the token-issuing service only (see [`Settings::require_signing_key`]).
    #[arg(long = "auth-signing-key-file", env = "AUTH_SIGNING_KEY_FILE", value_parser = signing_key,
        help = "PKCS#8 PEM Ed25519 private key that signs access tokens (EdDSA); required by \
                the service that issues tokens (`serve`), held by no other service")]
    pub auth_signing_key: Option<crate::auth::keys::SigningMaterial>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = cidr_list,
        help = "CIDR list; `X-Forwarded-For` is believed only from these peers (then the \
                rightmost untrusted hop is the client)")]
    pub trusted_proxies: ::std::vec::Vec<ipnet::IpNet>,
    #[arg(long = "auth-token-ttl-secs", env = "AUTH_TOKEN_TTL_SECS", default_value = "3600",
        value_parser = positive_secs, help = "access-token lifetime")]
    pub auth_token_ttl: Duration,
    #[arg(long, env = "CACHE_ENABLED", default_value = "true", value_parser = boolean,
        action = ArgAction::Set,
        help = "false: every cacheable read goes to PostgreSQL (`X-Cache: BYPASS`)")]
    pub cache_enabled: bool,
    #[arg(long = "cache-l1-max-mb", env = "CACHE_L1_MAX_MB", default_value = "32",
        value_parser = positive::<u64>,
        help = "in-process L1 cache bound (MiB of entries): the hot set, since L1 holds \
                live generations only")]
    pub cache_l1_max_mb: u64,
    #[arg(long, env = "DB_POOL_SIZE", default_value = "20", value_parser = positive::<usize>,
        help = "PostgreSQL pool size")]
    pub db_pool_size: usize,
    #[arg(long = "db-pool-timeout-secs", env = "DB_POOL_TIMEOUT_SECS", default_value = "30",
        value_parser = positive_secs,
        help = "how long a request waits for a pooled connection before answering 503")]
    pub db_pool_timeout: Duration,
    #[arg(long, env = "REDIS_POOL_SIZE", default_value = "50", value_parser = positive::<u32>,
        help = "Redis pool size")]
    pub redis_pool_size: u32,
    #[arg(long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", default_value = "100",
        value_parser = positive_millis,
        help = "per-command Redis timeout (then the circuit breaker opens)")]
    pub redis_timeout: Duration,
    #[arg(long = "slow-query-threshold-ms", env = "SLOW_QUERY_THRESHOLD_MS",
        default_value = "100", value_parser = millis,
        help = "slower statements are logged as `slow query` (SQL only, never parameters) and counted")]
    pub slow_query_threshold: Duration,
    #[arg(long = "slow-request-threshold-ms", env = "SLOW_REQUEST_THRESHOLD_MS",
        default_value = "1000", value_parser = millis,
        help = "slower requests are logged as warnings")]
    pub slow_request_threshold: Duration,
    #[arg(long = "access-log-sample", env = "ACCESS_LOG_SAMPLE", default_value = "0.01",
        value_parser = fraction,
        help = "share of requests written as a `request` log line (route pattern, status, duration): \
                0 = none, 1 = every request; server errors and slow requests are always logged")]
    pub access_log_sample: f64,
    #[arg(long = "request-body-timeout-ms", env = "REQUEST_BODY_TIMEOUT_MS",
        default_value = "10000", value_parser = positive_millis,
        help = "a request body must arrive within this time of being asked for, else 408 \
                (slow clients: a 4 MiB batch import needs about 420 KB/s)")]
    pub request_body_timeout: Duration,
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "", value_parser = comma_list,
        help = "comma-separated origins; scripts may read `Retry-After`, `ETag`, `Location`, \
                `X-Request-Id`, `X-Cache`; a preflight offers only the route's methods and the \
                headers `Authorization`, `Content-Type`, `If-None-Match`, `X-Request-Id`")]
    pub cors_allowed_origins: ::std::vec::Vec<String>,
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "info",
        help = "tracing filter"
    )]
    pub rust_log: String,
    #[arg(long, env = "LOG_FORMAT", default_value = "json", value_parser = log_format,
        help = "`json` or `pretty`")]
    pub log_format: LogFormat,
    #[arg(long, env = "RUN_MIGRATIONS", default_value = "true", value_parser = boolean,
        action = ArgAction::Set, help = "false: `serve` does not migrate (a Job did)")]
    pub run_migrations: bool,
    /// Prefix of every Redis key and channel; tests give each test its own.
    #[arg(skip = String::from("kai"))]
    pub cache_prefix: String,
}

impl Settings {
    /// Parses the platform settings alone from any lookup (tests, tools).
    pub fn from_lookup(
        default_port: u16,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        args_from_lookup::<Self>(with_port_default(command::<Self>(), default_port), get)?.check()
    }

    /// What one variable's parser cannot see: rules between variables, and values
    /// derived from another's. Every way of reading settings ends here.
    pub fn check(mut self) -> Result<Self, ConfigError> {
        if self.redis_url.is_some() && !self.redis_cluster_nodes.is_empty() {
            return Err(ConfigError {
                var: "REDIS_CLUSTER_NODES".into(),
                message:
                    "set either REDIS_URL (one node) or REDIS_CLUSTER_NODES (a cluster), not both"
                        .into(),
            });
        }
        if let Some(key) = &self.auth_signing_key
            && !self.auth_verifying_keys.contains(&key.kid)
        {
            return Err(ConfigError {
                var: "AUTH_SIGNING_KEY_FILE".into(),
                message: format!(
                    "its public key (kid {}) is not in AUTH_VERIFYING_KEYS_FILE",
                    key.kid
                ),
            });
        }
        let (_, mode) = split_sslmode(self.database_url.expose_secret());
        self.database_ssl_mode = mode
            .as_deref()
            .and_then(SslMode::parse)
            .unwrap_or(SslMode::Prefer);
        Ok(self)
    }

    /// The service that signs tokens: without `AUTH_SIGNING_KEY_FILE` it must not serve.
    pub fn require_signing_key(&self) -> Result<(), ConfigError> {
        match self.auth_signing_key {
            Some(_) => Ok(()),
            None => Err(ConfigError {
                var: "AUTH_SIGNING_KEY_FILE".into(),
                message: "required by the service that issues tokens: the PKCS#8 PEM \
                          Ed25519 private key that signs them"
                    .into(),
            }),
        }
    }

    /// The PostgreSQL configuration (already validated when parsed).
    /// `sslmode` is applied as tokio-postgres knows it (the verifying modes as
    /// `require`; what they verify is the TLS connector's job, see `db::pool`).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let (url, _) = split_sslmode(self.database_url.expose_secret());
        let mut config: tokio_postgres::Config =
            url.parse().expect("DATABASE_URL validated at start");
        config.ssl_mode(match self.database_ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        config
    }
}

/// A service without settings of its own.
#[derive(Debug, Clone, clap::Args)]
pub struct NoServiceSettings {}

/// A bare command holding the arguments of `A` (for parsing `A` alone, and for docs).
pub fn command<A: clap::Args>() -> clap::Command {
    A::augment_args(clap::Command::new("kai").no_binary_name(true))
}

/// Parses any settings struct `A` from a lookup, with no command line.
pub fn args_from_lookup<A: clap::Args>(
    cmd: clap::Command,
    get: impl Fn(&str) -> Option<String>,
) -> Result<A, ConfigError> {
    parse(cmd, get, Vec::<OsString>::new())
}

/// Sets `PORT`'s default to the service's own port.
pub fn with_port_default(cmd: clap::Command, port: u16) -> clap::Command {
    // clap keeps defaults as `'static`; this runs once per parse, a few bytes.
    let port: &'static str = Box::leak(port.to_string().into_boxed_str());
    cmd.mut_arg("port", |a| a.default_value(port).required(false))
}

/// Parses `cmd`'s arguments: each variable from `get` (trimmed, empty = unset),
/// then `cli` (the command line after the binary name), which wins.
pub fn parse<T: FromArgMatches>(
    cmd: clap::Command,
    get: impl Fn(&str) -> Option<String>,
    cli: impl IntoIterator<Item = OsString>,
) -> Result<T, ConfigError> {
    let mut argv: Vec<OsString> = Vec::new();
    for arg in cmd.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let value = get(&env.to_string_lossy())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        if let Some(value) = value {
            argv.push(format!("--{long}={value}").into());
        }
    }
    argv.extend(cli);
    // The variables were read through `get`: clap must not read them again.
    let parser = cmd
        .clone()
        .no_binary_name(true)
        .args_override_self(true)
        .mut_args(|a| a.env(None::<&'static str>));
    let matches = parser
        .try_get_matches_from(argv)
        .map_err(|e| config_error(&cmd, e))?;
    T::from_arg_matches(&matches).map_err(|e| config_error(&cmd, e))
}

/// Names the variable behind a clap error; errors that concern no variable (an
/// unknown flag, `--help`) keep clap's own text under `command line`.
fn config_error(cmd: &clap::Command, e: clap::Error) -> ConfigError {
    let invalid = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let arg = invalid.and_then(|invalid| {
        cmd.get_arguments().find(|a| {
            a.get_long().is_some_and(|l| {
                let flag = format!("--{l}");
                invalid == flag || invalid.starts_with(&format!("{flag} "))
            })
        })
    });
    let Some(env) = arg.and_then(|a| a.get_env()) else {
        return ConfigError {
            var: COMMAND_LINE.into(),
            message: e.to_string().trim().to_owned(),
        };
    };
    let message = match (e.kind(), arg.and_then(|a| a.get_help())) {
        (ErrorKind::MissingRequiredArgument, Some(help)) => format!("required: {help}"),
        (ErrorKind::MissingRequiredArgument, None) => "required".into(),
        _ => match std::error::Error::source(&e) {
            Some(source) => source.to_string(),
            None => e.kind().to_string(),
        },
    };
    ConfigError {
        var: env.to_string_lossy().into_owned(),
        message,
    }
}

/// The README configuration table's rows for `cmd`'s variables, one per variable,
/// in declaration order; `scope` (a binary's name) prefixes the meaning
/// of a service's own settings.
pub fn markdown_rows(cmd: &clap::Command, scope: Option<&str>) -> String {
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let default = match defaults.first().map(String::as_str) {
            Some("") => "empty".to_owned(),
            Some(d) => format!("`{d}`"),
            None if arg.get_long() == Some("port") => "the service's: 8081 / 8082 / 8083".into(),
            None if arg.is_required_set() => "required".into(),
            None => "unset".into(),
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let meaning = match scope {
            Some(scope) => format!("{scope} only: {help}"),
            None => help,
        };
        out.push_str(&format!(
            "| `{}` | {default} | {meaning} |\n",
            env.to_string_lossy()
        ));
    }
    out
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

fn comma_list(raw: &str) -> Result<Vec<String>, String> {
    Ok(raw
        .split(',')
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect())
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

fn ca_file(raw: &str) -> Result<CaBundle, String> {
    CaBundle::load(Path::new(raw))
}

fn read_file(raw: &str) -> Result<String, String> {
    std::fs::read_to_string(raw).map_err(|e| format!("cannot read {raw:?}: {e}"))
}

fn verifying_keys(raw: &str) -> Result<crate::auth::keys::VerifyingKeys, String> {
    crate::auth::keys::parse_verifying_pems(&read_file(raw)?)
}

fn signing_key(raw: &str) -> Result<crate::auth::keys::SigningMaterial, String> {
    crate::auth::keys::parse_signing_pem(&read_file(raw)?)
}

fn cidr_list(raw: &str) -> Result<Vec<ipnet::IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("not a CIDR: {c:?}"))
        })
        .collect()
}

fn log_format(raw: &str) -> Result<LogFormat, String> {
    match raw {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        other => Err(format!("expected json or pretty, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A key pair written once per test process.
    fn key_files() -> &'static (String, String) {
        static FILES: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        FILES.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("kai-config-test-{}", std::process::id()));
            let (s, v) = crate::auth::keys::KeyPair::generate()
                .write_to(&dir)
                .unwrap();
            (s.display().to_string(), v.display().to_string())
        })
    }

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut env: HashMap<String, String> = HashMap::from([
            (
                "DATABASE_URL".into(),
                "postgres://postgres@127.0.0.1:5432/kai".into(),
            ),
            ("AUTH_VERIFYING_KEYS_FILE".into(), key_files().1.clone()),
        ]);
        for (k, v) in pairs {
            env.insert((*k).into(), (*v).into());
        }
        Settings::from_lookup(8081, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_spec_table() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 8081);
        assert_eq!(s.host.to_string(), "0.0.0.0");
        assert_eq!(s.auth_token_ttl, Duration::from_secs(3600));
        assert!(s.cache_enabled);
        assert_eq!(s.db_pool_size, 20);
        assert_eq!(s.db_pool_timeout, Duration::from_secs(30));
        assert_eq!(s.redis_pool_size, 50);
        assert_eq!(s.redis_timeout, Duration::from_millis(100));
        assert_eq!(s.slow_query_threshold, Duration::from_millis(100));
        assert_eq!(s.slow_request_threshold, Duration::from_millis(1000));
        assert_eq!(s.access_log_sample, 0.01);
        assert!(s.cors_allowed_origins.is_empty());
        assert!(s.redis_url.is_none());
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(s.run_migrations);
        assert_eq!(s.cache_prefix, "kai");
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        let e = Settings::from_lookup(8081, |k| {
            (k == "AUTH_VERIFYING_KEYS_FILE").then(|| key_files().1.clone())
        })
        .unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
    }

    #[test]
    fn missing_unreadable_or_mismatched_keys_are_refused() {
        let e = Settings::from_lookup(8081, |k| {
            (k == "DATABASE_URL").then(|| "postgres://localhost/kai".to_owned())
        })
        .unwrap_err();
        assert_eq!(e.var, "AUTH_VERIFYING_KEYS_FILE");
        let e = settings(&[("AUTH_VERIFYING_KEYS_FILE", "/nonexistent/keys.pem")]).unwrap_err();
        assert_eq!(e.var, "AUTH_VERIFYING_KEYS_FILE");
        // A private key given as the verifying keys is not a public key.
        let e = settings(&[("AUTH_VERIFYING_KEYS_FILE", &key_files().0)]).unwrap_err();
        assert_eq!(e.var, "AUTH_VERIFYING_KEYS_FILE");
        // Verifying-only services start without a signing key; profile must not.
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.require_signing_key().unwrap_err().var,
            "AUTH_SIGNING_KEY_FILE"
        );
        let s = settings(&[("AUTH_SIGNING_KEY_FILE", &key_files().0)]).unwrap();
        assert!(s.require_signing_key().is_ok());
        // A signing key whose public half nobody verifies with is a mistake.
        let dir = std::env::temp_dir().join(format!("kai-config-test-{}-b", std::process::id()));
        let (other, _) = crate::auth::keys::KeyPair::generate()
            .write_to(&dir)
            .unwrap();
        let e = settings(&[("AUTH_SIGNING_KEY_FILE", other.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.var, "AUTH_SIGNING_KEY_FILE");
        assert!(
            e.to_string().contains("not in AUTH_VERIFYING_KEYS_FILE"),
            "{e}"
        );
    }

    #[test]
    fn trusted_proxies_parse_as_cidrs() {
        let s = settings(&[("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1/128")]).unwrap();
        assert_eq!(s.trusted_proxies.len(), 3);
        assert!(settings(&[]).unwrap().trusted_proxies.is_empty());
        let e = settings(&[("TRUSTED_PROXIES", "10.0.0.0/33")]).unwrap_err();
        assert_eq!(e.var, "TRUSTED_PROXIES");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("DB_POOL_SIZE", "twenty"),
            ("DB_POOL_SIZE", "0"),
            ("PORT", "99999"),
            ("HOST", "not an ip"),
            ("REDIS_TIMEOUT_MS", "-1"),
            ("ACCESS_LOG_SAMPLE", "1.5"),
            ("ACCESS_LOG_SAMPLE", "often"),
            ("CACHE_ENABLED", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("DATABASE_URL", "postgres://host:notaport/db"),
            ("REDIS_URL", "http://nope"),
        ] {
            let e = settings(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value} gave {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("configuration error: {var}: "))
            );
        }
    }

    #[test]
    fn the_readme_example_error_reads_as_documented() {
        let e = settings(&[("DB_POOL_SIZE", "twenty")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration error: DB_POOL_SIZE: cannot parse \"twenty\": invalid digit found in string"
        );
    }

    #[test]
    fn lists_and_booleans_parse() {
        let s = settings(&[
            (
                "CORS_ALLOWED_ORIGINS",
                "https://a.example, https://b.example,",
            ),
            ("CACHE_ENABLED", "false"),
            ("LOG_FORMAT", "pretty"),
            ("REDIS_URL", "redis://127.0.0.1:6379/3"),
        ])
        .unwrap();
        assert_eq!(
            s.cors_allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert!(!s.cache_enabled);
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert!(s.redis_url.is_some());
    }

    #[test]
    fn blank_values_count_as_unset_and_values_are_trimmed() {
        let s = settings(&[("REDIS_URL", "  "), ("DB_POOL_SIZE", " 7 ")]).unwrap();
        assert!(s.redis_url.is_none());
        assert_eq!(s.db_pool_size, 7);
    }

    #[test]
    fn a_command_line_flag_wins_over_the_variable() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/kai"),
            ("AUTH_VERIFYING_KEYS_FILE", key_files().1.as_str()),
            ("DB_POOL_SIZE", "7"),
        ]);
        let s: Settings = parse(
            with_port_default(command::<Settings>(), 8081),
            |k| env.get(k).map(|v| (*v).to_owned()),
            ["--db-pool-size=9".into()],
        )
        .unwrap();
        assert_eq!(s.db_pool_size, 9);
    }

    #[test]
    fn every_variable_is_documented_with_a_flag() {
        for arg in command::<Settings>().get_arguments() {
            if arg.get_env().is_some() {
                assert!(arg.get_long().is_some(), "{:?} has no flag", arg.get_id());
                assert!(arg.get_help().is_some(), "{:?} has no help", arg.get_id());
            }
        }
    }

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        for (url, mode) in [
            ("postgres://u@h/db", SslMode::Prefer),
            ("postgres://u@h/db?sslmode=disable", SslMode::Disable),
            (
                "postgres://u@h/db?sslmode=require&application_name=x",
                SslMode::Require,
            ),
            (
                "postgresql://u@h/db?application_name=x&sslmode=verify-ca",
                SslMode::VerifyCa,
            ),
            (
                "host=h user=u sslmode=verify-full dbname=db",
                SslMode::VerifyFull,
            ),
        ] {
            let s = settings(&[("DATABASE_URL", url)]).unwrap();
            assert_eq!(s.database_ssl_mode, mode, "{url}");
            // tokio-postgres sees the rest of the URL, and a mode it knows.
            let pg = s.pg_config();
            assert_eq!(pg.get_hosts().len(), 1, "{url}");
            assert_eq!(pg.get_dbname(), Some("db"), "{url}");
            let want = match mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            };
            assert_eq!(pg.get_ssl_mode(), want, "{url}");
        }
        let e = settings(&[("DATABASE_URL", "postgres://h/db?sslmode=allow-ish")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(e.message.contains("verify-full"), "{e}");
    }

    #[test]
    fn ca_files_and_cluster_nodes_are_checked_at_start() {
        let e = settings(&[("DATABASE_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_CA_FILE");
        let not_pem = std::env::temp_dir().join(format!("kai-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let e = settings(&[("REDIS_CA_FILE", not_pem.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.var, "REDIS_CA_FILE");
        let _ = std::fs::remove_file(&not_pem);

        let s = settings(&[(
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7000, rediss://u:p@127.0.0.1:7001,",
        )])
        .unwrap();
        assert_eq!(s.redis_cluster_nodes.len(), 2);
        let e = settings(&[("REDIS_CLUSTER_NODES", "redis://a:1,http://nope")]).unwrap_err();
        assert_eq!(e.var, "REDIS_CLUSTER_NODES");
        let e = settings(&[
            ("REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "REDIS_CLUSTER_NODES");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let s = settings(&[("AUTH_SIGNING_KEY_FILE", &key_files().0)]).unwrap();
        let pem = std::fs::read_to_string(&key_files().0).unwrap();
        let body = pem.lines().nth(1).unwrap();
        assert!(!format!("{s:?}").contains(body));
        assert!(format!("{s:?}").contains("redacted"));
    }
}
