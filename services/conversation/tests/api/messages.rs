use std::time::Instant;

use serde_json::{Value, json};

use crate::fake_llm::Mode;
use crate::helpers::{User, assert_problem, read, spawn, spawn_offline, spawn_with};

#[tokio::test]
async fn a_message_gets_the_models_reply_and_both_are_stored() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "chat").await;
    let res = s
        .send(&user, &id, json!({ "content": "I had a hard day" }))
        .await;
    assert_eq!(res.status(), 201);
    let x: Value = res.json().await.unwrap();
    assert_eq!(
        (
            x["user_message"]["role"].clone(),
            x["user_message"]["content"].clone()
        ),
        (json!("user"), json!("I had a hard day"))
    );
    assert_eq!(x["assistant_message"]["role"], "assistant");
    assert_eq!(
        x["assistant_message"]["content"],
        "I'm here for you (reply 1)."
    );
    assert_eq!(x["cached"], false);
    let at = |v: &Value| {
        v["created_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    assert!(
        at(&x["assistant_message"]) > at(&x["user_message"]),
        "the reply comes after the message"
    );
    assert_eq!(
        s.stored_messages(&id).await,
        [
            ("user".into(), "I had a hard day".into()),
            ("assistant".into(), "I'm here for you (reply 1).".into())
        ]
    );

    let sent = &s.llm().requests()[0];
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(
        sent["messages"][1],
        json!({ "role": "user", "content": "I had a hard day" })
    );
    assert_eq!(
        s.llm().authorizations()[0].as_deref(),
        Some("Bearer test-key")
    );
}

#[tokio::test]
async fn the_same_message_twice_reaches_the_model_once() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "repeat").await;
    let first = s.say(&user, &id, "I can't sleep").await;
    let second = s.say(&user, &id, "I can't sleep").await;
    assert_eq!(
        (first["cached"].clone(), second["cached"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(
        first["assistant_message"]["content"],
        second["assistant_message"]["content"]
    );
    assert_eq!(s.llm().calls(), 1);
    // Conversation writes never invalidate the AI cache: even in another conversation.
    let other = s.conversation(&user, "elsewhere").await;
    assert_eq!(s.say(&user, &other, "I can't sleep").await["cached"], true);
    assert_eq!(s.llm().calls(), 1);
    // Both replies are stored as messages all the same.
    assert_eq!(s.stored_messages(&id).await.len(), 4);
    // Another user, or another message, asks the model.
    let stranger = User::new();
    let theirs = s.conversation(&stranger, "theirs").await;
    assert_eq!(
        s.say(&stranger, &theirs, "I can't sleep").await["cached"],
        false
    );
    assert_eq!(s.say(&user, &id, "I can't sleep.").await["cached"], false);
    assert_eq!(s.llm().calls(), 3);
}

#[tokio::test]
async fn the_communication_style_reaches_the_model_as_a_system_message() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "styled").await;
    let body = json!({ "content": "How do I start journaling?", "communication_style": "brief,\n  direct and warm" });
    let x: Value = s.send(&user, &id, body).await.json().await.unwrap();
    assert_eq!(x["cached"], false);
    let sent = &s.llm().requests()[0];
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(system.contains("brief, direct and warm"), "{system}");
    // The style is part of the reply's cache key.
    let plain = s.say(&user, &id, "How do I start journaling?").await;
    assert_eq!(plain["cached"], false);
    assert_eq!(s.llm().calls(), 2);
    assert!(
        !s.llm().requests()[1]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("brief")
    );
}

