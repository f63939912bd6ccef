//! Per-user limits (SPEC §4): assistant messages (burst, steady rate, daily
//! budget) with `max_tokens` sent to the model, exports (running at once and per
//! minute), batch imports and creates — each a 429 with `Retry-After`, counted in
//! `kai_rate_limited_total`, and each per user (another user is not affected).

use serde_json::{Value, json};

use crate::helpers::{User, assert_problem, batch_of, spawn, spawn_with};

/// `kai_rate_limited_total{outcome=<limit>}` as exported.
async fn refused(app: &kai_testing::TestApp, limit: &str) -> u64 {
    let series = format!("outcome=\"{limit}\"");
    app.metrics()
        .await
        .lines()
        .find(|l| l.starts_with("kai_rate_limited_total{") && l.contains(&series))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {limit} series")) as u64
}

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn assistant_messages_have_a_burst_then_429_and_the_model_gets_max_tokens() {
    let s = spawn_with(
        Some(&kai_testing::redis_url()),
        true,
        &[("LLM_MAX_TOKENS", "321")],
    )
    .await;
    let user = User::new();
    let id = s.conversation(&user, "chatty").await;
    assert_eq!(refused(&s.app, "assistant-messages").await, 0);
    // 20 distinct messages at once (the default burst), each an LLM call.
    for i in 0..20 {
        let res = s
            .send(&user, &id, json!({ "content": format!("message {i}") }))
            .await;
        assert_eq!(res.status(), 201, "message {i}");
    }
    assert_eq!(s.llm().calls(), 20);
    let res = s.send(&user, &id, json!({ "content": "one more" })).await;
    let wait = retry_after(&res);
    assert!(
        (1..=10).contains(&wait),
        "one every 10 s at 6 a minute: {wait}"
    );
    assert_problem(res, 429).await;
    assert_eq!(s.llm().calls(), 20, "the refused message reached no model");
    assert_eq!(s.stored_messages(&id).await.len(), 40, "nor was it stored");
    assert_eq!(refused(&s.app, "assistant-messages").await, 1);
    // Every request carried the configured max_tokens.
    assert!(s.llm().requests().iter().all(|r| r["max_tokens"] == 321));
    // Another user is not affected.
    let other = User::new();
    let theirs = s.conversation(&other, "quiet").await;
    assert_eq!(
        s.send(&other, &theirs, json!({ "content": "hello" }))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn the_daily_budget_refuses_until_it_refills() {
    let s = spawn_with(
        Some(&kai_testing::redis_url()),
        true,
        &[("ASSISTANT_MESSAGES_PER_DAY", "3")],
    )
    .await;
    let user = User::new();
    let id = s.conversation(&user, "budget").await;
    for i in 0..3 {
        assert_eq!(
            s.send(&user, &id, json!({ "content": format!("m{i}") }))
                .await
                .status(),
            201
        );
    }
    let res = s.send(&user, &id, json!({ "content": "m3" })).await;
    // Three a day: the next one in 8 hours.
    let wait = retry_after(&res);
    assert!((28_000..=28_800).contains(&wait), "{wait}");
    assert_problem(res, 429).await;
    assert_eq!(refused(&s.app, "assistant-messages-daily").await, 1);
}

#[tokio::test]
async fn imports_and_creates_are_limited_per_user() {
    let s = spawn_with(
        Some(&kai_testing::redis_url()),
        false,
        &[("IMPORTS_PER_MINUTE", "2"), ("CREATES_PER_MINUTE", "3")],
    )
    .await;
    let user = User::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.conversation(&user, "c").await);
    }
    let res = s
        .post(&user, "/api/conversations", &json!({ "title": "c" }))
        .send()
        .await
        .unwrap();
    assert!((1..=20).contains(&retry_after(&res)));
    assert_problem(res, 429).await;
    assert_eq!(refused(&s.app, "creates").await, 1);
    for _ in 0..2 {
        assert_eq!(s.batch(&user, &ids[0], batch_of(10)).await.status(), 201);
    }
    let res = s.batch(&user, &ids[0], batch_of(10)).await;
    assert!((1..=30).contains(&retry_after(&res)));
    assert_problem(res, 429).await;
    assert_eq!(refused(&s.app, "imports").await, 1);
    assert_eq!(
        s.stored_messages(&ids[0]).await.len(),
        20,
        "the refused batch stored nothing"
    );
    let other = User::new();
    let theirs = s.conversation(&other, "theirs").await;
    assert_eq!(s.batch(&other, &theirs, batch_of(10)).await.status(), 201);
}

#[tokio::test]
async fn exports_are_limited_while_running_and_per_minute() {
    let s = spawn_with(
        Some(&kai_testing::redis_url()),
        false,
        &[
            ("EXPORTS_RUNNING_PER_USER", "1"),
            ("EXPORTS_PER_MINUTE", "3"),
        ],
    )
    .await;
    let user = User::new();
    let id = s.conversation(&user, "big").await;
    // About 24 MB of messages: far more than the socket buffers hold, so an
    // export whose client does not read stays running.
    s.db.connect()
        .await
        .execute(
            "INSERT INTO conversation.messages (id, conversation_id, role, content)
             SELECT gen_random_uuid(), $1::text::uuid, 'user', repeat('x', 4000) FROM generate_series(1, 6000)",
            &[&id],
        )
        .await
        .unwrap();
    let export = || s.get(&user, "/api/conversations/export").send();
    let held = export().await.unwrap();
    assert_eq!(held.status(), 200);
    let res = export().await.unwrap();
    assert!((1..=2).contains(&retry_after(&res)));
    assert_problem(res, 429).await;
    assert_eq!(refused(&s.app, "exports-running").await, 1);
    // Its client goes away: the slot is freed (when the server notices).
    drop(held);
    let second = loop {
        let res = export().await.unwrap();
        if res.status() == 200 {
            break res;
        }
        assert_eq!(res.status(), 429);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Read to the end: the slot is freed when the stream ends too.
    let lines = second.text().await.unwrap().lines().count();
    assert_eq!(lines, 1);
    let res = export().await.unwrap();
    assert_eq!(res.status(), 200);
    let _: Value = serde_json::from_str(res.text().await.unwrap().lines().next().unwrap()).unwrap();
    // Three started this minute: the fourth is refused by the rate.
    let res = export().await.unwrap();
    assert_problem(res, 429).await;
    assert_eq!(refused(&s.app, "exports").await, 1);
}

#[tokio::test]
async fn a_user_without_limits_hit_sees_every_series_at_zero() {
    let s = spawn().await;
    for limit in [
        "assistant-messages",
        "assistant-messages-daily",
        "exports-running",
        "exports",
        "imports",
        "creates",
    ] {
        assert_eq!(refused(&s.app, limit).await, 0, "{limit}");
    }
}
