//! kai-http: the HTTP layer every Kai service shares, above the cache-and-pool
//! crate (`kai-shared`) and below the platform (`kai-platform`). Here and only
//! here lower errors become answers ([`errors`]: `DbError`, the cache's
//! `LoadError<E>`, a rate limit's refusal). Also: the request stamp (id, timing,
//! per-route statistics, slow-request warnings), compression only where it pays,
//! problem+json for every extractor failure, cached-response rendering with
//! ETags, access tokens and their extractors ([`auth`]), and tracing setup
//! ([`telemetry`]).

/// Access tokens (EdDSA JWT, keys chosen by `kid`), the `AuthUser` and `Owned`
/// (user + the path's id) extractors, with revocation.
pub mod auth;
/// Tracing subscriber setup, and the task-local request context every log line
/// of a request carries.
pub mod telemetry;

pub mod cors;
pub mod cursor;
pub mod errors;
pub mod json;
pub mod openapi;
pub mod query;
pub mod respond;
pub mod settings;
pub mod stats;
pub mod timestamp;
pub mod valid;

use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};

pub use errors::{ApiError, FieldError};
pub use json::{Json, MAX_BODY_BYTES};
pub use query::Query;
pub use settings::HttpSettings;
pub use valid::{Valid, Validate};

/// What [`stamp`] records into, as app data: the per-route statistics, and
/// when a request is slow or sampled for the log. (The HTTP metrics are
/// actix-web-prom's: [`prometheus_middleware`].)
pub struct Observe {
    pub stats: std::sync::Arc<stats::EndpointStats>,
    pub slow_request_threshold: std::time::Duration,
    pub access_log_sample: f64,
}