#[tokio::test]
async fn an_upstream_failure_is_a_502_and_keeps_the_users_message() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "failing").await;
    read(&s.app, &user, &format!("/api/conversations/{id}")).await; // warm the cache
    s.llm().set_mode(Mode::Fail);
    let body = assert_problem(
        s.send(&user, &id, json!({ "content": "are you there?" }))
            .await,
        502,
    )
    .await;
    assert_eq!(body["type"], "https://kai.dev/problems/upstream-error");
    assert!(
        !body.to_string().contains("are you there"),
        "the message never appears in an error"
    );
    let (_, _, detail) = read(&s.app, &user, &format!("/api/conversations/{id}")).await;
    assert_eq!(detail["messages"].as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(detail["messages"][0]["content"], "are you there?");
    assert_eq!(detail["last_message"]["role"], "user");
    // Failures are not cached: the retry asks the model again and succeeds.
    s.llm().set_mode(Mode::Answer);
    let retry = s.say(&user, &id, "are you there?").await;
    assert_eq!(retry["cached"], false);
    assert_eq!(s.llm().calls(), 2);
    let metrics = s.app.platform.metrics.render();
    assert!(
        metrics.contains(r#"kai_llm_requests_total{outcome="error",service="conversation"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kai_llm_requests_total{outcome="success",service="conversation"} 1"#)
    );
}

#[tokio::test]
async fn a_model_that_hangs_is_a_504_within_the_timeout() {
    let s = spawn_with(
        Some(&kai_testing::redis_url()),
        true,
        &[("LLM_TIMEOUT_MS", "300")],
    )
    .await;
    let user = User::new();
    let id = s.conversation(&user, "slow").await;
    s.llm().set_mode(Mode::Hang);
    let started = Instant::now();
    let body = assert_problem(
        s.send(&user, &id, json!({ "content": "hello?" })).await,
        504,
    )
    .await;
    // The model never answers (see fake_llm): the 504 is LLM_TIMEOUT_MS firing,
    // after exactly one call. The time is reported, not asserted.
    assert_eq!(s.llm().calls(), 1);
    eprintln!("504 after {:?} (LLM_TIMEOUT_MS=300)", started.elapsed());
    assert_eq!(body["type"], "https://kai.dev/problems/upstream-timeout");
    assert_eq!(
        s.stored_messages(&id).await,
        [("user".into(), "hello?".into())]
    );
    let metrics = s.app.platform.metrics.render();
    assert!(
        metrics.contains(r#"kai_llm_requests_total{outcome="timeout",service="conversation"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_an_llm_the_offline_responder_answers() {
    let s = spawn_offline().await;
    let user = User::new();
    let id = s.conversation(&user, "offline").await;
    let first = s
        .say(&user, &id, "I feel so anxious about tomorrow's interview")
        .await;
    let reply = first["assistant_message"]["content"].as_str().unwrap();
    assert!(reply.contains("anxious"), "{reply}");
    assert!(
        !reply.contains("interview"),
        "it reflects, it does not echo: {reply}"
    );
    assert_eq!(first["cached"], false);
    let again = s
        .say(&user, &id, "I feel so anxious about tomorrow's interview")
        .await;
    assert_eq!(
        (
            again["cached"].clone(),
            again["assistant_message"]["content"].clone()
        ),
        (json!(true), json!(reply))
    );
    let other = s.say(&user, &id, "Nothing much happened today").await;
    assert!(
        !other["assistant_message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_message_bumps_its_conversation_to_the_top_of_the_list() {
    let s = spawn().await;
    let user = User::new();
    let older = s.conversation(&user, "older").await;
    let newer = s.conversation(&user, "newer").await;
    let (_, _, list) = read(&s.app, &user, "/api/conversations").await;
    assert_eq!(list["conversations"][0]["id"], newer);
    s.say(&user, &older, "back to this one").await;
    let (_, cache, list) = read(&s.app, &user, "/api/conversations").await;
    assert_eq!(cache, "MISS");
    assert_eq!(list["conversations"][0]["id"], older);
    assert_eq!(list["conversations"][0]["message_count"], 2);
    assert_eq!(
        list["conversations"][0]["last_message"]["role"],
        "assistant"
    );
}

#[tokio::test]
async fn nul_characters_in_a_models_answer_are_stripped_before_storing() {
    let s = spawn().await;
    s.llm().set_mode(Mode::Nul);
    let user = User::new();
    let id = s.conversation(&user, "nul").await;
    let res = s.send(&user, &id, json!({ "content": "hello" })).await;
    assert_eq!(res.status(), 201);
    let x: Value = res.json().await.unwrap();
    assert_eq!(x["assistant_message"]["content"], "I'm here.");
    assert_eq!(
        s.stored_messages(&id).await,
        [
            ("user".into(), "hello".into()),
            ("assistant".into(), "I'm here.".into())
        ]
    );
}
