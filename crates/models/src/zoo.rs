//! Networks beyond LeNet-5, built from `convkit-nn` layers, for small images (28x28 or 32x32):
//! a VGG-style conv-BN-ReLU-pool stack ([`vgg_small`]) and a small ResNet with basic blocks
//! ([`resnet_small`]).
//!
//! Each is a plain [`Sequential`] whose parameter names are the `state_dict` names of its
//! PyTorch twin in `crates/models/scripts/zoo_twin.py`, so weights move both ways with
//! [`convkit_nn::checkpoint`], and tools that walk a model (ONNX export, summaries) see every
//! layer through [`Module::describe`](convkit_nn::Module::describe). The twin script writes
//! the fixtures the tests compare logits with.
//!
//! | model | layers | parameters (1 channel, 28x28, 10 classes) |
//! |---|---|---|
//! | [`vgg_small`] | 2×(conv3x3-BN-ReLU) pool, 2×(conv3x3-BN-ReLU) pool, 128, classes | 468,010 |
//! | [`resnet_small`] | conv3x3-BN-ReLU, 3 stages of 2 basic blocks (16, 32, 64 channels), global average pool, classes | 174,970 |
//!
//! [`ZooModel::recipe`] is each model's training recipe for [`convkit_train::Trainer`].
//!
//! ```
//! use convkit_autograd::Var;
//! use convkit_models::zoo::{ZooModel, resnet_small};
//! use convkit_nn::Module;
//! use convkit_tensor::{Rng, Tensor};
//!
//! let mut model = resnet_small(1, 10, &mut Rng::new(0))?;
//! model.set_training(false);
//! let x = Var::constant(Tensor::zeros(&[2, 1, 28, 28]));
//! assert_eq!(model.forward(&x)?.dims(), &[2, 10]);
//! assert_eq!(ZooModel::ResnetSmall.name(), "resnet-small");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use convkit_data::Augment;
use convkit_nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Conv2dParams, Dropout, Flatten, GlobalAvgPool2d, Linear,
    MaxPool2d, OptimizerKind, ReLU, Residual, ScheduleKind, Sequential,
};
use convkit_tensor::Rng;

use crate::error::{Result, invalid};

/// The models of the zoo, by the names the tools use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZooModel {
    /// [`vgg_small`].
    VggSmall,
    /// [`resnet_small`].
    ResnetSmall,
}

impl ZooModel {
    /// Every model, in the order of the docs.
    pub const ALL: [ZooModel; 2] = [ZooModel::VggSmall, ZooModel::ResnetSmall];

    /// The name on the command line and in checkpoints' `model` metadata.
    pub fn name(self) -> &'static str {
        match self {
            ZooModel::VggSmall => "vgg-small",
            ZooModel::ResnetSmall => "resnet-small",
        }
    }

    /// The model of that name.
    pub fn parse(name: &str) -> Result<ZooModel> {
        Self::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
            invalid("model", format!("unknown model {name:?}; the zoo has {}", known.join(", ")))
        })
    }

    /// The training recipe for 28x28 grayscale images of 10 classes, such as Fashion-MNIST
    /// read as an image folder and normalized with the training set's mean and standard
    /// deviation (`docs/training.md`, "Your own images"; run by
    /// `cargo run --release -p convkit-models --example fashion_folder`).
    ///
    /// Both models: Adam, cosine annealing to 0 stepped per batch, batch 64, 10 epochs, seed 0,
    /// random crops with 2 pixels of padding, then horizontal flips. The learning rate is
    /// 0.001 for vgg-small, which reaches 0.9225 test accuracy on Fashion-MNIST with it
    /// (measured); 0.002 for resnet-small, measured for one epoch only (0.8800).
    pub fn recipe(self) -> convkit_train::TrainConfig {
        let base = convkit_train::TrainConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            schedule: ScheduleKind::Cosine,
            seed: 0,
            augment: vec![Augment::RandomCrop { pad: 2 }, Augment::HorizontalFlip],
            ..convkit_train::TrainConfig::default()
        };
        match self {
            ZooModel::VggSmall => base,
            ZooModel::ResnetSmall => convkit_train::TrainConfig { lr: 2e-3, ..base },
        }
    }

    /// A freshly initialized model for `[c, h, w]` inputs and `classes` outputs.
    pub fn build(self, input_chw: [usize; 3], classes: usize, rng: &mut Rng) -> Result<Sequential> {
        match self {
            ZooModel::VggSmall => vgg_small(input_chw, classes, rng),
            ZooModel::ResnetSmall => resnet_small(input_chw[0], classes, rng),
        }
    }
}

