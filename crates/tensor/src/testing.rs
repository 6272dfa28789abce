//! Test support for convkit's tests and for users' tests of code built on convkit: one
//! tolerance rule with an assertion that says what failed, and seeded random data.
//!
//! ## The rule
//! A value `got` matches the reference `want` when
//!
//! `|got − want| ≤ atol + rtol·|want|`
//!
//! (the rule of NumPy's `allclose`), computed in `f64`, so that an `f32` result can be held
//! against an `f64` reference (PyTorch's float64, a naive f64 loop) without rounding the
//! reference first. NaN matches nothing, not even NaN, and neither does an infinity: a
//! result that has gone non-finite always fails.
//!
//! The error of a sum grows with the magnitude of its terms rather than with its value, which
//! may cancel to about 0. Two forms cover that:
//! - [`Tolerance::scale_atol`] multiplies `atol` by one scale for the whole buffer, such as the
//!   largest `|want|` ([`max_abs`]), floored by the caller;
//! - [`assert_close_with_magnitude`] takes a magnitude per element (for a dot product,
//!   `Σ|aᵢ·bᵢ|`) and uses it in place of `|want|` in the relative part.
//!
//! convkit-conv's tolerance for each convolution algorithm (`F32_SUM`, `WINOGRAD_F4`, …) is a
//! value of this type (`convkit_conv::testing::tolerance`), and its `for_sum(tol, scale)` is
//! `tol.scale_atol(scale.max(1.0))`.
//!
//! ## Failing loudly
//! [`assert_close`] panics on the first element outside the tolerance with a message that
//! names what was compared, the index, both values, the difference and the rule:
//!
//! ```text
//! grad w: element 3: got 0.5000100135803223, want 0.5: |got − want| = 1.001e-5 > 6.000e-6 = atol 1.0e-6 + rtol 1.0e-5·|want|
//! ```
//!
//! When every element passes it returns a [`Closeness`], the figures a test may print
//! (`cargo test -- --nocapture`) to show how much of its tolerance it used.
//! [`Tolerance::check`] is the same comparison returning a `Result` instead of panicking.
//!
//! ## Random data
//! [`random_vec`] and [`random_tensor`] draw uniform values from the library's [`Rng`]
//! (SplitMix64), so a test's data is the same for a seed on every platform. Pass
//! `&mut Rng::new(seed)` for one buffer from a seed, or one generator for several.
//!
//! ## Example
//! ```
//! use convkit_tensor::testing::{Tolerance, assert_close, max_abs, random_vec};
//! use convkit_tensor::Rng;
//!
//! let x = random_vec(100, -1.0, 1.0, &mut Rng::new(7));
//! let sum: f32 = x.iter().sum();
//! let want: f64 = x.iter().map(|&v| f64::from(v)).sum();
//! // A sum of 100 f32 terms: a few hundred ulps of the largest term.
//! let tol = Tolerance::absolute(1e-5).scale_atol(max_abs(&x).max(1.0));
//! let report = assert_close("sum", &[sum], &[want], tol);
//! assert!(report.worst_fraction <= 1.0);
//! ```

use std::fmt;

use crate::rng::Rng;
use crate::tensor::Tensor;

/// An `allclose`-style tolerance: `|got − want| ≤ atol + rtol·|want|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part, a multiple of `|want|` (or of the magnitude given per element).
    pub rtol: f64,
}

impl Tolerance {
    /// The tolerance `atol + rtol·|want|`.
    pub const fn new(atol: f64, rtol: f64) -> Self {
        Self { atol, rtol }
    }

    /// A purely absolute tolerance: `|got − want| ≤ atol`.
    pub const fn absolute(atol: f64) -> Self {
        Self { atol, rtol: 0.0 }
    }

    /// The tolerance with `atol` multiplied by `scale`, the magnitude the absolute error grows
    /// with (the largest `|want|`, the size of the summed terms). No floor is applied: pass
    /// `scale.max(1.0)` for "absolute below 1, relative to the scale above".
    ///
    /// ```
    /// use convkit_tensor::testing::{Tolerance, max_abs};
    /// let want = [0.5f64, -40.0, 2.0];
    /// let tol = Tolerance::absolute(1e-5).scale_atol(max_abs(&want).max(1.0));
    /// assert_eq!(tol, Tolerance::absolute(1e-5 * 40.0));
    /// ```
    pub fn scale_atol(self, scale: f64) -> Self {
        Self { atol: self.atol * scale, rtol: self.rtol }
    }

