//! A layer table of any model that describes itself ([`Module::describe`]): each layer's
//! dotted path, kind, output shape, parameter count and, for convolutions, the algorithm that
//! runs in training and in prepared inference — computed from the shapes alone, without running the
//! model or touching its state.
//!
//! ```
//! use convkit_nn::summary::summary;
//! use convkit_nn::{BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Sequential};
//! use convkit_tensor::Rng;
//!
//! let mut rng = Rng::new(0);
//! let model = Sequential::new()
//!     .push_named("conv1", Conv2d::new(1, 8, 3, &mut rng)?)
//!     .push_named("bn1", BatchNorm2d::new(8)?)
//!     .push(ReLU)
//!     .push(Flatten)
//!     .push_named("fc", Linear::new(8 * 26 * 26, 10, &mut rng)?);
//! let rows = summary(&model, &[64, 1, 28, 28])?;
//! assert_eq!(rows[0].path, "conv1");
//! assert_eq!(rows[0].output, [64, 8, 26, 26]);
//! assert!(rows[0].conv.is_some()); // the algorithms chosen for this shape
//! assert_eq!(rows.last().map(|r| r.output.clone()), Some(vec![64, 10]));
//! println!("{}", convkit_nn::summary::table(&rows));
//! # Ok::<(), convkit_nn::NnError>(())
//! ```

use convkit_conv::{ConvAlgo, ConvGeometry, PoolGeometry};
use convkit_conv::{resolve, resolve_prepared};

use crate::error::{NnError, Result};
use crate::module::Layer;
use crate::module::{Module, join};

/// The convolution algorithms a layer runs for its input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvChoice {
    /// In training (the per-call choice, [`resolve`]).
    pub training: ConvAlgo,
    /// In inference through [`PreparedModel`](crate::PreparedModel), where Winograd filter
    /// transforms are cached ([`resolve_prepared`]).
    pub inference: ConvAlgo,
}

/// One leaf layer of a [`summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Dotted path, the prefix of the layer's parameter names (`layer1.0.residual.body.conv1`).
    pub path: String,
    /// The layer's kind ([`Layer::kind`]).
    pub kind: &'static str,
    /// Output shape for the summary's input.
    pub output: Vec<usize>,
    /// Trainable parameters of the layer.
    pub params: usize,
    /// Forward flops of convolutions and linear layers: each multiply-add counts as two, each
    /// bias add as one (0 for the other layers).
    pub flops: u64,
    /// For convolutions, the algorithms that run.
    pub conv: Option<ConvChoice>,
}

fn shape_err(path: &str, kind: &'static str, got: &[usize], msg: impl Into<String>) -> NnError {
    NnError::Input { layer: kind, got: got.to_vec(), msg: format!("{} (at {path:?})", msg.into()) }
}

fn rank4(path: &str, kind: &'static str, dims: &[usize]) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(dims)
        .map_err(|_| shape_err(path, kind, dims, "expected [batch, channels, height, width]"))
}

/// The rows of `model`'s leaf layers for an input of shape `input`, in the order they run
/// (a residual block's body, then its shortcut). A module that does not describe itself
/// ([`Layer::Opaque`]) is an error naming it: its output shape cannot be known without
/// running it.
pub fn summary(model: &dyn Module, input: &[usize]) -> Result<Vec<SummaryRow>> {
    let mut rows = Vec::new();
    walk(model, "", input.to_vec(), &mut rows)?;
    Ok(rows)
}

