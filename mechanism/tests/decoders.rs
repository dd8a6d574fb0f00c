//! The embedded ledger's network decoders on hostile bytes (the fuzz target `ledger_messages`
//! runs them for longer): arbitrary bytes, and valid messages with a byte changed, cut short
//! or extended, are refused or decoded without a panic; valid ones round-trip exactly.

use parity_scale_codec::Encode;
use proptest::prelude::*;
use sinter_mechanism::ledger::block::{Block, Header};
use sinter_mechanism::ledger::keys::Keypair;
use sinter_mechanism::ledger::sync::{Gossip, Request, Response};

fn block(number: u64) -> Block {
    let key = Keypair::from_secret("//Alice").unwrap();
    let header = Header {
        number,
        parent: [1; 32],
        extrinsics_root: [2; 32],
        state_root: [3; 32],
        author: key.account(),
        timestamp_ms: 1_000,
    };
    Block::seal(header, Vec::new(), &key)
}

/// Every decoder on `bytes`: none panics.
fn decode_all(bytes: &[u8]) {
    let _ = Request::decode_from(bytes);
    if let Ok(Response::Blocks(blocks)) = Response::decode_from(bytes) {
        for b in blocks {
            let _ = (b.header.hash(), b.signature_is_valid());
        }
    }
    if let Ok(Gossip::Block { block, .. }) = Gossip::decode_from(bytes) {
        let _ = (block.header.hash(), block.signature_is_valid());
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn damaged_messages_never_panic_and_valid_ones_round_trip(
        number in any::<u64>(),
        from in any::<u64>(),
        flip in any::<(usize, u8)>(),
        cut in any::<usize>(),
        tail in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let key = Keypair::from_secret("//Bob").unwrap();
        let messages = [
            Request::BlocksFrom(from).encode(),
            Request::Nonce(key.account()).encode(),
            Response::Blocks(vec![block(number), block(number.wrapping_add(1))]).encode(),
            Response::Rejected("no such nonce: 运行".into()).encode(),
            Gossip::block(block(number), b"peer".to_vec(), &key, &[4; 32]),
        ];
        for bytes in &messages {
            let mut flipped = bytes.clone();
            let i = flip.0 % flipped.len();
            flipped[i] ^= flip.1.max(1);
            decode_all(&flipped);
            decode_all(&bytes[..cut % bytes.len()]);
            let mut longer = bytes.clone();
            longer.extend_from_slice(&tail);
            prop_assert!(Request::decode_from(&longer).is_err() || Response::decode_from(&longer).is_err());
        }
        prop_assert_eq!(Request::decode_from(&messages[0]).unwrap().encode(), messages[0].clone());
        prop_assert_eq!(Response::decode_from(&messages[2]).unwrap().encode(), messages[2].clone());
        prop_assert_eq!(Gossip::decode_from(&messages[4]).unwrap().encode(), messages[4].clone());
    }
}
