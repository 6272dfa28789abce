//! Ratios between convkit's own timings on the shape suite, measured interleaved: for every
//! shape, the `Auto` forward on 1 thread, the `Auto` backward (input + weight + bias
//! gradients) on 1 thread and the `Auto` forward on 2 threads are timed back to back in each
//! round, and the ratios `backward ÷ forward` and `1 thread ÷ 2 threads` are taken within the
//! round. On a shared machine whose speed drifts by tens of percent over minutes, criterion's
//! groups (minutes apart) compare badly; ratios of timings taken within a second of each other
//! do not drift with it. Each timing is the minimum of a few calls; the report quotes the
//! median over the rounds of each timing and of each ratio.
//!
//! Each timing starts with untimed calls for at least [`WARM_UP`], so that it measures the
//! steady speed a training loop sees. The pools pin each worker to a CPU of its own
//! (`convkit_tensor::parallel::pinned_pool`): on a 2-core virtual machine, the two workers of
//! an unpinned pool were queued on the same CPU for stretches of 10–30 back-to-back calls,
//! each running at 1-thread speed (`pointwise`: 1.45 ms against 0.75 ms), whenever a sleeping
//! worker was woken onto its waker's CPU.
//!
//! Run by `cargo xtask bench` (which writes the results into `docs/benchmarks.md`):
//! `cargo bench -p convkit-conv --bench ratios [-- FILTER]`, where `FILTER` keeps the shapes
//! whose id `ratios/<shape>` contains it. `CONVKIT_BENCH_QUICK=1` runs 3 rounds instead of 15;
//! `CONVKIT_RATIOS_OUT=<path>` also writes the results as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use convkit_conv::suite::{median, min_ms_after_warm_up};

mod common;
use common::Operands;

/// How long each timing first runs its calls untimed, so that it measures a steady speed
/// (caches, scratch buffers and the pool's workers warmed).
const WARM_UP: Duration = Duration::from_millis(40);

/// Minimum of `calls` timed calls of `f`, in milliseconds, after [`WARM_UP`].
fn min_ms(calls: usize, f: impl FnMut()) -> f64 {
    min_ms_after_warm_up(calls, WARM_UP, f)
}

fn main() {
    let (shapes, quick) = common::selection("ratios");
    if shapes.is_empty() {
        return;
    }
    let rounds = if quick { 3 } else { 15 };
    let (one, two) = (common::pool(1), common::pool(2));
    struct Case {
        op: Operands,
        times: [Vec<f64>; 3],
        ratios: [Vec<f64>; 2],
    }
    let mut cases: Vec<Case> = shapes
        .iter()
        .map(|s| Case {
            op: Operands::new(s),
            times: Default::default(),
            ratios: Default::default(),
        })
        .collect();
    println!(
        "ratios: {rounds} rounds over {} shapes (Auto; forward and backward interleaved)",
        cases.len()
    );
    // Round 0 warms up (buffers, thread pools) and is not recorded.
    for round in 0..=rounds {
        for c in &mut cases {
            let op = &mut c.op;
            let f1 = one.install(|| min_ms(10, || op.forward()));
            let b1 = one.install(|| min_ms(5, || op.backward()));
            let f2 = two.install(|| min_ms(10, || op.forward()));
            if round > 0 {
                for (t, v) in c.times.iter_mut().zip([f1, b1, f2]) {
                    t.push(v);
                }
                c.ratios[0].push(b1 / f1);
                c.ratios[1].push(f1 / f2);
            }
        }
    }
    let mut json = format!("{{\"rounds\": {rounds}, \"shapes\": [");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "shape", "fwd 1t ms", "bwd 1t ms", "fwd 2t ms", "bwd/fwd", "1t/2t"
    );
    for (i, c) in cases.iter().enumerate() {
        let [f1, b1, f2] = c.times.clone().map(median);
        let [bf, scale] = c.ratios.clone().map(median);
        println!("{:<12} {f1:>10.3} {b1:>10.3} {f2:>10.3} {bf:>9.2} {scale:>9.2}", c.op.name);
        let _ = write!(
            json,
            "{}{{\"name\": \"{}\", \"fwd_t1_ms\": {f1}, \"bwd_t1_ms\": {b1}, \"fwd_t2_ms\": {f2}, \
             \"bwd_over_fwd\": {bf}, \"t1_over_t2\": {scale}}}",
            if i == 0 { "" } else { ", " },
            c.op.name
        );
    }
    json.push_str("]}\n");
    if let Some(path) = std::env::var_os("CONVKIT_RATIOS_OUT") {
        std::fs::write(&path, json).expect("could not write CONVKIT_RATIOS_OUT");
    }
}
