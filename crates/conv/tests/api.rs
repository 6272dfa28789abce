//! The Tensor API: results equal the slice kernels, and errors name the shapes.
#![allow(clippy::unwrap_used)]

mod common;

use convkit_conv::api::{self, GradsWanted};
use convkit_conv::{Conv2dParams, ConvAlgo, ConvError, ConvGeometry, PoolParams, supports};
use convkit_tensor::Tensor;

fn t(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(dims, common::data(dims.iter().product(), seed)).unwrap()
}

#[test]
fn conv2d_and_backward_through_tensors() {
    let p = Conv2dParams::default().with_padding(1).with_stride(2);
    let (x, w, b) = (t(&[2, 4, 9, 7], 1), t(&[6, 4, 3, 3], 2), t(&[6], 3));
    let (out, ran) = api::conv2d(&x, &w, Some(&b), &p, ConvAlgo::Auto).unwrap();
    assert_eq!(out.dims(), [2, 6, 5, 4]);
    let g0 = ConvGeometry::new([2, 4, 9, 7], [6, 4, 3, 3], p).unwrap();
    assert_eq!(ran, convkit_conv::resolve(ConvAlgo::Auto, &g0).unwrap(), "the algorithm that ran");
    assert_ne!(ran, ConvAlgo::Auto);
    let (reference, ran) = api::conv2d(&x, &w, Some(&b), &p, ConvAlgo::Naive).unwrap();
    assert_eq!(ran, ConvAlgo::Naive);
    let g = ConvGeometry::new([2, 4, 9, 7], [6, 4, 3, 3], p).unwrap();
    let tol = common::sum_tolerance(convkit_conv::testing::tolerance::F32_SUM, 37, 1.0);
    tol.check(out.as_slice(), reference.as_slice()).unwrap();

    let dy = t(&g.output_dims(), 4);
    let grads = api::conv2d_backward(&x, &w, &dy, &p, GradsWanted::ALL, ConvAlgo::Im2col).unwrap();
    assert_eq!(grads.input.unwrap().dims(), [2, 4, 9, 7]);
    assert_eq!(grads.weight.unwrap().dims(), [6, 4, 3, 3]);
    assert_eq!(grads.bias.unwrap().dims(), [6]);
    let only_w = GradsWanted { input: false, weight: true, bias: false };
    let grads = api::conv2d_backward(&x, &w, &dy, &p, only_w, ConvAlgo::Auto).unwrap();
    assert!(grads.input.is_none() && grads.weight.is_some() && grads.bias.is_none());
}

