//! How long a TCP connection may go without its sent data acknowledged before the kernel drops
//! it (`TCP_USER_TIMEOUT`, on Linux). Without a limit, a link cut for a while leaves every
//! connection over it in TCP's retransmission backoff: once the link is back, the next
//! retransmission can be tens of seconds (up to two minutes) away, and the peers stay deaf to
//! each other that long. With it, a stalled connection is dropped after [`STALL_LIMIT`] and
//! reported as [`super::NetEvent::Stalled`] — silence, not a close: the group keeps the peer
//! for live until its timeout and dials it afresh, which succeeds as soon as the link is back.
//! Healthy links, however slow, keep acknowledging and never reach the limit.

use std::time::Duration;

use libp2p::swarm::ConnectionError;

/// How long sent data may wait for an acknowledgement.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Sets the stall limit on a connection's socket (where the platform has one; elsewhere a
/// stalled connection waits for TCP's own timeout).
pub(super) fn limit(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(STALL_LIMIT)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT: stalled connections wait for TCP's own timeout");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = stream;
}

/// Whether a connection ended because its path failed (the kernel's stall timeout, or the
/// unreachable host or network it reports in its place), not because the peer closed it.
/// The cause comes wrapped (yamux's decode error inside an `io::Error::other`): every layer
/// is looked into.
pub(super) fn is_stall(cause: &ConnectionError) -> bool {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
    let ConnectionError::IO(e) = cause else {
        return false;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = next {
        next = error.source();
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), TimedOut | HostUnreachable | NetworkUnreachable) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
            }
        }
    }
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_of_a_connection_get_the_stall_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialled = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        for stream in [&dialled, &accepted] {
            let socket = socket2::SockRef::from(stream);
            assert_eq!(socket.tcp_user_timeout().unwrap(), None);
            limit(stream);
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(STALL_LIMIT));
        }
    }

    /// A layer that keeps its cause as its source, as yamux's decode error does.
    #[derive(Debug)]
    struct Layer(std::io::Error);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "decode error: i/o error: {}", self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_failed_path_is_a_stall_however_wrapped_and_a_close_is_not() {
        use std::io::{Error, ErrorKind::*};
        let direct = |kind| ConnectionError::IO(Error::from(kind));
        // How a timed-out yamux connection reports it (seen with a link set down).
        let wrapped = |kind| ConnectionError::IO(Error::other(Layer(Error::from(kind))));
        for kind in [TimedOut, HostUnreachable, NetworkUnreachable] {
            assert!(is_stall(&direct(kind)), "{kind:?}");
            assert!(is_stall(&wrapped(kind)), "{kind:?} wrapped");
        }
        for kind in [ConnectionReset, UnexpectedEof, BrokenPipe, Other] {
            assert!(!is_stall(&direct(kind)), "{kind:?}");
            assert!(!is_stall(&wrapped(kind)), "{kind:?} wrapped");
        }
        assert!(!is_stall(&ConnectionError::KeepAliveTimeout));
    }
}
