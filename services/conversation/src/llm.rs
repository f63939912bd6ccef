//! The assistant's voice: an OpenAI-compatible chat-completions client, or — with
//! no `LLM_BASE_URL` — a built-in offline responder, so the service works (and
//! its tests run) without any model.
//!
//! Each call sends two messages: a system message (who Kai is, plus the user's
//! communication-style hint) and the user's message. No history: the reply is
//! cached by message and style alone ([`crate::assistant`]), so it may depend on
//! nothing else.
//!
//! Message text is the user's most private data: it is sent to the model and
//! nowhere else — never logged, never put in an error.

use std::time::Duration;

use crate::config::LlmSettings;
use kai_http::ApiError;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::MAX_CONTENT_CHARS;

/// Who the assistant is, whatever the style.
const PERSONA: &str = "You are Kai, a warm and supportive companion in a mental-wellness app. \
Listen closely, reflect what the person feels, and ask gentle, open questions. \
You are not a therapist and do not diagnose; if someone may be in danger, \
encourage them to contact local emergency services or a crisis line.";

/// Why the model gave no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// → 504.
    #[error("the language model did not answer within {0:?}")]
    Timeout(Duration),
    /// → 502: connection refused, an error status, an unreadable or empty answer.
    #[error("the language model failed: {0}")]
    Upstream(String),
}

/// Every request that waited for one LLM call through the AI-response cache
/// gets its answer.
impl kai_http::errors::Answer for LlmError {
    fn answer(&self) -> ApiError {
        self.clone().into()
    }
}

impl From<LlmError> for ApiError {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::Timeout(_) => ApiError::GatewayTimeout(
                "the assistant took too long to answer; your message was saved".into(),
            ),
            LlmError::Upstream(_) => ApiError::BadGateway(
                "the assistant is unavailable right now; your message was saved".into(),
            ),
        }
    }
}

/// The chat-completions client (or the offline responder).
pub struct Llm {
    backend: Backend,
}

enum Backend {
    Remote(Remote),
    Offline,
}

struct Remote {
    client: reqwest::Client,
    url: String,
    api_key: Option<SecretString>,
    model: String,
    timeout: Duration,
    max_tokens: u32,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage<'a>; 2],
    /// The most one reply may cost (`LLM_MAX_TOKENS`).
    max_tokens: u32,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

impl Llm {
    pub fn new(settings: &LlmSettings) -> anyhow::Result<Self> {
        let Some(base) = &settings.base_url else {
            return Ok(Self {
                backend: Backend::Offline,
            });
        };
        // reqwest is built without a default crypto provider (one provider for
        // the whole workspace); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| anyhow::anyhow!("building the LLM HTTP client: {e}"))?;
        Ok(Self {
            backend: Backend::Remote(Remote {
                client,
                url: format!("{}/chat/completions", base.trim_end_matches('/')),
                api_key: settings.api_key.clone(),
                model: settings.model.clone(),
                timeout: settings.timeout,
                max_tokens: settings.max_tokens,
            }),
        })
    }

    /// True when no `LLM_BASE_URL` is configured.
    pub fn is_offline(&self) -> bool {
        matches!(self.backend, Backend::Offline)
    }

    /// The assistant's reply to `content`, spoken in `style` when given.
    pub async fn reply(&self, style: Option<&str>, content: &str) -> Result<String, LlmError> {
        match &self.backend {
            Backend::Offline => Ok(offline_reply(content)),
            Backend::Remote(remote) => remote.complete(&system_prompt(style), content).await,
        }
    }
}

impl Remote {
    async fn complete(&self, system: &str, content: &str) -> Result<String, LlmError> {
        let body = ChatRequest {
            model: &self.model,
            messages: [
                ChatMessage {
                    role: "system",
                    content: system,
                },
                ChatMessage {
                    role: "user",
                    content,
                },
            ],
            max_tokens: self.max_tokens,
        };
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                LlmError::Timeout(self.timeout)
            } else {
                LlmError::Upstream(e.without_url().to_string())
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            tracing::warn!(
                status = status.as_u16(),
                "the LLM answered with an error status"
            );
            return Err(LlmError::Upstream(format!("status {status}")));
        }
        let parsed: ChatResponse = response.json().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout(self.timeout)
            } else {
                LlmError::Upstream("unreadable answer".into())
            }
        })?;
        let text = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            // PostgreSQL text cannot hold NUL: a model that emits one must not
            // turn the exchange into a 500 (nor its reply into a cached one).
            .map(|t| t.replace('\0', "").trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LlmError::Upstream("an answer without content".into()))?;
        // A message is at most 20,000 characters (the table says so too).
        Ok(match text.char_indices().nth(MAX_CONTENT_CHARS) {
            Some((cut, _)) => text[..cut].to_owned(),
            None => text,
        })
    }
}

