//! The assistant's reply to one message, through the AI-response cache.
//!
//! The cache key is `ai:response:{user_id}:{sha256(style "\n" content)}` in the
//! user's "ai" scope, which conversation writes never invalidate: the same
//! message with the same style from the same user reaches the LLM once per TTL
//! (24 h), and concurrent identical messages share one call (single-flight).
//! Failures are not cached, so a retry after a 502/504 asks the model again.
//!
//! `kai_llm_requests_total{outcome}` counts what happened: `success`, `error`
//! and `timeout` for calls made, `cached` for replies served from the cache.

use kai_http::ApiError;
use kai_platform::Platform;
use kai_shared::cache::CacheStatus;
use kai_shared::metrics::OutcomeCounter;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache_rules::{AI_RESPONSE, ai_response_key, ai_scope};
use crate::llm::{Llm, LlmError};

pub const SUCCESS: &str = "success";
pub const CACHED: &str = "cached";
pub const ERROR: &str = "error";
pub const TIMEOUT: &str = "timeout";
pub const OUTCOMES: [&str; 4] = [SUCCESS, CACHED, ERROR, TIMEOUT];

/// `kai_llm_requests_total{outcome}` (SPEC §5).
pub const LLM_REQUESTS: OutcomeCounter = OutcomeCounter {
    name: "kai_llm_requests_total",
    help: "LLM requests by outcome",
    outcomes: &OUTCOMES,
};

/// A reply and whether it came from the cache.
#[derive(Debug)]
pub struct Reply {
    pub content: String,
    pub cached: bool,
}

pub async fn reply(
    p: &Platform,
    llm: &Llm,
    user_id: Uuid,
    style: Option<&str>,
    content: &str,
) -> Result<Reply, ApiError> {
    let metrics = &p.metrics;
    let key = ai_response_key(user_id, &prompt_hash(style, content));
    let cached = p
        .cache
        .get_or_load(&ai_scope(user_id), &AI_RESPONSE, &key, || async {
            let result = llm.reply(style, content).await;
            let outcome = match &result {
                Ok(_) => SUCCESS,
                Err(LlmError::Timeout(_)) => TIMEOUT,
                Err(LlmError::Upstream(_)) => ERROR,
            };
            metrics.count_outcome(&LLM_REQUESTS, outcome);
            result.map(Some)
        })
        .await?;
    let hit = cached.status == CacheStatus::Hit;
    if hit {
        metrics.count_outcome(&LLM_REQUESTS, CACHED);
    }
    let content: String = serde_json::from_slice(&cached.entry.body).map_err(ApiError::internal)?;
    Ok(Reply {
        content,
        cached: hit,
    })
}

/// What the reply depends on, hashed: the style hint and the message.
pub fn prompt_hash(style: Option<&str>, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(style.unwrap_or("").as_bytes());
    hasher.update(b"\n");
    hasher.update(content.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_style_and_content() {
        let plain = prompt_hash(None, "hello");
        assert_eq!(plain, prompt_hash(Some(""), "hello"));
        assert_ne!(plain, prompt_hash(Some("brief"), "hello"));
        assert_ne!(plain, prompt_hash(None, "hello!"));
        assert_eq!(plain.len(), 64);
    }
}
