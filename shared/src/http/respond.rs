//! Rendering a cached read: the stored bytes as they are, with `ETag`,
//! `X-Cache`, `Cache-Control: private, no-cache`, and `304 Not Modified` when the
//! client already holds this version.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

use crate::cache::Cached;

use super::X_CACHE;

pub fn cached(req: &HttpRequest, cached: &Cached) -> HttpResponse {
    let etag = &cached.entry.etag;
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim() == "*"
                || v.split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == etag)
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
    ));
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.insert_header((header::ETAG, v));
    }
    if matches {
        return res.finish();
    }
    res.content_type("application/json")
        .body(cached.entry.body.clone())
}
