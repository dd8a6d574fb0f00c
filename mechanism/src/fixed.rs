//! The chain's fixed-point arithmetic: `I32F32` for epoch math, `I64F64` for stake, `I96F32`
//! for emission (the `substrate-fixed` types subtensor uses), and the vector and sparse-matrix
//! operations of its epoch, written to round exactly as the chain does (products and
//! quotients truncate). A sparse matrix is a row per uid of `(column, value)` pairs; a dense
//! matrix is converted to one, so both forms share one implementation.

pub use substrate_fixed::types::{I32F32, I64F64, I96F32};

/// A sparse matrix: for each row, its non-zero `(column, value)` entries.
pub type Sparse = Vec<Vec<(u16, I32F32)>>;

/// Zero.
pub fn zero() -> I32F32 {
    I32F32::from_num(0)
}

/// A `u16` proportion (x · 65535, truncated) as the chain stores it.
pub fn to_u16_proportion(x: I32F32) -> u16 {
    (x.saturating_mul(I32F32::from_num(u16::MAX))).to_num::<u16>()
}

/// A `u16` proportion as a fixed-point fraction.
pub fn from_u16_proportion(x: u16) -> I32F32 {
    I32F32::from_num(x) / I32F32::from_num(u16::MAX)
}

/// Divides every element by the sum (nothing if the sum is zero).
pub fn normalize(x: &mut [I32F32]) {
    let sum: I32F32 = x.iter().sum();
    if sum != zero() {
        x.iter_mut().for_each(|v| *v = v.saturating_div(sum));
    }
}

/// [`normalize`] for `I64F64`.
pub fn normalize_64(x: &mut [I64F64]) {
    let sum: I64F64 = x.iter().sum();
    if sum != I64F64::from_num(0) {
        x.iter_mut().for_each(|v| *v = v.saturating_div(sum));
    }
}

/// Each row divided by its sum.
pub fn row_normalize(m: &mut Sparse) {
    for row in m.iter_mut() {
        let sum: I32F32 = row.iter().map(|(_, v)| *v).sum();
        if sum > zero() {
            row.iter_mut().for_each(|(_, v)| *v = v.saturating_div(sum));
        }
    }
}

/// Each column divided by its sum.
pub fn col_normalize(m: &mut Sparse, columns: usize) {
    let mut sums = vec![zero(); columns];
    for row in m.iter() {
        for (j, v) in row {
            sums[*j as usize] += *v;
        }
    }
    for row in m.iter_mut() {
        for (j, v) in row.iter_mut() {
            let sum = sums[*j as usize];
            if sum != zero() {
                *v = v.saturating_div(sum);
            }
        }
    }
}

/// Rows whose mask is set emptied.
pub fn mask_rows(mask: &[bool], m: &Sparse) -> Sparse {
    m.iter()
        .zip(mask)
        .map(|(row, &masked)| if masked { Vec::new() } else { row.clone() })
        .collect()
}

/// The diagonal removed.
pub fn mask_diagonal(m: &Sparse) -> Sparse {
    m.iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .copied()
                .filter(|(j, _)| *j as usize != i)
                .collect()
        })
        .collect()
}

/// `x` with the masked elements zeroed.
pub fn mask_vector(mask: &[bool], x: &mut [I32F32]) {
    x.iter_mut()
        .zip(mask)
        .filter(|(_, m)| **m)
        .for_each(|(v, _)| *v = zero());
}

/// `r_j = Σ_i x_i · m_ij`.
pub fn matmul(m: &Sparse, x: &[I32F32], columns: usize) -> Vec<I32F32> {
    let mut out = vec![zero(); columns];
    for (row, xi) in m.iter().zip(x) {
        for (j, v) in row {
            out[*j as usize] += *xi * *v;
        }
    }
    out
}

/// `r_i = Σ_j m_ij · x_j`.
pub fn matmul_transpose(m: &Sparse, x: &[I32F32]) -> Vec<I32F32> {
    m.iter()
        .map(|row| row.iter().map(|(j, v)| *v * x[*j as usize]).sum())
        .collect()
}

/// Each row's sum.
pub fn row_sum(m: &Sparse) -> Vec<I32F32> {
    m.iter()
        .map(|row| row.iter().map(|(_, v)| *v).sum())
        .collect()
}

/// Row `i` scaled by `x_i`.
pub fn row_hadamard(m: &Sparse, x: &[I32F32]) -> Sparse {
    m.iter()
        .zip(x)
        .map(|(row, xi)| row.iter().map(|(j, v)| (*j, *v * *xi)).collect())
        .collect()
}

