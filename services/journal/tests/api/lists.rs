use std::collections::HashSet;

use serde_json::json;

use crate::helpers::{User, assert_problem, read, spawn};

#[tokio::test]
async fn page_mode_lists_newest_first_with_totals() {
    let j = spawn().await;
    let user = User::new();
    for i in 0..25 {
        j.entry(&user, &format!("entry {i}")).await;
    }
    let (status, _, page1) = read(&j.app, &user, "/api/journal/entries?page=1&page_size=10").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            page1["total"].clone(),
            page1["page"].clone(),
            page1["page_size"].clone(),
            page1["has_more"].clone()
        ),
        (json!(25), json!(1), json!(10), json!(true))
    );
    assert_eq!(page1["entries"][0]["content"], "entry 24");
    let (_, _, page3) = read(&j.app, &user, "/api/journal/entries?page=3&page_size=10").await;
    assert_eq!(page3["entries"].as_array().unwrap().len(), 5);
    assert_eq!(page3["has_more"], false);
    assert_eq!(page3["entries"][4]["content"], "entry 0");
    let (_, _, past) = read(&j.app, &user, "/api/journal/entries?page=9").await;
    assert_eq!(
        (past["entries"].clone(), past["has_more"].clone()),
        (json!([]), json!(false))
    );
    let (_, _, default) = read(&j.app, &user, "/api/journal/entries").await;
    assert_eq!(default["page_size"], 20);
}

#[tokio::test]
async fn bad_list_parameters_are_rejected() {
    let j = spawn().await;
    let user = User::new();
    for q in [
        "page=0",
        "page_size=0",
        "page_size=101",
        "page=abc",
        "limit=0",
        "limit=101",
        "cursor=bogus",
        "sort=evil",
    ] {
        assert_problem(
            j.get(&user, &format!("/api/journal/entries?{q}"))
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
    }
}

#[tokio::test]
async fn cursor_paging_never_skips_or_repeats_even_with_equal_timestamps() {
    let j = spawn().await;
    let user = User::new();
    // 23 entries sharing one created_at, plus 4 others around them.
    let conn = j.db.connect().await;
    conn.execute(
        "INSERT INTO journal.journal_entries (id, user_id, content, created_at)
         SELECT gen_random_uuid(), $1, 'same ' || g, timestamptz '2026-01-01 12:00:00+00' FROM generate_series(1, 23) g",
        &[&user.id],
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO journal.journal_entries (id, user_id, content, created_at)
         SELECT gen_random_uuid(), $1, 'other ' || g, timestamptz '2026-01-01 12:00:00+00' + g * interval '1 hour' * (CASE WHEN g % 2 = 0 THEN 1 ELSE -1 END)
         FROM generate_series(1, 4) g",
        &[&user.id],
    )
    .await
    .unwrap();
    let (seen, pages) = j
        .app
        .walk_cursor_pages(
            &user.token,
            "/api/journal/entries?limit=7",
            "entries",
            "created_at",
        )
        .await;
    assert_eq!(seen.len(), 27, "every entry exactly once");
    assert_eq!(
        seen.iter().map(|(_, id)| id).collect::<HashSet<_>>().len(),
        27
    );
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        seen, sorted,
        "newest first, id descending within a timestamp"
    );
    assert_eq!(pages, 4);
}

