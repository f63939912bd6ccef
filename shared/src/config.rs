//! Configuration: one typed [`Settings`], read from the environment (and a `.env`
//! file, real environment winning) and validated once at start.
//!
//! Every variable of SPEC §2 is parsed here and nowhere else. A bad value stops the
//! process with one line naming the variable ([`ConfigError`]), never a panic trace.
//! Parsing takes a lookup function rather than reading `std::env` directly, so unit
//! tests exercise every error without touching the process environment.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::tls::CaBundle;

/// The table printed by `--help`: every variable a service reads, its default, its meaning.
pub const ENV_HELP: &str = "\
Environment (a .env file in the working directory is read; real environment wins):
  DATABASE_URL               required  PostgreSQL URL (services share it; each owns its schema);
                                       sslmode=disable|prefer|require|verify-ca|verify-full as libpq
  DATABASE_CA_FILE           unset     PEM CA bundle for the PostgreSQL server certificate (else system roots)
  REDIS_URL                  unset     Redis URL; rediss:// = TLS, user:password@ = ACL auth;
                                       unset = in-process cache only
  REDIS_CLUSTER_NODES        unset     comma-separated seed URLs of a Redis Cluster (instead of REDIS_URL)
  REDIS_CA_FILE              unset     PEM CA bundle for the Redis server certificate (else system roots)
  HOST / PORT                0.0.0.0 / journal 8081, conversation 8082, profile 8083
  AUTH_SECRET                required  HS256 key for access tokens, at least 32 bytes
  AUTH_TOKEN_TTL_SECS        3600      access-token lifetime
  CACHE_ENABLED              true      false = every cacheable read goes to PostgreSQL (X-Cache: BYPASS)
  DB_POOL_SIZE               20        PostgreSQL pool size
  DB_POOL_TIMEOUT_SECS       30        wait for a pooled connection before answering 503
  REDIS_POOL_SIZE            50        Redis pool size
  REDIS_TIMEOUT_MS           100       per-command Redis timeout (then the circuit breaker opens)
  SLOW_QUERY_THRESHOLD_MS    100       slower queries are logged as `slow query` and counted
  SLOW_REQUEST_THRESHOLD_MS  1000      slower requests are logged as warnings
  CORS_ALLOWED_ORIGINS       empty     comma-separated allowed origins
  LLM_BASE_URL               unset     conversation only: OpenAI-compatible endpoint; unset = offline responder
  LLM_API_KEY                unset     conversation only: bearer key for the LLM endpoint
  LLM_MODEL                  gpt-4o-mini  conversation only: model name
  LLM_TIMEOUT_MS             20000     conversation only: LLM request timeout
  RUST_LOG                   info      tracing filter
  LOG_FORMAT                 json      json or pretty
  RUN_MIGRATIONS             true      false = `serve` does not apply migrations";

/// A configuration error: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

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

/// Reads an optional CA bundle variable.
fn ca_file(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<CaBundle>, ConfigError> {
    get(var)
        .map(|path| {
            CaBundle::load(Path::new(&path)).map_err(|message| ConfigError { var, message })
        })
        .transpose()
}

/// Settings of the LLM client (conversation-service).
#[derive(Debug, Clone)]
pub struct LlmSettings {
    pub base_url: Option<String>,
    pub api_key: Option<SecretString>,
    pub model: String,
    pub timeout: Duration,
}

/// Everything a service is configured with. Secrets are [`SecretString`]s so a
/// `Debug` print of the settings never shows them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretString,
    /// `sslmode` of `DATABASE_URL` (libpq's default, `prefer`, when absent).
    pub database_ssl_mode: SslMode,
    pub database_ca: Option<CaBundle>,
    pub redis_url: Option<SecretString>,
    /// Seed nodes of a Redis Cluster; non-empty = cluster mode (then `redis_url` is unset).
    pub redis_cluster_nodes: Vec<SecretString>,
    pub redis_ca: Option<CaBundle>,
    pub host: IpAddr,
    pub port: u16,
    pub auth_secret: SecretString,
    pub auth_token_ttl: Duration,
    pub cache_enabled: bool,
    pub db_pool_size: usize,
    pub db_pool_timeout: Duration,
    pub redis_pool_size: u32,
    pub redis_timeout: Duration,
    pub slow_query_threshold: Duration,
    pub slow_request_threshold: Duration,
    pub cors_allowed_origins: Vec<String>,
    pub llm: LlmSettings,
    pub rust_log: String,
    pub log_format: LogFormat,
    pub run_migrations: bool,
    /// Prefix of every Redis key and channel; tests give each test its own.
    pub cache_prefix: String,
}

