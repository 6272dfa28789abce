//! Fused LeNet-5 inference: one pass per image through both convolutions, their ReLUs and
//! average pools, with every intermediate in a few KiB of cache, then the three dense layers on
//! blocks of images.
//!
//! The layer-by-layer path (`LeNet5::forward_inspect`) writes each stage of the whole batch to
//! memory and reads it back: at batch 256 the conv1 output alone is 4.8 MB, and allocating,
//! zeroing and faulting in those buffers costs more than the arithmetic. Here each image flows
//! through the network on its own, on convkit-conv's general kernels:
//!
//! 1. **conv1 + ReLU + pool**, then **conv2 + ReLU + pool**: each a [`PreparedConv`] with a
//!    fused 2x2 average pool, run image by image ([`PreparedConv::pooled_image_with`]); conv2
//!    writes its pooled output channels last.
//! 2. **Dense layers**: [`PreparedLinear`] on the block's images. The pooled conv2 output is
//!    channels-last, so fc1 reads its inputs in that order
//!    ([`PreparedLinear::with_input_order`]) instead of PyTorch's `[channel][row][column]`
//!    flatten order.
//!
//! Weights are repacked once and cached (see [`PackedLeNet`]). Images are split into blocks of
//! 16 for rayon; every image's arithmetic is the same whichever block it lands in, so results
//! are bit-identical for any batch size and thread count. The instruction set comes from
//! [`convkit_conv::simd`] (the best level of this CPU, or the portable fallback under
//! `CONVKIT_SIMD=off`).

use convkit_autograd::Param;
use convkit_conv::simd::{self, Simd, SimdLevel, WithSimd};
use convkit_conv::{
    Conv2dParams, ConvAlgo, PoolKind, PoolParams, PooledImage, PooledLayout, PreparedConv,
    PreparedLinear,
};
use convkit_nn::{Layer, Module};
use convkit_tensor::Tensor;
use rayon::prelude::*;

use crate::data::{CLASSES, PADDED_SIZE as INPUT_SIZE};
use crate::error::{ModelError, Result};

/// Checks that `dims` is a batch of preprocessed images, `[n, 1, 32, 32]`.
pub(crate) fn check_input(dims: &[usize]) -> Result<()> {
    if dims.len() != 4 || dims[1..] != [1, INPUT_SIZE, INPUT_SIZE] {
        return Err(ModelError::Invalid {
            what: "LeNet5",
            msg: format!("input {dims:?}, expected [batch, 1, 32, 32]"),
        });
    }
    Ok(())
}

/// Floats per input image.
const IMG: usize = INPUT_SIZE * INPUT_SIZE;
/// conv1 channels, output side and pooled side.
const C1: usize = 6;
const O1: usize = 28;
const P1: usize = 14;
/// conv2 channels, output side, pooled side.
const C2: usize = 16;
const O2: usize = 10;
const P2: usize = 5;
/// Flattened features, fc widths.
const FEAT: usize = C2 * P2 * P2;
const H1: usize = 120;
const H2: usize = 84;
/// Images per rayon task.
const BLOCK: usize = 16;

/// `layer` (`weight [outputs, inputs]`) prepared for inference, or an error naming its shape.
fn dense(layer: &Layer<'_>, inputs: usize, outputs: usize) -> Result<PreparedLinear> {
    let Layer::Linear { weight, bias } = layer else {
        return Err(kind_error("a Linear layer", layer));
    };
    let w = weight.value();
    if w.dims() != [outputs, inputs] {
        return Err(shape_error("linear", w.dims()));
    }
    let b = bias.map(|b| b.value());
    Ok(PreparedLinear::from_tensors(&w, b.as_ref())?)
}

fn kind_error(expected: &str, found: &Layer<'_>) -> ModelError {
    ModelError::Invalid {
        what: "LeNet5",
        msg: format!("expected {expected}, found {}", found.kind()),
    }
}

