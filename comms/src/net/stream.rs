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

/// Reads one frame of at most `max` bytes (`what` names it in errors).
pub(crate) async fn read_frame<T>(io: &mut T, max: usize, what: &str) -> std::io::Result<Vec<u8>>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
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
    /// The stream failed or ended before the empty frame.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads frames until the empty one and returns their bytes, refusing an answer of more than
/// `limit` bytes as soon as it passes it.
pub async fn read_chunked<T>(io: &mut T, limit: usize) -> Result<Vec<u8>, ChunkedError>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut data = Vec::new();
    loop {
        let chunk = read_frame(io, CHUNK, "chunk")
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

/// Asks `peer` over `stream` (opened on its protocol): writes `request` (at most
/// `max_request` bytes), then reads the chunked answer, of at most `limit` bytes.
pub(crate) async fn call_on(
    peer: PeerId,
    mut stream: Stream,
    request: &[u8],
    max_request: usize,
    limit: usize,
) -> Result<Vec<u8>, NetError> {
    let failed = |reason: String| NetError::Request { peer, reason };
    write_frame(&mut stream, request, max_request, "request")
        .await
        .map_err(|e| failed(e.to_string()))?;
    stream.flush().await.map_err(|e| failed(e.to_string()))?;
    read_chunked(&mut stream, limit).await.map_err(|e| match e {
        ChunkedError::Refused(reason) => NetError::Answer { peer, reason },
        ChunkedError::Io(e) => failed(format!("reading the answer: {e}")),
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
