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
/// Per-user limits: assistant messages, exports, imports, creates.
pub mod limits;
/// The chat-completions client and the offline responder.
pub mod llm;
/// Request and response shapes, and their validation.
pub mod model;
/// The SQL, one function per statement.
pub mod queries;
/// HTTP handlers.
pub mod routes;

use actix_web::web;
use kai_platform::ServiceDef;
use kai_platform::server::Binary;

/// The binary, as `kai_platform::server::main` starts it.
pub const BINARY: Binary = Binary::new("conversation", 8082);

kai_shared::migrations!("conversation", "../../migrations/conversation");

/// The service as the platform runs it; fails only if the LLM client cannot be built.
pub fn try_service(settings: &config::LlmSettings) -> anyhow::Result<ServiceDef> {
    // One client for every worker: it holds the connection pool to the LLM.
    let llm = web::Data::new(llm::Llm::new(settings)?);
    let limits = web::Data::new(limits::Limits::new(&settings.limits));
    let routes =
        move |cfg: &mut web::ServiceConfig| routes::configure(cfg, llm.clone(), limits.clone());
    Ok(
        ServiceDef::new::<routes::ApiDoc>(BINARY, MIGRATIONS, routes)
            .caching(&cache_rules::CACHED)
            .counting(&[assistant::LLM_REQUESTS, limits::RATE_LIMITED])
            .on_start(erasure::start),
    )
}

/// [`try_service`] for tests and embedders, where a failure to build an HTTP
/// client is a bug rather than a configuration error.
pub fn service(settings: &config::LlmSettings) -> ServiceDef {
    try_service(settings).expect("the LLM client builds")
}
