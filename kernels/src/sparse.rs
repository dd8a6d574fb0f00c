//! Top-k sparsification with error feedback (SparseLoCo's codec), on the CPU.
//!
//! A buffer is cut into chunks of `chunk` values (the last may be shorter). Each worker adds
//! its pseudo-gradient to its decayed error-feedback buffer, `e ← decay·e + (global − local)`,
//! keeps the `k` entries of each chunk largest in magnitude, quantizes them to `bits` bits
//! against the chunk's largest kept magnitude, and leaves in `e` exactly what was not sent:
//! `e ← e − decoded`. What is not sent this round is sent in a later one.
//!
//! A kept value `v` in a chunk with scale `m` (its largest kept magnitude) travels as the
//! code `c = round((v/m + 1)·(L−1)/2)` with `L = 2^bits` levels and comes back as
//! `m·(2c + 1 − L)/(L − 1)`: the levels span `−m..=m` evenly and never include zero, since
//! every kept value is one of the chunk's largest. Codes are packed little-endian in bits,
//! each chunk starting on a byte. Indices travel as gaps: each kept index minus the previous
//! one minus one (the first: the index itself), as LEB128 varints, so the usual gap of about
//! `chunk / k` takes one or two bytes instead of a u16 each.
//!
//! The selection is deterministic (ties go to the lower index) and runs chunk by chunk, so
//! every peer that sparsifies the same buffer gets the same bits, on any thread count.
//! There is no CubeCL kernel for it yet: top-k per chunk runs on the host.

use rayon::prelude::*;

use crate::KernelError;

/// Chunks handed to one rayon task.
const CHUNKS_PER_TASK: usize = 8;

/// Chunk size, entries kept per chunk and bits per kept value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseConfig {
    /// Values per chunk, `1..=65536` (indices travel as u16).
    pub chunk: usize,
    /// Entries kept per chunk, `1..=chunk` (a shorter last chunk keeps at most its length).
    pub k: usize,
    /// Bits per kept value: 2, 4 or 8.
    pub bits: u8,
}

impl SparseConfig {
    /// Checks the chunk size, `k` and `bits`.
    pub fn validate(&self) -> Result<(), KernelError> {
        let ok = (1..=65536).contains(&self.chunk)
            && (1..=self.chunk).contains(&self.k)
            && matches!(self.bits, 2 | 4 | 8);
        if ok {
            Ok(())
        } else {
            Err(KernelError::InvalidSparseConfig {
                chunk: self.chunk,
                k: self.k,
                bits: self.bits,
            })
        }
    }

    /// Number of chunks covering `len` values.
    pub fn chunks(&self, len: usize) -> usize {
        len.div_ceil(self.chunk)
    }

    /// Entries kept in chunk `c` of a buffer of `len` values.
    pub fn kept(&self, c: usize, len: usize) -> usize {
        let start = c.saturating_mul(self.chunk);
        self.k.min(len.saturating_sub(start).min(self.chunk))
    }

    /// Bytes of packed codes for `kept` values.
    pub fn code_bytes(&self, kept: usize) -> usize {
        (kept * usize::from(self.bits)).div_ceil(8)
    }

    /// Entries kept and bytes of packed codes over a whole buffer of `len` values (in closed
    /// form: `len` may come from an untrusted peer, and neither total exceeds it).
    pub fn totals(&self, len: usize) -> (usize, usize) {
        let (full, rest) = (len / self.chunk, self.k.min(len % self.chunk));
        (
            full * self.k + rest,
            full * self.code_bytes(self.k) + self.code_bytes(rest),
        )
    }

    fn levels(&self) -> u32 {
        1 << self.bits
    }
}

/// A sparsified buffer: per chunk, a scale, the kept entries' indices within the chunk (in
/// increasing order) and their packed codes.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTensor {
    /// Chunking, `k` and bits.
    pub config: SparseConfig,
    /// Values the dense buffer holds.
    pub len: usize,
    /// One scale per chunk: the largest kept magnitude (0 for an all-zero chunk).
    pub scales: Vec<f32>,
    /// `kept(c)` indices per chunk, each chunk's strictly increasing and below its length.
    pub indices: Vec<u16>,
    /// Packed codes, each chunk's starting on a byte.
    pub codes: Vec<u8>,
}

