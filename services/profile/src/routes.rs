//! HTTP handlers: accounts (register, login, logout) and the caller's profile.
//! Each handler validates, then delegates to [`password`], [`queries`] and the
//! platform (tokens, revocation, cache).

use actix_web::{HttpRequest, HttpResponse, web};
use kai_http::auth::AuthUser;
use kai_http::openapi::BearerAuth;
use kai_http::{ApiError, FieldError};
use kai_http::{Json, Valid, respond};
use kai_platform::Platform;
use kai_shared::db::DbError;

use crate::limits::{
    LOGIN_PER_ACCOUNT_UNKNOWN_DEVICES, LOGIN_PER_CLIENT, LOGIN_PER_DEVICE,
    LOGIN_PER_EMAIL_AND_CLIENT, REGISTER_PER_CLIENT, client_address,
};
use utoipa::OpenApi;

use crate::cache_rules::{PROFILE, profile_key, user_scope};
use crate::model::{
    AccountExport, Login, MAX_PASSWORD_CHARS, PatchProfile, Profile, Register, Registered, Token,
};
use crate::password::Caller;
use crate::{device, password, queries, sessions};

/// The one answer to every failed login: an unknown e-mail and a wrong password
/// must be indistinguishable.
const BAD_CREDENTIALS: &str = "the e-mail address or password is incorrect";

#[derive(OpenApi)]
#[openapi(
    info(title = "Kai profile-service", description = "Accounts, sessions and access tokens; the profile that shapes how the assistant speaks."),
    paths(register, login, logout, get_profile, patch_profile, export_profile, crate::account::change_password, crate::account::logout_all, crate::account::delete_account),
    components(schemas(Register, Registered, Login, Token, Profile, PatchProfile, AccountExport, crate::model::ChangePassword, crate::model::DeleteAccount, kai_http::errors::Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "auth", description = "Accounts, sessions and access tokens"),
         (name = "profile", description = "The profile that shapes how the assistant speaks"))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/auth/register").route(web::post().to(register)))
        .service(web::resource("/api/auth/login").route(web::post().to(login)))
        .service(web::resource("/api/auth/logout").route(web::post().to(logout)))
        .service(
            web::resource("/api/profile")
                .route(web::get().to(get_profile))
                .route(web::patch().to(patch_profile)),
        )
        .service(web::resource("/api/profile/export").route(web::get().to(export_profile)))
        .configure(crate::account::configure);
}

/// Create an account (and its empty profile).
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = Register, security(()),
    responses((status = 201, description = "The account; `Location` is the profile (readable after login)", body = Registered),
        (status = 400, description = "Not an e-mail address, an address with invisible, format or text-direction characters or mixing writing systems, or a password too short or too common", body = kai_http::errors::Problem),
        (status = 409, description = "That e-mail address (in any case, width, normalisation or with a trailing dot) is registered"),
        (status = 429, description = "Too many registrations from this address")))]
async fn register(
    req: HttpRequest,
    p: web::Data<Platform>,
    new: Valid<Register>,
) -> Result<HttpResponse, ApiError> {
    // Before the hash and the "taken" answer: both are what a flood is after.
    p.limiter
        .check(&REGISTER_PER_CLIENT, &client_address(&req, &p))
        .await?;
    let hash = password::hash(Caller::Anonymous, new.password.clone()).await?;
    let user = queries::insert_user(&p.db, &new, &hash)
        .await
        .map_err(db_error)?;
    kai_http::telemetry::set_user(user.user_id);
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::LOCATION, "/api/profile"))
        .json(user))
}

/// Exchange e-mail and password for an access token (a new session).
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = Login, security(()),
    responses((status = 200, description = "A new session's access token, and this device's `device_token` to keep (in the device's persistent storage) and send with later logins", body = Token),
        (status = 401, description = "Unknown e-mail or wrong password (one answer for both)"),
        (status = 429, description = "Too many attempts: from this device (with a `device_token`); else for this e-mail from this address, from this address (IPv6: its /64), or for this account from devices it has not seen log in (10, then 10 per 15 minutes)")))]
