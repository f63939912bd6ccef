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

/// Inserts `n` entries of `user` by SQL, one minute apart, the newest first
/// (`g` = 1 is the newest): title `e<g>`, content from `content(g)` (a SQL
/// expression over `g`).
async fn entries_by_sql(j: &crate::helpers::Journal, user: &User, n: i64, content: &str) {
    j.db.connect()
        .await
        .execute(
            &format!(
                "INSERT INTO journal.journal_entries (id, user_id, title, content, created_at)
                 SELECT gen_random_uuid(), $1, 'e' || g, {content}, now() - g * interval '1 minute'
                 FROM generate_series(1, $2::bigint) g"
            ),
            &[&user.id, &n],
        )
        .await
        .unwrap();
}

/// `EXPLAIN <options> <sql>` of one of search's statements for `user` and
/// `word`, its parameters typed as the service sends them (`search_entries`):
/// the user, the word, the page's 20, the candidates, and the window for
/// [`SEARCH`](journal_service::queries::SEARCH), which takes it.
async fn explain_search(
    conn: &tokio_postgres::Client,
    options: &str,
    sql: &str,
    user: &User,
    word: &str,
) -> Vec<tokio_postgres::Row> {
    use journal_service::queries::{SEARCH_CANDIDATES, SEARCH_WINDOW};
    use tokio_postgres::types::Type;
    let limit = 20i64;
    let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = vec![
        (&user.id, Type::UUID),
        (&word, Type::TEXT),
        (&limit, Type::INT8),
        (&SEARCH_CANDIDATES, Type::INT8),
    ];
    if sql.contains("$5") {
        params.push((&SEARCH_WINDOW, Type::INT8));
    }
    conn.query_typed(&format!("EXPLAIN {options} {sql}"), &params)
        .await
        .unwrap()
}

fn titles(body: &Value) -> Vec<String> {
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["title"].as_str().unwrap().to_owned())
        .collect()
}

