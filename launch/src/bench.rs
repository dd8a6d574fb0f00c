//! `launch bench kernels`: the rayon kernels' throughput against a plain memcpy of the same
//! `f32` buffer, measured side by side in one process. A ratio of 1 means the kernel streams
//! its input as fast as memory can be copied; the target is at least 0.5.

use std::time::{Duration, Instant};

use sinter_kernels::{Kernels, QuantConfig, RayonKernels};

/// Median wall time of `iters` calls of `f` (after one warm-up call).
pub(crate) fn median_time(iters: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// What `launch bench train` prints: the speed and memory of a training run.
pub fn train_report(summary: &sinter_trainer::simulate::Summary) -> serde_json::Value {
    serde_json::json!({
        "framework": "sinter",
        "device": summary.memory.device,
        "params": summary.params,
        "steps": summary.steps,
        "tokens": summary.tokens,
        "secs": summary.wall_secs,
        "tokens_per_sec": summary.tokens_per_sec,
        "peak_host_rss_mib": summary.memory.peak_host_rss_mib,
        "device_memory_reserved_mib": summary.memory.device_memory_reserved_mib,
        "final_val_loss": summary.final_val_loss,
    })
}

/// Runs the comparison on buffers of `len` values and prints a table.
pub fn kernels(len: usize, iters: usize) {
    let values = |seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| {
                (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as f32 / u32::MAX as f32
                    - 0.5
            })
            .collect()
    };
    let (global, local) = (values(1), values(2));
    let config = QuantConfig::default();
    let mut copy = vec![0.0f32; len];
    let memcpy = median_time(iters, || {
        copy.copy_from_slice(std::hint::black_box(&global))
    });
    let quantized = RayonKernels
        .quantize(&global, config)
        .expect("finite input");
    let mut accumulator = vec![0.0f32; len];
    let mut momentum = vec![0.0f32; len];
    let rows: Vec<(&str, Duration)> = vec![
        ("memcpy (baseline)", memcpy),
        (
            "quantize",
            median_time(iters, || {
                drop(RayonKernels.quantize(std::hint::black_box(&global), config))
            }),
        ),
        (
            "pseudo_gradient_quantize",
            median_time(iters, || {
                drop(RayonKernels.pseudo_gradient_quantize(
                    &global,
                    std::hint::black_box(&local),
                    None,
                    config,
                ))
            }),
        ),
        (
            "dequantize_accumulate",
            median_time(iters, || {
                drop(RayonKernels.dequantize_accumulate(&mut accumulator, &quantized, 0.25))
            }),
        ),
        (
            "outer_nesterov_step",
            median_time(iters, || {
                drop(RayonKernels.outer_nesterov_step(&mut copy, &mut momentum, &local, 0.7, 0.9))
            }),
        ),
    ];
    println!(
        "{len} f32 values ({:.1} MB), median of {iters} runs, {} rayon threads",
        len as f64 * 4e-6,
        rayon::current_num_threads()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>16}",
        "operation", "time", "GB/s", "ratio to memcpy"
    );
    for (name, t) in rows {
        let gbps = len as f64 * 4.0 / t.as_secs_f64() / 1e9;
        println!(
            "{name:<26} {:>8.3}ms {gbps:>10.2} {:>16.2}",
            t.as_secs_f64() * 1e3,
            memcpy.as_secs_f64() / t.as_secs_f64()
        );
    }
}

/// Shards per member: the all-reduce pipelines shard by shard.
const SHARDS_PER_MEMBER: usize = 8;

