//! `launch chain …`: Bittensor's chain (subtensor) through [`sinter_mechanism::subtensor`]:
//! register, serve, stake, weights (direct, commit-reveal, or timelocked to drand), commitments and the metagraph,
//! each with what it is doing on stderr and what it did on stdout.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use sinter_mechanism::ledger::interface::{Metagraph, WeightsReveal};
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_mechanism::ledger::wallet::{self, Wallet};
use sinter_mechanism::score::to_u16_row;
use sinter_mechanism::subtensor::units::{format_tao, parse_tao};
use sinter_mechanism::subtensor::{Axon, Call, Chain, ChainError, Included, Progress, drand};

use crate::cli::{ChainArgs, ChainCommand};

/// Bittensor's block time, for estimates.
const BLOCK_TIME: Duration = Duration::from_secs(12);

/// A chain command's connection and keys.
struct Session {
    chain: Chain,
    netuid: u16,
    args: ChainArgs,
}

impl Session {
    fn open(args: ChainArgs) -> Result<Self> {
        eprintln!("connecting to {}", args.url);
        let chain = Chain::connect(&args.url)?;
        if !chain.subnet_exists(args.netuid)? {
            bail!(ChainError::Invalid(format!(
                "there is no subnet {} on the chain at {}",
                args.netuid, args.url
            )));
        }
        Ok(Self {
            chain,
            netuid: args.netuid,
            args,
        })
    }

    fn hotkey(&self) -> Result<Keypair> {
        Ok(Wallet::read(&crate::wallet::path(&self.args.wallet)?, None)?.hotkey)
    }

    fn coldkey(&self) -> Result<Keypair> {
        let path = crate::wallet::path(&self.args.wallet)?;
        Ok(wallet::unlock_coldkey(
            &path,
            &crate::wallet::coldkey_password(false)?,
        )?)
    }

    /// Submits `call` signed by `key`, reporting progress on stderr.
    fn submit(&self, call: &Call, key: &Keypair) -> Result<Included> {
        let (pallet, name) = call.name();
        let started = Instant::now();
        let included = self.chain.submit(call, key, &mut |p| match p {
            Progress::Submitted { extrinsic } => eprintln!(
                "{pallet}.{name} submitted (0x{}), waiting for a block…",
                hex::encode(&extrinsic[..8])
            ),
            Progress::InBlock => eprintln!("{pallet}.{name} in a block, checking it succeeded…"),
        })?;
        tracing::info!(
            call = %format!("{pallet}.{name}"),
            block = included.block,
            secs = started.elapsed().as_secs_f64(),
            "included"
        );
        Ok(included)
    }
}

fn tao(text: &str) -> Result<u64> {
    parse_tao(text).map_err(|e| ChainError::Invalid(e).into())
}

/// `launch chain …`.
pub fn run(command: ChainCommand) -> Result<()> {
    match command {
        ChainCommand::Register { chain, max_burn } => register(Session::open(chain)?, max_burn),
        ChainCommand::Serve { chain, ip, port } => {
            let s = Session::open(chain)?;
            let axon = Axon { ip, port };
            let included = s.submit(
                &Call::ServeAxon {
                    netuid: s.netuid,
                    axon,
                },
                &s.hotkey()?,
            )?;
            println!(
                "serving {axon} for {} on subnet {} (block #{})",
                s.hotkey()?.account(),
                s.netuid,
                included.block
            );
            Ok(())
        }
        ChainCommand::Stake { chain, amount } => stake(Session::open(chain)?, tao(&amount)?, true),
        ChainCommand::Unstake { chain, amount } => {
            stake(Session::open(chain)?, tao(&amount)?, false)
        }
        ChainCommand::Weights {
            chain,
            uids,
            weights,
        } => set_weights(Session::open(chain)?, uids, weights),
        ChainCommand::Commit { chain, data } => commit(Session::open(chain)?, &data),
        ChainCommand::Metagraph { url, netuid, json } => {
            let chain = Chain::connect(&url)?;
            let metagraph = chain.metagraph(netuid)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&metagraph_json(&metagraph, netuid))?
                );
            } else {
                print_metagraph(&metagraph, netuid);
            }
            Ok(())
        }
    }
}

