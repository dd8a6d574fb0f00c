//! The model behind the endpoint: one thread owns it and generates for several requests at
//! once (continuous batching: a request's prompt runs once into its key/value cache, then it
//! joins the running batch between steps, each step one token for every request in it, and it
//! leaves when done). More requests wait in a bounded [`Queue`], validators by stake first (a
//! full queue is the caller's to refuse, not to wait on). Each request streams its text back
//! as it is generated, whole characters at a time, holding back what could still become one
//! of its stop sequences; a request whose receiver is gone (the client disconnected) or whose
//! deadline passed stops at its next token, or is never started. A [`Score`] (what a validator
//! asks: the distribution or hidden state at every position of a text) waits in the same queue
//! and runs as one forward pass between steps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sinter_trainer::fused::ModelBackend;
use sinter_trainer::generate::{Sampling, sample_token, slow_for_test};
use sinter_trainer::model::{KvCache, Llama};
use sinter_trainer::tokenizer::{TextStream, Tokenizer};
use tokio::sync::{mpsc, oneshot};

use super::queue::{Full, Priority, Pushed, Queue};

/// One completion to generate.
pub struct Request {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How to sample.
    pub sampling: Sampling,
    /// Text that ends the completion (not included in it).
    pub stop: Vec<String>,
    /// Report each token's log probability and this many alternatives (`None`: none).
    pub logprobs: Option<usize>,
    /// Where the text goes. Unbounded, so that a slow reader never holds up the batch: a
    /// request sends at most `max_tokens` events (fewer than the context).
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived.
    pub arrived: Instant,
    /// Where it waits in the queue.
    pub priority: Priority,
    /// When its answer is no use any more (the caller gave up): it is then stopped, or
    /// never started.
    pub deadline: Option<Instant>,
}

impl Request {
    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Ends the request unanswered, telling its caller why.
    fn fail(&self, failure: Failure) {
        count_failure(failure);
        let _ = self.events.send(Event::Failed(failure));
    }
}

/// One forward pass over a text, answered whole.
pub struct Score {
    /// The text's tokens (within the context).
    pub tokens: Vec<u32>,
    /// What to answer at each position.
    pub want: Want,
    /// When it arrived.
    pub arrived: Instant,
    /// Where it waits in the queue.
    pub priority: Priority,
    /// When its answer is no use any more.
    pub deadline: Option<Instant>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Scored, Failure>>,
}

/// What a [`Score`] asks for at each position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The last layer's hidden state.
    Hidden,
    /// The next token's likeliest `k` ids with their probabilities.
    Top(usize),
}

/// A [`Score`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Scored {
    /// `dim` values per position, row after row.
    Hidden {
        /// Values per position.
        dim: usize,
        /// The values.
        values: Vec<f32>,
    },
    /// Per position, the likeliest next tokens (id, probability), likeliest first.
    Top(Vec<Vec<(u32, f32)>>),
}

/// Work for the model's thread.
pub enum Job {
    /// A completion, generated token by token in the running batch.
    Generate(Request),
    /// A forward pass over a text.
    Score(Score),
}

impl Job {
    fn priority(&self) -> Priority {
        match self {
            Job::Generate(r) => r.priority,
            Job::Score(s) => s.priority,
        }
    }

    fn fail(self, failure: Failure) {
        match self {
            Job::Generate(r) => r.fail(failure),
            Job::Score(s) => {
                count_failure(failure);
                let _ = s.reply.send(Err(failure));
            }
        }
    }
}

fn count_failure(failure: Failure) {
    metrics::counter!("sinter_requests_failed_total", "reason" => failure.as_str()).increment(1);
}

/// A generated token's log probability under the model (temperature 1), with the most
/// likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// The token's text (lossy where it is part of a character).
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// The most likely tokens (id, text, log probability), most likely first.
    pub top: Vec<(u32, String, f32)>,
}