/// Every entry clipped to its column's threshold (entries clipped to a zero threshold dropped).
pub fn col_clip(m: &Sparse, threshold: &[I32F32]) -> Sparse {
    m.iter()
        .map(|row| {
            row.iter()
                .filter_map(|(j, v)| {
                    let t = threshold[*j as usize];
                    if t < *v {
                        (zero() < t).then_some((*j, t))
                    } else {
                        Some((*j, *v))
                    }
                })
                .collect()
        })
        .collect()
}

/// `α · new + (1 − α) · old`, entry by entry (zeros dropped).
pub fn ema(new: &Sparse, old: &Sparse, alpha: I32F32, columns: usize) -> Sparse {
    let one_minus_alpha = I32F32::from_num(1) - alpha;
    new.iter()
        .zip(old)
        .map(|(new_row, old_row)| {
            let mut row = vec![zero(); columns];
            for (j, v) in new_row {
                row[*j as usize] += alpha * *v;
            }
            for (j, v) in old_row {
                row[*j as usize] += one_minus_alpha * *v;
            }
            row.into_iter()
                .enumerate()
                .filter(|(_, v)| *v > zero())
                .map(|(j, v)| (j as u16, v))
                .collect()
        })
        .collect()
}

/// The stake-weighted median of `score` over `partition`: subtensor's recursive partition,
/// returning the score at which the stake below it reaches `minority`.
fn weighted_median(
    stake: &[I32F32],
    score: &[I32F32],
    partition: &[usize],
    minority: I32F32,
    lo: I32F32,
    hi: I32F32,
) -> I32F32 {
    match partition {
        [] => return zero(),
        [only] => return score[*only],
        _ => {}
    }
    let pivot = score[partition[partition.len() / 2]];
    let (mut lo_stake, mut hi_stake) = (zero(), zero());
    let (mut lower, mut upper) = (Vec::new(), Vec::new());
    for &i in partition {
        if score[i] < pivot {
            lo_stake += stake[i];
            lower.push(i);
        } else if score[i] > pivot {
            hi_stake += stake[i];
            upper.push(i);
        }
    }
    if lo + lo_stake <= minority && minority < hi - hi_stake {
        pivot
    } else if minority < lo + lo_stake && !lower.is_empty() {
        weighted_median(stake, score, &lower, minority, lo, lo + lo_stake)
    } else if hi - hi_stake <= minority && !upper.is_empty() {
        weighted_median(stake, score, &upper, minority, hi - hi_stake, hi)
    } else {
        pivot
    }
}

/// Per column, the largest value that rows holding at least `majority` of the (positive)
/// stake give or exceed: the stake-weighted median at `majority`.
pub fn weighted_median_col(
    stake: &[I32F32],
    m: &Sparse,
    columns: usize,
    majority: I32F32,
) -> Vec<I32F32> {
    let rows: Vec<usize> = (0..stake.len()).filter(|&i| stake[i] > zero()).collect();
    let mut use_stake: Vec<I32F32> = rows.iter().map(|&i| stake[i]).collect();
    normalize(&mut use_stake);
    let stake_sum: I32F32 = use_stake.iter().sum();
    let minority = stake_sum - majority;
    let mut scores = vec![vec![zero(); rows.len()]; columns];
    for (k, &i) in rows.iter().enumerate() {
        for (j, v) in &m[i] {
            scores[*j as usize][k] = *v;
        }
    }
    let all: Vec<usize> = (0..rows.len()).collect();
    scores
        .iter()
        .map(|score| weighted_median(&use_stake, score, &all, minority, zero(), stake_sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(x: f64) -> I32F32 {
        I32F32::from_num(x)
    }

    #[test]
    fn median_is_the_value_a_majority_of_stake_reaches() {
        let stake = [f(0.2), f(0.3), f(0.5)];
        let m: Sparse = vec![vec![(0, f(0.1))], vec![(0, f(0.4))], vec![(0, f(0.9))]];
        // Half the stake gives 0.9 or more; 80 % gives 0.4 or more; all give 0.1.
        assert_eq!(weighted_median_col(&stake, &m, 1, f(0.5)), vec![f(0.9)]);
        assert_eq!(weighted_median_col(&stake, &m, 1, f(0.6)), vec![f(0.4)]);
        assert_eq!(weighted_median_col(&stake, &m, 1, f(0.9)), vec![f(0.1)]);
        assert_eq!(to_u16_proportion(f(1.0)), 65535);
        assert_eq!(to_u16_proportion(from_u16_proportion(21844)), 21843);
    }
}
