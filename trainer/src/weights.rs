//! Saved weights: a `safetensors` file with sinter's parameter names and the run config in
//! its metadata, so a file alone is enough to rebuild the model. Written to a temporary file,
//! fsync'd and renamed, so a crash never leaves a half-written file under the final name.
//! (Full checkpoints — optimizer state, resumption, export — build on this.)

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use safetensors::tensor::{Dtype, TensorView};

use crate::TrainerError;
use crate::config::RunConfig;
use crate::model::Llama;
use crate::params::{flatten, load};

const CONFIG_KEY: &str = "sinter.config";

/// Writes `model`'s parameters and `config` to `path`.
pub fn save<B: Backend>(
    model: &Llama<B>,
    config: &RunConfig,
    path: &Path,
) -> Result<(), TrainerError> {
    let (layout, values) = flatten(model);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views: Vec<(String, TensorView<'_>)> = layout
        .slots
        .iter()
        .map(|slot| {
            let data = &bytes[slot.offset * 4..(slot.offset + slot.len) * 4];
            (
                slot.name.clone(),
                TensorView::new(Dtype::F32, slot.shape.clone(), data).expect("shape matches data"),
            )
        })
        .collect();
    let config_text = toml::to_string(config).expect("a RunConfig always serialises");
    let metadata = HashMap::from([(CONFIG_KEY.to_owned(), config_text)]);
    let serialized =
        safetensors::serialize(views, Some(metadata)).map_err(|e| TrainerError::Weights {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let io = |source| TrainerError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serialized)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(io)
}

/// Reads a weights file: its config and the model it describes.
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(RunConfig, Llama<B>), TrainerError> {
    let bad = |reason: String| TrainerError::Weights {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| TrainerError::Io {
        path: path.to_owned(),
        source,
    })?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let config_text = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_KEY))
        .ok_or_else(|| bad(format!("no `{CONFIG_KEY}` metadata: not written by sinter")))?;
    let config = RunConfig::parse(config_text, path)?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let model: Llama<B> = config.model.init(device);
    let (layout, _) = flatten(&model);
    let mut values = Vec::with_capacity(layout.len());
    for slot in &layout.slots {
        let view = tensors
            .tensor(&slot.name)
            .map_err(|_| bad(format!("tensor {} is missing", slot.name)))?;
        if view.dtype() != Dtype::F32 || view.shape() != slot.shape.as_slice() {
            return Err(bad(format!(
                "tensor {} is {:?} {:?}, expected F32 {:?}",
                slot.name,
                view.dtype(),
                view.shape(),
                slot.shape
            )));
        }
        values.extend(
            view.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
    }
    Ok((config, load(model, &values, device)))
}
