//! Experiment 2 (the seed paper's Figure 4): honest validators holding 60 % of the stake
//! weight the honest miners by their (noisy) scores; a cabal holding 40 % weights only its own
//! members. Every epoch's emission is added to the stake of whoever earned it, and we track
//! the cabal's share of stake and of emission. Under a sound consensus the cabal earns less
//! than its stake share, so its stake share — and with it its earnings — decays.

use serde::Serialize;

use sinter_mechanism::MechanismError;
use sinter_mechanism::consensus::{Hyperparams, run_epoch};

/// Honest validators, cabal validators, honest miners, cabal miners.
const HONEST_VALIDATORS: usize = 6;
const CABAL_VALIDATORS: usize = 4;
const HONEST_MINERS: usize = 6;
const CABAL_MINERS: usize = 4;

/// One epoch of the experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CabalEpoch {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// The cabal's share of all stake before the epoch.
    pub stake_share: f64,
    /// The cabal's share of the epoch's emission.
    pub emission_share: f64,
}

/// Runs `epochs` epochs; each emits `emission_per_epoch` (in stake units; the initial stake
/// totals 100).
pub fn simulate(
    params: &Hyperparams,
    epochs: usize,
    emission_per_epoch: f64,
) -> Result<Vec<CabalEpoch>, MechanismError> {
    let validators = HONEST_VALIDATORS + CABAL_VALIDATORS;
    let n = validators + HONEST_MINERS + CABAL_MINERS;
    let cabal = |uid: usize| {
        (HONEST_VALIDATORS..validators).contains(&uid) || uid >= validators + HONEST_MINERS
    };
    let mut stake: Vec<f64> = (0..n)
        .map(|uid| match uid {
            u if u < HONEST_VALIDATORS => 60.0 / HONEST_VALIDATORS as f64,
            u if u < validators => 40.0 / CABAL_VALIDATORS as f64,
            _ => 0.0,
        })
        .collect();
    let permits: Vec<bool> = (0..n).map(|uid| uid < validators).collect();
    let weights: Vec<Vec<u16>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let honest_miner = j >= validators && !cabal(j);
                    if i < HONEST_VALIDATORS && honest_miner {
                        // Honest validators agree roughly on the miners' quality.
                        let quality = 1.0 + (j - validators) as f64;
                        let noise = 1.0 + 0.1 * (((i * 7 + j * 3) % 5) as f64 - 2.0);
                        (quality * noise * 6000.0) as u16
                    } else if cabal(i) && i < validators && cabal(j) && i != j {
                        65535
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect();
    let mut bonds = vec![vec![0.0; n]; n];
    let mut out = Vec::with_capacity(epochs);
    for epoch in 1..=epochs {
        let total: f64 = stake.iter().sum();
        let cabal_stake: f64 = (0..n).filter(|u| cabal(*u)).map(|u| stake[u]).sum();
        let result = run_epoch(params, &stake, &permits, &weights, &mut bonds, 1e9)?;
        let paid: f64 = result.emission.iter().map(|e| *e as f64).sum();
        let cabal_paid: f64 = (0..n)
            .filter(|u| cabal(*u))
            .map(|u| result.emission[u] as f64)
            .sum();
        for (s, e) in stake.iter_mut().zip(&result.emission) {
            *s += *e as f64 / 1e9 * emission_per_epoch;
        }
        out.push(CabalEpoch {
            epoch,
            stake_share: cabal_stake / total,
            emission_share: if paid > 0.0 { cabal_paid / paid } else { 0.0 },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinter_mechanism::consensus::Consensus;

    fn check(consensus: Consensus) -> Vec<CabalEpoch> {
        let params = Hyperparams {
            consensus,
            ..Hyperparams::default()
        };
        let epochs = simulate(&params, 20, 10.0).unwrap();
        for e in &epochs {
            assert!(e.emission_share < e.stake_share, "{consensus:?}: {e:?}");
        }
        let (first, last) = (&epochs[0], &epochs[19]);
        assert!(last.stake_share < first.stake_share, "{consensus:?}");
        assert!(last.emission_share <= first.emission_share, "{consensus:?}");
        epochs
    }

    #[test]
    fn the_cabal_earns_below_its_stake_and_shrinks_under_the_chains_yuma() {
        let epochs = check(Consensus::Subtensor);
        // Clipped at the honest majority's consensus, the cabal's self-weights earn nothing.
        assert!(epochs.iter().all(|e| e.emission_share < 0.01), "{epochs:?}");
    }

    #[test]
    fn the_cabal_earns_below_its_stake_and_shrinks_under_the_papers_yuma() {
        let epochs = check(Consensus::Papers);
        assert!(
            epochs[0].emission_share > 0.0,
            "the sigmoid pays a minority something"
        );
        assert!(epochs[19].emission_share < epochs[0].emission_share);
    }
}
