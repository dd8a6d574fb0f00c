//! The sparse top-k parser (wire dtype 2) behind a valid frame and tensor header: the fuzzer
//! picks the tensor's length, chunk size, `k` and bits, and the bytes behind them (scales,
//! index gaps, codes). It must return `Ok` or a typed error, never panic nor allocate on a
//! claimed size; whatever it accepts re-encodes to a frame that decodes to the same set, and
//! adds into an accumulator of its length without error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sinter_comms::wire::frame;
use sinter_comms::{CodecLimits, TensorPayload, decode, encode};

fuzz_target!(|input: (u32, u32, u32, u8, &[u8])| {
    let (len, chunk, k, bits, data) = input;
    let mut body = Vec::with_capacity(32 + data.len());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(b'w');
    body.push(1);
    body.extend_from_slice(&u64::from(len).to_le_bytes());
    body.push(2);
    body.extend_from_slice(&chunk.to_le_bytes());
    body.extend_from_slice(&k.to_le_bytes());
    body.push(bits);
    body.extend_from_slice(data);
    let limits = CodecLimits {
        max_frame_bytes: 1 << 20,
        max_decoded_bytes: 1 << 22,
        max_tensors: 4,
    };
    let Ok(framed) = frame(&body, 1) else { return };
    let Ok(set) = decode(&framed, &limits) else { return };
    let again = encode(&set, 1).expect("a decoded set re-encodes");
    assert_eq!(
        decode(&again, &CodecLimits::default()).expect("re-encoded frame decodes"),
        set
    );
    for tensor in &set.tensors {
        if let TensorPayload::Sparse(sparse) = &tensor.payload
            && sparse.len <= 1 << 24
        {
            let mut accumulator = vec![0.0f32; sparse.len];
            sparse
                .accumulate(&mut accumulator, 0.25)
                .expect("an accepted sparse tensor accumulates");
        }
    }
});