    /// The largest difference allowed against a reference of magnitude `magnitude`
    /// (`atol + rtol·magnitude`).
    pub fn allowed(&self, magnitude: f64) -> f64 {
        self.atol + self.rtol * magnitude
    }

    /// Whether `got` is close enough to the reference `want`. False when either is NaN or
    /// infinite.
    ///
    /// ```
    /// use convkit_tensor::testing::Tolerance;
    /// let tol = Tolerance::new(0.1, 0.01);
    /// assert!(tol.close(1.0, 1.1));
    /// assert!(!tol.close(1.0, 1.2));
    /// assert!(!tol.close(f64::NAN, f64::NAN));
    /// ```
    pub fn close(&self, got: f64, want: f64) -> bool {
        (got - want).abs() <= self.allowed(want.abs())
    }

    /// Compares `got` with `want` element by element: the figures of the comparison, or the
    /// first element outside the tolerance (its index, both values, the difference and the
    /// rule) as the error.
    ///
    /// ```
    /// use convkit_tensor::testing::Tolerance;
    /// let tol = Tolerance::new(0.1, 0.01);
    /// assert!(tol.check(&[1.0, 100.0], &[1.05f32, 101.0]).is_ok());
    /// let err = tol.check(&[1.0, 100.0], &[1.05f32, 102.0]).unwrap_err();
    /// assert!(err.starts_with("element 1: got 100, want 102"), "{err}");
    /// ```
    pub fn check<W: Copy + Into<f64>>(&self, got: &[f32], want: &[W]) -> Result<Closeness, String> {
        self.compare(got, want, None)
    }

    /// [`check`](Self::check) with the relative part measured against `magnitude[i]` instead
    /// of `|want[i]|`: `|got − want| ≤ atol + rtol·magnitude`. For a sum, `magnitude` is the
    /// sum of the absolute terms, which bounds its rounding error even where the sum cancels.
    pub fn check_with_magnitude<W: Copy + Into<f64>>(
        &self,
        got: &[f32],
        want: &[W],
        magnitude: &[f64],
    ) -> Result<Closeness, String> {
        self.compare(got, want, Some(magnitude))
    }

    fn compare<W: Copy + Into<f64>>(
        &self,
        got: &[f32],
        want: &[W],
        magnitude: Option<&[f64]>,
    ) -> Result<Closeness, String> {
        if got.len() != want.len() {
            return Err(format!("got {} values, want {}", got.len(), want.len()));
        }
        if let Some(m) = magnitude
            && m.len() != want.len()
        {
            return Err(format!("{} magnitudes for {} values", m.len(), want.len()));
        }
        let mut report = Closeness { max_abs_diff: 0.0, worst_fraction: 0.0, worst_index: 0 };
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (f64::from(g), w.into());
            let m = magnitude.map_or(w.abs(), |m| m[i]);
            let diff = (g - w).abs();
            let allowed = self.allowed(m);
            // Incomparable (a NaN difference or a NaN bound) fails, as does greater.
            if diff.partial_cmp(&allowed).is_none_or(|o| o.is_gt()) {
                let rel = if magnitude.is_some() {
                    format!("magnitude {m:.3e}")
                } else {
                    "|want|".to_owned()
                };
                return Err(format!(
                    "element {i}: got {g}, want {w}: |got − want| = {diff:.3e} > {allowed:.3e} \
                     = atol {:.1e} + rtol {:.1e}·{rel}",
                    self.atol, self.rtol
                ));
            }
            let fraction = if diff == 0.0 { 0.0 } else { diff / allowed };
            report.max_abs_diff = report.max_abs_diff.max(diff);
            if fraction > report.worst_fraction {
                report.worst_fraction = fraction;
                report.worst_index = i;
            }
        }
        Ok(report)
    }
}

/// The figures of a comparison that passed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closeness {
    /// The largest `|got − want|`.
    pub max_abs_diff: f64,
    /// The largest `|got − want| / allowed`: the share of the tolerance used, at most 1.
    pub worst_fraction: f64,
    /// The element with that share (0 when every element is exact).
    pub worst_index: usize,
}

impl fmt::Display for Closeness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max |got − want| = {:.3e}; element {} uses {:.0}% of the tolerance",
            self.max_abs_diff,
            self.worst_index,
            self.worst_fraction * 100.0
        )
    }
}

