//! Calls whose answers stream in chunks ([`sinter_comms::net::stream`]), between real libp2p
//! peers on loopback: an answer far beyond one message's limit arrives whole; one past the
//! caller's limit is refused as it arrives; a hostile answerer (a frame past the chunk size,
//! an answer cut short) and hostile callers (an oversized request, streams held open to use up
//! the answerer's slots) get an error or a closed stream, and honest calls go on; a call
//! whose stream is dropped unread is tried once more.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use sinter_comms::net::stream::{self, CallLimits, serve_calls};
use sinter_comms::net::{self, Client, NetConfig, NetError, PeerId, StreamProtocol};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/sinter/test-calls/1");

async fn peer() -> (Client, PeerId, net::Multiaddr) {
    let mut config = NetConfig::new(net::Keypair::generate_ed25519(), "streams".into());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let (client, mut events, event_loop) = net::start(config).await.unwrap();
    tokio::spawn(event_loop.run());
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let addr = client.listen_addrs().await.unwrap().remove(0);
    (client.clone(), client.peer_id(), addr)
}

/// A caller connected to an answerer; the answerer's client and its calls.
async fn pair() -> (Client, PeerId, Client, net::IncomingStreams) {
    let (server, server_id, addr) = peer().await;
    let calls = server.accept(PROTOCOL).unwrap();
    let (caller, _, _) = peer().await;
    assert_eq!(caller.dial(addr).await.unwrap(), server_id);
    (caller, server_id, server, calls)
}

/// `n` bytes that differ from one position to the next.
fn blob(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A stream that announces a request of 100 bytes and sends none, left open. Opened again
/// while the answerer resets it: `libp2p-stream` drops a stream that arrives before the
/// answerer took the one before it, and a dropped stream is reset at once, while a taken one
/// stays silent until its deadline.
async fn hold(caller: &Client, server: PeerId) -> net::Stream {
    for _ in 0..10 {
        let mut stream = caller.open(server, PROTOCOL).await.unwrap();
        stream.write_all(&100u32.to_le_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte));
        if read.await.is_err() {
            return stream;
        }
    }
    panic!("ten streams in a row were reset unread")
}

