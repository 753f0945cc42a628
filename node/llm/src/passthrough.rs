//! Same-format passthrough for OpenAI-format calls: the byte-level helpers that
//! let the gateway send an OpenAI-format caller's request to an OpenAI-format
//! provider (OpenAI, OpenAI-compatible servers, Azure OpenAI) without decoding it
//! into [`ChatRequest`](crate::types::ChatRequest) and encoding it again, and
//! send the provider's answer back the same way.
//!
//! Three jobs, all pure functions of their input:
//!
//! - **Read the head of a request** ([`ChatHead`], [`EmbeddingsHead`]): the few
//!   fields the gateway decides on (`model`, `stream`,
//!   `stream_options.include_usage`, the output limit), borrowed from the body.
//!   The whole body is still checked to be JSON (UTF-8, syntax, an object), so
//!   a broken body gets the same 400 as the full decode gives it.
//! - **Edit the request in place** ([`rewrite_request`]): replace the value of
//!   the top-level `model` and, for streams, set `stream_options.include_usage`
//!   to `true`. Every other byte (key order, spacing, number spelling, fields
//!   this gateway has never heard of) reaches the provider as the caller sent
//!   it.
//! - **Read usage without building the document** ([`ChatAnswer`],
//!   [`EmbeddingsAnswer`], [`ChatStreamScanner`]): borrowed structs that skip
//!   everything but usage, finish reason and the output text a cut stream is
//!   billed by; a stream's events are forwarded as the provider framed them.
//!
//! # Which `model` the provider sees
//!
//! The model the gateway authorises, plans and bills must be the model the
//! provider receives. Two rules make that hold:
//!
//! - Only the top-level `model` counts, and a key means what it decodes to:
//!   `"mod\u0065l"` is `model`, to serde and to the provider alike, so it is the
//!   one replaced. A `model` nested anywhere else (tool schemas, metadata) is
//!   left alone.
//! - A key read here may appear once. The canonical decode (`ChatRequest`,
//!   `StreamOptions`) refuses a duplicate `model`, `stream`, `stream_options` or
//!   `include_usage` ("duplicate field"), and so do [`ChatHead::read`] (the same
//!   serde derive) and [`rewrite_request`]. Following serde_json's last-wins
//!   instead would let `{"model":"cheap","model":"dear"}` be authorised as one
//!   model while a first-wins provider served the other; refusing leaves no
//!   reading to disagree about. Other duplicate keys are the provider's to read
//!   (the canonical decode kept the last; passed through, the provider applies
//!   its own rule).
//!
//! What moves to the provider: checks of fields the gateway does not read
//! (a `temperature` that is a string, an unknown message role). The provider
//! refuses those with its own 400, which reaches the caller as it does today for
//! any request the provider refuses.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::error::AdapterError;
use crate::provider::openai::classify_openai_error;
use crate::types::{ChatChunk, Usage};

/// Why a caller's request cannot be passed through. Each maps to a 400.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not UTF-8 ({0}); send JSON text encoded as UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("request body is not a JSON object; send a JSON object as documented for the API")]
    NotAnObject,
    /// The same error, and message, as the full decode gives.
    #[error("request body is not valid JSON for this endpoint: {0}; send a JSON object as documented for the API")]
    Malformed(#[source] serde_json::Error),
    /// Only when [`rewrite_request`] is given a body [`ChatHead::read`] did not
    /// accept: the head reader finds every syntax error first.
    #[error("request body is not valid JSON near byte {0}; send a JSON object as documented for the API")]
    Syntax(usize),
    #[error("request body has the key `{0}` more than once; send it once")]
    DuplicateKey(&'static str),
    #[error("`{0}` must be a JSON object or null")]
    NotAnObjectField(&'static str),
    /// Servers that match keys without regard to case (Go's `encoding/json`,
    /// ASP.NET) would read this key as the one the gateway decided on.
    #[error("request body has the key `{0}`, which some servers read as `{1}`; spell it `{1}`, exactly once")]
    LookAlikeKey(String, &'static str),
}

impl From<RequestError> for AdapterError {
    /// A serde error keeps the full decode's variant, so callers see one message
    /// format whichever path read their body.
    fn from(error: RequestError) -> AdapterError {
        match error {
            RequestError::Malformed(e) => AdapterError::MalformedRequest(e),
            other => AdapterError::InvalidRequest(other.to_string()),
        }
    }
}

// === Request heads ===

/// What the gateway reads of an OpenAI `POST /chat/completions` body, borrowed
/// from it. Reading it checks the whole body is a JSON object and refuses
/// duplicates of these keys, as the full decode does.
#[derive(Debug, Deserialize)]
pub struct ChatHead<'a> {
    /// Empty when absent, as in `ChatRequest`: the gateway answers "`model` is required".
    #[serde(default, borrow)]
    pub model: Cow<'a, str>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptionsHead>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Required and an array, as in `ChatRequest`; its items are the
    /// provider's to check. `IgnoredAny` is zero-sized, so the Vec never
    /// allocates.
    #[serde(rename = "messages")]
    _messages: Vec<IgnoredAny>,
}

/// `stream_options` as far as the gateway reads it.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct StreamOptionsHead {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl<'a> ChatHead<'a> {
    pub fn read(body: &'a [u8]) -> Result<ChatHead<'a>, RequestError> {
        serde_json::from_str(object_text(body)?).map_err(RequestError::Malformed)
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The output limit the caller asked for, whichever of the two names carried it
    /// (as `ChatRequest::output_limit`).
    pub fn output_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the caller itself asked for the usage chunk (as `types::wants_usage_chunk`).
    pub fn wants_usage_chunk(&self) -> bool {
        self.stream_options.and_then(|o| o.include_usage).unwrap_or(false)
    }
}

/// What the gateway reads of an OpenAI `POST /embeddings` body.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsHead<'a> {
    #[serde(default, borrow)]
    pub model: Cow<'a, str>,
    /// Required, as in `EmbeddingsRequest`; its shape is the provider's to check.
    #[serde(rename = "input")]
    _input: IgnoredAny,
}

impl<'a> EmbeddingsHead<'a> {
    pub fn read(body: &'a [u8]) -> Result<EmbeddingsHead<'a>, RequestError> {
        serde_json::from_str(object_text(body)?).map_err(RequestError::Malformed)
    }
}

/// The body as text, if it is UTF-8 and opens an object. Checked here because
/// serde's derive also reads a struct from an array (by position), which the
/// canonical types, having flattened fields, never accept; and because the
/// full decode refuses invalid UTF-8 anywhere, also inside strings that serde
/// only skips here.
fn object_text(body: &[u8]) -> Result<&str, RequestError> {
    let text = std::str::from_utf8(body).map_err(RequestError::NotUtf8)?;
    match text.bytes().find(|b| !is_ws(*b)) {
        // Nothing at all: serde reports the end of input, as the full decode does.
        None | Some(b'{') => Ok(text),
        Some(_) => Err(RequestError::NotAnObject),
    }
}

// === The request edit ===

/// What [`rewrite_request`] changes.
#[derive(Debug, Clone, Copy)]
pub struct RequestEdit<'a> {
    /// The provider's model id (Azure: the deployment name).
    pub model: &'a str,
    /// Set `stream_options.include_usage` to `true`: the gateway bills a stream
    /// from the provider's own counts, which come only when asked for.
    pub include_usage: bool,
}

/// The caller's body with the top-level `model` replaced by `edit.model` and,
/// when `edit.include_usage`, `stream_options.include_usage` set to `true`;
/// every other byte as it was.
///
/// - `model` absent: added as the object's last member (the gateway refuses a
///   request without a model before it gets here).
/// - `stream_options` absent or `null`: becomes `{"include_usage":true}`; an
///   object gets `include_usage` replaced (left alone when already `true`) or
///   added as its last member.
/// - A duplicate `model`, `stream_options` or `include_usage` is refused (see the
///   module docs), as is a `stream_options` that is not an object.
pub fn rewrite_request(body: &[u8], edit: &RequestEdit<'_>) -> Result<Vec<u8>, RequestError> {
    // The output must be the JSON the head reader accepted: same UTF-8 check.
    std::str::from_utf8(body).map_err(RequestError::NotUtf8)?;
    let open = skip_ws(body, 0);
    if body.get(open) != Some(&b'{') {
        return Err(RequestError::NotAnObject);
    }
    let mut model: Option<Range<usize>> = None;
    let mut options: Option<Range<usize>> = None;
    let top = scan_object(body, open, |member| {
        refuse_look_alike(body, &member.key, DECIDED_KEYS)?;
        if key_is(body, &member.key, "model")? {
            if model.replace(member.value.clone()).is_some() {
                return Err(RequestError::DuplicateKey("model"));
            }
        } else if key_is(body, &member.key, "stream_options")? && options.replace(member.value.clone()).is_some() {
            return Err(RequestError::DuplicateKey("stream_options"));
        }
        Ok(())
    })?;
    let end = skip_ws(body, top.close + 1);
    if end != body.len() {
        return Err(RequestError::Syntax(end));
    }

    // (span replaced, bytes put there); an empty span is an insertion.
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(3);
    // Members added at the end of the top-level object, each with a leading comma.
    let mut added: Vec<u8> = Vec::new();
    let new_model = serde_json::to_vec(edit.model).map_err(RequestError::Malformed)?;
    match model {
        Some(span) => edits.push((span, new_model)),
        None => {
            added.extend_from_slice(b",\"model\":");
            added.extend_from_slice(&new_model);
        }
    }
    if edit.include_usage {
        const WITH_USAGE: &[u8] = br#"{"include_usage":true}"#;
        match options {
            None => {
                added.extend_from_slice(b",\"stream_options\":");
                added.extend_from_slice(WITH_USAGE);
            }
            Some(span) if &body[span.clone()] == b"null" => edits.push((span, WITH_USAGE.to_vec())),
            Some(span) if body[span.start] == b'{' => {
                let mut flag: Option<Range<usize>> = None;
                let inner = scan_object(body, span.start, |member| {
                    refuse_look_alike(body, &member.key, &["include_usage"])?;
                    if key_is(body, &member.key, "include_usage")? && flag.replace(member.value.clone()).is_some() {
                        return Err(RequestError::DuplicateKey("include_usage"));
                    }
                    Ok(())
                })?;
                match flag {
                    Some(value) if &body[value.clone()] == b"true" => {}
                    Some(value) => edits.push((value, b"true".to_vec())),
                    None => {
                        let member: &[u8] =
                            if inner.empty { b"\"include_usage\":true" } else { b",\"include_usage\":true" };
                        edits.push((inner.insert_at..inner.insert_at, member.to_vec()));
                    }
                }
            }
            Some(_) => return Err(RequestError::NotAnObjectField("stream_options")),
        }
    }
    if !added.is_empty() {
        if top.empty {
            added.remove(0);
        }
        edits.push((top.insert_at..top.insert_at, added));
    }

    // Spans never overlap: each lies inside a different member, and the
    // insertions sit after the last member's value or inside `stream_options`.
    edits.sort_by_key(|(span, _)| (span.start, span.end));
    let grown: usize = edits.iter().map(|(_, with)| with.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grown);
    let mut at = 0;
    for (span, with) in &edits {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(with);
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    Ok(out)
}

/// JSON's own whitespace (RFC 8259 §2); nothing else may pad a token.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// Just past the string that opens at `i` (`b[i]` is `"`). An escape is a
/// backslash and the byte after it (`\u` is followed by hex digits only, which
/// need no care here).
fn string_end(b: &[u8], i: usize) -> Result<usize, RequestError> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Ok(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    Err(RequestError::Syntax(i))
}

/// Just past the value that starts at `i`. Containers are skipped by counting
/// brackets outside strings, in a loop: a body nested deeper than any stack
/// could recurse is still only a counter here. The syntax inside was checked
/// by the head reader; this finds boundaries only.
fn value_end(b: &[u8], i: usize) -> Result<usize, RequestError> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err(RequestError::Syntax(i))
        }
        // A number or a literal runs to the next delimiter.
        Some(_) => {
            let len = b[i..].iter().position(|&c| matches!(c, b',' | b'}' | b']') || is_ws(c)).unwrap_or(b.len() - i);
            if len == 0 { Err(RequestError::Syntax(i)) } else { Ok(i + len) }
        }
        None => Err(RequestError::Syntax(i)),
    }
}

