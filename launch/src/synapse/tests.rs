//! Hostile messages first: every way a request or an answer can lie is refused by name, and
//! no bytes make the checks panic or allocate on their word.

use super::*;

const VOCAB: u32 = 100;
const DIM: u32 = 4;

fn keys() -> (Keypair, Keypair) {
    (Keypair::generate().0, Keypair::generate().0)
}

fn next() -> Synapse {
    Synapse::CausalLmNext {
        tokens: vec![1, 2, 3],
        top_k: 2,
    }
}

/// A request from `caller` to `callee` with `body` (any bytes), signed as given.
fn signed(caller: &Keypair, callee: AccountId, nonce: u64, body: &[u8]) -> Vec<u8> {
    let header = Header {
        caller: caller.account(),
        callee,
        nonce,
        uuid: [7; 16],
        timeout_ms: 1000,
        body_hash: Sha256::digest(body).into(),
    };
    let mut bytes = header.encode();
    bytes.extend_from_slice(&caller.sign(&header.signed_message()));
    bytes.extend_from_slice(body);
    bytes
}

/// What a miner serving the weights hashed `[1; 32]` says.
fn said(output: Output) -> Said {
    Said {
        model: [1; 32],
        output,
    }
}

fn open(bytes: &[u8], me: &AccountId) -> Result<Verified, SynapseError> {
    open_request(bytes, me, &mut Nonces::default(), now_nanos())
}

#[test]
fn a_signed_request_opens_and_its_signed_answer_checks() {
    let (validator, miner) = keys();
    let sent = request(&validator, miner.account(), &next(), Duration::from_secs(2));
    let got = open(&sent, &miner.account()).unwrap();
    assert_eq!(got.synapse, next());
    assert_eq!(got.header.caller, validator.account());
    assert_eq!(got.header.timeout_ms, 2000);
    let output = Output::Distributions(vec![TopK {
        ids: vec![5, 9],
        probs: vec![
            half::bf16::from_f32(0.5).to_bits(),
            half::bf16::from_f32(0.25).to_bits(),
        ],
        rest: 0.25,
    }]);
    let said = Said {
        model: [7; 32],
        output,
    };
    let reply = answer(&miner, got.request_hash, &said);
    let back = open_answer(&reply, &sent, &miner.account(), &next(), VOCAB, DIM).unwrap();
    assert_eq!(back, said);
}

#[test]
fn an_unsigned_forged_misdirected_or_tampered_request_is_refused_before_its_body_is_read() {
    let (validator, miner) = keys();
    let me = miner.account();
    let sent = request(&validator, me, &next(), Duration::from_secs(1));
    // An empty signature: refused before anything is decoded.
    let mut unsigned = sent.clone();
    unsigned[HEADER_BYTES..HEADER_BYTES + SIGNATURE_BYTES].fill(0);
    assert_eq!(
        open(&unsigned, &me),
        Err(SynapseError::Signature("the request is not signed"))
    );
    // Signed by someone else in the caller's name.
    let impostor = Keypair::generate().0;
    let mut forged = sent.clone();
    let signature = impostor.sign(
        &Header::decode(&mut &sent[..HEADER_BYTES])
            .unwrap()
            .signed_message(),
    );
    forged[HEADER_BYTES..HEADER_BYTES + SIGNATURE_BYTES].copy_from_slice(&signature);
    assert!(matches!(
        open(&forged, &me),
        Err(SynapseError::Signature(_))
    ));
    // For another miner.
    assert_eq!(
        open(&sent, &impostor.account()),
        Err(SynapseError::Misdirected { to: me })
    );
    // Any header byte but the callee's changed (the caller, the nonce, the timeout, the
    // hash…) breaks the signature; a
    // body byte changed breaks the hash.
    for at in (0..32).chain(64..HEADER_BYTES) {
        let mut tampered = sent.clone();
        tampered[at] ^= 1;
        assert!(
            matches!(open(&tampered, &me), Err(SynapseError::Signature(_))),
            "header byte {at}"
        );
    }
    let mut body = sent.clone();
    *body.last_mut().unwrap() ^= 1;
    assert!(matches!(open(&body, &me), Err(SynapseError::Body(_))));
}

