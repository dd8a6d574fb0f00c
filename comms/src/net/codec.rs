//! Length-prefixed byte messages for libp2p request-response, with size limits checked by us
//! (libp2p's own limits surface only as a closed connection).

use futures::AsyncWriteExt;
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
    super::stream::read_frame(io, max, what).await
}

async fn write_limited<T>(io: &mut T, data: &[u8], max: usize, what: &str) -> std::io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    super::stream::write_frame(io, data, max, what).await?;
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
