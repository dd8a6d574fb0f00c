//! The model behind the endpoint: one thread owns it and answers requests in turn from a
//! bounded queue (a full queue is the caller's to refuse, not to wait on). Each request
//! streams its text back as it is generated, whole characters at a time, holding back what
//! could still become one of its stop sequences; a request whose receiver is gone (the client
//! disconnected) stops generating at its next token.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use burn::tensor::backend::Backend;
use sinter_trainer::generate::{Sampling, generate};
use sinter_trainer::model::Llama;
use sinter_trainer::tokenizer::{TextStream, Tokenizer};
use tokio::sync::mpsc;

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
    /// Where the text goes.
    pub events: mpsc::Sender<Event>,
    /// When the request arrived.
    pub arrived: Instant,
}

/// What a request hears back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next piece of text.
    Text(String),
    /// The end: why, and how many tokens were generated.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Tokens generated.
        tokens: usize,
    },
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
    queue: SyncSender<Request>,
}

/// The queue is full: try again later.
#[derive(Debug)]
pub struct Busy;

impl Engine {
    /// Starts the thread owning `model`; up to `capacity` requests wait for it.
    pub fn start<B: Backend + 'static>(
        model: Llama<B>,
        tokenizer: Tokenizer,
        context: usize,
        device: B::Device,
        capacity: usize,
    ) -> std::io::Result<Self>
    where
        Llama<B>: Send + 'static,
    {
        let (queue, requests) = sync_channel(capacity);
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || serve(&model, &tokenizer, context, &device, requests))?;
        Ok(Self { queue })
    }

    /// Queues `request`, unless the queue is full.
    pub fn submit(&self, request: Request) -> Result<(), Busy> {
        match self.queue.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn serve<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    context: usize,
    device: &B::Device,
    requests: Receiver<Request>,
) {
    for request in requests {
        metrics::histogram!("sinter_queue_seconds").record(request.arrived.elapsed().as_secs_f64());
        metrics::histogram!("sinter_batch_size").record(1.0);
        complete(model, tokenizer, context, device, request);
    }
}

fn complete<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    context: usize,
    device: &B::Device,
    request: Request,
) {
    let mut text = TextStream::new(tokenizer);
    let mut stops = Stops::new(&request.stop);
    let mut finish = Finish::Length;
    let mut tokens = 0;
    let mut last = None::<Instant>;
    let mut connected = true;
    generate(
        model,
        &request.prompt,
        request.max_tokens,
        context,
        &request.sampling,
        device,
        |token| {
            tokens += 1;
            let now = Instant::now();
            match last {
                None => metrics::histogram!("sinter_time_to_first_token_seconds")
                    .record((now - request.arrived).as_secs_f64()),
                Some(before) => metrics::histogram!("sinter_time_per_token_seconds")
                    .record((now - before).as_secs_f64()),
            }
            last = Some(now);
            let Some(piece) = text.push(token) else {
                return true;
            };
            let (ready, stopped) = stops.push(&piece);
            if !ready.is_empty() {
                connected = request.events.blocking_send(Event::Text(ready)).is_ok();
            }
            if stopped {
                finish = Finish::Stop;
            }
            connected && !stopped
        },
    );
    metrics::counter!("sinter_tokens_total", "kind" => "completion").increment(tokens as u64);
    if !connected {
        tracing::debug!(tokens, "the client left: generation stopped");
        return;
    }
    let rest = stops.finish();
    if !rest.is_empty() && finish == Finish::Length {
        let _ = request.events.blocking_send(Event::Text(rest));
    }
    let _ = request.events.blocking_send(Event::Done { finish, tokens });
}

/// Text held against stop sequences: what is certainly not the start of one goes out.
struct Stops<'a> {
    stops: &'a [String],
    held: String,
}

impl<'a> Stops<'a> {
    fn new(stops: &'a [String]) -> Self {
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
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut held = Stops::new(&stops);
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
        let stops = vec!["STOP".to_string()];
        let mut held = Stops::new(&stops);
        assert_eq!(held.push("abc"), ("abc".into(), false));
        assert_eq!(held.push("ST"), (String::new(), false));
        assert_eq!(held.push("x"), ("STx".into(), false));
    }
}
