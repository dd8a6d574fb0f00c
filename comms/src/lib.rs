//! # sinter-comms
//!
//! What peers say to each other, and how: the wire codec for a set of tensors (a peer's
//! pseudo-gradient for one round), the libp2p network layer, and the group protocol that
//! forms each round's group and runs its all-reduce. The in-process simulation uses the
//! same codec, so every byte counted in a simulation is a byte that would travel.
//!
//! | module | what |
//! |---|---|
//! | [`wire`] | versioned, zstd-compressed, checksummed frames of int8 or f32 tensors |
//! | [`net`] | libp2p swarm: `Client` + `EventLoop`, peer keys, size-limited request-response |
//! | [`group`] | membership by heartbeat, a leader per round, reduce-scatter + all-gather, state transfer to joiners |
//! | [`transfer`] | chunked blobs with a Merkle manifest, fetched from several peers at once |
//!
//! | feature | what |
//! |---|---|
//! | `quic` | QUIC transport next to TCP |
#![warn(missing_docs)]

pub mod group;
pub mod net;
pub mod transfer;
pub mod wire;

pub use wire::{CodecLimits, TensorPayload, TensorSet, WireError, WireTensor, decode, encode};

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A fresh random peer id.
    pub(crate) fn peer() -> libp2p::PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }
}