/// What `launch bench allreduce` measures on one peer.
#[derive(Debug, serde::Serialize)]
pub struct AllReduceReport {
    /// Peers in the group.
    pub peers: usize,
    /// Bytes of each peer's payload.
    pub payload_bytes: usize,
    /// The link rate the ratios are computed against, Mbit/s.
    pub link_mbit: f64,
    /// Median seconds of the reduce-scatter + all-gather.
    pub allreduce_secs: f64,
    /// The optimum 2(N−1)/N · S / B, seconds.
    pub optimum_secs: f64,
    /// optimum / measured: 1 is a perfect use of the link.
    pub goodput_ratio: f64,
    /// Median seconds of the naive exchange of full payloads.
    pub naive_secs: f64,
    /// naive / all-reduce time.
    pub naive_over_allreduce: f64,
    /// Bytes this peer sent per all-reduce and per naive exchange.
    pub sent_allreduce: u64,
    /// Bytes this peer sent per naive exchange.
    pub sent_naive: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `rounds` all-reduces and as many naive exchanges of `payload_bytes` of incompressible
/// bytes per peer among the group's members (the group must be formed by every peer calling
/// this with the same arguments).
pub async fn allreduce(
    group: &sinter_comms::group::Group,
    payload_bytes: usize,
    rounds: usize,
    link_mbit: f64,
) -> Result<AllReduceReport, sinter_comms::group::GroupError> {
    use sinter_comms::group::{Arrival, Reduction};
    let me = group.me().to_bytes();
    let payload: Vec<u8> = (0..payload_bytes)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ me[i % me.len()])
        .collect();
    // Byte-wise wrapping sum: as cheap as possible, so that the link is what is measured.
    let reduce = |_: usize, arrivals: &[Arrival]| {
        let mut sum = arrivals
            .first()
            .map(|a| a.frame.clone())
            .unwrap_or_default();
        for a in arrivals.iter().skip(1) {
            for (s, b) in sum.iter_mut().zip(&a.frame) {
                *s = s.wrapping_add(*b);
            }
        }
        Reduction {
            frame: sum,
            contributors: arrivals.iter().map(|a| a.from).collect(),
            rejected: Vec::new(),
        }
    };
    let (mut collective, mut naive) = (Vec::new(), Vec::new());
    let (mut sent_allreduce, mut sent_naive) = (0, 0);
    let mut n = 1;
    for r in 0..rounds as u64 {
        let formed = group.form(2 * r, Some("bench".into())).await?;
        n = formed.members.len();
        let shards = n * SHARDS_PER_MEMBER;
        let piece = payload_bytes.div_ceil(shards);
        let parts = (0..shards)
            .map(|k| {
                payload[(k * piece).min(payload_bytes)..((k + 1) * piece).min(payload_bytes)]
                    .to_vec()
            })
            .collect();
        let started = Instant::now();
        let result = group
            .all_reduce(2 * r, &formed.members, parts, &reduce)
            .await?;
        collective.push(started.elapsed().as_secs_f64());
        sent_allreduce = result.bytes_sent;
        let formed = group.form(2 * r + 1, Some("bench".into())).await?;
        let started = Instant::now();
        let (_, sent) = group.exchange(2 * r + 1, &formed.members, &payload).await?;
        naive.push(started.elapsed().as_secs_f64());
        sent_naive = sent;
    }
    // Done: the others see it in this peer's heartbeats.
    group.report(sinter_comms::group::PeerStats {
        round: 2 * rounds as u64,
        ..Default::default()
    });
    let allreduce_secs = median(collective);
    let naive_secs = median(naive);
    let optimum_secs =
        2.0 * (n as f64 - 1.0) / n as f64 * payload_bytes as f64 * 8.0 / (link_mbit * 1e6);
    Ok(AllReduceReport {
        peers: n,
        payload_bytes,
        link_mbit,
        allreduce_secs,
        optimum_secs,
        goodput_ratio: optimum_secs / allreduce_secs,
        naive_secs,
        naive_over_allreduce: naive_secs / allreduce_secs,
        sent_allreduce,
        sent_naive,
    })
}

