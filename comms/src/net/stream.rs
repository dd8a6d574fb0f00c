//! Calls whose answers stream: a request of one frame on a plain libp2p stream
//! (`libp2p-stream`), answered by frames of at most [`CHUNK`] bytes that end with an empty one.
//! An answer is not held to one message's limit: the caller reads as chunks arrive, up to a
//! limit it sets from what it asked, never from what the other side announces, and stops
//! reading the moment an answer goes past it.
//!
//! Frames are length-prefixed byte strings (a little-endian u32, then the bytes), as in the
//! request-response codec.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};

use super::NetError;

/// The largest frame of a streamed answer.
pub const CHUNK: usize = 256 << 10;

/// How long a caller waits before trying again a call its answerer closed unanswered.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Reads one frame of at most `max` bytes (`what` names it in errors).
pub(crate) async fn read_frame<T>(io: &mut T, max: usize, what: &str) -> std::io::Result<Vec<u8>>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let len = read_len(io).await?;
    read_body(io, len, max, what).await
}

/// A frame's length prefix.
async fn read_len<T>(io: &mut T) -> std::io::Result<usize>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    Ok(u32::from_le_bytes(len) as usize)
}

/// The `len` bytes of a frame after its prefix, if `len` is at most `max`.
async fn read_body<T>(io: &mut T, len: usize, max: usize, what: &str) -> std::io::Result<Vec<u8>>
where
    T: futures::AsyncRead + Unpin + Send,
{
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes exceeds the limit of {max} bytes"),
        ));
    }
    // Grown as bytes arrive, not allocated on the sender's word: a peer that announces the
    // largest frame and sends nothing holds no memory here.
    let mut data = Vec::new();
    io.take(len as u64).read_to_end(&mut data).await?;
    if data.len() < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{what} ended after {} of its {len} bytes", data.len()),
        ));
    }
    Ok(data)
}

/// Writes `data` as one frame, if it is at most `max` bytes.
pub(crate) async fn write_frame<T>(
    io: &mut T,
    data: &[u8],
    max: usize,
    what: &str,
) -> std::io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    let len = u32::try_from(data.len())
        .ok()
        .filter(|&len| len as usize <= max)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{what} of {} bytes exceeds the limit of {max} bytes",
                    data.len()
                ),
            )
        })?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(data).await
}

/// Writes `data` as frames of at most [`CHUNK`] bytes and the empty frame that ends them.
pub async fn write_chunked<T>(io: &mut T, data: &[u8]) -> std::io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    for chunk in data.chunks(CHUNK) {
        write_frame(io, chunk, CHUNK, "chunk").await?;
    }
    write_frame(io, &[], CHUNK, "chunk").await?;
    io.flush().await
}

/// Why a chunked answer was not read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkedError {
    /// The answer broke the protocol: past the reader's limit, or a frame over [`CHUNK`].
    #[error("{0}")]
    Refused(String),
    /// The stream failed or ended before the answer's first frame: the answerer closed it
    /// unread or never took it.
    #[error("{0}")]
    Unanswered(std::io::Error),
    /// The stream failed or ended after the answer began, before its empty frame.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Reads frames until the empty one and returns their bytes, refusing an answer of more than
/// `limit` bytes as soon as it passes it.
pub async fn read_chunked<T>(io: &mut T, limit: usize) -> Result<Vec<u8>, ChunkedError>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut data = Vec::new();
    let mut begun = false;
    loop {
        let len = read_len(io).await.map_err(|e| {
            if begun {
                ChunkedError::Io(e)
            } else {
                ChunkedError::Unanswered(e)
            }
        })?;
        begun = true;
        let chunk = read_body(io, len, CHUNK, "chunk")
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => ChunkedError::Refused(e.to_string()),
                _ => ChunkedError::Io(e),
            })?;
        if chunk.is_empty() {
            return Ok(data);
        }
        if data.len().saturating_add(chunk.len()) > limit {
            return Err(ChunkedError::Refused(format!(
                "an answer of more than {limit} bytes, the most the request can be answered with"
            )));
        }
        data.extend_from_slice(&chunk);
    }
}

/// One failed try of a call.
pub(crate) struct Failed {
    pub(crate) error: NetError,
    /// The stream closed before any of the answer arrived: the answerer refused it unread, or
    /// never took it, so another try may be answered.
    pub(crate) unanswered: bool,
}

/// Asks `peer` over `stream` (opened on its protocol): writes `request` (at most
/// `max_request` bytes), then reads the chunked answer, of at most `limit` bytes.
pub(crate) async fn call_on(
    peer: PeerId,
    mut stream: Stream,
    request: &[u8],
    max_request: usize,
    limit: usize,
) -> Result<Vec<u8>, Failed> {
    let failed = |reason: String, unanswered| Failed {
        error: NetError::Request { peer, reason },
        unanswered,
    };
    let sent = async {
        write_frame(&mut stream, request, max_request, "request").await?;
        stream.flush().await
    };
    match sent.await {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(failed(e.to_string(), false));
        }
        Err(e) => {
            return Err(failed(
                format!("closed unanswered: sending the request: {e}"),
                true,
            ));
        }
        Ok(()) => {}
    }
    read_chunked(&mut stream, limit).await.map_err(|e| match e {
        ChunkedError::Refused(reason) => Failed {
            error: NetError::Answer { peer, reason },
            unanswered: false,
        },
        ChunkedError::Unanswered(e) => failed(format!("closed unanswered: {e}"), true),
        ChunkedError::Io(e) => failed(format!("reading the answer: {e}"), false),
    })
}

/// How [`serve_calls`] treats its callers.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// The largest request read.
    pub max_request: usize,
    /// Calls answered at once; a stream opened beyond them is closed unanswered.
    pub concurrent: usize,
    /// The longest one call may take, from its stream opening to the end of its answer.
    pub deadline: Duration,
}

/// Answers every call on `incoming` with `answer(caller, request)`, streamed in chunks, until
/// the network stops.
pub async fn serve_calls<F, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    limits: CallLimits,
    answer: F,
) where
    F: Fn(PeerId, Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.concurrent));
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "busy: a call's stream closed unanswered");
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let call = async {
                let request = read_frame(&mut stream, limits.max_request, "request").await?;
                write_chunked(&mut stream, &answer(peer, request).await).await?;
                stream.close().await
            };
            match tokio::time::timeout(limits.deadline, call).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "call not answered"),
                Err(_) => tracing::debug!(%peer, "call past its deadline: stream closed"),
            }
            drop(permit);
        });
    }
}
