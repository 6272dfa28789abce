//! Tolerances of the fast algorithms against the f64 reference, defined once.
//!
//! A value `x` matches the reference `y` when `|x − y| ≤ atol + rtol·|y|` (the rule of
//! NumPy's `allclose`). Because the output of a convolution is a sum of `C/g·R·S` products, the
//! absolute error of an f32 algorithm grows with that sum's size and with the magnitude of its
//! terms, not with the output's value (which may cancel to ~0). [`Tolerance::for_sum`] therefore
//! scales `atol` with the sum of absolute products, bounded from the operands.

/// An `allclose`-style tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

impl Tolerance {
    /// Direct and im2col: f32 sums in a different order than the reference. The rounding error
    /// of a sum of `n` terms is at most about `n·ε·Σ|terms|` and typically `√n·ε·Σ|terms|`;
    /// `1e-5` relative (≈ 84 ε) holds with margin for the sizes in the tests.
    pub const F32_SUM: Tolerance = Tolerance { atol: 1e-5, rtol: 1e-5 };
    /// Winograd F(2x2,3x3): the transforms add and subtract up to 4 terms per element on each
    /// side, a few ulps more than a plain sum.
    pub const WINOGRAD_F2: Tolerance = Tolerance { atol: 5e-5, rtol: 5e-5 };
    /// Winograd F(4x4,3x3): the transform matrices hold 1/4, 1/6, 1/24 and entries up to 8,
    /// which amplify rounding error by about an order of magnitude over a plain sum. Measured
    /// (`winograd` module docs): max |error| / max |reference| is 8.0e-6 on `res3x3_28b8` and
    /// 1.0e-5 on `vgg3x3_14` (against 4.1e-7 and 7.7e-7 for F(2x2,3x3)); `1e-4` relative to the
    /// summed magnitude keeps a 10x margin over those, and thousands of random shapes pass.
    pub const WINOGRAD_F4: Tolerance = Tolerance { atol: 1e-4, rtol: 1e-4 };

    /// Returns the tolerance with `atol` scaled by `scale` (the magnitude of the summed terms).
    pub fn for_sum(self, scale: f64) -> Tolerance {
        Tolerance { atol: self.atol * scale.max(1.0), rtol: self.rtol }
    }

    /// Whether `x` is close enough to the reference `y`.
    pub fn close(&self, x: f64, y: f64) -> bool {
        (x - y).abs() <= self.atol + self.rtol * y.abs()
    }

    /// Compares two buffers, returning the index and values of the first mismatch.
    pub fn check(&self, got: &[f32], reference: &[f32]) -> Result<(), String> {
        if got.len() != reference.len() {
            return Err(format!("length {} vs reference {}", got.len(), reference.len()));
        }
        for (i, (&x, &y)) in got.iter().zip(reference).enumerate() {
            if !self.close(f64::from(x), f64::from(y)) || x.is_nan() != y.is_nan() {
                return Err(format!(
                    "element {i}: got {x}, reference {y} (|diff| {:e} > atol {:e} + rtol {:e}·|ref|)",
                    (f64::from(x) - f64::from(y)).abs(),
                    self.atol,
                    self.rtol
                ));
            }
        }
        Ok(())
    }
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
    fn close_and_check() {
        let t = Tolerance { atol: 0.1, rtol: 0.01 };
        assert!(t.close(1.0, 1.1));
        assert!(!t.close(1.0, 1.2));
        assert!(t.check(&[1.0, 100.0], &[1.05, 101.0]).is_ok());
        let e = t.check(&[1.0, 100.0], &[1.05, 102.0]).unwrap_err();
        assert!(e.starts_with("element 1"), "{e}");
        assert!(t.check(&[f32::NAN], &[0.0]).is_err());
        assert_eq!(max_rel_error(&[1.0, 2.0], &[1.0, 4.0]), 0.5);
    }
}
