//! A small, seeded, portable random number generator.
//!
//! [`Rng`] is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", 2014; the constants of Vigna's reference `splitmix64.c`). Its whole state is
//! one `u64`, each step is a handful of wrapping integer operations, and the output passes
//! BigCrush — more than enough for weight initialisation, shuffling and dropout masks.
//!
//! **Reproducible everywhere.** Integer outputs are defined by wrapping `u64` arithmetic.
//! Floats are built from the top bits of one output (24 bits for `f32`, 53 for `f64`), exact
//! on every platform. Normal samples use the Marsaglia polar form of Box–Muller, which needs
//! only `sqrt` (correctly rounded by IEEE 754) and a logarithm; the logarithm is computed here
//! with plain `f64` additions, multiplications and divisions ([`portable_ln`]) instead of the
//! platform's `libm`, whose last bit differs between systems. So the same seed gives the same
//! numbers, bit for bit, on every platform.
//!
//! ```
//! use convkit_tensor::{Rng, Tensor};
//! let mut rng = Rng::new(42);
//! let w = Tensor::rand_normal(&[6, 1, 5, 5], 0.0, 0.1, &mut rng)?;
//! let again = Tensor::rand_normal(&[6, 1, 5, 5], 0.0, 0.1, &mut Rng::new(42))?;
//! assert_eq!(w, again);
//! # Ok::<(), convkit_tensor::TensorError>(())
//! ```

use crate::error::{Result, TensorError};
use crate::tensor::Tensor;

/// The SplitMix64 increment (the golden ratio in 64-bit fixed point).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A seeded SplitMix64 generator; see the [module docs](self) for the algorithm and the
/// reproducibility guarantee.
///
/// ```
/// use convkit_tensor::Rng;
/// let mut a = Rng::new(7);
/// let mut b = Rng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.next_f32();
/// assert!((0.0..1.0).contains(&u));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Rng {
    state: u64,
    /// The second value of the last polar Box–Muller pair, handed out by the next `normal`.
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator seeded with `seed`. Every seed, including 0, is fine.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    /// ```
    pub fn new(seed: u64) -> Self {
        Self { state: seed, spare_normal: None }
    }

    /// The next 64 random bits.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// let mut rng = Rng::new(1);
    /// assert_ne!(rng.next_u64(), rng.next_u64());
    /// ```
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform `f32` in `[0, 1)`: the top 24 bits of one output, scaled by 2⁻²⁴.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// assert!((0.0..1.0).contains(&Rng::new(3).next_f32()));
    /// ```
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// A uniform `f64` in `[0, 1)`: the top 53 bits of one output, scaled by 2⁻⁵³.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// assert!((0.0..1.0).contains(&Rng::new(3).next_f64()));
    /// ```
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n`, without modulo bias (Lemire's multiply-and-reject).
    /// Returns 0 when `n` is 0.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// let mut rng = Rng::new(1);
    /// assert!(rng.below(10) < 10);
    /// ```
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let n = n as u64;
        // The low half of x*n is uniform except for the first 2^64 mod n values; reject those.
        let threshold = n.wrapping_neg() % n;
        loop {
            let wide = u128::from(self.next_u64()) * u128::from(n);
            if (wide as u64) >= threshold {
                return (wide >> 64) as usize;
            }
        }
    }

    /// A new generator seeded from this one's next output, for an independent stream (one per
    /// layer, one for shuffling, …) that does not shift the other streams when one of them
    /// draws more numbers.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// let mut root = Rng::new(0);
    /// let mut init = root.split();
    /// let mut shuffle = root.split();
    /// assert_ne!(init.next_u64(), shuffle.next_u64());
    /// ```
    pub fn split(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    /// Shuffles a slice in place (Fisher–Yates, from the last element down).
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// let mut order: Vec<usize> = (0..10).collect();
    /// Rng::new(3).shuffle(&mut order);
    /// let mut sorted = order.clone();
    /// sorted.sort();
    /// assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    /// ```
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// A standard normal sample (mean 0, standard deviation 1), by the polar Box–Muller
    /// method: draw `(u, v)` uniform in the square `(-1, 1)²` until `0 < s = u² + v² < 1`, then
    /// `u·√(−2 ln s / s)` and `v·√(−2 ln s / s)` are two independent normals. The second one is
    /// kept for the next call.
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// let mut rng = Rng::new(42);
    /// let z = rng.normal();
    /// assert!(z.is_finite());
    /// ```
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.next_f64() - 1.0;
            let v = 2.0 * self.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let factor = (-2.0 * portable_ln(s) / s).sqrt();
                self.spare_normal = Some(v * factor);
                return u * factor;
            }
        }
    }

    /// A uniform `f32` in `[low, high)` (as `low + (high − low)·u`, computed in `f64`;
    /// `high` itself can appear only through rounding to `f32`).
    ///
    /// ```
    /// use convkit_tensor::Rng;
    /// let x = Rng::new(5).uniform(-0.5, 0.5);
    /// assert!((-0.5..=0.5).contains(&x));
    /// ```
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        let (low, high) = (f64::from(low), f64::from(high));
        (low + (high - low) * self.next_f64()) as f32
    }
}