#[test]
fn a_replayed_reordered_stale_or_future_request_is_refused() {
    let (validator, miner) = keys();
    let me = miner.account();
    let body = next().encode();
    let now = now_nanos();
    let mut nonces = Nonces::default();
    let first = signed(&validator, me, now, &body);
    assert!(open_request(&first, &me, &mut nonces, now).is_ok());
    // The same request again.
    assert!(matches!(
        open_request(&first, &me, &mut nonces, now),
        Err(SynapseError::Nonce(_))
    ));
    // An older one arriving late.
    let older = signed(&validator, me, now - 1, &body);
    assert!(matches!(
        open_request(&older, &me, &mut nonces, now),
        Err(SynapseError::Nonce(_))
    ));
    // Another caller's nonces are its own.
    let other = Keypair::generate().0;
    assert!(open_request(&signed(&other, me, now - 1, &body), &me, &mut nonces, now).is_ok());
    // Two minutes old, or two minutes ahead, for a fresh miner.
    let minutes = 120_000_000_000;
    for nonce in [now - minutes, now + minutes] {
        let late = signed(&Keypair::generate().0, me, nonce, &body);
        assert!(matches!(
            open_request(&late, &me, &mut Nonces::default(), now),
            Err(SynapseError::Nonce(_))
        ));
    }
}

#[test]
fn the_nonce_memory_is_bounded_and_forgets_only_what_is_stale() {
    let mut nonces = Nonces::default();
    let now = now_nanos();
    let caller = |i: u32| {
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&i.to_le_bytes());
        AccountId(raw)
    };
    for i in 0..MAX_CALLERS as u32 {
        nonces.accept(&caller(i), now, now).unwrap();
    }
    // Full of fresh callers: a new one waits, a known one goes on.
    assert_eq!(
        nonces.accept(&caller(u32::MAX), now, now),
        Err(SynapseError::Busy)
    );
    nonces.accept(&caller(0), now + 1, now).unwrap();
    // A minute and a bit later the old ones are forgotten (their requests are stale anyway).
    let later = now + NONCE_WINDOW.as_nanos() as u64 + 2;
    nonces.accept(&caller(u32::MAX), later, later).unwrap();
    assert!(nonces.last.len() <= 2, "{}", nonces.last.len());
    assert!(matches!(
        nonces.accept(&caller(1), now, later),
        Err(SynapseError::Nonce(_))
    ));
}

#[test]
fn a_signed_body_that_claims_a_huge_length_or_is_not_a_synapse_is_refused_without_allocating() {
    let (validator, miner) = keys();
    let me = miner.account();
    let mut huge = vec![0u8]; // LastHiddenState
    parity_scale_codec::Compact(u32::MAX).encode_to(&mut huge);
    let hostile = [huge, vec![9, 1, 2], Vec::new(), vec![0; 3]];
    for (i, body) in hostile.iter().enumerate() {
        let sent = signed(&validator, me, now_nanos() + i as u64, body);
        assert!(
            matches!(open(&sent, &me), Err(SynapseError::Body(_))),
            "{body:?}"
        );
    }
}

