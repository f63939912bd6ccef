//! conversation-service: a user's conversations with the assistant — their
//! messages, lists with counts and last messages, bulk imports — and the
//! assistant's replies, fetched from an OpenAI-compatible LLM through the
//! AI-response cache, on the kai-shared platform.

/// The assistant's reply to one message, through the AI-response cache.
pub mod assistant;
/// Which reads are cached for how long, and which writes invalidate them.
pub mod cache_rules;
/// The service's own settings (the LLM endpoint).
pub mod config;
/// Account erasure: purging a deleted user's data when profile-service says so.
pub mod erasure;
/// `GET /api/conversations/export`: every conversation with its messages, streamed as NDJSON.
pub mod export;
/// The chat-completions client and the offline responder.
pub mod llm;
/// Request and response shapes, and their validation.
pub mod model;
/// The SQL, one function per statement.
pub mod queries;
/// HTTP handlers.
pub mod routes;

use std::sync::Arc;

use actix_web::web;
use kai_shared::ServiceDef;
use kai_shared::db::MigrationSet;
use utoipa::OpenApi;

pub const DEFAULT_PORT: u16 = 8082;

/// The binary, as `kai_shared::server::main` starts it.
pub const BINARY: kai_shared::server::Binary = kai_shared::server::Binary {
    name: "conversation",
    default_port: DEFAULT_PORT,
    signs_tokens: false,
};

mod embedded {
    refinery::embed_migrations!("../../migrations/conversation");
}

pub const MIGRATIONS: MigrationSet = MigrationSet {
    schema: "conversation",
    runner: embedded::migrations::runner,
};

/// The service as the platform runs it; fails only if the LLM client cannot be built.
pub fn try_service(settings: &config::LlmSettings) -> anyhow::Result<ServiceDef> {
    // One client for every worker: it holds the connection pool to the LLM.
    let llm = web::Data::new(llm::Llm::new(settings)?);
    Ok(ServiceDef {
        name: BINARY.name,
        default_port: DEFAULT_PORT,
        migrations: MIGRATIONS,
        routes: Arc::new(move |cfg| routes::configure(cfg, llm.clone())),
        openapi: routes::ApiDoc::openapi(),
        cached: &cache_rules::CACHED,
        outcome_counters: &[assistant::LLM_REQUESTS],
        session_check: None,
        on_start: Some(Arc::new(erasure::start)),
    })
}

/// [`try_service`] for tests and embedders, where a failure to build an HTTP
/// client is a bug rather than a configuration error.
pub fn service(settings: &config::LlmSettings) -> ServiceDef {
    try_service(settings).expect("the LLM client builds")
}