/// What a request hears back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next piece of text.
    Text(String),
    /// The log probabilities of the next token (sent before the text it completes).
    Logprob(TokenLogprob),
    /// The end: why, and how many tokens were generated.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Tokens generated.
        tokens: usize,
    },
    /// The end, unfinished.
    Failed(Failure),
}

/// Why a request ended without its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A request of a caller with more stake took its place in the full queue.
    Displaced,
    /// Its deadline passed.
    Deadline,
}

impl Failure {
    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Displaced => "displaced",
            Failure::Deadline => "deadline",
        }
    }
}

/// Why a completion ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` reached.
    Length,
    /// A stop sequence reached.
    Stop,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// The queue into the model's thread.
#[derive(Clone)]
pub struct Engine {
    queue: Arc<Handle>,
}

/// Closes the queue once the last [`Engine`] is dropped, which ends the model's thread.
struct Handle(Arc<Queue<Job>>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The queue is full: try again later.
#[derive(Debug)]
pub struct Busy;

impl Engine {
    /// Starts the thread owning `model`, generating up to `batch` requests at once; up to
    /// `capacity` more wait.
    pub fn start<B: ModelBackend + 'static>(
        model: Llama<B>,
        tokenizer: Tokenizer,
        device: B::Device,
        batch: usize,
        capacity: usize,
    ) -> std::io::Result<Self>
    where
        Llama<B>: Send + 'static,
    {
        let queue = Arc::new(Queue::new(capacity));
        let requests = queue.clone();
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || serve(&model, &tokenizer, &device, batch.max(1), &requests))?;
        Ok(Self {
            queue: Arc::new(Handle(queue)),
        })
    }

    /// Queues `request`, unless the queue is full of requests that rank as high; a
    /// lower-ranked request it displaces fails with [`Failure::Displaced`].
    pub fn submit(&self, job: impl Into<Job>) -> Result<(), Busy> {
        let job = job.into();
        let priority = job.priority();
        let pushed = self.queue.0.push(job, priority);
        metrics::gauge!("sinter_queue_waiting").set(self.queue.0.len() as f64);
        match pushed {
            Ok(Pushed::Queued) => Ok(()),
            Ok(Pushed::Displaced(out)) => {
                out.fail(Failure::Displaced);
                Ok(())
            }
            Err(Full(_)) => Err(Busy),
        }
    }
}

impl From<Request> for Job {
    fn from(request: Request) -> Self {
        Job::Generate(request)
    }
}

impl From<Score> for Job {
    fn from(score: Score) -> Self {
        Job::Score(score)
    }
}

fn serve<B: ModelBackend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    device: &B::Device,
    batch: usize,
    requests: &Queue<Job>,
) {
    let mut running: Vec<Sequence<'_, B>> = Vec::new();
    loop {
        // Requests join between steps: wait for one when idle, take what waits otherwise.
        if running.is_empty() {
            match requests.pop(None) {
                Some(job) => start(model, tokenizer, device, job, &mut running),
                None => return,
            }
        }
        while running.len() < batch {
            match requests.pop(Some(Duration::ZERO)) {
                Some(job) => start(model, tokenizer, device, job, &mut running),
                None => break,
            }
        }
        metrics::gauge!("sinter_queue_waiting").set(requests.len() as f64);
        let mut next = Vec::with_capacity(running.len());
        running.retain_mut(|sequence| match sequence.advance() {
            Some(token) => {
                next.push(token);
                true
            }
            None => false,
        });
        if running.is_empty() {
            continue;
        }
        metrics::histogram!("sinter_batch_size").record(running.len() as f64);
        let mut caches: Vec<&mut KvCache<B>> = running.iter_mut().map(|s| &mut s.cache).collect();
        let logits = model.decode(&next, &mut caches);
        let vocab = logits.dims()[1];
        let rows = logits.into_data().convert::<f32>();
        let rows = rows.as_slice::<f32>().expect("f32");
        for (sequence, row) in running.iter_mut().zip(rows.chunks(vocab)) {
            sequence.logits = row.to_vec();
        }
    }
}

