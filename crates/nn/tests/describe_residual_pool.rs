//! `Module::describe` for every layer, and the `Residual` and `GlobalAvgPool2d` layers
//! (hand-computed values and finite differences).
#![allow(clippy::unwrap_used, missing_docs)]

use convkit_autograd::{Tape, Var, check_gradients};
use convkit_conv::{Conv2dParams, PoolParams};
use convkit_nn::{
    AvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Dropout, Flatten,
    GlobalAvgPool2d, Layer, Linear, MaxPool2d, Module, NnError, ReLU, Residual, Sequential,
    Sigmoid, Tanh, named_buffers, named_params,
};
use convkit_tensor::{Rng, Tensor};

#[test]
fn global_avg_pool_is_the_plane_mean() {
    // Two images, two channels, 2x3 planes of small integers.
    let x = Tensor::arange(0.0, 24.0, 1.0).unwrap().reshape(&[2, 2, 2, 3]).unwrap();
    let y = GlobalAvgPool2d.forward(&Var::constant(x)).unwrap();
    assert_eq!(y.dims(), [2, 2, 1, 1]);
    // Means of 0..6, 6..12, 12..18, 18..24.
    assert_eq!(y.value().as_slice(), &[2.5, 8.5, 14.5, 20.5]);
}

#[test]
fn global_avg_pool_rejects_non_images() {
    let x = Var::constant(Tensor::zeros(&[2, 3]));
    assert!(matches!(GlobalAvgPool2d.forward(&x), Err(NnError::Input { .. })));
    let empty = Var::constant(Tensor::zeros(&[1, 2, 0, 3]));
    assert!(GlobalAvgPool2d.forward(&empty).is_err());
}

#[test]
fn global_avg_pool_gradient_matches_finite_differences() {
    let mut rng = Rng::new(1);
    let x = Tensor::rand_uniform(&[2, 3, 4, 5], -1.0, 1.0, &mut rng).unwrap();
    let w = Tensor::rand_uniform(&[2, 3, 1, 1], -1.0, 1.0, &mut rng).unwrap();
    let report = check_gradients(
        |v| GlobalAvgPool2d.forward(&v[0]).unwrap().mul(&v[1])?.sum(),
        &[x, w],
        1e-2,
        1e-3,
        1e-3,
    )
    .unwrap();
    assert!(report.passed(), "{report}");
}

#[test]
fn residual_adds_the_identity_or_the_shortcut() {
    let x = Tensor::from_vec(&[1, 4], vec![-2.0, -1.0, 1.0, 2.0]).unwrap();
    let y = Residual::new(ReLU).forward(&Var::constant(x.clone())).unwrap();
    // relu(x) + x
    assert_eq!(y.value().as_slice(), &[-2.0, -1.0, 2.0, 4.0]);

    let y = Residual::with_shortcut(ReLU, Tanh).forward(&Var::constant(x)).unwrap();
    let want: Vec<f32> = [-2.0f32, -1.0, 1.0, 2.0].iter().map(|&v| v.max(0.0) + v.tanh()).collect();
    assert_eq!(y.value().as_slice(), want.as_slice());
}

#[test]
fn residual_rejects_branches_of_different_shapes() {
    let mut rng = Rng::new(2);
    let block = Residual::new(Linear::new(4, 3, &mut rng).unwrap());
    let err = block.forward(&Var::constant(Tensor::zeros(&[2, 4]))).unwrap_err();
    assert!(err.to_string().contains("[2, 3]"), "{err}");
}

#[test]
fn residual_gradient_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let block = Residual::with_shortcut(
        Sequential::new().push(Linear::new(3, 3, &mut rng).unwrap()).push(Tanh),
        Linear::new(3, 3, &mut rng).unwrap(),
    );
    let x = Tensor::rand_uniform(&[2, 3], -1.0, 1.0, &mut rng).unwrap();
    let report = check_gradients(
        |v| block.forward(&v[0]).unwrap().sum(),
        std::slice::from_ref(&x),
        1e-2,
        1e-3,
        1e-3,
    )
    .unwrap();
    assert!(report.passed(), "{report}");

    // Parameters of both branches receive gradients under their dotted names.
    let tape = Tape::new();
    block.forward(&tape.input(x)).unwrap().sum().unwrap().backward().unwrap();
    let names: Vec<String> = named_params(&block).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["body.0.weight", "body.0.bias", "shortcut.weight", "shortcut.bias"]);
    assert!(named_params(&block).iter().all(|(_, p)| p.grad().is_some()));
}

