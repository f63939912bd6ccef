//! conversation-service's own settings: the LLM endpoint. Declared here, not in
//! kai-shared, so journal and profile never parse (nor refuse to start on) an
//! `LLM_*` variable. The binary's CLI flattens this struct next to the platform's
//! settings, so `--help`, start-up validation and the README table cover it; add a
//! variable the way `kai_platform::config` describes.

use std::time::Duration;

use kai_platform::config::{http_url, positive, positive_millis, secret};
use secrecy::SecretString;

/// Settings of the LLM client.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "conversation-service settings")]
pub struct LlmSettings {
    #[arg(long = "llm-base-url", env = "LLM_BASE_URL", value_parser = http_url,
        help = "OpenAI-compatible chat-completions endpoint; unset = built-in offline responder")]
    pub base_url: Option<String>,
    #[arg(long = "llm-api-key", env = "LLM_API_KEY", value_parser = secret,
        help = "bearer key for the LLM endpoint")]
    pub api_key: Option<SecretString>,
    #[arg(
        long = "llm-model",
        env = "LLM_MODEL",
        default_value = "gpt-4o-mini",
        help = "model name sent to the endpoint"
    )]
    pub model: String,
    #[arg(long = "llm-timeout-ms", env = "LLM_TIMEOUT_MS", default_value = "20000",
        value_parser = positive_millis, help = "LLM request timeout")]
    pub timeout: Duration,
    #[arg(long = "llm-max-tokens", env = "LLM_MAX_TOKENS", default_value = "1024",
        value_parser = positive::<u32>,
        help = "`max_tokens` sent with every chat completion: the most one reply can cost")]
    pub max_tokens: u32,
    #[command(flatten)]
    pub limits: UserLimits,
}

/// Per-user abuse limits (SPEC §4): each refusal is a 429 with `Retry-After`,
/// counted in `kai_rate_limited_total{outcome=<limit>}`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "conversation-service per-user limits")]
pub struct UserLimits {
    #[arg(long = "assistant-message-burst", env = "ASSISTANT_MESSAGE_BURST", default_value = "20",
        value_parser = positive::<u32>,
        help = "assistant messages a user may send at once (each one an LLM call)")]
    pub message_burst: u32,
    #[arg(long = "assistant-messages-per-minute", env = "ASSISTANT_MESSAGES_PER_MINUTE",
        default_value = "6", value_parser = positive::<f64>,
        help = "steady rate of assistant messages per user once the burst is spent")]
    pub messages_per_minute: f64,
    #[arg(long = "assistant-messages-per-day", env = "ASSISTANT_MESSAGES_PER_DAY",
        default_value = "500", value_parser = positive::<u32>,
        help = "daily budget of assistant messages per user (refilled evenly over 24 h)")]
    pub messages_per_day: u32,
    #[arg(long = "exports-running-per-user", env = "EXPORTS_RUNNING_PER_USER", default_value = "2",
        value_parser = positive::<u32>,
        help = "exports of one user streaming at once (per replica)")]
    pub exports_running: u32,
    #[arg(long = "exports-per-minute", env = "EXPORTS_PER_MINUTE", default_value = "10",
        value_parser = positive::<u32>, help = "exports a user may start per minute")]
    pub exports_per_minute: u32,
    #[arg(long = "imports-per-minute", env = "IMPORTS_PER_MINUTE", default_value = "10",
        value_parser = positive::<u32>,
        help = "batch imports (up to 1,000 messages each) a user may send per minute")]
    pub imports_per_minute: u32,
    #[arg(long = "creates-per-minute", env = "CREATES_PER_MINUTE", default_value = "60",
        value_parser = positive::<u32>, help = "conversations a user may create per minute")]
    pub creates_per_minute: u32,
}

impl LlmSettings {
    /// Parses the LLM settings from any lookup (tests).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, kai_platform::config::ConfigError> {
        kai_platform::config::args_from_lookup(kai_platform::config::command::<Self>(), get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm(pairs: &[(&str, &str)]) -> Result<LlmSettings, kai_platform::config::ConfigError> {
        LlmSettings::from_lookup(|k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_follow_the_spec_table() {
        let s = llm(&[]).unwrap();
        assert_eq!(s.model, "gpt-4o-mini");
        assert_eq!(s.timeout, Duration::from_millis(20_000));
        assert!(s.base_url.is_none() && s.api_key.is_none());
        assert_eq!(s.max_tokens, 1024);
        assert_eq!(
            (
                s.limits.message_burst,
                s.limits.messages_per_day,
                s.limits.exports_running
            ),
            (20, 500, 2)
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("LLM_BASE_URL", "ftp://x"),
            ("LLM_TIMEOUT_MS", "0"),
            ("LLM_MAX_TOKENS", "0"),
            ("ASSISTANT_MESSAGES_PER_DAY", "lots"),
            ("EXPORTS_RUNNING_PER_USER", "0"),
        ] {
            let e = llm(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value} gave {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("configuration error: {var}: "))
            );
        }
    }
}
