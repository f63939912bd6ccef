//! The query-string extractor every service route uses: [`Query<T>`].
//!
//! Like `actix_web::web::Query`, but what PostgreSQL cannot store never gets past
//! it, and every error names the parameter in plain words:
//!
//! - a NUL character (`%00`) in any parameter's name or value is a 400 naming the
//!   parameter (a search `q` would otherwise reach PostgreSQL and fail there);
//! - numbers beyond the target type (`limit=99999999999999999999`), text where a
//!   number belongs, unknown parameters: a 400 naming the parameter
//!   ([`serde_path_to_error`]), never a Rust type name.
//!
//! Invalid UTF-8 (`%FF`) is decoded as U+FFFD, which PostgreSQL stores, as
//! `web::Query` does.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use super::errors::ApiError;
use super::json::structured::Node;
use super::json::{field_error, field_problem, render_path};

/// Query parameters decoded into `T` (see the module documentation).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse(req.query_string()).map(Query))
    }
}

/// Decodes a raw query string (without the `?`).
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    if let Some(name) = parameter_with_nul(query) {
        return Err(field_error(
            name,
            "must not contain the NUL character (%00)",
        ));
    }
    let pairs = form_urlencoded::parse(query.as_bytes());
    serde_urlencoded::from_str(query).map_err(|_| {
        // What serde said, as data: decoded again (only now, on the error path)
        // through a deserializer that keeps serde's error calls.
        match serde_path_to_error::deserialize::<_, T>(Node::query(pairs)) {
            Err(e) => {
                let path = render_path(e.path());
                field_problem(path, e.into_inner())
            }
            Ok(_) => ApiError::bad_request("bad query string"),
        }
    })
}

/// The first parameter whose decoded name or value holds NUL, by name (escaped
/// as JSON would, so the answer holds no raw NUL).
fn parameter_with_nul(query: &str) -> Option<String> {
    if !query.contains('%') && !query.contains('\0') {
        return None;
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        .map(|(name, _)| {
            if name.contains('\0') {
                name.escape_default().to_string()
            } else {
                name.into_owned()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Search {
        q: String,
        limit: Option<i64>,
    }

    fn refused(query: &str) -> (String, String) {
        let p = parse::<Search>(query).expect_err("refused").problem();
        assert_eq!(p.status, 400);
        (p.errors[0].field.clone(), p.errors[0].message.clone())
    }

    #[test]
    fn nul_anywhere_is_refused_naming_the_parameter() {
        assert_eq!(refused("q=a%00b").0, "q");
        assert_eq!(refused("limit=5&q=%00").0, "q");
        assert_eq!(refused("q=x&zz%00z=1").0, "zz\\u{0}z");
        assert!(refused("q=%00").1.contains("NUL"));
        assert_eq!(parse::<Search>("q=river%20walk").unwrap().q, "river walk");
    }

    #[test]
    fn numbers_and_unknown_parameters_are_named_in_plain_words() {
        assert_eq!(
            refused("q=x&limit=99999999999999999999"),
            ("limit".into(), "is out of range".into())
        );
        assert_eq!(
            refused("q=x&limit=ten"),
            ("limit".into(), "must be a whole number".into())
        );
        assert_eq!(refused("q=x&limit=1e400").0, "limit");
        assert_eq!(refused("q=x&zzz=1").0, "zzz");
        assert_eq!(refused("limit=1"), ("q".into(), "is required".into()));
    }
}
