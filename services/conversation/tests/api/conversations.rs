use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{User, assert_problem, batch_of, read, spawn};

#[tokio::test]
async fn creating_a_conversation_answers_201_with_an_empty_summary() {
    let s = spawn().await;
    let user = User::new();
    let res = s
        .post(
            &user,
            "/api/conversations",
            &json!({ "title": "  Sunday thoughts  " }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["title"], "Sunday thoughts", "titles are trimmed");
    assert_eq!(
        (c["message_count"].clone(), c["last_message"].clone()),
        (json!(0), Value::Null)
    );
    assert!(Uuid::parse_str(c["id"].as_str().unwrap()).is_ok());
    assert_eq!(c["created_at"], c["updated_at"]);
    let res = s
        .post(&user, "/api/conversations", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await.unwrap()["title"],
        Value::Null,
        "the title is optional"
    );
}

#[tokio::test]
async fn bad_bodies_and_mass_assignment_are_rejected() {
    let s = spawn().await;
    let user = User::new();
    let long = "t".repeat(201);
    for body in [
        json!({ "title": long }),
        json!({ "id": Uuid::new_v4() }),
        json!({ "user_id": Uuid::new_v4() }),
        json!({ "created_at": "2020-01-01T00:00:00Z" }),
    ] {
        assert_problem(
            s.post(&user, "/api/conversations", &body)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
    }
    let id = s.conversation(&user, "x").await;
    for body in [
        json!({}),
        json!({ "content": "" }),
        json!({ "content": "   " }),
        json!({ "content": "x".repeat(20_001) }),
        json!({ "content": "hi", "role": "assistant" }),
        json!({ "content": "hi", "communication_style": "s".repeat(201) }),
    ] {
        assert_problem(s.send(&user, &id, body).await, 400).await;
    }
    assert!(
        s.stored_messages(&id).await.is_empty(),
        "nothing was stored"
    );
    assert_eq!(s.llm().calls(), 0);
    assert_problem(
        s.batch(
            &user,
            &id,
            json!([{ "role": "user", "content": "x", "id": Uuid::new_v4() }]),
        )
        .await,
        400,
    )
    .await;
}

#[tokio::test]
async fn every_route_needs_a_token() {
    let s = spawn().await;
    let id = Uuid::new_v4();
    let client = &s.app.client;
    for res in [
        client
            .get(s.app.url("/api/conversations"))
            .send()
            .await
            .unwrap(),
        client
            .post(s.app.url("/api/conversations"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        client
            .get(s.app.url(&format!("/api/conversations/{id}")))
            .send()
            .await
            .unwrap(),
        client
            .delete(s.app.url(&format!("/api/conversations/{id}")))
            .send()
            .await
            .unwrap(),
        client
            .post(s.app.url(&format!("/api/conversations/{id}/messages")))
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap(),
        client
            .post(
                s.app
                    .url(&format!("/api/conversations/{id}/messages/batch")),
            )
            .json(&json!({"messages": []}))
            .send()
            .await
            .unwrap(),
    ] {
        assert_problem(res, 401).await;
    }
}

#[tokio::test]
async fn another_users_conversation_is_not_found_on_every_route() {
    let s = spawn().await;
    let (owner, stranger) = (User::new(), User::new());
    let id = s.conversation(&owner, "mine").await;
    s.say(&owner, &id, "my private words").await;
    let calls = s.llm().calls();

    assert_problem(
        s.get(&stranger, &format!("/api/conversations/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        s.send(&stranger, &id, json!({ "content": "intrusion" }))
            .await,
        404,
    )
    .await;
    assert_problem(s.batch(&stranger, &id, batch_of(3)).await, 404).await;
    assert_problem(s.delete(&stranger, &id).await, 404).await;
    let (_, _, list) = read(&s.app, &stranger, "/api/conversations").await;
    assert_eq!(list["conversations"], json!([]));

    assert_eq!(
        s.llm().calls(),
        calls,
        "a stranger's message never reaches the model"
    );
    assert_eq!(s.stored_messages(&id).await.len(), 2, "nothing was added");
    let (status, _, detail) = read(&s.app, &owner, &format!("/api/conversations/{id}")).await;
    assert_eq!((status, detail["message_count"].clone()), (200, json!(2)));
}

#[tokio::test]
async fn the_detail_holds_the_latest_messages_oldest_first() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "long").await;
    assert_eq!(s.batch(&user, &id, batch_of(60)).await.status(), 201);
    let (status, _, d) = read(&s.app, &user, &format!("/api/conversations/{id}")).await;
    assert_eq!(status, 200);
    let messages = d["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 50, "default limit");
    assert_eq!(d["message_count"], 60);
    assert_eq!(messages[0]["content"], "m10");
    assert_eq!(messages[49]["content"], "m59");
    assert_eq!(d["last_message"]["content"], "m59");
    assert_eq!(d["title"], "long");
    let (_, _, d) = read(&s.app, &user, &format!("/api/conversations/{id}?limit=3")).await;
    let contents: Vec<_> = d["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(contents, [json!("m57"), json!("m58"), json!("m59")]);
    for q in ["limit=0", "limit=201", "limit=x", "order=desc"] {
        assert_problem(
            s.get(&user, &format!("/api/conversations/{id}?{q}"))
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
    }
    assert_problem(
        s.get(&user, "/api/conversations/not-a-uuid")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn deleting_removes_the_conversation_and_its_messages() {
    let s = spawn().await;
    let user = User::new();
    let id = s.conversation(&user, "to forget").await;
    s.say(&user, &id, "something to forget").await;
    assert_eq!(s.delete(&user, &id).await.status(), 204);
    assert!(
        s.stored_messages(&id).await.is_empty(),
        "messages are deleted with their conversation"
    );
    assert_problem(
        s.get(&user, &format!("/api/conversations/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(s.delete(&user, &id).await, 404).await;
    assert_problem(
        s.send(&user, &id, json!({ "content": "hello?" })).await,
        404,
    )
    .await;
}