#[tokio::test]
async fn a_page_costs_the_same_statements_whatever_the_table_holds() {
    let j = spawn().await;
    let (small, big) = (User::new(), User::new());
    let conn = j.db.connect().await;
    for (user, n) in [(&small, 25), (&big, 2_000)] {
        conn.execute(
            "INSERT INTO journal.journal_entries (id, user_id, content, mood, created_at)
             SELECT gen_random_uuid(), $1, 'entry ' || g, 1 + g % 10, now() - g * interval '1 minute' FROM generate_series(1, $2::int) g",
            &[&user.id, &n],
        )
        .await
        .unwrap();
    }
    let mut costs = Vec::new();
    for user in [&small, &big] {
        for path in [
            "/api/journal/entries?page=1&page_size=20",
            "/api/journal/entries?limit=20",
            "/api/journal/stats",
        ] {
            let before = j.app.statements();
            let (status, cache, _) = read(&j.app, user, path).await;
            assert_eq!((status, cache.as_str()), (200, "MISS"));
            costs.push(j.app.statements() - before);
        }
    }
    assert_eq!(
        &costs[..3],
        &costs[3..],
        "statement counts depend on the table size: {costs:?}"
    );
    assert!(
        costs.iter().all(|&c| c == 1),
        "one statement per list page: {costs:?}"
    );
    // And a hit costs none.
    let before = j.app.statements();
    let (_, cache, body) = read(&j.app, &big, "/api/journal/entries?page=1&page_size=20").await;
    assert_eq!(
        (cache.as_str(), body["entries"].as_array().unwrap().len()),
        ("HIT", 20)
    );
    assert_eq!(j.app.statements(), before);
}

#[tokio::test]
async fn hot_queries_use_indexes_on_a_large_table() {
    let j = spawn().await;
    let conn = j.db.connect().await;
    // 100k rows over 1,000 users, as SPEC §7 asks.
    conn.batch_execute(
        "INSERT INTO journal.journal_entries (id, user_id, content, mood, created_at)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad((g % 1000)::text, 12, '0'))::uuid,
                'entry number ' || g || ' about the garden and the sea', 1 + g % 10, now() - g * interval '1 minute'
         FROM generate_series(1, 100000) g;
         ANALYZE journal.journal_entries;",
    )
    .await
    .unwrap();
    let probe = uuid::Uuid::parse_str("00000000-0000-0000-0000-000000000042").unwrap();
    kai_testing::assert_plans_use_indexes(
        &conn,
        journal_service::queries::HOT_QUERIES,
        |_| vec![probe],
        "garden",
    )
    .await;
}

