//! A ledger replica: the state every block so far leads to, checked block by block, and the
//! file it is appended to (each block `fsync`ed before it counts). The genesis author's
//! replica authors blocks; every other replica imports them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parity_scale_codec::{Decode, Encode};

use super::block::{Block, Header, check_block, extrinsics_root};
use super::extrinsic::{self, Extrinsic, Hash};
use super::file::{MAGIC, fault_torn_write, read_records, record};
use super::keys::{AccountId, Keypair};
use super::state::{Genesis, State};
use super::{Applied, LedgerError, MAX_BLOCK_BYTES, Refused, io};

/// A ledger replica on disk.
pub struct Replica {
    path: PathBuf,
    file: File,
    genesis: Genesis,
    genesis_hash: Hash,
    head: Hash,
    state: State,
    /// Where each committed block's record starts (block `n` at `offsets[n - 1]`), and where
    /// the file ends: a replica's catch-up reads just the blocks it asks for.
    offsets: Vec<u64>,
    end: u64,
}

impl Replica {
    /// Creates a new ledger file from `genesis` (refusing to overwrite one).
    pub fn create(path: &Path, genesis: Genesis) -> Result<Self, LedgerError> {
        genesis.check().map_err(LedgerError::Invalid)?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let mut bytes = MAGIC.to_vec();
        bytes.extend(record(
            &serde_json::to_vec(&genesis).expect("genesis serialises"),
        ));
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io(path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        let genesis_hash = genesis.hash();
        Ok(Self {
            path: path.to_owned(),
            file,
            state: State::genesis(&genesis),
            head: genesis_hash,
            genesis_hash,
            genesis,
            offsets: Vec::new(),
            end: bytes.len() as u64,
        })
    }

    /// Opens a ledger, checking every block. An unfinished write at the end (a crash while
    /// appending) is cut off, and returned as a warning naming the block.
    pub fn open(path: &Path) -> Result<(Self, Option<String>), LedgerError> {
        let records = read_records(path)?;
        let genesis_hash = records.genesis.hash();
        let mut state = State::genesis(&records.genesis);
        let mut head = genesis_hash;
        for (number, block) in records.blocks {
            let block = block.map_err(|why| LedgerError::BadBlock { number, why })?;
            let (next, _) = check_block(&records.genesis, &genesis_hash, &head, &state, &block)
                .map_err(|why| LedgerError::BadBlock { number, why })?;
            state = next;
            head = block.header.hash();
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let warning = match records.torn {
            Some((offset, number)) => {
                file.set_len(offset)
                    .and_then(|()| file.sync_all())
                    .map_err(io(path))?;
                Some(format!(
                    "{}: block {number} was cut short by a crash while it was written; it was never committed and has been dropped",
                    path.display()
                ))
            }
            None => None,
        };
        let ledger = Self {
            path: path.to_owned(),
            file,
            genesis: records.genesis,
            genesis_hash,
            head,
            state,
            offsets: records.offsets,
            end: records.end,
        };
        Ok((ledger, warning))
    }

    /// Opens the ledger at `path` if it exists (it must have this genesis), else creates it.
    pub fn open_or_create(
        path: &Path,
        genesis: Genesis,
    ) -> Result<(Self, Option<String>), LedgerError> {
        if !path.exists() {
            return Ok((Self::create(path, genesis)?, None));
        }
        let (ledger, warning) = Self::open(path)?;
        if ledger.genesis_hash != genesis.hash() {
            return Err(LedgerError::Invalid(format!(
                "{} was started from another genesis (hash {}): use a new path or the config it was made with",
                path.display(),
                hex::encode(ledger.genesis_hash)
            )));
        }
        Ok((ledger, warning))
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The genesis hash (what extrinsics are signed for).
    pub fn genesis_hash(&self) -> &Hash {
        &self.genesis_hash
    }

    /// The state after the last block.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last block's hash.
    pub fn head(&self) -> &Hash {
        &self.head
    }

    /// The next nonce of `account`.
    pub fn next_nonce(&self, account: &AccountId) -> u64 {
        self.state.nonces.get(account).copied().unwrap_or(0)
    }

    /// `call` signed by `key` for this ledger with its next nonce.
    pub fn sign(&self, key: &Keypair, call: extrinsic::Call) -> Extrinsic {
        Extrinsic::sign(
            key,
            self.next_nonce(&key.account()),
            call,
            &self.genesis_hash,
        )
    }

    /// Up to `max` committed blocks from number `from` on, read back from the file (for
    /// replicas catching up): only their records are read.
    pub fn blocks_from(&self, from: u64, max: usize) -> Result<Vec<Block>, LedgerError> {
        let from = from.max(1);
        let last = self
            .state
            .block
            .min(from.saturating_add(max as u64).saturating_sub(1));
        if from > last {
            return Ok(Vec::new());
        }
        let start = self.offsets[(from - 1) as usize];
        let stop = self.offsets.get(last as usize).copied().unwrap_or(self.end);
        let mut bytes = vec![0u8; (stop - start) as usize];
        let mut file = File::open(&self.path).map_err(io(&self.path))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(io(&self.path))?;
        let mut rest = &bytes[..];
        (from..=last)
            .map(|number| {
                let bad = |why: String| LedgerError::BadBlock { number, why };
                let len = rest
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                    .ok_or_else(|| bad("record cut short".into()))?;
                let mut body = rest
                    .get(4..4 + len)
                    .ok_or_else(|| bad("record cut short".into()))?;
                rest = &rest[4 + len..];
                Block::decode(&mut body).map_err(|e| bad(format!("undecodable ({e})")))
            })
            .collect()
    }

    fn append(&mut self, block: &Block) -> Result<(), LedgerError> {
        let bytes = record(&block.encode());
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(LedgerError::Invalid(format!(
                "block {} would be {} bytes, over {MAX_BLOCK_BYTES}",
                block.header.number,
                bytes.len()
            )));
        }
        fault_torn_write(&mut self.file, &bytes, block.header.number);
        let committed = self.end;
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A failed write (a full disk) must not leave half a record for the next block to
            // land behind: cut the file back to the last committed block.
            let _ = self.file.set_len(committed);
            return Err(io(&self.path)(e));
        }
        self.offsets.push(committed);
        self.end = committed + bytes.len() as u64;
        Ok(())
    }

    /// Authors the next block from `pending` (the author's key must be the genesis author):
    /// valid extrinsics are included in order, the others refused with their reason. Returns
    /// once the block is on disk.
    pub fn author(
        &mut self,
        key: &Keypair,
        pending: Vec<Extrinsic>,
        timestamp_ms: u64,
    ) -> Result<Applied, LedgerError> {
        if key.account() != self.genesis.author {
            return Err(LedgerError::Invalid(format!(
                "{} cannot author: the ledger's author is {}",
                key.account(),
                self.genesis.author
            )));
        }
        let mut next = self.state.clone();
        next.block += 1;
        let mut included = Vec::new();
        let mut refused = Vec::new();
        for extrinsic in pending {
            match next.apply(&extrinsic, &self.genesis, &self.genesis_hash) {
                Ok(()) => included.push(extrinsic),
                Err(reason) => refused.push(Refused { extrinsic, reason }),
            }
        }
        let epoch = next.end_block(&self.genesis);
        let header = Header {
            number: next.block,
            parent: self.head,
            extrinsics_root: extrinsics_root(&included),
            state_root: next.root(),
            author: key.account(),
            timestamp_ms,
        };
        let block = Block::seal(header, included, key);
        self.append(&block)?;
        self.head = block.header.hash();
        self.state = next;
        Ok(Applied {
            block,
            refused,
            epoch,
        })
    }

    /// Checks a block received from the author and appends it.
    pub fn import(&mut self, block: Block) -> Result<Applied, LedgerError> {
        let number = block.header.number;
        let (next, epoch) = check_block(
            &self.genesis,
            &self.genesis_hash,
            &self.head,
            &self.state,
            &block,
        )
        .map_err(|why| LedgerError::BadBlock { number, why })?;
        self.append(&block)?;
        self.head = block.header.hash();
        self.state = next;
        Ok(Applied {
            block,
            refused: Vec::new(),
            epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::extrinsic::{Call, weights_commitment};
    use crate::ledger::state::{GenesisBalance, GenesisNeuron};
    use crate::ledger::verify;

    struct Net {
        author: Keypair,
        cold: Keypair,
        validator: Keypair,
        miners: Vec<Keypair>,
    }

    fn net() -> Net {
        Net {
            author: Keypair::from_secret("//Author").unwrap(),
            cold: Keypair::from_secret("//Cold").unwrap(),
            validator: Keypair::from_secret("//Validator").unwrap(),
            miners: (0..3)
                .map(|i| Keypair::from_secret(&format!("//Miner{i}")).unwrap())
                .collect(),
        }
    }

    fn genesis(net: &Net) -> Genesis {
        serde_json::from_value(serde_json::json!({
            "author": net.author.account(),
            "tempo": 3,
            "burn": 100,
            "emission_per_epoch": 1_000_000,
            "balances": [GenesisBalance { account: net.cold.account(), balance: 10_000 }],
            "neurons": [GenesisNeuron {
                hotkey: net.validator.account(),
                coldkey: net.cold.account(),
                stake: 1000,
            }],
        }))
        .unwrap()
    }

    /// Registers the miners, commits and reveals the validator's weights, runs to an epoch.
    fn populate(ledger: &mut Replica, net: &Net) -> Vec<Applied> {
        let mut applied = Vec::new();
        let mut nonce = ledger.next_nonce(&net.cold.account());
        let registrations: Vec<Extrinsic> = net
            .miners
            .iter()
            .map(|m| {
                nonce += 1;
                Extrinsic::sign(
                    &net.cold,
                    nonce - 1,
                    Call::Register {
                        hotkey: m.account(),
                    },
                    ledger.genesis_hash(),
                )
            })
            .collect();
        applied.push(ledger.author(&net.author, registrations, 1).unwrap());
        let (uids, values, salt) = (vec![1u16, 2, 3], vec![10000u16, 30000, 65535], vec![7u16]);
        let hash = weights_commitment(&net.validator.account(), 1, &uids, &values, &salt, 0);
        let commit = ledger.sign(&net.validator, Call::CommitWeights { hash });
        applied.push(ledger.author(&net.author, vec![commit], 2).unwrap());
        let reveal = ledger.sign(
            &net.validator,
            Call::RevealWeights {
                uids,
                values,
                salt,
                version_key: 0,
            },
        );
        applied.push(ledger.author(&net.author, vec![reveal], 3).unwrap());
        applied
    }

    #[test]
    fn weights_committed_and_revealed_become_emission_at_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut ledger = Replica::create(&dir.path().join("ledger"), genesis(&net)).unwrap();
        let applied = populate(&mut ledger, &net);
        assert!(
            applied.iter().all(|a| a.refused.is_empty()),
            "{:?}",
            applied[0].refused
        );
        let epoch = applied[2]
            .epoch
            .as_ref()
            .expect("block 3 ends the first epoch");
        assert_eq!(epoch.incentive[0], 0);
        assert!(epoch.incentive[3] > epoch.incentive[2] && epoch.incentive[2] > epoch.incentive[1]);
        let state = ledger.state();
        assert_eq!(state.neurons.len(), 4);
        assert_eq!(
            state.balances[&net.cold.account()] - 10_000 + 300,
            { state.neurons.iter().map(|n| n.emission).sum::<u64>() },
            "the burn left the balance and every uid's emission came in (one coldkey owns all)"
        );
        assert!(state.neurons[0].dividends > 60000);
        // A replica that imports the blocks reaches the same state.
        let mut replica = Replica::create(&dir.path().join("replica"), genesis(&net)).unwrap();
        for a in applied {
            replica.import(a.block).unwrap();
        }
        assert_eq!(replica.state().root(), ledger.state().root());
    }

    #[test]
    fn old_contribution_commitments_leave_the_state_but_stay_in_its_root_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut genesis = genesis(&net);
        genesis.contribution_window = 2;
        let path = dir.path().join("ledger");
        let mut ledger = Replica::create(&path, genesis.clone()).unwrap();
        populate(&mut ledger, &net);
        let commit = |ledger: &Replica, miner: &Keypair, round: u64| {
            ledger.sign(
                miner,
                Call::CommitContribution {
                    round,
                    hash: [round as u8; 32],
                },
            )
        };
        let mut roots = Vec::new();
        for round in 0..4u64 {
            let pending = net
                .miners
                .iter()
                .map(|m| commit(&ledger, m, round))
                .collect();
            let applied = ledger.author(&net.author, pending, 10 + round).unwrap();
            assert!(applied.refused.is_empty(), "{:?}", applied.refused);
            roots.push(applied.block.header.state_root);
        }
        let state = ledger.state();
        // Blocks 6 and 7 are inside the window of two blocks at block 7.
        assert_eq!(state.block, 7);
        let kept: Vec<(u64, u64)> = state
            .contributions
            .iter()
            .map(|c| (c.round, c.sequence))
            .collect();
        assert_eq!(kept, vec![(2, 6), (2, 7), (2, 8), (3, 9), (3, 10), (3, 11)]);
        assert_eq!(state.contributions_total, 12);
        assert_eq!(
            roots
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            4
        );
        // Replaying the file reaches the same root; a different early commitment would not.
        let (reopened, warning) = Replica::open(&path).unwrap();
        assert!(warning.is_none());
        assert_eq!(reopened.state().root(), ledger.state().root());
        // A replica's catch-up reads exactly the blocks asked for, before and after a reopen.
        for source in [&ledger, &reopened] {
            let numbers = |from, max| -> Vec<u64> {
                let blocks = source.blocks_from(from, max).unwrap();
                blocks.iter().map(|b| b.header.number).collect()
            };
            assert_eq!(numbers(0, 100), (1..=7).collect::<Vec<_>>());
            assert_eq!(numbers(3, 2), vec![3, 4]);
            assert_eq!(numbers(7, 5), vec![7]);
            assert!(numbers(8, 5).is_empty());
            let last = source.blocks_from(7, 1).unwrap().remove(0);
            assert_eq!(last.header.hash(), *ledger.head());
        }
        let mut forged = ledger.state().clone();
        forged.contributions_digest = hex::encode([1u8; 32]);
        assert_ne!(forged.root(), ledger.state().root());
        // An old round's commitment may not be repeated while it is in the window.
        let again = commit(&ledger, &net.miners[0], 3);
        let applied = ledger.author(&net.author, vec![again], 20).unwrap();
        assert_eq!(applied.refused.len(), 1);
    }

    #[test]
    fn a_replica_refuses_blocks_with_a_forged_outcome_or_author() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut author = Replica::create(&dir.path().join("author"), genesis(&net)).unwrap();
        let applied = populate(&mut author, &net);
        let mut replica = Replica::create(&dir.path().join("replica"), genesis(&net)).unwrap();
        replica.import(applied[0].block.clone()).unwrap();
        replica.import(applied[1].block.clone()).unwrap();
        // Block 3 ends an epoch; an author claiming another outcome (state root) is caught.
        let honest = applied[2].block.clone();
        let mut header = honest.header.clone();
        header.state_root[0] ^= 1;
        let lie = Block::seal(header, honest.extrinsics.clone(), &net.author);
        let err = replica.import(lie).unwrap_err().to_string();
        assert!(
            err.contains("block 3: state root differs") && err.contains("epoch"),
            "{err}"
        );
        // The same block sealed by anyone but the genesis author is refused.
        let stranger = Block::seal(
            honest.header.clone(),
            honest.extrinsics.clone(),
            &net.miners[0],
        );
        let err = replica.import(stranger).unwrap_err().to_string();
        assert!(err.contains("signature"), "{err}");
        // A block that skips ahead is refused; the honest one is taken.
        assert!(replica.import(applied[1].block.clone()).is_err());
        replica.import(honest).unwrap();
        assert_eq!(replica.state().root(), author.state().root());
    }

    #[test]
    fn replays_forgeries_strangers_and_oversized_extrinsics_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let net = net();
        let mut ledger = Replica::create(&dir.path().join("ledger"), genesis(&net)).unwrap();
        let commit = ledger.sign(&net.validator, Call::CommitWeights { hash: [1; 32] });
        ledger.author(&net.author, vec![commit.clone()], 1).unwrap();
        let mut forged = ledger.sign(&net.validator, Call::CommitWeights { hash: [1; 32] });
        forged.call = Call::CommitWeights { hash: [2; 32] };
        let stranger = ledger.sign(
            &net.miners[0],
            Call::Serve {
                address: b"/ip4/10.0.0.1/tcp/1".to_vec(),
            },
        );
        let oversized = ledger.sign(
            &net.validator,
            Call::Serve {
                address: vec![b'a'; 20_000],
            },
        );
        let poor = ledger.sign(
            &net.miners[1],
            Call::Register {
                hotkey: net.miners[1].account(),
            },
        );
        let out = ledger
            .author(
                &net.author,
                vec![commit, forged, stranger, oversized, poor],
                2,
            )
            .unwrap();
        assert!(out.block.extrinsics.is_empty());
        let reasons: Vec<String> = out.refused.iter().map(|r| r.reason.to_string()).collect();
        assert!(reasons[0].contains("nonce 0, expected 1"), "{reasons:?}");
        assert!(reasons[1].contains("bad signature"));
        assert!(reasons[2].contains("not a registered hotkey"));
        assert!(reasons[3].contains("over the limit"));
        assert!(reasons[4].contains("balance 0 is below the 100"));
        // Someone else cannot author.
        assert!(ledger.author(&net.miners[0], vec![], 3).is_err());
    }

