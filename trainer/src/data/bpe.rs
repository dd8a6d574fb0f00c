//! Training a byte-level BPE tokenizer (GPT-2's scheme, Hugging Face `tokenizers`) on the
//! files `launch data prepare` reads, for data that comes without a tokenizer of its own.
//! The result is a plain `tokenizer.json` that any Hugging Face tool loads.

use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use super::prepare::PrepareOptions;
use super::{DatasetError, sources};

/// The end-of-text token the tokenizer learns as its only special token (id 0).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains a tokenizer of `vocab_size` tokens on the documents of `inputs` (read as `options`
/// says, up to `sample_bytes` of text); returns its `tokenizer.json`.
pub fn train(
    inputs: &[String],
    options: &PrepareOptions,
    vocab_size: usize,
    sample_bytes: usize,
) -> Result<String, DatasetError> {
    let refuse = |why: String| DatasetError::Prepare {
        path: inputs.first().map_or_else(Default::default, Into::into),
        why,
    };
    // 256 bytes and the end-of-text token come first.
    if !(257..=1 << 20).contains(&vocab_size) {
        return Err(refuse(format!(
            "a vocabulary of {vocab_size} tokens: a byte-level BPE has from 257 to 1048576"
        )));
    }
    let mut documents = Vec::new();
    let mut read = 0usize;
    for path in sources::expand(inputs)? {
        if read >= sample_bytes {
            break;
        }
        sources::read(
            &path,
            &options.text_field,
            options.text_documents,
            1 << 20,
            &mut |batch| {
                for document in batch {
                    if read < sample_bytes {
                        read += document.len();
                        documents.push(document);
                    }
                }
                Ok(())
            },
        )?;
    }
    if documents.is_empty() {
        return Err(refuse("no text to learn from among the inputs".into()));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let failed = |e: tokenizers::Error| refuse(format!("training the tokenizer: {e}"));
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).into()))
    .with_post_processor(Some(ByteLevel::default().into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .map_err(failed)?;
    tokenizer
        .train(&mut trainer, documents.iter())
        .map_err(failed)?;
    tokenizer.to_string(true).map_err(failed)
}

/// Writes `json` to `path`, synced.
pub fn save(path: &Path, json: &str) -> Result<(), DatasetError> {
    super::prepare::write_synced(path, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn a_trained_tokenizer_round_trips_text_and_ends_documents() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("verse.txt");
        let text = "Of Man's first disobedience, and the fruit\n\nOf that forbidden tree whose mortal taste\n\n";
        std::fs::write(&input, text.repeat(50)).unwrap();
        let options = PrepareOptions {
            text_documents: sources::TextDocuments::Paragraph,
            ..PrepareOptions::default()
        };
        let json = train(&[input.display().to_string()], &options, 300, 1 << 20).unwrap();
        let path = dir.path().join("tokenizer.json");
        save(&path, &json).unwrap();
        let tokenizer = Tokenizer::load(&path.display().to_string()).unwrap();
        assert_eq!(tokenizer.vocab_size(), 300);
        assert_eq!(tokenizer.end_of_document(), Some(0));
        let ids = tokenizer.encode(b"forbidden fruit, mortal taste").unwrap();
        assert!(ids.len() < 20, "merges learned: {ids:?}");
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            "forbidden fruit, mortal taste"
        );
        let err = train(&[input.display().to_string()], &options, 100, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("from 257"), "{err}");
    }
}
