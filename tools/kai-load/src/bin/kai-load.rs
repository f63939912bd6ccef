//! kai-load: seeds realistic data, runs named load scenarios against Kai's
//! services, prints a table per scenario and writes a JSON report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyper::header::HeaderValue;
use kai_load::load::{Conn, Req, Target};
use kai_load::report::{self, Machine, Report, ServiceResources};
use kai_load::scenarios::{ALL, Ctx};
use kai_load::{parse_duration, seed, spawn};

/// Load-tests Kai: seeds data (one user with 1,000 journal entries, 1,000 users
/// with 50 each, conversations with messages, a registered profile), then runs
/// named scenarios for a fixed time and concurrency. With --spawn it starts the
/// release binaries itself (journal twice: cached and CACHE_ENABLED=false).
#[derive(Parser, Debug)]
// A flag given twice takes its last value (scripts/load passes defaults, a caller
// may repeat them: `scripts/load --duration 30s`).
#[command(version, args_override_self = true)]
struct Args {
    /// How long each scenario runs (e.g. 10s, 500ms, 1m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Un-measured warm-up before each scenario
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Concurrent keep-alive connections
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// `all`, or scenario names separated by commas
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Concurrent requests of the cold-key stampede
    #[arg(long, default_value_t = 200)]
    stampede: usize,
    /// JSON report file
    #[arg(long, default_value = "reports/load.json")]
    report: PathBuf,
    /// Start the services from --bin-dir (migrate, then serve on free ports)
    #[arg(long)]
    spawn: bool,
    /// Where the release binaries are
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Tokio worker threads of the load generator
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/kai_load"
    )]
    database_url: String,
    /// Redis for the spawned services; with --spawn its database is FLUSHDB'd before and after
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/5")]
    redis_url: String,
    /// PKCS#8 PEM Ed25519 key the running services' tokens are signed with (mints
    /// tokens); unset: kai-load's development key (what --spawn gives the services)
    #[arg(long, env = "AUTH_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,
    /// Lifetime of minted tokens; at most the services' AUTH_TOKEN_TTL_SECS (with
    /// --spawn the services are given this value)
    #[arg(long, env = "AUTH_TOKEN_TTL_SECS", default_value_t = 3600)]
    token_ttl_secs: u64,
    /// Running services, when not --spawn
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    journal: String,
    /// A journal-service with CACHE_ENABLED=false (uncached-list), when not --spawn
    #[arg(long)]
    journal_uncached: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    conversation: String,
    #[arg(long, default_value = "http://127.0.0.1:8083")]
    profile: String,
    /// Logins of the load-test account before the scenarios (profile-service's
    /// RSS after them is reported: each is an argon2id hash)
    #[arg(long, default_value_t = 100)]
    logins: usize,
    /// Delete and re-insert the seeded rows even if present
    #[arg(long)]
    reseed: bool,
    /// Drop the database of --database-url first (a newcomer's first run: an empty
    /// database, created, migrated and seeded from nothing)
    #[arg(long)]
    fresh_database: bool,
    /// After the scenarios, run kai-verify's checks against the same services
    #[arg(long)]
    verify: bool,
    /// Directory for the spawned services' logs
    #[arg(long, default_value = "reports/logs")]
    log_dir: PathBuf,
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("soak") {
        let _ = rustls::crypto::ring::default_provider().install_default();
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(kai_load::soak::main(argv[1..].to_vec()));
    }
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn flush_redis(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut con).await?;
    Ok(())
}

fn auth_header(token: &str) -> Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// Registers the load-test account, logs in `logins` times (4 clients at once:
/// each login is an argon2id verification, until the account's budget for
/// unknown devices refuses them), PATCHes the profile; returns the first
/// login's token.
async fn profile_token(profile: &Target, logins: usize) -> Result<String> {
    let http = reqwest::Client::new();
    let base = profile.url();
    let email = "kai-load-profile@example.com";
    let password = "kai-load-password";
    let r = http
        .post(format!("{base}/api/auth/register"))
        .json(&serde_json::json!({"email": email, "password": password, "display_name": "Load Tester"}))
        .send()
        .await?;
    if !(r.status() == 201 || r.status() == 409) {
        bail!("register → {}: {}", r.status(), r.text().await?);
    }
    // Each login as if from its own client (X-Forwarded-For, believed because
    // --spawn gives the services TRUSTED_PROXIES=127.0.0.1/32; only a header, no
    // traffic goes there), so the per-client login limit is not what is measured.
    // Against a deployment that does not trust us, the limit answers 429 and the
    // login is skipped.
    let login = |n: usize| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .post(format!("{base}/api/auth/login"))
                .header(
                    "x-forwarded-for",
                    format!("198.18.{}.{}", n / 250, 1 + n % 250),
                )
                .json(&serde_json::json!({"email": email, "password": password}))
                .send()
                .await?;
            if r.status() == 429 {
                return Ok(None);
            }
            r.error_for_status()?
                .json::<serde_json::Value>()
                .await
                .map(Some)
        }
    };
    // The token the scenarios use first: every attempt from a client without the
    // account's device token draws on the account's budget (10 per 15 minutes),
    // so the logins that follow, from made-up clients, run it dry.
    let login_token = login(0)
        .await?
        .context("the login was refused with 429 (rate limit)")?;
    let (mut done, mut limited) = (0, 0);
    for batch in (1..logins).collect::<Vec<_>>().chunks(4) {
        for r in futures_util::future::join_all(batch.iter().map(|n| login(*n))).await {
            match r? {
                Some(_) => done += 1,
                None => limited += 1,
            }
        }
    }
    let login = login_token;
    eprintln!(
        "profile: {} logins ({limited} refused by the rate limit)",
        done + 1
    );
    let token = login["access_token"]
        .as_str()
        .context("login answered no access_token")?
        .to_owned();
    http.patch(format!("{base}/api/profile"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "traits": {"tone": "warm", "goals": ["sleep better", "worry less"], "openness": 0.7},
            "preferences": {"language": "en", "reminders": {"evening": "21:30"}},
            "communication_style": "gentle, short answers, ask before giving advice",
        }))
        .send()
        .await?
        .error_for_status()?;
    Ok(token)
}

