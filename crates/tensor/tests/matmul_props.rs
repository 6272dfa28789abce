//! Property tests: matmul against naive f64 loops, for every transpose combination, odd
//! sizes 1..=67, batched and broadcast forms.
#![allow(clippy::unwrap_used)]

use convkit_tensor::testing::{Tolerance, assert_close_with_magnitude, random_vec};
use convkit_tensor::{Rng, Tensor, gemm, matmul_t};
use proptest::prelude::*;

/// Logical element `(i, j)` of `op(t)` for a 2-D row-major matrix stored as `[r, c]`.
fn at(data: &[f32], cols: usize, trans: bool, i: usize, j: usize) -> f64 {
    f64::from(if trans { data[j * cols + i] } else { data[i * cols + j] })
}

/// Naive `op(a)·op(b)` in f64, plus for each output the sum of |terms| (for the tolerance).
#[allow(clippy::too_many_arguments)]
fn naive(
    a: &[f32],
    a_cols: usize,
    ta: bool,
    b: &[f32],
    b_cols: usize,
    tb: bool,
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut scale = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let t = at(a, a_cols, ta, i, p) * at(b, b_cols, tb, p, j);
                c[i * n + j] += t;
                scale[i * n + j] += t.abs();
            }
        }
    }
    (c, scale)
}

/// f32 sgemm error is bounded by about k·ε·Σ|aᵢₚ·bₚⱼ|; allow a factor of 2 over that, as
/// `1e-30 + 2kε·magnitude` with the magnitude `Σ|terms|` that [`naive`] returns per element.
fn sgemm(k: usize) -> Tolerance {
    Tolerance::new(1e-30, 2.0 * k as f64 * f64::from(f32::EPSILON))
}

fn stored(rows: usize, cols: usize, trans: bool) -> [usize; 2] {
    if trans { [cols, rows] } else { [rows, cols] }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matmul_2d_all_transposes(m in 1usize..=67, k in 1usize..=67, n in 1usize..=67, seed: u64) {
        let mut rng = Rng::new(seed);
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let ad = stored(m, k, ta);
            let bd = stored(k, n, tb);
            let a = Tensor::rand_uniform(&ad, -1.0, 1.0, &mut rng).unwrap();
            let b = Tensor::rand_uniform(&bd, -1.0, 1.0, &mut rng).unwrap();
            let c = matmul_t(&a, ta, &b, tb).unwrap();
            prop_assert_eq!(c.dims(), &[m, n]);
            let (want, scale) = naive(a.as_slice(), ad[1], ta, b.as_slice(), bd[1], tb, m, k, n);
            let what = format!("[{m}, {k}]·[{k}, {n}], transposes {ta} {tb}");
            assert_close_with_magnitude(&what, c.as_slice(), &want, &scale, sgemm(k));
        }
    }

    #[test]
    fn matmul_batched_and_broadcast(
        batch in 1usize..=5,
        m in 1usize..=19,
        k in 1usize..=19,
        n in 1usize..=19,
        ta: bool,
        tb: bool,
        form in 0usize..3,
        seed: u64,
    ) {
        // form 0: both batched; 1: rhs shared (2-D); 2: lhs shared (2-D).
        let mut rng = Rng::new(seed);
        let (a_batched, b_batched) = [(true, true), (true, false), (false, true)][form];
        let ad = stored(m, k, ta);
        let bd = stored(k, n, tb);
        let a_dims: Vec<usize> = if a_batched { vec![batch, ad[0], ad[1]] } else { ad.to_vec() };
        let b_dims: Vec<usize> = if b_batched { vec![batch, bd[0], bd[1]] } else { bd.to_vec() };
        let a = Tensor::rand_uniform(&a_dims, -1.0, 1.0, &mut rng).unwrap();
        let b = Tensor::rand_uniform(&b_dims, -1.0, 1.0, &mut rng).unwrap();
        let c = matmul_t(&a, ta, &b, tb).unwrap();
        prop_assert_eq!(c.dims(), &[batch, m, n]);
        for i in 0..batch {
            let ai = if a_batched { &a.as_slice()[i * m * k..(i + 1) * m * k] } else { a.as_slice() };
            let bi = if b_batched { &b.as_slice()[i * k * n..(i + 1) * k * n] } else { b.as_slice() };
            let (want, scale) = naive(ai, ad[1], ta, bi, bd[1], tb, m, k, n);
            let got = &c.as_slice()[i * m * n..(i + 1) * m * n];
            assert_close_with_magnitude(&format!("batch item {i}"), got, &want, &scale, sgemm(k));
        }
    }

    #[test]
    fn gemm_alpha_beta_and_padded_strides(
        m in 1usize..=23, k in 1usize..=23, n in 1usize..=23, pad in 0usize..3, seed: u64,
    ) {
        // Row strides larger than the row (a sub-block of a bigger matrix), α and β ≠ 1.
        let mut rng = Rng::new(seed);
        let (rsa, rsb, rsc) = (k + pad, n + pad, n + pad);
        let a = random_vec(m * rsa, -1.0, 1.0, &mut rng);
        let b = random_vec(k * rsb, -1.0, 1.0, &mut rng);
        let c0 = random_vec(m * rsc, -1.0, 1.0, &mut rng);
        let mut c = c0.clone();
        gemm(m, k, n, 0.5, &a, rsa, 1, &b, rsb, 1, 2.0, &mut c, rsc, 1).unwrap();
        // k + 1 terms: the k products and β·c.
        let tol = Tolerance::new(0.0, 2.0 * (k + 1) as f64 * f64::from(f32::EPSILON));
        for i in 0..m {
            let (mut want, mut scale) = (vec![0.0; n], vec![0.0; n]);
            for j in 0..n {
                want[j] = 2.0 * f64::from(c0[i * rsc + j]);
                scale[j] = want[j].abs();
                for p in 0..k {
                    let t = 0.5 * f64::from(a[i * rsa + p]) * f64::from(b[p * rsb + j]);
                    want[j] += t;
                    scale[j] += t.abs();
                }
            }
            assert_close_with_magnitude(&format!("row {i}"), &c[i * rsc..][..n], &want, &scale, tol);
            // Padding columns are untouched.
            for j in n..rsc {
                prop_assert_eq!(c[i * rsc + j], c0[i * rsc + j]);
            }
        }
    }
}

