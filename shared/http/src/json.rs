//! The request-body extractor every service route uses: [`Json<T, LIMIT>`].
//!
//! Why not `actix_web::web::Json`: it accepts any JSON value serde can turn into
//! `T` — a struct from an *array* (`["text", "title", 5]`), errors that name no
//! field and quote Rust types (`invalid type: integer, expected i16`) —, it lets
//! text through that PostgreSQL refuses (a NUL character, `\u0000`, anywhere in
//! a string or object key, nested JSON included: a 500 from the INSERT), it has
//! one body limit per application, and it waits for a slow body forever. This one,
//! in order:
//!
//! 1. `Content-Type` must be `application/json` or `application/<anything>+json`,
//!    else **415**.
//! 2. A `Content-Length` over `LIMIT` is **413** before a byte is read; a body
//!    that grows past `LIMIT` while streaming (chunked) is **413** as soon as it does.
//! 3. The whole body must arrive within `REQUEST_BODY_TIMEOUT_MS` (10 s) of the
//!    handler asking for it, else **408** (slow-loris: the server already cuts
//!    request *heads* at 10 s; without this, one byte a second holds a connection
//!    for ever).
//! 4. The body must be a JSON object (**400** otherwise).
//! 5. No string or key may hold NUL: **400** naming each JSON path
//!    (`traits.sleep["a b"]`, `messages[3].content`).
//! 6. Deserialization errors name the JSON path of the field
//!    ([`serde_path_to_error`]) and say what was expected in plain words
//!    (`content`: "must be a string, not a number"); JSON PostgreSQL cannot hold
//!    — a lone surrogate such as `"\ud800"`, a number like `1e400` — is a 400
//!    naming the field too.
//!
//! `LIMIT` is a const parameter so a route's limit is in its signature:
//! `Json<Batch, { 4 * 1024 * 1024 }>`. Nothing global caps it (the
//! extractor reads the payload itself; `PayloadConfig`/`JsonConfig` do not apply).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::MAX_BODY_BYTES;
use super::errors::{ApiError, FieldError};

/// How long a body may take to arrive when no platform settings are at hand
/// (the setting `REQUEST_BODY_TIMEOUT_MS` has the same default).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON object body of at most `LIMIT` bytes, decoded into `T` (see the
/// module documentation for what is refused, and how).
#[derive(Debug)]
pub struct Json<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

impl<T, const LIMIT: usize> Json<T, LIMIT> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T, const LIMIT: usize> std::ops::Deref for Json<T, LIMIT> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T, const LIMIT: usize> std::ops::DerefMut for Json<T, LIMIT> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: DeserializeOwned + 'static, const LIMIT: usize> FromRequest for Json<T, LIMIT> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        if let Err(e) = check_content_type(req) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            return Box::pin(std::future::ready(Err(too_large(LIMIT))));
        }
        let timeout = req
            .app_data::<web::Data<crate::settings::HttpSettings>>()
            .map_or(DEFAULT_BODY_TIMEOUT, |s| s.request_body_timeout);
        let payload = payload.take();
        let capacity = declared.map_or(8 * 1024, |n| n as usize);
        Box::pin(async move {
            let body = read_body(payload, LIMIT, capacity, timeout).await?;
            decode(&body).map(Json)
        })
    }
}

/// `application/json` or any `application/…+json`; anything else (or none) is 415.
fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let refused =
        || ApiError::UnsupportedMediaType("expected Content-Type: application/json".into());
    let mime = actix_web::HttpMessage::mime_type(req)
        .map_err(|_| refused())?
        .ok_or_else(refused)?;
    let json = mime.type_() == actix_web::mime::APPLICATION
        && (mime.subtype() == actix_web::mime::JSON
            || mime.suffix() == Some(actix_web::mime::JSON));
    if json { Ok(()) } else { Err(refused()) }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the body is larger than {} ({limit} bytes)",
        human_size(limit)
    ))
}

