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
        /// The file as read, for copies that keep its hash.
        json: String,
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
        let sha256 = hex::encode(sha2::Sha256::digest(&raw));
        let json = String::from_utf8(raw)
            .map_err(|e| TrainerError::Data(format!("{}: not UTF-8: {e}", path.display())))?;
        Ok(Self::HuggingFace {
            inner: Box::new(inner),
            sha256,
            json,
        })
    }

    /// The tokenizer as a Hugging Face `tokenizer.json`: a loaded one's file exactly as read
    /// (so the copy has the same hash, the same id). Bytes become a byte-level BPE with
    /// no merges whose ids are the byte values, so that Hugging Face encodes text exactly as
    /// sinter does.
    pub fn hf_json(&self) -> Result<String, TrainerError> {
        match self {
            Self::HuggingFace { json, .. } => Ok(json.clone()),
            Self::Bytes => {
                let vocab: serde_json::Map<String, serde_json::Value> = byte_level_chars()
                    .iter()
                    .enumerate()
                    .map(|(byte, c)| (c.to_string(), byte.into()))
                    .collect();
                let json = serde_json::json!({
                    "version": "1.0",
                    "truncation": null,
                    "padding": null,
                    "added_tokens": [],
                    "normalizer": null,
                    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                    "post_processor": null,
                    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                    "model": {
                        "type": "BPE", "dropout": null, "unk_token": null,
                        "continuing_subword_prefix": null, "end_of_word_suffix": null,
                        "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                        "vocab": vocab, "merges": []
                    }
                });
                Ok(serde_json::to_string_pretty(&json).expect("json"))
            }
        }
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

    /// The id of `token` in the vocabulary (the byte tokenizer has only bytes, no special
    /// tokens).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Bytes => None,
            Self::HuggingFace { inner, .. } => inner.token_to_id(token),
        }
    }

    /// The end-of-document token, if the vocabulary has one of the usual names.
    pub fn end_of_document(&self) -> Option<u32> {
        [
            "<|endoftext|>",
            "<|end_of_text|>",
            "</s>",
            "<eos>",
            "<|eot_id|>",
        ]
        .into_iter()
        .find_map(|t| self.token_id(t))
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

/// Text of tokens as they come, a whole character at a time: the bytes of a character split
/// over tokens wait for the rest.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u32>,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tokenizer`.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// The tokenizer it decodes with.
    pub fn tokenizer(&self) -> &'a Tokenizer {
        self.tokenizer
    }

    /// Adds `token`; the text it completes, if any.
    pub fn push(&mut self, token: u32) -> Option<String> {
        self.pending.push(token);
        let text = self.tokenizer.decode(&self.pending).ok()?;
        if text.ends_with('\u{FFFD}') {
            return None;
        }
        self.pending.clear();
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_over_tokens_comes_out_whole() {
        let bytes = Tokenizer::Bytes;
        let mut text = TextStream::new(&bytes);
        assert_eq!(text.push(u32::from(b'a')), Some("a".into()));
        let [first, second] = "é".as_bytes() else {
            unreachable!()
        };
        assert_eq!(text.push(u32::from(*first)), None);
        assert_eq!(text.push(u32::from(*second)), Some("é".into()));
    }

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

/// GPT-2's byte-level alphabet: the printable character standing for each byte.
fn byte_level_chars() -> [char; 256] {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut chars = ['\0'; 256];
    let mut next = 256;
    for b in 0..256u32 {
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        chars[b as usize] = char::from_u32(code).expect("a valid scalar");
    }
    chars
}

#[cfg(test)]
mod hf_tests {
    use super::*;

    #[test]
    fn the_exported_byte_tokenizer_encodes_as_sinter_does() {
        let json = Tokenizer::Bytes.hf_json().unwrap();
        let hf: tokenizers::Tokenizer = json.parse().unwrap();
        let text = "To be, or not to be: that is the question.\n  Ünïcödé ✓";
        let ids = hf.encode(text, false).unwrap().get_ids().to_vec();
        let ours = Tokenizer::Bytes.encode(text.as_bytes()).unwrap();
        assert_eq!(ids, ours);
        assert_eq!(hf.decode(&ids, false).unwrap(), text);
    }
}