impl Settings {
    /// Reads `.env` (if present) and the process environment.
    pub fn from_env(default_port: u16) -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth saying.
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(ConfigError {
                var: ".env",
                message: e.to_string(),
            });
        }
        Self::from_lookup(default_port, |k| std::env::var(k).ok())
    }

    /// Parses settings from any lookup (the environment, or a map in tests).
    pub fn from_lookup(
        default_port: u16,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let err = |var: &'static str, message: String| ConfigError { var, message };

        let database_url = get("DATABASE_URL").ok_or_else(|| {
            err(
                "DATABASE_URL",
                "required (e.g. postgres://postgres@127.0.0.1:5432/kai)".into(),
            )
        })?;
        let (without_mode, mode) = split_sslmode(&database_url);
        let database_ssl_mode = match mode.as_deref() {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                err(
                    "DATABASE_URL",
                    format!(
                        "sslmode {m:?} is not one of disable, prefer, require, verify-ca, verify-full"
                    ),
                )
            })?,
        };
        without_mode
            .parse::<tokio_postgres::Config>()
            .map_err(|e| err("DATABASE_URL", format!("not a PostgreSQL URL: {e}")))?;
        let database_ca = ca_file(&get, "DATABASE_CA_FILE")?;

        // A URL is checked for its form only; the password in it never reaches a message.
        let redis_check = |var: &'static str, url: &str| {
            redis::IntoConnectionInfo::into_connection_info(url)
                .map(|_| ())
                .map_err(|e| err(var, format!("not a Redis URL: {e}")))
        };
        let redis_url = match get("REDIS_URL") {
            None => None,
            Some(url) => {
                redis_check("REDIS_URL", &url)?;
                Some(SecretString::from(url))
            }
        };
        let redis_cluster_nodes: Vec<SecretString> = match get("REDIS_CLUSTER_NODES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| redis_check("REDIS_CLUSTER_NODES", n).map(|()| SecretString::from(n)))
                .collect::<Result<_, _>>()?,
        };
        if redis_url.is_some() && !redis_cluster_nodes.is_empty() {
            return Err(err(
                "REDIS_CLUSTER_NODES",
                "set either REDIS_URL (one node) or REDIS_CLUSTER_NODES (a cluster), not both"
                    .into(),
            ));
        }
        let redis_ca = ca_file(&get, "REDIS_CA_FILE")?;

        let auth_secret = get("AUTH_SECRET").ok_or_else(|| {
            err(
                "AUTH_SECRET",
                "required: an HS256 key of at least 32 bytes".into(),
            )
        })?;
        if auth_secret.len() < 32 {
            return Err(err(
                "AUTH_SECRET",
                format!("must be at least 32 bytes, got {}", auth_secret.len()),
            ));
        }

        let host = parse(&get, "HOST", "0.0.0.0".parse().expect("valid literal"))?;
        let port = parse(&get, "PORT", default_port)?;
        let ttl_secs: u64 = parse(&get, "AUTH_TOKEN_TTL_SECS", 3600)?;
        positive("AUTH_TOKEN_TTL_SECS", ttl_secs)?;
        let db_pool_size: usize = parse(&get, "DB_POOL_SIZE", 20)?;
        positive("DB_POOL_SIZE", db_pool_size as u64)?;
        let db_pool_timeout_secs: u64 = parse(&get, "DB_POOL_TIMEOUT_SECS", 30)?;
        positive("DB_POOL_TIMEOUT_SECS", db_pool_timeout_secs)?;
        let redis_pool_size: u32 = parse(&get, "REDIS_POOL_SIZE", 50)?;
        positive("REDIS_POOL_SIZE", u64::from(redis_pool_size))?;
        let redis_timeout_ms: u64 = parse(&get, "REDIS_TIMEOUT_MS", 100)?;
        positive("REDIS_TIMEOUT_MS", redis_timeout_ms)?;
        let llm_timeout_ms: u64 = parse(&get, "LLM_TIMEOUT_MS", 20_000)?;
        positive("LLM_TIMEOUT_MS", llm_timeout_ms)?;

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {other:?}"),
                ));
            }
        };

        let llm_base_url = get("LLM_BASE_URL");
        if let Some(url) = &llm_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(err(
                "LLM_BASE_URL",
                "must start with http:// or https://".into(),
            ));
        }

        Ok(Self {
            database_url: SecretString::from(database_url),
            database_ssl_mode,
            database_ca,
            redis_url,
            redis_cluster_nodes,
            redis_ca,
            host,
            port,
            auth_secret: SecretString::from(auth_secret),
            auth_token_ttl: Duration::from_secs(ttl_secs),
            cache_enabled: parse_bool(&get, "CACHE_ENABLED", true)?,
            db_pool_size,
            db_pool_timeout: Duration::from_secs(db_pool_timeout_secs),
            redis_pool_size,
            redis_timeout: Duration::from_millis(redis_timeout_ms),
            slow_query_threshold: Duration::from_millis(parse(
                &get,
                "SLOW_QUERY_THRESHOLD_MS",
                100,
            )?),
            slow_request_threshold: Duration::from_millis(parse(
                &get,
                "SLOW_REQUEST_THRESHOLD_MS",
                1000,
            )?),
            cors_allowed_origins: get("CORS_ALLOWED_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            llm: LlmSettings {
                base_url: llm_base_url,
                api_key: get("LLM_API_KEY").map(SecretString::from),
                model: get("LLM_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
                timeout: Duration::from_millis(llm_timeout_ms),
            },
            rust_log: get("RUST_LOG").unwrap_or_else(|| "info".into()),
            log_format,
            run_migrations: parse_bool(&get, "RUN_MIGRATIONS", true)?,
            cache_prefix: "kai".into(),
        })
    }

    /// The PostgreSQL configuration (already validated by `from_lookup`).
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

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(var) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|e| ConfigError {
            var,
            message: format!("cannot parse {raw:?}: {e}"),
        }),
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError {
            var,
            message: format!("expected true or false, got {other:?}"),
        }),
    }
}

