//! The AI backend: serves routes whose backend is `ai` (the proxy's
//! `backend` phase calls [`serve`] after match, authentication and
//! authorization, handing over the caller as [`AiCall`]; it never reads the
//! proxy's internals): parse → check the key may use the model → plan (alias
//! targets or provider/model) → attempts with key rotation, cooldown after
//! 429, retries with backoff and fallback → answer in the caller's format →
//! account its tokens and cost. Failures render in the caller's format
//! ([`render_error`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tollgate_llm::anthropic_ingress::{self, MessagesStreamEncoder};
use tollgate_llm::error::{
    AdapterError, ErrorKind, ProviderError, anthropic_error_body, gemini_error_body, openai_error_body,
};
use tollgate_llm::gemini_ingress::{self, GeminiCall, GenerateContentStreamEncoder, StreamFormat};
use tollgate_llm::passthrough::{self, ChatAnswer, ChatStreamScanner, EmbeddingsAnswer, EmbeddingsHead, RequestEdit};
use tollgate_llm::provider::{OpenAiOperation, ProviderKind, UpstreamTarget};
use tollgate_llm::tokens;
use tollgate_llm::types::{ChatRequest, EmbeddingsInput, EmbeddingsRequest, Usage};
use tollgate_proto::config::v1::{ApiKey, PriceRef, UsageOutcome, UsageRecord};

use super::account::{Accounting, PromptSource, Served};
use super::chat_call::ChatCall;
use super::snapshot::{
    AiShared, AiSnapshot, Candidate, CompiledCredential, CompiledProvider, PlanError, pick_credential,
};
use super::stream::{AiStream, Encoder, Passthrough};
use crate::plumbing::{GatewayBody, GatewayError, ProviderClientError, UpstreamResponseBody};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::tracing::TraceCtx;

/// Upstream error bodies are read for their message only.
const MAX_ERROR_BODY: usize = 1 << 20;
/// A whole non-streamed answer (embeddings of big batches are the largest).
const MAX_ANSWER_BODY: usize = 64 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Who is calling, as the proxy phases established it.
pub struct AiCall {
    pub request_id: String,
    pub route: String,
    pub consumer_id: String,
    pub consumer_name: String,
    pub api_key: Option<Arc<ApiKey>>,
    /// The proxy's span for this request, parent of the GenAI span.
    pub trace: Option<TraceCtx>,
    /// The caller's `anthropic-beta` header, forwarded when an Anthropic
    /// request goes to an Anthropic provider as is.
    pub anthropic_beta: Option<HeaderValue>,
    pub max_body_bytes: u64,
    /// The whole request body must arrive within this long (the route's
    /// request timeout, as for a REST request whose body is held for
    /// retries); a caller trickling or stalling its body gets 408.
    pub body_timeout: Duration,
    /// Token limits, budgets and model-scoped limits to reserve from.
    pub limits: Option<super::limits::AiLimits>,
    /// The service a prompt API's call is made for; empty for the AI
    /// gateway's own routes. Its usage counts for that service.
    pub service: String,
}

/// What the proxy's access log and metrics learn about the call.
pub struct AiOutcome {
    pub response: Response<GatewayBody>,
    pub provider: Option<String>,
    pub attempts: u32,
    /// Whether the call journals its usage record itself (now, or when a
    /// stream ends); else the `account` phase journals the request's.
    pub recorded: bool,
}

/// The API format a caller speaks, and gets its answers and errors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    OpenAi,
    /// `POST …/messages`.
    Anthropic,
    /// `POST …/models/{model}:generateContent` and `:streamGenerateContent`.
    Gemini,
}

impl Ingress {
    /// The format of a request to an AI route, from its path alone (also for
    /// errors of the proxy phases before the gateway).
    pub fn of_path(path: &str) -> Ingress {
        if path.trim_end_matches('/').ends_with("/messages") {
            Ingress::Anthropic
        } else if gemini_ingress::is_gemini_path(path) {
            Ingress::Gemini
        } else {
            Ingress::OpenAi
        }
    }

