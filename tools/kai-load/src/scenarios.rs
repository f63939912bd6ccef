//! The named scenarios. Each runs against one service and reports what that
//! service's `/metrics` says happened meanwhile (cache hits and misses,
//! PostgreSQL statements).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::Method;
use hyper::header::{ACCEPT_ENCODING, AUTHORIZATION, HeaderValue};
use uuid::Uuid;

use crate::costs::Reading;
use crate::load::{self, Conn, Req, RequestFn, Target};
use crate::metrics::Snapshot;
use crate::report::{Latency, ScenarioResult, histogram};
use crate::spawn::rss_mib;

/// Every scenario, in the order `all` runs them.
pub const ALL: &[(&str, &str)] = &[
    (
        "cached-list-hit",
        "GET /api/journal/entries?page=1&page_size=20, one user, cache hot (no Accept-Encoding)",
    ),
    (
        "cached-list-hit-gzip",
        "the same with Accept-Encoding: gzip (each answer compressed on the fly)",
    ),
    (
        "uncached-list",
        "the same list on a CACHE_ENABLED=false instance: the page query (total and rows) every time",
    ),
    (
        "single-entry-hit",
        "GET /api/journal/entries/{id} over 100 hot entries of one user",
    ),
    (
        "write-read-mix",
        "one user per connection: 10 % POST entry, 90 % GET list page 1",
    ),
    (
        "conversation-list",
        "GET /api/conversations?limit=20, one user with 100 conversations, cache hot",
    ),
    ("profile-read", "GET /api/profile, one user, cache hot"),
    (
        "cold-key-stampede",
        "N concurrent GETs of a never-read list key right after a write invalidated the user",
    ),
];

/// What the scenarios need: targets, tokens, ids, settings.
pub struct Ctx {
    pub journal: Target,
    pub journal_uncached: Option<Target>,
    pub conversation: Option<Target>,
    pub profile: Option<Target>,
    /// `Authorization` values: the heavy user, and the other users by index.
    pub heavy_auth: HeaderValue,
    pub other_auth: Vec<HeaderValue>,
    pub profile_auth: Option<HeaderValue>,
    pub entry_ids: Vec<Uuid>,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub stampede: usize,
    /// Service name → pid, for RSS and CPU sampling (spawned services only).
    pub pids: Vec<(String, u32)>,
    /// The services' Redis, for its command and byte counters.
    pub redis: Option<redis::Client>,
}

/// A scenario's result and the peak RSS of the service it loaded, if sampled.
pub struct Outcome {
    pub result: ScenarioResult,
    pub peak_rss: Option<(String, f64)>,
}

fn description(name: &str) -> String {
    ALL.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d.to_string())
        .unwrap_or_default()
}

pub async fn snapshot(target: &Target) -> Result<Snapshot> {
    Ok(Snapshot::from_text(
        &load::get_text(target, "/metrics").await?,
    ))
}

fn entry_body(n: u64) -> Bytes {
    let mut rng = rand::rng();
    let content = crate::text::content(&mut rng, 500, 1500);
    Bytes::from(
        serde_json::json!({
            "title": format!("Load entry {n}"),
            "content": content,
            "mood": 1 + (n % 10) as i16,
            "tags": ["load"],
        })
        .to_string(),
    )
}