impl SparseTensor {
    /// Bytes of scales, index gaps and codes: what this tensor costs before compression.
    pub fn payload_bytes(&self) -> usize {
        let gaps: usize = self
            .chunk_indices()
            .flat_map(gaps)
            .map(|gap| (32 - gap.leading_zeros()).div_ceil(7).max(1) as usize)
            .sum();
        self.scales.len() * 4 + gaps + self.codes.len()
    }

    /// Appends the indices as varint gaps, chunk by chunk.
    pub fn write_gaps(&self, out: &mut Vec<u8>) {
        for mut gap in self.chunk_indices().flat_map(gaps) {
            while gap >= 0x80 {
                out.push((gap as u8) | 0x80);
                gap >>= 7;
            }
            out.push(gap as u8);
        }
    }

    /// Each chunk's kept indices, in order. On a tensor whose list is shorter than its config
    /// says (which [`validate`](Self::validate) refuses) it stops early instead of panicking.
    fn chunk_indices(&self) -> impl Iterator<Item = &[u16]> + '_ {
        let mut at = 0usize;
        (0..self.scales.len()).map_while(move |c| {
            let n = self.config.kept(c, self.len);
            let ids = self.indices.get(at..at.checked_add(n)?)?;
            at += n;
            Some(ids)
        })
    }

    /// Reads `config.totals(len)` indices written by [`write_gaps`](Self::write_gaps) from
    /// the front of `bytes`, returning them and the bytes read. Untrusted input: every index
    /// must lie inside its chunk, and nothing is allocated beyond what `bytes` can hold.
    pub fn read_gaps(
        config: SparseConfig,
        len: usize,
        bytes: &[u8],
    ) -> Result<(Vec<u16>, usize), KernelError> {
        config.validate()?;
        let (kept, _) = config.totals(len);
        let truncated = |chunk| KernelError::BadSparseChunk {
            chunk,
            why: "its index gaps are cut short",
        };
        if kept > bytes.len() {
            return Err(truncated(0));
        }
        let mut indices = Vec::with_capacity(kept);
        let mut pos = 0;
        for c in 0..config.chunks(len) {
            let chunk_len = (len - c * config.chunk).min(config.chunk) as u32;
            let mut next = 0u32;
            for _ in 0..config.kept(c, len) {
                let mut gap = 0u32;
                for shift in (0..).step_by(7) {
                    let byte = *bytes.get(pos).ok_or_else(|| truncated(c))?;
                    pos += 1;
                    if shift > 14 {
                        return Err(KernelError::BadSparseChunk {
                            chunk: c,
                            why: "an index gap is longer than three bytes",
                        });
                    }
                    gap |= u32::from(byte & 0x7f) << shift;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
                let index = next.saturating_add(gap);
                if index >= chunk_len {
                    return Err(KernelError::BadSparseChunk {
                        chunk: c,
                        why: "an index is past its end",
                    });
                }
                indices.push(index as u16);
                next = index + 1;
            }
        }
        Ok((indices, pos))
    }

    /// Checks internal consistency: lengths, finite non-negative scales, indices in range and
    /// increasing. The wire decoder relies on this for untrusted input.
    pub fn validate(&self) -> Result<(), KernelError> {
        self.config.validate()?;
        let (kept, code_bytes) = self.config.totals(self.len);
        crate::check_lengths("scales", self.config.chunks(self.len), self.scales.len())?;
        crate::check_lengths("indices", kept, self.indices.len())?;
        crate::check_lengths("codes", code_bytes, self.codes.len())?;
        if let Some(c) = self.scales.iter().position(|s| !s.is_finite() || *s < 0.0) {
            return Err(self.bad_chunk(c, "its scale is negative or not finite"));
        }
        for (c, ids) in self.chunk_indices().enumerate() {
            let chunk_len = (self.len - c * self.config.chunk).min(self.config.chunk);
            if ids.windows(2).any(|w| w[0] >= w[1]) {
                return Err(self.bad_chunk(c, "its indices are not strictly increasing"));
            }
            if ids.last().is_some_and(|&i| usize::from(i) >= chunk_len) {
                return Err(self.bad_chunk(c, "an index is past its end"));
            }
        }
        Ok(())
    }

    fn bad_chunk(&self, chunk: usize, why: &'static str) -> KernelError {
        KernelError::BadSparseChunk { chunk, why }
    }

    /// `accumulator += weight · decoded`, at the kept positions only. An inconsistent tensor
    /// is refused (see [`validate`](Self::validate)) and the accumulator left untouched.
    pub fn accumulate(&self, accumulator: &mut [f32], weight: f32) -> Result<(), KernelError> {
        self.validate()?;
        crate::check_lengths("accumulator", self.len, accumulator.len())?;
        let mut codes_at = 0;
        for (c, (ids, &scale)) in self.chunk_indices().zip(&self.scales).enumerate() {
            let codes = &self.codes[codes_at..codes_at + self.config.code_bytes(ids.len())];
            let base = c * self.config.chunk;
            for (j, &i) in ids.iter().enumerate() {
                let value = level(self.config, code_at(codes, j, self.config.bits), scale);
                accumulator[base + usize::from(i)] += weight * value;
            }
            codes_at += codes.len();
        }
        Ok(())
    }
}