/// Asserts that every `got[i]` is within `tol` of `want[i]` (see [`Tolerance::check`]) and
/// returns the figures of the comparison.
///
/// # Panics
/// On a length mismatch or the first element outside the tolerance, with a message that
/// starts with `what` and names the index, both values, the difference and the rule.
///
/// ```should_panic
/// use convkit_tensor::testing::{Tolerance, assert_close};
/// // panics: "logits: element 1: got 2.000999927520752, want 2: |got − want| = 9.999e-4 > …"
/// assert_close("logits", &[1.0, 2.001], &[1.0f32, 2.0], Tolerance::absolute(1e-4));
/// ```
#[track_caller]
pub fn assert_close<W: Copy + Into<f64>>(
    what: &str,
    got: &[f32],
    want: &[W],
    tol: Tolerance,
) -> Closeness {
    // A `match`, not `unwrap_or_else`: the panic then reports the caller's line.
    match tol.check(got, want) {
        Ok(report) => report,
        Err(msg) => panic!("{what}: {msg}"),
    }
}

/// Asserts `|got[i] − want[i]| ≤ atol + rtol·magnitude[i]` for every element (see
/// [`Tolerance::check_with_magnitude`]) and returns the figures of the comparison.
///
/// # Panics
/// As [`assert_close`], and when `magnitude` does not have one entry per value.
///
/// ```
/// use convkit_tensor::testing::{Tolerance, assert_close_with_magnitude};
/// // 1 + 1e8 − 1e8 in f32 loses the 1; the terms' magnitude, 2e8 + 1, bounds that error.
/// let (a, b, c) = (1.0f32, 1e8f32, -1e8f32);
/// let got = (a + b) + c;
/// let magnitude = [1.0 + 1e8 + 1e8];
/// let tol = Tolerance::new(0.0, 2.0 * f64::from(f32::EPSILON));
/// assert_close_with_magnitude("sum", &[got], &[1.0f64], &magnitude, tol);
/// ```
#[track_caller]
pub fn assert_close_with_magnitude<W: Copy + Into<f64>>(
    what: &str,
    got: &[f32],
    want: &[W],
    magnitude: &[f64],
    tol: Tolerance,
) -> Closeness {
    match tol.check_with_magnitude(got, want, magnitude) {
        Ok(report) => report,
        Err(msg) => panic!("{what}: {msg}"),
    }
}

/// The largest `|v|` of `values` (0 for none; NaN is skipped), a scale for
/// [`Tolerance::scale_atol`].
///
/// ```
/// assert_eq!(convkit_tensor::testing::max_abs(&[1.5f32, -3.0, 2.0]), 3.0);
/// ```
pub fn max_abs<W: Copy + Into<f64>>(values: &[W]) -> f64 {
    values.iter().fold(0.0, |m: f64, &v| m.max(v.into().abs()))
}

/// `len` values uniform in `[low, high)` drawn from `rng` (as [`Rng::uniform`]; the same
/// values as [`Tensor::rand_uniform`] of `len` elements from the same generator).
///
/// # Panics
/// When a bound is not finite or `low > high`.
///
/// ```
/// use convkit_tensor::{Rng, Tensor, testing::random_vec};
/// let v = random_vec(6, -1.0, 1.0, &mut Rng::new(3));
/// assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
/// assert_eq!(v, Tensor::rand_uniform(&[6], -1.0, 1.0, &mut Rng::new(3))?.as_slice());
/// # Ok::<(), convkit_tensor::TensorError>(())
/// ```
pub fn random_vec(len: usize, low: f32, high: f32, rng: &mut Rng) -> Vec<f32> {
    assert!(
        low.is_finite() && high.is_finite() && low <= high,
        "random_vec: bounds must be finite with low <= high, got [{low}, {high})"
    );
    (0..len).map(|_| rng.uniform(low, high)).collect()
}

