//! Rendering a cached read: the stored bytes as they are — gzipped ones when the
//! client accepts gzip, so a hit compresses nothing — with `ETag`, `X-Cache`,
//! `Cache-Control: private, no-cache`, `Vary: Accept-Encoding`, and
//! `304 Not Modified` when the client already holds this version.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

use kai_shared::cache::Cached;

use super::X_CACHE;
use super::errors::ApiError;

pub fn cached(req: &HttpRequest, cached: &Cached) -> HttpResponse {
    let etag = &cached.entry.etag;
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim() == "*"
                || v.split(',')
                    .any(|t| t.trim().trim_start_matches("W/").as_bytes() == &etag[..])
        });
    let mut res = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    ))
    .insert_header((
        X_CACHE.clone(),
        HeaderValue::from_static(cached.status.as_str()),
    ))
    .insert_header((header::VARY, HeaderValue::from_static("accept-encoding")));
    // Visible ASCII, checked when the entry was made or read from Redis.
    if let Ok(etag) = HeaderValue::from_maybe_shared(etag.clone()) {
        res.insert_header((header::ETAG, etag));
    }
    if matches {
        return res.finish();
    }
    res.insert_header((
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    if let Some(gzip) = &cached.entry.gzip
        && accepts_gzip(req)
    {
        // Naming the encoding also tells actix's Compress to leave the body alone.
        res.insert_header((header::CONTENT_ENCODING, HeaderValue::from_static("gzip")));
        return res.body(gzip.clone());
    }
    res.body(cached.entry.body.clone())
}

/// A streamed `application/x-ndjson` answer (exports): one JSON document per line,
/// produced chunk by chunk so memory stays flat whatever the size. Never cached:
/// `Cache-Control: no-store`, since it carries a person's data in full.
pub fn ndjson<S, E>(filename: &str, body: S) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + 'static,
    E: Into<Box<dyn std::error::Error>> + 'static,
{
    let mut res = HttpResponse::Ok();
    res.content_type("application/x-ndjson")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        res.insert_header((header::CONTENT_DISPOSITION, v));
    }
    res.streaming(body)
}

/// An uncached JSON answer carrying personal data (`Cache-Control: no-store`).
/// The answer to a DELETE: 204 when something was deleted, else 404.
pub fn deleted(found: bool) -> Result<HttpResponse, ApiError> {
    if found {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found())
    }
}

pub fn private_json<T: serde::Serialize>(value: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(value)
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        for (header, expected) in [
            ("gzip", true),
            ("br, gzip;q=0.8", true),
            ("GZIP", true),
            ("*", true),
            ("br", false),
            ("gzip;q=0", false),
            ("identity", false),
        ] {
            let req = TestRequest::default()
                .insert_header((header::ACCEPT_ENCODING, header))
                .to_http_request();
            assert_eq!(accepts_gzip(&req), expected, "{header}");
        }
        assert!(!accepts_gzip(&TestRequest::default().to_http_request()));
    }
}