/// One member of an object: its key (quotes included) and value spans.
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

/// Where an object ends, and where a new member goes.
struct ObjectEnd {
    /// The closing `}`.
    close: usize,
    /// Just after the last member's value, or just after `{` when empty: a
    /// member added there leaves the object's own spacing as it was.
    insert_at: usize,
    empty: bool,
}

/// Walks the members of the object opening at `open`, without looking inside
/// their values.
fn scan_object(
    b: &[u8],
    open: usize,
    mut each: impl FnMut(&Member) -> Result<(), RequestError>,
) -> Result<ObjectEnd, RequestError> {
    let mut i = skip_ws(b, open + 1);
    let mut end = ObjectEnd { close: i, insert_at: open + 1, empty: true };
    if b.get(i) == Some(&b'}') {
        return Ok(end);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(RequestError::Syntax(i));
        }
        let key_end = string_end(b, i)?;
        let key = i..key_end;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(RequestError::Syntax(i));
        }
        i = skip_ws(b, i + 1);
        let value_end = value_end(b, i)?;
        each(&Member { key, value: i..value_end })?;
        end.insert_at = value_end;
        end.empty = false;
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => {
                end.close = i;
                return Ok(end);
            }
            _ => return Err(RequestError::Syntax(i)),
        }
    }
}

/// The top-level keys the gateway reads and decides on.
const DECIDED_KEYS: &[&str] = &["model", "stream", "stream_options", "messages", "max_tokens", "max_completion_tokens"];

/// Refuses a key that is not one of `names` but folds to one of them the way
/// case-insensitive JSON readers fold (ASCII case, and Unicode's `ſ` → `s`
/// and Kelvin sign → `k`, as Go's `strings.EqualFold` does): such a server
/// could read `{"model":"cheap","Model":"dear"}` as the dear one.
fn refuse_look_alike(b: &[u8], key: &Range<usize>, names: &[&'static str]) -> Result<(), RequestError> {
    let raw = &b[key.start + 1..key.end - 1];
    let decoded: Cow<'_, str> = if raw.contains(&b'\\') {
        serde_json::from_slice(&b[key.clone()]).map_err(RequestError::Malformed)?
    } else {
        Cow::Borrowed(std::str::from_utf8(raw).map_err(RequestError::NotUtf8)?)
    };
    let folds_to = |name: &str| {
        let mut folded = decoded.chars().map(|c| match c {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        });
        name.chars().all(|n| folded.next() == Some(n)) && folded.next().is_none()
    };
    match names.iter().find(|name| folds_to(name)) {
        Some(name) if *decoded != **name => Err(RequestError::LookAlikeKey(decoded.into_owned(), name)),
        _ => Ok(()),
    }
}

/// Whether the key spanning `key` (quotes included) decodes to `name`. Keys
/// without a backslash are compared as bytes; an escaped one is decoded, since
/// serde and the provider both read `"mod\u0065l"` as `model`.
fn key_is(b: &[u8], key: &Range<usize>, name: &str) -> Result<bool, RequestError> {
    let raw = &b[key.start + 1..key.end - 1];
    if !raw.contains(&b'\\') {
        return Ok(raw == name.as_bytes());
    }
    let decoded: Cow<'_, str> = serde_json::from_slice(&b[key.clone()]).map_err(RequestError::Malformed)?;
    Ok(decoded == name)
}

