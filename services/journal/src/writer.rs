//! Creating entries: through a [`Combiner`], so creates that arrive while
//! earlier ones are in flight reach PostgreSQL as one multi-row `INSERT`
//! (`queries::insert_entries`) and invalidate each user's cache scope once per
//! batch instead of once per entry. Each create still answers 201 only after its
//! row is committed and its scope invalidated (SPEC §6: a reader sees its write).
//! A batch also refills the list's first page its replica holds for each of its
//! users, under the new generation (page mode: derived from the page before the
//! insert, no query), so the list's readers do not wait for a load after it.
//!
//! Measured in docs/PERFORMANCE.md ("Sixth round"): what a batch saves is what
//! PostgreSQL pays per statement rather than per row.

use actix_web::web;
use kai_http::ApiError;
use kai_http::Valid;
use kai_platform::Platform;
use kai_shared::cache::Hot;
use kai_shared::db::Combiner;
use uuid::Uuid;

use crate::model::{CreateEntry, Entry};
use crate::{pages, queries};

/// Batches in flight at once, per replica: one, as PostgreSQL's own WAL flush
/// works — a create that finds no batch running runs at once, alone; creates that
/// arrive while one runs queue and go together in the next. Measured against two
/// (docs/PERFORMANCE.md, "Sixth round"): with two, batches held ~2.5 creates
/// instead of ~6, each of the extra batches bumped the user's cache generation
/// and made every reader of the user wait for a fresh page, and the 90/10 mix ran
/// at 15,658 instead of 18,936 requests/s. Since creates refill the first page
/// (seventh round), a variant that let the next batch's insert overlap this
/// one's refill and bump was measured too: batches of 5.8 creates instead of
/// 9.9, PostgreSQL CPU 17.2 instead of 11.3 µs per request, 23,847 instead of
/// 27,488 requests/s (the page loaded, not yet derived; two plain-build runs
/// 25 minutes apart) — the insert is the bottleneck, and bigger batches pay it
/// fewer times. The cost: one slow statement holds up the replica's creates
/// behind it. Since the batches run on the main runtime instead of a busy HTTP
/// worker (eighth round) a batch's cycle is ~1.2 ms instead of ~3.2: under the
/// mix batches hold ~2.8 creates and a create waits far less for the one ahead.
pub const SLOTS: usize = 1;

/// The most creates in one statement (each at most 20,000 characters: a
/// statement of at most ~5 MB).
pub const MAX_BATCH: usize = 64;

type Item = (Uuid, Valid<CreateEntry>);

/// The service's one writer of new entries (one per replica, shared by its
/// workers).
#[derive(Clone)]
pub struct EntryWriter(Combiner<Item, Result<Entry, ApiError>>);

impl Default for EntryWriter {
    fn default() -> Self {
        Self(Combiner::new(SLOTS, MAX_BATCH))
    }
}

impl EntryWriter {
    /// Stores `new` as `user_id`'s, alone or in a batch, and returns it once it is
    /// committed and the user's cache scope invalidated.
    pub async fn create(
        &self,
        p: web::Data<Platform>,
        user_id: Uuid,
        new: Valid<CreateEntry>,
    ) -> Result<Entry, ApiError> {
        self.0
            .submit(p, (user_id, new), run)
            .await
            .map_err(|lost| ApiError::Internal(lost.into()))?
    }
}

/// One batch: one statement, then each touched scope invalidated once — with the
/// list's first pages the replica holds for those users refreshed under the new
/// generation (`pages::first_pages`; the page mode's derived from the page as
/// it was before the insert), so their readers do not wait for a load.
async fn run(p: web::Data<Platform>, batch: Vec<Item>) -> Vec<Result<Entry, ApiError>> {
    p.metrics
        .db_batch_size
        .with_label_values(&["journal_entries"])
        .observe(batch.len() as f64);
    let mut users: Vec<Uuid> = Vec::new();
    for (user_id, _) in &batch {
        if !users.contains(user_id) {
            users.push(*user_id);
        }
    }
    // Before the insert: a page taken after it might already hold its rows.
    let hot: Vec<Option<Hot>> = users
        .iter()
        .map(|&user_id| pages::hot_first_page(&p, user_id))
        .collect();
    let results = queries::insert_entries(&p.db, &batch).await;
    let mut created: Vec<Vec<Entry>> = vec![Vec::new(); users.len()];
    for ((user_id, _), result) in batch.iter().zip(&results) {
        if let (Ok(written), Some(i)) = (result, users.iter().position(|u| u == user_id)) {
            created[i].push(written.value().clone());
        }
    }
    let mut written = Vec::with_capacity(results.len());
    let mut failures = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(w) => {
                written.push(w);
                failures.push(None);
            }
            Err(e) => failures.push(Some(e)),
        }
    }
    let refresh = users
        .into_iter()
        .zip(hot)
        .zip(created)
        .flat_map(|((user_id, hot), created)| pages::first_pages(&p, user_id, hot, created))
        .collect();
    let mut stored = p.cache.commit_all(written, refresh).await.into_iter();
    failures
        .into_iter()
        .map(|failure| match failure {
            Some(e) => Err(e),
            None => stored.next().ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a committed entry went missing"))
            }),
        })
        .collect()
}
