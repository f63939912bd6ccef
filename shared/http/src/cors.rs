//! CORS for browser clients: the request headers a client may send, the response
//! headers its scripts may read (`Retry-After` to back off, `ETag` to revalidate,
//! `Location` after a create, `X-Request-Id` to report a problem, `X-Cache`), and
//! preflights that advertise only what the route accepts. actix-cors configures one
//! method list for the whole app; [`preflight_per_route`] narrows each answer to
//! the methods of the route asked about (from the OpenAPI document, which a test
//! keeps equal to actix's routes), and refuses a method the route lacks.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;

use super::errors::ApiError;
use super::openapi::Operations;

/// Request headers a cross-origin client may send.
pub const ALLOWED_HEADERS: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::IF_NONE_MATCH,
    header::HeaderName::from_static("x-request-id"),
];

/// Response headers a cross-origin script may read.
pub const EXPOSED_HEADERS: [&str; 6] = [
    "retry-after",
    "etag",
    "x-request-id",
    "x-cache",
    "location",
    "x-response-time",
];

/// Wraps actix-cors (outside it): a preflight for a documented route asking for a
/// method that route lacks is a 405 with `Allow`; an accepted one advertises the
/// route's own methods only.
pub async fn preflight_per_route(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let asked = (req.method() == Method::OPTIONS)
        .then(|| req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let route_methods = asked.as_ref().and_then(|_| {
        let pattern = req.resource_map().match_pattern(req.path())?;
        let ops = req.app_data::<web::Data<Operations>>()?;
        ops.methods(&pattern).cloned()
    });
    let (Some(asked), Some(methods)) = (asked, route_methods) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let allow = methods.iter().cloned().collect::<Vec<_>>().join(", ");
    if !methods.contains(&asked.to_ascii_uppercase()) {
        let problem = ApiError::MethodNotAllowed(format!("{asked} is not supported here"));
        let mut res = actix_web::ResponseError::error_response(&problem);
        if let Ok(v) = HeaderValue::from_str(&allow) {
            res.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(req.into_response(res).map_into_right_body());
    }
    let mut res = next.call(req).await?;
    if res
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS)
        && let Ok(v) = HeaderValue::from_str(&allow)
    {
        res.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    Ok(res.map_into_left_body())
}
