//! A peer's contribution to a round as one blob — its encoded shards, in shard order — which it
//! commits to (BlakeTwo256 on the ledger) before the all-reduce reveals any of it, and which
//! validators fetch whole to score it.

use sinter_kernels::RayonKernels;

use crate::params::ParamLayout;
use crate::pseudo_gradient;

/// The most bytes a contribution of `parts` frames for a model of `params` parameters can
/// take: f32 values (no quantization) with zstd's worst-case growth, and room for each frame's
/// header. A validator refuses a member's offer of more before allocating for it.
pub fn max_contribution_len(params: usize, parts: usize) -> u64 {
    (4 * params + params / 64 + parts * (64 << 10) + (1 << 20)) as u64
}

/// A contribution as one blob: the number of parts, then each part's length and bytes
/// (little-endian `u32`s).
pub fn contribution_blob(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The parts of a [`contribution_blob`].
fn contribution_parts(blob: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut rest = blob;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("contribution ends early".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let count = word(take(4)?);
    if count > 1 << 16 {
        return Err(format!("contribution claims {count} parts"));
    }
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let len = word(take(4)?);
        parts.push(take(len)?);
    }
    Ok(parts)
}

/// A member's whole pseudo-gradient from its contribution blob, shard by shard.
pub(crate) fn dequantize(layout: &ParamLayout, blob: &[u8]) -> Result<Vec<f32>, String> {
    let parts = contribution_parts(blob)?;
    if parts.is_empty() || parts.iter().all(|p| p.is_empty()) {
        return Err("an empty contribution".into());
    }
    let bounds = pseudo_gradient::shard_bounds(layout, parts.len());
    let mut delta = vec![0.0f32; layout.len()];
    for (k, part) in parts.iter().enumerate() {
        let slots = &layout.slots[bounds[k].clone()];
        pseudo_gradient::accumulate_frame(&RayonKernels, slots, part, &mut delta, 1.0)
            .map_err(|e| format!("shard {k}: {e}"))?;
    }
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contribution_blobs_round_trip_and_refuse_truncation() {
        let parts = vec![vec![1u8, 2, 3], Vec::new(), vec![9u8; 300]];
        let blob = contribution_blob(&parts);
        let back = contribution_parts(&blob).unwrap();
        assert_eq!(back, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for cut in [0, 3, 9, blob.len() - 1] {
            assert!(contribution_parts(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }
}