#[test]
fn every_truncation_and_random_bytes_are_refused_without_a_panic() {
    let (validator, miner) = keys();
    let me = miner.account();
    let sent = request(&validator, me, &next(), Duration::from_secs(1));
    for len in 0..sent.len() {
        assert!(open(&sent[..len], &me).is_err(), "{len} bytes");
    }
    let said = said(Output::Text(vec![1, 2]));
    let reply = answer(&miner, Sha256::digest(&sent).into(), &said);
    let generation = Synapse::TextGeneration {
        tokens: vec![1],
        max_tokens: 4,
        temperature_milli: 0,
        seed: 0,
    };
    for len in 0..reply.len() {
        assert!(open_answer(&reply[..len], &sent, &me, &generation, VOCAB, DIM).is_err());
    }
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..2000 {
        let len = rng.random_range(0..400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        assert!(open(&bytes, &me).is_err());
        assert!(open_answer(&bytes, &sent, &me, &next(), VOCAB, DIM).is_err());
    }
}

#[test]
fn a_forged_replayed_or_altered_answer_is_refused() {
    let (validator, miner) = keys();
    let sent = request(&validator, miner.account(), &next(), Duration::from_secs(1));
    let hash: [u8; 32] = Sha256::digest(&sent).into();
    let output = said(Output::Distributions(vec![TopK {
        ids: vec![3],
        probs: vec![half::bf16::from_f32(0.9).to_bits()],
        rest: 0.1,
    }]));
    let reply = answer(&miner, hash, &output);
    let check = |bytes: &[u8], request: &[u8], from: &AccountId| {
        open_answer(bytes, request, from, &next(), VOCAB, DIM)
    };
    // Signed by another miner, or claimed by one.
    let copier = Keypair::generate().0;
    assert!(matches!(
        check(&answer(&copier, hash, &output), &sent, &miner.account()),
        Err(SynapseError::Signature(_))
    ));
    assert!(matches!(
        check(&reply, &sent, &copier.account()),
        Err(SynapseError::Signature(_))
    ));
    // Replayed for a later request.
    let again = request(&validator, miner.account(), &next(), Duration::from_secs(1));
    assert!(matches!(
        check(&reply, &again, &miner.account()),
        Err(SynapseError::Output(_))
    ));
    // The output, or the model it claims, altered on the way.
    for at in [reply.len() - 1, 32 + SIGNATURE_BYTES] {
        let mut altered = reply.clone();
        altered[at] ^= 1;
        assert!(matches!(
            check(&altered, &sent, &miner.account()),
            Err(SynapseError::Signature(_))
        ));
    }
}

#[test]
fn outputs_that_cannot_answer_the_synapse_are_refused_by_name() {
    let bf = |p: f32| half::bf16::from_f32(p).to_bits();
    let row = |ids: Vec<u32>, probs: Vec<f32>, rest: f32| {
        Output::Distributions(vec![TopK {
            ids,
            probs: probs.into_iter().map(bf).collect(),
            rest,
        }])
    };
    let bad = [
        ("NaN", row(vec![1], vec![f32::NAN], 0.0)),
        ("negative", row(vec![1], vec![-0.1], 0.0)),
        ("NaN rest", row(vec![1], vec![0.5], f32::NAN)),
        ("unordered", row(vec![1, 2], vec![0.2, 0.7], 0.1)),
        ("over one", row(vec![1, 2], vec![0.9, 0.9], 0.0)),
        ("repeated", row(vec![1, 1], vec![0.5, 0.4], 0.1)),
        ("outside", row(vec![VOCAB], vec![0.5], 0.5)),
        ("too many", row(vec![1, 2, 3], vec![0.3, 0.3, 0.3], 0.1)),
        ("mismatched", row(vec![1, 2], vec![0.3], 0.1)),
        (
            "two rows",
            Output::Distributions(vec![
                TopK {
                    ids: vec![],
                    probs: vec![],
                    rest: 1.0
                };
                2
            ]),
        ),
        ("wrong kind", Output::Text(vec![1])),
    ];
    for (what, output) in bad {
        assert!(
            matches!(
                output.check(&next(), VOCAB, DIM),
                Err(SynapseError::Output(_))
            ),
            "{what}"
        );
    }
    assert!(
        row(vec![4, 1], vec![0.6, 0.3], 0.1)
            .check(&next(), VOCAB, DIM)
            .is_ok()
    );
    let hidden = Synapse::LastHiddenState { tokens: vec![1, 2] };
    let state = |values: Vec<f32>| Output::HiddenState {
        dim: DIM,
        values: values.into_iter().map(bf).collect(),
    };
    assert!(state(vec![0.5; 8]).check(&hidden, VOCAB, DIM).is_ok());
    assert!(state(vec![0.5; 7]).check(&hidden, VOCAB, DIM).is_err());
    assert!(
        state([vec![0.5; 7], vec![f32::INFINITY]].concat())
            .check(&hidden, VOCAB, DIM)
            .is_err()
    );
    let generation = Synapse::TextGeneration {
        tokens: vec![1],
        max_tokens: 2,
        temperature_milli: 0,
        seed: 0,
    };
    assert!(
        Output::Text(vec![1, 2, 3])
            .check(&generation, VOCAB, DIM)
            .is_err()
    );
    assert!(
        Output::Text(vec![VOCAB])
            .check(&generation, VOCAB, DIM)
            .is_err()
    );
    assert!(
        Output::Text(vec![1, 2])
            .check(&generation, VOCAB, DIM)
            .is_ok()
    );
}

#[test]
fn synapses_asking_what_no_miner_should_run_are_refused() {
    let lm = |tokens: Vec<u32>, top_k| Synapse::CausalLm { tokens, top_k };
    for synapse in [
        lm(vec![], 2),
        lm(vec![1; MAX_TOKENS + 1], 2),
        lm(vec![VOCAB], 2),
        lm(vec![1], 0),
        lm(vec![1], MAX_TOP_K + 1),
        Synapse::TextGeneration {
            tokens: vec![1],
            max_tokens: MAX_GENERATED + 1,
            temperature_milli: 0,
            seed: 0,
        },
        Synapse::TextGeneration {
            tokens: vec![1],
            max_tokens: 1,
            temperature_milli: MAX_TEMPERATURE_MILLI + 1,
            seed: 0,
        },
    ] {
        assert!(
            matches!(synapse.check(VOCAB), Err(SynapseError::Body(_))),
            "{synapse:?}"
        );
    }
    assert!(lm(vec![1, 99], MAX_TOP_K).check(VOCAB).is_ok());
}

#[test]
fn the_largest_answer_a_synapse_can_get_fits_its_limit_and_one_row_more_does_not() {
    let (miner, _) = keys();
    let tokens: Vec<u32> = (0..MAX_TOKENS as u32).map(|t| t % VOCAB).collect();
    let row = |k: u32| TopK {
        ids: (0..k).collect(),
        probs: vec![u16::MAX; k as usize],
        rest: 1.0,
    };
    let dim = 1024;
    let cases = [
        (
            Synapse::LastHiddenState {
                tokens: tokens.clone(),
            },
            Output::HiddenState {
                dim,
                values: vec![1; tokens.len() * dim as usize],
            },
        ),
        (
            Synapse::CausalLm {
                tokens: tokens.clone(),
                top_k: MAX_TOP_K,
            },
            Output::Distributions(vec![row(MAX_TOP_K); tokens.len()]),
        ),
        (
            Synapse::CausalLmNext {
                tokens: tokens.clone(),
                top_k: MAX_TOP_K,
            },
            Output::Distributions(vec![row(MAX_TOP_K)]),
        ),
        (
            Synapse::TextGeneration {
                tokens: tokens.clone(),
                max_tokens: MAX_GENERATED,
                temperature_milli: 0,
                seed: 0,
            },
            Output::Text(vec![u32::MAX; MAX_GENERATED as usize]),
        ),
    ];
    for (synapse, output) in cases {
        let limit = synapse.max_answer_bytes(dim);
        let bytes = answer(&miner, [0; 32], &said(output.clone()));
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let refusal = answer(&miner, [0; 32], &said(Output::refused(&"é".repeat(400))));
        assert!(
            refusal.len() <= limit,
            "a refusal: {} > {limit}",
            refusal.len()
        );
        let more = match output {
            Output::HiddenState { dim, mut values } => {
                values.extend(std::iter::repeat_n(1, dim as usize));
                Output::HiddenState { dim, values }
            }
            Output::Distributions(mut rows) => {
                rows.push(row(MAX_TOP_K));
                Output::Distributions(rows)
            }
            Output::Text(mut ids) => {
                ids.extend([1, 2]);
                Output::Text(ids)
            }
            Output::Refused(_) => unreachable!(),
        };
        let bytes = answer(&miner, [0; 32], &said(more));
        assert!(
            bytes.len() > limit,
            "one row more: {} <= {limit}",
            bytes.len()
        );
    }
}