// === Borrowed readers ===

/// A JSON string, borrowed from the input when it has no escapes. (serde
/// borrows a bare `Cow<str>` field on request, but not one inside an `Option`
/// or a `Vec`.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

struct TextVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'a>, E> {
        Ok(Text(Cow::Owned(v)))
    }
}

/// Whether a key is there at all, `null` included: an OpenAI stream event with
/// an `error` key is an error, whatever its value (as the full decoder reads it).
#[derive(Debug, Default, Clone, Copy)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer)?;
        Ok(Present(true))
    }
}

/// The usage counts billing reads: input, output, and the cached part of the
/// input (billed at its own price). Reasoning tokens are part of the output
/// count already. `null` counts are read as absent.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct UsageScan {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<DetailsScan>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct DetailsScan {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl UsageScan {
    fn to_usage(self) -> Usage {
        Usage::new(
            self.prompt_tokens.unwrap_or(0),
            self.completion_tokens.unwrap_or(0),
            self.prompt_tokens_details.map(|d| d.cached_tokens.unwrap_or(0)),
        )
    }
}

/// Fails unless the body opens a JSON object (after whitespace).
/// The answer as text, if it is UTF-8 and opens an object. Checked whole:
/// serde skips the strings it ignores without checking their UTF-8, and the
/// caller is sent the bytes as `application/json`.
fn opens_object<'a>(provider: &'static str, what: &str, body: &'a [u8]) -> Result<&'a str, AdapterError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| AdapterError::bad_payload(provider, format!("{what}: not UTF-8 ({e})")))?;
    match text.bytes().find(|b| !is_ws(*b)) {
        Some(b'{') => Ok(text),
        _ => Err(AdapterError::bad_payload(provider, format!("{what}: not a JSON object"))),
    }
}

/// A non-streamed `chat.completion` answer, read for billing only: the whole
/// body is checked to be JSON, but only usage, the first choice's finish reason
/// and the message text are kept. The caller gets the body as it came.
#[derive(Debug, Deserialize)]
pub struct ChatAnswer<'a> {
    #[serde(default, borrow)]
    model: Option<Text<'a>>,
    #[serde(default)]
    usage: Option<UsageScan>,
    /// Required, as in `ChatResponse`: a body without it is no chat completion.
    #[serde(borrow)]
    choices: Vec<AnswerChoice<'a>>,
}

#[derive(Debug, Deserialize)]
struct AnswerChoice<'a> {
    #[serde(default, borrow)]
    message: Option<AnswerMessage<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
struct AnswerMessage<'a> {
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
}

/// Message content: a string, or parts of which the text ones count.
#[derive(Debug)]
enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Debug, Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor(PhantomData))
    }
}

struct ContentVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
    type Value = Content<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of content parts")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Content<'a>, E> {
        Ok(Content::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content<'a>, E> {
        Ok(Content::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content<'a>, E> {
        Ok(Content::Text(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'a>, A::Error> {
        let mut parts = Vec::new();
        while let Some(part) = seq.next_element::<Part<'a>>()? {
            parts.push(part);
        }
        Ok(Content::Parts(parts))
    }
}

impl<'a> ChatAnswer<'a> {
    /// `provider` names the provider in an error (`ProviderAdapter::system`).
    pub fn read(provider: &'static str, body: &'a [u8]) -> Result<ChatAnswer<'a>, AdapterError> {
        let text = opens_object(provider, "chat completion", body)?;
        serde_json::from_str(text).map_err(|e| AdapterError::bad_payload(provider, format!("chat completion: {e}")))
    }

    /// The provider's counts; `None` when it reported none (the gateway then
    /// estimates, and gives the caller the estimate as the full path does).
    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(UsageScan::to_usage)
    }

    /// The model the provider says answered (e.g. a dated snapshot).
    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().map(|m| &*m.0)
    }

    /// The first choice's, as the full path records it.
    pub fn finish_reason(&self) -> Option<String> {
        self.choices.first().and_then(|c| c.finish_reason.as_ref()).map(|r| r.0.to_string())
    }

    /// The text of every choice's message, joined: what the tokenizer counts when
    /// the provider's output count is missing or zero. Tool calls are not part of
    /// it, as in the full path (`ChatMessage::text`).
    pub fn output_text(&self) -> String {
        let mut text = String::new();
        for content in self.choices.iter().filter_map(|c| c.message.as_ref()?.content.as_ref()) {
            match content {
                Content::Text(t) => text.push_str(t),
                Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_ref()).for_each(|t| text.push_str(&t.0)),
            }
        }
        text
    }
}

/// A non-streamed embeddings answer, read for its usage only.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsAnswer<'a> {
    #[serde(default, borrow)]
    model: Option<Text<'a>>,
    #[serde(default)]
    usage: Option<UsageScan>,
    /// Required, as in `EmbeddingsResponse`; the vectors are skipped, never parsed as floats.
    #[serde(rename = "data")]
    _data: IgnoredAny,
}

impl<'a> EmbeddingsAnswer<'a> {
    pub fn read(provider: &'static str, body: &'a [u8]) -> Result<EmbeddingsAnswer<'a>, AdapterError> {
        let text = opens_object(provider, "embeddings", body)?;
        serde_json::from_str(text).map_err(|e| AdapterError::bad_payload(provider, format!("embeddings: {e}")))
    }

    /// Input tokens, as the full path bills them (`Usage::new(prompt_tokens, 0, None)`).
    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(|u| Usage::new(u.prompt_tokens.unwrap_or(0), 0, None))
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().map(|m| &*m.0)
    }
}

// === Streams ===

/// One `chat.completion.chunk`, as far as billing reads it.
#[derive(Debug, Deserialize)]
struct ChunkScan<'a> {
    #[serde(default, borrow)]
    id: Option<Text<'a>>,
    #[serde(default, borrow)]
    object: Option<Text<'a>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    model: Option<Text<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChunkChoiceScan<'a>>>,
    #[serde(default)]
    usage: Option<UsageScan>,
    #[serde(default)]
    error: Present,
}

#[derive(Debug, Deserialize)]
struct ChunkChoiceScan<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaScan<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
struct DeltaScan<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallScan<'a>>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallScan<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionScan<'a>>,
}

#[derive(Debug, Deserialize)]
struct FunctionScan<'a> {
    #[serde(default, borrow)]
    arguments: Option<Text<'a>>,
}

/// id, object, created and model of the last chunk with choices, for a usage
/// chunk the gateway adds at the end.
#[derive(Debug, Default)]
struct LastChunk {
    id: String,
    object: String,
    created: u64,
    model: String,
}

/// Overwrites `slot` only when the value changed: every chunk of a stream
/// repeats the same id and model, and copying them each time would allocate.
fn keep(slot: &mut String, value: Option<&Text<'_>>) {
    if let Some(value) = value
        && slot.as_str() != value.0
    {
        slot.clear();
        slot.push_str(&value.0);
    }
}

/// Where lines and events end in an SSE byte stream (WHATWG rules: a line ends
/// at CR, LF or CRLF; an event at an empty line), kept across reads: a read may
/// end anywhere, between the CR and LF of a CRLF included.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes of the current event already looked at.
    scanned: usize,
    /// Where the current line starts, in the current event.
    line_start: usize,
    /// The last byte looked at was a CR: an LF right after it ends no line.
    after_cr: bool,
}

impl Framing {
    /// The length of the first whole event in `window` (which starts where the
    /// current event does), blank line included; `None` if it is not complete yet.
    fn event_end(&mut self, window: &[u8]) -> Option<usize> {
        let mut i = self.scanned;
        while i < window.len() {
            let b = window[i];
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    self.line_start = i;
                    continue;
                }
            }
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let blank = i == self.line_start;
            i += 1;
            if b == b'\r' {
                match window.get(i) {
                    Some(b'\n') => i += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.line_start = i;
            if blank {
                self.scanned = 0;
                self.line_start = 0;
                return Some(i);
            }
        }
        self.scanned = i;
        None
    }
}