    /// Whether a provider of `kind` speaks this format on the wire, so that
    /// the caller's body and the provider's answer can pass through.
    fn spoken_by(self, kind: ProviderKind) -> bool {
        match self {
            Ingress::OpenAi => {
                matches!(kind, ProviderKind::OpenAi | ProviderKind::OpenAiCompatible | ProviderKind::AzureOpenAi)
            }
            Ingress::Anthropic => kind == ProviderKind::Anthropic,
            Ingress::Gemini => kind == ProviderKind::Gemini,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Endpoint {
    /// `/chat/completions`.
    Chat,
    /// `/messages`.
    Messages,
    GenerateContent(GeminiCall),
    Embeddings,
    Models,
}

fn endpoint(method: &Method, path: &str, query: Option<&str>) -> Option<Endpoint> {
    if *method == Method::POST
        && let Some(call) = gemini_ingress::parse_call(path, query)
    {
        return Some(Endpoint::GenerateContent(call));
    }
    let path = path.trim_end_matches('/');
    match *method {
        Method::POST if path.ends_with("/chat/completions") => Some(Endpoint::Chat),
        Method::POST if path.ends_with("/messages") => Some(Endpoint::Messages),
        Method::POST if path.ends_with("/embeddings") => Some(Endpoint::Embeddings),
        Method::GET if path.ends_with("/models") => Some(Endpoint::Models),
        _ => None,
    }
}

fn body(bytes: Bytes) -> GatewayBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

fn json_response(status: StatusCode, bytes: Bytes) -> Response<GatewayBody> {
    let mut response = Response::new(body(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The AI backend's own refusal or failure, as the one request-path error
/// type, rendered in the caller's format.
fn error_response(ingress: Ingress, kind: ErrorKind, status: StatusCode, message: &str) -> Response<GatewayBody> {
    render(ingress, &GatewayError::Backend { kind, status, message: message.to_string() }, message)
}

/// The one place an AI caller's error body is built: `error`'s kind and
/// status in the caller's API format, with `message` (already safe to show).
fn render(ingress: Ingress, error: &GatewayError, message: &str) -> Response<GatewayBody> {
    let (status, kind) = (error.status(), error.kind());
    let (status, bytes) = match ingress {
        Ingress::OpenAi => openai_error_body(status, kind, message),
        Ingress::Anthropic => anthropic_error_body(status, kind, message),
        Ingress::Gemini => gemini_error_body(status, kind, message),
    };
    json_response(status, bytes)
}

/// A request-path failure on an AI route (a phase before the gateway
/// refused it: authentication, IP filter, body limit; or the gateway
/// itself), in the caller's API format, classified by the error's kind.
pub fn render_error(error: &GatewayError, request_id: &str, ingress: Ingress) -> Response<GatewayBody> {
    let mut response = render(ingress, error, &format!("{} (request id {request_id})", error.public_message()));
    if error.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tollgate\""));
    }
    response
}

fn outcome(response: Response<GatewayBody>) -> AiOutcome {
    AiOutcome { response, provider: None, attempts: 0, recorded: false }
}

pub async fn serve(
    shared: &Arc<AiShared>,
    snapshot: &AiSnapshot,
    metrics: &Arc<Metrics>,
    call: AiCall,
    parts: http::request::Parts,
    request_body: Incoming,
) -> AiOutcome {
    let started = Instant::now();
    let Some(endpoint) = endpoint(&parts.method, parts.uri.path(), parts.uri.query()) else {
        // The path only: the query may hold a key (`?key=`).
        let message = format!(
            "{} {} is not an AI gateway endpoint; use POST …/chat/completions, POST …/embeddings, GET …/models, \
             POST …/messages or POST …/models/{{model}}:generateContent (or :streamGenerateContent)",
            parts.method,
            parts.uri.path()
        );
        let ingress = Ingress::of_path(parts.uri.path());
        return outcome(error_response(ingress, ErrorKind::NotFound, StatusCode::NOT_FOUND, &message));
    };
    let (ingress, gemini_stream) = match &endpoint {
        Endpoint::Messages => (Ingress::Anthropic, None),
        Endpoint::GenerateContent(call) => (Ingress::Gemini, call.stream),
        Endpoint::Chat | Endpoint::Embeddings | Endpoint::Models => (Ingress::OpenAi, None),
    };
    let allowed: &[String] = call.api_key.as_ref().map_or(&[], |k| k.allowed_models.as_slice());
    if endpoint == Endpoint::Models {
        return outcome(models(snapshot, allowed));
    }

    let bytes = match read_request(&call, request_body).await {
        Ok(bytes) => bytes,
        Err(RequestBodyError::Timeout(error)) => return outcome(render_error(&error, &call.request_id, ingress)),
        Err(RequestBodyError::Refused(status, message)) => {
            return outcome(error_response(ingress, ErrorKind::InvalidRequest, status, &message));
        }
    };

    let attempt = Attempts { shared, snapshot, metrics, call: &call, started, ingress, gemini_stream };
    match endpoint {
        // Read as far as its head only: to an OpenAI-format provider the
        // caller's bytes go as they are (see `chat_call`).
        Endpoint::Chat => match ChatCall::raw(&bytes) {
            Ok(chat) => attempt.chat(chat, Some(&bytes)).await,
            Err(error) => outcome(bad_request(ingress, &error)),
        },
        Endpoint::Messages => match anthropic_ingress::messages_request_to_chat(&bytes) {
            Ok(request) => attempt.chat(ChatCall::decoded(request), Some(&bytes)).await,
            Err(error) => outcome(bad_request(ingress, &error)),
        },
        Endpoint::GenerateContent(gemini) => {
            match gemini_ingress::generate_content_to_chat(&bytes, &gemini.model, gemini.stream.is_some()) {
                Ok(request) => attempt.chat(ChatCall::decoded(request), Some(&bytes)).await,
                Err(error) => outcome(bad_request(ingress, &error)),
            }
        }
        Endpoint::Embeddings => attempt.embeddings(bytes).await,
        Endpoint::Models => unreachable!("answered above"),
    }
}

/// Why a caller's request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// It did not arrive within the route's request timeout.
    #[error(transparent)]
    Timeout(GatewayError),
    /// Too large (413) or broken (400), with what to say.
    #[error("{1}")]
    Refused(StatusCode, String),
}

/// The caller's whole request body, bounded in size and in time: a stalled
/// body would otherwise hold the connection, and up to the limit of
/// memory, for as long as the caller likes.
pub async fn read_request(call: &AiCall, body: Incoming) -> Result<Bytes, RequestBodyError> {
    let limit = usize::try_from(call.max_body_bytes).unwrap_or(usize::MAX);
    let read = tokio::time::timeout(call.body_timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        let timeout_ms = u64::try_from(call.body_timeout.as_millis()).unwrap_or(u64::MAX);
        return Err(RequestBodyError::Timeout(GatewayError::BodyTimeout { timeout_ms }));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(RequestBodyError::Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )),
        Err(error) => {
            Err(RequestBodyError::Refused(StatusCode::BAD_REQUEST, format!("cannot read the request body: {error}")))
        }
    }
}

/// One chat completion for a caller inside the gateway (a prompt API):
/// resolved, limited, retried, failed over and accounted as any, and
/// answered in OpenAI's format.
pub async fn chat(
    shared: &Arc<AiShared>,
    snapshot: &AiSnapshot,
    metrics: &Arc<Metrics>,
    call: &AiCall,
    request: ChatRequest,
) -> AiOutcome {
    let attempt = Attempts {
        shared,
        snapshot,
        metrics,
        call,
        started: Instant::now(),
        ingress: Ingress::OpenAi,
        gemini_stream: None,
    };
    attempt.chat(ChatCall::decoded(request), None).await
}

fn bad_request(ingress: Ingress, error: &AdapterError) -> Response<GatewayBody> {
    error_response(ingress, ErrorKind::InvalidRequest, StatusCode::BAD_REQUEST, &error.to_string())
}

fn models(snapshot: &AiSnapshot, allowed: &[String]) -> Response<GatewayBody> {
    let data: Vec<serde_json::Value> = snapshot
        .visible_models(allowed)
        .into_iter()
        .map(|(id, owner)| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    let list = serde_json::json!({"object": "list", "data": data});
    json_response(StatusCode::OK, Bytes::from(list.to_string()))
}

/// Why an attempt did not produce an answer.
enum Failure {
    /// The provider (named) answered with an error.
    Provider(String, ProviderError),
    /// Connect error, reset, or no headers within the timeout.
    Transport { kind: ErrorKind, message: String },
    /// This node cannot call the provider at all (no TLS client): another
    /// target may work, trying this one again cannot.
    Unreachable(String),
}

impl Failure {
    fn metric_kind(&self) -> &'static str {
        match self.kind() {
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::ProviderAuth => "provider_auth",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Provider(_, e) => e.kind,
            Failure::Transport { kind, .. } => *kind,
            Failure::Unreachable(_) => ErrorKind::Unavailable,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Failure::Provider(_, e) => StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY),
            Failure::Transport { kind, .. } => kind.status(),
            Failure::Unreachable(_) => ErrorKind::Unavailable.status(),
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Provider(_, e) => e.message.clone(),
            Failure::Transport { message, .. } | Failure::Unreachable(message) => message.clone(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            Failure::Provider(_, e) => e.retryable(),
            Failure::Transport { .. } => true,
            Failure::Unreachable(_) => false,
        }
    }

    /// Worth trying another target even though retrying this one is not.
    fn try_elsewhere(&self) -> bool {
        matches!(self, Failure::Unreachable(_))
            || matches!(
                self.kind(),
                ErrorKind::Authentication | ErrorKind::PermissionDenied | ErrorKind::NotFound | ErrorKind::ProviderAuth
            )
    }

    /// Kind, status and message for the caller. A provider refusing the
    /// gateway's own key (401, 403) is not the caller's authentication
    /// failure: it is reported as a bad gateway (502, `provider_auth_failed`)
    /// naming the provider, so nobody mistakes a revoked provider key for a
    /// bad caller key.
    fn for_caller(&self) -> (ErrorKind, StatusCode, String) {
        match self {
            Failure::Provider(provider, e)
                if matches!(e.kind, ErrorKind::Authentication | ErrorKind::PermissionDenied) =>
            {
                // The provider's own text stays in the log: it may quote (part of) the key.
                let message = format!(
                    "provider {provider} refused the gateway's credential (HTTP {}); the caller's key is not at \
                     fault: an operator must check the provider's API keys (`tollgate ctl provider get {provider}`)",
                    e.status
                );
                (ErrorKind::ProviderAuth, ErrorKind::ProviderAuth.status(), message)
            }
            _ => (self.kind(), self.status(), self.message()),
        }
    }
}

/// How often a provider refusing one credential is logged at WARN.
const AUTH_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// When each (provider, credential) refusal was last logged at WARN.
static AUTH_WARNED: std::sync::LazyLock<std::sync::Mutex<HashMap<(String, String), Instant>>> =
    std::sync::LazyLock::new(Default::default);

/// Whether a refusal of this credential is to be logged at WARN now: once per
/// credential per [`AUTH_WARN_INTERVAL`], so a revoked key does not flood the
/// log with one line per request.
fn auth_warn_due(provider: &str, credential: &str, now: Instant) -> bool {
    let mut warned = AUTH_WARNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (provider.to_string(), credential.to_string());
    if warned.get(&key).is_some_and(|last| now.saturating_duration_since(*last) < AUTH_WARN_INTERVAL) {
        return false;
    }
    // Keys are configured credentials; forget the stale ones if many come and go.
    if warned.len() >= 4096 {
        warned.retain(|_, last| now.saturating_duration_since(*last) < AUTH_WARN_INTERVAL);
    }
    warned.insert(key, now);
    true
}

struct Attempts<'a> {
    shared: &'a Arc<AiShared>,
    snapshot: &'a AiSnapshot,
    metrics: &'a Arc<Metrics>,
    call: &'a AiCall,
    started: Instant,
    ingress: Ingress,
    /// How a Gemini caller's stream is framed (`None`: not streamed, or not Gemini).
    gemini_stream: Option<StreamFormat>,
}