/// The system message: the persona, plus the user's style hint.
pub fn system_prompt(style: Option<&str>) -> String {
    match style {
        Some(style) => format!("{PERSONA}\nCommunication style the person asked for: {style}"),
        None => PERSONA.to_owned(),
    }
}

/// Feeling words the offline responder recognises: a word stem, and how to name it.
const FEELINGS: &[(&str, &str)] = &[
    ("anxi", "anxious"),
    ("nervous", "nervous"),
    ("worr", "worried"),
    ("stress", "stressed"),
    ("overwhelm", "overwhelmed"),
    ("sad", "sad"),
    ("down", "low"),
    ("depress", "low"),
    ("lonel", "lonely"),
    ("alone", "lonely"),
    ("tired", "tired"),
    ("exhaust", "exhausted"),
    ("angr", "angry"),
    ("frustrat", "frustrated"),
    ("scared", "afraid"),
    ("afraid", "afraid"),
    ("fear", "afraid"),
    ("happ", "happy"),
    ("grateful", "grateful"),
    ("thankful", "grateful"),
    ("excit", "excited"),
    ("calm", "calm"),
    ("proud", "proud"),
];

const OPENINGS: &[&str] = &[
    "Thank you for sharing that with me.",
    "I'm really glad you told me about this.",
    "That sounds like a lot to hold.",
    "I hear you, and I'm here with you.",
];

const QUESTIONS: &[&str] = &[
    "What feels most important to you about it right now?",
    "What would help you feel a little more supported today?",
    "How has this been sitting with you?",
    "Would you like to tell me more about what led up to it?",
];

/// The offline responder: a short empathetic reflection chosen deterministically
/// from the message. It names at most one feeling word from a fixed list and
/// never repeats the user's own words back.
pub fn offline_reply(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    let pick = |items: &[&'static str], byte: u8| items[usize::from(byte) % items.len()];
    let lower = content.to_lowercase();
    let feeling = lower.split(|c: char| !c.is_alphabetic()).find_map(|word| {
        FEELINGS
            .iter()
            .find(|(stem, _)| word.starts_with(stem))
            .map(|(_, name)| *name)
    });
    let question = pick(QUESTIONS, digest[1]);
    match feeling {
        Some(name) => {
            format!("It sounds like you're feeling {name}, and that makes sense. {question}")
        }
        None => format!("{} {question}", pick(OPENINGS, digest[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offline_responder_is_deterministic_and_names_a_feeling() {
        let a = offline_reply("I've been so anxious about work lately");
        assert_eq!(a, offline_reply("I've been so anxious about work lately"));
        assert!(a.contains("anxious"), "{a}");
        assert!(!a.contains("work"), "never echoes the user's words: {a}");
        let b = offline_reply("Today was a regular Tuesday");
        assert!(!b.is_empty() && !b.contains("Tuesday"), "{b}");
    }

    #[test]
    fn the_system_prompt_carries_the_style_hint() {
        assert!(system_prompt(Some("brief and direct")).contains("brief and direct"));
        assert_eq!(system_prompt(None), PERSONA);
    }

    #[test]
    fn errors_map_to_gateway_statuses() {
        use actix_web::ResponseError;
        assert_eq!(
            ApiError::from(LlmError::Timeout(Duration::from_secs(1))).status_code(),
            504
        );
        assert_eq!(
            ApiError::from(LlmError::Upstream("x".into())).status_code(),
            502
        );
    }
}