/// Small integers make every product exact: compare bit for bit, at the odd sizes of the
/// matrixmultiply test suite.
#[test]
fn exact_small_integer_products() {
    for &s in &[1usize, 2, 7, 17, 33, 65, 67, 257] {
        let a = Tensor::from_fn(&[s, s + 1], |ix| ((ix[0] * 3 + ix[1] * 7) % 5) as f32 - 2.0);
        let b = Tensor::from_fn(&[s + 1, s + 2], |ix| ((ix[0] * 5 + ix[1]) % 3) as f32 - 1.0);
        let c = matmul_t(&a, false, &b, false).unwrap();
        let (want, _) =
            naive(a.as_slice(), s + 1, false, b.as_slice(), s + 2, false, s, s + 1, s + 2);
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_eq!(c.as_slice(), &want[..], "size {s}");
    }
}

/// The LeNet fully-connected shapes: x·Wᵀ with W stored [out, in].
#[test]
fn lenet_fc_shapes() {
    let mut rng = Rng::new(5);
    for (inp, out) in [(400usize, 120usize), (120, 84), (84, 10)] {
        let x = Tensor::rand_uniform(&[64, inp], -1.0, 1.0, &mut rng).unwrap();
        let w = Tensor::rand_uniform(&[out, inp], -1.0, 1.0, &mut rng).unwrap();
        let y = matmul_t(&x, false, &w, true).unwrap();
        assert_eq!(y.dims(), &[64, out]);
        let (want, scale) = naive(x.as_slice(), inp, false, w.as_slice(), inp, true, 64, inp, out);
        let what = format!("x·Wᵀ, {inp} -> {out}");
        assert_close_with_magnitude(&what, y.as_slice(), &want, &scale, sgemm(inp));
    }
}