/// A provider's 2xx answer to a chat call, with what handing it to the caller needs.
struct ChatAnswered {
    response: Response<UpstreamResponseBody>,
    provider: Arc<CompiledProvider>,
    /// The provider speaks the caller's format: its answer goes out as it came.
    passthrough: bool,
    account: Accounting,
    limit_headers: http::HeaderMap,
}

/// What one try of one candidate came to.
enum Try {
    /// A 2xx: the call's answer.
    Answered(Response<UpstreamResponseBody>),
    /// A failure, already counted and logged; retried or not by its kind.
    Failed(Failure),
    /// This candidate cannot take the request (no usable key, a format it
    /// cannot take); the next one is tried, and this is why, if known.
    Skip(Option<Failure>),
}

enum Sent {
    Answer(Response<UpstreamResponseBody>),
    Failed(Failure),
}

impl Attempts<'_> {
    fn accounting(&self, endpoint: &str, requested_model: &str, stream: bool, prompt: PromptSource) -> Accounting {
        let record = UsageRecord {
            at_ms: crate::clock::unix_ms(),
            request_id: self.call.request_id.clone(),
            route: self.call.route.clone(),
            consumer_id: self.call.consumer_id.clone(),
            api_key_id: self
                .call
                .api_key
                .as_ref()
                .and_then(|k| k.meta.as_ref())
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            endpoint: endpoint.to_string(),
            requested_model: requested_model.to_string(),
            stream,
            kind: "ai".into(),
            service: self.call.service.clone(),
            ..Default::default()
        };
        Accounting::new(
            self.shared.clone(),
            self.metrics.clone(),
            record,
            self.call.consumer_name.clone(),
            self.started,
            self.call.trace.as_ref().map(TraceCtx::child),
            prompt,
        )
    }

    /// Refuses a call (no usable model, a spent limit), in the caller's format, and accounts it.
    fn refuse(&self, account: &mut Accounting, kind: ErrorKind, status: StatusCode, message: &str) -> AiOutcome {
        account.finish(Served {
            outcome: UsageOutcome::Error,
            http_status: status.as_u16(),
            usage: None,
            usage_is_estimate: false,
            output_text: "",
            finish_reason: None,
            error: Some(message.to_string()),
        });
        // Journaled by `finish`: the `account` phase must not add another.
        AiOutcome { recorded: account.recorded(), ..outcome(error_response(self.ingress, kind, status, message)) }
    }

    /// A 2xx from the provider whose body could not be read or understood.
    fn bad_answer(&self, account: &mut Accounting, message: &str) -> AiOutcome {
        let refused = self.refuse(account, ErrorKind::Server, StatusCode::BAD_GATEWAY, message);
        with_provider(refused, account)
    }

    async fn send(&self, provider: &CompiledProvider, request: http::Request<Bytes>) -> Sent {
        let (parts, bytes) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
        let timeout = provider.request_timeout;
        let sending = self.shared.clients.request(provider.pooled.as_ref(), request);
        match tokio::time::timeout(timeout, sending).await {
            Ok(Ok(response)) => Sent::Answer(response),
            Ok(Err(error @ ProviderClientError::NoTlsClient)) => Sent::Failed(Failure::Unreachable(error.to_string())),
            Ok(Err(error)) => {
                // The cause (addresses, OS errors) is for the operator's log, not the caller.
                tracing::warn!(provider = %provider.name, %error, "provider unreachable");
                Sent::Failed(Failure::Transport {
                    kind: ErrorKind::Unavailable,
                    message: format!("cannot reach provider {}", provider.name),
                })
            }
            Err(_) => Sent::Failed(Failure::Transport {
                kind: ErrorKind::Timeout,
                message: format!("provider {} did not answer within {} ms", provider.name, timeout.as_millis()),
            }),
        }
    }

    /// Counts, logs and learns from a failed attempt: a key the provider
    /// rate-limited rests; a refused key is warned about (once a minute).
    fn note_failure(
        &self,
        account: &mut Accounting,
        candidate: &Candidate,
        credential: Option<&CompiledCredential>,
        try_no: u32,
        failure: &Failure,
    ) {
        let provider = &candidate.provider;
        let credential_id = credential.map_or("", |c| c.id.as_str());
        account.attempt_failed(failure.metric_kind());
        if failure.kind() == ErrorKind::RateLimited
            && let Some(c) = credential
        {
            let rest = match failure {
                Failure::Provider(_, e) => e.retry_after.unwrap_or(provider.cooldown),
                Failure::Transport { .. } | Failure::Unreachable(_) => provider.cooldown,
            };
            self.shared.cooldowns.rest(&provider.id, &c.id, rest);
            account.credential_rested();
        }
        tracing::info!(
            request_id = %self.call.request_id, provider = %provider.name, model = %candidate.model,
            credential = credential_id, attempt = try_no + 1, error = %failure.message(), "AI attempt failed"
        );
        if (failure.kind() == ErrorKind::Authentication || failure.kind() == ErrorKind::PermissionDenied)
            && auth_warn_due(&provider.id, credential_id, Instant::now())
        {
            // At most one per credential a minute; every refusal is counted
            // in the attempt-error metric (authentication, permission_denied).
            tracing::warn!(
                provider = %provider.name, credential = credential_id, error = %failure.message(),
                "the provider refused the gateway's API key; replace or remove the key"
            );
        }
    }

    /// The key to call `provider` with (None for a keyless one), or why there is none.
    fn credential<'p>(&self, provider: &'p CompiledProvider) -> Result<Option<&'p CompiledCredential>, Failure> {
        if provider.keyless {
            return Ok(None);
        }
        if let Some(credential) = pick_credential(provider, &self.shared.cooldowns) {
            return Ok(Some(credential));
        }
        // No key at all is the operator's to fix, like a refused one.
        let failure = if provider.credentials.is_empty() {
            let message = format!(
                "provider {} has no usable API key; an operator must add one (`tollgate ctl provider get {}`)",
                provider.name, provider.name
            );
            Failure::Transport { kind: ErrorKind::ProviderAuth, message }
        } else {
            let message = format!("every API key of provider {} is cooling down after rate limiting", provider.name);
            Failure::Transport { kind: ErrorKind::RateLimited, message }
        };
        Err(failure)
    }

    /// Tries the plan's candidates in order until one answers 2xx. Each
    /// candidate gets `retries` extra attempts after a retryable failure
    /// (another key after a 429, with backoff after 5xx/timeouts); failures
    /// that another provider might not have (auth, unknown model) move on at
    /// once; a bad request is returned to the caller as is.
    async fn attempt<F>(
        &self,
        account: &mut Accounting,
        requested: &str,
        mut build: F,
    ) -> Result<(Response<UpstreamResponseBody>, Candidate), AiOutcome>
    where
        F: FnMut(&Candidate, &UpstreamTarget<'_>) -> Result<http::Request<Bytes>, AdapterError>,
    {
        let allowed: &[String] = self.call.api_key.as_ref().map_or(&[], |k| k.allowed_models.as_slice());
        let plan = match self.snapshot.plan(requested, allowed) {
            Ok(plan) => plan,
            Err(error) => return Err(self.refuse_plan(account, &error)),
        };
        let mut last: Option<Failure> = None;
        // Whether any target has been sent the request yet.
        let mut sent_any = false;
        for (index, candidate) in plan.candidates.iter().enumerate() {
            let price = self.snapshot.price(self.shared.catalog, &candidate.provider, &candidate.model);
            let mut backoff = plan.backoff;
            for try_no in 0..=plan.retries {
                let tried = self.try_candidate(account, candidate, &price, try_no, &mut sent_any, &mut build).await?;
                let failure = match tried {
                    Try::Answered(response) => {
                        account.record.attempts += 1;
                        if index > 0 {
                            account.fell_back();
                        }
                        return Ok((response, candidate.clone()));
                    }
                    Try::Skip(why) => {
                        last = why.or(last);
                        break;
                    }
                    Try::Failed(failure) => failure,
                };
                let rate_limited = failure.kind() == ErrorKind::RateLimited;
                let (retryable, elsewhere) = (failure.retryable(), failure.try_elsewhere());
                if !retryable && !elsewhere {
                    let (kind, status, message) = failure.for_caller();
                    return Err(self.refuse(account, kind, status, &message));
                }
                last = Some(failure);
                if !retryable || try_no == plan.retries {
                    break;
                }
                // Another key can be tried at once after a 429; a failing
                // provider gets time to recover.
                if !rate_limited {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let failure = last.unwrap_or(Failure::Transport {
            kind: ErrorKind::Unavailable,
            message: format!("model {requested} has no reachable target"),
        });
        let (kind, status, message) = failure.for_caller();
        let message = format!("every target of {requested} failed; last error: {message}");
        Err(self.refuse(account, kind, status, &message))
    }

    /// The refusal of a model the plan has no targets for, or that this
    /// caller may not use.
    fn refuse_plan(&self, account: &mut Accounting, error: &PlanError) -> AiOutcome {
        let (kind, status) = match error {
            PlanError::NoModel(_) => (ErrorKind::InvalidRequest, StatusCode::BAD_REQUEST),
            PlanError::NotAllowed(_) => (ErrorKind::PermissionDenied, StatusCode::FORBIDDEN),
            _ => (ErrorKind::NotFound, StatusCode::NOT_FOUND),
        };
        self.refuse(account, kind, status, &error.to_string())
    }

    /// One try of `candidate`: picks its key, builds the request in its
    /// format and sends it. A request that does not translate is the
    /// caller's error only if no earlier target was sent it.
    async fn try_candidate<F>(
        &self,
        account: &mut Accounting,
        candidate: &Candidate,
        price: &PriceRef,
        try_no: u32,
        sent_any: &mut bool,
        build: &mut F,
    ) -> Result<Try, AiOutcome>
    where
        F: FnMut(&Candidate, &UpstreamTarget<'_>) -> Result<http::Request<Bytes>, AdapterError>,
    {
        let provider = &candidate.provider;
        let (system, model) = (provider.adapter.system(), candidate.model.as_str());
        let credential = match self.credential(provider) {
            Ok(credential) => credential,
            Err(failure) => {
                account.set_target(&provider.name, system, model, "", price.clone());
                return Ok(Try::Skip(Some(failure)));
            }
        };
        account.set_target(&provider.name, system, model, credential.map_or("", |c| c.id.as_str()), price.clone());
        account.set_listed(provider.models.iter().any(|m| m == model));
        let target = UpstreamTarget {
            base_url: &provider.base_url,
            model,
            api_key: credential.map_or("", |c| c.secret.as_str()),
            api_version: provider.api_version.as_deref(),
            extra_headers: &provider.headers,
        };
        let request = match build(candidate, &target) {
            Ok(r) => r,
            Err(error @ AdapterError::Unsupported { .. }) | Err(error @ AdapterError::InvalidTarget(_)) => {
                let message = error.to_string();
                return Ok(Try::Skip(Some(Failure::Transport { kind: ErrorKind::InvalidRequest, message })));
            }
            // An earlier target took the caller's bytes as they were; this
            // one needs them translated and they do not translate. That is
            // this target's limit, not a bad request: the caller hears how
            // the targets that were called failed.
            Err(error) if *sent_any => {
                tracing::info!(
                    request_id = %self.call.request_id, provider = %provider.name, %error,
                    "fallback skipped: the request does not translate to this provider's format"
                );
                return Ok(Try::Skip(None));
            }
            Err(error) => {
                return Err(self.refuse(
                    account,
                    ErrorKind::InvalidRequest,
                    StatusCode::BAD_REQUEST,
                    &error.to_string(),
                ));
            }
        };
        let sent = self.send(provider, request).await;
        // A target this node cannot call at all was sent nothing.
        *sent_any |= !matches!(sent, Sent::Failed(Failure::Unreachable(_)));
        let failure = match sent {
            Sent::Answer(response) if response.status().is_success() => return Ok(Try::Answered(response)),
            Sent::Answer(response) => {
                let (status, headers) = (response.status(), response.headers().clone());
                let body = read_limited(response.into_body(), MAX_ERROR_BODY, provider.request_timeout)
                    .await
                    .unwrap_or_default();
                Failure::Provider(provider.name.clone(), provider.adapter.error(status, &headers, &body))
            }
            Sent::Failed(failure) => failure,
        };
        self.note_failure(account, candidate, credential, try_no, &failure);
        Ok(Try::Failed(failure))
    }

    /// Reserves the call's estimated tokens and cost on the caller's token
    /// limits and budgets (see `super::limits`); the reservation rides with
    /// `account`, which reconciles it when the call ends. A refusal is a 429
    /// in the caller's format (a 400 for a call no window could admit),
    /// accounted like any other refusal.
    async fn reserve(
        &self,
        account: &mut Accounting,
        requested: &str,
        output_limit: Option<u64>,
    ) -> Result<http::HeaderMap, AiOutcome> {
        let Some(limits) = self.call.limits.as_ref().filter(|l| !l.deferred.is_empty()) else {
            return Ok(http::HeaderMap::new());
        };
        let allowed: &[String] = self.call.api_key.as_ref().map_or(&[], |k| k.allowed_models.as_slice());
        // A model the caller may not use is refused by `attempt`, before
        // anything is spent: nothing to reserve.
        let Ok(plan) = self.snapshot.plan(requested, allowed) else { return Ok(http::HeaderMap::new()) };
        let Some(first) = plan.candidates.first() else { return Ok(http::HeaderMap::new()) };
        let price = self.snapshot.price(self.shared.catalog, &first.provider, &first.model);
        let price = (price.input_micros_per_mtok, price.output_micros_per_mtok);
        // Model-scoped limits count the model the call goes to, whatever
        // alias or spelling the caller used for it.
        let model = format!("{}/{}", first.provider.name, first.model);
        let estimate = super::limits::Estimate {
            input_tokens: account.prompt_estimate(),
            output_tokens: output_limit,
            price_micros_per_mtok: price,
        };
        match limits.reserve(&model, estimate).await {
            Ok((reservation, headers)) => {
                account.reserved(reservation);
                Ok(headers)
            }
            Err(refusal) => {
                let message = refusal.message();
                let mut refused = self.refuse(account, refusal.kind(), refusal.status(), &message);
                crate::limits::headers::refused(&refusal, refused.response.headers_mut());
                Err(refused)
            }
        }
    }

    /// `original` is the caller's own body: sent as is (with the target's
    /// model, and an OpenAI stream asking for usage) when the target speaks
    /// the caller's API, so nothing the canonical form lacks (unknown
    /// fields, cache_control, thinking, safetySettings) is lost and nothing
    /// is decoded and encoded again.
    async fn chat(&self, call: ChatCall, original: Option<&Bytes>) -> AiOutcome {
        if call.requested.trim().is_empty() {
            return outcome(error_response(
                self.ingress,
                ErrorKind::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "`model` is required",
            ));
        }
        let requested = call.requested.as_str();
        let stream = call.stream;
        let endpoint_name = match self.ingress {
            Ingress::OpenAi => "chat.completions",
            Ingress::Anthropic => "messages",
            Ingress::Gemini => "generate_content",
        };
        let mut account = self.accounting(endpoint_name, requested, stream, PromptSource::from(&call.source));
        let limit_headers = match self.reserve(&mut account, requested, call.output_limit).await {
            Ok(headers) => headers,
            Err(refused) => return refused,
        };
        let same_api = |candidate: &Candidate| original.is_some() && self.ingress.spoken_by(candidate.provider.kind);
        let answered = self
            .attempt(&mut account, requested, |candidate, target| {
                let original = original.filter(|_| same_api(candidate));
                if let Some(original) = original.filter(|_| self.ingress == Ingress::OpenAi) {
                    let edit = RequestEdit { model: target.model, include_usage: stream };
                    let body = passthrough::rewrite_request(original, &edit)?;
                    return candidate.provider.adapter.openai_wire_request(OpenAiOperation::Chat, body, stream, target);
                }
                let request = call.source.request()?;
                let mut upstream = candidate.provider.adapter.chat_request(&request, target)?;
                if let Some(original) = original {
                    *upstream.body_mut() = match self.ingress {
                        // Gemini's body names no model: the URL does.
                        Ingress::Gemini => original.clone(),
                        _ => {
                            let edit = RequestEdit { model: target.model, include_usage: false };
                            Bytes::from(passthrough::rewrite_request(original, &edit)?)
                        }
                    };
                    if let Some(beta) = self.call.anthropic_beta.as_ref().filter(|_| self.ingress == Ingress::Anthropic)
                    {
                        upstream.headers_mut().insert("anthropic-beta", beta.clone());
                    }
                }
                Ok(upstream)
            })
            .await;
        let (response, candidate) = match answered {
            Ok(answer) => answer,
            Err(refused) => return with_provider(refused, &account),
        };
        let answered = ChatAnswered {
            response,
            // The provider's answer goes out as it came — but a Gemini provider
            // always streams SSE, so a caller wanting a JSON array gets it encoded.
            passthrough: same_api(&candidate) && self.gemini_stream != Some(StreamFormat::JsonArray),
            provider: candidate.provider,
            account,
            limit_headers,
        };
        if stream {
            self.stream_answer(&call, requested, answered)
        } else {
            self.json_answer(requested, answered).await
        }
    }

    /// A streamed chat answer, forwarded as it arrives (same format) or
    /// translated event by event.
    fn stream_answer(&self, call: &ChatCall, requested: &str, answered: ChatAnswered) -> AiOutcome {
        let ChatAnswered { response, provider, passthrough, account, limit_headers } = answered;
        let (attempts, provider_name) = (account.record.attempts, Some(provider.name.clone()));
        if passthrough && self.ingress == Ingress::OpenAi {
            // Its bytes go to the caller as they are: they must be a stream.
            let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            if !content_type.is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/event-stream")) {
                let message = format!(
                    "provider {} answered a stream request with content type {:?}, not text/event-stream",
                    provider.name,
                    content_type.unwrap_or("(none)")
                );
                let mut account = account;
                return self.bad_answer(&mut account, &message);
            }
            let scanner = ChatStreamScanner::new(provider.adapter.system(), call.wants_usage_chunk);
            let body = AiStream::openai_passthrough(response.into_body(), scanner, account, provider.request_timeout);
            let response = event_stream(body, "text/event-stream", limit_headers);
            return AiOutcome { response, provider: provider_name, attempts, recorded: true };
        }
        let encoder = match self.ingress {
            Ingress::Anthropic if passthrough => Encoder::Passthrough(Passthrough::Anthropic),
            Ingress::Gemini if passthrough => Encoder::Passthrough(Passthrough::GeminiSse),
            Ingress::OpenAi => Encoder::OpenAi { include_usage: call.wants_usage_chunk },
            Ingress::Anthropic => {
                Encoder::Anthropic(Box::new(MessagesStreamEncoder::new(requested, account.prompt_estimate())))
            }
            Ingress::Gemini => Encoder::Gemini(Box::new(GenerateContentStreamEncoder::new(
                self.gemini_stream.unwrap_or(StreamFormat::Sse),
                requested,
            ))),
        };
        let content_type = match &encoder {
            Encoder::Gemini(encoder) => encoder.content_type(),
            _ => "text/event-stream",
        };
        // A provider that falls silent mid-stream gets as long as it had for its headers.
        let idle = provider.request_timeout;
        let body = AiStream::new(response.into_body(), provider.adapter.stream_decoder(), encoder, account, idle);
        let response = event_stream(body, content_type, limit_headers);
        AiOutcome { response, provider: provider_name, attempts, recorded: true }
    }

    /// A whole chat answer: the provider's bytes when it speaks the
    /// caller's format and reported usage, otherwise decoded, billed and
    /// encoded in the caller's format.
    async fn json_answer(&self, requested: &str, answered: ChatAnswered) -> AiOutcome {
        let ChatAnswered { response, provider, passthrough, mut account, limit_headers } = answered;
        let (attempts, provider_name) = (account.record.attempts, Some(provider.name.clone()));
        let bytes = match read_limited(response.into_body(), MAX_ANSWER_BODY, provider.request_timeout).await {
            Ok(bytes) => bytes,
            Err(message) => return self.bad_answer(&mut account, &message),
        };
        if passthrough && self.ingress == Ingress::OpenAi {
            // Billed by a scan of the provider's usage, answered with its bytes;
            // an answer without usage goes the long way below, which adds the
            // gateway's estimate to it.
            match ChatAnswer::read(provider.adapter.system(), &bytes) {
                Ok(answer) if answer.usage().is_some() => {
                    let usage = answer.usage();
                    // The text is needed only to count output the provider did not.
                    let output_text = if usage.as_ref().is_some_and(|u| u.completion_tokens == 0) {
                        answer.output_text()
                    } else {
                        String::new()
                    };
                    account.finish(Served {
                        outcome: UsageOutcome::Ok,
                        http_status: 200,
                        usage,
                        usage_is_estimate: false,
                        output_text: &output_text,
                        finish_reason: answer.finish_reason(),
                        error: None,
                    });
                    let mut response = json_response(StatusCode::OK, bytes);
                    response.headers_mut().extend(limit_headers);
                    return AiOutcome { response, provider: provider_name, attempts, recorded: account.recorded() };
                }
                Ok(_) => {}
                Err(error) => return self.bad_answer(&mut account, &error.to_string()),
            }
        }
        let answer = match provider.adapter.chat_response(&bytes) {
            Ok(answer) => answer,
            Err(error) => return self.bad_answer(&mut account, &error.to_string()),
        };
        let output_text: String = answer.choices.iter().map(|c| c.message.text()).collect::<Vec<_>>().join("");
        let finish_reason = answer.choices.first().and_then(|c| c.finish_reason.clone());
        let mut answer = answer;
        let estimated = answer.usage.is_none();
        if estimated {
            answer.usage = Some(Usage::new(account.prompt_estimate(), tokens::count_tokens(&output_text), None));
        }
        account.finish(Served {
            outcome: UsageOutcome::Ok,
            http_status: 200,
            usage: answer.usage.clone(),
            usage_is_estimate: estimated,
            output_text: &output_text,
            finish_reason,
            error: None,
        });
        let json = match self.ingress {
            // The provider's own answer, byte for byte: it is already in the
            // caller's format (an OpenAI one without usage gets the estimate).
            Ingress::Anthropic | Ingress::Gemini if passthrough => Ok(bytes),
            Ingress::OpenAi => serde_json::to_vec(&answer).map(Bytes::from),
            Ingress::Anthropic => {
                serde_json::to_vec(&anthropic_ingress::chat_response_to_messages(&answer, requested)).map(Bytes::from)
            }
            Ingress::Gemini => {
                serde_json::to_vec(&gemini_ingress::chat_response_to_gemini(&answer, requested)).map(Bytes::from)
            }
        };
        let mut response = match json {
            Ok(bytes) => json_response(StatusCode::OK, bytes),
            Err(error) => {
                error_response(self.ingress, ErrorKind::Server, StatusCode::INTERNAL_SERVER_ERROR, &error.to_string())
            }
        };
        response.headers_mut().extend(limit_headers);
        AiOutcome { response, provider: provider_name, attempts, recorded: account.recorded() }
    }

    /// Embeddings for an OpenAI caller: to an OpenAI-format provider the
    /// caller's bytes go as they are (the model edited) and its answer, the
    /// vectors included, comes back as it is, read only for its usage.
    async fn embeddings(&self, body: Bytes) -> AiOutcome {
        let requested = match EmbeddingsHead::read(&body) {
            Ok(head) => head.model.into_owned(),
            Err(error) => return outcome(bad_request(self.ingress, &error.into())),
        };
        if requested.is_empty() {
            return outcome(error_response(
                self.ingress,
                ErrorKind::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "`model` is required",
            ));
        }
        let mut account = self.accounting("embeddings", &requested, false, PromptSource::EmbeddingsBody(body.clone()));
        let limit_headers = match self.reserve(&mut account, &requested, Some(0)).await {
            Ok(headers) => headers,
            Err(refused) => return refused,
        };
        let answered = self
            .attempt(&mut account, &requested, |candidate, target| {
                let adapter = candidate.provider.adapter;
                if self.ingress.spoken_by(candidate.provider.kind) {
                    let edit = RequestEdit { model: target.model, include_usage: false };
                    let body = passthrough::rewrite_request(&body, &edit)?;
                    return adapter.openai_wire_request(OpenAiOperation::Embeddings, body, false, target);
                }
                let request: EmbeddingsRequest =
                    serde_json::from_slice(&body).map_err(AdapterError::MalformedRequest)?;
                adapter.embeddings_request(&request, target)
            })
            .await;
        let (response, candidate) = match answered {
            Ok(answer) => answer,
            Err(refused) => return with_provider(refused, &account),
        };
        let provider = candidate.provider.clone();
        let attempts = account.record.attempts;
        let bytes = match read_limited(response.into_body(), MAX_ANSWER_BODY, provider.request_timeout).await {
            Ok(bytes) => bytes,
            Err(message) => return self.bad_answer(&mut account, &message),
        };
        // An OpenAI-format answer is scanned for its usage and sent as it
        // came; another provider's (Gemini's) is translated.
        let scanned = if self.ingress.spoken_by(provider.kind) {
            match EmbeddingsAnswer::read(provider.adapter.system(), &bytes) {
                Ok(answer) => answer.usage(),
                Err(error) => return self.bad_answer(&mut account, &error.to_string()),
            }
        } else {
            None
        };
        let (answer, usage) = match scanned {
            // The provider's answer, byte for byte.
            Some(usage) => (bytes, Some(usage)),
            None => match self.translate_embeddings(&mut account, &provider, &body, &bytes) {
                Ok(translated) => translated,
                Err(message) => return self.bad_answer(&mut account, &message),
            },
        };
        account.finish(Served {
            outcome: UsageOutcome::Ok,
            http_status: 200,
            usage,
            usage_is_estimate: false,
            output_text: "",
            finish_reason: None,
            error: None,
        });
        let mut response = json_response(StatusCode::OK, answer);
        response.headers_mut().extend(limit_headers);
        AiOutcome { response, provider: Some(provider.name.clone()), attempts, recorded: account.recorded() }
    }

    /// An embeddings answer in another format (Gemini's), or one without
    /// usage (some compatible servers): decoded into OpenAI's, with the
    /// provider's usage, else the gateway's count (which callers read as the
    /// provider's). Returns the answer and what to bill: the provider's
    /// usage, else the token ids counted (one per id), else nothing (the
    /// ledger then estimates the texts).
    fn translate_embeddings(
        &self,
        account: &mut Accounting,
        provider: &CompiledProvider,
        request: &Bytes,
        answer: &Bytes,
    ) -> Result<(Bytes, Option<Usage>), String> {
        let mut answer = provider.adapter.embeddings_response(answer).map_err(|e| e.to_string())?;
        let mut usage = answer.usage.as_ref().map(|u| Usage::new(u.prompt_tokens, 0, None));
        if answer.usage.is_none() {
            // The request is decoded once, here, and only for an answer without usage.
            let token_ids = embeddings_token_ids(request);
            if token_ids > 0 {
                usage = Some(Usage::new(token_ids, 0, None));
            }
            let estimate = if token_ids > 0 { token_ids } else { account.prompt_estimate() };
            answer.usage =
                Some(tollgate_llm::types::EmbeddingsUsage { prompt_tokens: estimate, total_tokens: estimate });
        }
        let answer = serde_json::to_vec(&answer).map(Bytes::from).map_err(|e| e.to_string())?;
        Ok((answer, usage))
    }
}

/// Token ids in an embeddings request are counted, one per id, not estimated.
fn embeddings_token_ids(body: &Bytes) -> u64 {
    match serde_json::from_slice::<EmbeddingsRequest>(body).map(|r| r.input) {
        Ok(EmbeddingsInput::Tokens(t)) => t.len() as u64,
        Ok(EmbeddingsInput::TokenBatches(b)) => b.iter().map(|t| t.len() as u64).sum(),
        _ => 0,
    }
}

/// A streamed answer's response.
fn event_stream(body: AiStream, content_type: &'static str, limit_headers: http::HeaderMap) -> Response<GatewayBody> {
    let mut out = Response::new(body.boxed_unsync());
    let headers = out.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.extend(limit_headers);
    out
}

fn with_provider(mut outcome: AiOutcome, account: &Accounting) -> AiOutcome {
    if !account.record.provider.is_empty() {
        outcome.provider = Some(account.record.provider.clone());
    }
    outcome.attempts = account.record.attempts;
    outcome.recorded = account.recorded();
    outcome
}

async fn read_limited(body: UpstreamResponseBody, limit: usize, timeout: Duration) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => Err(format!("cannot read the provider's answer: {error}")),
        Err(_) => Err(format!("the provider's answer did not arrive within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_auth_failures_keep_the_providers_text_from_the_caller() {
        let error = ProviderError {
            status: 401,
            kind: ErrorKind::Authentication,
            message: "Incorrect API key provided: sk-proj-****************abcd.".into(),
            retry_after: None,
        };
        let (kind, status, message) = Failure::Provider("openai".into(), error).for_caller();
        assert_eq!((kind, status), (ErrorKind::ProviderAuth, StatusCode::BAD_GATEWAY));
        assert!(message.contains("provider openai refused the gateway's credential"), "{message}");
        assert!(message.contains("the caller's key is not at fault"), "{message}");
        assert!(!message.contains("sk-proj") && !message.contains("Incorrect API key"), "{message}");
    }

    #[test]
    fn a_target_this_node_cannot_call_is_left_for_the_next_not_retried() {
        let unreachable = Failure::Unreachable(ProviderClientError::NoTlsClient.to_string());
        assert!(!unreachable.retryable(), "trying again cannot help");
        assert!(unreachable.try_elsewhere(), "another target may work");
        assert_eq!(unreachable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(unreachable.message().contains("install ca-certificates"), "{}", unreachable.message());
        let transport = Failure::Transport { kind: ErrorKind::Unavailable, message: "reset".into() };
        assert!(transport.retryable() && !transport.try_elsewhere());
    }

    #[test]
    fn a_refused_credential_is_warned_about_once_a_minute() {
        let now = Instant::now();
        assert!(auth_warn_due("p-test-warn", "k1", now));
        assert!(!auth_warn_due("p-test-warn", "k1", now + Duration::from_secs(1)));
        assert!(!auth_warn_due("p-test-warn", "k1", now + Duration::from_secs(59)));
        assert!(auth_warn_due("p-test-warn", "k2", now + Duration::from_secs(1)), "per credential");
        assert!(auth_warn_due("p-test-warn", "k1", now + AUTH_WARN_INTERVAL));
        assert!(!auth_warn_due("p-test-warn", "k1", now + AUTH_WARN_INTERVAL + Duration::from_secs(1)));
    }
}
