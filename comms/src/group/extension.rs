//! A protocol riding on a run's connections and gossip — the ledger's sync — without this
//! crate knowing it: its requests travel as `Extension` requests, its gossip behind a tag
//! byte.

use std::sync::Arc;

use libp2p::PeerId;

use super::messages::{Header, Reply};
use super::{Group, GroupError};

/// The first byte of an extension's gossip (heartbeats are JSON, so `{`).
pub(super) const EXTENSION_GOSSIP: u8 = 0;

/// A protocol riding on a run's connections and gossip (the ledger): requests sent with
/// [`Group::ask_extension`] and gossip sent with [`Group::publish_extension`] arrive here.
pub trait Extension: Send + Sync {
    /// Answers a request: the data, or the reason it is refused.
    fn request(&self, peer: PeerId, data: &[u8]) -> Result<Vec<u8>, String>;
    /// Takes a gossiped message (`peer` relayed it).
    fn gossip(&self, peer: PeerId, data: &[u8]);
}

/// Answers an extension request with `extension`, if this peer runs one.
pub(super) fn answer(extension: Option<Arc<dyn Extension>>, peer: PeerId, frame: &[u8]) -> Reply {
    match extension {
        Some(extension) => match extension.request(peer, frame) {
            Ok(data) => Reply::Data(data),
            Err(reason) => Reply::Refused(reason),
        },
        None => Reply::Refused("this peer runs no extension protocol".into()),
    }
}

impl Group {
    /// Serves `extension`'s requests and gossip on this group's connections.
    pub fn extend(&self, extension: Arc<dyn Extension>) {
        self.shared.lock().extension = Some(extension);
    }

    /// Sends `data` to `peer`'s extension; returns its answer.
    pub async fn ask_extension(&self, peer: PeerId, data: &[u8]) -> Result<Vec<u8>, GroupError> {
        let header = Header::Extension {
            run: self.shared.settings.run.clone(),
        };
        self.ask(peer, &header, data)
            .await
            .map(|(_, answer)| answer)
    }

    /// Gossips `data` to the extensions of the run's peers.
    pub async fn publish_extension(&self, data: &[u8]) -> Result<(), GroupError> {
        let mut message = Vec::with_capacity(1 + data.len());
        message.push(EXTENSION_GOSSIP);
        message.extend_from_slice(data);
        Ok(self.client.publish(message).await?)
    }
}