fn positive(var: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError {
            var,
            message: "must be greater than 0".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut env: HashMap<String, String> = HashMap::from([
            (
                "DATABASE_URL".into(),
                "postgres://postgres@127.0.0.1:5432/kai".into(),
            ),
            ("AUTH_SECRET".into(), SECRET.into()),
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
        assert!(s.cors_allowed_origins.is_empty());
        assert!(s.redis_url.is_none());
        assert_eq!(s.llm.model, "gpt-4o-mini");
        assert_eq!(s.llm.timeout, Duration::from_millis(20_000));
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        let e = Settings::from_lookup(8081, |k| (k == "AUTH_SECRET").then(|| SECRET.to_owned()))
            .unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
    }

    #[test]
    fn missing_or_short_secret_is_refused() {
        let e = Settings::from_lookup(8081, |k| {
            (k == "DATABASE_URL").then(|| "postgres://localhost/kai".to_owned())
        })
        .unwrap_err();
        assert_eq!(e.var, "AUTH_SECRET");
        let e = settings(&[("AUTH_SECRET", "short")]).unwrap_err();
        assert_eq!(e.var, "AUTH_SECRET");
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("DB_POOL_SIZE", "twenty"),
            ("DB_POOL_SIZE", "0"),
            ("PORT", "99999"),
            ("HOST", "not an ip"),
            ("REDIS_TIMEOUT_MS", "-1"),
            ("CACHE_ENABLED", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("DATABASE_URL", "postgres://host:notaport/db"),
            ("REDIS_URL", "http://nope"),
            ("LLM_BASE_URL", "ftp://x"),
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
        let s = settings(&[]).unwrap();
        assert!(!format!("{s:?}").contains(SECRET));
    }
}
