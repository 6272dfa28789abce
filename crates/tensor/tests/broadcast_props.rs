//! Property tests: broadcasting binary ops and `sum_to` against naive multi-index loops.
#![allow(clippy::unwrap_used)]

use convkit_tensor::testing::{Tolerance, assert_close};
use convkit_tensor::{Rng, Tensor, broadcast_shapes, strides};
use proptest::prelude::*;

/// A shape of rank 0..=4 with sizes 1..=4, and a compatible partner: each axis of the partner
/// is the same size or 1, and some leading axes may be dropped.
fn shape_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, bool)> {
    (prop::collection::vec(1usize..=4, 0..=4), any::<u64>(), any::<bool>()).prop_map(
        |(dims, bits, swap)| {
            let drop = (bits % (dims.len() as u64 + 1)) as usize;
            let other: Vec<usize> = dims[drop..]
                .iter()
                .enumerate()
                .map(|(i, &d)| if (bits >> (8 + i)) & 1 == 1 { 1 } else { d })
                .collect();
            // Also turn some axes of the first shape into 1 where the partner keeps them.
            let first: Vec<usize> = dims
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    let j = i.checked_sub(drop);
                    let other_full = j.is_some_and(|j| other[j] == d && d > 1);
                    if other_full && (bits >> (20 + i)) & 1 == 1 { 1 } else { d }
                })
                .collect();
            (first, other, swap)
        },
    )
}

/// A tensor binary op and its scalar reference.
type Op = fn(&Tensor, &Tensor) -> convkit_tensor::Result<Tensor>;
type Scalar = fn(f32, f32) -> f32;

/// Element of `t` at the broadcast multi-index `index` of the output shape.
fn read_broadcast(t: &Tensor, index: &[usize]) -> f32 {
    let lead = index.len() - t.rank();
    let st = strides(t.dims());
    let off: usize =
        (0..t.rank()).map(|i| if t.dims()[i] == 1 { 0 } else { index[lead + i] * st[i] }).sum();
    t.as_slice()[off]
}

fn multi_index(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut ix = vec![0; dims.len()];
    for ax in (0..dims.len()).rev() {
        ix[ax] = flat % dims[ax];
        flat /= dims[ax];
    }
    ix
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn binary_ops_match_naive((sa, sb, swap) in shape_pair(), seed: u64) {
        let (sa, sb) = if swap { (sb, sa) } else { (sa, sb) };
        let mut rng = Rng::new(seed);
        let a = Tensor::rand_uniform(&sa, -2.0, 2.0, &mut rng).unwrap();
        let b = Tensor::rand_uniform(&sb, 0.5, 2.0, &mut rng).unwrap();
        let out = broadcast_shapes(&sa, &sb).unwrap();
        let ops: [(Op, Scalar); 4] = [
            (Tensor::add, |x, y| x + y),
            (Tensor::sub, |x, y| x - y),
            (Tensor::mul, |x, y| x * y),
            (Tensor::div, |x, y| x / y),
        ];
        for (op, f) in ops {
            let c = op(&a, &b).unwrap();
            prop_assert_eq!(c.dims(), &out[..]);
            for (flat, &got) in c.as_slice().iter().enumerate() {
                let ix = multi_index(flat, &out);
                let want = f(read_broadcast(&a, &ix), read_broadcast(&b, &ix));
                prop_assert_eq!(got.to_bits(), want.to_bits());
            }
        }
        // In-place add when the right side broadcasts into the left shape.
        if out == sa {
            let mut acc = a.clone();
            acc.add_assign(&b).unwrap();
            prop_assert_eq!(acc, a.add(&b).unwrap());
        }
    }

    #[test]
    fn sum_to_matches_naive((sa, sb, _swap) in shape_pair(), seed: u64) {
        // Broadcast then reduce back: sum_to(sb) of a tensor of the broadcast shape.
        let out = broadcast_shapes(&sa, &sb).unwrap();
        let g = Tensor::rand_uniform(&out, -1.0, 1.0, &mut Rng::new(seed)).unwrap();
        let r = g.sum_to(&sb).unwrap();
        prop_assert_eq!(r.dims(), &sb[..]);
        let mut want = vec![0.0f64; r.numel()];
        let st = strides(&sb);
        let lead = out.len() - sb.len();
        for (flat, &v) in g.as_slice().iter().enumerate() {
            let ix = multi_index(flat, &out);
            let off: usize = (0..sb.len()).map(|i| if sb[i] == 1 { 0 } else { ix[lead + i] * st[i] }).sum();
            want[off] += f64::from(v);
        }
        assert_close("sum_to", r.as_slice(), &want, Tolerance::new(1e-6, 1e-6));
    }
}

#[test]
fn incompatible_shapes_name_both() {
    for (a, b) in [(vec![2, 3], vec![3, 2]), (vec![4], vec![5]), (vec![2, 1, 3], vec![4, 2])] {
        let e = Tensor::zeros(&a).add(&Tensor::zeros(&b)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("add: incompatible shapes {a:?} and {b:?}")), "{msg}");
    }
}
