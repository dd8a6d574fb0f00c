//! Saved weights: a `safetensors` file with sinter's parameter names and the run config in
//! its metadata, so a file alone is enough to rebuild the model. Written to a temporary file,
//! fsync'd and renamed, so a crash never leaves a half-written file under the final name.
//! A checkpoint's `model.safetensors` is the same format.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use sinter_checkpoints::CheckpointError;
use sinter_checkpoints::tensors;

use crate::TrainerError;
use crate::config::RunConfig;
use crate::model::Llama;
use crate::params::{ParamLayout, flatten, load, skeleton};

const CONFIG_KEY: &str = "sinter.config";

fn weights_error(path: &Path, reason: impl ToString) -> TrainerError {
    TrainerError::Weights {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// safetensors bytes of flat parameters `values` (laid out as `layout`) and `config`.
pub fn to_bytes(
    layout: &ParamLayout,
    values: &[f32],
    config: &RunConfig,
) -> Result<Vec<u8>, CheckpointError> {
    let named: Vec<_> = layout.tensors(values, "").collect();
    let config_text = toml::to_string(config).expect("a RunConfig always serialises");
    let metadata = HashMap::from([(CONFIG_KEY.to_owned(), config_text)]);
    tensors::to_bytes(&named, metadata)
}

/// Writes `model`'s parameters and `config` to `path`.
pub fn save<B: Backend>(
    model: &Llama<B>,
    config: &RunConfig,
    path: &Path,
) -> Result<(), TrainerError> {
    let (layout, values) = flatten(model);
    let serialized = to_bytes(&layout, &values, config)?;
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

/// The config and model of weights `bytes` (`path` names them in errors).
pub fn from_bytes<B: Backend>(
    bytes: &[u8],
    path: &Path,
    device: &B::Device,
) -> Result<(RunConfig, Llama<B>), TrainerError> {
    let (found, metadata) = tensors::from_bytes(bytes).map_err(|e| weights_error(path, e))?;
    let config_text = metadata.get(CONFIG_KEY).ok_or_else(|| {
        weights_error(
            path,
            format!("no `{CONFIG_KEY}` metadata: not written by sinter"),
        )
    })?;
    let config = RunConfig::parse(config_text, path)?;
    let model: Llama<B> = skeleton(&config.model, device);
    let (layout, _) = flatten(&model);
    let values = layout
        .gather(&found, "")
        .map_err(|e| weights_error(path, e))?;
    Ok((config, load(model, &values, device)))
}

/// Reads a weights file: its config and the model it describes.
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(RunConfig, Llama<B>), TrainerError> {
    let bytes = std::fs::read(path).map_err(|source| TrainerError::Io {
        path: path.to_owned(),
        source,
    })?;
    from_bytes(&bytes, path, device)
}
