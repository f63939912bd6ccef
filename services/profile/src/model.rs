//! Request and response shapes. Request bodies deny unknown fields, so a client
//! cannot set `user_id`, `email`, `id` or timestamps through them (mass
//! assignment) — it gets a 400.
//!
//! Passwords appear only in request bodies, whose `Debug` redacts them, so no log
//! line or span can carry one.

use std::fmt;

use chrono::{DateTime, Utc};
use kai_http::valid::{Validate, check_non_blank, no_field_errors};
use kai_http::{ApiError, FieldError};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Argon2 would hash anything; the cap keeps one request from buying seconds of CPU.
pub const MAX_PASSWORD_CHARS: usize = 1024;
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
pub const MAX_COMMUNICATION_STYLE_CHARS: usize = 200;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "email": "sam@example.org", "password": "correct horse battery staple", "display_name": "Sam" }))]
pub struct Register {
    /// An e-mail address (at most 254 characters), unique in its canonical form
    /// (NFKC, case-folded, no trailing dot of the domain); invisible, format and
    /// text-direction characters and names mixing writing systems are refused.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// The canonical form of `email` (`crate::email`), set by validation.
    #[serde(skip)]
    pub email_key: String,
    /// 8–1024 characters, not a common or breached password nor one that is easy
    /// to guess (zxcvbn score 3 of 4 or more; see `strength`).
    #[schema(min_length = 8, max_length = 1024, format = Password)]
    pub password: String,
    /// 1–100 characters, not only white space.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub display_name: Option<String>,
}

impl fmt::Debug for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Register")
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Validate for Register {
    /// Trims the e-mail and display name, then checks every field.
    fn checked(mut self) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        self.email = self.email.trim().to_owned();
        match crate::email::canonical(&self.email) {
            Ok(key) => self.email_key = key,
            Err(why) => errors.push(FieldError::new("email", why)),
        }
        let n = self.password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
            errors.push(FieldError::new(
                "password",
                format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
            ));
        } else {
            let local = self.email.split('@').next().unwrap_or_default();
            let name = self.display_name.as_deref().unwrap_or_default();
            if let Err(why) = crate::strength::check(&self.password, &[local, &self.email, name]) {
                errors.push(FieldError::new("password", why));
            }
        }
        if let Some(name) = &mut self.display_name {
            check_display_name(name, &mut errors);
            *name = name.trim().to_owned();
        }
        no_field_errors(errors)?;
        Ok(self)
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "email": "sam@example.org", "password": "correct horse battery staple" }))]
pub struct Login {
    pub email: String,
    #[schema(format = Password)]
    pub password: String,
    /// The `device_token` a previous successful login of this account returned on
    /// this device (keep it in the device's persistent storage: the keychain or
    /// keystore, or an `HttpOnly; Secure` cookie of a web front end). With it, this
    /// login draws only on the device's own attempt budget, so guesses by others
    /// never refuse it; without it, it shares the account's budget for unknown
    /// devices (10 attempts, then 10 per 15 minutes).
    #[serde(default)]
    pub device_token: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    pub user_id: Uuid,
    /// Proof that this device logged in to this account (signed, bound to the
    /// account, good for 180 days, renewed by each login that sends it). Keep it
    /// in the device's persistent storage (keychain/keystore, or an `HttpOnly;
    /// Secure` cookie of a web front end) and send it as `device_token` with every
    /// later login: such logins are never refused because others guessed the
    /// password. It is not an access token.
    pub device_token: String,
}

/// A user's profile as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    /// A JSON object.
    #[schema(value_type = Object)]
    pub traits: Value,
    /// A JSON object.
    #[schema(value_type = Object)]
    pub preferences: Value,
    pub communication_style: Option<String>,
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// `POST /api/auth/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "current_password": "correct horse battery staple", "new_password": "a longer, newer passphrase" }))]
pub struct ChangePassword {
    #[schema(format = Password)]
    pub current_password: String,
    /// 8–1024 characters, not a common or breached password nor one that is easy
    /// to guess (zxcvbn score 3 of 4 or more), nor a variation of the current one.
    #[schema(min_length = 8, max_length = 1024, format = Password)]
    pub new_password: String,
}

impl fmt::Debug for ChangePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChangePassword { .. }")
    }
}

impl Validate for ChangePassword {
    fn checked(self) -> Result<Self, ApiError> {
        let n = self.new_password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
            return Err(ApiError::validation(vec![FieldError::new(
                "new_password",
                format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
            )]));
        }
        if let Err(why) = crate::strength::check(&self.new_password, &[&self.current_password]) {
            return Err(ApiError::validation(vec![FieldError::new(
                "new_password",
                why,
            )]));
        }
        Ok(self)
    }
}