fn register(s: Session, max_burn: Option<String>) -> Result<()> {
    let hotkey = s.hotkey()?.account();
    if let Some(uid) = s.chain.uid(s.netuid, &hotkey)? {
        println!(
            "{hotkey} is already registered on subnet {}: uid {uid}",
            s.netuid
        );
        return Ok(());
    }
    let burn = s.chain.burn(s.netuid)?;
    eprintln!("subnet {}'s burn is {} TAO", s.netuid, format_tao(burn));
    if let Some(max) = max_burn {
        let max = tao(&max)?;
        if burn > max {
            bail!(ChainError::Invalid(format!(
                "the burn ({} TAO) is above --max-burn ({} TAO): not registering",
                format_tao(burn),
                format_tao(max)
            )));
        }
    }
    let coldkey = s.coldkey()?;
    let balance = s.chain.free_balance(&coldkey.account())?;
    if balance < burn {
        bail!(
            "the coldkey {} has {} TAO and the burn is {} TAO: fund it with at least {} TAO more",
            coldkey.account(),
            format_tao(balance),
            format_tao(burn),
            format_tao(burn - balance)
        );
    }
    let call = Call::BurnedRegister {
        netuid: s.netuid,
        hotkey,
    };
    let included = match s.submit(&call, &coldkey) {
        Err(e) if already_registered(&e) => None,
        other => Some(other?),
    };
    let uid = s
        .chain
        .uid(s.netuid, &hotkey)?
        .context("the registration is in a block but the hotkey has no uid")?;
    match included {
        Some(i) => println!(
            "registered {hotkey} on subnet {}: uid {uid} (block #{}, burned {} TAO)",
            s.netuid,
            i.block,
            format_tao(burn)
        ),
        None => println!(
            "{hotkey} is already registered on subnet {}: uid {uid}",
            s.netuid
        ),
    }
    Ok(())
}

fn already_registered(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ChainError>(),
        Some(ChainError::Dispatch { error, .. }) if error.ends_with("HotKeyAlreadyRegisteredInSubNet")
    )
}

fn stake(s: Session, rao: u64, add: bool) -> Result<()> {
    let hotkey = s.hotkey()?.account();
    let coldkey = s.coldkey()?;
    let netuid = s.netuid;
    let (call, done) = if add {
        (
            Call::AddStake {
                netuid,
                hotkey,
                rao,
            },
            "staked",
        )
    } else {
        (
            Call::RemoveStake {
                netuid,
                hotkey,
                rao,
            },
            "unstaked",
        )
    };
    let included = s.submit(&call, &coldkey)?;
    let stake = stake_of(&s.chain, netuid, &hotkey)?;
    println!(
        "{done} {} TAO on {hotkey}, subnet {netuid} (block #{}); its stake there is now {} ({stake} rao)",
        format_tao(rao),
        included.block,
        format_tao(stake)
    );
    Ok(())
}

fn stake_of(chain: &Chain, netuid: u16, hotkey: &AccountId) -> Result<u64> {
    Ok(chain
        .read::<_, u64>("SubtensorModule", "TotalHotkeyAlpha", (hotkey.0, netuid))?
        .unwrap_or(0))
}

