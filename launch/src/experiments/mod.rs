//! The incentive mechanism's experiments, run from the command line (`launch incentives`,
//! `launch bench cabal`): not part of any library's surface.

pub mod cabal;
pub mod contribution;