fn limits(concurrent: usize, deadline: Duration) -> CallLimits {
    CallLimits {
        max_request: 1 << 10,
        concurrent,
        deadline,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_any_message_arrives_whole_and_one_past_the_limit_is_refused() {
    let (caller, server_id, _server, calls) = pair().await;
    let big = 40 << 20;
    tokio::spawn(serve_calls(
        calls,
        limits(4, Duration::from_secs(60)),
        move |_, request| async move {
            let n = u32::from_le_bytes(request[..4].try_into().unwrap()) as usize;
            blob(n)
        },
    ));
    // 40 MiB: past the request-response limit of 32 MiB, in chunks of 256 KiB.
    let request = (big as u32).to_le_bytes();
    let answer = caller
        .call(server_id, PROTOCOL, &request, 64 << 20)
        .await
        .unwrap();
    assert_eq!(answer.len(), big);
    assert!(answer == blob(big), "the bytes differ");
    // The same answer to a caller taking at most 1 MiB: refused once past it.
    let started = Instant::now();
    match caller.call(server_id, PROTOCOL, &request, 1 << 20).await {
        Err(NetError::Answer { peer, reason }) => {
            assert_eq!(peer, server_id);
            assert!(reason.contains("more than 1048576 bytes"), "{reason}");
        }
        other => panic!(
            "expected a refused answer, got {:?}",
            other.map(|a| a.len())
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // An answer of exactly the limit is taken, and an empty one too.
    let exact = caller
        .call(server_id, PROTOCOL, &(1u32 << 20).to_le_bytes(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(exact.len(), 1 << 20);
    let empty = caller
        .call(server_id, PROTOCOL, &0u32.to_le_bytes(), 0)
        .await
        .unwrap();
    assert!(empty.is_empty());
}

/// What a hostile answerer sends after reading the request.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// A frame announcing 4 GiB.
    HugeFrame,
    /// Half a chunk, then the stream closes.
    CutShort,
    /// Chunks without end, each within the chunk size.
    Endless,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_answerer_gets_an_error_not_an_allocation_or_a_hang() {
    let (caller, server_id, _server, mut calls) = pair().await;
    tokio::spawn(async move {
        while let Some((_, mut stream)) = calls.next().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).await.unwrap();
                let mut request = vec![0u8; u32::from_le_bytes(len) as usize];
                stream.read_exact(&mut request).await.unwrap();
                let lie = [Lie::HugeFrame, Lie::CutShort, Lie::Endless][request[0] as usize];
                match lie {
                    Lie::HugeFrame => {
                        let _ = stream.write_all(&u32::MAX.to_le_bytes()).await;
                        let _ = stream.write_all(&[0; 1024]).await;
                    }
                    Lie::CutShort => {
                        let _ = stream.write_all(&(1000u32).to_le_bytes()).await;
                        let _ = stream.write_all(&[1; 500]).await;
                        let _ = stream.close().await;
                    }
                    Lie::Endless => loop {
                        let chunk = [2u8; stream::CHUNK];
                        let frame = (stream::CHUNK as u32).to_le_bytes();
                        if stream.write_all(&frame).await.is_err()
                            || stream.write_all(&chunk).await.is_err()
                        {
                            return;
                        }
                    },
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let ask = |lie: u8| {
        let caller = caller.clone();
        async move { caller.call(server_id, PROTOCOL, &[lie], 8 << 20).await }
    };
    match ask(0).await {
        Err(NetError::Answer { reason, .. }) => {
            assert!(
                reason.contains("exceeds the limit of 262144 bytes"),
                "{reason}"
            )
        }
        other => panic!("a 4 GiB frame: {:?}", other.map(|a| a.len())),
    }
    match ask(1).await {
        Err(NetError::Request { reason, .. }) => {
            assert!(
                reason.contains("ended after 500 of its 1000 bytes"),
                "{reason}"
            )
        }
        other => panic!("an answer cut short: {:?}", other.map(|a| a.len())),
    }
    match ask(2).await {
        Err(NetError::Answer { reason, .. }) => {
            assert!(reason.contains("more than 8388608 bytes"), "{reason}")
        }
        other => panic!("an endless answer: {:?}", other.map(|a| a.len())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_stream_is_dropped_unread_is_tried_once_more() {
    let (caller, server_id, _server, mut calls) = pair().await;
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let first = calls.next().await;
        drop(first);
        dropped_tx.send(()).unwrap();
        serve_calls(
            calls,
            limits(2, Duration::from_secs(10)),
            |_, request| async move { request.repeat(2) },
        )
        .await
    });
    assert_eq!(
        caller
            .call(server_id, PROTOCOL, b"again", 1 << 10)
            .await
            .unwrap(),
        b"againagain"
    );
    assert!(dropped.await.is_ok(), "the first stream was never dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_callers_cannot_hold_the_answerer_and_honest_calls_go_on() {
    let (caller, server_id, _server, calls) = pair().await;
    let deadline = Duration::from_secs(2);
    tokio::spawn(serve_calls(
        calls,
        limits(2, deadline),
        |_, request| async move { request.repeat(3) },
    ));
    let honest = || caller.call(server_id, PROTOCOL, b"ok", 1 << 10);
    assert_eq!(honest().await.unwrap(), b"okokok");
    // A request past the answerer's limit of 1 KiB: the stream closes unanswered.
    match caller.call(server_id, PROTOCOL, &[0; 2048], 1 << 10).await {
        Err(NetError::Request { .. }) => {}
        other => panic!("an oversized request: {other:?}"),
    }
    // Two streams that never send their request hold both slots; a third call is closed,
    // and so is its second try.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(hold(&caller, server_id).await);
    }
    match honest().await {
        Err(NetError::Request { reason, .. }) => assert!(reason.contains("unanswered"), "{reason}"),
        other => panic!("a call beyond the slots: {other:?}"),
    }
    // Past the deadline the held streams are closed and their slots free again.
    tokio::time::sleep(deadline).await;
    assert_eq!(honest().await.unwrap(), b"okokok");
    let mut rest = Vec::new();
    let closed = held[0].read_to_end(&mut rest).await;
    assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");
}
