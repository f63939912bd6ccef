//! Test data: written straight into PostgreSQL with one `INSERT … SELECT FROM
//! unnest(…)` per batch (tens of thousands of rows per statement), for users with
//! fixed ids, so a second run finds the data already there and skips the work.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::text;

/// Entries of the heavy user.
pub const HEAVY_ENTRIES: usize = 1_000;
/// Other users, and entries each.
pub const OTHER_USERS: usize = 1_000;
pub const OTHER_ENTRIES: usize = 50;
/// Conversations: the heavy user's, and how many other users get some.
pub const HEAVY_CONVERSATIONS: usize = 100;
pub const MESSAGES_PER_CONVERSATION: usize = 30;
pub const OTHER_CONVERSATION_USERS: usize = 200;
pub const OTHER_CONVERSATIONS: usize = 5;
pub const OTHER_MESSAGES: usize = 10;

/// The seeded users' ids: fixed, recognisable (`4b41494c-…` = "KAIL").
pub fn user(i: usize) -> Uuid {
    Uuid::from_u128(0x4b41_494c_0000_4000_8000_0000_0000_0000 | i as u128)
}

pub fn heavy_user() -> Uuid {
    user(0)
}

/// User `1..=OTHER_USERS`.
pub fn other_user(i: usize) -> Uuid {
    user(1 + i % OTHER_USERS)
}

/// Drops `url`'s database (if it exists), so the next [`connect_creating`]
/// starts from an empty one: what a newcomer's first run meets.
pub async fn drop_database(url: &str) -> Result<()> {
    let config: tokio_postgres::Config = url.parse().context("DATABASE_URL")?;
    let (name, client) = admin(&config).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "")
        ))
        .await
        .with_context(|| format!("dropping database {name}"))?;
    eprintln!("dropped database {name} (--fresh-database)");
    Ok(())
}