fn walk(
    m: &dyn Module,
    path: &str,
    x: Vec<usize>,
    rows: &mut Vec<SummaryRow>,
) -> Result<Vec<usize>> {
    let layer = m.describe();
    let kind = layer.kind();
    let count = |p: &convkit_autograd::Param| p.dims().iter().product::<usize>();
    let mut row = |output: Vec<usize>, params: usize, flops: u64, conv: Option<ConvChoice>| {
        rows.push(SummaryRow {
            path: path.to_owned(),
            kind,
            output: output.clone(),
            params,
            flops,
            conv,
        });
        Ok(output)
    };
    match layer {
        Layer::Sequential(children) => {
            let mut x = x;
            for (name, child) in children {
                x = walk(child, &join(path, name), x, rows)?;
            }
            Ok(x)
        }
        Layer::Residual { body, shortcut } => {
            let y = walk(body, &join(path, "body"), x.clone(), rows)?;
            let s = match shortcut {
                Some(s) => walk(s, &join(path, "shortcut"), x.clone(), rows)?,
                None => x.clone(),
            };
            if y != s {
                return Err(shape_err(path, kind, &x, format!("body gives {y:?}, shortcut {s:?}")));
            }
            Ok(y)
        }
        Layer::Conv2d { weight, bias, params, algo } => {
            let w = weight.dims();
            let wd = <[usize; 4]>::try_from(w.as_slice())
                .map_err(|_| shape_err(path, kind, &w, "weight is not 4-D"))?;
            let g = ConvGeometry::new(rank4(path, kind, &x)?, wd, params)?;
            let conv =
                ConvChoice { training: resolve(algo, &g)?, inference: resolve_prepared(algo, &g)? };
            let out = g.output_dims().to_vec();
            let flops = g.flops() + bias.map_or(0, |_| out.iter().product::<usize>() as u64);
            row(out, count(weight) + bias.map_or(0, count), flops, Some(conv))
        }
        Layer::Linear { weight, bias } => {
            let (out_f, in_f) = (weight.dims()[0], weight.dims()[1]);
            match x.as_slice() {
                [n, i] if *i == in_f => {
                    // As for convolutions: the multiply-adds, plus one add per output for a bias.
                    let flops = (2 * n * in_f * out_f + bias.map_or(0, |_| n * out_f)) as u64;
                    row(vec![*n, out_f], count(weight) + bias.map_or(0, count), flops, None)
                }
                _ => Err(shape_err(path, kind, &x, format!("expected [batch, {in_f}]"))),
            }
        }
        Layer::MaxPool2d(p) | Layer::AvgPool2d(p) => {
            let g = PoolGeometry::new("summary", rank4(path, kind, &x)?, p)?;
            row(g.output_dims().to_vec(), 0, 0, None)
        }
        Layer::GlobalAvgPool2d => {
            let [n, c, _, _] = rank4(path, kind, &x)?;
            row(vec![n, c, 1, 1], 0, 0, None)
        }
        Layer::Flatten => match x.split_first() {
            Some((&n, rest)) => row(vec![n, rest.iter().product()], 0, 0, None),
            None => Err(shape_err(path, kind, &x, "expected at least one dimension")),
        },
        Layer::BatchNorm2d { weight, bias, .. } => {
            let [_, c, _, _] = rank4(path, kind, &x)?;
            if c != weight.dims()[0] {
                return Err(shape_err(
                    path,
                    kind,
                    &x,
                    format!("expected {} channels", weight.dims()[0]),
                ));
            }
            row(x, count(weight) + count(bias), 0, None)
        }
        Layer::ReLU | Layer::Tanh | Layer::Sigmoid | Layer::Dropout { .. } => row(x, 0, 0, None),
        Layer::Opaque(name) => Err(shape_err(
            path,
            kind,
            &x,
            format!("{name} does not describe itself (Module::describe), so its shape is unknown"),
        )),
    }
}

/// The rows as an aligned text table, with a total line.
pub fn table(rows: &[SummaryRow]) -> String {
    use std::fmt::Write as _;
    let width = rows.iter().map(|r| r.path.len()).max().unwrap_or(0).max(5);
    let mut s = format!(
        "{:<width$}  {:<15} {:<20} {:>10} {:>12}  conv algorithm (training / prepared inference)\n",
        "layer", "kind", "output", "params", "MFLOP"
    );
    for r in rows {
        let conv = r.conv.map_or(String::new(), |c| format!("{} / {}", c.training, c.inference));
        let _ = writeln!(
            s,
            "{:<width$}  {:<15} {:<20} {:>10} {:>12.2}  {conv}",
            r.path,
            r.kind,
            format!("{:?}", r.output),
            r.params,
            r.flops as f64 / 1e6
        );
    }
    let (params, flops): (usize, u64) =
        rows.iter().fold((0, 0), |(p, f), r| (p + r.params, f + r.flops));
    let _ = writeln!(
        s,
        "{:<width$}  {:<15} {:<20} {:>10} {:>12.2}",
        "total",
        "",
        "",
        params,
        flops as f64 / 1e6
    );
    s
}
