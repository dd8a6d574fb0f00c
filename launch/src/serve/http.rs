//! The HTTP side of `launch serve` (axum): OpenAI's `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions` (streamed as server-sent events ending with `data: [DONE]` when asked),
//! `/health`, and `/metrics` in Prometheus' text format. Requests are checked before they
//! reach the model: the model's name, the numbers, and the prompt against the context. A
//! request may carry a deadline, in seconds from its arrival, as `X-Request-Timeout` (or, for
//! an answer in one piece, `X-Stainless-Read-Timeout`, which OpenAI's Python client sends with
//! its own timeout): past it the caller gets a 504 (a streamed error once streaming) and the
//! model stops working on it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request as HttpRequest, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::{self, Stream, StreamExt};
use metrics_exporter_prometheus::PrometheusHandle;
use rand::Rng;
use serde_json::{Value, json};
use sinter_trainer::generate::Sampling;
use sinter_trainer::tokenizer::Tokenizer;
use tokio::sync::mpsc;

use super::api::{
    self, ApiError, ChatRequest, CompletionRequest, Message, Prompt, RETRY_AFTER_SECS, Stop,
};
use super::engine::{Engine, Event, Failure, Request, TokenLogprob};
use super::queue::Priority;
use super::rate::RateLimits;

/// Largest request body taken.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Most completions (`n`) one request may ask for.
const MAX_N: u32 = 8;
/// Stop sequences taken per request (OpenAI's limit).
const MAX_STOPS: usize = 4;
/// The header that carries a request's deadline, in seconds from its arrival.
const DEADLINE_HEADER: &str = "x-request-timeout";
/// OpenAI's Python client's read timeout: the longest wait for the next bytes, which for an
/// answer sent in one piece is a deadline.
const READ_TIMEOUT_HEADER: &str = "x-stainless-read-timeout";
/// The longest deadline taken (longer ones are this).
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// What the handlers share.
pub struct Served {
    /// The model's queue.
    pub engine: Engine,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Tokens of context.
    pub context: usize,
    /// The model's name in the API.
    pub model: String,
    /// When it started serving (Unix seconds).
    pub created: u64,
    /// What `/v1/models` says of it beyond OpenAI's fields.
    pub metadata: Value,
    /// The metrics recorder.
    pub metrics: PrometheusHandle,
    /// Per-caller limits on requests to the model, if any.
    pub rate_limits: Option<RateLimits>,
}

/// The router.
pub fn router(served: Arc<Served>) -> Router {
    let model = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route_layer(middleware::from_fn_with_state(served.clone(), limit_rate));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .merge(model)
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(served)
}

/// Refuses a caller past its rate limit before its request is read.
async fn limit_rate(
    State(served): State<Arc<Served>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    if let Some(limits) = &served.rate_limits {
        let key = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let address = request
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Err(secs) = limits.take(RateLimits::caller(key, address), Instant::now()) {
            return ApiError::rate_limited(secs).into_response();
        }
    }
    next.run(request).await
}

async fn count_requests(request: HttpRequest, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| match p.as_str() {
            "/health" => "/health",
            "/metrics" => "/metrics",
            "/v1/models" => "/v1/models",
            "/v1/completions" => "/v1/completions",
            "/v1/chat/completions" => "/v1/chat/completions",
            _ => "other",
        });
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("sinter_http_requests_total", "path" => path, "status" => status)
        .increment(1);
    metrics::histogram!("sinter_http_request_seconds", "path" => path)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn metrics_text(State(served): State<Arc<Served>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        served.metrics.render(),
    )
}

async fn models(State(served): State<Arc<Served>>) -> impl IntoResponse {
    axum::Json(json!({"object": "list", "data": [{
        "id": served.model,
        "object": "model",
        "created": served.created,
        "owned_by": "sinter",
        "metadata": served.metadata,
    }]}))
}