fn set_weights(s: Session, uids: Vec<u16>, weights: Vec<f64>) -> Result<()> {
    if uids.len() != weights.len() {
        bail!(ChainError::Invalid(format!(
            "{} uids and {} weights: give one weight per uid",
            uids.len(),
            weights.len()
        )));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
        bail!(ChainError::Invalid(format!(
            "weight {w} is not a non-negative number"
        )));
    }
    if weights.iter().all(|w| *w == 0.0) {
        bail!(ChainError::Invalid("all weights are zero".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(uid) = uids.iter().find(|u| !seen.insert(**u)) {
        bail!(ChainError::Invalid(format!("uid {uid} appears twice")));
    }
    let values = to_u16_row(&weights);
    let hotkey = s.hotkey()?;
    let params = s.chain.hyperparameters(s.netuid)?;
    if let Some(bad) = uids.iter().find(|u| **u >= params.neurons) {
        bail!(ChainError::Invalid(format!(
            "uid {bad} is not on subnet {} (it has {} uids)",
            s.netuid, params.neurons
        )));
    }
    let version_key = params.weights_version_key;
    if !params.commit_reveal {
        let included = s.submit(
            &Call::SetWeights {
                netuid: s.netuid,
                uids: uids.clone(),
                values: values.clone(),
                version_key,
            },
            &hotkey,
        )?;
        println!(
            "set weights on subnet {} (block #{}): uids {uids:?}, values {values:?}",
            s.netuid, included.block
        );
        return Ok(());
    }
    let account = hotkey.account();
    if let Some(timelock) = s.chain.timelock(s.netuid)? {
        let commit = timelock.commit(
            s.netuid,
            drand::WeightsPayload {
                hotkey: Some(account),
                uids: uids.clone(),
                values: values.clone(),
                version_key,
            },
            BLOCK_TIME.as_secs_f64(),
            drand::unix_now(),
        )?;
        let included = s.submit(&commit.call, &hotkey)?;
        let blocks = commit.reveal_block.saturating_sub(included.block);
        println!(
            "committed weights on subnet {} timelocked to drand (block #{}, {}): uids {uids:?}, values {values:?}; drand round {} decrypts them, and the chain reveals them itself at about block #{} (in about {} s)",
            s.netuid,
            included.block,
            timelock.call,
            commit.round,
            commit.reveal_block,
            (BLOCK_TIME * u32::try_from(blocks).unwrap_or(u32::MAX)).as_secs()
        );
        return Ok(());
    }
    let reveal = WeightsReveal::salted(&uids, &values, version_key);
    let hash = reveal.commitment(&account, s.netuid);
    let committed = s.submit(
        &Call::CommitWeights {
            netuid: s.netuid,
            hash,
        },
        &hotkey,
    )?;
    let commit = s
        .chain
        .weight_commits(s.netuid, &account)?
        .into_iter()
        .find(|c| c.hash == hash)
        .context("the weights commitment is in a block but not in WeightCommits")?;
    println!(
        "committed weights on subnet {} (block #{}, hash 0x{}); the reveal window is blocks #{}–#{}",
        s.netuid,
        committed.block,
        hex::encode(hash),
        commit.reveal_from,
        commit.reveal_until
    );
    loop {
        let height = s.chain.height()?;
        if height >= commit.reveal_from {
            break;
        }
        let left = commit.reveal_from - height;
        eprintln!(
            "waiting for block #{} to reveal: {left} blocks, about {} s",
            commit.reveal_from,
            (BLOCK_TIME * u32::try_from(left).unwrap_or(u32::MAX)).as_secs()
        );
        if s.chain.wait_for_block(height, BLOCK_TIME * 10)?.is_none() {
            bail!(
                "no new block for {} s while waiting to reveal: the chain looks stalled (the commitment expires after block #{})",
                (BLOCK_TIME * 10).as_secs(),
                commit.reveal_until
            );
        }
    }
    let revealed = s.submit(
        &Call::RevealWeights {
            netuid: s.netuid,
            reveal: reveal.clone(),
        },
        &hotkey,
    )?;
    println!(
        "revealed weights on subnet {} (block #{}): uids {:?}, values {:?}",
        s.netuid, revealed.block, reveal.uids, reveal.values
    );
    Ok(())
}

fn commit(s: Session, data: &str) -> Result<()> {
    let bytes = hex::decode(data.trim().trim_start_matches("0x"))
        .map_err(|e| ChainError::Invalid(format!("--data {data:?} is not hex: {e}")))?;
    let hotkey = s.hotkey()?;
    let included = s.submit(
        &Call::SetCommitment {
            netuid: s.netuid,
            data: bytes.clone(),
        },
        &hotkey,
    )?;
    let stored = s.chain.commitment(s.netuid, &hotkey.account())?;
    if stored.as_ref().map(|c| &c.data) != Some(&bytes) {
        bail!(
            "the commitment is in block #{} but the chain stores {stored:?}",
            included.block
        );
    }
    println!(
        "committed 0x{} for {} on subnet {} (block #{})",
        hex::encode(&bytes),
        hotkey.account(),
        s.netuid,
        included.block
    );
    Ok(())
}

fn metagraph_json(m: &Metagraph, netuid: u16) -> serde_json::Value {
    let neurons: Vec<_> = m
        .neurons
        .iter()
        .map(|n| {
            let axon = n
                .address
                .as_deref()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| serde_json::json!({ "ip": a.ip().to_string(), "port": a.port() }));
            serde_json::json!({
                "uid": n.uid,
                "hotkey": n.hotkey.ss58(),
                "coldkey": n.coldkey.ss58(),
                "stake": n.stake,
                "axon": axon,
                "consensus": n.consensus,
                "incentive": n.incentive,
                "dividends": n.dividends,
                "validator_trust": n.validator_trust,
                "emission": n.emission,
                "validator_permit": n.validator_permit,
                "last_update": n.last_update,
            })
        })
        .collect();
    serde_json::json!({ "block": m.block, "netuid": netuid, "neurons": neurons })
}

fn print_metagraph(m: &Metagraph, netuid: u16) {
    println!(
        "subnet {netuid} at block #{} ({} uids)",
        m.block,
        m.neurons.len()
    );
    println!(
        "{:>4}  {:<48}  {:>14}  {:>6}  {:>6}  {:>6}  {:>12}  {:>1}  {:<22}",
        "uid", "hotkey", "stake (TAO)", "cons", "incent", "divs", "emission", "V", "axon"
    );
    for n in &m.neurons {
        println!(
            "{:>4}  {:<48}  {:>14}  {:>6.4}  {:>6.4}  {:>6.4}  {:>12}  {:>1}  {:<22}",
            n.uid,
            n.hotkey.ss58(),
            format_tao(n.stake),
            n.consensus,
            n.incentive,
            n.dividends,
            n.emission,
            if n.validator_permit { "*" } else { "" },
            n.address.as_deref().unwrap_or("-")
        );
    }
}
