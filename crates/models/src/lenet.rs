//! LeNet-5 with ReLU and average pooling: the model, its layer table and its checkpoints.

use std::path::Path;
use std::sync::{Arc, Mutex};

use convkit_autograd::{Param, Var};
use convkit_conv::{ConvAlgo, ConvGeometry, select};
use convkit_nn::checkpoint::{self, Metadata};
use convkit_nn::{
    AvgPool2d, Conv2d, Conv2dConfig, Flatten, Init, Layer, Linear, LinearConfig, Module, ReLU,
    num_params,
};
use convkit_tensor::{Rng, Tensor};

use crate::data::Normalization;
use crate::error::Result;
use crate::infer::{Inspection, PackedLeNet, check_input};

/// Side of the network's square input: 28x28 images padded by 2 on each side.
pub const INPUT_SIZE: usize = crate::data::PADDED_SIZE;
/// Number of classes.
pub const CLASSES: usize = crate::data::CLASSES;
/// Number of trainable parameters.
pub const NUM_PARAMS: usize = 61_706;
/// The parameter names, in the order of a PyTorch `state_dict`.
pub const PARAM_NAMES: [&str; 10] = [
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "fc3.weight",
    "fc3.bias",
];

/// LeNet-5: `[n,1,32,32]` → conv1 (6@5x5) → ReLU → avg-pool 2 → conv2 (16@5x5) → ReLU →
/// avg-pool 2 → flatten 400 → fc1 (120) → ReLU → fc2 (84) → ReLU → fc3 (10 logits).
///
/// Parameters are named as in PyTorch (`conv1.weight` … `fc3.bias`), so a PyTorch
/// `state_dict` saved as safetensors loads as is ([`LeNet5::load`]).
#[derive(Debug, Clone)]
pub struct LeNet5 {
    /// First convolution, 1 → 6 channels, 5x5.
    pub conv1: Conv2d,
    /// Second convolution, 6 → 16 channels, 5x5.
    pub conv2: Conv2d,
    /// 400 → 120.
    pub fc1: Linear,
    /// 120 → 84.
    pub fc2: Linear,
    /// 84 → 10.
    pub fc3: Linear,
    /// The 2x2 average pooling after each convolution (no parameters).
    pool: AvgPool2d,
    /// The weights repacked for [`LeNet5::logits`], rebuilt when a parameter changes.
    packed: Arc<Mutex<Option<Arc<PackedLeNet>>>>,
}

/// The stages of [`LeNet5::forward_inspect`], in order.
pub const STAGES: [&str; 11] = [
    "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "fc2", "fc3", "logits",
];

impl LeNet5 {
    /// A model with PyTorch's default initialization, drawn from `rng` in the order of the
    /// layers.
    pub fn new(rng: &mut Rng) -> Result<Self> {
        Ok(Self {
            conv1: Conv2d::new(1, 6, 5, rng)?,
            conv2: Conv2d::new(6, 16, 5, rng)?,
            fc1: Linear::new(400, 120, rng)?,
            fc2: Linear::new(120, 84, rng)?,
            fc3: Linear::new(84, CLASSES, rng)?,
            pool: AvgPool2d::new(2),
            packed: Arc::default(),
        })
    }

    /// A model whose weights use `init` (biases keep PyTorch's default), e.g.
    /// [`Init::KaimingNormal`] for faster early training.
    pub fn with_init(init: Init, rng: &mut Rng) -> Result<Self> {
        let conv = |c_in, c_out, rng: &mut Rng| {
            Conv2d::with_config(
                c_in,
                c_out,
                (5, 5),
                Conv2dConfig { init, ..Default::default() },
                rng,
            )
        };
        let linear = |i, o, rng: &mut Rng| {
            Linear::with_config(i, o, LinearConfig { init, ..Default::default() }, rng)
        };
        Ok(Self {
            conv1: conv(1, 6, rng)?,
            conv2: conv(6, 16, rng)?,
            fc1: linear(400, 120, rng)?,
            fc2: linear(120, 84, rng)?,
            fc3: linear(84, CLASSES, rng)?,
            pool: AvgPool2d::new(2),
            packed: Arc::default(),
        })
    }

    /// Runs the network, calling `inspect` after every stage with its name (see [`STAGES`];
    /// `fc1` and `fc2` are reported after their ReLU, `fc3` and `logits` are the same output)
    /// and output, e.g. to show feature maps.
    pub fn forward_inspect(&self, x: &Var, inspect: &mut dyn FnMut(&str, &Var)) -> Result<Var> {
        Ok(self.layers(x, false, inspect)?)
    }

