//! Length-prefixed byte messages for libp2p request-response, with size limits checked by us
//! (libp2p's own limits surface only as a closed connection).

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The request-response protocol sinter speaks.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/sinter/frames/1");

/// Requests and responses are byte strings of at most the configured sizes.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    /// Largest request accepted or sent, in bytes.
    pub max_request: usize,
    /// Largest response accepted or sent, in bytes.
    pub max_response: usize,
}

async fn read_limited<T>(io: &mut T, max: usize, what: &str) -> std::io::Result<Vec<u8>>
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

async fn write_limited<T>(io: &mut T, data: &[u8], max: usize, what: &str) -> std::io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    if data.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{what} of {} bytes exceeds the limit of {max} bytes",
                data.len()
            ),
        ));
    }
    io.write_all(&(data.len() as u32).to_le_bytes()).await?;
    io.write_all(data).await?;
    io.close().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_limited(io, self.max_request, "request").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_limited(io, self.max_response, "response").await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_limited(io, &req, self.max_request, "request").await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_limited(io, &res, self.max_response, "response").await
    }
}