/// Smaller responses are not worth compressing (SPEC §3).
pub const COMPRESS_MIN_BYTES: u64 = kai_shared::cache::entry::COMPRESS_MIN_BYTES as u64;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Content-Security-Policy of the bundled Swagger UI (`/docs`): its page loads
/// only its own scripts (no inline script, no eval: checked against the vendored
/// 5.32 bundle); React sets inline `style` attributes and the icons are `data:`
/// SVGs, hence those two allowances; it fetches `/openapi.json` from the origin.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The HTTP metrics middleware (SPEC §5): actix-web-prom's
/// `kai_http_requests_total` and `kai_http_requests_duration_seconds`, labelled
/// `endpoint` (the route pattern; `UNMATCHED` when no route matched), `method` and
/// `status`, with the buckets of [`kai_shared::metrics::LATENCY_BUCKETS`], registered
/// on the service's registry. That registry gives every metric on it the constant
/// label `service` (`Registry::new_custom`), so it is not given again here as
/// `const_labels` (the text would then carry `service` twice).
///
/// Wrap it *inside* [`stamp`] (in actix the last `.wrap()` runs first): `stamp`
/// refuses over-long methods and turns every other non-standard one into `OTHER`
/// before this labels the request, so made-up methods cannot grow the series.
///
/// The bundled Swagger UI's routes are excluded by their patterns (a set lookup):
/// no series for its assets, as before. (actix-web-prom still logs a WARN for
/// the `/docs/{_:.*}` pattern it cannot format, upstream issue #82: `telemetry`
/// caps `actix_web_prom` at `error`.) Build it once per server, not per worker:
/// building registers the two metrics.
pub fn prometheus_middleware(
    metrics: &kai_shared::metrics::Metrics,
) -> prometheus::Result<actix_web_prom::PrometheusMetrics> {
    actix_web_prom::PrometheusMetricsBuilder::new("kai")
        .registry(metrics.registry.clone())
        .buckets(kai_shared::metrics::LATENCY_BUCKETS)
        .mask_unmatched_patterns("UNMATCHED")
        .exclude("/docs")
        .exclude(DOCS_ASSETS)
        .build()
        .map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The route pattern of the bundled Swagger UI's assets (`server::docs`).
pub const DOCS_ASSETS: &str = "/docs/{_:.*}";

/// Outermost middleware, one layer for what every request needs: the head
/// bounded ([`bound_head`]: before [`prometheus_middleware`], wrapped inside,
/// sees the method), the request context every log line names (`telemetry`),
/// request id, response time, per-route statistics for `/health/detailed`,
/// slow-request warnings, the access log (a sample of requests, see
/// [`log_this_request`]) and the security headers. Also removes the `identity`
/// marker [`skip_small_bodies`] set, so clients never see it.
///
/// Every request passes here, so it allocates little: the caller's request id is
/// kept as the header value it came in, a new one is a UUID v4 from the thread's
/// RNG (no system call) written on the stack, and `X-Response-Time` is formatted on
/// the stack too.
pub async fn stamp(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Err(problem) = bound_head(&mut req) {
        return Ok(req
            .into_response(actix_web::ResponseError::error_response(&problem))
            .map_into_right_body());
    }
    let started = Instant::now();
    let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let request_id: HeaderValue = match req.headers().get(&X_REQUEST_ID).filter(|v| {
        !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic)
    }) {
        Some(theirs) => theirs.clone(),
        None => {
            let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut id_buf))
                .expect("a hyphenated UUID is a valid header value")
        }
    };
    let method = req.method().clone();
    let observe = req.app_data::<web::Data<Observe>>().cloned();
    // Every line written while the request is handled names it (and, once the
    // auth extractor verified the token, the user: an id, never data). A
    // task-local, not span fields: see `telemetry`.
    let context = crate::telemetry::RequestContext::new(request_id.clone(), method.clone());
    crate::telemetry::in_request(context, async move {
        // No blanket handler timeout here (it would need a clone of the request, which
        // actix forbids while routing): every dependency has its own bound instead —
        // DB_POOL_TIMEOUT_SECS, REDIS_TIMEOUT_MS, a service's outbound timeouts — and the server
        // bounds slow clients (client_request_timeout, client_disconnect_timeout).
        let mut res = next.call(req).await?;

        let elapsed = started.elapsed();
        let status = res.status();
        let on_docs = res.request().path().starts_with("/docs");
        // The bundled Swagger UI's assets are no route anyone monitors.
        if let Some(observe) = observe.as_ref().filter(|_| !on_docs) {
            // The route *pattern*, never the raw path: bounded keys, and no
            // personal text (ids, a search query) in the statistics or a log line.
            let matched = res.request().match_pattern();
            let route = matched.as_deref().unwrap_or("UNMATCHED");
            if route.starts_with("/api/") {
                observe
                    .stats
                    .record(&method, route, elapsed, status.is_server_error());
            }
            let slow = elapsed >= observe.slow_request_threshold;
            // The access log: a sample, plus every server error and slow request.
            if status.is_server_error() || slow || log_this_request(observe.access_log_sample) {
                let ms = elapsed.as_secs_f64() * 1000.0;
                if slow {
                    tracing::warn!(
                        route,
                        status = status.as_u16(),
                        duration_ms = ms,
                        "slow request"
                    );
                } else {
                    tracing::info!(route, status = status.as_u16(), duration_ms = ms, "request");
                }
            }
        }
        let headers = res.headers_mut();
        if on_docs {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            );
        }
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v == "identity")
        {
            headers.remove(header::CONTENT_ENCODING);
        }
        for (name, value) in SECURITY_HEADERS {
            if !headers.contains_key(&name) {
                headers.insert(name, HeaderValue::from_static(value));
            }
        }
        headers.insert(X_REQUEST_ID.clone(), request_id);
        headers.insert(X_RESPONSE_TIME.clone(), response_time(elapsed));
        Ok(res.map_into_left_body())
    })
    .await
}

/// `X-Response-Time`: milliseconds with three decimals (`0.412ms`), formatted
/// without a heap allocation and without `core::fmt` (on every request:
/// `write!` of two integers cost ~850 instructions, this ~100).
fn response_time(elapsed: std::time::Duration) -> HeaderValue {
    // Whole microseconds in integer arithmetic (float formatting with a fixed
    // precision takes the slow exact path on every request). u64 microseconds
    // last 584,000 years: at most 17 digits, the point, three decimals, `ms`.
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let mut whole = itoa::Buffer::new();
    let whole = whole.format(micros / 1000).as_bytes();
    let fraction = micros % 1000;
    let mut buf = [0u8; 32];
    buf[..whole.len()].copy_from_slice(whole);
    let mut at = whole.len();
    buf[at] = b'.';
    for (i, digit) in [fraction / 100, fraction / 10 % 10, fraction % 10]
        .into_iter()
        .enumerate()
    {
        buf[at + 1 + i] = b'0' + digit as u8;
    }
    at += 4;
    buf[at..at + 2].copy_from_slice(b"ms");
    at += 2;
    HeaderValue::from_bytes(&buf[..at]).unwrap_or_else(|_| HeaderValue::from_static("0.000ms"))
}