#[tokio::test]
async fn cursors_are_signed_and_bound_to_the_user_and_the_limit() {
    let j = spawn().await;
    let (user, other) = (User::new(), User::new());
    for i in 0..3 {
        j.entry(&user, &format!("entry {i}")).await;
        j.entry(&other, &format!("other {i}")).await;
    }
    let (_, _, first) = read(&j.app, &user, "/api/journal/entries?limit=1").await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let (status, _, second) = read(
        &j.app,
        &user,
        &format!("/api/journal/entries?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(
        (status, second["entries"][0]["content"].clone()),
        (200, json!("entry 1"))
    );

    let mut edited = cursor.clone().into_bytes();
    let last = edited.len() - 1;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    for (who, query) in [
        (&user, format!("limit=2&cursor={cursor}")),
        (&user, format!("cursor={cursor}")),
        (&user, format!("limit=1&cursor={edited}")),
        (&other, format!("limit=1&cursor={cursor}")),
        (&user, format!("limit=1&cursor={cursor}&page=1")),
        (&user, "page=1&limit=5".to_owned()),
        (&user, "page_size=5&cursor=x".to_owned()),
    ] {
        let body = assert_problem(
            j.get(who, &format!("/api/journal/entries?{query}"))
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert!(
            ["cursor", "page", "page_size"].contains(&body["errors"][0]["field"].as_str().unwrap()),
            "{query}: {body}"
        );
    }
}

/// The list pages are written from the rows by `page_json`, the single entry by
/// serde_json from an `Entry`: for the same rows — text built to need every
/// escape — a page is byte for byte its entries' own answers, in list order,
/// inside serde_json's page object (both modes). The columns `page_json` reads
/// by position are the ones the statements return there.
#[tokio::test]
async fn list_pages_are_the_bytes_serde_json_writes_for_their_entries() {
    use journal_service::page_json::col;
    use journal_service::queries;

    let j = spawn().await;
    let user = User::new();
    let conn = j.db.connect().await;
    for sql in [
        queries::PAGE,
        queries::FIRST_PAGE_BY_CURSOR,
        queries::NEXT_PAGE_BY_CURSOR,
    ] {
        let statement = conn.prepare(sql).await.unwrap();
        let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
        for (at, name) in [
            (col::ID, "id"),
            (col::TITLE, "title"),
            (col::CONTENT, "content"),
            (col::MOOD, "mood"),
            (col::TAGS, "tags"),
            (col::CREATED_AT, "created_at"),
            (col::UPDATED_AT, "updated_at"),
        ] {
            assert_eq!(names.get(at), Some(&name), "{sql}");
        }
        if sql == queries::PAGE {
            assert_eq!(names.get(col::TOTAL), Some(&"total"));
        }
    }
    // Every control character PostgreSQL stores (all but NUL), quotes,
    // backslashes, DEL, multi-byte text, at every offset of an 8-byte word.
    let controls: String = (1u8..0x20).map(char::from).collect();
    let mut texts = vec![
        controls.clone(),
        format!("\"{controls}\\\u{7f}é€😀\u{2028}"),
        "plain text, nothing to escape here at all".to_owned(),
        "ends with a quote\"".to_owned(),
        "\\".to_owned(),
    ];
    for at in 0..9 {
        texts.push(format!("{}\n{}\"é", "x".repeat(at), "y".repeat(at)));
    }
    let n = texts.len() as i64;
    for (i, text) in texts.iter().enumerate() {
        let i = i as i64;
        let title =
            (i % 3 != 0).then(|| format!("t{i}\t\"{}\"", text.chars().take(4).collect::<String>()));
        let mood = (i % 4 != 0).then_some((1 + i % 10) as i16);
        let tags = match i % 3 {
            0 => vec![],
            1 => vec!["a\"b".to_owned(), "c\\d".to_owned()],
            _ => vec!["é\u{1}".to_owned()],
        };
        conn.execute(
            "INSERT INTO journal.journal_entries (id, user_id, title, content, mood, tags, created_at, updated_at)
             VALUES (gen_random_uuid(), $1, $2, $3, $4, $5,
                     timestamptz '2026-01-01 00:00Z' + $6::int8 * interval '1 second 123457 microseconds',
                     timestamptz '2026-02-01 00:00Z' + $6::int8 * interval '1 millisecond')",
            &[&user.id, &title, text, &mood, &tags, &i],
        )
        .await
        .unwrap();
    }
    let body = |path: String| {
        let request = j.get(&user, &path);
        async move {
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            res.bytes().await.unwrap().to_vec()
        }
    };
    let page = body("/api/journal/entries?page=1&page_size=100".into()).await;
    let parsed: serde_json::Value = serde_json::from_slice(&page).unwrap();
    let ids: Vec<String> = parsed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len() as i64, n);
    let mut each = Vec::new();
    for id in &ids {
        each.push(String::from_utf8(body(format!("/api/journal/entries/{id}")).await).unwrap());
    }
    assert_eq!(
        String::from_utf8(page).unwrap(),
        format!(
            "{{\"entries\":[{}],\"total\":{n},\"page\":1,\"page_size\":100,\"has_more\":false}}",
            each.join(",")
        )
    );
    // Cursor mode, page after page: each but the last has a next cursor
    // (URL-safe base64: nothing to escape).
    let mut path = "/api/journal/entries?limit=5".to_owned();
    for (i, entries) in each.chunks(5).enumerate() {
        let page = body(path.clone()).await;
        let next = serde_json::from_slice::<serde_json::Value>(&page).unwrap()["next_cursor"]
            .as_str()
            .map(str::to_owned);
        let last = (i + 1) * 5 >= each.len();
        let tail = match &next {
            Some(cursor) if !last => format!("\"{cursor}\",\"has_more\":true"),
            None if last => "null,\"has_more\":false".to_owned(),
            other => panic!("page {i}: next_cursor {other:?}"),
        };
        assert_eq!(
            String::from_utf8(page).unwrap(),
            format!(
                "{{\"entries\":[{}],\"next_cursor\":{tail}}}",
                entries.join(",")
            )
        );
        path = format!(
            "/api/journal/entries?limit=5&cursor={}",
            next.unwrap_or_default()
        );
    }
}
