//! Tracing setup in one place: JSON lines for machines, pretty output for people.
//!
//! Handlers log ids and sizes, never bodies: personal data (what people wrote, messages,
//! passwords, tokens) must not reach a log line. The request span carries the
//! request id so every line of one request can be found together.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stdout. Safe to call more than once
/// (tests): later calls are ignored.
pub fn init(filter: &str, format: LogFormat) {
    init_with(filter, format, std::io::stdout);
}

/// As [`init`], writing wherever `writer` says (tests capture logs to scan them).
pub fn init_with<W>(filter: &str, format: LogFormat, writer: W)
where
    W: for<'a> fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    // Caps appended after the operator's filter, so they win even over RUST_LOG=debug:
    // - tokio-postgres logs every statement's *parameters* at debug level — personal
    //   data (what people wrote, password hashes) that must never reach a log line;
    // - actix-web-prom warns on every vendored Swagger UI asset (upstream issue #82).
    const CAPS: &str = "tokio_postgres=info,actix_web_prom=error";
    let filter = EnvFilter::try_new(format!("{filter},{CAPS}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{CAPS}")));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_writer(writer))
            .try_init(),
    };
}
