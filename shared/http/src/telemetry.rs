//! Tracing setup in one place: JSON lines for machines, compact lines for people.
//!
//! Handlers log ids and sizes, never bodies: personal data (what people wrote,
//! messages, passwords, tokens) must not reach a log line.
//!
//! **The request context.** Every line written while a request is handled names
//! it: `request_id`, `method` and — once the token is verified — `user_id`. They
//! are not fields of a tracing span: a span's fields are formatted (into JSON)
//! when it is created and again on every `record`, for every request, although
//! only a sample of requests ever writes a line — that was 12 % of the CPU of a
//! cached read (docs/PERFORMANCE.md). They live in a task-local
//! [`RequestContext`] instead ([`in_request`], set by the outermost middleware;
//! [`set_user`], by the auth extractor), which costs nothing until a line is
//! written, and the formatters below read it when one is.

use std::cell::Cell;
use std::fmt as stdfmt;
use std::future::Future;

use actix_web::http::Method;
use actix_web::http::header::HeaderValue;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};
use uuid::Uuid;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// What is logged and how.
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    #[arg(
        long = "rust-log",
        env = "RUST_LOG",
        default_value = "info",
        help = "tracing filter"
    )]
    pub rust_log: String,
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "json", value_parser = log_format,
        help = "`json` or `pretty`")]
    pub log_format: LogFormat,
}

fn log_format(raw: &str) -> Result<LogFormat, String> {
    match raw {
        "json" => Ok(LogFormat::Json),
        "pretty" => Ok(LogFormat::Pretty),
        other => Err(format!("expected json or pretty, got {other:?}")),
    }
}

/// What every log line of one request says about it.
#[derive(Debug)]
pub struct RequestContext {
    /// The `X-Request-Id` (the caller's, or one made up for the request).
    pub request_id: HeaderValue,
    /// As the metrics see it: `http::stamp` has already turned a non-standard
    /// method into `OTHER`.
    pub method: Method,
    user_id: Cell<Option<Uuid>>,
}

impl RequestContext {
    pub fn new(request_id: HeaderValue, method: Method) -> Self {
        Self {
            request_id,
            method,
            user_id: Cell::new(None),
        }
    }
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `fut` (one request's handling) with `context` as its request context.
pub fn in_request<F: Future>(context: RequestContext, fut: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(context, fut)
}

/// Names the authenticated user in the current request's context (an id, never
/// anything the user wrote). Outside a request it does nothing.
pub fn set_user(user_id: Uuid) {
    let _ = REQUEST.try_with(|c| c.user_id.set(Some(user_id)));
}

/// The current request's `(request_id, method, user_id)`, if any.
fn current() -> Option<(String, String, Option<Uuid>)> {
    REQUEST
        .try_with(|c| {
            let id = c.request_id.to_str().unwrap_or_default().to_owned();
            (id, c.method.as_str().to_owned(), c.user_id.get())
        })
        .ok()
}

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
    // tokio-postgres logs every statement's *parameters* at debug level — personal
    // data (what people wrote, password hashes) that must never reach a log line.
    // actix-web-prom logs a WARN for every request of the Swagger UI's assets (it
    // cannot format their `{_:.*}` pattern; they are excluded from the metrics).
    const CAPS: &str = "tokio_postgres=info,actix_web_prom=error";
    let filter = EnvFilter::try_new(format!("{filter},{CAPS}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{CAPS}")));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().event_format(JsonLine).with_writer(writer))
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .event_format(WithRequest(format::format().compact()))
                    .with_writer(writer),
            )
            .try_init(),
    };
}

/// One JSON object per line: `timestamp`, `level`, `target`, the event's fields
/// (`message` included) at the top level, the request context under `span`
/// (`name: "request"`, `request_id`, `method`, `user_id`), and the fields of
/// any other span the event is in.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> stdfmt::Result {
        let meta = event.metadata();
        // In this order: what a reader scans for first.
        let mut line: Vec<(String, Value)> = vec![
            (
                "timestamp".into(),
                Value::String(
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ),
            ),
            ("level".into(), Value::String(meta.level().to_string())),
        ];
        let mut fields = JsonVisitor(Map::new());
        event.record(&mut fields);
        if let Some(message) = fields.0.remove("message") {
            line.push(("message".into(), message));
        }
        line.extend(fields.0);
        line.push(("target".into(), Value::String(meta.target().to_owned())));
        if let Some((request_id, method, user_id)) = current() {
            let mut span = Map::new();
            span.insert("name".into(), Value::String("request".into()));
            span.insert("request_id".into(), Value::String(request_id));
            span.insert("method".into(), Value::String(method));
            if let Some(user_id) = user_id {
                span.insert("user_id".into(), Value::String(user_id.to_string()));
            }
            line.push(("span".into(), Value::Object(span)));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let ext = span.extensions();
                    let fields = ext
                        .get::<FormattedFields<N>>()
                        .map(|f| f.fields.clone())
                        .unwrap_or_default();
                    serde_json::json!({ "name": span.name(), "fields": fields })
                })
                .collect();
            line.push(("spans".into(), Value::Array(spans)));
        }
        let mut text = String::with_capacity(256);
        text.push('{');
        for (i, (key, value)) in line.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let key = serde_json::to_string(key).map_err(|_| stdfmt::Error)?;
            let value = serde_json::to_string(value).map_err(|_| stdfmt::Error)?;
            text.push_str(&key);
            text.push(':');
            text.push_str(&value);
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// The event's fields as JSON values.
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn stdfmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// The compact human format, led by the request context when there is one.
struct WithRequest<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> stdfmt::Result {
        if let Some((request_id, method, user_id)) = current() {
            write!(writer, "request{{request_id={request_id} method={method}")?;
            if let Some(user_id) = user_id {
                write!(writer, " user_id={user_id}")?;
            }
            write!(writer, "}} ")?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `Write` that keeps what the log wrote (this crate's log tests).
    #[derive(Clone, Default)]
    pub(crate) struct Lines(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_line_written_during_a_request_names_it_and_its_user() {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(
                fmt::layer()
                    .event_format(JsonLine)
                    .with_writer(move || sink.clone()),
            );
        let _guard = tracing::subscriber::set_default(subscriber);
        let user = Uuid::from_u128(7);
        let context = RequestContext::new(HeaderValue::from_static("req-1"), Method::PATCH);
        in_request(context, async {
            tracing::info!(route = "/api/x", status = 200u64, "before auth");
            set_user(user);
            tracing::warn!(duration_ms = 1.5, "after auth");
        })
        .await;
        tracing::info!("outside");
        set_user(user); // outside a request: nothing to name, no panic

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        assert_eq!(lines[0]["message"], "before auth");
        assert_eq!(lines[0]["route"], "/api/x");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["span"]["request_id"], "req-1");
        assert_eq!(lines[0]["span"]["method"], "PATCH");
        assert!(lines[0]["span"].get("user_id").is_none());
        assert_eq!(lines[1]["span"]["user_id"], user.to_string());
        assert_eq!(lines[1]["duration_ms"], 1.5);
        assert_eq!(lines[1]["level"], "WARN");
        assert!(lines[2].get("span").is_none());
    }
}