/// `DELETE /api/account`: the password again, so a stolen token alone cannot
/// erase an account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "password": "correct horse battery staple" }))]
pub struct DeleteAccount {
    #[schema(format = Password)]
    pub password: String,
}

impl fmt::Debug for DeleteAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeleteAccount { .. }")
    }
}

/// Everything profile-service holds about a user, for portability (GDPR Art. 20):
/// the account and its profile. Never the password hash or sessions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountExport {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    /// A JSON object.
    #[schema(value_type = Object)]
    pub traits: Value,
    /// A JSON object.
    #[schema(value_type = Object)]
    pub preferences: Value,
    pub communication_style: Option<String>,
    /// When the account was created.
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When the profile last changed.
    #[serde(serialize_with = "kai_http::timestamp::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// Any (at least one) of the profile's own fields. `traits` and `preferences`
/// replace the stored object whole; `display_name` and `communication_style` may
/// be set to null.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1, example = json!({
    "display_name": "Sam",
    "traits": { "chronotype": "night owl" },
    "preferences": { "reminders": false },
    "communication_style": "warm and brief"
}))]
pub struct PatchProfile {
    /// 1–100 characters, not only white space; null clears it.
    #[serde(default, deserialize_with = "kai_http::double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 100, pattern = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]")]
    pub display_name: Option<Option<String>>,
    /// A JSON object (not null).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable = false)]
    pub traits: Option<Value>,
    /// A JSON object (not null).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable = false)]
    pub preferences: Option<Value>,
    /// At most 200 characters; null clears it.
    #[serde(default, deserialize_with = "kai_http::double_option")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub communication_style: Option<Option<String>>,
}

impl Validate for PatchProfile {
    fn checked(mut self) -> Result<Self, ApiError> {
        if self.display_name.is_none()
            && self.traits.is_none()
            && self.preferences.is_none()
            && self.communication_style.is_none()
        {
            return Err(ApiError::bad_request(
                "nothing to update: give display_name, traits, preferences or communication_style",
            ));
        }
        let mut errors = Vec::new();
        if let Some(Some(name)) = &mut self.display_name {
            check_display_name(name, &mut errors);
            *name = name.trim().to_owned();
        }
        for (field, value) in [("traits", &self.traits), ("preferences", &self.preferences)] {
            if value.as_ref().is_some_and(|v| !v.is_object()) {
                errors.push(FieldError::new(field, "must be a JSON object"));
            }
        }
        if let Some(Some(style)) = &self.communication_style
            && style.chars().count() > MAX_COMMUNICATION_STYLE_CHARS
        {
            errors.push(FieldError::new(
                "communication_style",
                format!("must be at most {MAX_COMMUNICATION_STYLE_CHARS} characters"),
            ));
        }
        no_field_errors(errors)?;
        Ok(self)
    }
}

/// A field that is present — even as `null` — is `Some` (a null object field is
/// then rejected by validation instead of silently ignored).
fn present<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(de).map(Some)
}

/// Checked as sent (what the document states); trimmed afterwards.
fn check_display_name(name: &str, errors: &mut Vec<FieldError>) {
    check_non_blank("display_name", name, MAX_DISPLAY_NAME_CHARS, errors);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::is_email;

    #[test]
    fn plausible_addresses_pass_and_others_do_not() {
        for ok in ["a@b.co", "first.last+tag@example.org", "Ünï@exämple.de"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@",
            "a@b",
            "a@b.",
            "a@.b",
            "a b@c.de",
            "a@b@c.de",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        assert!(!is_email(&format!("{}@example.org", "a".repeat(250))));
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let r = Register {
            email: "a@b.co".into(),
            email_key: "a@b.co".into(),
            password: "hunter2hunter2".into(),
            display_name: None,
        };
        let l = Login {
            email: "a@b.co".into(),
            password: "hunter2hunter2".into(),
            device_token: None,
        };
        assert!(!format!("{r:?}{l:?}").contains("hunter2"));
    }

    #[test]
    fn null_objects_are_rejected_not_ignored() {
        let p: PatchProfile = serde_json::from_str(r#"{"traits": null}"#).unwrap();
        assert!(p.checked().is_err());
        let p: PatchProfile = serde_json::from_str(r#"{"display_name": null}"#).unwrap();
        assert!(p.checked().is_ok(), "display_name may be cleared");
        assert!(serde_json::from_str::<PatchProfile>(r#"{"email": "x@y.z"}"#).is_err());
    }
}