fn human_size(n: usize) -> String {
    match n {
        n if n >= 1024 * 1024 && n % (1024 * 1024) == 0 => format!("{} MiB", n / (1024 * 1024)),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}

/// Reads the whole payload: at most `limit` bytes (413 past it), within
/// `timeout` (408 after it).
async fn read_body(
    mut payload: Payload,
    limit: usize,
    capacity: usize,
    timeout: Duration,
) -> Result<BytesMut, ApiError> {
    let read = async {
        let mut body = BytesMut::with_capacity(capacity.min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the body did not arrive within {}",
            human_duration(timeout)
        ))),
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Decodes a whole body (see the module documentation): an object, no NUL,
/// errors naming the JSON path in plain words.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::bad_request(if first.is_none() {
            "the body is empty; expected a JSON object"
        } else {
            "the body must be a JSON object ({…})"
        }));
    }
    // NUL can only arrive escaped (`\u0000`; a raw 0x00 byte is a syntax error),
    // so bodies without that escape skip the walk. With it, the document is
    // walked to name every field that holds one.
    if may_hold_nul(body) {
        let value: Value = deserialize(body)?;
        let mut found = Vec::new();
        find_nul(&value, &mut Vec::new(), &mut found);
        if !found.is_empty() {
            return Err(ApiError::BadRequest {
                detail: format!(
                    "{} must not contain the NUL character (\\u0000)",
                    found
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                errors: found
                    .into_iter()
                    .map(|f| FieldError::new(f, "must not contain the NUL character (\\u0000)"))
                    .collect(),
            });
        }
    }
    deserialize(body)
}

fn deserialize<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = render_path(e.path());
        problem_of_json(path, e.inner())
    })?;
    de.end()
        .map_err(|e| problem_of_json(None, &e))
        .map(|()| value)
}

/// A cheap, conservative test: is there a `\u0000` escape (any case of hex)?
/// An escaped backslash followed by `u0000` matches too; the walk then finds nothing.
fn may_hold_nul(body: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', body).any(|i| {
        body.get(i + 1..i + 6)
            .is_some_and(|esc| esc[0] == b'u' && &esc[1..] == b"0000")
    })
}

/// One step of a JSON path.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn find_nul<'a>(value: &'a Value, path: &mut Vec<Step<'a>>, found: &mut Vec<String>) {
    const MAX_REPORTED: usize = 20;
    if found.len() >= MAX_REPORTED {
        return;
    }
    match value {
        Value::String(s) if s.contains('\0') => found.push(join(path)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Step::Index(i));
                find_nul(item, path, found);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                path.push(Step::Key(key));
                if key.contains('\0') {
                    found.push(join(path));
                } else {
                    find_nul(item, path, found);
                }
                path.pop();
            }
        }
        _ => {}
    }
}

/// `messages[3].role`; keys that are not plain names are quoted as JSON strings
/// (`traits["night owl"]`), so a path is unambiguous and never holds a raw NUL.
fn join(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Index(i) => out.push_str(&format!("[{i}]")),
            Step::Key(k) if is_plain_name(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Key(k) => {
                out.push('[');
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(']');
            }
        }
    }
    out
}

fn is_plain_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The JSON path serde_path_to_error tracked; `None` at the top level or when
/// it does not know (`?`).
pub(crate) fn render_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut steps = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => steps.push(Step::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                steps.push(Step::Key(key.as_str()))
            }
            Segment::Unknown => return None,
        }
    }
    (!steps.is_empty()).then(|| join(&steps))
}

