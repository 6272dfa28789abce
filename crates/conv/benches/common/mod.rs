//! What the interleaved benches (`ratios.rs`, `versus.rs`) share: the shapes a run selects
//! and each shape's operands.

use convkit_conv::suite::{SHAPES, SuiteShape, sample_data};
use convkit_conv::{
    BackwardInputs, ConvAlgo, ConvGeometry, GradBuffers, WinogradFilter, conv2d_backward,
    conv2d_forward, conv2d_winograd_prepared, select_prepared,
};

/// The suite shapes whose id `<bench>/<shape>` contains the command line's filter (its first
/// argument that is not an option: `cargo bench` passes `--bench`, and criterion's options,
/// to every target), and whether to run quick (`CONVKIT_BENCH_QUICK=1` or `--quick`).
pub fn selection(bench: &str) -> (Vec<&'static SuiteShape>, bool) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let quick = std::env::var_os("CONVKIT_BENCH_QUICK").is_some_and(|v| v == "1")
        || std::env::args().any(|a| a == "--quick");
    let shapes = SHAPES
        .iter()
        .filter(|s| {
            filter.as_ref().is_none_or(|f| format!("{bench}/{}", s.name).contains(f.as_str()))
        })
        .collect();
    (shapes, quick)
}

/// A rayon pool of `n` threads, each pinned to a CPU of its own (see
/// `convkit_tensor::parallel::pinned_pool`: unpinned, the two workers of a pool shared one
/// CPU for stretches of many calls on the 2-vCPU machines these benches run on).
pub fn pool(n: usize) -> rayon::ThreadPool {
    convkit_tensor::parallel::pinned_pool(n).expect("a rayon thread pool")
}

/// One shape's geometry, seeded operands and result buffers, for timing `Auto` on it.
pub struct Operands {
    pub name: &'static str,
    pub g: ConvGeometry,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    gx: Vec<f32>,
    gw: Vec<f32>,
    gb: Vec<f32>,
    /// The transformed filter of [`Operands::forward_prepared`], made on its first call.
    #[allow(dead_code)] // used by versus.rs, not ratios.rs
    filter: Option<WinogradFilter>,
}

impl Operands {
    pub fn new(s: &SuiteShape) -> Operands {
        let g = s.geometry().expect("suite shapes are valid");
        Operands {
            name: s.name,
            g,
            x: sample_data(g.input_len(), 1),
            w: sample_data(g.weight_len(), 2),
            b: sample_data(g.c_out, 3),
            dy: sample_data(g.output_len(), 4),
            y: vec![0.0; g.output_len()],
            gx: vec![0.0; g.input_len()],
            gw: vec![0.0; g.weight_len()],
            gb: vec![0.0; g.c_out],
            filter: None,
        }
    }

    /// One `Auto` forward call.
    pub fn forward(&mut self) {
        let Operands { g, x, w, b, y, .. } = self;
        conv2d_forward(g, x, w, Some(b), y, ConvAlgo::Auto).expect("forward");
    }

    /// Whether [`Operands::forward_prepared`] runs something other than [`Operands::forward`]:
    /// a layer that keeps its Winograd filter transformed picks Winograd for this shape.
    #[allow(dead_code)] // used by versus.rs, not ratios.rs
    pub fn prepared_differs(&self) -> bool {
        select_prepared(&self.g).winograd_variant().is_some()
    }

    /// One forward call as a layer at inference runs it, with whatever can be prepared from
    /// the weights prepared once (the first call): the Winograd filter transform when
    /// [`select_prepared`] picks Winograd, as `convkit-nn`'s `Conv2d` caches it in eval mode.
    #[allow(dead_code)] // used by versus.rs, not ratios.rs
    pub fn forward_prepared(&mut self) {
        let Some(variant) = select_prepared(&self.g).winograd_variant() else {
            return self.forward();
        };
        let Operands { g, x, w, b, y, filter, .. } = self;
        let f = filter.get_or_insert_with(|| {
            WinogradFilter::new(w, g.weight_dims(), g.params.groups, variant).expect("3x3 filter")
        });
        conv2d_winograd_prepared(g, x, f, Some(b), y).expect("prepared forward");
    }

    /// One `Auto` backward call: input, weight and bias gradients.
    pub fn backward(&mut self) {
        let Operands { g, x, w, dy, gx, gw, gb, .. } = self;
        conv2d_backward(
            g,
            BackwardInputs { input: x, weight: w, grad_output: dy },
            GradBuffers { input: Some(gx), weight: Some(gw), bias: Some(gb) },
            ConvAlgo::Auto,
        )
        .expect("backward");
    }
}
