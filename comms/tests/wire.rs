//! The codec against real frames and hostile bytes.

use proptest::prelude::*;
use sinter_comms::wire::VERSION;
use sinter_comms::{CodecLimits, TensorPayload, TensorSet, WireError, WireTensor, decode, encode};
use sinter_kernels::{Kernels, QuantConfig, RayonKernels, ScaleDtype};

fn sample_set() -> TensorSet {
    let values: Vec<f32> = (0..1000)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 1000.0)
        .collect();
    let q16 = RayonKernels
        .quantize(
            &values,
            QuantConfig {
                block: 64,
                scale: ScaleDtype::F16,
            },
        )
        .unwrap();
    let q32 = RayonKernels
        .quantize(&values[..300], QuantConfig::default())
        .unwrap();
    TensorSet {
        tensors: vec![
            WireTensor {
                name: "layers.0.attention.wq.weight".into(),
                shape: vec![10, 100],
                payload: TensorPayload::Int8(q16),
            },
            WireTensor {
                name: "norm.weight".into(),
                shape: vec![300],
                payload: TensorPayload::Int8(q32),
            },
            WireTensor {
                name: "lm_head.weight".into(),
                shape: vec![2, 3],
                payload: TensorPayload::F32(vec![1.0, -2.0, 3.5, 0.0, 1e-30, -7.0]),
            },
            WireTensor {
                name: "empty".into(),
                shape: vec![0, 5],
                payload: TensorPayload::F32(vec![]),
            },
        ],
    }
}

#[test]
fn round_trip_is_exact() {
    let set = sample_set();
    let frame = encode(&set, 3).unwrap();
    assert_eq!(decode(&frame, &CodecLimits::default()).unwrap(), set);
}

#[test]
fn every_truncation_is_an_error() {
    let frame = encode(&sample_set(), 3).unwrap();
    for cut in 0..frame.len() {
        assert!(
            decode(&frame[..cut], &CodecLimits::default()).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
}

#[test]
fn every_single_byte_corruption_is_caught() {
    let frame = encode(&sample_set(), 3).unwrap();
    for i in 0..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x5A;
        assert!(
            decode(&bad, &CodecLimits::default()).is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
}

#[test]
fn header_errors_are_named() {
    let frame = encode(&sample_set(), 3).unwrap();
    let limits = CodecLimits::default();
    let mut bad = frame.clone();
    bad[0] = b'X';
    assert!(matches!(decode(&bad, &limits), Err(WireError::BadMagic(_))));
    let mut bad = frame.clone();
    bad[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert_eq!(
        decode(&bad, &limits),
        Err(WireError::UnknownVersion { found: VERSION + 1 })
    );
    let mut bad = frame.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        decode(&bad, &limits),
        Err(WireError::Checksum { .. })
    ));
    let mut long = frame.clone();
    long.push(0);
    assert_eq!(decode(&long, &limits), Err(WireError::TrailingBytes(1)));
}

#[test]
fn oversize_frames_and_bodies_are_refused_before_work() {
    let frame = encode(&sample_set(), 3).unwrap();
    let small = CodecLimits {
        max_frame_bytes: frame.len() - 1,
        ..CodecLimits::default()
    };
    assert!(matches!(
        decode(&frame, &small),
        Err(WireError::Oversize { what: "frame", .. })
    ));
    let tight = CodecLimits {
        max_decoded_bytes: 100,
        ..CodecLimits::default()
    };
    assert!(matches!(
        decode(&frame, &tight),
        Err(WireError::Oversize {
            what: "decoded body",
            ..
        })
    ));
    let few = CodecLimits {
        max_tensors: 2,
        ..CodecLimits::default()
    };
    assert!(matches!(
        decode(&frame, &few),
        Err(WireError::Oversize {
            what: "tensor count",
            ..
        })
    ));
}

#[test]
fn encoder_refuses_inconsistent_tensors() {
    let bad_shape = TensorSet {
        tensors: vec![WireTensor {
            name: "w".into(),
            shape: vec![2, 2],
            payload: TensorPayload::F32(vec![1.0; 3]),
        }],
    };
    assert!(matches!(
        encode(&bad_shape, 3),
        Err(WireError::ShapeMismatch { .. })
    ));
}

/// A valid header and checksum around an arbitrary (attacker-chosen) body.
fn frame_around(body: &[u8]) -> Vec<u8> {
    sinter_comms::wire::frame(body, 1).unwrap()
}

#[test]
fn lying_bodies_are_rejected_without_huge_allocations() {
    let limits = CodecLimits::default();
    // One tensor claiming 2^40 elements with a few bytes of data.
    let mut body = vec![];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(b'w');
    body.push(2);
    body.extend_from_slice(&(1u64 << 20).to_le_bytes());
    body.extend_from_slice(&(1u64 << 20).to_le_bytes());
    body.push(1);
    body.extend_from_slice(&[0; 16]);
    assert!(matches!(
        decode(&frame_around(&body), &limits),
        Err(WireError::Truncated { what: "values", .. })
    ));
    // A billion tensors.
    let body = 1_000_000_000u32.to_le_bytes();
    assert!(matches!(
        decode(&frame_around(&body), &limits),
        Err(WireError::Oversize {
            what: "tensor count",
            ..
        })
    ));
    // NaN in full-precision values.
    let mut body = vec![];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(b'w');
    body.push(1);
    body.extend_from_slice(&2u64.to_le_bytes());
    body.push(1);
    body.extend_from_slice(&1.0f32.to_le_bytes());
    body.extend_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(
        decode(&frame_around(&body), &limits),
        Err(WireError::NonFinite {
            name: "w".into(),
            index: 1
        })
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &CodecLimits::default());
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&frame_around(&body), &CodecLimits::default());
    }
}
