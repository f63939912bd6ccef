//! profile-service's SQL: one `const` per statement (readable and `EXPLAIN`able as
//! is), one function per use. Every profile read and write is keyed by the
//! caller's `user_id`, taken from the token.
//!
//! The functions return [`DbError`]: the handlers decide what a failure means to a
//! client. A write returns a `Written` naming what it touched
//! (`cache_rules::write_touches`), and input to store arrives as a `Valid` value.

use chrono::{DateTime, Utc};
use kai_http::Valid;
use kai_shared::cache::Written;
use kai_shared::db::{Db, DbError, Row};
use serde_json::Value;
use uuid::Uuid;

use crate::model::{AccountExport, PatchProfile, Profile, Register, Registered};

/// The unique index of canonical e-mail addresses (V5, `crate::email`).
pub const EMAIL_UNIQUE: &str = "users_email_key_key";
/// The older case-insensitive index (V2), kept while release N-1 may still write.
pub const EMAIL_LOWER_UNIQUE: &str = "users_email_lower_key";

pub const INSERT_USER: &str = "INSERT INTO profile.users (id, email, email_key, password_hash)
     VALUES ($1, $2, $3, $4)
     RETURNING created_at";

pub const INSERT_PROFILE: &str =
    "INSERT INTO profile.profiles (user_id, display_name) VALUES ($1, $2)";

/// Login, by canonical address: served by `users_email_key_key`.
pub const CREDENTIALS_BY_EMAIL: &str =
    "SELECT id, password_hash FROM profile.users WHERE email_key = $1";

/// Accounts without a canonical key (written before V5 with non-ASCII addresses,
/// or by an older release): `users_email_key_missing`.
pub const UNKEYED_USERS: &str =
    "SELECT id, email FROM profile.users WHERE email_key IS NULL ORDER BY id LIMIT 1000";

pub const SET_EMAIL_KEY: &str =
    "UPDATE profile.users SET email_key = $2 WHERE id = $1 AND email_key IS NULL";

pub const INSERT_SESSION: &str =
    "INSERT INTO profile.sessions (id, user_id, token_hash, expires_at)
     VALUES ($1, $2, $3, $4)";

pub const REVOKE_SESSION: &str = "UPDATE profile.sessions SET revoked_at = now()
     WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL";

pub const GET_PROFILE: &str = "SELECT p.user_id, u.email, p.display_name, p.traits, p.preferences,
            p.communication_style, p.updated_at
     FROM profile.profiles p JOIN profile.users u ON u.id = p.user_id
     WHERE p.user_id = $1";

/// Re-authentication (password change, account deletion): the primary key.
pub const PASSWORD_HASH_BY_ID: &str = "SELECT password_hash FROM profile.users WHERE id = $1";

pub const SET_PASSWORD_HASH: &str = "UPDATE profile.users SET password_hash = $2 WHERE id = $1";

/// Every live session of a user but `$2` (NULL: every one); `sessions_user_id`.
pub const REVOKE_USER_SESSIONS: &str = "UPDATE profile.sessions SET revoked_at = now()
     WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2";

/// The export: the profile with its account's creation time (never the hash).
pub const EXPORT_ACCOUNT: &str =
    "SELECT p.user_id, u.email, p.display_name, p.traits, p.preferences,
            p.communication_style, u.created_at, p.updated_at
     FROM profile.profiles p JOIN profile.users u ON u.id = p.user_id
     WHERE p.user_id = $1";

/// One statement: the update, then the joined row it produced.
pub const PATCH_PROFILE: &str = "WITH updated AS (
         UPDATE profile.profiles SET
             display_name        = CASE WHEN $2 THEN $3 ELSE display_name END,
             traits              = coalesce($4, traits),
             preferences         = coalesce($5, preferences),
             communication_style = CASE WHEN $6 THEN $7 ELSE communication_style END
         WHERE user_id = $1
         RETURNING *
     )
     SELECT p.user_id, u.email, p.display_name, p.traits, p.preferences, p.communication_style, p.updated_at
     FROM updated p JOIN profile.users u ON u.id = p.user_id";

fn profile(row: &Row) -> Profile {
    Profile {
        user_id: row.get("user_id"),
        email: row.get("email"),
        display_name: row.get("display_name"),
        // Jsonb: numbers PostgreSQL writes out in full are read back too.
        traits: row.get::<_, kai_shared::db::Jsonb>("traits").0,
        preferences: row.get::<_, kai_shared::db::Jsonb>("preferences").0,
        communication_style: row.get("communication_style"),
        updated_at: row.get("updated_at"),
    }
}

/// Creates the user and their empty profile in one transaction. An address
/// already taken (in any case) breaks [`EMAIL_UNIQUE`] (the handler answers 409):
/// the unique index decides, so two concurrent registrations cannot both win.
pub async fn insert_user(
    db: &Db,
    new: &Valid<Register>,
    password_hash: &str,
) -> Result<Registered, DbError> {
    let (email, display_name) = (new.email.as_str(), new.display_name.as_deref());
    let key = new.email_key.as_str();
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(DbError::from)?;
    let user_id = Uuid::now_v7();
    let row = db
        .query_one(&tx, INSERT_USER, &[&user_id, &email, &key, &password_hash])
        .await?;
    db.execute(&tx, INSERT_PROFILE, &[&user_id, &display_name])
        .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(Registered {
        user_id,
        email: email.to_owned(),
        display_name: display_name.map(str::to_owned),
        created_at: row.get(0),
    })
}

