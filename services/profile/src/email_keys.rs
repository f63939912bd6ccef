//! The start-up pass that gives accounts written before V5 (or by an older
//! release) their canonical e-mail key.

/// Gives every account without a canonical key (non-ASCII addresses written
/// before V5, or by an older release) the key this module computes. An address
/// with no canonical form, or whose key another account holds, stays unkeyed and
/// is logged: that account cannot log in until an operator resolves it.
pub async fn key_unkeyed_accounts(p: actix_web::web::Data<kai_platform::Platform>) {
    let users = match crate::queries::unkeyed_users(&p.db).await {
        Ok(users) => users,
        Err(e) => {
            tracing::warn!(error = %e, "canonical e-mail keys: cannot list unkeyed accounts");
            return;
        }
    };
    let (mut keyed, mut left) = (0usize, 0usize);
    for (user_id, address) in users {
        let result = match crate::email::canonical(&address) {
            Ok(key) => crate::queries::set_email_key(&p.db, user_id, &key)
                .await
                .map_err(|e| e.to_string()),
            Err(why) => Err(why.to_owned()),
        };
        match result {
            Ok(()) => keyed += 1,
            Err(why) => {
                left += 1;
                tracing::warn!(%user_id, why, "account left without a canonical e-mail key");
            }
        }
    }
    if keyed + left > 0 {
        tracing::info!(keyed, left, "canonical e-mail keys assigned");
    }
}
