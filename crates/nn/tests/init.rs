//! Initialization statistics against PyTorch's formulas.
//!
//! `Conv2d(6, 16, 5)`: fan_in = 6·25 = 150, so weights and biases are `U(±1/√150)`, i.e.
//! bound 0.08165, mean 0 and standard deviation bound/√3 = 0.04714. `Linear(400, 120)`:
//! fan_in = 400, bound 0.05, standard deviation 0.02887.
#![allow(clippy::unwrap_used)]

use convkit_nn::init::{Init, fans};
use convkit_nn::{Conv2d, Linear};
use convkit_tensor::{Rng, Tensor};

/// Mean, standard deviation, min and max.
fn stats(t: &Tensor) -> (f64, f64, f64, f64) {
    let v = t.as_slice();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().fold(f64::INFINITY, |m, &x| m.min(f64::from(x)));
    let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    (mean, var.sqrt(), min, max)
}

/// Checks a uniform `U(±bound)` sample: inside the bounds, reaching close to them, and mean and
/// standard deviation within 4 standard errors of `0` and `bound/√3`.
fn assert_uniform(t: &Tensor, bound: f64, what: &str) {
    let (mean, std, min, max) = stats(t);
    let n = t.numel() as f64;
    let sd = bound / 3f64.sqrt();
    assert!(min >= -bound && max <= bound, "{what}: [{min}, {max}] outside ±{bound}");
    assert!(
        min < -0.9 * bound && max > 0.9 * bound,
        "{what}: [{min}, {max}] does not fill ±{bound}"
    );
    assert!(mean.abs() < 4.0 * sd / n.sqrt(), "{what}: mean {mean}");
    // For a uniform sample Var(s²) ≈ (μ₄ − σ⁴)/n = 0.8σ⁴/n, so the standard error of s is about
    // √0.8·σ/(2√n) ≈ 0.45σ/√n.
    assert!((std - sd).abs() < 4.0 * 0.45 * sd / n.sqrt(), "{what}: std {std}, expected {sd}");
}

#[test]
fn conv2d_default_init_matches_pytorch() {
    let mut rng = Rng::new(7);
    let c = Conv2d::new(6, 16, 5, &mut rng).unwrap();
    let bound = 1.0 / 150f64.sqrt();
    assert_uniform(&c.weight.value(), bound, "conv weight");
    let b = c.bias.unwrap().value();
    let (_, _, min, max) = stats(&b);
    assert!(min >= -bound && max <= bound, "conv bias [{min}, {max}]");
}

#[test]
fn linear_default_init_matches_pytorch() {
    let mut rng = Rng::new(8);
    let l = Linear::new(400, 120, &mut rng).unwrap();
    assert_uniform(&l.weight.value(), 0.05, "linear weight");
    let (_, _, min, max) = stats(&l.bias.unwrap().value());
    assert!(min >= -0.05 && max <= 0.05);
}

#[test]
fn variants_follow_their_formulas() {
    let dims = [120, 400];
    let (fi, fo) = fans(&dims);
    assert_eq!((fi, fo), (400, 120));
    assert_eq!(fans(&[16, 6, 5, 5]), (150, 400));
    let mut rng = Rng::new(9);
    assert_uniform(
        &Init::KaimingUniform.weight(&dims, &mut rng).unwrap(),
        (6.0 / 400f64).sqrt(),
        "kaiming uniform",
    );
    assert_uniform(
        &Init::XavierUniform.weight(&dims, &mut rng).unwrap(),
        (6.0 / 520f64).sqrt(),
        "xavier uniform",
    );
    for (init, sd) in
        [(Init::KaimingNormal, (2.0 / 400f64).sqrt()), (Init::XavierNormal, (2.0 / 520f64).sqrt())]
    {
        let (mean, std, _, _) = stats(&init.weight(&dims, &mut rng).unwrap());
        let n = 48_000f64;
        assert!(mean.abs() < 4.0 * sd / n.sqrt(), "{init:?}: mean {mean}");
        assert!(
            (std - sd).abs() < 4.0 * sd / (2.0 * n).sqrt(),
            "{init:?}: std {std}, expected {sd}"
        );
    }
    // Same seed, same weights.
    let a = Init::default().weight(&dims, &mut Rng::new(1)).unwrap();
    let b = Init::default().weight(&dims, &mut Rng::new(1)).unwrap();
    assert_eq!(a, b);
}
