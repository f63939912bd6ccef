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

use super::errors::{ApiError, FieldError};

/// How long a body may take to arrive when no platform settings are at hand
/// (the setting `REQUEST_BODY_TIMEOUT_MS` has the same default).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON object body of at most `LIMIT` bytes, decoded into `T` (see the
/// module documentation for what is refused, and how).
#[derive(Debug)]
pub struct Json<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

/// Largest accepted request body (SPEC §3).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

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
        match e.inner().classify() {
            // What serde said, as data: decoded again (only now, on the error
            // path) through a deserializer that keeps serde's error calls.
            serde_json::error::Category::Data => data_problem::<T>(body, path),
            _ => problem_of_json(path, e.inner()),
        }
    })?;
    de.end()
        .map_err(|e| problem_of_json(None, &e))
        .map(|()| value)
}

/// The 400 for a body that is JSON but not a `T`: the body read again as a
/// [`structured::Node`] tree (keys in order, repeats kept, as serde_json gave
/// them to `T`) and decoded from it, so the error is serde's own call
/// (`missing_field`, `invalid_type`, …) with the type the target asked for,
/// and the path is serde_path_to_error's. `path` (the first decode's) answers if
/// the second finds nothing to refuse.
fn data_problem<T: DeserializeOwned>(body: &[u8], path: Option<String>) -> ApiError {
    let node = match serde_json::from_slice::<structured::Node>(body) {
        Ok(node) => node,
        Err(e) => return problem_of_json(None, &e),
    };
    match serde_path_to_error::deserialize::<_, T>(node) {
        Err(e) => {
            let path = render_path(e.path());
            field_problem(path, e.into_inner())
        }
        Ok(_) => field_error(
            path.unwrap_or_else(|| "body".to_owned()),
            "is not valid here",
        ),
    }
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

/// A 400 for a JSON error that is not about `T` (the text is not JSON, or not
/// JSON PostgreSQL can hold): serde_json's category, line and column, and the
/// field it happened in when serde_path_to_error knows it.
fn problem_of_json(path: Option<String>, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    match (e.classify(), path) {
        (Category::Eof, _) => ApiError::bad_request("the body ends before its JSON does"),
        (Category::Io, _) => ApiError::bad_request("the body could not be read"),
        // Inside a string or number of a field: invalid UTF-8, a lone surrogate
        // (`\ud800`), a raw control character, a number too large to store.
        (Category::Syntax, Some(field)) => field_error(
            field,
            &format!(
                "is not JSON that can be stored (line {line}, column {column}): invalid UTF-8, \
                 a lone surrogate such as \\ud800, a raw control character, an invalid escape \
                 or a number too large to store"
            ),
        ),
        (Category::Syntax | Category::Data, _) => ApiError::bad_request(format!(
            "the body is not valid JSON (line {line}, column {column})"
        )),
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

/// The 400 for a structured data error at `path`, in plain words. Shared by
/// bodies and query strings.
pub(crate) fn field_problem(path: Option<String>, error: structured::Error) -> ApiError {
    use structured::Error;
    match error {
        Error::Missing(name) => field_error(child(path, name), "is required"),
        Error::Duplicate(name) => field_error(child(path, name), "is given twice"),
        Error::Unknown { field, known } => {
            // serde_path_to_error may already have pushed the key itself.
            let field = match path {
                Some(p) if p == field || p.ends_with(&format!(".{field}")) => p,
                other => child(other, &field),
            };
            let says = if known.is_empty() {
                "is not accepted here (no fields are)".to_owned()
            } else {
                format!("is not accepted here; the fields are {}", known.join(", "))
            };
            field_error(field, &says)
        }
        other => field_error(path.unwrap_or_else(|| "body".to_owned()), &other.says()),
    }
}

/// serde's errors as data: a deserializer over a parsed body ([`Node`]) or a
/// query string ([`Node::query`]) whose error type keeps each call serde makes
/// (`missing_field`, `invalid_type`, …) and the kind of value the target asked
/// for (the `deserialize_*` method it called), so no message is read back from
/// another crate's text. Used only once a decode has failed.
pub(crate) mod structured {
    use serde::de::value::{MapAccessDeserializer, MapDeserializer, SeqDeserializer};
    use serde::de::{self, IntoDeserializer, Unexpected, Visitor};
    use serde::forward_to_deserialize_any;

    /// What a target asked for: the `deserialize_*` method it called.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Want {
        Bool,
        Whole,
        Number,
        Text,
        Array,
        Object,
        Null,
    }

    impl Want {
        fn words(self) -> &'static str {
            match self {
                Self::Bool => "true or false",
                Self::Whole => "a whole number",
                Self::Number => "a number",
                Self::Text => "a string",
                Self::Array => "an array",
                Self::Object => "an object",
                Self::Null => "null",
            }
        }

        fn is_number(self) -> bool {
            matches!(self, Self::Whole | Self::Number)
        }
    }

    /// What was there instead (from serde's [`Unexpected`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Got {
        Bool,
        Number,
        Text,
        Null,
        Array,
        Object,
        Other,
    }

    impl Got {
        fn of(unexpected: &Unexpected<'_>) -> Self {
            match unexpected {
                Unexpected::Bool(_) => Self::Bool,
                Unexpected::Unsigned(_) | Unexpected::Signed(_) | Unexpected::Float(_) => {
                    Self::Number
                }
                Unexpected::Char(_) | Unexpected::Str(_) => Self::Text,
                Unexpected::Unit | Unexpected::Option => Self::Null,
                Unexpected::Seq => Self::Array,
                Unexpected::Map | Unexpected::StructVariant => Self::Object,
                _ => Self::Other,
            }
        }

        fn words(self) -> Option<&'static str> {
            Some(match self {
                Self::Bool => "true or false",
                Self::Number => "a number",
                Self::Text => "a string",
                Self::Null => "null",
                Self::Array => "an array",
                Self::Object => "an object",
                Self::Other => return None,
            })
        }
    }

    /// One serde error call, as data.
    #[derive(Debug)]
    pub enum Error {
        Missing(&'static str),
        Duplicate(&'static str),
        Unknown {
            field: String,
            known: &'static [&'static str],
        },
        UnknownVariant {
            known: &'static [&'static str],
        },
        Type {
            got: Got,
            want: Option<Want>,
        },
        Value {
            want: Option<Want>,
        },
        Length {
            want: Option<Want>,
        },
        /// A deserializer's own message (`de::Error::custom`): Kai's speak in
        /// plain words (`http::whole`); another crate's (chrono's, uuid's) are
        /// passed on as they are, never rewritten.
        Custom(String),
    }

    impl Error {
        /// Marks what the target asked for, unless a deeper call already did.
        fn wanted(mut self, what: Want) -> Self {
            if let Self::Type { want, .. } | Self::Value { want } | Self::Length { want } =
                &mut self
                && want.is_none()
            {
                *want = Some(what);
            }
            self
        }

        /// The field's message for a type, value, length or custom error.
        pub fn says(&self) -> String {
            match self {
                Self::Type { got, want } => match (want, got.words()) {
                    (Some(want), _) if want.is_number() && *got == Got::Number => {
                        format!("must be {}", want.words())
                    }
                    (Some(want), Some(got)) => format!("must be {}, not {got}", want.words()),
                    (Some(want), None) => format!("must be {}", want.words()),
                    (None, Some(got)) => format!("cannot be {got} here"),
                    (None, None) => "is not valid here".to_owned(),
                },
                Self::Value { want } if want.is_some_and(Want::is_number) => {
                    "is out of range".to_owned()
                }
                Self::Value { .. } => "is not an accepted value".to_owned(),
                Self::Length { .. } => "has the wrong number of items".to_owned(),
                Self::UnknownVariant { known } => format!("must be one of {}", known.join(", ")),
                Self::Custom(message) => message.clone(),
                Self::Missing(_) | Self::Duplicate(_) | Self::Unknown { .. } => {
                    "is not valid here".to_owned()
                }
            }
        }
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            std::fmt::Debug::fmt(self, f)
        }
    }

    impl std::error::Error for Error {}

    impl de::Error for Error {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Self::Custom(msg.to_string())
        }
        fn invalid_type(unexpected: Unexpected<'_>, _: &dyn de::Expected) -> Self {
            Self::Type {
                got: Got::of(&unexpected),
                want: None,
            }
        }
        fn invalid_value(_: Unexpected<'_>, _: &dyn de::Expected) -> Self {
            Self::Value { want: None }
        }
        fn invalid_length(_: usize, _: &dyn de::Expected) -> Self {
            Self::Length { want: None }
        }
        fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
            Self::UnknownVariant { known: expected }
        }
        fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
            Self::Unknown {
                field: field.to_owned(),
                known: expected,
            }
        }
        fn missing_field(field: &'static str) -> Self {
            Self::Missing(field)
        }
        fn duplicate_field(field: &'static str) -> Self {
            Self::Duplicate(field)
        }
    }

    /// A JSON value as serde_json hands it to a target: object keys in order,
    /// a repeated key kept (so the target sees it twice, as it did). `Query`
    /// is a query-string value: text that a number or boolean target parses,
    /// as serde_urlencoded does.
    #[derive(Debug)]
    pub enum Node {
        Null,
        Bool(bool),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Text(String),
        Array(Vec<Node>),
        Object(Vec<(String, Node)>),
        Query(String),
    }

    impl Node {
        /// A query string's parameters, in order.
        pub fn query<'a>(
            pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
        ) -> Self {
            Self::Object(
                pairs
                    .map(|(k, v)| (k.into_owned(), Self::Query(v.into_owned())))
                    .collect(),
            )
        }

        fn unexpected(&self) -> Unexpected<'_> {
            match self {
                Self::Null => Unexpected::Unit,
                Self::Bool(b) => Unexpected::Bool(*b),
                Self::Unsigned(n) => Unexpected::Unsigned(*n),
                Self::Signed(n) => Unexpected::Signed(*n),
                Self::Float(n) => Unexpected::Float(*n),
                Self::Text(s) | Self::Query(s) => Unexpected::Str(s),
                Self::Array(_) => Unexpected::Seq,
                Self::Object(_) => Unexpected::Map,
            }
        }
    }

    impl<'de> de::Deserialize<'de> for Node {
        fn deserialize<D: de::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Node;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_unit<E>(self) -> Result<Node, E> {
                    Ok(Node::Null)
                }
                fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                    Ok(Node::Bool(v))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                    Ok(Node::Unsigned(v))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                    Ok(Node::Signed(v))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                    Ok(Node::Float(v))
                }
                fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                    Ok(Node::Text(v.to_owned()))
                }
                fn visit_string<E>(self, v: String) -> Result<Node, E> {
                    Ok(Node::Text(v))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element()? {
                        items.push(item);
                    }
                    Ok(Node::Array(items))
                }
                fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        entries.push(entry);
                    }
                    Ok(Node::Object(entries))
                }
            }
            de.deserialize_any(V)
        }
    }

    impl<'de> IntoDeserializer<'de, Error> for Node {
        type Deserializer = Self;
        fn into_deserializer(self) -> Self {
            self
        }
    }

    /// `deserialize_$method`: a query value parsed as `$ty` (as serde_urlencoded
    /// parses it), a JSON node handed on as it is; an error marked with what the
    /// target wanted.
    macro_rules! primitive {
        ($($method:ident $visit:ident $ty:ty => $want:expr;)*) => {$(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                match self {
                    Self::Query(text) => match text.parse::<$ty>() {
                        Ok(v) => visitor.$visit(v),
                        Err(_) => Err(unparsed(&text, $want)),
                    },
                    node => node.deserialize_any(visitor),
                }
                .map_err(|e| e.wanted($want))
            }
        )*};
    }

    /// A query value its target could not parse: digits too many for a whole
    /// number are out of range, anything else is of the wrong kind.
    fn unparsed(text: &str, want: Want) -> Error {
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if want == Want::Whole && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            Error::Value { want: Some(want) }
        } else {
            // Query values are all text: what was wanted says it all.
            Error::Type {
                got: Got::Other,
                want: Some(want),
            }
        }
    }

    impl<'de> de::Deserializer<'de> for Node {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Self::Null => visitor.visit_unit(),
                Self::Bool(b) => visitor.visit_bool(b),
                Self::Unsigned(n) => visitor.visit_u64(n),
                Self::Signed(n) => visitor.visit_i64(n),
                Self::Float(n) => visitor.visit_f64(n),
                Self::Text(s) | Self::Query(s) => visitor.visit_string(s),
                Self::Array(items) => {
                    let mut seq = SeqDeserializer::new(items.into_iter());
                    let value = visitor.visit_seq(&mut seq)?;
                    seq.end()?;
                    Ok(value)
                }
                Self::Object(entries) => {
                    let mut map = MapDeserializer::new(entries.into_iter());
                    let value = visitor.visit_map(&mut map)?;
                    map.end()?;
                    Ok(value)
                }
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Self::Null => visitor.visit_none(),
                node => visitor.visit_some(node),
            }
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self {
                Self::Text(s) | Self::Query(s) => visitor.visit_enum(s.into_deserializer()),
                Self::Object(entries) if entries.len() == 1 => visitor.visit_enum(
                    MapAccessDeserializer::new(MapDeserializer::new(entries.into_iter())),
                ),
                other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
            }
        }

        fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self {
                Self::Null => visitor.visit_unit(),
                other => Err(Error::Type {
                    got: Got::of(&other.unexpected()),
                    want: Some(Want::Null),
                }),
            }
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_unit(visitor)
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_any(visitor)
                .map_err(|e| e.wanted(Want::Text))
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_str(visitor)
        }

        fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_str(visitor)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_any(visitor)
                .map_err(|e| e.wanted(Want::Array))
        }

        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            _: usize,
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_seq(visitor)
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: usize,
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_seq(visitor)
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_any(visitor)
                .map_err(|e| e.wanted(Want::Object))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.deserialize_map(visitor)
        }

        primitive! {
            deserialize_bool visit_bool bool => Want::Bool;
            deserialize_i8 visit_i8 i8 => Want::Whole;
            deserialize_i16 visit_i16 i16 => Want::Whole;
            deserialize_i32 visit_i32 i32 => Want::Whole;
            deserialize_i64 visit_i64 i64 => Want::Whole;
            deserialize_u8 visit_u8 u8 => Want::Whole;
            deserialize_u16 visit_u16 u16 => Want::Whole;
            deserialize_u32 visit_u32 u32 => Want::Whole;
            deserialize_u64 visit_u64 u64 => Want::Whole;
            deserialize_f32 visit_f32 f32 => Want::Number;
            deserialize_f64 visit_f64 f64 => Want::Number;
        }

        forward_to_deserialize_any! {
            i128 u128 bytes byte_buf identifier ignored_any
        }
    }
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
                // chrono's own words (`de::Error::custom`), passed on unchanged.
                "input contains invalid characters".into()
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
        let (field, message) = field_and_message(r#"{"content": "x", "traits": {"n": 1e400}}"#);
        assert_eq!(field, "traits.n");
        assert!(
            message.contains("line 1, column 38") && message.contains("too large"),
            "{message}"
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
        assert_eq!(
            p.detail, "the body is not valid JSON (line 1, column 18)",
            "{p:?}"
        );
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