/// Adds `global − local` into the error-feedback buffer `residual` (first decayed by `decay`),
/// sparsifies it, and leaves in `residual` what was not sent. On error (a non-finite value)
/// the residual is left unchanged.
pub fn sparsify_with_feedback(
    global: &[f32],
    local: &[f32],
    residual: &mut [f32],
    decay: f32,
    config: SparseConfig,
) -> Result<SparseTensor, KernelError> {
    config.validate()?;
    let len = global.len();
    crate::check_lengths("local", len, local.len())?;
    crate::check_lengths("residual", len, residual.len())?;
    let task = config.chunk * CHUNKS_PER_TASK;
    let bad = global
        .par_chunks(task)
        .zip(local.par_chunks(task))
        .zip(residual.par_chunks(task))
        .enumerate()
        .find_map_first(|(t, ((g, l), r))| {
            let i = g
                .iter()
                .zip(l)
                .zip(r)
                .position(|((g, l), r)| !(decay * r + (g - l)).is_finite())?;
            Some(t * task + i)
        });
    if let Some(i) = bad {
        let c = i / config.chunk;
        return Err(KernelError::NonFinite {
            block: c,
            start: c * config.chunk,
            end: ((c + 1) * config.chunk).min(len),
        });
    }
    let parts: Vec<Vec<Chunk>> = global
        .par_chunks(task)
        .zip(local.par_chunks(task))
        .zip(residual.par_chunks_mut(task))
        .map(|((g, l), r)| {
            g.chunks(config.chunk)
                .zip(l.chunks(config.chunk))
                .zip(r.chunks_mut(config.chunk))
                .map(|((g, l), r)| {
                    r.iter_mut()
                        .zip(g.iter().zip(l))
                        .for_each(|(r, (g, l))| *r = decay * *r + (g - l));
                    sparsify_chunk(r, config)
                })
                .collect()
        })
        .collect();
    let (kept, code_bytes) = config.totals(len);
    let mut out = SparseTensor {
        config,
        len,
        scales: Vec::with_capacity(config.chunks(len)),
        indices: Vec::with_capacity(kept),
        codes: Vec::with_capacity(code_bytes),
    };
    for chunk in parts.into_iter().flatten() {
        out.scales.push(chunk.scale);
        out.indices.extend(chunk.indices);
        out.codes.extend(chunk.codes);
    }
    Ok(out)
}

/// One chunk's share of a [`SparseTensor`].
struct Chunk {
    scale: f32,
    indices: Vec<u16>,
    codes: Vec<u8>,
}

