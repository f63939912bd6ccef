//! Parse, don't validate: a request body becomes a [`Valid`] value by passing its
//! checks ([`Validate::checked`], which also normalizes: trims, drops blanks), and
//! the functions that store input take `&Valid<T>`, so nothing unchecked can
//! reach an insert. [`Valid::parse`] is the only way to make one.

use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::errors::{ApiError, FieldError};
use super::json::Json;

/// A request shape's checks.
pub trait Validate: Sized {
    /// `self`, checked and normalized, or a 400 naming every field at fault.
    fn checked(self) -> Result<Self, ApiError>;
}

/// Input that passed its checks.
#[derive(Debug, Clone)]
pub struct Valid<T>(T);

impl<T: Validate> Valid<T> {
    /// Checks `input`: the only way to make a `Valid`.
    pub fn parse(input: T) -> Result<Self, ApiError> {
        input.checked().map(Self)
    }
}

impl<T> Valid<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// As an extractor: a JSON body as [`Json`] reads it (at most 64 KiB), then
/// checked. A route with another body limit takes `Json<T, LIMIT>` and calls
/// [`Valid::parse`].
impl<T: Validate + DeserializeOwned + 'static> FromRequest for Valid<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = Json::<T>::from_request(req, payload);
        Box::pin(async move { Valid::parse(body.await?.0) })
    }
}

impl<T> Deref for Valid<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The check [`super::openapi::non_blank`] documents, on the text as sent:
/// 1 to `max` characters, not only white space.
pub fn check_non_blank(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    let n = value.chars().count();
    if n > max || super::openapi::is_blank(value) {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {max} characters, not only white space (got {n})"),
        ));
    }
}

/// Ok when no field is at fault, else a 400 naming each (for [`Validate::checked`]).
pub fn no_field_errors(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Name(String);

    impl Validate for Name {
        fn checked(self) -> Result<Self, ApiError> {
            let name = self.0.trim().to_owned();
            let mut errors = Vec::new();
            if name.is_empty() {
                errors.push(FieldError::new("name", "must not be blank"));
            }
            no_field_errors(errors)?;
            Ok(Self(name))
        }
    }

    #[test]
    fn non_blank_counts_characters_and_refuses_white_space_only() {
        let check = |value: &str| {
            let mut errors = Vec::new();
            check_non_blank("f", value, 3, &mut errors);
            errors.len()
        };
        assert_eq!(check("héé"), 0, "three characters, six bytes");
        assert_eq!(check("abcd"), 1);
        assert_eq!(check(""), 1);
        assert_eq!(check(" \u{3000}"), 1);
        assert_eq!(check(" a "), 0);
    }

    #[test]
    fn only_checked_input_becomes_valid_and_it_is_normalized() {
        assert_eq!(Valid::parse(Name(" kai ".into())).unwrap().0.0, "kai");
        assert!(Valid::parse(Name("  ".into())).is_err());
    }
}