#[test]
fn residual_passes_buffers_and_mode_to_its_branches() {
    let mut block = Residual::new(BatchNorm2d::new(2).unwrap());
    let names: Vec<String> = named_buffers(&block).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["body.running_mean", "body.running_var"]);
    // In evaluation mode with fresh statistics the batch norm is (almost) the identity.
    block.set_training(false);
    let x = Tensor::from_vec(&[1, 2, 1, 1], vec![1.0, -3.0]).unwrap();
    let y = block.forward(&Var::constant(x)).unwrap();
    let s = (1.0f32 + 1e-5).sqrt();
    assert_eq!(y.value().as_slice(), &[1.0 / s + 1.0, -3.0 / s - 3.0]);
}

struct Custom;
impl Module for Custom {
    fn forward(&self, x: &Var) -> convkit_nn::Result<Var> {
        Ok(x.clone())
    }
    fn visit_params(&self, _: &str, _: &mut dyn FnMut(String, &convkit_autograd::Param)) {}
}

#[test]
fn every_layer_describes_itself() {
    let mut rng = Rng::new(4);
    let params = Conv2dParams::default().with_stride(2).with_padding(1).with_groups(2);
    let conv = Conv2d::with_config(
        4,
        6,
        (3, 3),
        Conv2dConfig { params, bias: false, ..Default::default() },
        &mut rng,
    )
    .unwrap();
    let pool = PoolParams::new(3).with_stride(2).with_padding(1).with_count_include_pad(false);
    let bn = BatchNorm2d::with_config(6, BatchNormConfig { eps: 1e-3, momentum: 0.2 }).unwrap();
    let model = Sequential::new()
        .push_named("conv", conv)
        .push_named("bn", bn)
        .push(ReLU)
        .push(MaxPool2d(pool))
        .push(AvgPool2d(pool))
        .push(Residual::new(Tanh))
        .push(GlobalAvgPool2d)
        .push(Flatten)
        .push(Dropout::new(0.25, 0).unwrap())
        .push(Sigmoid)
        .push(Linear::new(6, 2, &mut rng).unwrap())
        .push(Custom);
    let Layer::Sequential(children) = model.describe() else { panic!("not a Sequential") };
    let kinds: Vec<(&str, &str)> =
        children.iter().map(|(name, m)| (*name, m.describe().kind())).collect();
    assert_eq!(
        kinds,
        [
            ("conv", "Conv2d"),
            ("bn", "BatchNorm2d"),
            ("2", "ReLU"),
            ("3", "MaxPool2d"),
            ("4", "AvgPool2d"),
            ("5", "Residual"),
            ("6", "GlobalAvgPool2d"),
            ("7", "Flatten"),
            ("8", "Dropout"),
            ("9", "Sigmoid"),
            ("10", "Linear"),
            ("11", "describe_residual_pool::Custom"),
        ]
    );
    match children[0].1.describe() {
        Layer::Conv2d { weight, bias, params: p, .. } => {
            assert_eq!(weight.dims(), [6, 2, 3, 3]);
            assert!(bias.is_none());
            assert_eq!(p, params);
        }
        other => panic!("{other:?}"),
    }
    match children[1].1.describe() {
        Layer::BatchNorm2d { running_var, eps, momentum, .. } => {
            assert_eq!(running_var.dims(), [6]);
            assert_eq!((eps, momentum), (1e-3, 0.2));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(children[3].1.describe(), Layer::MaxPool2d(p) if p == pool));
    assert!(matches!(children[4].1.describe(), Layer::AvgPool2d(p) if !p.count_include_pad));
    match children[5].1.describe() {
        Layer::Residual { body, shortcut } => {
            assert_eq!(body.describe().kind(), "Tanh");
            assert!(shortcut.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(children[8].1.describe(), Layer::Dropout { p } if p == 0.25));
    match children[10].1.describe() {
        Layer::Linear { weight, bias } => {
            assert_eq!(weight.dims(), [2, 6]);
            assert_eq!(bias.map(|b| b.dims()), Some(vec![2]));
        }
        other => panic!("{other:?}"),
    }
    // Debug prints the tree with dims, not the values.
    let debug = format!("{:?}", model.describe());
    assert!(debug.contains("\"conv\": Conv2d { weight: [6, 2, 3, 3]"), "{debug}");
}

#[test]
fn conv_from_tensors_checks_shapes() {
    let w = Tensor::ones(&[4, 1, 3, 3]);
    let conv = Conv2d::from_tensors(w.clone(), Some(Tensor::zeros(&[4])), Conv2dParams::default())
        .unwrap();
    assert!(conv.cfg.bias);
    let x = Var::constant(Tensor::ones(&[1, 1, 3, 3]));
    assert_eq!(conv.forward(&x).unwrap().value().as_slice(), &[9.0; 4]);
    assert!(
        Conv2d::from_tensors(w.clone(), Some(Tensor::zeros(&[3])), Conv2dParams::default())
            .is_err()
    );
    assert!(Conv2d::from_tensors(Tensor::ones(&[4, 9]), None, Conv2dParams::default()).is_err());
    assert!(Conv2d::from_tensors(w, None, Conv2dParams::default().with_groups(3)).is_err());
}