/// A request checked and ready for the model.
struct Job {
    prompt: Vec<u32>,
    /// Characters of the prompt (where the completion's text offsets start).
    prompt_chars: usize,
    max_tokens: usize,
    sampling: Sampling,
    stop: Vec<String>,
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
    /// Completions wanted.
    n: usize,
    /// When the caller stops waiting.
    deadline: Option<Instant>,
}

/// The request's deadline from its headers ([`DEADLINE_HEADER`], else for an answer in one
/// piece [`READ_TIMEOUT_HEADER`]); a 400 naming the header if it is not a positive number of
/// seconds.
fn deadline(
    headers: &HeaderMap,
    arrived: Instant,
    stream: bool,
) -> Result<Option<Instant>, ApiError> {
    let names: &[&str] = match stream {
        true => &[DEADLINE_HEADER],
        false => &[DEADLINE_HEADER, READ_TIMEOUT_HEADER],
    };
    let Some((name, value)) = names
        .iter()
        .find_map(|name| headers.get(*name).map(|v| (*name, v)))
    else {
        return Ok(None);
    };
    let secs = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            ApiError::invalid(
                None,
                format!("the {name} header must be a positive number of seconds, not {value:?}"),
            )
        })?;
    Ok(Some(
        arrived + Duration::from_secs_f64(secs).min(MAX_DEADLINE),
    ))
}

impl Served {
    /// Checks `asked` for `text`, tokenizes it, and refuses what the model cannot serve.
    fn job(
        &self,
        text: &str,
        asked: api::Sampling,
        kind: Kind,
        headers: &HeaderMap,
    ) -> Result<Job, ApiError> {
        let deadline = deadline(headers, Instant::now(), asked.stream)?;
        if asked.model != self.model {
            return Err(ApiError::unknown_model(&asked.model, &self.model));
        }
        let n = asked.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n must be from 1 to {MAX_N}, not {n}"),
            ));
        }
        let logprobs = kind.logprobs_asked(asked.logprobs.as_ref(), asked.top_logprobs)?;
        let max_tokens = asked
            .max_completion_tokens
            .or(asked.max_tokens)
            .unwrap_or(16);
        let max_tokens = usize::try_from(max_tokens).map_err(|_| {
            ApiError::invalid(
                Some("max_tokens"),
                format!("max_tokens must be at least 0, not {max_tokens}"),
            )
        })?;
        let temperature = asked.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("temperature must be between 0 and 2, not {temperature}"),
            ));
        }
        let top_p = asked.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("top_p must be in (0, 1], not {top_p}"),
            ));
        }
        let mut stop = match asked.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("at most {MAX_STOPS} stop sequences, not {}", stop.len()),
            ));
        }
        if let Kind::Chat = kind {
            stop.push(CHAT_TURN_END.to_string());
        }
        // As `launch generate` does: an empty prompt starts from a newline.
        let start = if text.is_empty() { "\n" } else { text };
        let prompt = self
            .tokenizer
            .encode(start.as_bytes())
            .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?;
        let wanted = prompt.len().saturating_add(max_tokens);
        if wanted > self.context {
            return Err(ApiError::coded(
                "messages",
                "context_length_exceeded",
                format!(
                    "This model's maximum context length is {} tokens. However, you requested {wanted} tokens ({} in the prompt, {max_tokens} for the completion). Please reduce the prompt or the completion length.",
                    self.context,
                    prompt.len()
                ),
            ));
        }
        metrics::counter!("sinter_tokens_total", "kind" => "prompt").increment(prompt.len() as u64);
        Ok(Job {
            prompt,
            prompt_chars: start.chars().count(),
            max_tokens,
            sampling: Sampling {
                temperature,
                top_k: 0,
                top_p,
                seed: asked.seed.unwrap_or_else(|| rand::rng().random()),
            },
            stop,
            logprobs,
            stream: asked.stream,
            include_usage: asked.stream_options.include_usage,
            n: n as usize,
            deadline,
        })
    }

    /// Queues `job`'s completions (the `i`-th sampled with the seed plus `i`); their events.
    /// If the queue cannot take them all it takes none: the ones queued stop as their
    /// receivers drop.
    fn submit(&self, job: &Job) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, ApiError> {
        (0..job.n)
            .map(|i| {
                let (events, receiver) = mpsc::unbounded_channel();
                let sampling = Sampling {
                    seed: job.sampling.seed.wrapping_add(i as u64),
                    ..job.sampling
                };
                self.engine
                    .submit(Request {
                        prompt: job.prompt.clone(),
                        max_tokens: job.max_tokens,
                        sampling,
                        stop: job.stop.clone(),
                        logprobs: job.logprobs,
                        events,
                        arrived: Instant::now(),
                        priority: Priority::default(),
                        deadline: job.deadline,
                    })
                    .map_err(|_| ApiError::busy(RETRY_AFTER_SECS))?;
                Ok(receiver)
            })
            .collect()
    }
}