/// The lines of an event, without their terminators (CR, LF or CRLF).
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r').unwrap_or(rest.len());
        let line = &rest[..end];
        let next = match rest.get(end) {
            None => end,
            Some(b'\r') if rest.get(end + 1) == Some(&b'\n') => end + 2,
            Some(_) => end + 1,
        };
        rest = &rest[next..];
        Some(line)
    })
}

/// An event's `data` (its data lines joined with `\n`), or `None` when it has
/// none (a comment, a keep-alive).
fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in lines(event) {
        if line.first() == Some(&b':') {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field != b"data" {
            continue;
        }
        match &mut data {
            None => data = Some(Cow::Borrowed(value)),
            Some(joined) => {
                let joined = joined.to_mut();
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
        }
    }
    data
}

/// What becomes of one upstream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Forward,
    Drop,
}

/// The bytes of the end-of-stream marker.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// A partial event longer than this ends the stream as a bad payload: without
/// a bound, a provider that never sends a blank line would hold memory without
/// limit. OpenAI's events are a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// An OpenAI-format stream passed through to an OpenAI-format caller: the
/// provider's events are forwarded as they come, byte for byte, and read only
/// for billing (usage, finish reason, output text, the `[DONE]` marker).
///
/// Events are forwarded whole, as soon as their blank line arrives; a read that
/// holds only whole events is forwarded as slices of itself, without a copy.
/// What is not forwarded, so the caller sees what the full path would send:
///
/// - events without choices (a usage-only chunk, Azure's prompt-filter chunk),
///   except a usage chunk when the caller itself asked for usage: the gateway
///   always asks the provider for usage, to bill by its counts;
/// - an event with an `error` key: the stream fails ([`feed`](Self::feed)
///   returns the error) and the gateway ends it with its own error event;
/// - `[DONE]` and anything after it: the gateway sends [`closing`](Self::closing)
///   once the provider's body has ended, with the usage chunk the caller asked
///   for if the provider sent none.
///
/// Comments and keep-alives are forwarded; events with an empty `data` are not.
pub struct ChatStreamScanner {
    provider: &'static str,
    /// The caller asked for usage (`stream_options.include_usage`).
    forward_usage: bool,
    framing: Framing,
    /// The event under way, when a read ended inside it.
    partial: BytesMut,
    /// The last event ended a read with the CR of a CRLF: the LF opening the
    /// next read is that event's, and goes (or not) with it.
    owed_lf: Option<Verdict>,
    done: bool,
    usage: Option<Usage>,
    /// The usage came in a usage-only chunk (empty `choices`), not on a content
    /// chunk (some compatible servers report running counts on every chunk).
    final_usage: bool,
    usage_forwarded: bool,
    finish_reason: Option<String>,
    text: String,
    output: bool,
    last: Option<LastChunk>,
}

impl ChatStreamScanner {
    /// `provider` names the provider in errors (`ProviderAdapter::system`);
    /// `forward_usage` is whether the caller asked for the usage chunk.
    pub fn new(provider: &'static str, forward_usage: bool) -> ChatStreamScanner {
        ChatStreamScanner {
            provider,
            forward_usage,
            framing: Framing::default(),
            partial: BytesMut::new(),
            owed_lf: None,
            done: false,
            usage: None,
            final_usage: false,
            usage_forwarded: false,
            finish_reason: None,
            text: String::new(),
            output: false,
            last: None,
        }
    }

    /// Upstream bytes in (any split); the whole events they complete that the
    /// caller is to get go to `out`, in order. On an error, the events before
    /// it are already in `out`; the one that failed is not.
    pub fn feed(&mut self, bytes: Bytes, out: &mut impl Extend<Bytes>) -> Result<(), AdapterError> {
        if self.partial.is_empty() {
            let mut start = 0;
            if !bytes.is_empty()
                && let Some(verdict) = self.owed_lf.take()
                && bytes[0] == b'\n'
            {
                self.framing.after_cr = false;
                start = 1;
                if verdict == Verdict::Forward {
                    out.extend(std::iter::once(bytes.slice(..1)));
                }
            }
            while start < bytes.len() {
                match self.framing.event_end(&bytes[start..]) {
                    Some(len) => {
                        let event = bytes.slice(start..start + len);
                        start += len;
                        self.on_event(event, false, out)?;
                    }
                    None => {
                        self.partial.extend_from_slice(&bytes[start..]);
                        break;
                    }
                }
            }
        } else {
            self.partial.extend_from_slice(&bytes);
            while let Some(len) = self.framing.event_end(&self.partial) {
                let event = self.partial.split_to(len).freeze();
                self.on_event(event, false, out)?;
            }
        }
        if self.partial.len() > MAX_EVENT_BYTES {
            return Err(AdapterError::bad_payload(
                self.provider,
                format!("a stream event exceeds {MAX_EVENT_BYTES} bytes without ending"),
            ));
        }
        Ok(())
    }

    /// The provider's body ended. A last event without its blank line still
    /// counts (several compatible servers end with `data: [DONE]\n`); forwarded,
    /// it gets the line ends it lacked, so what the gateway sends next starts an
    /// event of its own. `Err(AdapterError::Truncated)` unless `[DONE]` came.
    pub fn finish(&mut self, out: &mut impl Extend<Bytes>) -> Result<(), AdapterError> {
        if !self.partial.is_empty() {
            let event = self.partial.split().freeze();
            self.framing = Framing::default();
            if !event.iter().all(|&b| b == b'\n' || b == b'\r') {
                self.on_event(event, true, out)?;
            }
        }
        if !self.done {
            return Err(AdapterError::Truncated { provider: self.provider, marker: "data: [DONE]" });
        }
        Ok(())
    }

