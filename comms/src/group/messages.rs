//! The group protocol's messages: a request is a length-prefixed JSON [`Header`] naming
//! its kind, the run and the round, then an opaque frame (tensors, an extension's bytes); an
//! answer is a tag byte and the refusal's reason or the data. Decoded with size limits before
//! anything looks at them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The two stages of the all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    /// A member's part of one shard, sent to the shard's owner.
    Contribution,
    /// The owner's combined shard, sent to every member.
    Reduced,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Header {
    Hello {
        run: String,
        config: serde_json::Value,
    },
    /// Ready for `round`, holding the state whose hash is `state` (none: joining, will fetch).
    Ready {
        run: String,
        round: u64,
        state: Option<String>,
        addrs: Vec<String>,
    },
    /// A round's members with their state hashes and addresses, from its leader.
    Group {
        run: String,
        round: u64,
        members: Vec<String>,
        states: Vec<Option<String>>,
        addrs: Vec<Vec<String>>,
    },
    Leave {
        run: String,
    },
    /// Asks for the group's status; answered to anyone (it is what `launch status` shows).
    Status,
    StateManifest {
        run: String,
        round: u64,
    },
    StateChunk {
        run: String,
        round: u64,
        index: u32,
    },
    /// Asks for the manifest of a served blob (a checkpoint): the one with `root`, or the
    /// newest.
    BlobManifest {
        run: String,
        root: Option<String>,
    },
    BlobChunk {
        run: String,
        root: String,
        index: u32,
    },
    /// A shard of `round`'s all-reduce, from a member holding the group named `group`
    /// (`formation::group_key`).
    Shard {
        run: String,
        round: u64,
        group: String,
        shard: u32,
        stage: Stage,
        contributors: Vec<String>,
    },
    /// Asks for the manifest of this peer's own contribution (all its shards) to `round`.
    ContributionManifest {
        run: String,
        round: u64,
    },
    ContributionChunk {
        run: String,
        round: u64,
        index: u32,
    },
    /// Asks for this peer's proof that its contribution to `round` is on the ledger.
    ContributionProof {
        run: String,
        round: u64,
    },
    /// A request of the protocol extending the group (the ledger); the frame is its body.
    Extension {
        run: String,
    },
}

#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    Ok,
    Refused(String),
    Data(Vec<u8>),
}

impl Reply {
    /// One tag byte, then the reason (UTF-8) or the data.
    pub(super) fn encode(self) -> Vec<u8> {
        let (tag, body) = match self {
            Reply::Ok => (0, Vec::new()),
            Reply::Refused(reason) => (1, reason.into_bytes()),
            Reply::Data(data) => (2, data),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(&body);
        out
    }

    pub(super) fn decode(mut bytes: Vec<u8>) -> Result<Self, String> {
        match bytes.first() {
            Some(0) => Ok(Reply::Ok),
            Some(1) => Ok(Reply::Refused(String::from_utf8_lossy(&bytes[1..]).into())),
            Some(2) => {
                bytes.remove(0);
                Ok(Reply::Data(bytes))
            }
            _ => Err("unreadable reply".into()),
        }
    }

    pub(super) fn json(value: &impl Serialize) -> Self {
        Reply::Data(serde_json::to_vec(value).expect("replies serialise"))
    }
}

impl Header {
    /// The run a request names (a status request names none).
    pub(super) fn run(&self) -> Option<&str> {
        match self {
            Header::Status => None,
            Header::Hello { run, .. }
            | Header::Ready { run, .. }
            | Header::Group { run, .. }
            | Header::Leave { run }
            | Header::StateManifest { run, .. }
            | Header::StateChunk { run, .. }
            | Header::BlobManifest { run, .. }
            | Header::BlobChunk { run, .. }
            | Header::Shard { run, .. }
            | Header::ContributionManifest { run, .. }
            | Header::ContributionChunk { run, .. }
            | Header::ContributionProof { run, .. }
            | Header::Extension { run } => Some(run),
        }
    }
}

/// Largest JSON header of a request.
pub(super) const MAX_HEADER: usize = 64 * 1024;

pub(super) fn encode_request(header: &Header, frame: &[u8]) -> Vec<u8> {
    frame_request(
        &serde_json::to_vec(header).expect("headers serialise"),
        frame,
    )
}

/// A request as it travels: the header's length (u32, little-endian), the header's bytes,
/// the frame. Whatever `header` holds (tests and fuzzing send any bytes).
pub(super) fn frame_request(header: &[u8], frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + header.len() + frame.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(frame);
    out
}

pub(super) fn decode_request(data: &[u8]) -> Result<(Header, &[u8]), String> {
    let len = data
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("request shorter than its header length")?;
    if len > MAX_HEADER {
        return Err(format!("header of {len} bytes exceeds {MAX_HEADER}"));
    }
    let json = data
        .get(4..4 + len)
        .ok_or("request shorter than its header")?;
    let header = serde_json::from_slice(json).map_err(|e| format!("malformed header: {e}"))?;
    Ok((header, &data[4 + len..]))
}

/// A peer's progress, gossiped with its heartbeats and shown by `launch status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The outer round it is in.
    pub round: u64,
    /// Inner steps done, per worker.
    pub step: u64,
    /// The last validation loss it measured.
    pub val_loss: Option<f64>,
    /// Bytes it sent in all-reduces.
    pub bytes_sent: u64,
    /// Bytes it received.
    pub bytes_received: u64,
    /// Seconds its last round took (inner steps and all-reduce).
    pub last_round_secs: f64,
    /// Its incentive (share of the miners' emission, 0–1) at the last epoch of its ledger
    /// replica; none without a ledger.
    #[serde(default)]
    pub incentive: Option<f64>,
    /// Emission credited to it so far on its ledger replica.
    #[serde(default)]
    pub emission: Option<u64>,
}