/// Whether this request gets an access-log line: `sample` is the share
/// (`ACCESS_LOG_SAMPLE`: 0 = none, 1 = every one). Every `1/sample`-th request
/// of each worker thread, counted rather than drawn: no RNG and no shared
/// counter on the hot path, and the share is exact. (Server errors and slow
/// requests are logged whatever this says.)
pub fn log_this_request(sample: f64) -> bool {
    thread_local! {
        static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    if sample >= 1.0 {
        return true;
    }
    if sample <= 0.0 {
        return false;
    }
    let every = (1.0 / sample).round().max(1.0) as u64;
    SEEN.with(|seen| {
        let n = seen.get().wrapping_add(1);
        seen.set(n);
        n % every == 0
    })
}

#[cfg(test)]
mod stamp_tests {
    #[test]
    fn the_access_log_sample_is_an_exact_share() {
        let count = |sample: f64| {
            (0..10_000)
                .filter(|_| super::log_this_request(sample))
                .count()
        };
        assert_eq!(count(1.0), 10_000);
        assert_eq!(count(0.0), 0);
        assert_eq!(count(0.01), 100);
        assert_eq!(count(0.25), 2_500);
    }

    #[test]
    fn response_times_read_as_milliseconds() {
        let v = super::response_time(std::time::Duration::from_micros(412));
        assert_eq!(v.to_str().unwrap(), "0.412ms");
        let v = super::response_time(std::time::Duration::from_secs(12));
        assert_eq!(v.to_str().unwrap(), "12000.000ms");
        let shown = |micros: u64| {
            super::response_time(std::time::Duration::from_micros(micros))
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(shown(0), "0.000ms");
        assert_eq!(shown(7), "0.007ms");
        assert_eq!(shown(1_000), "1.000ms");
        assert_eq!(shown(1_234_567), "1234.567ms");
        assert_eq!(shown(u64::MAX), "18446744073709551.615ms");
        // What `write!` printed, for every width up to a day.
        for micros in (0..86_400_000_000u64).step_by(9_999_991).chain(0..2_000) {
            assert_eq!(
                shown(micros),
                format!("{}.{:03}ms", micros / 1000, micros % 1000)
            );
        }
    }
}

#[cfg(test)]
mod metrics_tests {
    use actix_web::http::{Method, StatusCode};
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test, web};

    use kai_shared::metrics::{LATENCY_BUCKETS, Metrics};

    /// A service's registry and its HTTP metrics middleware (built once: building
    /// registers the two metrics).
    struct Served {
        metrics: Metrics,
        middleware: actix_web_prom::PrometheusMetrics,
    }

    fn served(service: &str) -> Served {
        let metrics = Metrics::new(service);
        let middleware = super::prometheus_middleware(&metrics).unwrap();
        assert!(
            super::prometheus_middleware(&metrics).is_err(),
            "a registry takes the HTTP metrics once"
        );
        Served {
            metrics,
            middleware,
        }
    }

    /// A request through `stamp` around actix-web-prom, as `server::run` wraps
    /// them; answers the status (the body is read, so the series is recorded).
    async fn call(s: &Served, method: &str, path: &str) -> StatusCode {
        let app = test::init_service(
            App::new()
                .wrap(s.middleware.clone())
                .wrap(from_fn(super::stamp))
                // As the services declare theirs: a method the resource lacks
                // is its 405.
                .service(
                    web::resource("/api/journal/entries/{id}")
                        .route(web::get().to(HttpResponse::Ok)),
                )
                .route("/fail", web::get().to(HttpResponse::ServiceUnavailable))
                .route(super::DOCS_ASSETS, web::get().to(HttpResponse::Ok)),
        )
        .await;
        let req = test::TestRequest::default()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .to_request();
        let res = test::call_service(&app, req).await;
        let status = res.status();
        test::read_body(res).await;
        status
    }

    fn http_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("kai_http_"))
            .collect()
    }

    #[actix_web::test]
    async fn requests_are_counted_by_route_pattern_method_and_status() {
        let m = served("journal");
        assert_eq!(
            call(&m, "GET", "/api/journal/entries/0b7e4a52").await,
            StatusCode::OK
        );
        call(&m, "GET", "/api/journal/entries/91c3").await;
        assert_eq!(
            call(&m, "GET", "/fail").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(&m, "POST", "/no/such/path").await,
            StatusCode::NOT_FOUND
        );
        let text = m.metrics.render();
        assert!(text.contains("# HELP kai_http_requests_total Total number of HTTP requests"));
        assert!(text.contains(
            r#"kai_http_requests_total{endpoint="/api/journal/entries/{id}",method="GET",status="200",service="journal"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"kai_http_requests_total{endpoint="/fail",method="GET",status="503",service="journal"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"kai_http_requests_total{endpoint="UNMATCHED",method="POST",status="404",service="journal"} 1"#
        ), "{text}");
        assert!(
            !text.contains("0b7e4a52") && !text.contains("/no/such"),
            "raw paths are never labels"
        );
        // `service` once per series: from the registry, not given twice.
        assert!(
            http_lines(&text)
                .iter()
                .all(|l| l.matches("service=").count() == 1)
        );
        assert!(text.contains("process_cpu_seconds_total"));
    }

    #[actix_web::test]
    async fn the_duration_histogram_has_the_latency_buckets() {
        let m = served("journal");
        call(&m, "GET", "/fail").await;
        let text = m.metrics.render();
        let bounds: Vec<&str> = http_lines(&text)
            .into_iter()
            .filter(|l| l.starts_with("kai_http_requests_duration_seconds_bucket{"))
            .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        let mut expected: Vec<String> = LATENCY_BUCKETS.iter().map(f64::to_string).collect();
        expected.push("+Inf".into());
        assert_eq!(bounds, expected);
        assert!(text.contains(
            r#"kai_http_requests_duration_seconds_bucket{endpoint="/fail",method="GET",status="503",service="journal",le="+Inf"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"kai_http_requests_duration_seconds_count{endpoint="/fail",method="GET",status="503",service="journal"} 1"#
        ), "{text}");
    }

    #[actix_web::test]
    async fn made_up_methods_are_one_label_and_over_long_ones_none() {
        let m = served("journal");
        for method in ["BREW", "PROPFIND", "WHATEVERX"] {
            call(&m, method, "/api/journal/entries/1").await;
        }
        assert_eq!(
            call(&m, &"X".repeat(100), "/api/journal/entries/1").await,
            StatusCode::BAD_REQUEST
        );
        // HEAD is served, and counted, as GET.
        assert_eq!(
            call(&m, "HEAD", "/api/journal/entries/1").await,
            StatusCode::OK
        );
        let text = m.metrics.render();
        let methods: std::collections::BTreeSet<&str> = http_lines(&text)
            .into_iter()
            .map(|l| {
                l.split("method=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(methods, ["GET", "OTHER"].into_iter().collect(), "{text}");
        assert!(text.contains(
            r#"kai_http_requests_total{endpoint="/api/journal/entries/{id}",method="OTHER",status="405",service="journal"} 3"#
        ), "{text}");
    }

    use crate::telemetry::tests::Lines;

    /// actix-web-prom logs a WARN for every docs asset it sees (it cannot format
    /// the `{_:.*}` pattern, upstream issue #82); the service's log never shows it.
    #[actix_web::test]
    async fn docs_assets_leave_no_warning_in_the_log() {
        let lines = Lines::default();
        let sink = lines.clone();
        // The process's subscriber (nothing else in this test binary installs
        // one), so `log` records reach it as they do in a service.
        crate::telemetry::init_with("info", crate::telemetry::LogFormat::Json, move || {
            sink.clone()
        });
        let s = served("journal");
        for _ in 0..3 {
            assert_eq!(call(&s, "GET", "/docs/index.css").await, StatusCode::OK);
        }
        tracing::warn!("a warning from Kai itself");
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("a warning from Kai itself"), "{text}");
        assert!(
            !text.contains("actix_web_prom") && !text.contains("cardinality"),
            "{text}"
        );
    }

    #[actix_web::test]
    async fn docs_assets_and_other_registries_stay_apart() {
        let (journal, profile) = (served("journal"), served("profile"));
        assert_eq!(
            call(&journal, "GET", "/docs/index.css").await,
            StatusCode::OK
        );
        assert!(
            http_lines(&journal.metrics.render()).is_empty(),
            "docs assets are not recorded"
        );
        for _ in 0..3 {
            call(&profile, "GET", "/fail").await;
        }
        call(&journal, "GET", "/fail").await;
        assert!(profile.metrics.render().contains(
            r#"kai_http_requests_total{endpoint="/fail",method="GET",status="503",service="profile"} 3"#
        ));
        assert!(journal.metrics.render().contains(
            r#"kai_http_requests_total{endpoint="/fail",method="GET",status="503",service="journal"} 1"#
        ));
    }
}

/// Innermost middleware: marks bodies under [`COMPRESS_MIN_BYTES`] so actix's
/// `Compress` leaves them alone (it skips any response that names an encoding).
pub async fn skip_small_bodies(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    if let BodySize::Sized(n) = res.response().body().size()
        && n < COMPRESS_MIN_BYTES
        && !res.headers().contains_key(header::CONTENT_ENCODING)
    {
        res.headers_mut().insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    Ok(res)
}

/// Query strings read with `web::Query` (routes use [`Query`]): problem+json on failure.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let QueryPayloadError::Deserialize(e) = &err else {
            return ApiError::bad_request("bad query string").into();
        };
        ApiError::bad_request(format!("bad query parameter: {e}")).into()
    })
}

