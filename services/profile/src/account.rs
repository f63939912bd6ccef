//! The caller's account as a whole: change the password, log out everywhere,
//! delete the account. Each needs more than a token where a stolen token must not
//! be enough (the password, re-entered), is rate limited like login, and ends
//! sessions through one user-wide revocation (see `kai_http::auth`): the
//! sessions table is updated first — profile-service refuses those tokens at once
//! — then the watermark is announced to every replica of every service.

use actix_web::{HttpRequest, HttpResponse, web};
use kai_http::ApiError;
use kai_http::Json;
use kai_http::Valid;
use kai_http::auth::AuthUser;
use kai_platform::Platform;

use crate::limits::{LOGIN_PER_CLIENT, REAUTH_PER_SESSION, client_address};
use crate::model::{ChangePassword, DeleteAccount, MAX_PASSWORD_CHARS};
use crate::password::Caller;
use crate::{erasure, password, queries};

const WRONG_PASSWORD: &str = "the password is incorrect";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/auth/password").route(web::post().to(change_password)))
        .service(web::resource("/api/auth/logout-all").route(web::post().to(logout_all)))
        .service(web::resource("/api/account").route(web::delete().to(delete_account)));
}

/// Checks the caller's password (rate limited per session and per client).
async fn reauthenticate(
    req: &HttpRequest,
    p: &Platform,
    user: &AuthUser,
    given: String,
) -> Result<(), ApiError> {
    p.limiter
        .check(&LOGIN_PER_CLIENT, &client_address(req, p))
        .await?;
    p.limiter
        .check(&REAUTH_PER_SESSION, &user.session_id.to_string())
        .await?;
    if given.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::Unauthorized(WRONG_PASSWORD.into()));
    }
    let stored = queries::password_hash(&p.db, user.user_id).await?;
    if stored.is_none()
        || !password::verify(&p.metrics, Caller::Authenticated, given, stored).await?
    {
        return Err(ApiError::Unauthorized(WRONG_PASSWORD.into()));
    }
    Ok(())
}

/// Change the password; every other session of the user ends (401 everywhere within 1 s).
#[utoipa::path(post, path = "/api/auth/password", tag = "auth", request_body = ChangePassword,
    responses((status = 204), (status = 400, body = kai_http::errors::Problem),
        (status = 401, description = "bad token or wrong current password", body = kai_http::errors::Problem),
        (status = 429, body = kai_http::errors::Problem)))]
pub async fn change_password(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    change: Valid<ChangePassword>,
) -> Result<HttpResponse, ApiError> {
    // Only the checked new password's hash is stored.
    let change = change.into_inner();
    reauthenticate(&req, &p, &user, change.current_password).await?;
    let hash = password::hash(Caller::Authenticated, change.new_password).await?;
    queries::change_password(&p.db, user.user_id, &hash, user.session_id).await?;
    p.revoke_user_sessions(user.user_id, Some(user.session_id))
        .await;
    Ok(HttpResponse::NoContent().finish())
}

/// End every session of the caller, this one included (401 everywhere within 1 s).
#[utoipa::path(post, path = "/api/auth/logout-all", tag = "auth", responses((status = 204), (status = 401)))]
pub async fn logout_all(p: web::Data<Platform>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    queries::revoke_user_sessions(&p.db, user.user_id).await?;
    p.revoke_user_sessions(user.user_id, None).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Delete the account and, within 30 s, every piece of the user's data in every
/// service: the user, profile and sessions at once (every token refused within
/// 1 s); journal entries, conversations, messages and cached copies by the
/// durable erasure event (see the README, "Erasure").
#[utoipa::path(delete, path = "/api/account", tag = "profile", request_body = DeleteAccount,
    responses((status = 204), (status = 400, body = kai_http::errors::Problem),
        (status = 401, description = "bad token or wrong password", body = kai_http::errors::Problem),
        (status = 429, body = kai_http::errors::Problem)))]
pub async fn delete_account(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    body: Json<DeleteAccount>,
) -> Result<HttpResponse, ApiError> {
    reauthenticate(&req, &p, &user, body.into_inner().password).await?;
    if !erasure::delete_account(&p.db, user.user_id, p.auth.ttl()).await? {
        return Err(ApiError::not_found());
    }
    p.revoke_user_sessions(user.user_id, None).await;
    erasure::wake_relay();
    tracing::info!("account deleted; erasure event recorded");
    Ok(HttpResponse::NoContent().finish())
}