/// Keeps the `k` largest magnitudes of `values` (ties to the lower index), quantizes them and
/// subtracts what they decode to, so `values` ends as the chunk's new residual.
fn sparsify_chunk(values: &mut [f32], config: SparseConfig) -> Chunk {
    let n = config.k.min(values.len());
    let mut order: Vec<u16> = (0..values.len() as u32).map(|i| i as u16).collect();
    let larger = |a: &u16, b: &u16| {
        let (x, y) = (values[usize::from(*a)].abs(), values[usize::from(*b)].abs());
        y.total_cmp(&x).then(a.cmp(b))
    };
    if n < order.len() {
        order.select_nth_unstable_by(n, larger);
        order.truncate(n);
    }
    order.sort_unstable();
    let scale = order
        .iter()
        .map(|&i| values[usize::from(i)].abs())
        .fold(0.0f32, f32::max);
    let mut codes = vec![0u8; config.code_bytes(n)];
    for (j, &i) in order.iter().enumerate() {
        let v = &mut values[usize::from(i)];
        let code = encode(*v, scale, config);
        *v -= level(config, code, scale);
        let bit = j * usize::from(config.bits);
        codes[bit / 8] |= (code as u8) << (bit % 8);
    }
    Chunk {
        scale,
        indices: order,
        codes,
    }
}

/// The nearest of the `2^bits` levels spanning `−scale..=scale` to `v`.
fn encode(v: f32, scale: f32, config: SparseConfig) -> u32 {
    if scale == 0.0 {
        return config.levels() / 2;
    }
    let top = (config.levels() - 1) as f32;
    let t = ((v / scale + 1.0) * top / 2.0).round();
    t.clamp(0.0, top) as u32
}

/// The value code `code` stands for in a chunk of scale `scale`.
fn level(config: SparseConfig, code: u32, scale: f32) -> f32 {
    let levels = config.levels() as f32;
    scale * (2.0 * code as f32 + 1.0 - levels) / (levels - 1.0)
}

/// A chunk's indices as the gaps that travel: each index minus the previous one minus one.
fn gaps(ids: &[u16]) -> impl Iterator<Item = u32> + '_ {
    let mut next = 0u32;
    ids.iter().map(move |&i| {
        let gap = u32::from(i).wrapping_sub(next);
        next = u32::from(i) + 1;
        gap
    })
}