fn shape_error(what: &str, dims: &[usize]) -> ModelError {
    ModelError::Invalid {
        what: "LeNet5",
        msg: format!("{what} parameter has shape {dims:?}, not LeNet-5's"),
    }
}

/// The stages [`PackedLeNet::inspect`] keeps, in order: each convolution before its ReLU (so
/// the sign shows) and each pooling layer.
pub const INSPECTED_STAGES: [&str; 4] = ["conv1", "pool1", "conv2", "pool2"];

/// One image's pass through LeNet-5 with the outputs of [`INSPECTED_STAGES`] kept (what the
/// feature-map pictures of `lenet visualize` and `lenet serve` draw).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Each stage of [`INSPECTED_STAGES`] with its output, `[1, c, h, w]`.
    pub stages: Vec<(&'static str, Tensor)>,
    /// The logits `[1, 10]`.
    pub logits: Tensor,
    /// Softmax of the logits, one per class.
    pub probabilities: Vec<f32>,
}

impl Inspection {
    /// The output of stage `name`.
    pub fn stage(&self, name: &str) -> Option<&Tensor> {
        self.stages.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }

    /// The most probable class.
    pub fn class(&self) -> usize {
        self.probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i)
    }
}

/// LeNet-5's weights repacked for [`PackedLeNet::logits`], together with the parameter
/// tensors they came from (so a cache can tell whether they are still current).
pub struct PackedLeNet {
    /// The ten parameter tensors at packing time, in `state_dict` order.
    source: Vec<Tensor>,
    /// Each convolution with its ReLU and pool.
    conv1: PreparedConv,
    conv2: PreparedConv,
    fc1: PreparedLinear,
    fc2: PreparedLinear,
    fc3: PreparedLinear,
}

impl std::fmt::Debug for PackedLeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLeNet").finish_non_exhaustive()
    }
}

/// `layer`, a 5x5 convolution from `c_in` to `c_out` channels without padding, prepared with
/// its ReLU and the 2x2 average pool after it.
fn conv_pool(layer: &Layer<'_>, c_out: usize, c_in: usize) -> Result<PreparedConv> {
    let Layer::Conv2d { weight, bias, params, .. } = layer else {
        return Err(kind_error("a Conv2d layer", layer));
    };
    let w = weight.value();
    if w.dims() != [c_out, c_in, 5, 5] || *params != Conv2dParams::default() {
        return Err(shape_error("conv", w.dims()));
    }
    let b = bias.as_ref().map(|b| b.value());
    let conv = PreparedConv::from_tensors(&w, b.as_ref(), *params, ConvAlgo::Direct)?;
    Ok(conv.with_relu().with_pool(PoolKind::Avg, PoolParams::new(2))?)
}

/// The model's parameter tensors in `state_dict` order (shared buffers, no copy).
fn param_values(model: &dyn Module) -> Vec<Tensor> {
    let mut values = Vec::with_capacity(10);
    model.visit_params("", &mut |_, p: &Param| values.push(p.value()));
    values
}

/// The layer kinds [`PackedLeNet::new`] accepts, in order.
pub const ARCHITECTURE: [&str; 12] = [
    "Conv2d",
    "ReLU",
    "AvgPool2d",
    "Conv2d",
    "ReLU",
    "AvgPool2d",
    "Flatten",
    "Linear",
    "ReLU",
    "Linear",
    "ReLU",
    "Linear",
];

