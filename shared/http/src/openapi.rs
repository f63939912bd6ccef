//! OpenAPI pieces every service's document shares, and [`complete`], which turns
//! the document utoipa derives from the handlers into the one served at
//! `/openapi.json`.
//!
//! Why a completion pass: the answers every operation can give because of the
//! platform — 401 from the auth extractor, 400/413/415 from the JSON, query and
//! path extractors, 404 for unknown ids, 503 when PostgreSQL is away — and the
//! headers the middleware sets (`X-Request-Id`, `ETag`, `X-Cache`, `Location`,
//! `Retry-After`, `WWW-Authenticate`) are the same everywhere. Writing them into
//! each `#[utoipa::path]` by hand is how documents fell out of step with the
//! services; deriving them from what an operation has (a body, path or query
//! parameters, security, a 304) keeps them in step. The pass works on the JSON
//! form because utoipa's types cannot say `required: true` on a response header.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Declares the `bearer` security scheme (the JWT of the token-issuing service).
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `access_token` that `POST /api/auth/login` answers.",
                    ))
                    .build(),
            ),
        );
    }
}

/// JSON Schema `pattern` for "not only white space": at least one character
/// outside the set [`char::is_whitespace`] uses (Unicode `White_Space`), spelled
/// out because `\s` means three different sets in ECMA-262, Python and Rust.
pub const NOT_BLANK: &str =
    "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// True when `s` has no character outside [`NOT_BLANK`]'s set (the check the
/// pattern documents).
pub fn is_blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

/// The schema of a text of 1 to `MAX` characters that is not only white space,
/// for `#[schema(schema_with = kai_http::openapi::non_blank::<MAX>)]`:
/// one declaration instead of the three attributes (and the [`NOT_BLANK`]
/// literal, which utoipa's `pattern` takes only as a literal) at every text field.
/// The field's doc comment is not used with `schema_with`; the description is
/// this one. On an `Option` field the property is optional, never `null`.
pub fn non_blank<const MAX: usize>() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX))
        .pattern(Some(NOT_BLANK))
        .description(Some(format!(
            "1–{} characters, not only white space.",
            thousands(MAX)
        )))
        .build()
}

/// `20000` → `20,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn header(description: &str, schema: Value) -> Value {
    json!({ "description": description, "required": true, "schema": schema })
}

fn default_description(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "204" => "Done; no body",
        "304" => "Not modified: the `If-None-Match` ETag is current; no body",
        "400" => {
            "Malformed JSON, a body that is not a JSON object, a bad path or query parameter, text PostgreSQL \
             cannot store (NUL, lone surrogates), or failed validation; `errors` names each field by its JSON path"
        }
        "401" => "Missing, malformed, expired, tampered or revoked access token",
        "404" => "No such resource, or it belongs to another user",
        "409" => "Conflict with an existing resource",
        "408" => "The body did not arrive within `REQUEST_BODY_TIMEOUT_MS` (10 s by default)",
        "413" => {
            "Body larger than the limit: 64 KiB (4 MiB for the batch import), by `Content-Length` or as it streams"
        }
        "415" => "Content-Type is not application/json",
        "429" => "Rate limited; retry after `Retry-After` seconds",
        "502" => "The upstream model failed",
        "503" => {
            "The database is unavailable or the pool exhausted; retry after `Retry-After` seconds"
        }
        "504" => "The upstream model timed out",
        _ => "Answer",
    }
}

fn example_problem(code: &str) -> Value {
    let (slug, title, detail) = match code {
        "400" => (
            "validation-error",
            "Bad Request",
            "the request failed validation",
        ),
        "401" => ("unauthorized", "Unauthorized", "missing bearer token"),
        "408" => (
            "request-timeout",
            "Request Timeout",
            "the body did not arrive within 10 s",
        ),
        "404" => ("not-found", "Not Found", "no such resource"),
        "409" => (
            "conflict",
            "Conflict",
            "that e-mail address is already registered",
        ),
        "413" => (
            "payload-too-large",
            "Payload Too Large",
            "the body is larger than 64 KiB (65536 bytes)",
        ),
        "415" => (
            "unsupported-media-type",
            "Unsupported Media Type",
            "expected Content-Type: application/json",
        ),
        "429" => (
            "rate-limited",
            "Too Many Requests",
            "too many attempts; retry later",
        ),
        "502" => (
            "upstream-error",
            "Bad Gateway",
            "the model failed to answer",
        ),
        "503" => (
            "service-unavailable",
            "Service Unavailable",
            "the database is unavailable; retry shortly",
        ),
        "504" => (
            "upstream-timeout",
            "Gateway Timeout",
            "the model did not answer in time",
        ),
        _ => ("bad-request", "Error", "error"),
    };
    let mut v = json!({
        "type": format!("https://kai.dev/problems/{slug}"),
        "title": title,
        "status": code.parse::<u16>().unwrap_or(400),
        "detail": detail,
    });
    if code == "400" {
        v["errors"] = json!([{ "field": "mood", "message": "must be between 1 and 10" }]);
    }
    v
}

/// The served document: `doc` with the platform's answers, headers and
/// descriptions filled in (see the module documentation).
pub fn complete(doc: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_else(|_| json!({}));
    doc["openapi"] = json!("3.1.0");
    let problem_ref = json!({ "$ref": "#/components/schemas/Problem" });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            complete_operation(op, &problem_ref);
        }
    }
    doc
}

