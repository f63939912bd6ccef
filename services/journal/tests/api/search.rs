//! Search never answers 500, whatever the query text: generated operator soup
//! (runs of `-`, quotes, `or`, tsquery punctuation, invisible characters) gets a
//! 200 with results or a 400, through the real route and PostgreSQL's parser.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;

use crate::helpers::{User, read, spawn};

/// Pieces a query is made of: mostly operators, some words that match.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..80).prop_map(|n| "-".repeat(n)),
        (1usize..40).prop_map(|n| "- ".repeat(n)),
        (1usize..30).prop_map(|n| "-\"".repeat(n)),
        (1usize..30).prop_map(|n| "or ".repeat(n)),
        prop::sample::select(vec![
            " ",
            "  ",
            "\"",
            "or",
            "OR",
            "-or",
            "!",
            "!!",
            "&",
            "|",
            "(",
            ")",
            "<->",
            "<2>",
            ":*",
            ":A",
            "'",
            "\\",
            "*",
            "tea",
            "coffee",
            "river",
            "walk",
            "-tea",
            "\"river walk\"",
            "e-mail",
            "café",
            "東京",
            "\u{200b}",
            "\u{202e}",
            "\u{a0}",
            "\t",
            "\u{301}",
            "0",
            "a:b",
            "x&y",
            "-\"-\"",
        ])
        .prop_map(str::to_owned),
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..40).prop_map(|pieces| {
        // The route's bound: at most 200 characters.
        pieces.concat().chars().take(200).collect()
    })
}

/// Percent-encodes every byte but unreserved ASCII.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn generated_operator_soup_gets_results_or_a_400_never_a_500() {
    let j = spawn().await;
    // The text that found the bug, sent as typed, fails in PostgreSQL's parser:
    // the property below is not vacuous.
    let conn = j.db.connect().await;
    let raw = conn
        .query_one(
            "SELECT websearch_to_tsquery('english', $1)::text",
            &[&format!("{}x", "-".repeat(33))],
        )
        .await
        .expect_err("33 dashes overflow the tsquery parser");
    let message = raw.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("stack too small")),
        "{raw:?}"
    );

    let mut runner = TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = soup();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut user = User::new();
    let mut failures = Vec::new();
    for case in 0..300 {
        // The per-user search limit is 20 at once: a fresh user every 15 cases,
        // each with an entry the words can match.
        if case % 15 == 0 {
            user = User::new();
            j.entry(&user, "tea and coffee on a river walk, e-mail later")
                .await;
        }
        let q = strategy.new_tree(&mut runner).unwrap().current();
        let path = format!("/api/journal/search?q={}", encode(&q));
        let (status, _, body) = read(&j.app, &user, &path).await;
        *statuses.entry(status).or_default() += 1;
        let ok = match status {
            200 => body["entries"].is_array(),
            400 => body["status"] == 400,
            _ => false,
        };
        if !ok {
            failures.push((q, status, body));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Both kinds of answer were exercised, and some soup still found the entry.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 100,
        "{statuses:?}"
    );

    // The regressions by name: results, not a 500.
    let user = User::new();
    j.entry(&user, "tea and coffee").await;
    for q in [
        format!("{}tea", "-".repeat(33)),
        "-".repeat(200),
        format!("tea {}", "or ".repeat(60)),
        format!("{}coffee", "-\"".repeat(50)),
    ] {
        let (status, _, body) = read(
            &j.app,
            &user,
            &format!("/api/journal/search?q={}", encode(&q)),
        )
        .await;
        assert_eq!(status, 200, "{q}: {body}");
        let _: &Vec<Value> = body["entries"].as_array().unwrap();
    }
    let (_, _, body) = read(&j.app, &user, "/api/journal/search?q=tea%20or%20-coffee").await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 1, "{body}");
    let (_, _, body) = read(&j.app, &user, "/api/journal/search?q=---tea%20-coffee").await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 0, "{body}");
}
