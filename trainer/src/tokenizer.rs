//! Tokenizers: raw bytes (vocabulary 256, the default) or any Hugging Face `tokenizer.json`.

use std::path::PathBuf;

use crate::TrainerError;

/// Turns text into token ids and back.
pub enum Tokenizer {
    /// Each byte is a token.
    Bytes,
    /// A Hugging Face tokenizer loaded from `tokenizer.json`.
    HuggingFace {
        /// The tokenizer.
        inner: Box<tokenizers::Tokenizer>,
        /// SHA-256 of the file, naming token caches.
        sha256: String,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id())
    }
}

impl Tokenizer {
    /// `bytes`, or a path to a `tokenizer.json`.
    pub fn load(spec: &str) -> Result<Self, TrainerError> {
        if spec == "bytes" {
            return Ok(Self::Bytes);
        }
        let path = PathBuf::from(spec);
        let raw = std::fs::read(&path).map_err(|source| TrainerError::Io {
            path: path.clone(),
            source,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&raw).map_err(|e| {
            TrainerError::Data(format!(
                "{}: not a Hugging Face tokenizer.json: {e}",
                path.display()
            ))
        })?;
        use sha2::Digest;
        let sha256 = sha2::Sha256::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self::HuggingFace {
            inner: Box::new(inner),
            sha256,
        })
    }

    /// A stable identity for caches.
    pub fn id(&self) -> String {
        match self {
            Self::Bytes => "bytes".into(),
            Self::HuggingFace { sha256, .. } => format!("hf:{sha256}"),
        }
    }

    /// Number of distinct token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => 256,
            Self::HuggingFace { inner, .. } => inner.get_vocab_size(true),
        }
    }

    /// Token ids of `text` (bytes need not be UTF-8 for the byte tokenizer).
    pub fn encode(&self, text: &[u8]) -> Result<Vec<u32>, TrainerError> {
        match self {
            Self::Bytes => Ok(text.iter().map(|&b| u32::from(b)).collect()),
            Self::HuggingFace { inner, .. } => {
                let text = std::str::from_utf8(text)
                    .map_err(|e| TrainerError::Data(format!("corpus is not UTF-8: {e}")))?;
                let encoding = inner
                    .encode(text, false)
                    .map_err(|e| TrainerError::Data(format!("tokenizing: {e}")))?;
                Ok(encoding.get_ids().to_vec())
            }
        }
    }

    /// Text of `ids` (invalid UTF-8 is replaced, so partial byte sequences still print).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TrainerError> {
        match self {
            Self::Bytes => Ok(String::from_utf8_lossy(
                &ids.iter().map(|&t| t as u8).collect::<Vec<u8>>(),
            )
            .into_owned()),
            Self::HuggingFace { inner, .. } => inner
                .decode(ids, false)
                .map_err(|e| TrainerError::Data(format!("detokenizing: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let t = Tokenizer::Bytes;
        let ids = t.encode("Hark! ♪".as_bytes()).unwrap();
        assert_eq!(ids.len(), "Hark! ♪".len());
        assert_eq!(t.decode(&ids).unwrap(), "Hark! ♪");
    }

    #[test]
    fn a_hugging_face_tokenizer_json_loads_and_round_trips() {
        // A minimal word-level tokenizer.json, as the `tokenizers` library writes them.
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"to":1,"be":2,"or":3,"not":4},
            "unk_token":"[UNK]"}}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        let t = Tokenizer::load(path.to_str().unwrap()).unwrap();
        assert_eq!(t.vocab_size(), 5);
        assert_eq!(
            t.encode(b"to be or not to be").unwrap(),
            vec![1, 2, 3, 4, 1, 2]
        );
        assert!(t.id().starts_with("hf:"));
    }

    #[test]
    fn a_broken_tokenizer_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Tokenizer::load(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Hugging Face tokenizer.json"), "{err}");
    }
}
