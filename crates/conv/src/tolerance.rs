//! Each algorithm's tolerance against the f64 reference, written down once, and the error
//! figure the documentation quotes.
//!
//! The rule and its type are convkit-tensor's [`Tolerance`]: a value `x` matches the reference
//! `y` when `|x − y| ≤ atol + rtol·|y|` (NumPy's `allclose`). Because the output of a
//! convolution is a sum of `C/g·R·S` products, the absolute error of an f32 algorithm grows with
//! that sum's size and with the magnitude of its terms, not with the output's value (which may
//! cancel to ~0); [`for_sum`] therefore scales `atol` with the sum of absolute products, bounded
//! from the operands. The presets serve this workspace's tests (feature `testing`, as
//! `convkit_conv::testing::tolerance`).

use convkit_tensor::testing::Tolerance;

/// Direct and im2col: f32 sums in a different order than the reference. The rounding error
/// of a sum of `n` terms is at most about `n·ε·Σ|terms|` and typically `√n·ε·Σ|terms|`;
/// `1e-5` relative (≈ 84 ε) holds with margin for the sizes in the tests.
pub const F32_SUM: Tolerance = Tolerance::new(1e-5, 1e-5);

/// Winograd F(2x2,3x3): the transforms add and subtract up to 4 terms per element on each
/// side, a few ulps more than a plain sum.
pub const WINOGRAD_F2: Tolerance = Tolerance::new(5e-5, 5e-5);

/// Winograd F(4x4,3x3): the transform matrices hold 1/4, 1/6, 1/24 and entries up to 8,
/// which amplify rounding error by about an order of magnitude over a plain sum. Measured
/// (docs/convolution.md, section 4): max |error| / max |reference| is 8.0e-6 on `res3x3_28b8`
/// and 1.0e-5 on `vgg3x3_14` (against 4.1e-7 and 7.7e-7 for F(2x2,3x3)); `1e-4` relative to
/// the summed magnitude keeps a 10x margin over those, and thousands of random shapes pass.
pub const WINOGRAD_F4: Tolerance = Tolerance::new(1e-4, 1e-4);

/// `base` with `atol` scaled by `scale`, the magnitude of the summed terms, floored at 1
/// (absolute below 1, relative to the terms above).
pub fn for_sum(base: Tolerance, scale: f64) -> Tolerance {
    base.scale_atol(scale.max(1.0))
}

/// Largest relative error `max |x − y| / max |y|` of `got` against `reference`, the figure the
/// documentation quotes for each algorithm.
pub fn max_rel_error(got: &[f32], reference: &[f32]) -> f64 {
    let scale =
        reference.iter().fold(0f64, |m, &y| m.max(f64::from(y).abs())).max(f64::MIN_POSITIVE);
    let diff = got
        .iter()
        .zip(reference)
        .fold(0f64, |m, (&x, &y)| m.max((f64::from(x) - f64::from(y)).abs()));
    diff / scale
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presets_scale_and_error_figure() {
        assert_eq!(for_sum(F32_SUM, 40.0), Tolerance::new(4e-4, 1e-5));
        assert_eq!(for_sum(WINOGRAD_F4, 0.5), WINOGRAD_F4, "the scale is floored at 1");
        assert!(for_sum(WINOGRAD_F2, 10.0).check(&[1.0, 100.0], &[1.0005f32, 100.0]).is_ok());
        assert!(F32_SUM.check(&[1.0, 100.0], &[1.0f32, 100.1]).is_err());
        assert_eq!(max_rel_error(&[1.0, 2.0], &[1.0, 4.0]), 0.5);
    }
}
