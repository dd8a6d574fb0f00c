//! The codec against real frames and hostile bytes.

use proptest::prelude::*;
use sinter_comms::wire::VERSION;
use sinter_comms::{CodecLimits, TensorPayload, TensorSet, WireError, WireTensor, decode, encode};
use sinter_kernels::sparse::sparsify_with_feedback;
use sinter_kernels::{Kernels, QuantConfig, RayonKernels, ScaleDtype, SparseConfig, SparseTensor};

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
    let sparse = sparse_of(&values[..700], 2);
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
                name: "layers.0.feed_forward.w1.weight".into(),
                shape: vec![7, 100],
                payload: TensorPayload::Sparse(sparse),
            },
            WireTensor {
                name: "empty".into(),
                shape: vec![0, 5],
                payload: TensorPayload::F32(vec![]),
            },
        ],
    }
}

/// The top 16 of every 128 values, at `bits` bits.
fn sparse_of(values: &[f32], bits: u8) -> SparseTensor {
    let config = SparseConfig {
        chunk: 128,
        k: 16,
        bits,
    };
    let mut residual = vec![0.0; values.len()];
    sparsify_with_feedback(values, &vec![0.0; values.len()], &mut residual, 1.0, config).unwrap()
}

/// The body of one sparse tensor named `w` of `len` values with the given header and data.
fn sparse_body(len: u64, chunk: u32, k: u32, bits: u8, data: &[u8]) -> Vec<u8> {
    let mut body = vec![];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.push(b'w');
    body.push(1);
    body.extend_from_slice(&len.to_le_bytes());
    body.push(2);
    body.extend_from_slice(&chunk.to_le_bytes());
    body.extend_from_slice(&k.to_le_bytes());
    body.push(bits);
    body.extend_from_slice(data);
    body
}

#[test]
fn sparse_tensors_round_trip_at_every_width() {
    let values: Vec<f32> = (0..1000)
        .map(|i| ((i * 7 % 31) as f32 - 15.0) / 10.0)
        .collect();
    for bits in [2, 4, 8] {
        let set = TensorSet {
            tensors: vec![WireTensor {
                name: "w".into(),
                shape: vec![1000],
                payload: TensorPayload::Sparse(sparse_of(&values, bits)),
            }],
        };
        let frame = encode(&set, 3).unwrap();
        assert_eq!(decode(&frame, &CodecLimits::default()).unwrap(), set);
    }
}

#[test]
fn lying_sparse_bodies_are_rejected_without_huge_allocations() {
    let limits = CodecLimits::default();
    let decode_body = |body: Vec<u8>| decode(&frame_around(&body), &limits);
    // 2^60 values in chunks of one: the scales alone would need 2^62 bytes.
    assert!(matches!(
        decode_body(sparse_body(1 << 60, 1, 1, 8, &[0; 64])),
        Err(WireError::Truncated { what: "scales", .. })
    ));
    // Settings outside the codec's range.
    for (chunk, k, bits) in [(0, 1, 2), (65537, 1, 2), (8, 9, 2), (8, 0, 2), (8, 2, 3)] {
        assert!(
            matches!(
                decode_body(sparse_body(8, chunk, k, bits, &[0; 64])),
                Err(WireError::InvalidTensor { .. })
            ),
            "chunk {chunk}, k {k}, bits {bits}"
        );
    }
    // Eight values, one chunk keeping two: scale, index gaps, codes.
    let data = |scale: f32, gaps: &[u8]| {
        let mut d = scale.to_le_bytes().to_vec();
        d.extend_from_slice(gaps);
        d.push(0b1101);
        d
    };
    // Indices 1 and 7: gaps 1 and 5.
    let good = decode_body(sparse_body(8, 8, 2, 4, &data(1.0, &[1, 5]))).unwrap();
    let TensorPayload::Sparse(s) = &good.tensors[0].payload else {
        panic!("{good:?}")
    };
    assert_eq!(s.indices, vec![1, 7]);
    for (scale, gaps, why) in [
        (1.0, &[1, 6][..], "past its end"),
        (1.0, &[8, 0], "past its end"),
        (1.0, &[0x81, 0x80, 0x80, 0x00], "longer than three bytes"),
        (1.0, &[0xff, 0xff, 0x03], "past its end"),
        (f32::NAN, &[1, 5], "scale"),
        (-1.0, &[1, 5], "scale"),
    ] {
        let err = decode_body(sparse_body(8, 8, 2, 4, &data(scale, gaps))).unwrap_err();
        assert!(err.to_string().contains(why), "{gaps:?}: {err}");
    }
    // Gaps cut short by the end of the body.
    assert!(decode_body(sparse_body(8, 8, 2, 4, &[0, 0, 128, 63, 1])).is_err());
    let mut long = data(1.0, &[1, 5]);
    long.push(0);
    assert_eq!(
        decode_body(sparse_body(8, 8, 2, 4, &long)),
        Err(WireError::TrailingBytes(1))
    );
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