/// More matches than `SEARCH_CANDIDATES`: the best match among the newest
/// `SEARCH_CANDIDATES` comes first, not an older entry that would rank higher,
/// and it costs one statement. (Ranking every match, the older entries with the
/// word four times would come first.)
#[tokio::test]
async fn with_more_matches_than_candidates_the_best_of_the_newest_comes_first_in_one_statement() {
    use journal_service::queries::{SEARCH_CANDIDATES, SEARCH_WINDOW};
    let j = spawn().await;
    let user = User::new();
    let k = SEARCH_CANDIDATES;
    // The newest k entries name the lantern once, e500 twice; the 200 older ones
    // four times.
    entries_by_sql(
        &j,
        &user,
        k + 200,
        &format!(
            "CASE WHEN g > {k} THEN 'lantern lantern lantern lantern'
                  WHEN g = 500 THEN 'the lantern, the lantern again'
                  ELSE 'a lantern' END"
        ),
    )
    .await;
    assert!(k + 200 < SEARCH_WINDOW, "the journal fits the window");
    let before = j.app.statements();
    let (status, _, body) = read(&j.app, &user, "/api/journal/search?q=lantern&limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(j.app.statements() - before, 1, "one statement");
    // e500 first; then the newest of the equally ranked (e1, e2).
    assert_eq!(titles(&body), ["e500", "e1", "e2"], "{body}");
    // The API document says so, with the same number.
    let doc = j.app.get_json("/openapi.json").await;
    let description = doc["paths"]["/api/journal/search"]["get"]["description"]
        .as_str()
        .unwrap_or_default()
        .replace('\n', " ");
    let thousands = |n: i64| format!("{},{:03}", n / 1000, n % 1000);
    for said in [
        format!("newest {} entries", thousands(SEARCH_WINDOW)),
        format!("newest {} of them", thousands(k)),
        format!("newest {} matches of the whole journal", thousands(k)),
    ] {
        assert!(description.contains(&said), "{said:?} in {description}");
    }
}

/// A journal longer than `SEARCH_WINDOW`: when its newest entries hold as many
/// matches as the page asks for, the answer is ranked among those in one
/// statement, and older entries that would rank higher are not looked at; when
/// they hold fewer, the newest `SEARCH_CANDIDATES` matches of the whole journal
/// are ranked (a second statement), so the older, better matches come first.
#[tokio::test]
async fn a_long_journal_is_ranked_within_its_window_when_the_window_fills_the_page() {
    use journal_service::queries::SEARCH_WINDOW;
    let j = spawn().await;
    let user = User::new();
    let n = SEARCH_WINDOW + 100;
    // The newest five name the lantern once; the 100 oldest, past the window,
    // four times.
    entries_by_sql(
        &j,
        &user,
        n,
        &format!(
            "CASE WHEN g <= 5 THEN 'a lantern'
                  WHEN g > {SEARCH_WINDOW} THEN 'lantern lantern lantern lantern'
                  ELSE 'an ordinary day' END"
        ),
    )
    .await;
    let before = j.app.statements();
    let (status, _, body) = read(&j.app, &user, "/api/journal/search?q=lantern&limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(j.app.statements() - before, 1, "the window fills the page");
    assert_eq!(titles(&body), ["e1", "e2", "e3", "e4", "e5"], "{body}");

    let before = j.app.statements();
    let (status, _, body) = read(&j.app, &user, "/api/journal/search?q=lantern&limit=6").await;
    assert_eq!(status, 200);
    assert_eq!(
        j.app.statements() - before,
        2,
        "the window, then every match"
    );
    let found = titles(&body);
    assert_eq!(found.len(), 6, "{body}");
    // Ranked over all 105 matches: the four-times entries first, newest first
    // among equals.
    let oldest: Vec<String> = (1..=6).map(|i| format!("e{}", SEARCH_WINDOW + i)).collect();
    assert_eq!(found, oldest, "{body}");
}

/// A journal longer than `SEARCH_WINDOW`: a word only its oldest entry holds is
/// found (a second statement looks past the window); a word every entry holds
/// is answered from the window in one statement, newest first among equals.
#[tokio::test]
async fn a_journal_longer_than_the_window_finds_its_oldest_match() {
    use journal_service::queries::SEARCH_WINDOW;
    let j = spawn().await;
    let user = User::new();
    let n = SEARCH_WINDOW + 50;
    entries_by_sql(
        &j,
        &user,
        n,
        &format!("CASE WHEN g = {n} THEN 'a zephyr, once' ELSE 'an ordinary day' END"),
    )
    .await;
    let before = j.app.statements();
    let (status, _, body) = read(&j.app, &user, "/api/journal/search?q=zephyr").await;
    assert_eq!(status, 200);
    assert_eq!(titles(&body), [format!("e{n}")], "{body}");
    assert_eq!(
        j.app.statements() - before,
        2,
        "the window, then every match"
    );
    let before = j.app.statements();
    let (_, _, body) = read(&j.app, &user, "/api/journal/search?q=ordinary&limit=2").await;
    assert_eq!(titles(&body), ["e1", "e2"], "{body}");
    assert_eq!(j.app.statements() - before, 1, "found in the window");
    let (_, _, body) = read(&j.app, &user, "/api/journal/search?q=xylophone").await;
    assert_eq!(titles(&body), Vec::<String>::new());
}

/// Search is planned for its words at every execution: it is never a prepared
/// statement of the connection (whose plan PostgreSQL may make generic after five
/// executions, blind to how often the word occurs), while the list is.
#[tokio::test]
async fn search_is_never_a_prepared_statement() {
    let j =
        crate::helpers::spawn_with(Some(&kai_testing::redis_url()), &[("DB_POOL_SIZE", "1")]).await;
    let user = User::new();
    j.entry(&user, "tea by the river").await;
    for word in ["tea", "river", "tea", "river", "tea", "river", "coffee"] {
        let (status, _, _) = read(&j.app, &user, &format!("/api/journal/search?q={word}")).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = read(&j.app, &user, "/api/journal/entries?limit=5").await;
    assert_eq!(status, 200);
    // The pool's one connection, the one every request above used.
    let conn = j.app.platform.db.conn().await.unwrap();
    let prepared: Vec<String> = conn
        .query("SELECT statement FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        prepared
            .iter()
            .any(|s| s.contains("journal.journal_entries")),
        "the list is prepared on this connection: {prepared:?}"
    );
    assert!(
        !prepared.iter().any(|s| s.contains("websearch_to_tsquery")),
        "search is not: {prepared:?}"
    );
}

/// The window's statement walks the user's own newest entries whatever the
/// word: its plan never reads the GIN index, whose matches are every user's
/// (a word other users write often cost 97 ms for one whose journal holds it in
/// 1 % of 100,000 entries, when PostgreSQL chose that index).
#[tokio::test]
async fn the_windows_statement_never_reads_every_users_matches() {
    use journal_service::queries::SEARCH;
    let j = spawn().await;
    let (user, other) = (User::new(), User::new());
    entries_by_sql(&j, &user, 300, "'an ordinary day in the garden'").await;
    // The word in every entry of another user, far more often than in the user's.
    entries_by_sql(&j, &other, 3_000, "'the garden, the garden'").await;
    let conn = j.db.connect().await;
    conn.execute("ANALYZE journal.journal_entries", &[])
        .await
        .unwrap();
    for word in ["garden", "ordinary", "xylophone"] {
        let plan: Vec<String> = explain_search(&conn, "", SEARCH, &user, word)
            .await
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("journal_entries_user_created_live"), "{plan}");
        // Neither GIN index: not the words-only one of V2, nor V7's by user.
        assert!(!plan.contains("journal_entries_search"), "{word}: {plan}");
        assert!(
            !plan.contains("journal_entries_user_search"),
            "{word}: {plan}"
        );
    }
}

/// The second statement (every match, for a journal longer than the window whose
/// newest entries hold too few) reads this user's matching entries and no other
/// row: the index keys each entry's words with its user
/// (migrations/journal/V7__search_by_user.sql). The words-only index it
/// replaced answered with every user's entries holding the word, and PostgreSQL
/// read each and dropped the other users' (a word 20,000 other entries hold:
/// 30–77 ms at 1,000,000 entries, growing with the table); the user's own index
/// would read every entry of the journal.
#[tokio::test]
async fn every_match_is_read_from_this_users_matching_entries_only() {
    use journal_service::queries::SEARCH_ALL_MATCHES;
    let j = spawn().await;
    let (user, other, crowd) = (User::new(), User::new(), User::new());
    // The word in 10 of the user's 5,000 entries, and in all 1,000 of another's;
    // a table mostly of other journals (on a table of these two alone,
    // PostgreSQL rightly reads it all).
    entries_by_sql(
        &j,
        &user,
        5_000,
        "CASE WHEN g % 500 = 0 THEN 'a walk to the lighthouse' ELSE 'an ordinary day' END",
    )
    .await;
    entries_by_sql(&j, &other, 1_000, "'the lighthouse again'").await;
    entries_by_sql(&j, &crowd, 30_000, "'a day like the others'").await;
    let conn = j.db.connect().await;
    conn.execute("ANALYZE journal.journal_entries", &[])
        .await
        .unwrap();
    let plan: Value = explain_search(
        &conn,
        "(ANALYZE, FORMAT JSON)",
        SEARCH_ALL_MATCHES,
        &user,
        "lighthouse",
    )
    .await[0]
        .get(0);
    // Rows each scan of the table produced or read and dropped.
    fn table_rows(node: &Value, rows: &mut f64, indexes: &mut Vec<String>) {
        if node["Relation Name"] == "journal_entries" {
            for field in [
                "Actual Rows",
                "Rows Removed by Filter",
                "Rows Removed by Index Recheck",
            ] {
                *rows += node[field].as_f64().unwrap_or(0.0);
            }
        }
        if let Some(index) = node["Index Name"].as_str() {
            indexes.push(index.to_owned());
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            table_rows(child, rows, indexes);
        }
    }
    let (mut rows, mut indexes) = (0.0, Vec::new());
    table_rows(&plan[0]["Plan"], &mut rows, &mut indexes);
    assert_eq!(rows, 10.0, "the user's 10 matches, no other row: {plan:#}");
    assert_eq!(indexes, ["journal_entries_user_search"], "{plan:#}");
    let (status, _, body) = read(&j.app, &user, "/api/journal/search?q=lighthouse").await;
    assert_eq!(status, 200);
    assert_eq!(body["entries"].as_array().unwrap().len(), 10, "{body}");
}