async fn is_up(target: &Target) -> bool {
    match Conn::open(target).await {
        Ok(mut c) => matches!(c.send(&Req::get("/health/ready")).await, Ok((200, _, _))),
        Err(_) => false,
    }
}

async fn run(args: Args) -> Result<()> {
    let names: Vec<&str> = if args.scenario == "all" {
        ALL.iter().map(|(n, _)| *n).collect()
    } else {
        args.scenario.split(',').map(str::trim).collect()
    };
    for n in &names {
        if !ALL.iter().any(|(k, _)| k == n) {
            bail!(
                "unknown scenario {n:?}; known: all, {}",
                ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let machine = Machine::detect();
    eprintln!(
        "kai-load: {} × {}, {} connections, {:?} per scenario",
        machine.cpus, machine.cpu_model, args.connections, args.duration
    );

    if args.fresh_database {
        seed::drop_database(&args.database_url).await?;
    }
    let db = seed::connect_creating(&args.database_url).await?;
    let mut spawned = Vec::new();
    let mut idle_rss = Vec::new();
    let (journal, journal_uncached, conversation, profile);
    if args.spawn {
        flush_redis(&args.redis_url)
            .await
            .context("FLUSHDB on --redis-url")?;
        let mut env = vec![
            ("DATABASE_URL".to_owned(), args.database_url.clone()),
            ("REDIS_URL".to_owned(), args.redis_url.clone()),
            (
                "AUTH_TOKEN_TTL_SECS".to_owned(),
                args.token_ttl_secs.to_string(),
            ),
            // --logins come "from" many clients (X-Forwarded-For) through us.
            ("TRUSTED_PROXIES".to_owned(), "127.0.0.1/32".to_owned()),
        ];
        env.extend(kai_load::dev_auth_env());
        let bins = [
            ("journal", "journal-service"),
            ("conversation", "conversation-service"),
            ("profile", "profile-service"),
        ];
        for (_, bin) in bins {
            spawn::migrate(&spawn::binary(&args.bin_dir, bin)?, &env).await?;
        }
        let mut uncached_env = env.clone();
        uncached_env.push(("CACHE_ENABLED".into(), "false".into()));
        // profile first: it marks the revoked set complete in Redis, which
        // journal and conversation wait for before they are ready (they fail
        // closed without it).
        for (name, bin, env) in [
            ("profile", "profile-service", &env),
            ("journal", "journal-service", &env),
            ("journal-uncached", "journal-service", &uncached_env),
            ("conversation", "conversation-service", &env),
        ] {
            let s = spawn::start(
                name,
                &spawn::binary(&args.bin_dir, bin)?,
                env,
                &args.log_dir,
            )
            .await?;
            eprintln!(
                "started {name} (pid {}) on {} — ready in {:.0} ms",
                s.pid,
                s.target.url(),
                s.start_to_ready.as_secs_f64() * 1000.0
            );
            // Idle: started, migrated, nothing served yet but the readiness probe.
            idle_rss.push(spawn::rss_mib(s.pid));
            spawned.push(s);
        }
        profile = Some(spawned[0].target.clone());
        journal = spawned[1].target.clone();
        journal_uncached = Some(spawned[2].target.clone());
        conversation = Some(spawned[3].target.clone());
    } else {
        journal = Target::parse(&args.journal)?;
        journal_uncached = args
            .journal_uncached
            .as_deref()
            .map(Target::parse)
            .transpose()?;
        let c = Target::parse(&args.conversation)?;
        conversation = is_up(&c).await.then_some(c);
        let p = Target::parse(&args.profile)?;
        profile = is_up(&p).await.then_some(p);
    }

    seed::journal(&db, args.reseed).await?;
    if conversation.is_some() {
        seed::conversations(&db, args.reseed).await?;
    }
    let profile_auth = match &profile {
        Some(p) => Some(auth_header(&profile_token(p, args.logins).await?)?),
        None => None,
    };
    let authenticator = kai_load::minting_authenticator(
        if args.spawn {
            None
        } else {
            args.signing_key_file.as_deref()
        },
        Duration::from_secs(args.token_ttl_secs),
    )?;
    let mint = |user| -> Result<HeaderValue> {
        let (token, _) = authenticator
            .mint(user, uuid::Uuid::new_v4())
            .map_err(|e| anyhow::anyhow!("minting a token: {e}"))?;
        auth_header(&token)
    };
    let other_auth = (0..seed::OTHER_USERS)
        .map(|i| mint(seed::other_user(i)))
        .collect::<Result<Vec<_>>>()?;
    let ctx = Ctx {
        heavy_auth: mint(seed::heavy_user())?,
        other_auth,
        profile_auth,
        entry_ids: seed::entry_ids(&db, seed::heavy_user(), 100).await?,
        journal,
        journal_uncached,
        conversation,
        profile,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        stampede: args.stampede,
        pids: spawned.iter().map(|s| (s.name.clone(), s.pid)).collect(),
        redis: redis::Client::open(args.redis_url.as_str()).ok(),
    };

    let mut resources: Vec<ServiceResources> = spawned
        .iter()
        .zip(&idle_rss)
        .map(|(s, idle)| ServiceResources {
            name: s.name.clone(),
            start_to_ready_ms: Some(s.start_to_ready.as_secs_f64() * 1000.0),
            idle_rss_mib: *idle,
            after_setup_rss_mib: spawn::rss_mib(s.pid),
            peak_rss_under_load_mib: None,
            end_rss_mib: None,
        })
        .collect();

    let mut results = Vec::new();
    for name in &names {
        eprintln!("▶ {name}");
        let Some(outcome) = ctx.run(name).await? else {
            continue;
        };
        print!("{}", report::scenario_block(&outcome.result));
        if let Some((service, rss)) = outcome.peak_rss
            && let Some(r) = resources.iter_mut().find(|r| r.name == service)
        {
            r.peak_rss_under_load_mib = Some(r.peak_rss_under_load_mib.unwrap_or(0.0).max(rss));
        }
        results.push(outcome.result);
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    for (r, s) in resources.iter_mut().zip(&spawned) {
        r.end_rss_mib = spawn::rss_mib(s.pid);
    }
    println!("\n{}", report::summary_table(&results));
    println!("{}", report::costs_table(&results));
    let footprint = match &ctx.redis {
        Some(c) if args.spawn => match kai_load::costs::redis_footprint(c).await {
            Ok(f) => {
                println!(
                    "Redis (logical DB of --redis-url): {} keys, {} bytes; {} entries, {} bytes ({:.0} bytes per entry)\n",
                    f.keys,
                    f.bytes,
                    f.entry_keys,
                    f.entry_bytes,
                    f.entry_bytes as f64 / f.entry_keys.max(1) as f64
                );
                Some(f)
            }
            Err(e) => {
                eprintln!("Redis footprint not measured: {e:#}");
                None
            }
        },
        _ => None,
    };
    if !resources.is_empty() {
        println!("{}", report::resources_table(&resources));
    }
    let report = Report {
        started_at: chrono::Utc::now().to_rfc3339(),
        machine,
        settings: serde_json::json!({
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "connections": args.connections,
            "client_threads": args.client_threads,
            "stampede": args.stampede,
            "spawn": args.spawn,
        }),
        scenarios: results,
        services: resources,
        redis_footprint: footprint,
    };
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)?)?;
    eprintln!("report written to {}", args.report.display());
    let mut verify_failed = false;
    if args.verify {
        println!("\nkai-verify against the same services:");
        let d = kai_load::verify::Deployment {
            journal: ctx.journal.url(),
            conversation: ctx.conversation.as_ref().map(Target::url),
            profile: ctx.profile.as_ref().map(Target::url),
            database_url: Some(args.database_url.clone()),
            redis_url: Some(args.redis_url.clone()),
            signing_key_file: if args.spawn {
                Some(PathBuf::from(&kai_load::dev_keys().1))
            } else {
                args.signing_key_file.clone()
            },
        };
        let c = kai_load::verify::run(&d).await?;
        println!(
            "{} passed, {} warnings, {} failed",
            c.passed, c.warnings, c.failures
        );
        verify_failed = c.failures > 0;
    }
    spawn::stop_all(spawned).await;
    if args.spawn {
        flush_redis(&args.redis_url).await?;
    }
    if verify_failed {
        bail!("kai-verify found failures");
    }
    Ok(())
}
