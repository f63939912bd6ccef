//! kai-verify: checks a running Kai deployment; exits 1 on any ✗.

use clap::Parser;
use kai_load::verify::{Deployment, run};

/// Checks a running Kai deployment the way the seeds' checklists do by hand:
/// health, Redis settings, indexes present and used, cache hit faster than miss,
/// compression, headers, metrics. Prints ✓ / ⚠ / ✗; exits 1 on any ✗.
///
/// The cache checks write a few rows (3 journal entries and a conversation for a
/// random user id, one profile account `kai-verify-…@example.com`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// journal-service base URL
    #[arg(long, env = "JOURNAL_URL", default_value = "http://127.0.0.1:8081")]
    journal: String,
    /// conversation-service base URL (`-` to skip)
    #[arg(
        long,
        env = "CONVERSATION_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    conversation: String,
    /// profile-service base URL (`-` to skip)
    #[arg(long, env = "PROFILE_URL", default_value = "http://127.0.0.1:8083")]
    profile: String,
    /// PostgreSQL URL, for indexes and EXPLAIN
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Redis URL, for its settings
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// The deployment's signing key (PKCS#8 PEM, profile-service's
    /// AUTH_SIGNING_KEY_FILE), to mint a token for the cache checks
    #[arg(long, env = "AUTH_SIGNING_KEY_FILE")]
    signing_key_file: Option<std::path::PathBuf>,
}

fn skip(url: String) -> Option<String> {
    (url != "-").then_some(url)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let deployment = Deployment {
        journal: args.journal,
        conversation: skip(args.conversation),
        profile: skip(args.profile),
        database_url: args.database_url,
        redis_url: args.redis_url,
        signing_key_file: args.signing_key_file,
    };
    match run(&deployment).await {
        Ok(c) => {
            println!(
                "\n{} passed, {} warnings, {} failed",
                c.passed, c.warnings, c.failures
            );
            std::process::exit(if c.failures == 0 { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("kai-verify: {e:#}");
            std::process::exit(2);
        }
    }
}