/// Starts `job`: a generation joins `running`; a score runs now.
fn start<'t, B: ModelBackend>(
    model: &Llama<B>,
    tokenizer: &'t Tokenizer,
    device: &B::Device,
    job: Job,
    running: &mut Vec<Sequence<'t, B>>,
) {
    match job {
        Job::Generate(request) => {
            running.extend(Sequence::start(model, tokenizer, device, request))
        }
        Job::Score(score) => run_score(model, device, score),
    }
}

/// Runs `score`'s text through the model and answers it, unless nobody waits for it.
fn run_score<B: ModelBackend>(model: &Llama<B>, device: &B::Device, score: Score) {
    metrics::histogram!("sinter_queue_seconds").record(score.arrived.elapsed().as_secs_f64());
    if score.deadline.is_some_and(|d| Instant::now() >= d) {
        return Job::Score(score).fail(Failure::Deadline);
    }
    if score.reply.is_closed() || score.tokens.is_empty() {
        return;
    }
    let len = score.tokens.len();
    let ids: Vec<i32> = score.tokens.iter().map(|&t| t as i32).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), device);
    let rows = |t: Tensor<B, 3>| {
        let width = t.dims()[2];
        let values = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        (width, values)
    };
    let scored = match score.want {
        Want::Hidden => {
            let (dim, values) = rows(model.hidden(tokens));
            Scored::Hidden { dim, values }
        }
        Want::Top(k) => {
            let (vocab, logits) = rows(model.forward(tokens));
            Scored::Top(logits.chunks(vocab).map(|row| top_probs(row, k)).collect())
        }
    };
    metrics::counter!("sinter_tokens_total", "kind" => "scored").increment(len as u64);
    let _ = score.reply.send(Ok(scored));
}

/// The `k` likeliest tokens under `logits` (softmax), likeliest first.
fn top_probs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(k);
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|i| (i as u32, (logits[i] - max).exp() / total))
        .collect()
}

/// A request being generated: its cache, the logits of its next token, and what it sent.
struct Sequence<'t, B: ModelBackend> {
    request: Request,
    cache: KvCache<B>,
    logits: Vec<f32>,
    rng: StdRng,
    text: TextStream<'t>,
    stops: Stops,
    tokens: usize,
    last: Option<Instant>,
}