/// A 3x3 convolution with padding 1 and the given stride, without bias (a batch norm follows).
fn conv3x3(c_in: usize, c_out: usize, stride: usize, rng: &mut Rng) -> Result<Conv2d> {
    let params = Conv2dParams::default().with_padding(1).with_stride(stride);
    Ok(Conv2d::with_config(
        c_in,
        c_out,
        (3, 3),
        Conv2dConfig { params, bias: false, ..Default::default() },
        rng,
    )?)
}

/// A VGG-style network for `input_chw = [c, h, w]` images (`h`, `w` multiples of 4):
/// `features` = two blocks of (conv3x3-BN-ReLU, conv3x3-BN-ReLU, max-pool 2) with 32 and 64
/// channels, then `classifier` = linear to 128, ReLU, dropout 0.5, linear to `classes`.
///
/// Names as PyTorch's `nn.Sequential` numbers them: `features.0.weight` (conv),
/// `features.1.running_mean` (BN), …, `classifier.0.weight`, `classifier.3.bias`.
pub fn vgg_small(input_chw: [usize; 3], classes: usize, rng: &mut Rng) -> Result<Sequential> {
    let [c, h, w] = input_chw;
    if c == 0 || classes == 0 || h < 4 || w < 4 || h % 4 != 0 || w % 4 != 0 {
        return Err(invalid(
            "vgg_small",
            format!(
                "needs channels ≥ 1, classes ≥ 1 and sides that are multiples of 4, got {input_chw:?} and {classes} classes"
            ),
        ));
    }
    let mut features = Sequential::new();
    let mut c_in = c;
    for c_out in [32, 64] {
        for _ in 0..2 {
            features = features
                .push(conv3x3(c_in, c_out, 1, rng)?)
                .push(BatchNorm2d::new(c_out)?)
                .push(ReLU);
            c_in = c_out;
        }
        features = features.push(MaxPool2d::new(2));
    }
    let classifier = Sequential::new()
        .push(Linear::new(64 * (h / 4) * (w / 4), 128, rng)?)
        .push(ReLU)
        .push(Dropout::new(0.5, rng.next_u64())?)
        .push(Linear::new(128, classes, rng)?);
    Ok(Sequential::new()
        .push_named("features", features)
        .push_named("flatten", Flatten)
        .push_named("classifier", classifier))
}

/// A basic block: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, the shortcut a
/// strided 1x1 convolution with batch norm when the shape changes.
fn basic_block(c_in: usize, c_out: usize, stride: usize, rng: &mut Rng) -> Result<Sequential> {
    let body = Sequential::new()
        .push_named("conv1", conv3x3(c_in, c_out, stride, rng)?)
        .push_named("bn1", BatchNorm2d::new(c_out)?)
        .push_named("relu", ReLU)
        .push_named("conv2", conv3x3(c_out, c_out, 1, rng)?)
        .push_named("bn2", BatchNorm2d::new(c_out)?);
    let residual = if stride != 1 || c_in != c_out {
        let params = Conv2dParams::default().with_stride(stride);
        let cfg = Conv2dConfig { params, bias: false, ..Default::default() };
        let shortcut = Sequential::new()
            .push(Conv2d::with_config(c_in, c_out, (1, 1), cfg, rng)?)
            .push(BatchNorm2d::new(c_out)?);
        Residual::with_shortcut(body, shortcut)
    } else {
        Residual::new(body)
    };
    Ok(Sequential::new().push_named("residual", residual).push_named("relu", ReLU))
}

