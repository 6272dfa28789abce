//! The reference convolution: the literal loops of the definition, accumulating in f64.
//!
//! For output element `(b, k, y, x)`, with `g = k / (c_out / groups)` the group of `k`:
//!
//! ```text
//! out[b,k,y,x] = bias[k] + Σ_{c,i,j} in[b, g·C' + c, y·sh − ph + i·dh, x·sw − pw + j·dw] · w[k,c,i,j]
//! ```
//!
//! where `C' = c_in / groups` and taps that fall into the padding read zero. CNNs call this
//! cross-correlation "convolution"; the kernel is not flipped. Every fast algorithm is tested
//! against these functions.

use crate::error::Result;
use crate::params::{BackwardInputs, ConvGeometry, GradBuffers};

/// Input coordinate of output position `o` and tap `t` along one axis, or `None` in padding.
#[inline]
fn src(o: usize, t: usize, stride: usize, pad: usize, dil: usize, size: usize) -> Option<usize> {
    (o * stride + t * dil).checked_sub(pad).filter(|&i| i < size)
}

/// Forward convolution by its definition. `output` is overwritten.
///
/// Slices are NCHW input `[n, c_in, h, w]`, weight `[c_out, c_in/groups, kh, kw]`, optional
/// bias `[c_out]`, output `[n, c_out, oh, ow]`; their lengths are checked.
pub fn conv2d_naive(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) -> Result<()> {
    g.check_forward("conv2d_naive", input, weight, bias, output)?;
    let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
    // The sizes as locals, so that the loops below read registers, not the geometry.
    let g = *g;
    let p = g.params;
    for b in 0..g.n {
        for k in 0..g.c_out {
            let grp = k / kpg;
            for y in 0..g.oh {
                for x in 0..g.ow {
                    let mut acc = bias.map_or(0.0, |b| f64::from(b[k]));
                    for c in 0..cpg {
                        let ci = grp * cpg + c;
                        for i in 0..g.kh {
                            let Some(iy) = src(y, i, p.stride.0, p.padding.0, p.dilation.0, g.h)
                            else {
                                continue;
                            };
                            for j in 0..g.kw {
                                let Some(ix) =
                                    src(x, j, p.stride.1, p.padding.1, p.dilation.1, g.w)
                                else {
                                    continue;
                                };
                                let v = input[((b * g.c_in + ci) * g.h + iy) * g.w + ix];
                                let wt = weight[((k * cpg + c) * g.kh + i) * g.kw + j];
                                acc += f64::from(v) * f64::from(wt);
                            }
                        }
                    }
                    output[((b * g.c_out + k) * g.oh + y) * g.ow + x] = acc as f32;
                }
            }
        }
    }
    Ok(())
}