/// Path parameters (every route's is a UUID `{id}`): problem+json in plain
/// words on failure, never the parser's message (which would echo the input).
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _req| {
        let PathError::Deserialize(_) = &err else {
            return ApiError::bad_request("bad path").into();
        };
        ApiError::BadRequest {
            detail: "`id` must be a UUID".into(),
            errors: vec![FieldError::new("id", "must be a UUID")],
        }
        .into()
    })
}

/// Raw bodies (`web::Bytes`, `String`; JSON bodies use [`Json`], which has its
/// own per-route limit and ignores this): the same 64 KiB.
pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::new(MAX_BODY_BYTES)
}

/// A known route asked with another method: actix answers 405 with an empty body;
/// this gives it the problem+json every other failure has, and the `Allow` header
/// RFC 9110 requires (the methods come from the service's OpenAPI document,
/// see [`allowed_methods`]).
pub fn method_not_allowed<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let problem = ApiError::MethodNotAllowed(format!("{} is not supported here", req.method()));
    let mut response = actix_web::ResponseError::error_response(&problem);
    // RFC 9110: a 405 lists the methods the resource has (the documented ones;
    // routes outside the document, such as the health probes, are GET-only).
    let allow = req
        .match_pattern()
        .and_then(|pattern| {
            let ops = req.app_data::<web::Data<openapi::Operations>>()?;
            ops.methods(&pattern).map(|m| {
                let mut methods: Vec<String> = m.iter().cloned().collect();
                // HEAD is answered wherever GET is (`bound_method`).
                if m.contains("GET") {
                    methods.push("HEAD".into());
                }
                methods.join(", ")
            })
        })
        .unwrap_or_else(|| "GET, HEAD".to_owned());
    if let Ok(v) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    let res = ServiceResponse::new(req, response).map_into_right_body();
    Ok(actix_web::middleware::ErrorHandlerResponse::Response(res))
}