/// Which API a response speaks.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Chat,
}

impl Kind {
    fn id(self) -> String {
        let prefix = match self {
            Kind::Text => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        format!("{prefix}-{:032x}", rand::rng().random::<u128>())
    }

    /// Choice `index`, carrying `text` (a delta when streaming) and its tokens' `logprobs`.
    fn choice(
        self,
        index: usize,
        text: &str,
        logprobs: Value,
        finish: Option<&str>,
        streaming: bool,
    ) -> Value {
        match (self, streaming) {
            (Kind::Text, _) => {
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
            (Kind::Chat, false) => {
                json!({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish})
            }
            (Kind::Chat, true) => {
                let delta = if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"role": "assistant", "content": text})
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// How many alternatives per token the request asks log probabilities for: completions
    /// take `logprobs` 0–5, chat `logprobs: true` with `top_logprobs` 0–20.
    fn logprobs_asked(
        self,
        logprobs: Option<&Value>,
        top: Option<i64>,
    ) -> Result<Option<usize>, ApiError> {
        let bad = |what: String| ApiError::invalid(Some("logprobs"), what);
        match (self, logprobs) {
            (_, None | Some(Value::Null)) | (Kind::Chat, Some(Value::Bool(false))) => Ok(None),
            (Kind::Text, Some(n)) => match n.as_u64() {
                Some(n @ 0..=5) => Ok(Some(n as usize)),
                _ => Err(bad(format!(
                    "logprobs must be an integer from 0 to 5, not {n}"
                ))),
            },
            (Kind::Chat, Some(Value::Bool(true))) => match top.unwrap_or(0) {
                n @ 0..=20 => Ok(Some(n as usize)),
                n => Err(ApiError::invalid(
                    Some("top_logprobs"),
                    format!("top_logprobs must be from 0 to 20, not {n}"),
                )),
            },
            (Kind::Chat, Some(other)) => {
                Err(bad(format!("logprobs must be true or false, not {other}")))
            }
        }
    }

    /// Tokens' log probabilities in this API's shape; `offset` is where the first token's
    /// text starts (completions count from the prompt's start) and moves past them.
    fn logprobs(self, tokens: &[TokenLogprob], offset: &mut usize) -> Value {
        match self {
            Kind::Text => {
                let mut offsets = Vec::with_capacity(tokens.len());
                for t in tokens {
                    offsets.push(*offset);
                    *offset += t.token.chars().count();
                }
                json!({
                    "tokens": tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    // Tokens that are not whole characters share the text "�": keep the
                    // likeliest of them (`top` is in descending order), as the map has one key.
                    "top_logprobs": tokens.iter().map(|t| {
                        let mut top = serde_json::Map::new();
                        for (_, s, l) in &t.top {
                            top.entry(s.clone()).or_insert(json!(l));
                        }
                        top
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Kind::Chat => {
                let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
                json!({"content": tokens.iter().map(|t| {
                    let mut e = entry(&t.token, t.logprob);
                    e["top_logprobs"] = t.top.iter().map(|(_, s, l)| entry(s, *l)).collect();
                    e
                }).collect::<Vec<_>>()})
            }
        }
    }

    fn object(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn completions(
    State(served): State<Arc<Served>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let request: CompletionRequest = api::parse(&body)?;
        let text = match request.prompt {
            Prompt::One(text) => text,
            Prompt::Many(mut list) if list.len() == 1 => list.remove(0),
            Prompt::Many(list) => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("one prompt per request is served, not {}", list.len()),
                ));
            }
        };
        let job = served.job(&text, request.sampling, Kind::Text, &headers)?;
        respond(&served, job, Kind::Text).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// The chat template: each message on its own line as `Role: content`, then `Assistant:` for
/// the model to continue; its turn ends where it starts a user's.
pub fn render_chat(messages: &[Message]) -> Result<String, ApiError> {
    let mut text = String::new();
    for message in messages {
        let role = match message.role.as_str() {
            "system" | "developer" => "System",
            "user" => "User",
            "assistant" => "Assistant",
            other => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("unknown role {other:?}: system, user or assistant"),
                ));
            }
        };
        text.push_str(&format!("{role}: {}\n", message.content));
    }
    text.push_str("Assistant:");
    Ok(text)
}

/// Where the model's chat turn ends.
pub const CHAT_TURN_END: &str = "\nUser:";

async fn chat(State(served): State<Arc<Served>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let request: ChatRequest = api::parse(&body)?;
        if request.messages.is_empty() {
            return Err(ApiError::invalid(Some("messages"), "messages is empty"));
        }
        let text = render_chat(&request.messages)?;
        let job = served.job(&text, request.sampling, Kind::Chat, &headers)?;
        respond(&served, job, Kind::Chat).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn respond(served: &Arc<Served>, job: Job, kind: Kind) -> Result<Response, ApiError> {
    let receivers = served.submit(&job)?;
    let (id, created, model) = (kind.id(), now(), served.model.clone());
    let prompt_tokens = job.prompt.len();
    if job.stream {
        let head =
            json!({"id": id, "object": kind.object(true), "created": created, "model": model});
        return Ok(Sse::new(stream_events(receivers, head, kind, &job)).into_response());
    }
    // The completions generate side by side in the engine's batch; collect them in order.
    let mut choices = Vec::with_capacity(job.n);
    let mut completion_tokens = 0;
    for (index, mut events) in receivers.into_iter().enumerate() {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let collect = async {
            loop {
                match events.recv().await {
                    Some(Event::Text(piece)) => text.push_str(&piece),
                    Some(Event::Logprob(token)) => logprobs.push(token),
                    Some(Event::Done { finish, tokens }) => break Ok((finish, tokens)),
                    Some(Event::Failed(failure)) => break Err(ApiError::failed(failure)),
                    None => break Err(ApiError::internal("the model stopped before finishing")),
                }
            }
        };
        let (finish, tokens) = match job.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), collect)
                .await
                .unwrap_or_else(|_| Err(ApiError::failed(Failure::Deadline)))?,
            None => collect.await?,
        };
        let mut offset = job.prompt_chars;
        let logprobs = match job.logprobs {
            Some(_) => kind.logprobs(&logprobs, &mut offset),
            None => Value::Null,
        };
        choices.push(kind.choice(index, &text, logprobs, Some(finish.as_str()), false));
        completion_tokens += tokens;
    }
    Ok(axum::Json(json!({
        "id": id,
        "object": kind.object(false),
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

/// The events of a streamed response as server-sent events: a chunk per piece of text of
/// each choice (with its tokens' log probabilities, if asked), one per choice with its finish
/// reason, one with the usage if asked, then `[DONE]`. Dropping it (the client left) drops
/// the receivers, which stops the generations.
fn stream_events(
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    head: Value,
    kind: Kind,
    job: &Job,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> + use<> {
    let (prompt_tokens, include_usage, with_logprobs) =
        (job.prompt.len(), job.include_usage, job.logprobs.is_some());
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut value = head.clone();
        value["choices"] = choices;
        if let Some(usage) = usage {
            value["usage"] = usage;
        }
        SseEvent::default().data(value.to_string())
    };
    let choices = (0..receivers.len())
        .map(|_| Choice {
            pending: Vec::new(),
            offset: job.prompt_chars,
        })
        .collect();
    let mut events =
        stream::select_all(receivers.into_iter().enumerate().map(|(index, events)| {
            stream::unfold(events, move |mut events| async move {
                events.recv().await.map(|event| ((index, event), events))
            })
            .boxed()
        }));
    // The deadline ends the whole response, whichever choice is still going.
    if let Some(deadline) = job.deadline {
        events.push(
            stream::once(tokio::time::sleep_until(deadline.into()))
                .map(|()| (0, Event::Failed(Failure::Deadline)))
                .boxed(),
        );
    }
    let start = Streaming {
        events,
        choices,
        unfinished: job.n,
        completion_tokens: 0,
    };
    stream::unfold(Some(start), move |state| {
        let chunk = chunk.clone();
        async move {
            let mut state = state?;
            let (index, event) = state.events.next().await?;
            let choice = &mut state.choices[index];
            let mut logprobs = || match with_logprobs {
                true => kind.logprobs(&std::mem::take(&mut choice.pending), &mut choice.offset),
                false => Value::Null,
            };
            let out = match event {
                Event::Logprob(token) => {
                    choice.pending.push(token);
                    Vec::new()
                }
                Event::Text(piece) => {
                    let logprobs = logprobs();
                    vec![chunk(
                        json!([kind.choice(index, &piece, logprobs, None, true)]),
                        None,
                    )]
                }
                // Nothing more comes: the error, as OpenAI streams one, ends the stream.
                Event::Failed(failure) => {
                    let error = ApiError::failed(failure).body();
                    return Some((vec![SseEvent::default().data(error.to_string())], None));
                }
                Event::Done { finish, tokens } => {
                    let logprobs = logprobs();
                    let mut out = vec![chunk(
                        json!([kind.choice(index, "", logprobs, Some(finish.as_str()), true)]),
                        None,
                    )];
                    state.completion_tokens += tokens;
                    state.unfinished -= 1;
                    if state.unfinished == 0 {
                        if include_usage {
                            let usage = usage(prompt_tokens, state.completion_tokens);
                            out.push(chunk(json!([]), Some(usage)));
                        }
                        out.push(SseEvent::default().data("[DONE]"));
                        return Some((out, None));
                    }
                    out
                }
            };
            Some((out, Some(state)))
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>)))
}

/// A streamed response between events: every choice's events as they come, tagged with the
/// choice's index, and what is still to come.
struct Streaming {
    events: stream::SelectAll<stream::BoxStream<'static, (usize, Event)>>,
    choices: Vec<Choice>,
    unfinished: usize,
    completion_tokens: usize,
}

/// One streamed choice: log probabilities of tokens whose text has not gone out yet, and
/// where the next token's text starts.
struct Choice {
    pending: Vec<TokenLogprob>,
    offset: usize,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_template_names_each_role_and_leaves_the_assistant_to_speak() {
        let messages = vec![
            Message {
                role: "system".into(),
                content: "Speak as Milton.".into(),
            },
            Message {
                role: "user".into(),
                content: "Of man's first disobedience".into(),
            },
        ];
        assert_eq!(
            render_chat(&messages).unwrap(),
            "System: Speak as Milton.\nUser: Of man's first disobedience\nAssistant:"
        );
        let tool = vec![Message {
            role: "tool".into(),
            content: String::new(),
        }];
        assert!(render_chat(&tool).is_err());
    }
}
