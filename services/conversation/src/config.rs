//! conversation-service's own settings: the LLM endpoint. Declared here, not in
//! kai-shared, so journal and profile never parse (nor refuse to start on) an
//! `LLM_*` variable. The binary's CLI flattens this struct next to the platform's
//! settings, so `--help`, start-up validation and the README table cover it; add a
//! variable the way `kai_platform::config` describes.

use std::time::Duration;

use kai_platform::config::{http_url, positive_millis, secret};
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
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [("LLM_BASE_URL", "ftp://x"), ("LLM_TIMEOUT_MS", "0")] {
            let e = llm(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{var}={value} gave {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("configuration error: {var}: "))
            );
        }
    }
}
