//! End-to-end learning through the tape: a two-layer network learns XOR.
#![allow(clippy::unwrap_used)]

use convkit_autograd::{Param, Tape, Var};
use convkit_tensor::{Rng, Tensor};

#[test]
fn two_layer_network_learns_xor() {
    let mut rng = Rng::new(42);
    let w1 = Param::new(Tensor::rand_uniform(&[8, 2], -1.0, 1.0, &mut rng).unwrap());
    let b1 = Param::new(Tensor::zeros(&[8]));
    let w2 = Param::new(Tensor::rand_uniform(&[2, 8], -1.0, 1.0, &mut rng).unwrap());
    let b2 = Param::new(Tensor::zeros(&[2]));
    let params = [&w1, &b1, &w2, &b2];
    let x = Var::constant(Tensor::from_vec(&[4, 2], vec![0., 0., 0., 1., 1., 0., 1., 1.]).unwrap());
    let labels = [0, 1, 1, 0];
    let mut last = f32::INFINITY;
    for _ in 0..2000 {
        let tape = Tape::new();
        let h = x.linear(&tape.param(&w1), Some(&tape.param(&b1))).unwrap().tanh();
        let logits = h.linear(&tape.param(&w2), Some(&tape.param(&b2))).unwrap();
        let loss = logits.cross_entropy(&labels).unwrap();
        last = loss.value().item().unwrap();
        loss.backward().unwrap();
        for p in params {
            p.update(|v, g| v.axpy(-0.5, g.unwrap()).unwrap());
            p.zero_grad();
        }
    }
    assert!(last < 0.05, "loss {last}");
    // Inference on constants records nothing and predicts every XOR case.
    let w = |p: &Param| Var::constant(p.value());
    let h = x.linear(&w(&w1), Some(&w(&b1))).unwrap().tanh();
    let logits = h.linear(&w(&w2), Some(&w(&b2))).unwrap();
    assert!(!logits.requires_grad());
    assert_eq!(logits.value().argmax_axis(1).unwrap(), labels);
}