fn err<T: std::fmt::Debug>(r: Result<T, ConvError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn conv_errors_name_shapes() {
    let p = Conv2dParams::default();
    let (x, w) = (t(&[64, 3, 32, 32], 1), t(&[6, 1, 5, 5], 2));
    assert_eq!(
        err(api::conv2d(&x, &w, None, &p, ConvAlgo::Auto)),
        "conv2d: weight [6, 1, 5, 5] with groups = 1 needs 1 input channel, input has [64, 3, 32, 32]"
    );
    let x3 = t(&[3, 32, 32], 1);
    assert_eq!(
        err(api::conv2d(&x3, &w, None, &p, ConvAlgo::Auto)),
        "conv2d: input must be rank 4 [n, c_in, h, w], got [3, 32, 32]"
    );
    let x1 = t(&[2, 1, 32, 32], 1);
    let e = err(api::conv2d(&x1, &w, Some(&t(&[5], 0)), &p, ConvAlgo::Auto));
    assert_eq!(e, "conv2d: bias [5] must be [6] for weight [6, 1, 5, 5]");
    let e = err(api::conv2d(&x1, &w, None, &p.with_stride(0), ConvAlgo::Auto));
    assert_eq!(e, "conv2d: invalid parameter: stride must be at least 1, got (0, 0)");
    let e = err(api::conv2d(&t(&[1, 1, 3, 3], 0), &w, None, &p, ConvAlgo::Im2col));
    assert!(e.contains("larger than the padded input") && e.contains("[1, 1, 3, 3]"), "{e}");
    let e = err(api::conv2d(
        &t(&[1, 4, 8, 8], 0),
        &t(&[6, 2, 3, 3], 0),
        None,
        &p.with_groups(4),
        ConvAlgo::Auto,
    ));
    assert!(e.contains("groups = 4") && e.contains("[6, 2, 3, 3]"), "{e}");

    let dy = t(&[2, 6, 27, 27], 0);
    let e = api::conv2d_backward(&x1, &w, &dy, &p, GradsWanted::ALL, ConvAlgo::Auto).unwrap_err();
    assert_eq!(
        e.to_string(),
        "conv2d_backward: grad_output [2, 6, 27, 27] must be [2, 6, 28, 28], the output of input [2, 1, 32, 32] and weight [6, 1, 5, 5]"
    );
}

#[test]
fn forcing_an_unsupported_algorithm_is_an_error() {
    let p = Conv2dParams::default();
    let (x, w) = (t(&[1, 2, 8, 8], 1), t(&[3, 2, 5, 5], 2));
    let g = ConvGeometry::new([1, 2, 8, 8], [3, 2, 5, 5], p).unwrap();
    for algo in ConvAlgo::ALL {
        let r = api::conv2d(&x, &w, None, &p, algo);
        if supports(algo, &g) {
            assert!(r.is_ok(), "{algo}");
        } else {
            let e = r.unwrap_err();
            assert!(matches!(e, ConvError::Unsupported { .. }), "{algo}: {e}");
            assert!(e.to_string().contains("[3, 2, 5, 5]"), "{e}");
        }
    }
}

#[test]
fn pool_through_tensors() {
    let x = Tensor::from_vec(&[1, 1, 2, 4], vec![1., 2., 3., 4., 5., 6., 7., 8.]).unwrap();
    let p = PoolParams::new(2);
    let m = api::max_pool2d(&x, &p).unwrap();
    assert_eq!(m.output.dims(), [1, 1, 1, 2]);
    assert_eq!(m.output.as_slice(), [6., 8.]);
    assert_eq!(m.indices, [5, 7]);
    let dy = Tensor::from_vec(&[1, 1, 1, 2], vec![1., 2.]).unwrap();
    let gx = api::max_pool2d_backward(&dy, &m.indices, x.dims(), &p).unwrap();
    assert_eq!(gx.as_slice(), [0., 0., 0., 0., 0., 1., 0., 2.]);
    let a = api::avg_pool2d(&x, &p).unwrap();
    assert_eq!(a.as_slice(), [3.5, 5.5]);
    let gx = api::avg_pool2d_backward(&dy, x.dims(), &p).unwrap();
    assert_eq!(gx.as_slice(), [0.25, 0.25, 0.5, 0.5, 0.25, 0.25, 0.5, 0.5]);
}

#[test]
fn pool_errors_name_shapes() {
    let p = PoolParams::new(2);
    let e = err(api::avg_pool2d(&t(&[4, 4], 0), &p));
    assert_eq!(e, "avg_pool2d: input must be rank 4 [n, c, h, w], got [4, 4]");
    let e = api::max_pool2d(&t(&[1, 1, 1, 1], 0), &p).unwrap_err().to_string();
    assert!(
        e.starts_with("max_pool2d: kernel (2, 2) is larger") && e.contains("[1, 1, 1, 1]"),
        "{e}"
    );
    let e = err(api::avg_pool2d(&t(&[1, 1, 4, 4], 0), &PoolParams::new(2).with_padding(2)));
    assert_eq!(
        e,
        "avg_pool2d: invalid parameter: padding (2, 2) must be at most half the kernel (2, 2)"
    );
    let e = err(api::avg_pool2d_backward(&t(&[1, 1, 3, 2], 0), &[1, 1, 4, 4], &p));
    assert_eq!(
        e,
        "avg_pool2d_backward: grad_output [1, 1, 3, 2] must be [1, 1, 2, 2], the pooled size of input [1, 1, 4, 4]"
    );
    let e = err(api::max_pool2d_backward(&t(&[1, 1, 2, 2], 0), &[0, 1, 2], &[1, 1, 4, 4], &p));
    assert!(e.contains("indices has 3 elements"), "{e}");
}