impl<'t, B: ModelBackend> Sequence<'t, B> {
    /// Runs the prompt; `None` when there is nothing to generate (then it is answered), or
    /// nobody to generate for (its caller left or its deadline passed while it waited).
    fn start(
        model: &Llama<B>,
        tokenizer: &'t Tokenizer,
        device: &B::Device,
        request: Request,
    ) -> Option<Self> {
        metrics::histogram!("sinter_queue_seconds").record(request.arrived.elapsed().as_secs_f64());
        if request.expired(Instant::now()) {
            request.fail(Failure::Deadline);
            return None;
        }
        if request.events.is_closed() {
            return None;
        }
        if request.max_tokens == 0 || request.prompt.is_empty() {
            let _ = request.events.send(Event::Done {
                finish: Finish::Length,
                tokens: 0,
            });
            return None;
        }
        let ids: Vec<i32> = request.prompt.iter().map(|&t| t as i32).collect();
        let prompt =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, request.prompt.len()]), device);
        let (logits, cache) = model.prefill(prompt);
        let logits = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32");
        Some(Self {
            rng: StdRng::seed_from_u64(request.sampling.seed),
            stops: Stops::new(request.stop.clone()),
            request,
            cache,
            logits,
            text: TextStream::new(tokenizer),
            tokens: 0,
            last: None,
        })
    }

    /// Its caller stopped listening: at its deadline (counted as a deadline failure; the
    /// caller answered it), or it left.
    fn unheard(&self) {
        match self.request.expired(Instant::now()) {
            true => self.request.fail(Failure::Deadline),
            false => tracing::debug!(tokens = self.tokens, "the client left: generation stopped"),
        }
    }

    /// Samples the next token and sends its text: the token, or `None` once the sequence is
    /// done (finished, or its client gone).
    fn advance(&mut self) -> Option<u32> {
        if self.request.expired(Instant::now()) {
            self.request.fail(Failure::Deadline);
            return None;
        }
        let token = sample_token(&self.logits, &self.request.sampling, &mut self.rng);
        if let Some(top) = self.request.logprobs {
            let logprob = token_logprob(self.text.tokenizer(), &self.logits, token, top);
            if self.request.events.send(Event::Logprob(logprob)).is_err() {
                self.unheard();
                return None;
            }
        }
        slow_for_test();
        self.tokens += 1;
        let now = Instant::now();
        match self.last {
            None => metrics::histogram!("sinter_time_to_first_token_seconds")
                .record((now - self.request.arrived).as_secs_f64()),
            Some(before) => metrics::histogram!("sinter_time_per_token_seconds")
                .record((now - before).as_secs_f64()),
        }
        self.last = Some(now);
        let mut stopped = false;
        if let Some(piece) = self.text.push(token) {
            let (ready, stop) = self.stops.push(&piece);
            stopped = stop;
            if !ready.is_empty() && self.request.events.send(Event::Text(ready)).is_err() {
                metrics::counter!("sinter_tokens_total", "kind" => "completion")
                    .increment(self.tokens as u64);
                self.unheard();
                return None;
            }
        }
        if !stopped && self.tokens < self.request.max_tokens {
            return Some(token);
        }
        metrics::counter!("sinter_tokens_total", "kind" => "completion")
            .increment(self.tokens as u64);
        let finish = if stopped {
            Finish::Stop
        } else {
            Finish::Length
        };
        let rest = std::mem::take(&mut self.stops).finish();
        if !rest.is_empty() && finish == Finish::Length {
            let _ = self.request.events.send(Event::Text(rest));
        }
        let _ = self.request.events.send(Event::Done {
            finish,
            tokens: self.tokens,
        });
        None
    }
}

/// The log probability of `token` under `logits` (log-softmax), and the `top` most likely.
fn token_logprob(tokenizer: &Tokenizer, logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    TokenLogprob {
        id: token,
        token: text(token),
        logprob: logits[token as usize] - log_total,
        top: order
            .into_iter()
            .take(top)
            .map(|i| (i as u32, text(i as u32), logits[i] - log_total))
            .collect(),
    }
}

/// Text held against stop sequences: what is certainly not the start of one goes out.
#[derive(Default)]
struct Stops {
    stops: Vec<String>,
    held: String,
}

impl Stops {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds `piece`: the text now safe to send, and whether a stop sequence was reached (the
    /// text is then what precedes it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let ready = self.held[..at].to_string();
            self.held.clear();
            return (ready, true);
        }
        // Hold the longest tail that begins some stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let ready = self.held[..keep].to_string();
        self.held.drain(..keep);
        (ready, false)
    }

    /// The text still held once generation ends without a stop.
    fn finish(self) -> String {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut held = Stops::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let (ready, stopped) = held.push(piece);
            out.push_str(&ready);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&held.finish());
        (out, false)
    }

    #[test]
    fn text_stops_before_a_stop_sequence_split_over_pieces() {
        assert_eq!(
            run(&["\nUser:"], &["Hi", " there\nU", "ser: more"]),
            ("Hi there".into(), true)
        );
        assert_eq!(
            run(&["END"], &["no ", "stop ", "E"]),
            ("no stop E".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["x", "yz"], &["ay", "z"]), ("a".into(), true));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
    }

    #[test]
    fn what_cannot_begin_a_stop_sequence_goes_out_at_once() {
        let mut held = Stops::new(vec!["STOP".to_string()]);
        assert_eq!(held.push("abc"), ("abc".into(), false));
        assert_eq!(held.push("ST"), (String::new(), false));
        assert_eq!(held.push("x"), ("STx".into(), false));
    }
}