impl PackedLeNet {
    /// Repacks the weights of `model`: a [`LeNet5`](crate::LeNet5), or any module that
    /// describes itself as a [`Layer::Sequential`] of LeNet-5's layers ([`ARCHITECTURE`],
    /// 5x5 convolutions without padding, 2x2 average pools, LeNet-5's widths). Anything else
    /// is an error that names what differs.
    pub fn new(model: &dyn Module) -> Result<Self> {
        let description = model.describe();
        let Layer::Sequential(children) = &description else {
            return Err(kind_error("a Sequential of LeNet-5's layers", &description));
        };
        let layers: Vec<Layer<'_>> = children.iter().map(|(_, m)| m.describe()).collect();
        let kinds: Vec<&str> = layers.iter().map(Layer::kind).collect();
        if kinds != ARCHITECTURE {
            return Err(ModelError::Invalid {
                what: "LeNet5",
                msg: format!("layers {kinds:?}, expected LeNet-5's {ARCHITECTURE:?}"),
            });
        }
        for pool in [&layers[2], &layers[5]] {
            if !matches!(pool, Layer::AvgPool2d(p) if *p == PoolParams::new(2)) {
                return Err(ModelError::Invalid {
                    what: "LeNet5",
                    msg: "the pools must be 2x2 average pools with stride 2 and no padding".into(),
                });
            }
        }
        let conv1 = conv_pool(&layers[0], C1, 1)?;
        let conv2 = conv_pool(&layers[3], C2, C1)?;
        // Our features are [row][column][channel]; PyTorch flattens [channel][row][column].
        let order: Vec<usize> = (0..FEAT).map(|i| (i % 25) * C2 + i / 25).collect();
        let fc1 = dense(&layers[7], FEAT, H1)?.with_relu().with_input_order(&order)?;
        let fc2 = dense(&layers[9], H1, H2)?.with_relu();
        let fc3 = dense(&layers[11], H2, CLASSES)?;
        let source = param_values(model);
        Ok(PackedLeNet { source, conv1, conv2, fc1, fc2, fc3 })
    }

    /// Whether these packed weights were made from `model`'s current parameters (an optimizer
    /// step or `set_value` replaces or copies the buffers, which this detects).
    pub fn is_current(&self, model: &dyn Module) -> bool {
        self.made_from(param_values(model))
    }

    /// Whether `values`, the model's parameter values in [`Module::visit_params`] order, are
    /// the buffers these weights were packed from.
    pub(crate) fn made_from(&self, values: impl IntoIterator<Item = Tensor>) -> bool {
        let mut n = 0;
        for (i, v) in values.into_iter().enumerate() {
            if self.source.get(i).is_none_or(|s| !v.shares_data_with(s)) {
                return false;
            }
            n = i + 1;
        }
        n == self.source.len()
    }

    /// Logits `[n, 10]` for preprocessed images `[n, 1, 32, 32]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        check_input(x.dims())?;
        let n = x.dims()[0];
        let mut out = vec![0f32; n * CLASSES];
        self.logits_into(simd::active(), x.as_slice(), &mut out)?;
        Ok(Tensor::from_vec(&[n, CLASSES], out)?)
    }

    /// Runs one preprocessed image `[1, 1, 32, 32]` through the same kernels as
    /// [`PackedLeNet::logits`] (the logits are the same bits), keeping the outputs of
    /// [`INSPECTED_STAGES`].
    pub fn inspect(&self, x: &Tensor) -> Result<Inspection> {
        check_input(x.dims())?;
        if x.dims()[0] != 1 {
            return Err(ModelError::Invalid {
                what: "LeNet5::inspect",
                msg: format!("expected one image [1, 1, 32, 32], got {:?}", x.dims()),
            });
        }
        let mut maps = Maps {
            conv1: vec![0.0; C1 * O1 * O1],
            pool1: vec![0.0; C1 * P1 * P1],
            conv2: vec![0.0; C2 * O2 * O2],
            pool2: vec![0.0; FEAT],
        };
        let mut logits = vec![0f32; CLASSES];
        simd::dispatch_active(Block {
            net: self,
            input: x.as_slice(),
            out: &mut logits,
            maps: Some(&mut maps),
        })?;
        let Maps { conv1, pool1, conv2, pool2 } = maps;
        let stages = vec![
            ("conv1", Tensor::from_vec(&[1, C1, O1, O1], conv1)?),
            ("pool1", Tensor::from_vec(&[1, C1, P1, P1], pool1)?),
            ("conv2", Tensor::from_vec(&[1, C2, O2, O2], conv2)?),
            ("pool2", Tensor::from_vec(&[1, C2, P2, P2], pool2)?),
        ];
        let logits = Tensor::from_vec(&[1, CLASSES], logits)?;
        let probabilities = logits.softmax(1)?.into_vec();
        Ok(Inspection { stages, logits, probabilities })
    }

    /// Slice form of [`PackedLeNet::logits`] at an instruction set the CPU supports: `input`
    /// holds whole 32x32 images and `out` ten floats per image (the image count is
    /// `out.len() / 10`).
    fn logits_into(&self, level: SimdLevel, input: &[f32], out: &mut [f32]) -> Result<()> {
        let run = |(x, y): (&[f32], &mut [f32])| {
            // `level` is `simd::active()` or, in tests, a level checked to be available, so
            // dispatch cannot decline; the active level covers it anyway.
            match simd::dispatch(level, Block { net: self, input: x, out: &mut *y, maps: None }) {
                Some(r) => r,
                None => simd::dispatch_active(Block { net: self, input: x, out: y, maps: None }),
            }
        };
        let n = out.len() / CLASSES;
        if n <= BLOCK {
            run((input, out))
        } else {
            input.par_chunks(BLOCK * IMG).zip(out.par_chunks_mut(BLOCK * CLASSES)).try_for_each(run)
        }
    }
}