    /// The layers of [`LeNet5::forward_inspect`], with the layers' own error type. With `fuse`
    /// (nothing inspects the pre-activations), each layer followed by a ReLU runs both as one
    /// node where it can ([`Module::forward_relu`]), with the same values and gradients.
    fn layers(
        &self,
        x: &Var,
        fuse: bool,
        inspect: &mut dyn FnMut(&str, &Var),
    ) -> convkit_nn::Result<Var> {
        if check_input(x.dims()).is_err() {
            return Err(convkit_nn::NnError::Input {
                layer: "LeNet5",
                got: x.dims().to_vec(),
                msg: format!("expected [batch, 1, {INPUT_SIZE}, {INPUT_SIZE}]"),
            });
        }
        let pool = AvgPool2d::new(2);
        let mut h = with_relu(&self.conv1, x, fuse, "conv1", inspect)?;
        inspect("relu1", &h);
        h = pool.forward(&h)?;
        inspect("pool1", &h);
        h = with_relu(&self.conv2, &h, fuse, "conv2", inspect)?;
        inspect("relu2", &h);
        h = pool.forward(&h)?;
        inspect("pool2", &h);
        h = h.flatten(1, 3)?;
        inspect("flatten", &h);
        h = self.fc1.forward(&h)?.relu();
        inspect("fc1", &h);
        h = self.fc2.forward(&h)?.relu();
        inspect("fc2", &h);
        h = self.fc3.forward(&h)?;
        inspect("fc3", &h);
        inspect("logits", &h);
        Ok(h)
    }

    /// Logits `[n, 10]` for a batch of preprocessed images `[n, 1, 32, 32]`, without
    /// recording anything (inference).
    ///
    /// Runs the fused inference kernels of [`crate::infer`] on weights repacked once and cached
    /// until a parameter changes; the result equals [`LeNet5::forward_inspect`]'s up to float
    /// rounding (the sums run in another order) and is the same for any batch size or thread
    /// count.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.packed()?.logits(x)
    }

    /// One preprocessed image `[1, 1, 32, 32]` through the inference kernels of
    /// [`LeNet5::logits`], keeping the feature maps of
    /// [`INSPECTED_STAGES`](crate::infer::INSPECTED_STAGES) for pictures.
    pub fn inspect(&self, x: &Tensor) -> Result<Inspection> {
        self.packed()?.inspect(x)
    }

    /// The weights repacked for inference: from the cache when no parameter changed since
    /// they were packed, else packed now (and cached).
    pub fn packed(&self) -> Result<Arc<PackedLeNet>> {
        let mut cache = self.packed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(p) = cache.as_ref()
            && p.made_from(self.param_values())
        {
            return Ok(p.clone());
        }
        let p = Arc::new(PackedLeNet::new(self)?);
        *cache = Some(p.clone());
        Ok(p)
    }

    /// The parameters' values in `visit_params` order, without building their names (the
    /// check [`LeNet5::packed`] makes on every call).
    fn param_values(&self) -> impl Iterator<Item = Tensor> + '_ {
        let convs = [&self.conv1, &self.conv2].map(|c| (&c.weight, c.bias.as_ref()));
        let dense = [&self.fc1, &self.fc2, &self.fc3].map(|l| (&l.weight, l.bias.as_ref()));
        convs
            .into_iter()
            .chain(dense)
            .flat_map(|(w, b)| std::iter::once(w).chain(b))
            .map(Param::value)
    }

    /// Loads weights from a safetensors checkpoint with PyTorch names (ours or a PyTorch
    /// `state_dict`), strictly: every parameter present with its shape, no other tensor.
    /// Returns the normalization stored in the metadata, or the default (MNIST constants)
    /// when the file has none.
    pub fn load(path: impl AsRef<Path>) -> Result<(Self, Normalization, Metadata)> {
        let model = Self::new(&mut Rng::new(0))?;
        let meta = checkpoint::load(path.as_ref(), &model, true)?;
        let norm = Normalization::from_metadata(&meta)?;
        Ok((model, norm, meta))
    }

    /// Saves the weights atomically, with the normalization and `extra` in the metadata.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        norm: Normalization,
        extra: &Metadata,
    ) -> Result<()> {
        let mut meta = extra.clone();
        meta.insert("model".into(), "lenet5".into());
        norm.to_metadata(&mut meta);
        checkpoint::save(path, self, &meta)?;
        Ok(())
    }

    /// One row per layer for a batch of `n`: output shape, parameters, forward FLOPs (a
    /// multiply-add counts as two) and, for convolutions, the algorithm
    /// [`convkit_conv::select`] picks (after `CONVKIT_CONV_ALGO`).
    pub fn layer_table(&self, n: usize) -> Result<Vec<LayerInfo>> {
        let n = n.max(1);
        let conv = |name: &'static str,
                    c_in: usize,
                    hw: usize,
                    layer: &Conv2d|
         -> Result<LayerInfo> {
            let w = layer.weight.dims();
            let g =
                ConvGeometry::new([n, c_in, hw, hw], [w[0], w[1], w[2], w[3]], layer.cfg.params)?;
            let algo = convkit_conv::resolve(ConvAlgo::Auto, &g).unwrap_or_else(|_| select(&g));
            let params = count(&layer.weight) + layer.bias.as_ref().map_or(0, count);
            let out = g.output_dims().to_vec();
            let flops = g.flops()
                + if layer.bias.is_some() { out.iter().product::<usize>() as u64 } else { 0 };
            Ok(LayerInfo { name, output: out, params, flops, algo: Some(algo) })
        };
        let linear = |name: &'static str, layer: &Linear| -> LayerInfo {
            let w = layer.weight.dims();
            let params = count(&layer.weight) + layer.bias.as_ref().map_or(0, count);
            LayerInfo {
                name,
                output: vec![n, w[0]],
                params,
                flops: (2 * n * w[0] * w[1] + n * w[0]) as u64,
                algo: None,
            }
        };
        let simple = |name: &'static str, output: Vec<usize>, flops: usize| LayerInfo {
            name,
            output,
            params: 0,
            flops: flops as u64,
            algo: None,
        };
        let c1 = 6 * 28 * 28 * n;
        let c2 = 16 * 10 * 10 * n;
        Ok(vec![
            simple("input", vec![n, 1, 32, 32], 0),
            conv("conv1", 1, 32, &self.conv1)?,
            simple("relu1", vec![n, 6, 28, 28], c1),
            simple("pool1", vec![n, 6, 14, 14], c1),
            conv("conv2", 6, 14, &self.conv2)?,
            simple("relu2", vec![n, 16, 10, 10], c2),
            simple("pool2", vec![n, 16, 5, 5], c2),
            simple("flatten", vec![n, 400], 0),
            linear("fc1", &self.fc1),
            simple("relu3", vec![n, 120], 120 * n),
            linear("fc2", &self.fc2),
            simple("relu4", vec![n, 84], 84 * n),
            linear("fc3", &self.fc3),
        ])
    }
}