async fn login(
    req: HttpRequest,
    p: web::Data<Platform>,
    body: Json<Login>,
) -> Result<HttpResponse, ApiError> {
    let Login {
        email,
        password,
        device_token,
    } = body.into_inner();
    let client = client_address(&req, &p);
    let key = crate::email::canonical(&email);
    // A device token of some account: its own bucket first (it bounds this
    // device's attempts whoever it belongs to).
    let device = device_token
        .as_deref()
        .and_then(|t| device::verify(&p.settings.auth, t));
    if let Some(d) = device {
        p.limiter
            .check(&LOGIN_PER_DEVICE, &d.id.to_string())
            .await?;
    }
    let account = match &key {
        Ok(key) if device.is_some() => queries::credentials(&p.db, key).await?,
        _ => None,
    };
    let known_device = matches!((device, &account), (Some(d), Some((id, _))) if d.user_id == *id);
    if !known_device {
        // Brute force from clients this account has not seen succeed: a bucket
        // per client address (IPv6 by /64), one per (canonical e-mail, address),
        // and the account's budget for unknown devices — all before any password
        // work. An address with no canonical form names no account: the same
        // answer, without the hash work.
        p.limiter.check(&LOGIN_PER_CLIENT, &client).await?;
        let subject = key.as_deref().unwrap_or(email.trim());
        p.limiter
            .check(&LOGIN_PER_EMAIL_AND_CLIENT, &format!("{subject}\n{client}"))
            .await?;
        p.limiter
            .check(&LOGIN_PER_ACCOUNT_UNKNOWN_DEVICES, subject)
            .await?;
    }
    let Ok(key) = key else {
        return Err(ApiError::Unauthorized(BAD_CREDENTIALS.into()));
    };
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::Unauthorized(BAD_CREDENTIALS.into()));
    }
    // Unknown e-mail or not, the same hash work is done and the same answer given.
    let account = match (device, account) {
        (Some(_), account) => account,
        (None, _) => queries::credentials(&p.db, &key).await?,
    };
    let (user_id, stored) = match account {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    // The account's own device shares the logged-in users' priority for argon2:
    // an anonymous flood saturating the hash never refuses it (`password`).
    let caller = if known_device {
        Caller::Authenticated
    } else {
        Caller::Anonymous
    };
    let user_id = match (
        password::verify(&p.metrics, caller, password, stored).await?,
        user_id,
    ) {
        (true, Some(id)) => id,
        _ => return Err(ApiError::Unauthorized(BAD_CREDENTIALS.into())),
    };
    kai_http::telemetry::set_user(user_id);

    // UUIDv7: the token carries its session's creation time (user-wide revocation).
    let session_id = uuid::Uuid::now_v7();
    let (access_token, claims) = p.auth.mint(user_id, session_id)?;
    let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("token expiry out of range")))?;
    queries::insert_session(
        &p.db,
        session_id,
        user_id,
        &sessions::token_hash(&access_token),
        expires_at,
    )
    .await?;
    // This device's token, renewed (the same device id when it sent a valid one).
    let device_id = device
        .filter(|d| d.user_id == user_id)
        .map_or_else(uuid::Uuid::new_v4, |d| d.id);
    let device_token = device::issue(
        &p.settings.auth,
        device::Device {
            user_id,
            id: device_id,
        },
    )?;
    Ok(HttpResponse::Ok().json(Token {
        access_token,
        token_type: "Bearer".into(),
        expires_in: p.auth.ttl().as_secs(),
        user_id,
        device_token,
    }))
}

/// End the caller's session: from then on every Kai service answers its token with 401.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", responses((status = 204, description = "The session is over on every service")))]
async fn logout(p: web::Data<Platform>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    // The row first: once it says revoked, this service refuses the token even if
    // the announcement below never reaches Redis.
    queries::revoke_session(&p.db, user.session_id, user.user_id).await?;
    p.revoke_session(user.session_id, user.expires_at).await;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's profile.
#[utoipa::path(get, path = "/api/profile", tag = "profile",
    responses((status = 200, body = Profile), (status = 304), (status = 404, description = "The account was deleted")))]
async fn get_profile(
    req: HttpRequest,
    p: web::Data<Platform>,
    AuthUser { user_id: uid, .. }: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let cached = p
        .cache
        .get_or_load(&user_scope(uid), &PROFILE, &profile_key(uid), || async {
            queries::get_profile(&p.db, uid).await
        })
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// Change any of display_name, traits, preferences, communication_style.
#[utoipa::path(patch, path = "/api/profile", tag = "profile", request_body = PatchProfile,
    responses((status = 200, description = "The profile as changed", body = Profile), (status = 404, description = "The account was deleted")))]
async fn patch_profile(
    p: web::Data<Platform>,
    user: AuthUser,
    patch: Valid<PatchProfile>,
) -> Result<HttpResponse, ApiError> {
    let written = queries::patch_profile(&p.db, user.user_id, &patch).await?;
    let profile = p.cache.commit_found(written).await?;
    Ok(HttpResponse::Ok().json(profile))
}

/// Everything this service holds about the caller (account and profile), for
/// portability. Read from PostgreSQL, never cached, `Cache-Control: no-store`.
#[utoipa::path(get, path = "/api/profile/export", tag = "profile",
    responses((status = 200, body = AccountExport), (status = 401), (status = 404)))]
async fn export_profile(p: web::Data<Platform>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    let account = queries::export_account(&p.db, user.user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(respond::private_json(&account))
}

/// The one place this service's database errors become answers: a taken e-mail
/// address (the unique index) is a 409; anything else the usual 503/500.
pub(crate) fn db_error(e: DbError) -> ApiError {
    let taken = || ApiError::Conflict("an account with this e-mail address already exists".into());
    match e.constraint() {
        Some(queries::EMAIL_LOWER_UNIQUE) => taken(),
        _ => e.on_constraint(queries::EMAIL_UNIQUE, taken),
    }
}