/// One rayon task: up to [`BLOCK`] images.
struct Block<'a> {
    net: &'a PackedLeNet,
    input: &'a [f32],
    out: &'a mut [f32],
    /// Where to keep the stage outputs of a single image ([`PackedLeNet::inspect`]).
    maps: Option<&'a mut Maps>,
}

/// The outputs of [`INSPECTED_STAGES`] for one image, NCHW without the batch dimension.
struct Maps {
    /// `[6][28][28]`, before the ReLU.
    conv1: Vec<f32>,
    /// `[6][14][14]`.
    pool1: Vec<f32>,
    /// `[16][10][10]`, before the ReLU.
    conv2: Vec<f32>,
    /// `[16][5][5]`.
    pool2: Vec<f32>,
}

impl WithSimd for Block<'_> {
    type Output = Result<()>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> Result<()> {
        let Block { net, input, out, mut maps } = self;
        let n = out.len() / CLASSES;
        // Room for both layers' scratch (conv1's split planes, conv2's channel-last output).
        let mut scratch = Vec::with_capacity(2 * INPUT_SIZE * 24 + O2 * O2 * C2);
        let mut p1 = vec![0f32; C1 * P1 * P1];
        let mut feats = vec![0f32; n * FEAT];
        for (img, feat) in input.chunks_exact(IMG).zip(feats.chunks_exact_mut(FEAT)) {
            let image = PooledImage {
                input: img,
                height: INPUT_SIZE,
                width: INPUT_SIZE,
                output: &mut p1,
                layout: PooledLayout::Planes,
                conv_map: maps.as_mut().map(|m| &mut m.conv1[..]),
            };
            net.conv1.pooled_image_with(s, image, &mut scratch)?;
            let image = PooledImage {
                input: &p1,
                height: P1,
                width: P1,
                output: feat,
                layout: PooledLayout::ChannelsLast,
                conv_map: maps.as_mut().map(|m| &mut m.conv2[..]),
            };
            net.conv2.pooled_image_with(s, image, &mut scratch)?;
            if let Some(m) = maps.as_mut() {
                m.pool1.copy_from_slice(&p1);
                for (pixel, channels) in feat.chunks_exact(C2).enumerate() {
                    for (k, &v) in channels.iter().enumerate() {
                        m.pool2[k * P2 * P2 + pixel] = v;
                    }
                }
            }
        }
        let mut h1 = vec![0f32; n * H1];
        let mut h2 = vec![0f32; n * H2];
        net.fc1.forward_with(s, &feats, &mut h1)?;
        net.fc2.forward_with(s, &h1, &mut h2)?;
        net.fc3.forward_with(s, &h2, out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::LeNet5;
    use convkit_autograd::Var;
    use convkit_tensor::Rng;
    use convkit_tensor::testing::{Tolerance, assert_close, max_abs};
    use std::sync::Arc;

    fn layered(model: &LeNet5, x: &Tensor) -> Tensor {
        model.forward_inspect(&Var::constant(x.clone()), &mut |_, _| {}).unwrap().into_value()
    }

    /// The fused logits against the layered forward: 1e-5 of the largest |logit| (absolute
    /// 1e-5 below 1), as both sum the same products in different orders.
    fn vs_layered(reference: &[f32]) -> Tolerance {
        Tolerance::absolute(1e-5).scale_atol(max_abs(reference).max(1.0))
    }

    #[test]
    fn matches_the_layered_forward_at_every_simd_level() {
        let mut rng = Rng::new(7);
        let model = LeNet5::new(&mut rng).unwrap();
        // Inputs in the range of normalized images, plus a few large values.
        let x = Tensor::rand_uniform(&[37, 1, 32, 32], -0.5, 2.8, &mut rng).unwrap();
        let reference = layered(&model, &x);
        let (want, tol) = (reference.as_slice(), vs_layered(reference.as_slice()));
        let packed = model.packed().unwrap();
        for level in SimdLevel::ALL {
            if !level.available() {
                eprintln!("skipping {level}: not available on this CPU");
                continue;
            }
            let mut out = vec![0f32; 37 * CLASSES];
            packed.logits_into(level, x.as_slice(), &mut out).unwrap();
            assert_close(&format!("fused logits ({level})"), &out, want, tol);
        }
        assert_close("fused logits", model.logits(&x).unwrap().as_slice(), want, tol);
    }

    #[test]
    fn inspection_keeps_the_layered_stages_and_the_logits_bits() {
        let mut rng = Rng::new(11);
        let model = LeNet5::new(&mut rng).unwrap();
        let x = Tensor::rand_uniform(&[1, 1, 32, 32], -0.5, 2.8, &mut rng).unwrap();
        let mut want = Vec::new();
        model
            .forward_inspect(&Var::constant(x.clone()), &mut |name, v| {
                if INSPECTED_STAGES.contains(&name) {
                    want.push((name.to_owned(), v.value().clone()));
                }
            })
            .unwrap();
        let ins = model.inspect(&x).unwrap();
        assert_eq!(ins.stages.len(), INSPECTED_STAGES.len());
        for ((name, got), (want_name, want)) in ins.stages.iter().zip(&want) {
            assert_eq!(name, want_name);
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert_close(name, got.as_slice(), want.as_slice(), vs_layered(want.as_slice()));
        }
        assert_eq!(ins.logits, model.logits(&x).unwrap(), "the same kernels as logits");
        assert!((ins.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(ins.stage("pool2").unwrap().dims(), [1, 16, 5, 5]);
        let two = Tensor::zeros(&[2, 1, 32, 32]);
        assert!(model.inspect(&two).unwrap_err().to_string().contains("one image"));
    }

    #[test]
    fn same_bits_for_any_batch_split_and_thread_count() {
        let mut rng = Rng::new(3);
        let model = LeNet5::new(&mut rng).unwrap();
        let x = Tensor::rand_uniform(&[41, 1, 32, 32], -0.5, 2.8, &mut rng).unwrap();
        let whole = model.logits(&x).unwrap();
        for i in [0, 16, 40] {
            let one = Tensor::from_vec(&[1, 1, 32, 32], x.as_slice()[i * IMG..][..IMG].to_vec());
            let y = model.logits(&one.unwrap()).unwrap();
            assert_eq!(y.as_slice(), &whole.as_slice()[i * CLASSES..][..CLASSES]);
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let y = pool.install(|| model.logits(&x).unwrap());
            assert_eq!(y.as_slice(), whole.as_slice(), "{threads} threads");
        }
    }

    #[test]
    fn repacks_when_a_parameter_changes() {
        let mut rng = Rng::new(5);
        let model = LeNet5::new(&mut rng).unwrap();
        let x = Tensor::rand_uniform(&[2, 1, 32, 32], 0.0, 1.0, &mut rng).unwrap();
        let first = model.packed().unwrap();
        assert!(Arc::ptr_eq(&first, &model.packed().unwrap()), "cache reused");
        let before = model.logits(&x).unwrap();
        // An optimizer-style in-place update of one bias.
        model.fc3.bias.as_ref().unwrap().update(|v, _| v.data_mut()[0] += 1.0);
        assert!(!first.is_current(&model));
        let after = model.logits(&x).unwrap();
        let reference = layered(&model, &x);
        let reference = reference.as_slice();
        assert_close("logits after repacking", after.as_slice(), reference, vs_layered(reference));
        assert!((after.as_slice()[0] - before.as_slice()[0] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn rejects_bad_input_shapes() {
        let model = LeNet5::new(&mut Rng::new(1)).unwrap();
        for dims in [&[2, 1, 28, 28][..], &[2, 3, 32, 32], &[1024]] {
            let err = model.logits(&Tensor::zeros(dims)).unwrap_err();
            assert!(err.to_string().contains("expected [batch, 1, 32, 32]"), "{err}");
        }
        assert_eq!(model.logits(&Tensor::zeros(&[0, 1, 32, 32])).unwrap().dims(), [0, 10]);
    }

    /// A user's `Sequential` of LeNet-5's layers (sharing the LeNet5's parameters).
    fn as_sequential(model: &LeNet5) -> convkit_nn::Sequential {
        use convkit_nn::{AvgPool2d, Flatten, ReLU, Sequential};
        let pool = AvgPool2d(PoolParams::new(2));
        Sequential::new()
            .push(model.conv1.clone())
            .push(ReLU)
            .push(pool)
            .push(model.conv2.clone())
            .push(ReLU)
            .push(pool)
            .push(Flatten)
            .push(model.fc1.clone())
            .push(ReLU)
            .push(model.fc2.clone())
            .push(ReLU)
            .push(model.fc3.clone())
    }

    #[test]
    fn packs_any_module_with_lenets_layers_to_the_same_bits() {
        let mut rng = Rng::new(13);
        let model = LeNet5::new(&mut rng).unwrap();
        let x = Tensor::rand_uniform(&[5, 1, 32, 32], -0.5, 2.8, &mut rng).unwrap();
        let user = as_sequential(&model);
        let packed = PackedLeNet::new(&user).unwrap();
        assert!(packed.is_current(&user) && packed.is_current(&model), "same buffers");
        assert_eq!(packed.logits(&x).unwrap(), model.logits(&x).unwrap());
    }

    #[test]
    fn rejects_modules_that_are_not_lenet() {
        use convkit_nn::{MaxPool2d, ReLU, Sequential};
        let model = LeNet5::new(&mut Rng::new(2)).unwrap();
        let err = PackedLeNet::new(&ReLU).unwrap_err().to_string();
        assert!(err.contains("a Sequential of LeNet-5's layers"), "{err}");
        let short = Sequential::new().push(model.conv1.clone()).push(ReLU);
        let err = PackedLeNet::new(&short).unwrap_err().to_string();
        assert!(err.contains("expected LeNet-5's"), "{err}");
        // Max pooling where LeNet-5 averages.
        let maxed = Sequential::new()
            .push(model.conv1.clone())
            .push(ReLU)
            .push(MaxPool2d(PoolParams::new(2)))
            .push(model.conv2.clone())
            .push(ReLU)
            .push(convkit_nn::AvgPool2d(PoolParams::new(2)))
            .push(convkit_nn::Flatten)
            .push(model.fc1.clone())
            .push(ReLU)
            .push(model.fc2.clone())
            .push(ReLU)
            .push(model.fc3.clone());
        let err = PackedLeNet::new(&maxed).unwrap_err().to_string();
        assert!(err.contains("MaxPool2d"), "{err}");
    }
}