fn complete_operation(op: &mut Map<String, Value>, problem_ref: &Value) {
    let params: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |place: &str| params.iter().any(|p| p["in"] == place);
    let has_path = has("path");
    let has_query = has("query");
    let has_body = op.contains_key("requestBody");
    // `security(())` on an operation renders as `[{}]`: no token needed.
    let secured = !op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().all(|r| r.as_object().is_some_and(Map::is_empty)));
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    let cached = responses.contains_key("304");
    let mut add = |code: &str, cond: bool| {
        if cond && !responses.contains_key(code) {
            responses.insert(code.to_owned(), json!({}));
        }
    };
    add("400", has_body || has_path || has_query);
    add("401", secured);
    add("404", has_path);
    add("408", has_body);
    add("413", has_body);
    add("415", has_body);
    add("503", true);

    for (code, res) in responses.iter_mut() {
        let res = res.as_object_mut().expect("response is an object");
        if res
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            res.insert("description".into(), json!(default_description(code)));
        }
        if code.starts_with('4') || code.starts_with('5') {
            res.insert(
                "content".into(),
                json!({ "application/problem+json": {
                    "schema": problem_ref,
                    "example": example_problem(code),
                }}),
            );
        }
        let headers = res
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("headers is an object");
        headers.insert(
            "X-Request-Id".into(),
            header(
                "The caller's `X-Request-Id`, or a generated UUID; appears in the service's logs",
                json!({ "type": "string" }),
            ),
        );
        match code.as_str() {
            "201" => {
                headers.insert(
                    "Location".into(),
                    header(
                        "Where the created resource (or the one it belongs to) is read",
                        json!({ "type": "string" }),
                    ),
                );
            }
            "200" if cached => {
                headers.insert(
                    "ETag".into(),
                    header(
                        "Send it back as `If-None-Match` to get 304 while it is current",
                        json!({ "type": "string" }),
                    ),
                );
                headers.insert(
                    "X-Cache".into(),
                    header(
                        "Whether the answer came from the cache",
                        json!({ "type": "string", "enum": ["HIT", "MISS", "BYPASS"] }),
                    ),
                );
                headers.insert(
                    "Cache-Control".into(),
                    header(
                        "Always `private, no-cache`: revalidate with `If-None-Match`",
                        json!({ "type": "string" }),
                    ),
                );
            }
            "304" => {
                headers.insert(
                    "ETag".into(),
                    header("The current ETag", json!({ "type": "string" })),
                );
            }
            "401" => {
                headers.insert(
                    "WWW-Authenticate".into(),
                    header("Always `Bearer`", json!({ "type": "string" })),
                );
            }
            "429" | "503" => {
                headers.insert(
                    "Retry-After".into(),
                    header(
                        "Seconds to wait before retrying",
                        json!({ "type": "integer", "minimum": 1 }),
                    ),
                );
            }
            _ => {}
        }
    }
    if cached {
        let params = op
            .entry("parameters")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("parameters is an array");
        params.push(json!({
            "name": "If-None-Match",
            "in": "header",
            "required": false,
            "description": "The `ETag` of an earlier answer: 304 with no body while it is current",
            "schema": { "type": "string" },
        }));
    }
}

/// Which methods each documented path pattern accepts, from a [`complete`]d
/// document: the `Allow` header of a 405 and the methods a CORS preflight may
/// ask for. A test keeps the document and actix's routes in step.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    by_pattern: BTreeMap<String, BTreeSet<String>>,
}

impl Operations {
    pub fn from_document(doc: &Value) -> Self {
        let mut by_pattern = BTreeMap::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                let methods: BTreeSet<String> = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_uppercase())
                    .collect();
                by_pattern.insert(path.clone(), methods);
            }
        }
        Self { by_pattern }
    }

    /// The methods of a route pattern (as actix's `match_pattern` gives it).
    pub fn methods(&self, pattern: &str) -> Option<&BTreeSet<String>> {
        self.by_pattern.get(pattern)
    }

    /// Every method any documented route accepts.
    pub fn all_methods(&self) -> BTreeSet<String> {
        self.by_pattern.values().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_the_same_in_the_pattern_and_in_rust() {
        // The pattern's class, decoded by hand, is exactly char::is_whitespace.
        let in_class = |c: char| matches!(c, '\t'..='\r' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}');
        for c in (0..=0x3000u32).filter_map(char::from_u32) {
            assert_eq!(in_class(c), c.is_whitespace(), "{:?}", c);
        }
        assert!(is_blank(" \t\u{3000}"));
        assert!(!is_blank(" x "));
    }

    #[test]
    fn a_non_blank_schema_bounds_the_length_and_says_so() {
        let schema = serde_json::to_value(non_blank::<20000>()).unwrap();
        assert_eq!(schema["type"], "string");
        assert_eq!(schema["minLength"], 1);
        assert_eq!(schema["maxLength"], 20000);
        assert_eq!(schema["pattern"], NOT_BLANK);
        assert_eq!(
            schema["description"],
            "1–20,000 characters, not only white space."
        );
        assert_eq!(thousands(50), "50");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