/// The user id and password hash registered for a canonical e-mail address.
pub async fn credentials(db: &Db, email_key: &str) -> Result<Option<(Uuid, String)>, DbError> {
    let conn = db.conn().await?;
    Ok(db
        .query_opt(&conn, CREDENTIALS_BY_EMAIL, &[&email_key])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

pub async fn insert_session(
    db: &Db,
    session_id: Uuid,
    user_id: Uuid,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let conn = db.conn().await?;
    db.execute(
        &conn,
        INSERT_SESSION,
        &[&session_id, &user_id, &token_hash, &expires_at],
    )
    .await?;
    Ok(())
}

/// True if a live session was revoked.
pub async fn revoke_session(db: &Db, session_id: Uuid, user_id: Uuid) -> Result<bool, DbError> {
    let conn = db.conn().await?;
    Ok(db
        .execute(&conn, REVOKE_SESSION, &[&session_id, &user_id])
        .await?
        == 1)
}

pub async fn get_profile(db: &Db, user_id: Uuid) -> Result<Option<Profile>, DbError> {
    db.read_pipelined(|conn| async move {
        Ok(db
            .query_opt(&*conn, GET_PROFILE, &[&user_id])
            .await?
            .as_ref()
            .map(profile))
    })
    .await
}

/// The stored password hash of a user, if the account exists.
pub async fn password_hash(db: &Db, user_id: Uuid) -> Result<Option<String>, DbError> {
    let conn = db.conn().await?;
    Ok(db
        .query_opt(&conn, PASSWORD_HASH_BY_ID, &[&user_id])
        .await?
        .map(|r| r.get(0)))
}

/// Stores a new password hash and revokes every other session, atomically.
pub async fn change_password(
    db: &Db,
    user_id: Uuid,
    hash: &str,
    keep: Uuid,
) -> Result<(), DbError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(DbError::from)?;
    db.execute(&tx, SET_PASSWORD_HASH, &[&user_id, &hash])
        .await?;
    db.execute(&tx, REVOKE_USER_SESSIONS, &[&user_id, &Some(keep)])
        .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(())
}

/// Revokes every live session of a user.
pub async fn revoke_user_sessions(db: &Db, user_id: Uuid) -> Result<u64, DbError> {
    let conn = db.conn().await?;
    db.execute(&conn, REVOKE_USER_SESSIONS, &[&user_id, &None::<Uuid>])
        .await
}

pub async fn export_account(db: &Db, user_id: Uuid) -> Result<Option<AccountExport>, DbError> {
    let conn = db.conn().await?;
    Ok(db
        .query_opt(&conn, EXPORT_ACCOUNT, &[&user_id])
        .await?
        .map(|row| AccountExport {
            user_id: row.get("user_id"),
            email: row.get("email"),
            display_name: row.get("display_name"),
            traits: row.get("traits"),
            preferences: row.get("preferences"),
            communication_style: row.get("communication_style"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }))
}

pub async fn patch_profile(
    db: &Db,
    user_id: Uuid,
    patch: &Valid<PatchProfile>,
) -> Result<Written<Option<Profile>>, DbError> {
    let conn = db.conn().await?;
    let set_name = patch.display_name.is_some();
    let name = patch.display_name.clone().flatten();
    let set_style = patch.communication_style.is_some();
    let style = patch.communication_style.clone().flatten();
    let traits: Option<&Value> = patch.traits.as_ref();
    let preferences: Option<&Value> = patch.preferences.as_ref();
    let row = db
        .query_opt(
            &conn,
            PATCH_PROFILE,
            &[
                &user_id,
                &set_name,
                &name,
                &traits,
                &preferences,
                &set_style,
                &style,
            ],
        )
        .await?;
    Ok(Written::if_found(
        row.as_ref().map(profile),
        crate::cache_rules::write_touches(user_id),
    ))
}

/// Statements the hot paths run, for `EXPLAIN` checks.
pub const HOT_QUERIES: &[(&str, &str)] = &[
    ("login", CREDENTIALS_BY_EMAIL),
    ("session check", crate::sessions::SESSION_LIVE),
    ("get profile", GET_PROFILE),
];

/// Up to 1000 accounts without a canonical e-mail key, with their address.
pub async fn unkeyed_users(db: &Db) -> Result<Vec<(Uuid, String)>, DbError> {
    let conn = db.conn().await?;
    Ok(db
        .query(&conn, UNKEYED_USERS, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Keys one account; a key already taken breaks [`EMAIL_UNIQUE`].
pub async fn set_email_key(db: &Db, user_id: Uuid, key: &str) -> Result<(), DbError> {
    let conn = db.conn().await?;
    db.execute(&conn, SET_EMAIL_KEY, &[&user_id, &key]).await?;
    Ok(())
}