/// A small ResNet for `in_channels`-channel images of any size at least 4x4: a stem
/// (conv3x3-BN-ReLU, 16 channels), three stages of two basic blocks (`relu(body(x) + shortcut(x))`, body conv3x3-BN-ReLU-conv3x3-BN) with 16,
/// 32 and 64 channels (the second and third start with stride 2), global average pooling and
/// a linear layer to `classes`.
///
/// Names: `stem.0.weight`, `layer2.0.residual.body.conv1.weight`,
/// `layer2.0.residual.shortcut.0.weight`, …, `fc.weight`, as in the twin script.
pub fn resnet_small(in_channels: usize, classes: usize, rng: &mut Rng) -> Result<Sequential> {
    if in_channels == 0 || classes == 0 {
        return Err(invalid(
            "resnet_small",
            format!("needs channels ≥ 1 and classes ≥ 1, got {in_channels} and {classes}"),
        ));
    }
    let stem = Sequential::new()
        .push(conv3x3(in_channels, 16, 1, rng)?)
        .push(BatchNorm2d::new(16)?)
        .push(ReLU);
    let mut model = Sequential::new().push_named("stem", stem);
    let mut c_in = 16;
    for (i, c_out) in [16, 32, 64].into_iter().enumerate() {
        let stride = if i == 0 { 1 } else { 2 };
        let layer = Sequential::new()
            .push(basic_block(c_in, c_out, stride, rng)?)
            .push(basic_block(c_out, c_out, 1, rng)?);
        model = model.push_named(&format!("layer{}", i + 1), layer);
        c_in = c_out;
    }
    Ok(model
        .push_named("pool", GlobalAvgPool2d)
        .push_named("flatten", Flatten)
        .push_named("fc", Linear::new(64, classes, rng)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use convkit_autograd::Var;
    use convkit_nn::{Module, named_params, num_params};
    use convkit_tensor::Tensor;

    #[test]
    fn shapes_parameters_and_names() {
        let mut rng = Rng::new(0);
        let vgg = vgg_small([1, 28, 28], 10, &mut rng).unwrap();
        assert_eq!(num_params(&vgg), 468_010);
        let names: Vec<String> = named_params(&vgg).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "features.0.weight");
        assert!(names.contains(&"features.1.weight".to_owned()), "{names:?}");
        assert_eq!(names.last().unwrap(), "classifier.3.bias");
        let res = resnet_small(1, 10, &mut rng).unwrap();
        assert_eq!(num_params(&res), 174_970);
        let names: Vec<String> = named_params(&res).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"layer2.0.residual.shortcut.0.weight".to_owned()), "{names:?}");
        assert!(names.contains(&"layer3.1.residual.body.bn2.bias".to_owned()), "{names:?}");
        for (mut m, hw) in
            [(vgg, 28), (res, 28), (vgg_small([3, 32, 32], 5, &mut rng).unwrap(), 32)]
        {
            m.set_training(false);
            let c = if hw == 32 { 3 } else { 1 };
            let y = m.forward(&Var::constant(Tensor::zeros(&[3, c, hw, hw]))).unwrap();
            assert_eq!(y.dims()[0], 3);
        }
    }

    #[test]
    fn summaries_cover_every_parameter_and_name_the_conv_algorithms() {
        use convkit_nn::summary::{summary, table};
        let mut rng = Rng::new(0);
        for which in ZooModel::ALL {
            let m = which.build([1, 28, 28], 10, &mut rng).unwrap();
            let rows = summary(&m, &[64, 1, 28, 28]).unwrap();
            assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), num_params(&m));
            assert_eq!(rows.last().unwrap().output, [64, 10]);
            let convs: Vec<_> = rows.iter().filter_map(|r| r.conv).collect();
            assert!(!convs.is_empty());
            assert!(convs.iter().all(|c| c.training != convkit_conv::ConvAlgo::Auto));
            let text = table(&rows);
            assert!(text.contains("Conv2d") && text.contains("total"), "{text}");
        }
        let lenet = crate::LeNet5::new(&mut rng).unwrap();
        let rows = summary(&lenet, &[1, 1, 32, 32]).unwrap();
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), crate::lenet::NUM_PARAMS);
        assert_eq!(rows[0].path, "conv1");
    }

    #[test]
    fn recipes_are_valid_and_differ_only_in_the_rate() {
        for which in ZooModel::ALL {
            which.recipe().validate().unwrap();
        }
        let (vgg, res) = (ZooModel::VggSmall.recipe(), ZooModel::ResnetSmall.recipe());
        assert_eq!((vgg.lr, res.lr), (1e-3, 2e-3));
        assert_eq!(convkit_train::TrainConfig { lr: vgg.lr, ..res }, vgg);
    }

    #[test]
    fn bad_configurations_are_errors() {
        let mut rng = Rng::new(0);
        let e = vgg_small([1, 30, 28], 10, &mut rng).unwrap_err().to_string();
        assert!(e.contains("multiples of 4") && e.contains("[1, 30, 28]"), "{e}");
        assert!(resnet_small(0, 10, &mut rng).is_err());
        let e = ZooModel::parse("alexnet").unwrap_err().to_string();
        assert!(e.contains("vgg-small") && e.contains("resnet-small"), "{e}");
        assert_eq!(ZooModel::parse("vgg-small").unwrap(), ZooModel::VggSmall);
    }
}