/// Backward convolution by its definition: given `grad_output = ∂L/∂out`, writes (overwrites)
/// each requested gradient — `∂L/∂input`, `∂L/∂weight` and `∂L/∂bias` — accumulating in f64.
///
/// The loops are those of the forward pass with the roles swapped: each output gradient is
/// scattered to the input positions and weight taps that produced that output.
pub fn conv2d_backward_naive(
    g: &ConvGeometry,
    x: BackwardInputs<'_>,
    grads: GradBuffers<'_>,
) -> Result<()> {
    const OP: &str = "conv2d_backward_naive";
    g.check_backward(OP, &x, &grads)?;
    let BackwardInputs { input, weight, grad_output } = x;
    let GradBuffers { input: grad_input, weight: grad_weight, bias: grad_bias } = grads;
    let p = g.params;
    let (cpg, kpg) = (g.c_in_per_group(), g.c_out_per_group());
    let mut gi = vec![0f64; if grad_input.is_some() { g.input_len() } else { 0 }];
    let mut gw = vec![0f64; if grad_weight.is_some() { g.weight_len() } else { 0 }];
    let mut gb = vec![0f64; if grad_bias.is_some() { g.c_out } else { 0 }];
    for b in 0..g.n {
        for k in 0..g.c_out {
            let grp = k / kpg;
            for y in 0..g.oh {
                for x in 0..g.ow {
                    let go = f64::from(grad_output[((b * g.c_out + k) * g.oh + y) * g.ow + x]);
                    if !gb.is_empty() {
                        gb[k] += go;
                    }
                    for c in 0..cpg {
                        let ci = grp * cpg + c;
                        for i in 0..g.kh {
                            let Some(iy) = src(y, i, p.stride.0, p.padding.0, p.dilation.0, g.h)
                            else {
                                continue;
                            };
                            for j in 0..g.kw {
                                let Some(ix) =
                                    src(x, j, p.stride.1, p.padding.1, p.dilation.1, g.w)
                                else {
                                    continue;
                                };
                                let ii = ((b * g.c_in + ci) * g.h + iy) * g.w + ix;
                                let wi = ((k * cpg + c) * g.kh + i) * g.kw + j;
                                if !gi.is_empty() {
                                    gi[ii] += go * f64::from(weight[wi]);
                                }
                                if !gw.is_empty() {
                                    gw[wi] += go * f64::from(input[ii]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for (dst, acc) in [(grad_input, gi), (grad_weight, gw), (grad_bias, gb)] {
        if let Some(dst) = dst {
            for (d, a) in dst.iter_mut().zip(acc) {
                *d = a as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Conv2dParams;

    /// A hand-computed case: 3x3 input of 1..9, 2x2 kernel of ones, stride 1, padding 1.
    #[test]
    fn small_exact_forward_and_backward() {
        let p = Conv2dParams::default().with_padding(1);
        let g = ConvGeometry::new([1, 1, 3, 3], [1, 1, 2, 2], p).unwrap();
        let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let weight = [1.0; 4];
        let mut out = vec![0.0; g.output_len()];
        conv2d_naive(&g, &input, &weight, Some(&[10.0]), &mut out).unwrap();
        #[rustfmt::skip]
        let expect = [
            11., 13., 15., 13.,
            15., 22., 26., 19.,
            21., 34., 38., 25.,
            17., 25., 27., 19.,
        ];
        assert_eq!(out, expect);

        let go = vec![1.0; 16];
        let (mut gi, mut gw, mut gb) = (vec![0.0; 9], vec![0.0; 4], vec![0.0; 1]);
        conv2d_backward_naive(
            &g,
            BackwardInputs { input: &input, weight: &weight, grad_output: &go },
            GradBuffers { input: Some(&mut gi), weight: Some(&mut gw), bias: Some(&mut gb) },
        )
        .unwrap();
        // Every input pixel is covered by all 4 taps of the 2x2 kernel with padding 1.
        assert_eq!(gi, [4.0; 9]);
        // Each tap sees every input pixel exactly once: 1 + … + 9 = 45.
        assert_eq!(gw, [45.0; 4]);
        assert_eq!(gb, [16.0]);
    }

    #[test]
    fn groups_keep_channels_apart() {
        // Depthwise, 2 channels: channel 1's output must not depend on channel 0.
        let p = Conv2dParams::default().with_groups(2);
        let g = ConvGeometry::new([1, 2, 2, 2], [2, 1, 1, 1], p).unwrap();
        let input = [1., 2., 3., 4., 10., 20., 30., 40.];
        let mut out = vec![0.0; 8];
        conv2d_naive(&g, &input, &[2.0, -1.0], None, &mut out).unwrap();
        assert_eq!(out, [2., 4., 6., 8., -10., -20., -30., -40.]);
    }

    #[test]
    fn buffer_lengths_are_checked() {
        let g = ConvGeometry::new([1, 1, 3, 3], [1, 1, 2, 2], Conv2dParams::default()).unwrap();
        let mut out = vec![0.0; 4];
        let e = conv2d_naive(&g, &[0.0; 8], &[0.0; 4], None, &mut out).unwrap_err();
        assert!(e.to_string().contains("input has 8 elements"), "{e}");
    }
}