/// A tensor of `dims` with values uniform in `[low, high)` drawn from `rng` in row-major
/// order: [`Tensor::rand_uniform`] for tests, which panics instead of returning an error.
///
/// # Panics
/// When a bound is not finite, `low > high`, or the element count overflows.
///
/// ```
/// use convkit_tensor::{Rng, testing::random_tensor};
/// let mut rng = Rng::new(1);
/// let a = random_tensor(&[2, 3], 0.0, 1.0, &mut rng);
/// let b = random_tensor(&[4], -2.0, 2.0, &mut rng);
/// assert_eq!((a.dims(), b.dims()), (&[2, 3][..], &[4][..]));
/// ```
pub fn random_tensor(dims: &[usize], low: f32, high: f32, rng: &mut Rng) -> Tensor {
    Tensor::rand_uniform(dims, low, high, rng).unwrap_or_else(|e| panic!("random_tensor: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_atol_plus_rtol_times_want() {
        let tol = Tolerance::new(1e-3, 1e-2);
        // Allowed at want = 10: 1e-3 + 1e-1.
        assert!(tol.close(10.1, 10.0));
        assert!(!tol.close(10.102, 10.0));
        assert!(tol.close(-10.1, -10.0), "symmetric in sign");
        assert!(!tol.close(f64::INFINITY, f64::INFINITY));
        assert!(!tol.close(0.0, f64::NAN));
    }

    #[test]
    fn a_mismatch_names_the_index_values_and_rule() {
        let tol = Tolerance::new(1e-6, 1e-5);
        let err = tol.check(&[0.5, 0.50001], &[0.5f64, 0.5]).unwrap_err();
        assert!(err.starts_with("element 1: got 0.5000100135803223, want 0.5: "), "{err}");
        assert!(err.contains("> 6.000e-6 = atol 1.0e-6 + rtol 1.0e-5·|want|"), "{err}");
        let err = tol.check_with_magnitude(&[3.0], &[0.0f64], &[2.0]).unwrap_err();
        assert!(err.ends_with("rtol 1.0e-5·magnitude 2.000e0"), "{err}");
        assert_eq!(tol.check(&[1.0], &[1.0f32, 2.0]).unwrap_err(), "got 1 values, want 2");
        assert!(tol.check_with_magnitude(&[1.0], &[1.0f32], &[]).is_err());
        assert!(tol.check(&[f32::NAN], &[f32::NAN]).is_err());
    }

    #[test]
    fn magnitude_replaces_want_in_the_relative_part() {
        let tol = Tolerance::new(0.0, 0.1);
        // want ≈ 0 after cancellation, terms of magnitude 10: 1.0 allowed.
        assert!(tol.check_with_magnitude(&[0.9], &[0.0f64], &[10.0]).is_ok());
        assert!(tol.check_with_magnitude(&[1.1], &[0.0f64], &[10.0]).is_err());
        assert!(tol.check(&[0.9], &[0.0f64]).is_err());
    }

    #[test]
    fn the_report_gives_the_share_of_the_tolerance_used() {
        let tol = Tolerance::absolute(0.5);
        let r = tol.check(&[1.0, 2.25, 3.0], &[1.0f32, 2.0, 3.125]).unwrap();
        assert_eq!(r, Closeness { max_abs_diff: 0.25, worst_fraction: 0.5, worst_index: 1 });
        assert_eq!(
            r.to_string(),
            "max |got − want| = 2.500e-1; element 1 uses 50% of the tolerance"
        );
        let exact = Tolerance::absolute(0.0).check(&[1.0], &[1.0f32]).unwrap();
        assert_eq!(exact.worst_fraction, 0.0);
    }

    #[test]
    #[should_panic(expected = "logits: element 0: got 1, want 2")]
    fn assert_close_panics_with_what() {
        assert_close("logits", &[1.0], &[2.0f32], Tolerance::absolute(0.5));
    }

    #[test]
    fn scale_atol_and_max_abs() {
        let want = [0.25f64, -8.0, f64::NAN];
        assert_eq!(max_abs(&want), 8.0);
        assert_eq!(max_abs::<f32>(&[]), 0.0);
        assert_eq!(Tolerance::new(1e-6, 1e-3).scale_atol(8.0), Tolerance::new(8e-6, 1e-3));
    }

    #[test]
    fn random_data_is_seeded_and_in_range() {
        let a = random_vec(1000, -0.5, 2.0, &mut Rng::new(11));
        assert_eq!(a, random_vec(1000, -0.5, 2.0, &mut Rng::new(11)));
        assert_ne!(a, random_vec(1000, -0.5, 2.0, &mut Rng::new(12)));
        assert!(a.iter().all(|v| (-0.5..=2.0).contains(v)));
        let t = random_tensor(&[10, 100], -0.5, 2.0, &mut Rng::new(11));
        assert_eq!(t.as_slice(), a.as_slice());
    }

    #[test]
    #[should_panic(expected = "random_vec: bounds must be finite")]
    fn random_vec_rejects_reversed_bounds() {
        random_vec(1, 1.0, 0.0, &mut Rng::new(0));
    }
}