/// Longest method accepted at all; longer ones are refused before anything else
/// sees them (the parser takes methods of any length).
pub const MAX_METHOD_LEN: usize = 16;

/// Most bytes of header fields (names and values) a request may carry. actix
/// refuses a head over 128 KiB only when it arrives in pieces; one that lands in
/// a single read is parsed whole, so the bound is kept here (nginx's default is
/// 32 KiB across four buffers).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The request head, bounded before anything else looks at it (the first step
/// of [`stamp`]). Header fields over [`MAX_HEADER_BYTES`] are a 431; a method
/// over [`MAX_METHOD_LEN`] is a 400 at once (logged truncated); any other
/// non-standard method becomes `OTHER` before metrics, statistics and logs see
/// it (it then matches no route: 405 or 404). `HEAD` is served as `GET` (actix
/// sends no body for a HEAD request whatever the handler produced), so it works
/// wherever `GET` does.
fn bound_head(req: &mut ServiceRequest) -> Result<(), ApiError> {
    use actix_web::http::Method;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        tracing::info!(bytes = header_bytes, "refused over-large request headers");
        return Err(ApiError::HeaderFieldsTooLarge(format!(
            "the request's header fields are larger than {} KiB",
            MAX_HEADER_BYTES / 1024
        )));
    }
    let method = req.method().clone();
    let standard = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    if method == Method::HEAD {
        req.head_mut().method = Method::GET;
    } else if !standard.contains(&method) {
        let raw = method.as_str();
        if raw.len() > MAX_METHOD_LEN {
            let shown: String = raw.chars().take(MAX_METHOD_LEN).collect();
            tracing::info!(method = %shown, length = raw.len(), "refused an over-long HTTP method");
            return Err(ApiError::bad_request(format!(
                "the request method is longer than {MAX_METHOD_LEN} characters"
            )));
        }
        req.head_mut().method = Method::from_bytes(b"OTHER").expect("a valid token");
    }
    Ok(())
}

