//! journal-service's own settings: its per-user limits. Declared here, so the
//! other services never parse them; the binary's CLI flattens this struct next
//! to the platform's settings (`--help`, start-up validation, the README table).

use kai_platform::config::positive;

/// Per-user limits on exports and creates (SPEC §4): each refusal is a 429 with
/// `Retry-After`, counted in `kai_rate_limited_total{outcome=<limit>}`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "journal-service per-user limits")]
pub struct JournalSettings {
    #[arg(long = "journal-exports-running-per-user", env = "JOURNAL_EXPORTS_RUNNING_PER_USER",
        default_value = "2", value_parser = positive::<u32>,
        help = "journal exports of one user streaming at once (per replica)")]
    pub exports_running: u32,
    #[arg(long = "journal-exports-per-minute", env = "JOURNAL_EXPORTS_PER_MINUTE",
        default_value = "10", value_parser = positive::<u32>,
        help = "journal exports a user may start per minute")]
    pub exports_per_minute: u32,
    #[arg(long = "journal-creates-per-minute", env = "JOURNAL_CREATES_PER_MINUTE",
        default_value = "120", value_parser = positive::<u32>,
        help = "journal entries a user may create at once, then per minute")]
    pub creates_per_minute: u32,
}

impl JournalSettings {
    /// Parses the settings from any lookup (tests).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, kai_platform::config::ConfigError> {
        kai_platform::config::args_from_lookup(kai_platform::config::command::<Self>(), get)
    }

    /// Every setting at its default.
    pub fn defaults() -> Self {
        Self::from_lookup(|_| None).expect("the defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let s = JournalSettings::defaults();
        assert_eq!(
            (
                s.exports_running,
                s.exports_per_minute,
                s.creates_per_minute
            ),
            (2, 10, 120)
        );
        let e = JournalSettings::from_lookup(|k| {
            (k == "JOURNAL_EXPORTS_RUNNING_PER_USER").then(|| "0".to_owned())
        })
        .unwrap_err();
        assert_eq!(e.var, "JOURNAL_EXPORTS_RUNNING_PER_USER");
    }
}