    fn on_event(&mut self, event: Bytes, unterminated: bool, out: &mut impl Extend<Bytes>) -> Result<(), AdapterError> {
        let verdict = self.judge(&event)?;
        // Set by `event_end` only when this event's blank line ended the read with a CR.
        if self.framing.after_cr && !unterminated {
            self.owed_lf = Some(verdict);
        }
        if verdict == Verdict::Forward {
            let end: &'static [u8] = match event.last() {
                _ if !unterminated => b"",
                Some(b'\n') => b"\n",
                // A CR and an LF after it would end one line only.
                _ => b"\n\n",
            };
            out.extend(std::iter::once(event));
            if !end.is_empty() {
                out.extend(std::iter::once(Bytes::from_static(end)));
            }
        }
        Ok(())
    }

    fn judge(&mut self, event: &[u8]) -> Result<Verdict, AdapterError> {
        if self.done {
            return Ok(Verdict::Drop);
        }
        let Some(data) = event_data(event) else {
            // Comments (keep-alives) go out; anything else without data (a
            // JSON body where a stream was asked for, `event:`-only lines) is
            // not the caller's to see unbilled: dropped, and a stream that
            // never says `[DONE]` ends as truncated.
            let comment_only = lines(event).all(|line| line.is_empty() || line.first() == Some(&b':'));
            return Ok(if comment_only { Verdict::Forward } else { Verdict::Drop });
        };
        let data = std::str::from_utf8(&data)
            .map_err(|e| AdapterError::bad_payload(self.provider, format!("stream line is not UTF-8: {e}")))?
            .trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Verdict::Drop);
        }
        if data.is_empty() {
            return Ok(Verdict::Drop);
        }
        let chunk: ChunkScan<'_> = serde_json::from_str(data)
            .map_err(|e| AdapterError::bad_payload(self.provider, format!("stream chunk: {e}")))?;
        if chunk.error.0 {
            let error = classify_openai_error(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), data.as_bytes());
            return Err(AdapterError::UpstreamStream { provider: self.provider, error });
        }
        let choices = chunk.choices.as_deref().unwrap_or_default();
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.to_usage());
            self.final_usage = choices.is_empty();
        }
        for choice in choices {
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.0.to_string());
            }
            let Some(delta) = &choice.delta else { continue };
            if let Some(content) = &delta.content {
                self.output |= !content.0.is_empty();
                self.text.push_str(&content.0);
            }
            if let Some(calls) = &delta.tool_calls {
                self.output = true;
                for args in calls.iter().filter_map(|c| c.function.as_ref()?.arguments.as_ref()) {
                    self.text.push_str(&args.0);
                }
            }
        }
        if !choices.is_empty() {
            let last = self.last.get_or_insert_with(LastChunk::default);
            keep(&mut last.id, chunk.id.as_ref());
            keep(&mut last.object, chunk.object.as_ref());
            keep(&mut last.model, chunk.model.as_ref());
            last.created = chunk.created.unwrap_or(last.created);
            return Ok(Verdict::Forward);
        }
        if chunk.usage.is_some() && self.forward_usage {
            self.usage_forwarded = true;
            return Ok(Verdict::Forward);
        }
        Ok(Verdict::Drop)
    }

    /// What the gateway sends once the provider's stream completed: the usage
    /// chunk the caller asked for when the provider sent none (carrying
    /// `billed`, the gateway's count), then `data: [DONE]`.
    pub fn closing(&self, billed: &Usage) -> Bytes {
        if !self.forward_usage || self.usage_forwarded {
            return Bytes::from_static(DONE_EVENT);
        }
        let mut chunk = match &self.last {
            Some(last) => {
                let mut chunk = ChatChunk::new(&last.id, last.created, &last.model);
                if !last.object.is_empty() {
                    chunk.object.clone_from(&last.object);
                }
                chunk
            }
            None => ChatChunk::new("chatcmpl-tollgate", 0, ""),
        };
        chunk.usage = Some(billed.clone());
        let mut out = Vec::new();
        if let Ok(json) = serde_json::to_vec(&chunk) {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(DONE_EVENT);
        Bytes::from(out)
    }

    /// Usage the provider reported so far, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }

    /// Whether [`usage`](Self::usage) holds the provider's final counts (as
    /// `StreamDecoder::usage_is_final`).
    pub fn usage_is_final(&self) -> bool {
        self.usage.is_some() && (self.final_usage || self.done)
    }

    pub fn finish_reason(&self) -> Option<String> {
        self.finish_reason.clone()
    }

    /// Text produced so far (content and tool-call arguments), for the tokenizer
    /// when a stream is cut before its final counts.
    pub fn output_text(&self) -> &str {
        &self.text
    }

    /// Whether any output (text or a tool call) came yet: the time to first token.
    pub fn has_output(&self) -> bool {
        self.output
    }

    /// Whether `[DONE]` came.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::types::ChatRequest;

    fn edit(body: &str, model: &str, include_usage: bool) -> Result<String, RequestError> {
        rewrite_request(body.as_bytes(), &RequestEdit { model, include_usage })
            .map(|b| String::from_utf8(b).expect("UTF-8 out"))
    }

    // --- request heads ---

    #[test]
    fn the_head_reads_what_the_gateway_decides_on() {
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true,"x":1},
            "max_tokens":10,"max_completion_tokens":20,"messages":[{"role":"user","content":"hi"}],"logprobs":true}"#;
        let head = ChatHead::read(body).unwrap();
        assert_eq!(head.model, "gpt-4o");
        assert!(matches!(head.model, Cow::Borrowed(_)), "an unescaped model is borrowed");
        assert!(head.is_stream() && head.wants_usage_chunk());
        assert_eq!(head.output_limit(), Some(20));

        let head = ChatHead::read(br#"{"model":"g\u0070t","messages":[],"max_tokens":5}"#).unwrap();
        assert_eq!((&*head.model, head.is_stream(), head.wants_usage_chunk()), ("gpt", false, false));
        assert_eq!(head.output_limit(), Some(5));
        assert_eq!(ChatHead::read(br#"{"messages":[]}"#).unwrap().model, "", "absent: empty, as ChatRequest");
    }

    #[test]
    fn the_head_agrees_with_the_full_decode_on_what_it_reads() {
        let bodies: &[&str] = &[
            r#"{"model":"a","messages":[]}"#,
            r#"{"model":"a","messages":[],"stream":true}"#,
            r#"{"model":"a","messages":[],"stream":false,"stream_options":null}"#,
            r#"{"model":"a","messages":[],"stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"a","messages":[],"stream":true,"stream_options":{"include_usage":null,"z":[1]}}"#,
            r#"{"mod\u0065l":"b","messages":[],"max_tokens":3}"#,
            r#"  {"messages":[{"role":"user","content":"x"}],"model":"c\"d","max_completion_tokens":7}  "#,
            // Refused by both: duplicates (also spelled with an escape), wrong types, not an object.
            r#"{"model":"a","model":"b","messages":[]}"#,
            r#"{"model":"a","mod\u0065l":"b","messages":[]}"#,
            r#"{"model":"a","messages":[],"stream":true,"stream":false}"#,
            r#"{"model":"a","messages":[],"stream_options":{},"stream_options":{}}"#,
            r#"{"model":"a","messages":[],"stream_options":{"include_usage":true,"include_usage":false}}"#,
            r#"{"model":1,"messages":[]}"#,
            r#"{"model":null,"messages":[]}"#,
            r#"{"model":"a","messages":"nope"}"#,
            r#"{"model":"a"}"#,
            r#"{"model":"a","messages":[],"stream":"yes"}"#,
            r#"{"model":"a","messages":[],"stream_options":"x"}"#,
            r#"["a",[]]"#,
            r#"{"model":"a","messages":[]} x"#,
            r#"{"model":"a","messages":[],}"#,
            "",
        ];
        for body in bodies {
            let full = serde_json::from_str::<ChatRequest>(body);
            let head = ChatHead::read(body.as_bytes());
            match (&full, &head) {
                (Ok(full), Ok(head)) => {
                    assert_eq!(full.model, head.model, "{body}");
                    assert_eq!(full.is_stream(), head.is_stream(), "{body}");
                    assert_eq!(crate::types::wants_usage_chunk(full), head.wants_usage_chunk(), "{body}");
                    assert_eq!(full.output_limit(), head.output_limit(), "{body}");
                }
                (Err(_), Err(_)) => {}
                _ => {
                    panic!("{body}: full decode {:?}, head {:?}", full.as_ref().map(|_| ()), head.as_ref().map(|_| ()))
                }
            }
        }
    }

    #[test]
    fn a_body_that_is_no_json_object_is_refused_before_anything_is_sent() {
        let bodies: [&[u8]; 4] = [b"[]", b"\"x\"", b"null", b" 5 "];
        for body in bodies {
            assert!(matches!(ChatHead::read(body), Err(RequestError::NotAnObject)), "{body:?}");
            assert!(matches!(
                rewrite_request(body, &RequestEdit { model: "m", include_usage: true }),
                Err(RequestError::NotAnObject)
            ));
        }
        assert!(matches!(ChatHead::read(b""), Err(RequestError::Malformed(_))));
        assert!(matches!(ChatHead::read(b"{\"model\":\"a\",\"messages\":["), Err(RequestError::Malformed(_))));
        let latin1 = b"{\"model\":\"a\",\"messages\":[],\"user\":\"\xe9\"}";
        assert!(matches!(ChatHead::read(latin1), Err(RequestError::NotUtf8(_))), "invalid UTF-8, even where skipped");
        assert!(matches!(
            rewrite_request(latin1, &RequestEdit { model: "m", include_usage: false }),
            Err(RequestError::NotUtf8(_))
        ));
        // The error reads as the full decode's does.
        let error = AdapterError::from(ChatHead::read(br#"{"model":"a","model":"b","messages":[]}"#).unwrap_err());
        assert!(matches!(error, AdapterError::MalformedRequest(_)));
        assert!(error.to_string().contains("duplicate field `model`"), "{error}");
    }

    #[test]
    fn embeddings_heads_read_the_model_and_require_input() {
        let head =
            EmbeddingsHead::read(br#"{"input":["a","b"],"model":"text-embedding-3-small","dimensions":4}"#).unwrap();
        assert_eq!(head.model, "text-embedding-3-small");
        assert!(EmbeddingsHead::read(br#"{"model":"m"}"#).is_err(), "input is required");
        assert!(EmbeddingsHead::read(br#"{"model":"m","model":"n","input":"x"}"#).is_err());
        assert_eq!(
            edit(r#"{"input": "x", "model": "alias"}"#, "text-embedding-3-small", false).unwrap(),
            r#"{"input": "x", "model": "text-embedding-3-small"}"#
        );
    }

    // --- the request edit ---

    #[test]
    fn only_the_top_level_model_changes_and_every_other_byte_is_kept() {
        let body = concat!(
            "{\n  \"model\" : \"smart\" ,\n",
            "  \"messages\": [{\"role\": \"user\", \"content\": \"which \\\"model\\\"? {not: json}\", \"model\": \"x\"}],\n",
            "  \"metadata\": {\"model\": \"inner\", \"n\": 1.50, \"big\": 12345678901234567890123},\n",
            "  \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": ",
            "{\"type\": \"object\", \"properties\": {\"model\": {\"type\": \"string\"}}}}}],\n",
            "  \"x-unknown\": [true, false, null, -0.0e+10, \"\\u00e9\\ud83d\\ude00\"],\n",
            "  \"zzz\": {}\n}\n"
        );
        let out = edit(body, "gpt-4o-2024-08-06", false).unwrap();
        assert_eq!(out, body.replacen("\"smart\"", "\"gpt-4o-2024-08-06\"", 1));
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["metadata"]["model"], "inner");
        assert_eq!(value["messages"][0]["model"], "x");
    }

    #[test]
    fn an_escaped_model_key_is_the_model_and_a_duplicate_is_refused() {
        assert_eq!(
            edit(r#"{"mod\u0065l":"cheap","messages":[]}"#, "dear", false).unwrap(),
            r#"{"mod\u0065l":"dear","messages":[]}"#
        );
        for body in [
            r#"{"model":"cheap","messages":[],"model":"dear"}"#,
            r#"{"model":"cheap","mod\u0065l":"dear","messages":[]}"#,
        ] {
            assert!(matches!(edit(body, "m", false), Err(RequestError::DuplicateKey("model"))), "{body}");
        }
        assert!(matches!(
            edit(r#"{"model":"a","stream_options":{},"stream_options":null}"#, "m", true),
            Err(RequestError::DuplicateKey("stream_options"))
        ));
        assert!(matches!(
            edit(r#"{"model":"a","stream_options":{"include_usage":false,"include_usag\u0065":true}}"#, "m", true),
            Err(RequestError::DuplicateKey("include_usage"))
        ));
        // Keys a case-insensitive server would read as one the gateway decided on.
        for body in [
            r#"{"Model":"x","model":"a"}"#,
            r#"{"model":"a","STREAM":false}"#,
            r#"{"model":"a","\u017Ftream":true}"#,
            r#"{"model":"a","max_to\u212Aens":9}"#,
            r#"{"model":"a","stream_options":{"Include_Usage":false}}"#,
        ] {
            assert!(matches!(edit(body, "b", true), Err(RequestError::LookAlikeKey(..))), "{body}");
        }
        // Other keys are the provider's, whatever their case.
        assert_eq!(edit(r#"{"Modal":"x","model":"a"}"#, "b", false).unwrap(), r#"{"Modal":"x","model":"b"}"#);
    }

    #[test]
    fn a_stream_answered_with_something_else_forwards_nothing_of_it() {
        let body = br#"{"id":"c","object":"chat.completion","choices":[{"message":{"content":"free"}}]}"#;
        let mut scanner = ChatStreamScanner::new("openai_compatible", false);
        let (out, ended) = run(&mut scanner, body, &[]);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert!(matches!(ended, Err(AdapterError::Truncated { .. })));
        let mut scanner = ChatStreamScanner::new("openai", false);
        let (out, _) = run(&mut scanner, b"event: ping\nid: 7\n\n: keep-alive\n\n", &[]);
        assert_eq!(out, b": keep-alive\n\n", "comments only");
    }

    #[test]
    fn the_new_model_is_written_as_a_json_string() {
        let out = edit(r#"{"model":"a"}"#, "we\"ird\\name\u{1}é", false).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["model"], "we\"ird\\name\u{1}é");
        // An escaped old value is replaced whole.
        assert_eq!(edit(r#"{"model":"a\"b\\"}"#, "c", false).unwrap(), r#"{"model":"c"}"#);
    }

    #[test]
    fn stream_options_include_usage_is_set_with_the_least_change() {
        let cases: &[(&str, &str)] = &[
            // Absent: added after the last member, the object's own spacing kept.
            (
                r#"{"model":"a","stream":true}"#,
                r#"{"model":"b","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                "{\"model\":\"a\", \"n\": 1 \n}",
                "{\"model\":\"b\", \"n\": 1,\"stream_options\":{\"include_usage\":true} \n}",
            ),
            // An object: the flag added after its last member, or replaced, or left as it is.
            (
                r#"{"stream_options": {"x": [1]}, "model": "a"}"#,
                r#"{"stream_options": {"x": [1],"include_usage":true}, "model": "b"}"#,
            ),
            (r#"{"stream_options":{ },"model":"a"}"#, r#"{"stream_options":{"include_usage":true },"model":"b"}"#),
            (
                r#"{"stream_options":{"include_usage": false, "y": 2},"model":"a"}"#,
                r#"{"stream_options":{"include_usage": true, "y": 2},"model":"b"}"#,
            ),
            (
                r#"{"stream_options":{"include_usage":null},"model":"a"}"#,
                r#"{"stream_options":{"include_usage":true},"model":"b"}"#,
            ),
            (
                r#"{"stream_options":{"include_usage" : true},"model":"a"}"#,
                r#"{"stream_options":{"include_usage" : true},"model":"b"}"#,
            ),
            // null: what the full path does too (`get_or_insert`).
            (r#"{"model":"a","stream_options":null}"#, r#"{"model":"b","stream_options":{"include_usage":true}}"#),
            // A nested stream_options is not the one.
            (
                r#"{"metadata":{"stream_options":{}},"model":"a"}"#,
                r#"{"metadata":{"stream_options":{}},"model":"b","stream_options":{"include_usage":true}}"#,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(&edit(body, "b", true).unwrap(), expected, "{body}");
        }
        assert!(matches!(
            edit(r#"{"model":"a","stream_options":true}"#, "b", true),
            Err(RequestError::NotAnObjectField(_))
        ));
        // Not asked: stream_options is the caller's, whatever it holds.
        let body = r#"{"model":"a","stream_options":{"include_usage":false}}"#;
        assert_eq!(edit(body, "b", false).unwrap(), r#"{"model":"b","stream_options":{"include_usage":false}}"#);
    }

    #[test]
    fn a_missing_model_is_added_and_an_empty_object_stays_valid() {
        assert_eq!(edit("{}", "m", false).unwrap(), r#"{"model":"m"}"#);
        assert_eq!(edit(" { } ", "m", true).unwrap(), r#" {"model":"m","stream_options":{"include_usage":true} } "#);
        assert_eq!(edit(r#"{"messages":[]}"#, "m", false).unwrap(), r#"{"messages":[],"model":"m"}"#);
    }

    #[test]
    fn every_edit_means_what_the_canonical_edit_means() {
        let bodies = [
            r#"{"model":"a","messages":[{"role":"user","content":"]}\"{["}],"stream":true}"#,
            r#"{"messages":[],"stream_options":{"include_usage":false,"q":{"r":[]}},"model":"a"}"#,
            r#"{"model" :"a" ,"stream_options" : null , "temperature":0.2e1}"#,
            "{\"model\":\"a\",\"tools\":[[[[[{}]]]]],\"t\":\"\\\\\"}",
        ];
        for body in bodies {
            let out = edit(body, "m\"1", true).unwrap();
            let mut expected: Value = serde_json::from_str(body).unwrap();
            expected["model"] = json!("m\"1");
            if !expected["stream_options"].is_object() {
                expected["stream_options"] = json!({});
            }
            expected["stream_options"]["include_usage"] = json!(true);
            assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), expected, "{body} -> {out}");
        }
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let depth = 100_000;
        let body = format!(r#"{{"x":{}{},"model":"a"}}"#, "[".repeat(depth), "]".repeat(depth));
        let out = edit(&body, "b", false).unwrap();
        assert!(out.ends_with(r#","model":"b"}"#));
        assert_eq!(out.len(), body.len());
    }

    #[test]
    fn broken_json_given_straight_to_the_edit_is_refused_not_misread() {
        for body in [
            r#"{"model":"a""#,
            r#"{"model" "a"}"#,
            r#"{"model":"a",}"#,
            r#"{"model":"a"} x"#,
            r#"{"model":}"#,
            r#"{model:"a"}"#,
        ] {
            assert!(edit(body, "b", true).is_err(), "{body}");
        }
    }

    // --- answers ---

    #[test]
    fn a_chat_answer_gives_its_usage_without_being_built() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello \"there\"","refusal":null,
                "annotations":[]},"logprobs":null,"finish_reason":"stop"},
              {"index":1,"message":{"role":"assistant","content":[{"type":"text","text":" and"},{"type":"image_url"}]},
               "finish_reason":"length"}],
            "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
              "prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},
              "completion_tokens_details":{"reasoning_tokens":3}},
            "service_tier":"default","system_fingerprint":"fp_1"}"#;
        let answer = ChatAnswer::read("openai", body).unwrap();
        let usage = answer.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens()), (19, 10, 4));
        assert_eq!(answer.model(), Some("gpt-4o-2024-08-06"));
        assert_eq!(answer.finish_reason().as_deref(), Some("stop"));
        assert_eq!(answer.output_text(), "Hello \"there\" and");

        let tool_call = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        let answer = ChatAnswer::read("openai", tool_call).unwrap();
        assert!(answer.usage().is_none(), "no usage: the gateway estimates");
        assert_eq!((answer.output_text().as_str(), answer.finish_reason().as_deref()), ("", Some("tool_calls")));

        let usage = ChatAnswer::read("vllm", br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":null}}"#)
            .unwrap()
            .usage()
            .unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens()), (3, 0, 0));
    }

    #[test]
    fn an_answer_that_is_no_chat_completion_is_a_bad_payload() {
        let bodies: [&[u8]; 5] = [
            b"not json",
            b"[]",
            b"{\"id\":\"x\"}",
            b"{\"choices\":[]} trailing",
            b"{\"choices\":[{\"message\":{\"content\":5}}]}",
        ];
        for body in bodies {
            let error = ChatAnswer::read("openai", body).unwrap_err();
            assert!(matches!(error, AdapterError::BadUpstreamPayload { provider: "openai", .. }), "{body:?}: {error}");
        }
    }

    #[test]
    fn an_embeddings_answer_gives_its_input_count() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2e-3,3]}],
            "model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let answer = EmbeddingsAnswer::read("openai", body).unwrap();
        let usage = answer.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (8, 0));
        assert_eq!(answer.model(), Some("text-embedding-3-small"));
        assert!(EmbeddingsAnswer::read("openai", br#"{"data":[]}"#).unwrap().usage().is_none());
        assert!(EmbeddingsAnswer::read("openai", br#"{"model":"m"}"#).is_err(), "data is required");
    }

    // --- streams ---

    fn data(v: &Value) -> String {
        format!("data: {v}\n\n")
    }

    fn content_chunk(text: &str, finish: Value) -> Value {
        json!({"id":"chatcmpl-9","object":"chat.completion.chunk","created":7,"model":"gpt-4o-2024-08-06",
            "system_fingerprint":"fp_9","service_tier":"default","usage":null,
            "choices":[{"index":0,"delta":{"content":text},"logprobs":null,"finish_reason":finish}]})
    }

    /// An OpenAI stream as sent when usage was asked for: `usage: null` on every
    /// content chunk, a usage-only chunk, then `[DONE]`. Returns it, and the content events.
    fn openai_stream() -> (String, String) {
        let mut content = data(&content_chunk("", Value::Null));
        content.push_str(&data(&content_chunk("Hello", Value::Null)));
        content.push_str(&data(&content_chunk(" wörld", Value::Null)));
        content.push_str(&data(&content_chunk("", json!("stop"))));
        let usage = json!({"id":"chatcmpl-9","object":"chat.completion.chunk","created":7,"model":"gpt-4o-2024-08-06",
            "choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14,
            "prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":0}}});
        (format!("{content}{}data: [DONE]\n\n", data(&usage)), content)
    }

    /// Feeds `input` split at `at`, then ends it; what was forwarded, and how it ended.
    fn run(scanner: &mut ChatStreamScanner, input: &[u8], at: &[usize]) -> (Vec<u8>, Result<(), AdapterError>) {
        let mut out: Vec<Bytes> = Vec::new();
        let mut start = 0;
        let mut result = Ok(());
        let whole = [input.len()];
        for &i in at.iter().chain(&whole) {
            result = scanner.feed(Bytes::copy_from_slice(&input[start..i]), &mut out);
            start = i;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = scanner.finish(&mut out);
        }
        (out.concat(), result)
    }

    #[test]
    fn content_events_go_out_byte_for_byte_and_the_unasked_usage_chunk_does_not() {
        let (stream, content) = openai_stream();
        let mut scanner = ChatStreamScanner::new("openai", false);
        let (out, ended) = run(&mut scanner, stream.as_bytes(), &[]);
        ended.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            content,
            "unknown fields and spelling kept; usage chunk and [DONE] held"
        );
        assert!(scanner.is_done() && scanner.usage_is_final() && scanner.has_output());
        let usage = scanner.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens()), (11, 3, 2));
        assert_eq!(scanner.finish_reason().as_deref(), Some("stop"));
        assert_eq!(scanner.output_text(), "Hello wörld");
        assert_eq!(&scanner.closing(&usage)[..], DONE_EVENT);
    }

    #[test]
    fn a_caller_that_asked_for_usage_gets_the_providers_usage_chunk() {
        let (stream, _) = openai_stream();
        let mut scanner = ChatStreamScanner::new("openai", true);
        let (out, ended) = run(&mut scanner, stream.as_bytes(), &[]);
        ended.unwrap();
        let without_done = stream.strip_suffix("data: [DONE]\n\n").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), without_done);
        assert_eq!(&scanner.closing(&scanner.usage().unwrap())[..], DONE_EVENT, "no second usage chunk");
    }

    #[test]
    fn any_split_of_the_stream_forwards_the_same_bytes() {
        let (stream, content) = openai_stream();
        let crlf = stream.replace("\n\n", "\r\n\r\n");
        let cr = stream.replace("\n\n", "\r\r");
        for (input, expected) in [
            (stream.clone(), content.clone()),
            (crlf, content.replace("\n\n", "\r\n\r\n")),
            (cr, content.replace("\n\n", "\r\r")),
        ] {
            for i in 0..=input.len() {
                let mut scanner = ChatStreamScanner::new("openai", false);
                let (out, ended) = run(&mut scanner, input.as_bytes(), &[i]);
                ended.unwrap();
                assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {i}");
                assert_eq!(scanner.output_text(), "Hello wörld");
                assert_eq!(scanner.usage().unwrap().completion_tokens, 3);
            }
            let every: Vec<usize> = (1..input.len()).collect();
            let mut scanner = ChatStreamScanner::new("openai", false);
            let (out, ended) = run(&mut scanner, input.as_bytes(), &every);
            ended.unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), expected, "byte by byte");
        }
    }

    #[test]
    fn whole_events_are_forwarded_as_slices_of_the_read() {
        let (_, content) = openai_stream();
        let read = Bytes::from(content);
        let mut out: Vec<Bytes> = Vec::new();
        ChatStreamScanner::new("openai", false).feed(read.clone(), &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].as_ptr(), read.as_ptr(), "no copy");
    }

    #[test]
    fn a_server_without_usage_gets_the_gateways_usage_chunk_when_asked() {
        let stream = format!(
            "{}{}data: [DONE]\n",
            data(&content_chunk("Hi", Value::Null)),
            data(&content_chunk("", json!("stop")))
        );
        let mut scanner = ChatStreamScanner::new("openai_compatible", true);
        let (_, ended) = run(&mut scanner, stream.as_bytes(), &[]);
        ended.expect("[DONE] without its blank line still ends the stream");
        assert!(scanner.usage().is_none() && !scanner.usage_is_final());
        let closing = scanner.closing(&Usage::new(5, 1, None));
        let text = std::str::from_utf8(&closing).unwrap();
        let (usage_event, done) = text.split_once("\n\n").unwrap();
        assert_eq!(done, "data: [DONE]\n\n");
        let chunk: Value = serde_json::from_str(usage_event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(chunk["id"], "chatcmpl-9");
        assert_eq!(chunk["model"], "gpt-4o-2024-08-06");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"], json!([]));
        assert_eq!(chunk["usage"]["prompt_tokens"], 5);
        assert_eq!(chunk["usage"]["completion_tokens"], 1);
    }

    #[test]
    fn running_usage_on_content_chunks_is_final_only_at_done() {
        let mut chunk = content_chunk("Hi", Value::Null);
        chunk["usage"] = json!({"prompt_tokens": 4, "completion_tokens": 1});
        let mut scanner = ChatStreamScanner::new("openai_compatible", false);
        let mut out: Vec<Bytes> = Vec::new();
        scanner.feed(Bytes::from(data(&chunk)), &mut out).unwrap();
        assert_eq!(out.len(), 1, "a content chunk goes out, usage and all");
        assert!(!scanner.usage_is_final(), "a running count");
        scanner.feed(Bytes::from_static(DONE_EVENT), &mut out).unwrap();
        assert!(scanner.usage_is_final());
    }

    #[test]
    fn a_cut_stream_fails_and_bills_exactly_what_went_out() {
        let (stream, _) = openai_stream();
        // Cut between events: the end marker never came.
        let usage_chunk = stream.find("data: {\"choices\":[]").expect("keys are written sorted");
        let mut scanner = ChatStreamScanner::new("openai", false);
        let (_, ended) = run(&mut scanner, &stream.as_bytes()[..usage_chunk], &[]);
        assert!(matches!(ended, Err(AdapterError::Truncated { provider: "openai", .. })), "{ended:?}");

        // Cut inside the third content event: its half is no chunk (as the full decoder finds too).
        let cut = stream.find("wörld").unwrap();
        let mut scanner = ChatStreamScanner::new("openai", false);
        let (out, ended) = run(&mut scanner, &stream.as_bytes()[..cut], &[]);
        assert!(matches!(ended, Err(AdapterError::BadUpstreamPayload { provider: "openai", .. })), "{ended:?}");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("Hello") && !out.contains("wörld") && out.ends_with("\n\n"), "{out}");
        assert_eq!(scanner.output_text(), "Hello", "counted exactly what the caller got");
        assert!(scanner.usage().is_none() && !scanner.usage_is_final());
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_forwarded_with_one() {
        for tail in ["", "\n", "\r"] {
            let stream = format!("data: {}{tail}", content_chunk("Hi", Value::Null));
            let mut scanner = ChatStreamScanner::new("openai", false);
            let (out, ended) = run(&mut scanner, stream.as_bytes(), &[]);
            assert!(matches!(ended, Err(AdapterError::Truncated { .. })));
            let mut parser = crate::sse::SseParser::new("test");
            let mut events = parser.feed(&out).unwrap();
            events.extend(parser.feed(b"data: next\n\n").unwrap());
            assert_eq!(events.len(), 2, "{tail:?}: the tail is its own event: {:?}", String::from_utf8_lossy(&out));
            assert_eq!(scanner.output_text(), "Hi");
        }
    }

    #[test]
    fn an_error_event_ends_the_stream_after_what_came_before() {
        let stream = format!(
            "{}data: {}\n\n{}",
            data(&content_chunk("Hi", Value::Null)),
            json!({"error": {"message": "The server had an error", "type": "server_error", "code": null}}),
            data(&content_chunk("never", Value::Null)),
        );
        let mut scanner = ChatStreamScanner::new("openai", false);
        let mut out: Vec<Bytes> = Vec::new();
        let error = scanner.feed(Bytes::from(stream), &mut out).unwrap_err();
        match error {
            AdapterError::UpstreamStream { provider: "openai", error } => {
                assert_eq!(error.message, "The server had an error");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.len(), 1, "the chunk before the error went out, the error did not");
        assert_eq!(scanner.output_text(), "Hi");
    }

    #[test]
    fn comments_go_out_and_empty_choices_and_events_after_done_do_not() {
        let azure_filter = json!({"choices":[],"created":0,"id":"","model":"","object":"",
            "prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]});
        let stream = format!(
            ": OPENROUTER PROCESSING\n\n{}data:\n\n{}data: [DONE]\n\n{}",
            data(&azure_filter),
            data(&content_chunk("x", json!("stop"))),
            data(&content_chunk("late", Value::Null)),
        );
        let mut scanner = ChatStreamScanner::new("az.ai.openai", false);
        let (out, ended) = run(&mut scanner, stream.as_bytes(), &[]);
        ended.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(": OPENROUTER PROCESSING\n\n{}", data(&content_chunk("x", json!("stop"))))
        );
        assert_eq!(scanner.output_text(), "x");
    }

    #[test]
    fn tool_calls_count_as_output_and_their_arguments_as_text() {
        let chunk = |delta: Value| json!({"id":"c","choices":[{"index":0,"delta":delta,"finish_reason":null}]});
        let stream = format!(
            "{}{}data: [DONE]\n\n",
            data(&chunk(
                json!({"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]})
            )),
            data(&chunk(json!({"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}))),
        );
        let mut scanner = ChatStreamScanner::new("openai", false);
        let mut out: Vec<Bytes> = Vec::new();
        scanner.feed(Bytes::from(stream), &mut out).unwrap();
        assert!(scanner.has_output());
        assert_eq!(scanner.output_text(), "{\"a\":1}");
    }

    #[test]
    fn multi_line_data_is_joined_and_broken_chunks_fail() {
        let mut scanner = ChatStreamScanner::new("openai", false);
        let mut out: Vec<Bytes> = Vec::new();
        scanner
            .feed(Bytes::from_static(b"data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"ok\"}}]}\n\n"), &mut out)
            .unwrap();
        assert_eq!((out.len(), scanner.output_text()), (1, "ok"));
        let error = scanner.feed(Bytes::from_static(b"data: {not json}\n\n"), &mut out).unwrap_err();
        assert!(matches!(error, AdapterError::BadUpstreamPayload { .. }), "{error}");
        let mut scanner = ChatStreamScanner::new("openai", false);
        let error = scanner.feed(Bytes::from_static(b"data: \xff\n\n"), &mut out).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }
}