fn count(p: &Param) -> usize {
    p.dims().iter().product()
}

/// One row of [`LeNet5::layer_table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The layer's name.
    pub name: &'static str,
    /// Output shape.
    pub output: Vec<usize>,
    /// Trainable parameters.
    pub params: usize,
    /// Forward FLOPs for the whole batch.
    pub flops: u64,
    /// For convolutions, the algorithm that runs.
    pub algo: Option<ConvAlgo>,
}

impl Module for LeNet5 {
    fn forward(&self, x: &Var) -> convkit_nn::Result<Var> {
        self.layers(x, true, &mut |_, _| {})
    }

    /// The layers in order, under PyTorch's `state_dict` names, so that tools that walk a
    /// model (ONNX export, summaries) see LeNet-5 as the `Sequential` it is.
    fn describe(&self) -> Layer<'_> {
        Layer::Sequential(vec![
            ("conv1", &self.conv1),
            ("relu1", &ReLU),
            ("pool1", &self.pool),
            ("conv2", &self.conv2),
            ("relu2", &ReLU),
            ("pool2", &self.pool),
            ("flatten", &Flatten),
            ("fc1", &self.fc1),
            ("relu3", &ReLU),
            ("fc2", &self.fc2),
            ("relu4", &ReLU),
            ("fc3", &self.fc3),
        ])
    }

    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(String, &Param)) {
        use convkit_nn::module::join;
        self.conv1.visit_params(&join(prefix, "conv1"), f);
        self.conv2.visit_params(&join(prefix, "conv2"), f);
        self.fc1.visit_params(&join(prefix, "fc1"), f);
        self.fc2.visit_params(&join(prefix, "fc2"), f);
        self.fc3.visit_params(&join(prefix, "fc3"), f);
    }
}

