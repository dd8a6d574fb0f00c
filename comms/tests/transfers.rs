//! Fetching a served blob over real libp2p peers on loopback: a donor that answers with
//! another checkpoint than the root asked for is not believed.

use std::sync::Arc;
use std::time::Duration;

use sinter_comms::group::{BlobSource, Group, GroupSettings};
use sinter_comms::net::{self, NetConfig};
use sinter_comms::transfer::Manifest;

/// Serves one blob, whatever root it is asked for (a lying donor), or only by its own root.
struct OneBlob {
    blob: Vec<u8>,
    manifest: Manifest,
    lies: bool,
}

impl OneBlob {
    fn new(blob: Vec<u8>, lies: bool) -> Arc<Self> {
        let manifest = Manifest::of(&blob, 1 << 10);
        Arc::new(Self {
            blob,
            manifest,
            lies,
        })
    }
}

impl BlobSource for OneBlob {
    fn manifest(&self, root: Option<&str>) -> Option<Manifest> {
        (self.lies || root.is_none_or(|r| r == self.manifest.root)).then(|| self.manifest.clone())
    }

    fn chunk(&self, root: &str, index: usize) -> Option<Vec<u8>> {
        (root == self.manifest.root && index < self.manifest.chunks.len())
            .then(|| self.blob[self.manifest.range(index)].to_vec())
    }
}

async fn peer(bootstrap: Option<net::Multiaddr>) -> (Group, net::Multiaddr, net::Client) {
    let mut config = NetConfig::new(
        net::Keypair::generate_ed25519(),
        "sinter/checkpoints-test".into(),
    );
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let (client, events, event_loop) = net::start(config).await.unwrap();
    tokio::spawn(event_loop.run());
    let group = Group::start(
        client.clone(),
        events,
        GroupSettings {
            run: "transfers-test-run-0".into(),
            config: serde_json::json!({}),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_secs(5),
            round_ceiling: Duration::from_secs(30),
            limits: Default::default(),
        },
    );
    if let Some(addr) = bootstrap {
        client.dial(addr).await.unwrap();
    }
    let addr = client.listen_addrs().await.unwrap().remove(0);
    (group, addr, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_by_root_ignores_donors_offering_another_root() {
    let wanted = OneBlob::new((0..5000u32).map(|i| i as u8).collect(), false);
    let (honest, honest_addr, _) = peer(None).await;
    honest.serve_blobs(wanted.clone());
    let (liar, liar_addr, _) = peer(None).await;
    liar.serve_blobs(OneBlob::new(vec![7u8; 5000], true));
    let (fetcher, _, client) = peer(None).await;
    let honest_id = client.dial(honest_addr).await.unwrap();
    let liar_id = client.dial(liar_addr).await.unwrap();

    // Asked for the honest root, the liar (and a second copy of its offer) cannot outvote it.
    // The chunks go straight to a file, as `launch checkpoint fetch` has them.
    let root = wanted.manifest.root.clone();
    let file = tempfile::tempfile().unwrap();
    let (manifest, delivered) = fetcher
        .fetch_blob(
            &[liar_id, honest_id, liar_id],
            Some(root.clone()),
            1 << 20,
            &file,
        )
        .await
        .unwrap();
    assert_eq!(manifest.root, root);
    let mut blob = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut blob).unwrap();
    assert_eq!(blob, wanted.blob);
    assert!(!delivered.contains_key(&liar_id), "{delivered:?}");

    // Only the liar: nothing is fetched, and the error says why.
    let err = fetcher
        .fetch_blob(&[liar_id], Some(root.clone()), 1 << 20, &file)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("instead"), "{err}");

    // A blob larger than the fetch can need is refused before a byte is allocated for it.
    let err = fetcher
        .fetch_blob(&[honest_id], Some(root), 4096, &file)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the 4096"), "{err}");
}
