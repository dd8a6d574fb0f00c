//! A model's parameters as one flat `f32` vector plus a layout of named slices: the form
//! DiLoCo's outer loop, the kernels and the wire work in.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use sinter_checkpoints::CheckpointError;
use sinter_checkpoints::tensors::{self, NamedTensor};

use crate::CpuBackend;
use crate::config::ModelConfig;
use crate::model::Llama;

/// Where one parameter tensor lives in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSlot {
    /// Dotted module path, e.g. `layers.0.attention.wq.weight`.
    pub name: String,
    /// burn's shape of the tensor.
    pub shape: Vec<usize>,
    /// Offset of its first value.
    pub offset: usize,
    /// Number of values.
    pub len: usize,
}

/// The layout of a model's flat parameter vector, in module visiting order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamLayout {
    /// One slot per parameter tensor.
    pub slots: Vec<ParamSlot>,
}

impl ParamLayout {
    /// Total number of values.
    pub fn len(&self) -> usize {
        self.slots.last().map_or(0, |s| s.offset + s.len)
    }

    /// Whether the model has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flat `values` laid out as this layout, one named tensor per slot (its name followed
    /// by `suffix`): the form checkpoints and exports store.
    pub fn tensors<'a>(
        &'a self,
        values: &'a [f32],
        suffix: &'a str,
    ) -> impl Iterator<Item = NamedTensor> + 'a {
        self.slots.iter().map(move |s| NamedTensor {
            name: format!("{}{suffix}", s.name),
            shape: s.shape.clone(),
            values: values[s.offset..s.offset + s.len].to_vec(),
        })
    }

    /// The flat vector of the tensors named like this layout's slots (plus `suffix`), each
    /// checked against its slot's shape: the inverse of [`Self::tensors`].
    pub fn gather(&self, found: &[NamedTensor], suffix: &str) -> Result<Vec<f32>, CheckpointError> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.slots {
            let t = tensors::find(found, &format!("{}{suffix}", s.name))?;
            if t.shape != s.shape {
                return Err(CheckpointError::Tensors(format!(
                    "{} has shape {:?}, the model {:?}",
                    t.name, t.shape, s.shape
                )));
            }
            out.extend_from_slice(&t.values);
        }
        Ok(out)
    }
}

struct Flatten {
    path: Vec<String>,
    layout: ParamLayout,
    values: Vec<f32>,
}

impl<B: Backend> ModuleVisitor<B> for Flatten {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<f32>();
        let values = data.as_slice::<f32>().expect("converted to f32");
        self.layout.slots.push(ParamSlot {
            name: self.path.join("."),
            shape,
            offset: self.values.len(),
            len: values.len(),
        });
        self.values.extend_from_slice(values);
    }
}

/// Held while a model is drawn. Seeding and drawing go through the backends' global random
/// state, so two models drawn at once in one process (tests side by side) would interleave
/// their draws and a seeded one would not get its seed's weights.
fn drawing() -> std::sync::MutexGuard<'static, ()> {
    static DRAWING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DRAWING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A model of `config` with unseeded random weights: a skeleton for weights loaded next, or
/// a model any weights will do for. Drawn under the lock [`initial_model`] holds.
pub fn skeleton<B: Backend>(config: &ModelConfig, device: &B::Device) -> Llama<B> {
    let _one_at_a_time = drawing();
    config.init(device)
}

/// A run's initial model on `device`: drawn on the CPU from `seed` and moved there, so every
/// peer starts from the same bits whatever its backend (each backend's random generator
/// draws other numbers from the same seed). `B` is seeded too, for anything drawn later.
pub fn initial_model<B: Backend>(config: &ModelConfig, seed: u64, device: &B::Device) -> Llama<B> {
    let _one_at_a_time = drawing();
    let cpu = Default::default();
    CpuBackend::seed(&cpu, seed);
    let drawn: Llama<CpuBackend> = config.init(&cpu);
    let (_, values) = flatten(&drawn);
    B::seed(device, seed);
    load(config.init(device), &values, device)
}

/// Copies every parameter of `module` into one vector, with its layout.
pub fn flatten<B: Backend, M: Module<B>>(module: &M) -> (ParamLayout, Vec<f32>) {
    let mut visitor = Flatten {
        path: Vec::new(),
        layout: ParamLayout::default(),
        values: Vec::new(),
    };
    module.visit(&mut visitor);
    (visitor.layout, visitor.values)
}

struct Load<'a, B: Backend> {
    values: &'a [f32],
    offset: usize,
    device: B::Device,
}

impl<B: Backend> ModuleMapper<B> for Load<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims();
        let len: usize = shape.iter().product();
        let slice = &self.values[self.offset..self.offset + len];
        self.offset += len;
        let mut fresh =
            Tensor::<B, D>::from_data(TensorData::new(slice.to_vec(), shape), &self.device);
        if tensor.is_require_grad() {
            fresh = fresh.require_grad();
        }
        Param::from_mapped_value(id, fresh, mapper)
    }
}

/// Replaces every parameter of `module` with values from `values` (a vector with the
/// module's own layout), keeping parameter ids so optimizer state stays attached.
///
/// # Panics
/// If `values` does not have the module's parameter count: a programming error, since
/// layouts are checked where vectors enter from outside.
pub fn load<B: Backend, M: Module<B>>(module: M, values: &[f32], device: &B::Device) -> M {
    assert_eq!(
        values.len(),
        module.num_params(),
        "parameter vector does not match the model"
    );
    module.map(&mut Load {
        values,
        offset: 0,
        device: device.clone(),
    })
}
