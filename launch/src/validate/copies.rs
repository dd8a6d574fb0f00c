//! Copy detection. Each round every miner is asked the same generation under sampling: one
//! prompt, one seed. A miner samples with that seed mixed with its own hotkey, so two honest
//! miners, even serving one model, answer differently; a miner relaying another's answers
//! returns exactly the other's sample. Of miners whose samples are identical, the one
//! registered first is the original and the others are copies, paid nothing for the round.

use std::collections::BTreeMap;

/// Samples shorter than this are not compared: a generation that stopped early may match by
/// chance.
pub const MIN_SAMPLE: usize = 8;

/// A miner's sample for the round's probe.
pub struct Sample<'a> {
    /// Its uid.
    pub uid: u16,
    /// The block it registered at.
    pub registered_at: u64,
    /// Its sample, if it answered.
    pub tokens: Option<&'a [u32]>,
}

/// For each sample, in order, the uid of the miner it copies: the one registered first (then
/// the lowest uid) among those whose samples are identical.
pub fn copied(samples: &[Sample]) -> Vec<Option<u16>> {
    let mut originals: BTreeMap<&[u32], (u64, u16)> = BTreeMap::new();
    for sample in samples {
        if let Some(tokens) = sample.tokens.filter(|t| t.len() >= MIN_SAMPLE) {
            let first = originals
                .entry(tokens)
                .or_insert((sample.registered_at, sample.uid));
            *first = (*first).min((sample.registered_at, sample.uid));
        }
    }
    samples
        .iter()
        .map(|sample| {
            let tokens = sample.tokens.filter(|t| t.len() >= MIN_SAMPLE)?;
            let (_, original) = originals[tokens];
            (original != sample.uid).then_some(original)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(uid: u16, registered_at: u64, tokens: Option<&[u32]>) -> Sample<'_> {
        Sample {
            uid,
            registered_at,
            tokens,
        }
    }

    #[test]
    fn the_later_registered_of_identical_samples_is_the_copy() {
        let shared: Vec<u32> = (0..12).collect();
        let own: Vec<u32> = (1..13).collect();
        let samples = [
            sample(0, 30, Some(&shared)),
            sample(1, 10, Some(&own)),
            sample(2, 20, Some(&shared)),
            sample(3, 40, None),
            sample(4, 50, Some(&shared)),
        ];
        assert_eq!(copied(&samples), [Some(2), None, None, None, Some(2)]);
    }

    #[test]
    fn short_samples_and_distinct_ones_are_never_copies() {
        let short = [1u32, 2, 3];
        let (a, b): (Vec<u32>, Vec<u32>) = ((0..10).collect(), (0..9).chain([99]).collect());
        let samples = [
            sample(0, 1, Some(&short)),
            sample(1, 2, Some(&short)),
            sample(2, 3, Some(&a)),
            sample(3, 4, Some(&b)),
        ];
        assert_eq!(copied(&samples), [None; 4]);
    }

    #[test]
    fn a_tie_in_registration_goes_to_the_lower_uid() {
        let shared: Vec<u32> = (0..10).collect();
        let samples = [sample(5, 7, Some(&shared)), sample(3, 7, Some(&shared))];
        assert_eq!(copied(&samples), [Some(3), None]);
    }
}