/// `relu(layer(x))`, as one node of the tape when `fuse` and the layer has a fused form; the
/// pre-activation goes to `inspect` under `name` when it exists as a value of its own.
fn with_relu(
    layer: &dyn Module,
    x: &Var,
    fuse: bool,
    name: &str,
    inspect: &mut dyn FnMut(&str, &Var),
) -> convkit_nn::Result<Var> {
    if fuse && let Some(y) = layer.forward_relu(x) {
        return y;
    }
    let h = layer.forward(x)?;
    inspect(name, &h);
    Ok(h.relu())
}

/// The number of parameters of a freshly built model (checks [`NUM_PARAMS`]).
pub fn param_count(model: &LeNet5) -> usize {
    num_params(model)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use convkit_nn::named_params;

    /// `forward` runs each convolution and its ReLU as one node; `forward_inspect` runs them
    /// apart to show the pre-activations. Logits and every gradient agree bit for bit.
    #[test]
    fn fused_forward_matches_the_inspected_one() {
        use convkit_autograd::Tape;
        let m = LeNet5::new(&mut Rng::new(3)).unwrap();
        let mut rng = Rng::new(4);
        let x = Tensor::rand_uniform(&[3, 1, 32, 32], -1.0, 1.0, &mut rng).unwrap();
        let bits = |t: &Tensor| t.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let mut runs = Vec::new();
        for fused in [true, false] {
            let tape = Tape::new();
            let xv = tape.input(x.clone());
            let mut seen = Vec::new();
            let y = if fused {
                m.forward(&xv).unwrap()
            } else {
                m.forward_inspect(&xv, &mut |name, _| seen.push(name.to_owned())).unwrap()
            };
            if !fused {
                assert!(seen.iter().any(|n| n == "conv1") && seen.iter().any(|n| n == "conv2"));
            }
            y.cross_entropy(&[1, 7, 3]).unwrap().backward().unwrap();
            let mut all = vec![bits(y.value())];
            for (_, p) in named_params(&m) {
                all.push(bits(&p.grad().unwrap()));
                p.set_grad(None).unwrap();
            }
            runs.push(all);
        }
        assert_eq!(runs[0], runs[1]);
    }

    #[test]
    fn param_values_follow_visit_params() {
        let m = LeNet5::new(&mut Rng::new(0)).unwrap();
        let named = named_params(&m);
        let direct: Vec<Tensor> = m.param_values().collect();
        assert_eq!(direct.len(), named.len());
        for ((name, p), v) in named.iter().zip(&direct) {
            assert!(p.value().shares_data_with(v), "{name}");
        }
        let packed = m.packed().unwrap();
        assert!(packed.made_from(m.param_values()));
        assert!(packed.is_current(&m));
        assert!(!packed.made_from(m.param_values().take(9)));
        m.fc3.bias.as_ref().unwrap().set_value(Tensor::zeros(&[10])).unwrap();
        assert!(!packed.made_from(m.param_values()));
        assert!(!Arc::ptr_eq(&packed, &m.packed().unwrap()), "repacked after a change");
    }

    #[test]
    fn names_and_count_match_pytorch() {
        let m = LeNet5::new(&mut Rng::new(0)).unwrap();
        let names: Vec<String> = named_params(&m).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, PARAM_NAMES);
        assert_eq!(param_count(&m), NUM_PARAMS);
        let table = m.layer_table(64).unwrap();
        assert_eq!(table.iter().map(|l| l.params).sum::<usize>(), NUM_PARAMS);
        assert_eq!(table.last().unwrap().output, vec![64, 10]);
    }

    #[test]
    fn forward_shapes_and_bad_input() {
        let m = LeNet5::new(&mut Rng::new(1)).unwrap();
        let x = Tensor::zeros(&[3, 1, 32, 32]);
        let mut seen = Vec::new();
        let y = m
            .forward_inspect(&Var::constant(x), &mut |name, v| {
                seen.push((name.to_owned(), v.dims().to_vec()))
            })
            .unwrap();
        assert_eq!(y.dims(), [3, 10]);
        assert_eq!(seen[2], ("pool1".to_owned(), vec![3, 6, 14, 14]));
        assert_eq!(seen.len(), STAGES.len());
        let err = m.logits(&Tensor::zeros(&[3, 1, 28, 28])).unwrap_err();
        assert!(err.to_string().contains("expected [batch, 1, 32, 32]"), "{err}");
    }
}
