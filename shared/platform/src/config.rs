//! Configuration: declared once, as clap structs whose every field names its
//! environment variable. From that one declaration come
//!
//! - the parsing and validation at start ([`parse`]): a bad value stops the process
//!   with one line naming the variable ([`ConfigError`], exit code 2), never a panic;
//! - `--help` (clap prints each flag with its `[env: …]` and default);
//! - the README's configuration table ([`markdown_rows`]; a test in `tests/` fails
//!   when README and declaration disagree).
//!
//! [`Settings`] holds what every service reads, as one group per part (each
//! group is declared beside the part it configures: `DatabaseSettings` with the
//! pool in `kai-shared`, `HttpSettings` in `kai-http`, …). A service's own settings are a
//! `clap::Args` struct in that service (e.g. an outbound endpoint's URL and timeout), which
//! the binary's CLI flattens next to [`Settings`]; other services never parse them.
//!
//! **Adding a variable** is one change in one place: add a field to its group
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

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, FromArgMatches};
use kai_http::HttpSettings;
use kai_http::auth::AuthSettings;
use kai_http::telemetry::LogSettings;
use kai_shared::settings::{CacheSettings, DatabaseSettings, RedisSettings, boolean, number};
// The value parsers, for a service's own settings.
pub use kai_shared::settings::{
    fraction, http_url, millis, positive, positive_millis, positive_secs, secret,
};

pub use kai_shared::settings::ConfigError;

/// [`ConfigError::var`] of an error that concerns no variable (an unknown flag,
/// `--help`): the binary lets clap print it.
pub const COMMAND_LINE: &str = "command line";

/// Where the service listens, and whether `serve` migrates first.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerSettings {
    #[arg(long, env = "HOST", default_value = "0.0.0.0", value_parser = number::<IpAddr>,
        help = "listen address")]
    pub host: IpAddr,
    /// The default is the service's own (set by [`with_port_default`]).
    #[arg(long, env = "PORT", value_parser = number::<u16>, help = "listen port")]
    pub port: u16,
    #[arg(long, env = "RUN_MIGRATIONS", default_value = "true", value_parser = boolean,
        action = ArgAction::Set, help = "false: `serve` does not migrate (a Job did)")]
    pub run_migrations: bool,
    #[arg(long = "readiness-grace-ms", env = "READINESS_GRACE_MS", default_value = "10000",
        value_parser = millis,
        help = "how long `/health/ready` stays 200 while PostgreSQL does not answer its own \
                probe connection (a blip takes no pod out of the Service; a longer outage does)")]
    pub readiness_grace: std::time::Duration,
}

/// Everything every service is configured with, one group per part (zero2prod's
/// nested settings): each part is built from its own group only. Secrets are
/// [`secrecy::SecretString`]s so a `Debug` print of the settings never shows them.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Platform settings (every service)")]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub redis: RedisSettings,
    #[command(flatten)]
    pub server: ServerSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub log: LogSettings,
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
    pub fn check(self) -> Result<Self, ConfigError> {
        let mut cache = self.cache.clone();
        cache.key_seed = Some(self.database.url.clone());
        Ok(Self {
            cache,
            redis: self.redis.check()?,
            auth: self.auth.check()?,
            database: self.database.check()?,
            ..self
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use kai_http::telemetry::LogFormat;
    use kai_shared::settings::SslMode;
    use std::collections::HashMap;
    use std::time::Duration;

    /// A key pair written once per test process.
    fn key_files() -> &'static (String, String) {
        static FILES: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        FILES.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("kai-config-test-{}", std::process::id()));
            let (s, v) = kai_http::auth::keys::KeyPair::generate()
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
        assert_eq!(s.server.port, 8081);
        assert_eq!(s.server.host.to_string(), "0.0.0.0");
        assert_eq!(s.auth.token_ttl, Duration::from_secs(3600));
        assert!(s.cache.enabled);
        assert_eq!(s.database.pool_size, 20);
        assert_eq!(s.database.pool_timeout, Duration::from_secs(30));
        assert_eq!(s.redis.pool_size, 50);
        assert_eq!(s.redis.timeout, Duration::from_millis(100));
        assert_eq!(s.database.slow_query_threshold, Duration::from_millis(100));
        assert_eq!(s.http.slow_request_threshold, Duration::from_millis(1000));
        assert_eq!(s.http.access_log_sample, 0.01);
        assert!(s.http.cors_allowed_origins.is_empty());
        assert!(s.redis.url.is_none());
        assert_eq!(s.log.log_format, LogFormat::Json);
        assert!(s.server.run_migrations);
        assert_eq!(s.redis.prefix, "kai");
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
            s.auth.require_signing_key().unwrap_err().var,
            "AUTH_SIGNING_KEY_FILE"
        );
        let s = settings(&[("AUTH_SIGNING_KEY_FILE", &key_files().0)]).unwrap();
        assert!(s.auth.require_signing_key().is_ok());
        // A signing key whose public half nobody verifies with is a mistake.
        let dir = std::env::temp_dir().join(format!("kai-config-test-{}-b", std::process::id()));
        let (other, _) = kai_http::auth::keys::KeyPair::generate()
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
        assert_eq!(s.http.trusted_proxies.len(), 3);
        assert!(settings(&[]).unwrap().http.trusted_proxies.is_empty());
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
            s.http.cors_allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert!(!s.cache.enabled);
        assert_eq!(s.log.log_format, LogFormat::Pretty);
        assert!(s.redis.url.is_some());
    }

    #[test]
    fn blank_values_count_as_unset_and_values_are_trimmed() {
        let s = settings(&[("REDIS_URL", "  "), ("DB_POOL_SIZE", " 7 ")]).unwrap();
        assert!(s.redis.url.is_none());
        assert_eq!(s.database.pool_size, 7);
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
        assert_eq!(s.database.pool_size, 9);
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
            assert_eq!(s.database.ssl_mode, mode, "{url}");
            // tokio-postgres sees the rest of the URL, and a mode it knows.
            let pg = s.database.pg_config();
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
        assert_eq!(s.redis.cluster_nodes.len(), 2);
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
