//! Parse, don't validate: a request body becomes a [`Valid`] value by passing its
//! checks ([`Validate::checked`], which also normalizes: trims, drops blanks), and
//! the functions that store input take `&Valid<T>`, so nothing unchecked can
//! reach an insert. [`Valid::parse`] is the only way to make one.

use std::ops::Deref;

use super::errors::{ApiError, FieldError};

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

impl<T> Deref for Valid<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
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
    fn only_checked_input_becomes_valid_and_it_is_normalized() {
        assert_eq!(Valid::parse(Name(" kai ".into())).unwrap().0.0, "kai");
        assert!(Valid::parse(Name("  ".into())).is_err());
    }
}