/// Runs `launch bench yuma`: the median time of one epoch of `uids` uids whose top
/// `validators` (by stake) weight every uid, with last epoch's bonds, against one sparse
/// matrix-vector product over the same weights; target under 1 s for 4,096 × 128.
pub fn yuma(uids: usize, validators: usize, iters: usize) -> anyhow::Result<()> {
    use sinter_mechanism::fixed::{I32F32, matmul};
    use sinter_mechanism::yuma::EpochInput;
    anyhow::ensure!(
        validators <= uids && uids <= u16::MAX as usize,
        "need validators ≤ uids ≤ 65535"
    );
    let hash = |i: usize, j: usize| {
        (i as u32).wrapping_mul(2_654_435_761) ^ (j as u32).wrapping_mul(40_503)
    };
    let stake: Vec<f64> = (0..uids).map(|i| 1.0 + (uids - i) as f64).collect();
    let permit: Vec<bool> = (0..uids).map(|i| i < validators).collect();
    let weights: Vec<Vec<u16>> = (0..uids)
        .map(|i| {
            (0..uids)
                .map(|j| {
                    if i < validators {
                        (hash(i, j) % 65535) as u16
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect();
    let mut input = EpochInput {
        stake,
        weights,
        bonds: None,
        validator_permit: permit,
        active: None,
        kappa: 32767,
        bonds_moving_average: 900_000,
        emission: 1e9,
    };
    input.bonds = Some(input.run()?.bonds);
    let epoch = median_time(iters, || drop(std::hint::black_box(input.run())));
    let sparse: Vec<Vec<(u16, I32F32)>> = input.weights[..validators]
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, w)| (j as u16, I32F32::from_num(*w)))
                .collect()
        })
        .collect();
    let x = vec![I32F32::from_num(1) / I32F32::from_num(validators as u32); validators];
    let matvec = median_time(iters, || {
        drop(std::hint::black_box(matmul(&sparse, &x, uids)))
    });
    println!(
        "{uids} uids × {validators} validators ({} weights), median of {iters}, {} rayon threads",
        uids * validators,
        rayon::current_num_threads()
    );
    println!(
        "{:<34} {:>10} {:>16}",
        "operation", "time", "ratio to matvec"
    );
    for (name, t) in [
        ("sparse matvec (baseline)", matvec),
        ("Yuma epoch (with bonds)", epoch),
    ] {
        println!(
            "{name:<34} {:>8.3}ms {:>16.1}",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / matvec.as_secs_f64()
        );
    }
    Ok(())
}

/// `launch bench ledger`: a ledger's costs as it grows.
pub fn ledger(blocks: u64, peers: usize) -> anyhow::Result<()> {
    use sinter_mechanism::ledger::keys::Keypair;
    use sinter_mechanism::ledger::state::{Genesis, GenesisNeuron};
    let key = |name: String| Keypair::from_secret(&format!("//sinter/bench/{name}"));
    let author = key("author".into())?;
    let miners: Vec<Keypair> = (0..peers)
        .map(|i| key(format!("peer/{i}")))
        .collect::<Result<_, _>>()?;
    let genesis = Genesis {
        author: author.account(),
        netuid: 1,
        tempo: 100,
        burn: 1,
        emission_per_epoch: 1_000_000_000,
        max_validators: 128,
        max_uids: 4096,
        contribution_window: sinter_mechanism::ledger::state::CONTRIBUTION_WINDOW,
        consensus: Default::default(),
        balances: Vec::new(),
        neurons: std::iter::once(&author)
            .chain(&miners)
            .map(|k| GenesisNeuron {
                hotkey: k.account(),
                coldkey: author.account(),
                stake: 1,
            })
            .collect(),
    };
    let path = std::env::temp_dir().join(format!("sinter-bench-{}.ledger", std::process::id()));
    let result = ledger_growth(&path, genesis, &author, &miners, blocks);
    let _ = std::fs::remove_file(&path);
    result
}

/// Authors `blocks` blocks of one commitment per miner into a new ledger at `path`, timing.
fn ledger_growth(
    path: &std::path::Path,
    genesis: sinter_mechanism::ledger::state::Genesis,
    author: &sinter_mechanism::ledger::keys::Keypair,
    miners: &[sinter_mechanism::ledger::keys::Keypair],
    blocks: u64,
) -> anyhow::Result<()> {
    use sinter_mechanism::ledger::Replica;
    use sinter_mechanism::ledger::extrinsic::Call;
    let peers = miners.len();
    let path = path.to_owned();
    let mut ledger = Replica::create(&path, genesis)?;
    let window = 100;
    let mut early = std::time::Duration::ZERO;
    let mut late = std::time::Duration::ZERO;
    for number in 1..=blocks {
        let pending = miners
            .iter()
            .map(|k| {
                ledger.sign(
                    k,
                    Call::CommitContribution {
                        round: number,
                        hash: [number as u8; 32],
                    },
                )
            })
            .collect();
        let started = std::time::Instant::now();
        ledger.author(author, pending, number)?;
        let took = started.elapsed();
        if number <= window {
            early += took;
        } else if number > blocks - window {
            late += took;
        }
    }
    let per_block = |d: std::time::Duration| d.as_secs_f64() * 1e3 / window as f64;
    let started = std::time::Instant::now();
    let (reopened, _) = Replica::open(&path)?;
    let replay = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let caught_up = reopened.blocks_from(blocks - 63, 64)?;
    let catch_up = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        caught_up.len() == 64,
        "catch-up returned {}",
        caught_up.len()
    );
    let bytes = std::fs::metadata(&path)?.len();
    println!(
        "{blocks} blocks of {peers} contribution commitments ({:.1} MB on disk)",
        bytes as f64 / 1e6
    );
    println!(
        "  authoring: {:.3} ms per block over the first {window}, {:.3} ms over the last {window} ({:.1}x)",
        per_block(early),
        per_block(late),
        late.as_secs_f64() / early.as_secs_f64().max(1e-12)
    );
    println!(
        "  replay on open: {replay:.2} s ({:.3} ms per block)",
        replay * 1e3 / blocks as f64
    );
    println!("  a replica's catch-up read of the last 64 blocks: {catch_up:.3} s");
    Ok(())
}

/// `launch bench cabal`.
pub fn cabal(epochs: usize, emission_percent: f64) -> anyhow::Result<()> {
    for (name, arg) in [
        ("subtensor", crate::cli::ConsensusArg::Subtensor),
        ("papers", crate::cli::ConsensusArg::Papers),
    ] {
        let params = sinter_mechanism::consensus::Hyperparams {
            consensus: crate::incentives::consensus(arg),
            ..sinter_mechanism::consensus::Hyperparams::default()
        };
        let run = crate::experiments::cabal::simulate(&params, epochs.max(1), emission_percent)?;
        println!("{name}: epoch, cabal stake share, cabal emission share, ratio");
        for e in &run {
            println!(
                "  {:>3} {:>8.4} {:>8.4} {:>6.3}",
                e.epoch,
                e.stake_share,
                e.emission_share,
                e.emission_share / e.stake_share
            );
        }
    }
    Ok(())
}
