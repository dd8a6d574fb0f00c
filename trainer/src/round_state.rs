//! The run's state at the start of a round — what every member holds identically, what a
//! joiner fetches and what a member out of step re-fetches: round, step, tokens, the global
//! parameters and the outer momentum. Inner optimizer state and error-feedback residuals are
//! each worker's own and do not travel.
//!
//! Bytes: `SINTERSTATE1`, a little-endian `u32` header length, a JSON header, then the
//! parameters and the momentum as little-endian `f32`. The SHA-256 of these bytes is the
//! state's hash, which members compare at every round.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::TrainerError;

const MAGIC: &[u8] = b"SINTERSTATE1";

/// The run's state at the start of `round`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundState {
    /// The round about to start.
    pub round: u64,
    /// Inner steps done per worker.
    pub step: u64,
    /// Tokens trained on, all workers together.
    pub tokens: u64,
    /// The global parameters.
    pub global: Vec<f32>,
    /// The outer optimizer's momentum.
    pub momentum: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    round: u64,
    step: u64,
    tokens: u64,
    params: u64,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Longest header a state may carry (it holds four numbers).
const MAX_HEADER: usize = 1024;

impl RoundState {
    /// The most bytes a state of `params` parameters can take: a fetch refuses a donor's
    /// offer of more before allocating for it.
    pub fn max_len(params: usize) -> u64 {
        (MAGIC.len() + 4 + MAX_HEADER + 8 * params) as u64
    }

    /// The state as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&Header {
            round: self.round,
            step: self.step,
            tokens: self.tokens,
            params: self.global.len() as u64,
        })
        .expect("headers serialise");
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 8 * self.global.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for v in self.global.iter().chain(&self.momentum) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads a state for a model of `params` parameters, refusing anything that does not fit
    /// or holds a non-finite value.
    pub fn from_bytes(bytes: &[u8], params: usize) -> Result<Self, TrainerError> {
        let bad = |reason: String| TrainerError::Network(format!("fetched state: {reason}"));
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("does not start with SINTERSTATE1".into()))?;
        let len = rest
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("truncated header".into()))?;
        let header: Header = rest
            .get(4..4 + len)
            .ok_or_else(|| bad("truncated header".into()))
            .and_then(|h| serde_json::from_slice(h).map_err(|e| bad(format!("header: {e}"))))?;
        if header.params != params as u64 {
            return Err(bad(format!(
                "{} parameters, this model has {params}",
                header.params
            )));
        }
        let body = &rest[4 + len..];
        if body.len() != 8 * params {
            return Err(bad(format!(
                "{} bytes of tensors, expected {}",
                body.len(),
                8 * params
            )));
        }
        let values: Vec<f32> = body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("value {i} is {}", values[i])));
        }
        let (global, momentum) = values.split_at(params);
        Ok(Self {
            round: header.round,
            step: header.step,
            tokens: header.tokens,
            global: global.to_vec(),
            momentum: momentum.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let state = RoundState {
            round: 3,
            step: 12,
            tokens: 4096,
            global: vec![1.0, -2.5, 3.0],
            momentum: vec![0.0, 0.5, -0.25],
        };
        let bytes = state.to_bytes();
        assert_eq!(RoundState::from_bytes(&bytes, 3).unwrap(), state);
        let err = |b: &[u8], n| RoundState::from_bytes(b, n).unwrap_err().to_string();
        assert!(err(&bytes, 4).contains("3 parameters, this model has 4"));
        assert!(err(&bytes[..bytes.len() - 1], 3).contains("bytes of tensors"));
        assert!(err(b"GARBAGE", 3).contains("SINTERSTATE1"));
        let mut nan = state.clone();
        nan.momentum[1] = f32::NAN;
        assert!(err(&nan.to_bytes(), 3).contains("value 4 is NaN"));
        assert_ne!(sha256_hex(&bytes), sha256_hex(&nan.to_bytes()));
    }

    proptest::proptest! {
        /// A fetched state is hostile bytes: arbitrary ones, or a valid state with a byte
        /// changed or cut short, are refused or read without a panic; what reads is finite.
        #[test]
        fn hostile_states_are_refused_without_a_panic(
            global in proptest::collection::vec(-1e3f32..1e3, 0..16),
            flip in proptest::prelude::any::<(usize, u8)>(),
            cut in proptest::prelude::any::<usize>(),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let params = global.len();
            let state = RoundState { round: 1, step: 2, tokens: 3, momentum: global.clone(), global };
            let bytes = state.to_bytes();
            let mut flipped = bytes.clone();
            let i = flip.0 % flipped.len();
            flipped[i] ^= flip.1.max(1);
            for candidate in [&flipped[..], &bytes[..cut % (bytes.len() + 1)], &noise[..]] {
                if let Ok(read) = RoundState::from_bytes(candidate, params) {
                    proptest::prop_assert!(read.global.iter().chain(&read.momentum).all(|v| v.is_finite()));
                }
            }
            proptest::prop_assert_eq!(RoundState::from_bytes(&bytes, params).unwrap(), state);
        }
    }
}
