//! OpenAI's API as far as `launch serve` speaks it: the request bodies (read leniently where
//! OpenAI is, strictly where a value cannot be honoured), the answers, and errors as OpenAI
//! shapes them (`{"error": {"message", "type", "param", "code"}}`), so that the official
//! clients and the usual tools work unchanged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::engine::Failure;

/// Seconds a refused caller is told to wait.
pub const RETRY_AFTER_SECS: u64 = 1;

/// `prompt`: a string, or a list holding one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// Several (only one is served per request).
    Many(Vec<String>),
}

/// `stop`: a string or a list of up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// What `/v1/completions` and `/v1/chat/completions` share.
#[derive(Debug, Deserialize)]
pub struct Sampling {
    /// The model asked for.
    pub model: String,
    /// Tokens to generate (OpenAI's default 16); negative is refused.
    pub max_tokens: Option<i64>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// 0–2; 0 is greedy (OpenAI's default 1).
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// Sequences that end the completion.
    pub stop: Option<Stop>,
    /// Sampling seed (random when absent).
    pub seed: Option<u64>,
    /// Completions wanted, each sampled with its own seed (the request's, plus its index).
    pub n: Option<u32>,
    /// Stream as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: StreamOptions,
    /// Log probabilities: alternatives per token (completions, 0–5), or whether to report
    /// them (chat).
    pub logprobs: Option<Value>,
    /// Alternatives per token (chat, 0–20).
    pub top_logprobs: Option<i64>,
}

/// A `/v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Text to continue.
    pub prompt: Prompt,
    /// The rest.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (others are refused).
    pub role: String,
    /// Its text.
    pub content: String,
}

/// A `/v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// The rest.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A request refused, as OpenAI shapes it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 with OpenAI's `code`.
    pub fn coded(param: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            ..Self::invalid(Some(param), message)
        }
    }

    /// 404: no such model here.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..Self::invalid(
                Some("model"),
                format!("The model `{asked}` does not exist: this server serves `{served}`"),
            )
        }
    }

    /// 429: the queue is full; try again in `secs`.
    pub fn busy(secs: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("The server's queue is full: retry after {secs} s"),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(secs),
        }
    }

    /// 429: this caller has spent its allowance (`launch serve --rate-limit`).
    pub fn rate_limited(secs: u64) -> Self {
        Self {
            message: format!("Rate limit reached for this caller: retry after {secs} s"),
            ..Self::busy(secs)
        }
    }

    /// Why the model did not answer: displaced from the queue by a caller with stake (a
    /// 429, like a full queue), or past the request's deadline (a 504).
    pub fn failed(failure: Failure) -> Self {
        match failure {
            Failure::Displaced => Self::busy(RETRY_AFTER_SECS),
            Failure::Deadline => Self {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: "The request's deadline passed before its answer was ready".into(),
                kind: "timeout_error",
                param: None,
                code: Some("deadline_exceeded"),
                retry_after: None,
            },
        }
    }

    /// The `{"error": …}` body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// 500: the model's thread is gone.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..Self::invalid(None, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Reads a JSON body, naming what is wrong with it.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("We could not parse the JSON body of your request: {e}"),
        )
    })
}
