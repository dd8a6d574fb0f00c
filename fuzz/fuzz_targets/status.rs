//! A peer's answer to `launch status` (JSON): decoded or refused, never a panic, and what is
//! decoded re-encodes to JSON that decodes to the same status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_comms::group::GroupStatus;

fuzz_target!(|data: &[u8]| {
    if let Ok(status) = serde_json::from_slice::<GroupStatus>(data) {
        let again = serde_json::to_vec(&status).expect("a status serialises");
        let back: GroupStatus = serde_json::from_slice(&again).expect("and decodes");
        assert_eq!(back.peers, status.peers);
        assert_eq!(back.rejected, status.rejected);
    }
});