impl Ctx {
    fn pid(&self, service: &str) -> Option<u32> {
        self.pids
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, p)| *p)
    }

    /// Runs one scenario by name.
    pub async fn run(&self, name: &str) -> Result<Option<Outcome>> {
        let list = "/api/journal/entries?page=1&page_size=20";
        match name {
            "cached-list-hit" | "cached-list-hit-gzip" => {
                let mut req = Req::get(list).header(AUTHORIZATION, self.heavy_auth.clone());
                if name.ends_with("gzip") {
                    req = req.header(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
                }
                let make: RequestFn = Arc::new(move |_, _| req.clone());
                self.timed(name, &self.journal, make, Some("journal"), "journal")
                    .await
            }
            "uncached-list" => {
                let Some(target) = &self.journal_uncached else {
                    eprintln!(
                        "  {name}: skipped (no CACHE_ENABLED=false instance: use --spawn or --journal-uncached)"
                    );
                    return Ok(None);
                };
                let req = Req::get(list).header(AUTHORIZATION, self.heavy_auth.clone());
                let make: RequestFn = Arc::new(move |_, _| req.clone());
                self.timed(name, target, make, None, "journal-uncached")
                    .await
            }
            "single-entry-hit" => {
                if self.entry_ids.is_empty() {
                    bail!("the heavy user has no entries: seed first");
                }
                let reqs: Vec<Req> = self
                    .entry_ids
                    .iter()
                    .map(|id| {
                        Req::get(format!("/api/journal/entries/{id}"))
                            .header(AUTHORIZATION, self.heavy_auth.clone())
                    })
                    .collect();
                let make: RequestFn =
                    Arc::new(move |c, n| reqs[(c * 7 + n as usize) % reqs.len()].clone());
                self.timed(name, &self.journal, make, None, "journal").await
            }
            "write-read-mix" => {
                let users = self.other_auth.clone();
                let bodies: Arc<Vec<Bytes>> = Arc::new((0..64).map(entry_body).collect());
                let make: RequestFn = Arc::new(move |c, n| {
                    let auth = users[c % users.len()].clone();
                    if n % 10 == 9 {
                        Req::get("/api/journal/entries")
                            .header(AUTHORIZATION, auth)
                            .json(
                                Method::POST,
                                bodies[(n as usize + c) % bodies.len()].clone(),
                            )
                    } else {
                        Req::get(list).header(AUTHORIZATION, auth)
                    }
                });
                self.timed(name, &self.journal, make, None, "journal").await
            }
            "conversation-list" => {
                let Some(target) = &self.conversation else {
                    eprintln!("  {name}: skipped (no conversation-service)");
                    return Ok(None);
                };
                let req = Req::get("/api/conversations?limit=20")
                    .header(AUTHORIZATION, self.heavy_auth.clone());
                let make: RequestFn = Arc::new(move |_, _| req.clone());
                self.timed(name, target, make, Some("conversation"), "conversation")
                    .await
            }
            "profile-read" => {
                let (Some(target), Some(auth)) = (&self.profile, &self.profile_auth) else {
                    eprintln!("  {name}: skipped (no profile-service)");
                    return Ok(None);
                };
                let req = Req::get("/api/profile").header(AUTHORIZATION, auth.clone());
                let make: RequestFn = Arc::new(move |_, _| req.clone());
                self.timed(name, target, make, Some("profile"), "profile")
                    .await
            }
            "cold-key-stampede" => self.stampede().await.map(Some),
            other => bail!(
                "unknown scenario {other:?}; known: all, {}",
                ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// A fixed-duration run (after a warm-up), with /metrics read before and after.
    async fn timed(
        &self,
        name: &str,
        target: &Target,
        make: RequestFn,
        rss_of: Option<&str>,
        service: &str,
    ) -> Result<Option<Outcome>> {
        if !self.warmup.is_zero() {
            load::run(
                &format!("{name} (warm-up)"),
                target,
                self.connections,
                self.warmup,
                make.clone(),
                || {},
            )
            .await?;
        }
        let pid = rss_of.and_then(|s| self.pid(s));
        let mut peak: Option<f64> = None;
        let before = snapshot(target).await?;
        let service_pid = self.pid(service);
        let costs_before = Reading::take(service_pid, self.redis.as_ref()).await;
        let out = load::run(name, target, self.connections, self.duration, make, || {
            if let Some(rss) = pid.and_then(rss_mib) {
                peak = Some(peak.map_or(rss, |p: f64| p.max(rss)));
            }
        })
        .await?;
        let costs_after = Reading::take(service_pid, self.redis.as_ref()).await;
        let unit_costs = costs_before.per_request(&costs_after, out.requests);
        let delta = before.delta(&snapshot(target).await?);
        let secs = out.elapsed.as_secs_f64();
        let mut notes: Vec<String> = out
            .error_samples
            .iter()
            .map(|e| format!("error: {e}"))
            .collect();
        notes.push(format!(
            "{:.0} PostgreSQL statements ({:.2} per request)",
            delta.db_statements,
            delta.db_statements / out.requests.max(1) as f64
        ));
        if let Some(p) = peak {
            notes.push(format!("peak RSS of {}: {p:.1} MiB", rss_of.unwrap_or("?")));
        }
        Ok(Some(Outcome {
            result: ScenarioResult {
                name: name.to_owned(),
                description: description(name),
                connections: self.connections,
                duration_s: secs,
                requests: out.requests,
                errors: out.errors,
                requests_per_s: out.requests as f64 / secs,
                latency: Latency::from_micros(&out.histogram),
                cache_hit_rate: delta.hit_rate(),
                db_statements: Some(delta.db_statements),
                unit_costs: Some(unit_costs),
                notes,
            },
            peak_rss: peak.map(|p| (rss_of.unwrap_or_default().to_owned(), p)),
        }))
    }

    /// Invalidate a user (one write), then `stampede` concurrent requests for a
    /// key nobody has read; count the list loads PostgreSQL ran.
    async fn stampede(&self) -> Result<Outcome> {
        let name = "cold-key-stampede";
        let target = &self.journal;
        let auth = self
            .other_auth
            .last()
            .context("no other users' tokens")?
            .clone();
        let mut conn = Conn::open(target).await?;
        // What one list miss costs in statements (measured, not assumed).
        let key = |size: u32| format!("/api/journal/entries?page=1&page_size={size}");
        let post = Req::get("/api/journal/entries")
            .header(AUTHORIZATION, auth.clone())
            .json(Method::POST, entry_body(0));
        let (status, _, body) = conn.send(&post).await?;
        if status != 201 {
            bail!("POST entry → {status}: {}", String::from_utf8_lossy(&body));
        }
        let before = snapshot(target).await?;
        let (status, headers, _) = conn
            .send(&Req::get(key(41)).header(AUTHORIZATION, auth.clone()))
            .await?;
        let per_miss = before.delta(&snapshot(target).await?).db_statements;
        let single_cache = headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        if status != 200 || per_miss < 1.0 {
            bail!("calibration read → {status}, X-Cache {single_cache}, {per_miss} statements");
        }

        // The stampede: a write, then N requests at once for a never-read key.
        let (status, _, _) = conn.send(&post).await?;
        if status != 201 {
            bail!("POST entry → {status}");
        }
        let before = snapshot(target).await?;
        let started = std::time::Instant::now();
        let answers = load::burst(
            target,
            self.stampede,
            Req::get(key(37)).header(AUTHORIZATION, auth),
        )
        .await?;
        let elapsed = started.elapsed();
        let delta = before.delta(&snapshot(target).await?);
        let mut hist = histogram();
        let (mut errors, mut misses, mut hits) = (0, 0, 0);
        for (status, cache, us) in &answers {
            let _ = hist.record((*us).max(1));
            if *status != 200 {
                errors += 1;
            }
            match cache.as_str() {
                "MISS" => misses += 1,
                "HIT" => hits += 1,
                _ => {}
            }
        }
        let loads = delta.db_statements / per_miss;
        let notes = vec![
            format!(
                "{} concurrent requests → {:.0} PostgreSQL statements = {loads:.1} list load(s) (one miss costs {per_miss:.0} statements); target: 1",
                answers.len(),
                delta.db_statements
            ),
            format!(
                "X-Cache: {misses} MISS, {hits} HIT (waiters on the single flight report MISS or HIT as the engine labels them)"
            ),
        ];
        Ok(Outcome {
            result: ScenarioResult {
                name: name.to_owned(),
                description: description(name),
                connections: self.stampede,
                duration_s: elapsed.as_secs_f64(),
                requests: answers.len() as u64,
                errors,
                requests_per_s: answers.len() as f64 / elapsed.as_secs_f64(),
                latency: Latency::from_micros(&hist),
                cache_hit_rate: delta.hit_rate(),
                db_statements: Some(delta.db_statements),
                unit_costs: None,
                notes,
            },
            peak_rss: None,
        })
    }
}
