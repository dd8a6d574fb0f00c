//! The tensor parser behind a valid header: arbitrary bodies, framed with a correct checksum
//! so that the fuzzer is not stopped at the CRC. Same properties as `decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_comms::wire::frame;
use sinter_comms::{CodecLimits, decode, encode};

fuzz_target!(|body: &[u8]| {
    let limits = CodecLimits {
        max_frame_bytes: 1 << 20,
        max_decoded_bytes: 1 << 22,
        max_tensors: 256,
    };
    let Ok(framed) = frame(body, 1) else { return };
    if let Ok(set) = decode(&framed, &limits) {
        let again = encode(&set, 1).expect("a decoded set re-encodes");
        assert_eq!(
            decode(&again, &CodecLimits::default()).expect("re-encoded frame decodes"),
            set
        );
    }
});