/// A 400 for a JSON error at `path`, in plain words.
fn problem_of_json(path: Option<String>, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_owned();
    match e.classify() {
        Category::Data => field_problem(path, &message),
        Category::Syntax => {
            let specific = match message.as_str() {
                "number out of range" => Some("is a number too large to store"),
                "lone leading surrogate in hex escape"
                | "unexpected end of hex escape"
                | "invalid unicode code point" => Some(
                    "is not valid Unicode text (invalid UTF-8, or a lone surrogate such as \\ud800)",
                ),
                "invalid escape" => Some("holds an invalid escape sequence"),
                "control character (\\u0000-\\u001F) found while parsing a string" => {
                    Some("holds a raw control character; escape it (\\n, \\t, \\u0001 …)")
                }
                "recursion limit exceeded" => Some("is nested too deeply"),
                _ => None,
            };
            match (specific, path) {
                (Some(says), Some(field)) => field_error(field, says),
                (Some(says), None) => ApiError::bad_request(format!("the body {says}")),
                (None, _) => ApiError::bad_request(format!(
                    "the body is not valid JSON ({message}, line {} column {})",
                    e.line(),
                    e.column()
                )),
            }
        }
        Category::Eof => ApiError::bad_request("the body ends before its JSON does"),
        Category::Io => ApiError::bad_request("the body could not be read"),
    }
}

/// One field's 400: `errors: [{field, message}]` and a detail that reads as a
/// sentence ("`content` must be a string, not a number").
pub(crate) fn field_error(field: String, message: &str) -> ApiError {
    ApiError::BadRequest {
        detail: format!("`{field}` {message}"),
        errors: vec![FieldError::new(field, message)],
    }
}