/// Code `j` of a chunk's packed codes.
fn code_at(codes: &[u8], j: usize, bits: u8) -> u32 {
    let bit = j * usize::from(bits);
    u32::from((codes[bit / 8] >> (bit % 8)) & ((1u16 << bits) - 1) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(chunk: usize, k: usize, bits: u8) -> SparseConfig {
        SparseConfig { chunk, k, bits }
    }

    #[test]
    fn keeps_the_largest_entries_and_the_residual_holds_the_rest() {
        let global = [0.0, 5.0, -1.0, 0.5, -7.0, 2.0, 0.0];
        let local = [0.0; 7];
        let mut residual = [0.0; 7];
        let config = config(4, 2, 8);
        let s = sparsify_with_feedback(&global, &local, &mut residual, 0.9, config).unwrap();
        s.validate().unwrap();
        // Chunk 0 = [0, 5, -1, 0.5] keeps 1 and 2; chunk 1 = [-7, 2, 0] keeps 0 and 1.
        assert_eq!(s.indices, vec![1, 2, 0, 1]);
        assert_eq!(s.scales, vec![5.0, 7.0]);
        let mut decoded = vec![0.0; 7];
        s.accumulate(&mut decoded, 1.0).unwrap();
        for i in 0..7 {
            assert!(
                (decoded[i] + residual[i] - global[i]).abs() < 1e-6,
                "sent + left = whole at {i}"
            );
        }
        assert_eq!(residual[3], 0.5);
        assert!((decoded[2] + 1.0).abs() < 5.0 / 255.0 + 1e-6);
    }

    #[test]
    fn two_bit_levels_span_the_scale_without_zero() {
        let c = config(4, 4, 2);
        let levels: Vec<f32> = (0..4).map(|code| level(c, code, 3.0)).collect();
        assert_eq!(levels, vec![-3.0, -1.0, 1.0, 3.0]);
        assert_eq!(encode(-3.0, 3.0, c), 0);
        assert_eq!(encode(0.9, 3.0, c), 2);
        assert_eq!(encode(3.0, 3.0, c), 3);
    }

    #[test]
    fn decay_applies_to_the_old_residual_only() {
        let mut residual = [1.0, 0.0];
        let c = config(2, 1, 8);
        let s = sparsify_with_feedback(&[0.0, 0.6], &[0.0, 0.0], &mut residual, 0.5, c).unwrap();
        // e = 0.5·[1, 0] + [0, 0.6] = [0.5, 0.6]: index 1 is sent, 0.5 stays.
        assert_eq!(s.indices, vec![1]);
        assert_eq!(residual[0], 0.5);
    }

    #[test]
    fn non_finite_input_is_refused_and_the_residual_kept() {
        let mut residual = [1.0; 6];
        let err = sparsify_with_feedback(
            &[0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0],
            &[0.0; 6],
            &mut residual,
            1.0,
            config(2, 1, 4),
        )
        .unwrap_err();
        assert!(matches!(err, KernelError::NonFinite { block: 1, .. }));
        assert_eq!(residual, [1.0; 6]);
    }

    #[test]
    fn inconsistent_tensors_are_refused() {
        let mut residual = vec![0.0; 10];
        let values: Vec<f32> = (0..10).map(|i| i as f32 - 4.5).collect();
        let good = sparsify_with_feedback(&values, &[0.0; 10], &mut residual, 1.0, config(4, 2, 4))
            .unwrap();
        good.validate().unwrap();
        let mut unsorted = good.clone();
        unsorted.indices.swap(0, 1);
        let mut past = good.clone();
        *past.indices.last_mut().unwrap() = 2; // the last chunk holds 2 values
        let mut short = good.clone();
        short.codes.pop();
        let mut nan = good.clone();
        nan.scales[1] = f32::NAN;
        let mut few = good.clone();
        few.indices.truncate(3);
        let mut huge = good.clone();
        huge.config.chunk = usize::MAX;
        for bad in [unsorted, past, short, nan, few, huge] {
            assert!(bad.validate().is_err(), "{bad:?}");
            let mut acc = vec![0.0; 10];
            assert!(bad.accumulate(&mut acc, 1.0).is_err(), "{bad:?}");
            assert_eq!(acc, [0.0; 10], "a refused tensor adds nothing");
            let mut gaps = Vec::new();
            bad.write_gaps(&mut gaps); // no panic
            assert!(bad.payload_bytes() <= good.payload_bytes() + 8);
        }
    }

    proptest::proptest! {
        #[test]
        fn what_is_sent_plus_what_is_left_is_the_whole(
            values in proptest::collection::vec(-1e3f32..1e3, 1..1500),
            old in -10f32..10.0,
            chunk in 1usize..300,
            keep in 0.0f64..1.0,
            bits in proptest::sample::select(vec![2u8, 4, 8]),
            decay in 0.0f32..=1.0,
        ) {
            let k = 1 + (keep * (chunk - 1) as f64) as usize;
            let config = SparseConfig { chunk, k, bits };
            let mut residual = vec![old; values.len()];
            let local = vec![0.0; values.len()];
            let s = sparsify_with_feedback(&values, &local, &mut residual, decay, config).unwrap();
            s.validate().unwrap();
            let mut gaps = Vec::new();
            s.write_gaps(&mut gaps);
            proptest::prop_assert_eq!(s.payload_bytes(), 4 * s.scales.len() + gaps.len() + s.codes.len());
            proptest::prop_assert_eq!(SparseTensor::read_gaps(config, values.len(), &gaps).unwrap(), (s.indices.clone(), gaps.len()));
            let mut sent = vec![0.0; values.len()];
            s.accumulate(&mut sent, 1.0).unwrap();
            for (c, piece) in sent.chunks(chunk).enumerate() {
                proptest::prop_assert!(piece.iter().filter(|v| **v != 0.0).count() <= config.kept(c, values.len()));
            }
            for i in 0..values.len() {
                let whole = decay * old + values[i];
                let err = (sent[i] + residual[i] - whole).abs();
                proptest::prop_assert!(err <= 1e-3 * whole.abs().max(1.0), "at {}: {} + {} vs {}", i, sent[i], residual[i], whole);
            }
        }
    }

    #[test]
    fn the_same_input_gives_the_same_bits_on_any_thread_count() {
        let values: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 999.0 - 0.5)
            .collect();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut residual = vec![0.25; values.len()];
            pool.install(|| {
                sparsify_with_feedback(
                    &values,
                    &vec![0.0; values.len()],
                    &mut residual,
                    0.95,
                    config(4096, 64, 2),
                )
            })
            .map(|s| (s, residual))
            .unwrap()
        };
        assert_eq!(run(1), run(3));
    }
}
