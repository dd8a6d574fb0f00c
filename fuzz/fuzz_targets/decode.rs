//! The wire decoder on arbitrary bytes: it must return `Ok` or a typed error, never panic,
//! and whatever it accepts must re-encode to a frame that decodes to the same set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_comms::{CodecLimits, decode, encode};

fuzz_target!(|data: &[u8]| {
    let limits = CodecLimits {
        max_frame_bytes: 1 << 20,
        max_decoded_bytes: 1 << 22,
        max_tensors: 256,
    };
    if let Ok(set) = decode(data, &limits) {
        let frame = encode(&set, 1).expect("a decoded set re-encodes");
        assert_eq!(
            decode(&frame, &CodecLimits::default()).expect("re-encoded frame decodes"),
            set
        );
    }
});
