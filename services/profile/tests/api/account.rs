//! The account's own routes: export, password change, log out everywhere, and
//! account deletion.

use serde_json::{Value, json};

use crate::helpers::spawn;

#[tokio::test]
async fn profile_export_holds_the_account_and_profile_uncached() {
    let p = spawn().await;
    let a = p.account().await;
    assert_eq!(
        p.patch(
            &a.token,
            json!({"display_name": "Ada", "traits": {"calm": true}})
        )
        .await
        .status(),
        200
    );
    let res = p
        .app
        .client
        .get(p.app.url("/api/profile/export"))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers().get("x-cache").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user_id"], a.id.to_string());
    assert_eq!(body["email"], a.email);
    assert_eq!(body["display_name"], "Ada");
    assert_eq!(body["traits"], json!({"calm": true}));
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    let text = body.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
}