/// What a peer answers to `launch status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The run's id.
    pub run: String,
    /// The answering peer.
    pub peer: String,
    /// The members of the newest group it knows.
    pub members: Vec<String>,
    /// Each live peer's last reported progress, the answering one included.
    pub peers: BTreeMap<String, PeerStats>,
    /// Requests refused, per peer.
    pub rejected: BTreeMap<String, u64>,
    /// Peers banned for the rest of the run.
    #[serde(default)]
    pub banned: Vec<String>,
    /// Whether others can dial the answering peer (AutoNAT's finding).
    #[serde(default)]
    pub reachability: String,
    /// How the answering peer reaches each connected peer: `direct`, `direct (hole-punched)`
    /// or `relayed`.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
}

/// What a peer says about the run when a newcomer introduces itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The round it is in.
    pub round: u64,
    /// Whether a group has formed already (a newcomer must then join, fetching the state).
    pub under_way: bool,
}

/// The answer to a `Hello`: where the run is, and who is in it where.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Welcome {
    pub(super) progress: RunProgress,
    /// Live peers (the answering one included) and their addresses.
    pub(super) peers: BTreeMap<String, Vec<String>>,
}

/// What every peer gossips periodically: enough for others to see it is alive and, if they
/// have no connection to it yet, to dial it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Heartbeat {
    pub(super) run: String,
    pub(super) addrs: Vec<String>,
    pub(super) stats: PeerStats,
    pub(super) under_way: bool,
    /// The group the sender is in, by its lowest member (healing a split run).
    #[serde(default)]
    pub(super) group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_malformed_headers() {
        let header = Header::Ready {
            run: "abc".into(),
            round: 3,
            state: None,
            addrs: Vec::new(),
        };
        let bytes = encode_request(&header, b"frame");
        let (back, frame) = decode_request(&bytes).unwrap();
        assert!(matches!(back, Header::Ready { round: 3, .. }));
        assert_eq!(frame, b"frame");
        assert!(decode_request(&[1, 0]).unwrap_err().contains("shorter"));
        assert!(
            decode_request(&[255, 255, 255, 255])
                .unwrap_err()
                .contains("exceeds")
        );
        assert!(
            decode_request(&[3, 0, 0, 0, b'{', b'x', b'}'])
                .unwrap_err()
                .contains("malformed")
        );
    }
}
