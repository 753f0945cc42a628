//! Azure OpenAI: the OpenAI wire format behind per-deployment URLs, an `api-version` query
//! parameter and an `api-key` header.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::openai::{
    OpenAiStreamDecoder, classify_openai_error, parse_chat_response, parse_embeddings_response, upstream_chat_body,
};
use super::{
    OpenAiOperation, ProviderAdapter, ProviderKind, SseStream, StreamDecoder, UpstreamTarget, join_url, post_json,
    to_json_body,
};
use crate::error::{AdapterError, ProviderError};
use crate::types::{ChatRequest, ChatResponse, EmbeddingsRequest, EmbeddingsResponse};

/// The latest GA data-plane version when this was written.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

const SYSTEM: &str = "az.ai.openai";

pub struct AzureAdapter;

fn deployment_url(target: &UpstreamTarget<'_>, operation: &str) -> Result<String, AdapterError> {
    let deployment = target.model;
    if deployment.is_empty() || deployment.contains(['/', '?', '#', ' ']) {
        return Err(AdapterError::InvalidTarget(format!(
            "Azure deployment name {deployment:?} must be a plain non-empty name"
        )));
    }
    let version = target.api_version.unwrap_or(DEFAULT_API_VERSION);
    Ok(join_url(target.base_url, &format!("/openai/deployments/{deployment}/{operation}?api-version={version}")))
}

impl ProviderAdapter for AzureAdapter {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureOpenAi
    }

    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        // Azure routes by deployment; the body's model is informational, so it names the
        // deployment too rather than the caller's alias.
        let body = to_json_body(&upstream_chat_body(req, target.model))?;
        self.openai_wire_request(OpenAiOperation::Chat, body, req.is_stream(), target)
    }

    fn chat_response(&self, body: &[u8]) -> Result<ChatResponse, AdapterError> {
        parse_chat_response(SYSTEM, body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        SseStream::boxed(SYSTEM, OpenAiStreamDecoder::new(SYSTEM, true))
    }

    fn embeddings_request(
        &self,
        req: &EmbeddingsRequest,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let mut upstream = req.clone();
        upstream.model = target.model.to_owned();
        self.openai_wire_request(OpenAiOperation::Embeddings, to_json_body(&upstream)?, false, target)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<EmbeddingsResponse, AdapterError> {
        parse_embeddings_response(SYSTEM, body)
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        classify_openai_error(status, headers, body)
    }

    fn openai_wire_request(
        &self,
        operation: OpenAiOperation,
        body: Vec<u8>,
        stream: bool,
        target: &UpstreamTarget<'_>,
    ) -> Result<http::Request<Bytes>, AdapterError> {
        let url = match operation {
            OpenAiOperation::Chat => deployment_url(target, "chat/completions")?,
            OpenAiOperation::Embeddings => deployment_url(target, "embeddings")?,
        };
        post_json(&url, &[("api-key", target.api_key)], target, stream, body)
    }
}
