//! conversation-service end to end: the real application on a random port, a
//! fresh PostgreSQL database, a private Redis key prefix and (where a test needs
//! one) a fake OpenAI-compatible LLM per test.

mod batch;
mod cache;
mod conversations;
mod counts;
mod export;
mod fake_llm;
mod helpers;
mod limits;
mod lists;
mod messages;
mod platform;
