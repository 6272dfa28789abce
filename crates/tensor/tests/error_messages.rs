//! Each kind of bad input through the public API gives an error that names the shapes.
#![allow(clippy::unwrap_used)]

use convkit_tensor::{Tensor, matmul_t};

fn msg<T: std::fmt::Debug>(r: convkit_tensor::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn wrong_length() {
    assert_eq!(
        msg(Tensor::from_vec(&[64, 1, 28, 28], vec![0.0; 784])),
        "from_vec: shape [64, 1, 28, 28] needs 50176 elements, got 784"
    );
}

#[test]
fn incompatible_broadcast() {
    let a = Tensor::zeros(&[64, 6, 28, 28]);
    let b = Tensor::zeros(&[16, 1, 1]);
    assert_eq!(
        msg(a.add(&b)),
        "add: incompatible shapes [64, 6, 28, 28] and [16, 1, 1]: axis 1 of the broadcast has \
         sizes 6 and 16"
    );
}

#[test]
fn matmul_inner_mismatch() {
    let x = Tensor::zeros(&[64, 400]);
    let w = Tensor::zeros(&[120, 84]);
    assert_eq!(
        msg(matmul_t(&x, false, &w, true)),
        "matmul: incompatible shapes [64, 400] and [120, 84]: inner sizes differ: 400 vs 84 \
         (trans_a=false, trans_b=true)"
    );
}

#[test]
fn bad_axis() {
    let x = Tensor::zeros(&[2, 10]);
    assert_eq!(msg(x.softmax(2)), "softmax: axis 2 out of range for rank 2 (tensor shape [2, 10])");
    assert!(msg(x.sum_axis(5, true)).contains("[2, 10]"));
    assert!(msg(x.narrow(3, 0, 1)).contains("[2, 10]"));
    assert!(msg(x.transpose(0, 2)).contains("[2, 10]"));
}

#[test]
fn bad_reshape_and_concat() {
    let x = Tensor::zeros(&[2, 10]);
    assert_eq!(
        msg(x.reshape(&[3, 7])),
        "reshape: incompatible shapes [2, 10] and [3, 7]: 20 elements cannot take a shape of 21"
    );
    assert_eq!(
        msg(Tensor::concat(&[&x, &Tensor::zeros(&[2, 9])], 0)),
        "concat: incompatible shapes [2, 10] and [2, 9]: all dims except axis 0 must match"
    );
}