/// Natural logarithm of a positive, finite, normal `f64`, using only `+ − × ÷` so the result is
/// the same on every platform (the platform `ln` comes from its `libm`, which may differ in the
/// last bit). Write `x = 2^e · m` with `m ∈ [√½, √2)`, then
/// `ln x = e·ln 2 + 2·atanh(t)` with `t = (m − 1)/(m + 1)`, `|t| < 0.172`, and the atanh series
/// summed to `t²³`, whose first omitted term is below 10⁻¹⁹. Accurate to a few ulps.
///
/// Used by [`Rng::normal`]; public so tests elsewhere can pin it.
///
/// ```
/// use convkit_tensor::rng::portable_ln;
/// assert!((portable_ln(10.0) - 10f64.ln()).abs() < 1e-14);
/// ```
pub fn portable_ln(x: f64) -> f64 {
    if !(x.is_finite() && x >= f64::MIN_POSITIVE) {
        // Outside the range the generator needs; fall back to the platform for completeness.
        return x.ln();
    }
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    // Horner form of t·(1 + t²/3 + t⁴/5 + … + t²²/23).
    let mut series = 0.0;
    for k in (0..12).rev() {
        series = series * t2 + 1.0 / (2 * k + 1) as f64;
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * t * series
}

impl Tensor {
    /// A tensor of uniform samples in `[low, high)` drawn from `rng` in row-major order (see
    /// [`Rng::uniform`]: `high` can appear only by rounding). Errors when a bound is not
    /// finite or `low > high`.
    ///
    /// ```
    /// use convkit_tensor::{Rng, Tensor};
    /// let t = Tensor::rand_uniform(&[2, 3], -1.0, 1.0, &mut Rng::new(0))?;
    /// assert!(t.as_slice().iter().all(|v| (-1.0..=1.0).contains(v)));
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn rand_uniform(dims: &[usize], low: f32, high: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(low.is_finite() && high.is_finite() && low <= high) {
            return Err(TensorError::invalid(
                "rand_uniform",
                dims,
                format!("bounds must be finite with low <= high, got [{low}, {high})"),
            ));
        }
        let n = crate::tensor::checked_numel("rand_uniform", dims)?;
        let data = (0..n).map(|_| rng.uniform(low, high)).collect();
        Tensor::from_vec(dims, data)
    }

    /// A tensor of normal samples with the given mean and standard deviation, drawn from `rng`
    /// in row-major order. Errors when `mean` or `std` is not finite or `std < 0`.
    ///
    /// ```
    /// use convkit_tensor::{Rng, Tensor};
    /// let t = Tensor::rand_normal(&[1000], 2.0, 0.5, &mut Rng::new(9))?;
    /// assert!((t.mean() - 2.0).abs() < 0.1);
    /// # Ok::<(), convkit_tensor::TensorError>(())
    /// ```
    pub fn rand_normal(dims: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
            return Err(TensorError::invalid(
                "rand_normal",
                dims,
                format!("needs finite mean and std >= 0, got mean {mean}, std {std}"),
            ));
        }
        let n = crate::tensor::checked_numel("rand_normal", dims)?;
        let (mean, std) = (f64::from(mean), f64::from(std));
        let data = (0..n).map(|_| (mean + std * rng.normal()) as f32).collect();
        Tensor::from_vec(dims, data)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs of Vigna's splitmix64.c seeded with 0.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn pinned_floats_and_normals() {
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_f32().to_bits(), PINNED_F32[0]);
        assert_eq!(rng.next_f32().to_bits(), PINNED_F32[1]);
        let mut rng = Rng::new(42);
        let got: Vec<u64> = (0..4).map(|_| rng.normal().to_bits()).collect();
        assert_eq!(got, PINNED_NORMAL);
    }

    /// `next_f32` of seed 0: 0.8833108, 0.43152797 (the top 24 bits of the outputs above).
    const PINNED_F32: [u32; 2] = [0x3f62_20a8, 0x3edc_f13c];
    /// `normal` of seed 42: 0.49295065581737485, -0.6940056672160174, -1.2810773478777024,
    /// -0.901557193497174. Bit patterns, so any platform difference shows.
    const PINNED_NORMAL: [u64; 4] = [
        0x3fdf_8c80_e851_c08c,
        0xbfe6_354b_5f7d_ce79,
        0xbff4_7f4a_f60c_7f94,
        0xbfec_d98e_78b1_67ae,
    ];

    #[test]
    fn portable_ln_matches_std() {
        let mut rng = Rng::new(5);
        for _ in 0..10_000 {
            let x = rng.next_f64() + 1e-300;
            let (a, b) = (portable_ln(x), x.ln());
            assert!((a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1.0), "{x}: {a} vs {b}");
        }
        assert_eq!(portable_ln(1.0), 0.0);
    }

    #[test]
    fn normal_moments() {
        let mut rng = Rng::new(11);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut rng = Rng::new(2);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut rng = Rng::new(0);
        let e = Tensor::rand_uniform(&[2], 1.0, 0.0, &mut rng).unwrap_err();
        assert!(e.to_string().contains("rand_uniform") && e.to_string().contains("[2]"));
        assert!(Tensor::rand_normal(&[2], 0.0, -1.0, &mut rng).is_err());
        assert!(Tensor::rand_normal(&[2], f32::NAN, 1.0, &mut rng).is_err());
    }
}
