//! Tracing setup in one place: JSON lines for machines, pretty output for people.
//!
//! Handlers log ids and sizes, never bodies: personal data (journal text, messages,
//! passwords, tokens) must not reach a log line. The request span carries the
//! request id so every line of one request can be found together.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (tests): later calls
/// are ignored.
pub fn init(filter: &str, format: LogFormat) {
    // actix-web-prom warns on every vendored Swagger UI asset (upstream issue #82).
    let filter = EnvFilter::try_new(format!("{filter},actix_web_prom=error"))
        .unwrap_or_else(|_| EnvFilter::new("info,actix_web_prom=error"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init(),
    };
}
