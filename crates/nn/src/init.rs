//! Weight initialization with PyTorch's formulas, from an explicit seeded [`Rng`].
//!
//! For a weight of dims `[out, in, k…]`, `fan_in = in·∏k` and `fan_out = out·∏k`.
//!
//! | scheme | distribution |
//! |---|---|
//! | PyTorch's default for `Linear`/`Conv2d` weights: Kaiming-uniform, `a = √5` | `U(−b, b)`, `b = gain·√(3/fan_in)`, `gain = √(2/(1+a²))`, i.e. `b = 1/√fan_in` |
//! | PyTorch's default for biases | `U(−1/√fan_in, 1/√fan_in)` |
//! | [`Init::KaimingUniform`] (ReLU gain) | `U(−b, b)`, `b = √2·√(3/fan_in)` |
//! | [`Init::KaimingNormal`] (ReLU gain) | `N(0, 2/fan_in)` |
//! | [`Init::XavierUniform`] | `U(−b, b)`, `b = √(6/(fan_in + fan_out))` |
//! | [`Init::XavierNormal`] | `N(0, 2/(fan_in + fan_out))` |

use convkit_tensor::{Rng, Tensor};

use crate::error::{Result, config};

/// How to draw a layer's weights.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Init {
    /// PyTorch's default: Kaiming-uniform with `a = √5`, i.e. `U(±1/√fan_in)`.
    #[default]
    PyTorchDefault,
    /// Kaiming (He) uniform for ReLU networks: `U(±√(6/fan_in))`.
    KaimingUniform,
    /// Kaiming (He) normal for ReLU networks: `N(0, 2/fan_in)`.
    KaimingNormal,
    /// Xavier (Glorot) uniform: `U(±√(6/(fan_in + fan_out)))`.
    XavierUniform,
    /// Xavier (Glorot) normal: `N(0, 2/(fan_in + fan_out))`.
    XavierNormal,
}

/// `(fan_in, fan_out)` of a weight shape, as PyTorch computes them.
pub fn fans(dims: &[usize]) -> (usize, usize) {
    match dims {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, rest @ ..] => {
            let rf: usize = rest.iter().product();
            (inp * rf, out * rf)
        }
    }
}

impl Init {
    /// Draws a weight tensor of `dims` with this scheme.
    pub fn weight(self, dims: &[usize], rng: &mut Rng) -> Result<Tensor> {
        let (fan_in, fan_out) = fans(dims);
        if fan_in == 0 || fan_out == 0 {
            return Err(config("init", format!("weight {dims:?} has a zero fan")));
        }
        let (fi, fo) = (fan_in as f64, fan_out as f64);
        let t = match self {
            Init::PyTorchDefault => {
                let gain = (2.0 / (1.0 + 5.0f64)).sqrt();
                let bound = gain * (3.0 / fi).sqrt();
                Tensor::rand_uniform(dims, -bound as f32, bound as f32, rng)?
            }
            Init::KaimingUniform => {
                let bound = (6.0 / fi).sqrt();
                Tensor::rand_uniform(dims, -bound as f32, bound as f32, rng)?
            }
            Init::KaimingNormal => Tensor::rand_normal(dims, 0.0, (2.0 / fi).sqrt() as f32, rng)?,
            Init::XavierUniform => {
                let bound = (6.0 / (fi + fo)).sqrt();
                Tensor::rand_uniform(dims, -bound as f32, bound as f32, rng)?
            }
            Init::XavierNormal => {
                Tensor::rand_normal(dims, 0.0, (2.0 / (fi + fo)).sqrt() as f32, rng)?
            }
        };
        Ok(t)
    }
}

/// PyTorch's default bias: `U(±1/√fan_in)` of the layer's weight, `[out]` values.
pub fn default_bias(out: usize, fan_in: usize, rng: &mut Rng) -> Result<Tensor> {
    if fan_in == 0 {
        return Err(config("init", "bias of a layer with zero fan_in"));
    }
    let bound = (1.0 / fan_in as f64).sqrt() as f32;
    Ok(Tensor::rand_uniform(&[out], -bound, bound, rng)?)
}