    #[test]
    fn a_tampered_block_is_named_and_an_unfinished_write_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let net = net();
        let mut ledger = Replica::create(&path, genesis(&net)).unwrap();
        populate(&mut ledger, &net);
        drop(ledger);
        let clean = std::fs::read(&path).unwrap();
        assert!(verify(&path).unwrap().is_clean());
        assert_eq!(verify(&path).unwrap().epochs, 1);

        // A torn final record: verify reports it; open drops it and carries on.
        std::fs::write(&path, &clean[..clean.len() - 10]).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!((report.blocks, report.torn_block), (2, Some(3)));
        let (mut reopened, warning) = Replica::open(&path).unwrap();
        assert!(warning.unwrap().contains("block 3 was cut short"));
        assert_eq!(reopened.state().block, 2);
        reopened.author(&net.author, vec![], 9).unwrap();
        assert!(verify(&path).unwrap().is_clean());

        // One flipped byte in block 2's body (its extrinsic's call): named, and refused.
        let mut tampered = clean.clone();
        let block2 = {
            let mut offset = MAGIC.len();
            for _ in 0..2 {
                let len = u32::from_le_bytes(tampered[offset..offset + 4].try_into().unwrap());
                offset += 4 + len as usize;
            }
            offset
        };
        let at = block2 + 4 + 200;
        tampered[at] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        let report = verify(&path).unwrap();
        let (number, why) = report.first_bad.unwrap();
        assert_eq!(number, 2, "{why}");
        let err = Replica::open(&path).err().unwrap().to_string();
        assert!(err.starts_with("block 2:"), "{err}");
    }
}
