//! The group's request handler on arbitrary bytes from any of five peers (four members of the
//! last round, this one among them, and an outsider): every request is answered, none panics.
//! The first byte picks the sender; a request may be followed by more, split at 0xFF 0xFE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_comms::group::fuzzing::Handler;

fuzz_target!(|data: &[u8]| {
    let Some((&sender, rest)) = data.split_first() else {
        return;
    };
    let handler = Handler::new();
    let mut requests = Vec::new();
    let mut start = 0;
    for i in 0..rest.len().saturating_sub(1) {
        if rest[i] == 0xFF && rest[i + 1] == 0xFE {
            requests.push(&rest[start..i]);
            start = i + 2;
        }
    }
    requests.push(&rest[start.min(rest.len())..]);
    for request in requests {
        handler.handle(sender, request);
    }
});