fn child(path: Option<String>, name: &str) -> String {
    let name_step = [Step::Key(name)];
    match path {
        Some(parent) if name.is_empty() => parent,
        Some(parent) => {
            let tail = join(&name_step);
            if tail.starts_with('[') {
                format!("{parent}{tail}")
            } else {
                format!("{parent}.{tail}")
            }
        }
        None => join(&name_step),
    }
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// A serde data error (`message`, position stripped) at `path`, in plain words.
/// Shared by bodies and query strings.
pub(crate) fn field_problem(path: Option<String>, message: &str) -> ApiError {
    if let Some(rest) = message.strip_prefix("missing field ") {
        let name = backticked(rest).first().copied().unwrap_or_default();
        return field_error(child(path, name), "is required");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        let name = names.first().copied().unwrap_or_default();
        // serde_path_to_error may already have pushed the key itself.
        let field = match path {
            Some(p) if p == name || p.ends_with(&format!(".{name}")) => p,
            other => child(other, name),
        };
        let known = &names[names.len().min(1)..];
        let says = if known.is_empty() {
            "is not accepted here (no fields are)".to_owned()
        } else {
            format!("is not accepted here; the fields are {}", known.join(", "))
        };
        return field_error(field, &says);
    }
    if let Some(rest) = message.strip_prefix("duplicate field ") {
        let name = backticked(rest).first().copied().unwrap_or_default();
        return field_error(child(path, name), "is given twice");
    }
    let field = path.unwrap_or_else(|| "body".to_owned());
    let says = plain_words(message);
    field_error(field, &says)
}

/// serde's "invalid type: integer `5`, expected a string" as "must be a string,
/// not a number"; chrono's and our own deserializers' messages likewise.
fn plain_words(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((unexpected, expected)) = rest.rsplit_once(", expected ")
        {
            let expected = expected_words(expected);
            return match unexpected_words(unexpected) {
                Some(got) if prefix == "invalid type: " && got != expected => {
                    format!("must be {expected}, not {got}")
                }
                _ => format!("must be {expected}"),
            };
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((_, expected)) = rest.split_once(", expected ")
    {
        return format!("must be {}", expected_words(expected));
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        return format!("must be one of {}", names[names.len().min(1)..].join(", "));
    }
    const CHRONO: [&str; 7] = [
        "input contains invalid characters",
        "premature end of input",
        "input is out of range",
        "trailing input",
        "no possible date and time matching input",
        "input is not enough for unique date and time",
        "bad or unsupported format string",
    ];
    if CHRONO.contains(&message) {
        return format!("must be {DATE_TIME}");
    }
    // Our own deserializers (`whole`, …) already speak in plain words.
    if message.starts_with("must ") || message.starts_with("is ") {
        return message.to_owned();
    }
    match message {
        "invalid digit found in string" | "cannot parse integer from empty string" => {
            "must be a whole number".to_owned()
        }
        "number too large to fit in target type" | "number too small to fit in target type" => {
            "is out of range".to_owned()
        }
        "invalid float literal" => "must be a number".to_owned(),
        "provided string was not `true` or `false`" => "must be true or false".to_owned(),
        other => format!("is not valid ({other})"),
    }
}

const DATE_TIME: &str = "an RFC 3339 date-time such as 2026-11-23T18:30:00Z";

fn expected_words(expected: &str) -> String {
    let e = expected.trim();
    let words = match e {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" | "an integer" => "a whole number",
        "f32" | "f64" | "a JSON number" | "a number" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "a borrowed string" | "a string or bytes" | "a character" => "a string",
        "a sequence" | "a tuple" => "an array",
        "a map" | "a JSON object" => "an object",
        "any valid JSON value" => "a JSON value",
        "a UUID string" => "a UUID",
        e if e.starts_with("struct ") => "an object",
        e if e.contains("date") => DATE_TIME,
        e => return e.replace('`', ""),
    };
    words.to_owned()
}

fn unexpected_words(unexpected: &str) -> Option<&'static str> {
    let u = unexpected.trim();
    Some(if u.starts_with("boolean") {
        "true or false"
    } else if u.starts_with("integer") || u.starts_with("floating point") {
        "a number"
    } else if u.starts_with("string") || u.starts_with("character") {
        "a string"
    } else if u == "unit value" || u == "null" {
        "null"
    } else if u == "sequence" {
        "an array"
    } else if u == "map" {
        "an object"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Problem;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        content: String,
        #[serde(default, deserialize_with = "crate::whole::option")]
        mood: Option<i16>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        traits: Option<Value>,
        #[serde(default)]
        messages: Vec<Msg>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
        created_at: Option<chrono::DateTime<chrono::Utc>>,
    }

    fn problem(body: &str) -> Problem {
        decode::<Body>(body.as_bytes())
            .expect_err("refused")
            .problem()
    }

    fn field_and_message(body: &str) -> (String, String) {
        let p = problem(body);
        assert_eq!(p.status, 400, "{p:?}");
        let e = p
            .errors
            .first()
            .unwrap_or_else(|| panic!("no field: {p:?}"));
        (e.field.clone(), e.message.clone())
    }

    #[test]
    fn only_objects_are_bodies() {
        for body in [r#"["text", 5]"#, "\"text\"", "5", "null", "", "  ", "nope"] {
            let p = problem(body);
            assert_eq!(p.status, 400);
            assert!(p.detail.contains("JSON object"), "{body}: {p:?}");
        }
        assert!(decode::<Body>(br#" {"content": "ok"} "#).is_ok());
    }

    #[test]
    fn type_errors_name_the_path_in_plain_words() {
        assert_eq!(
            field_and_message(r#"{"content": 5}"#),
            ("content".into(), "must be a string, not a number".into())
        );
        let p = problem(r#"{"content": 5}"#);
        assert_eq!(p.detail, "`content` must be a string, not a number");
        assert_eq!(
            field_and_message(r#"{"content": "x", "tags": ["a", 7]}"#),
            ("tags[1]".into(), "must be a string, not a number".into())
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "tags": "a"}"#),
            ("tags".into(), "must be an array, not a string".into())
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "messages": [{"role": "user"}, {"role": 1}]}"#),
            (
                "messages[1].role".into(),
                "must be a string, not a number".into()
            )
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "mood": 4.5}"#),
            ("mood".into(), "must be a whole number".into())
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "mood": 99999}"#),
            ("mood".into(), "is out of range".into())
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "mood": "7"}"#).0,
            "mood"
        );
        assert_eq!(
            field_and_message(
                r#"{"content": "x", "messages": [{"role": "user", "created_at": "yesterday"}]}"#
            ),
            (
                "messages[0].created_at".into(),
                format!("must be {DATE_TIME}")
            )
        );
        for p in [
            problem(r#"{"content": 5}"#),
            problem(r#"{"content": "x", "mood": true}"#),
        ] {
            let text = format!("{p:?}");
            for jargon in ["invalid type", "expected", "i16", "line 1"] {
                assert!(!text.contains(jargon), "{jargon} in {text}");
            }
        }
    }

    #[test]
    fn missing_unknown_and_duplicate_fields_are_named() {
        assert_eq!(
            field_and_message(r#"{}"#),
            ("content".into(), "is required".into())
        );
        let (field, message) = field_and_message(r#"{"content": "x", "user_id": 1}"#);
        assert_eq!(field, "user_id");
        assert!(message.contains("content, mood"), "{message}");
        assert_eq!(
            field_and_message(r#"{"content": "x", "messages": [{"role": "u", "id": 1}]}"#).0,
            "messages[0].id"
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "messages": [{}]}"#).0,
            "messages[0].role"
        );
        assert_eq!(
            field_and_message(r#"{"content": "x", "content": "y"}"#),
            ("content".into(), "is given twice".into())
        );
    }

    #[test]
    fn nul_is_refused_wherever_it_is_with_its_path() {
        let cases = [
            (r#"{"content": "a\u0000b"}"#, vec!["content"]),
            (
                r#"{"content": "x", "tags": ["ok", "\u0000"]}"#,
                vec!["tags[1]"],
            ),
            (
                r#"{"content": "x", "traits": {"sleep": {"notes": ["fine", "x\u0000"]}}}"#,
                vec!["traits.sleep.notes[1]"],
            ),
            (
                r#"{"content": "x", "traits": {"night\u0000owl": true}}"#,
                vec!["traits[\"night\\u0000owl\"]"],
            ),
            (
                r#"{"content": "\u0000", "traits": {"a b": "\u0000"}}"#,
                vec!["content", "traits[\"a b\"]"],
            ),
            // Refused before the type is looked at: the field is unknown, but it
            // is NUL that must never travel further.
            (r#"{"zzz": "\u0000"}"#, vec!["zzz"]),
        ];
        for (body, fields) in cases {
            let p = problem(body);
            let got: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(got, fields, "{body}");
            assert!(p.detail.contains("NUL"), "{p:?}");
            assert!(!serde_json::to_string(&p).unwrap().contains('\0'));
        }
        // An escaped backslash before `u0000` is not NUL.
        assert!(decode::<Body>(br#"{"content": "C:\\u0000"}"#).is_ok());
    }

    #[test]
    fn storage_refused_json_is_a_400_naming_the_field() {
        for body in [
            r#"{"content": "\ud800"}"#,
            r#"{"content": "x\udc00y"}"#,
            r#"{"content": "\udbff"}"#,
            r#"{"content": "\ud83d\u0041"}"#,
        ] {
            let (field, message) = field_and_message(body);
            assert_eq!(field, "content", "{body}");
            assert!(message.contains("surrogate"), "{body}: {message}");
        }
        // A pair is one character, and fine.
        assert!(decode::<Body>(br#"{"content": "\ud83d\ude00"}"#).is_ok());
        assert_eq!(
            field_and_message(r#"{"content": "x", "traits": {"n": 1e400}}"#),
            ("traits.n".into(), "is a number too large to store".into())
        );
        let raw_nul = b"{\"content\": \"a\x00b\"}";
        let p = decode::<Body>(raw_nul).unwrap_err().problem();
        assert_eq!(p.errors[0].field, "content");
        let bad_utf8 = b"{\"content\": \"a\xffb\"}";
        let p = decode::<Body>(bad_utf8).unwrap_err().problem();
        assert_eq!(p.errors[0].field, "content");
        assert!(p.errors[0].message.contains("UTF-8"));
        let deep = format!(
            "{{\"content\": \"x\", \"traits\": {}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(problem(&deep).status, 400);
    }

    #[test]
    fn syntax_errors_say_where_without_serde_words() {
        let p = problem(r#"{"content": "x",}"#);
        assert!(p.detail.starts_with("the body is not valid JSON"), "{p:?}");
        let p = problem(r#"{"content": "x""#);
        assert_eq!(p.detail, "the body ends before its JSON does");
        let p = problem(r#"{"content": "x"} {}"#);
        assert!(p.detail.contains("trailing characters"), "{p:?}");
    }

    #[test]
    fn the_nul_prefilter_finds_every_case_of_the_escape() {
        assert!(may_hold_nul(br#""\u0000""#));
        assert!(!may_hold_nul(br#""\u0001""#));
        assert!(!may_hold_nul(br#""\u000""#));
        assert!(!may_hold_nul(br#"no escapes at all"#));
    }

    fn request(content_type: Option<&str>, body: &'static str) -> (HttpRequest, Payload) {
        let mut req = actix_web::test::TestRequest::post();
        if let Some(ct) = content_type {
            req = req.insert_header((header::CONTENT_TYPE, ct));
        }
        req.set_payload(body).to_http_parts()
    }

    fn stream_of(chunks: Vec<&'static [u8]>, then_stall: bool) -> Payload {
        use futures_util::stream;
        let chunks = stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, actix_web::error::PayloadError>(bytes::Bytes::from_static(c))),
        );
        let tail = if then_stall {
            stream::pending().boxed_local()
        } else {
            stream::empty().boxed_local()
        };
        Payload::Stream {
            payload: chunks.chain(tail).boxed_local(),
        }
    }

    async fn status_of<const LIMIT: usize>(req: &HttpRequest, payload: &mut Payload) -> u16 {
        match Json::<Value, LIMIT>::from_request(req, payload).await {
            Ok(_) => 200,
            Err(e) => e.problem().status,
        }
    }

    #[actix_web::test]
    async fn json_content_types_only() {
        for (ct, expected) in [
            (Some("application/json"), 200),
            (Some("application/json; charset=utf-8"), 200),
            (Some("application/merge-patch+json"), 200),
            (Some("text/plain"), 415),
            (Some("application/x-www-form-urlencoded"), 415),
            (Some("not a mime type"), 415),
            (None, 415),
        ] {
            let (req, mut payload) = request(ct, r#"{"a": 1}"#);
            assert_eq!(
                status_of::<1024>(&req, &mut payload).await,
                expected,
                "{ct:?}"
            );
        }
    }

    #[actix_web::test]
    async fn bodies_over_the_limit_are_413_declared_or_streamed() {
        let (req, mut payload) = request(Some("application/json"), r#"{"a": "0123456789"}"#);
        assert_eq!(status_of::<8>(&req, &mut payload).await, 413);
        // Chunked (no Content-Length): refused once the stream passes the limit,
        // even though it never ends.
        let chunked = stream_of(vec![b"{\"a\": \"", b"0123456789", b"0123456789"], true);
        let err = read_body(chunked, 16, 0, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(err.problem().status, 413);
        // Exactly at the limit is fine.
        let exact = stream_of(vec![b"{}"], false);
        assert!(
            read_body(exact, 2, 0, Duration::from_secs(60))
                .await
                .is_ok()
        );
    }

    #[actix_web::test]
    async fn a_body_that_stalls_is_408_once_the_deadline_passes() {
        let stalled = stream_of(vec![b"{\"a\": "], true);
        let err = read_body(stalled, 1024, 0, Duration::from_millis(50))
            .await
            .unwrap_err();
        let problem = err.problem();
        assert_eq!(problem.status, 408);
        assert_eq!(problem.detail, "the body did not arrive within 50 ms");
        assert_eq!(problem.kind, "https://kai.dev/problems/request-timeout");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(64 * 1024), "64 KiB");
        assert_eq!(human_size(4 * 1024 * 1024), "4 MiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}
