//! Named `f32` tensors as safetensors bytes (little-endian, the format Hugging Face and
//! candle read), with string metadata.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

use crate::CheckpointError;

/// One tensor: its name, shape and values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// safetensors bytes of `tensors` with `metadata`.
pub fn to_bytes(
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    let raw: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&raw)
        .map(|(t, bytes)| {
            TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .map(|view| (t.name.clone(), view))
                .map_err(|e| CheckpointError::Tensors(format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = (!metadata.is_empty()).then_some(metadata);
    safetensors::serialize(views, metadata).map_err(|e| CheckpointError::Tensors(e.to_string()))
}

/// The tensors (in file order) and metadata of safetensors `bytes`; every tensor must be F32.
pub fn from_bytes(
    bytes: &[u8],
) -> Result<(Vec<NamedTensor>, HashMap<String, String>), CheckpointError> {
    let bad = |e: &dyn std::fmt::Display| CheckpointError::Tensors(e.to_string());
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(&e))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(&e))?;
    let mut tensors = Vec::new();
    // `tensors()` is a hash map's order; the header's offsets give the file order.
    let mut names: Vec<(usize, String)> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (info.data_offsets.0, name))
        .collect();
    names.sort();
    for (_, name) in names {
        let view = file.tensor(&name).map_err(|e| bad(&e))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(&format!("{name} is {:?}, expected F32", view.dtype())));
        }
        tensors.push(NamedTensor {
            values: view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            shape: view.shape().to_vec(),
            name,
        });
    }
    Ok((tensors, meta))
}

/// Looks up a tensor by name.
pub fn find<'a>(
    tensors: &'a [NamedTensor],
    name: &str,
) -> Result<&'a NamedTensor, CheckpointError> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| CheckpointError::Tensors(format!("tensor {name} is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_values_and_metadata() {
        let tensors = vec![
            NamedTensor {
                name: "z".into(),
                shape: vec![2, 2],
                values: vec![1.0, -2.5, f32::MIN_POSITIVE, 4.0],
            },
            NamedTensor {
                name: "a".into(),
                shape: vec![3],
                values: vec![0.1, 0.2, 0.3],
            },
        ];
        let meta = HashMap::from([("k".to_owned(), "v".to_owned())]);
        let bytes = to_bytes(&tensors, meta.clone()).unwrap();
        let (back, back_meta) = from_bytes(&bytes).unwrap();
        assert_eq!(back_meta, meta);
        // safetensors sorts by name on write; the values are what matters.
        for t in &tensors {
            assert_eq!(find(&back, &t.name).unwrap(), t);
        }
        assert!(from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}
