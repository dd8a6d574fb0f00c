//! The peer's identity: an ed25519 key created on first start and kept in a file (mode 0600),
//! so the same file means the same peer id across restarts.

use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use super::NetError;

/// Loads the key in `path`, or creates one there (and its parent directories) if the file
/// does not exist. A file that exists but holds no valid key is an error, never overwritten.
pub fn load_or_create(path: &Path) -> Result<Keypair, NetError> {
    let io = |e: std::io::Error| NetError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| NetError::Key {
            path: path.to_path_buf(),
            reason: format!("not a libp2p key file ({e}); move it away to create a new identity"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| io(std::io::Error::other(e)))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension("tmp");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            tracing::info!(path = %path.display(), peer = %key.public().to_peer_id(), "created a new peer key");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_same_identity_and_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/peer.key");
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn garbage_key_file_is_an_error_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        std::fs::write(&path, b"not a key").unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("not a libp2p key file"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
    }
}

/// `message` signed with this peer's identity key (empty if the key cannot sign).
pub fn sign(key: &Keypair, message: &[u8]) -> Vec<u8> {
    key.sign(message).unwrap_or_default()
}

/// Whether `signature` over `message` was made by `peer`'s identity key: an ed25519 peer id
/// carries its public key, so no lookup is needed. False for any other kind of peer id.
pub fn verify(peer: &libp2p::PeerId, message: &[u8], signature: &[u8]) -> bool {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if multihash.code() != 0 {
        return false;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest())
        .is_ok_and(|key| key.to_peer_id() == *peer && key.verify(message, signature))
}

#[cfg(test)]
mod signing_tests {
    use super::*;

    #[test]
    fn a_peer_signature_verifies_only_for_its_peer_and_message() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let signature = sign(&a, b"hotkey");
        let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
        assert!(verify(&pa, b"hotkey", &signature));
        assert!(!verify(&pb, b"hotkey", &signature));
        assert!(!verify(&pa, b"hotkez", &signature));
        assert!(!verify(&pa, b"hotkey", &signature[1..]));
    }
}