/// Set on every answer that has none of its own: cached GETs say `private,
/// no-cache` themselves; everything else — auth answers, uncached reads of
/// personal data, errors — is never stored by a browser or proxy.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// An integer query parameter, `default` when absent, checked against `min..=max`
/// (a 400 naming the parameter otherwise).
pub fn in_range(
    name: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::validation(vec![FieldError::new(
            name,
            format!("must be between {min} and {max}"),
        )]))
    }
}

/// Unknown routes.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// For PATCH bodies: tells "absent" (`None`) from "null" (`Some(None)`).
/// Use with `#[serde(default, deserialize_with = "kai_http::double_option")]`.
pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

/// The client's address. `X-Forwarded-For` is believed only when the connecting
/// peer is one of `TRUSTED_PROXIES`; then the hops are read right to left (each
/// proxy appends the address it saw) and the first one that is not itself a
/// trusted proxy is the client — entries left of it are whatever the client
/// wrote and are never believed. With no trusted proxy (the default) the header is
/// ignored and the peer is the client, so nobody escapes a per-address limit by
/// writing the header.
pub fn client_ip(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    client_ip_of(peer, req.headers(), trusted)
}

fn client_ip_of(
    peer: std::net::IpAddr,
    headers: &actix_web::http::header::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    return Some(ip);
                }
            }
            // Garbage where an address should be: the last trusted hop is the
            // client as far as anyone can tell.
            Err(_) => return Some(client),
        }
    }
    Some(client)
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;
    use actix_web::http::header::HeaderMap;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let h = headers(&["198.51.100.1"]);
        assert_eq!(
            client_ip_of(ip("203.0.113.9"), &h, &[]),
            Some(ip("203.0.113.9"))
        );
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip_of(ip("203.0.113.9"), &h, &trusted),
            Some(ip("203.0.113.9")),
            "an untrusted peer's header is not believed"
        );
        assert_eq!(
            client_ip_of(ip("10.1.2.3"), &h, &trusted),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        // client wrote 1.1.1.1 itself; 198.51.100.1 is who connected to our proxy
        // chain 10.0.0.5 → 10.0.0.6 (peer).
        let h = headers(&["1.1.1.1, 198.51.100.1", "10.0.0.5"]);
        assert_eq!(
            client_ip_of(ip("10.0.0.6"), &h, &trusted),
            Some(ip("198.51.100.1"))
        );
        // Garbage after the real hop: the last trusted hop answers.
        let h = headers(&["198.51.100.1, not-an-ip"]);
        assert_eq!(
            client_ip_of(ip("10.0.0.6"), &h, &trusted),
            Some(ip("10.0.0.6"))
        );
        // No header through a trusted proxy: the proxy itself.
        assert_eq!(
            client_ip_of(ip("10.0.0.6"), &headers(&[]), &trusted),
            Some(ip("10.0.0.6"))
        );
    }
}

/// For optional fields that may be absent but not null: `Some` of the value, and
/// `null` is refused like any other wrong type. Use with
/// `#[serde(default, deserialize_with = "kai_http::some")]`.
pub fn some<'de, T, D>(de: D) -> Result<Option<T>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    T::deserialize(de).map(Some)
}

pub mod whole;