/// Connects to `url`, first creating its database if it does not exist.
pub async fn connect_creating(url: &str) -> Result<Client> {
    let config: tokio_postgres::Config = url.parse().context("DATABASE_URL")?;
    match connect(&config).await {
        Ok(c) => return Ok(c),
        Err(e) if !format!("{e:#}").contains("does not exist") => return Err(e),
        Err(_) => {}
    }
    let (name, client) = admin(&config).await?;
    client
        .batch_execute(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
        .await
        .with_context(|| format!("creating database {name}"))?;
    eprintln!("created database {name}");
    connect(&config).await
}

/// `config`'s database name, and a connection to the `postgres` database of the
/// same server (to create or drop it).
async fn admin(config: &tokio_postgres::Config) -> Result<(String, Client)> {
    let name = config
        .get_dbname()
        .context("DATABASE_URL names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    Ok((name, connect(&admin).await?))
}

pub async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let (client, conn) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn spread(rng: &mut impl Rng, i: usize, n: usize) -> DateTime<Utc> {
    // Newest first over the last year, with a little jitter.
    let span = Duration::from_secs(365 * 86_400);
    let step = span.as_secs() / n.max(1) as u64;
    let ago = step * i as u64 + rng.random_range(0..step.max(1));
    Utc::now() - chrono::Duration::seconds(ago as i64)
}

const INSERT_ENTRIES: &str = "INSERT INTO journal.journal_entries
        (id, user_id, title, content, mood, tags, created_at, updated_at)
     SELECT id, user_id, title, content, mood, string_to_array(tags, ','), created_at, created_at
     FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::timestamptz[])
          AS t(id, user_id, title, content, mood, tags, created_at)";

#[derive(Default)]
struct EntryBatch {
    id: Vec<Uuid>,
    user: Vec<Uuid>,
    title: Vec<String>,
    content: Vec<String>,
    mood: Vec<i16>,
    tags: Vec<String>,
    created: Vec<DateTime<Utc>>,
}

impl EntryBatch {
    fn push(&mut self, rng: &mut impl Rng, user: Uuid, i: usize, n: usize) {
        self.id.push(Uuid::new_v4());
        self.user.push(user);
        self.title.push(text::title(rng));
        self.content.push(text::content(rng, 500, 1500));
        self.mood.push(rng.random_range(1..=10));
        self.tags.push(text::tags(rng).join(","));
        self.created.push(spread(rng, i, n));
    }

    async fn flush(&mut self, db: &Client) -> Result<u64> {
        if self.id.is_empty() {
            return Ok(0);
        }
        let n = db
            .execute(
                INSERT_ENTRIES,
                &[
                    &self.id,
                    &self.user,
                    &self.title,
                    &self.content,
                    &self.mood,
                    &self.tags,
                    &self.created,
                ],
            )
            .await
            .context("bulk insert into journal.journal_entries")?;
        *self = Self::default();
        Ok(n)
    }
}

async fn count(db: &Client, sql: &str, users: &[Uuid]) -> Result<i64> {
    Ok(db.query_one(sql, &[&users]).await?.get(0))
}

/// 1,000 entries for the heavy user and 50 for each of 1,000 others; skipped
/// when they are already there (unless `force`).
pub async fn journal(db: &Client, force: bool) -> Result<()> {
    let users: Vec<Uuid> = (0..=OTHER_USERS).map(user).collect();
    let have = count(
        db,
        "SELECT count(*) FROM journal.journal_entries WHERE user_id = ANY($1)",
        &users,
    )
    .await?;
    let want = (HEAVY_ENTRIES + OTHER_USERS * OTHER_ENTRIES) as i64;
    if have >= want && !force {
        eprintln!("journal: {have} seeded entries already present");
        return Ok(());
    }
    let t0 = Instant::now();
    db.execute(
        "DELETE FROM journal.journal_entries WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut batch = EntryBatch::default();
    let mut inserted = 0;
    for i in 0..HEAVY_ENTRIES {
        batch.push(&mut rng, heavy_user(), i, HEAVY_ENTRIES);
    }
    inserted += batch.flush(db).await?;
    for u in 0..OTHER_USERS {
        for i in 0..OTHER_ENTRIES {
            batch.push(&mut rng, other_user(u), i, OTHER_ENTRIES);
        }
        if batch.id.len() >= 5_000 {
            inserted += batch.flush(db).await?;
        }
    }
    inserted += batch.flush(db).await?;
    db.batch_execute("VACUUM ANALYZE journal.journal_entries")
        .await
        .context("VACUUM ANALYZE journal.journal_entries")?;
    eprintln!(
        "journal: inserted {inserted} entries in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

const INSERT_CONVERSATIONS: &str = "INSERT INTO conversation.conversations
        (id, user_id, title, created_at, updated_at)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[])";

const INSERT_MESSAGES: &str = "INSERT INTO conversation.messages
        (id, conversation_id, role, content, created_at)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])";

/// Conversations with messages: 100 × 30 for the heavy user, 5 × 10 for 200 others.
pub async fn conversations(db: &Client, force: bool) -> Result<()> {
    let users: Vec<Uuid> = (0..=OTHER_CONVERSATION_USERS).map(user).collect();
    let have = count(
        db,
        "SELECT count(*) FROM conversation.conversations WHERE user_id = ANY($1)",
        &users,
    )
    .await?;
    let want = (HEAVY_CONVERSATIONS + OTHER_CONVERSATION_USERS * OTHER_CONVERSATIONS) as i64;
    if have >= want && !force {
        eprintln!("conversation: {have} seeded conversations already present");
        return Ok(());
    }
    let t0 = Instant::now();
    db.execute(
        "DELETE FROM conversation.conversations WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let (mut c_id, mut c_user, mut c_title, mut c_created, mut c_updated) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut m_id, mut m_conv, mut m_role, mut m_content, mut m_created) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut plan = vec![(heavy_user(), HEAVY_CONVERSATIONS, MESSAGES_PER_CONVERSATION)];
    plan.extend(
        (0..OTHER_CONVERSATION_USERS).map(|u| (other_user(u), OTHER_CONVERSATIONS, OTHER_MESSAGES)),
    );
    for (owner, conversations, messages) in plan {
        for c in 0..conversations {
            let id = Uuid::new_v4();
            let started = spread(&mut rng, c, conversations);
            c_id.push(id);
            c_user.push(owner);
            c_title.push(text::title(&mut rng));
            c_created.push(started);
            let mut at = started;
            for m in 0..messages {
                at += chrono::Duration::seconds(rng.random_range(5..120));
                m_id.push(Uuid::new_v4());
                m_conv.push(id);
                let user_turn = m % 2 == 0;
                m_role.push(if user_turn { "user" } else { "assistant" }.to_owned());
                m_content.push(if user_turn {
                    text::content(&mut rng, 80, 400)
                } else {
                    text::content(&mut rng, 200, 900)
                });
                m_created.push(at);
            }
            c_updated.push(at);
        }
    }
    db.execute(
        INSERT_CONVERSATIONS,
        &[&c_id, &c_user, &c_title, &c_created, &c_updated],
    )
    .await
    .context("bulk insert into conversation.conversations")?;
    for chunk in (0..m_id.len()).collect::<Vec<_>>().chunks(5_000) {
        let r = chunk[0]..chunk[chunk.len() - 1] + 1;
        let (ids, convs, roles) = (&m_id[r.clone()], &m_conv[r.clone()], &m_role[r.clone()]);
        let (contents, created) = (&m_content[r.clone()], &m_created[r]);
        db.execute(
            INSERT_MESSAGES,
            &[&ids, &convs, &roles, &contents, &created],
        )
        .await
        .context("bulk insert into conversation.messages")?;
    }
    // One statement per call: several in one simple query run as one implicit
    // transaction, and VACUUM refuses to run inside a transaction block.
    for table in ["conversation.conversations", "conversation.messages"] {
        db.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .with_context(|| format!("VACUUM ANALYZE {table}"))?;
    }
    eprintln!(
        "conversation: inserted {} conversations, {} messages in {:.1}s",
        c_id.len(),
        m_id.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The newest `n` live entry ids of a user.
pub async fn entry_ids(db: &Client, user: Uuid, n: i64) -> Result<Vec<Uuid>> {
    Ok(db
        .query(
            "SELECT id FROM journal.journal_entries WHERE user_id = $1 AND deleted_at IS NULL
             ORDER BY created_at DESC, id DESC LIMIT $2",
            &[&user, &n],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
